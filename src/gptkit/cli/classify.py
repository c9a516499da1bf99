"""`gptkit finetune-classify` (train a classifier) and `classify` (label texts with one)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from gptkit.cli import options
from gptkit.config import load_config
from gptkit.errors import GptkitError


def register(commands: Any) -> None:
    p = commands.add_parser(
        "finetune-classify", help="train a classifier (text -> label, or word -> tag) on a GPT",
        description="Put a classification head on a GPT and train it on labelled records: "
        "CSV/JSONL with text and label fields (classify.task=sequence, recipe sentiment), or "
        "JSONL {\"tokens\": [...], \"tags\": [...]} for tagging such as NER "
        "(classify.task=token, recipe ner). The last data.val_fraction of the records is "
        "held out; prints accuracy, macro-F1 and the confusion matrix, or entity-level F1.",
    )
    p.add_argument("--data", metavar="FILE",
                   help="CSV or JSONL records (sets data.source; default: the recipe's)")
    options.add_recipe(p, default="sentiment")
    p.add_argument("--init-from", metavar="RUN",
                   help="start from this run's weights, model shape and tokenizer (sets "
                   "train.init_from; default: a fresh model from the recipe)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest valid checkpoint "
                   "(--set overrides apply on top of its saved config)")
    options.add_run_out(p)
    p.set_defaults(handler=finetune_classify)

    p = commands.add_parser(
        "classify", help="label texts (or tag their words) with a finetune-classify run",
        description="Print the label and its probability for each --text; for a token "
        "(tagging) run, each --text is split on whitespace into words and printed as "
        "word/TAG pairs.",
    )
    p.add_argument("run", metavar="RUN", help="a run directory written by finetune-classify")
    p.add_argument("--text", action="append", required=True, metavar="TEXT",
                   help="a text to classify (repeatable)")
    options.add_inference(p, quantize="not for classifier runs (an error)")
    options.add_json(p, "the predictions")
    p.set_defaults(handler=classify)


def finetune_classify(args: argparse.Namespace) -> None:
    from gptkit.finetune.classify_metrics import print_report
    from gptkit.train.objectives.classify import finetune_classifier
    from gptkit.train.resolve import resume_config

    if args.resume and args.init_from:
        raise GptkitError("--init-from starts a new run; drop it to --resume (a resumed run "
                          "continues from its own checkpoint)")
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.source={args.data}")
    if args.init_from:
        overrides.append(f"train.init_from={args.init_from}")
    out = Path(args.out) if args.out else Path("runs") / load_config(args.recipe, overrides).name
    cfg = resume_config(out, overrides) if args.resume else load_config(args.recipe, overrides)
    result = finetune_classifier(cfg, out, resume=args.resume, overwrite=args.overwrite,
                                 data_dir=args.data_dir, progress=not args.no_progress)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, one report
        return
    print(f"held-out {result.task} classification, best model at step {result.best_step} "
          f"of {result.steps}, {result.metrics['examples']} examples; run in {result.run_dir}")
    print_report(result.metrics)
    print(f"next: gptkit classify {result.run_dir} --text \"...\"")


def classify(args: argparse.Namespace) -> None:
    run = options.load_for_inference(args)
    classifier = run.classifier
    if classifier is None:
        raise GptkitError(f"{args.run} is not a classifier run (no labels.json); train one "
                          "with gptkit finetune-classify")
    if classifier.task == "token":
        sentences = [text.split() for text in args.text]
        if not all(sentences):
            raise GptkitError("--text must hold at least one word to tag")
        tagged = classifier.predict_tokens(sentences)
        if args.json:
            print(json.dumps([{"text": text, "words": [vars(w) for w in words]}
                              for text, words in zip(args.text, tagged, strict=True)], indent=2))
            return
        for words in tagged:
            print(" ".join(f"{w.word}/{w.tag}" for w in words))
        return
    predictions = classifier.predict(args.text)
    if args.json:
        print(json.dumps([{"text": text, **vars(p)}
                          for text, p in zip(args.text, predictions, strict=True)], indent=2))
        return
    for text, p in zip(args.text, predictions, strict=True):
        print(f"{p.label}\t{p.score:.3f}\t{text}")
