"""`gptkit eval` (loss, perplexity, bits per byte; an SFT run's response loss) and
`gptkit eval-generate` (BLEU, ROUGE, exact match of generated answers)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gptkit.cli import options
from gptkit.errors import GptkitError


def register(commands: Any) -> None:
    p = commands.add_parser(
        "eval", help="loss, perplexity and bits per byte of a run",
        description="Score a run's model on a data split: loss, token perplexity, bits per "
        "byte, and word-level perplexity for WikiText sources.",
    )
    options.add_run(p)
    p.add_argument("--data", metavar="SOURCE",
                   help="data source to score (default: the run's own source)")
    p.add_argument("--split", help="split to score (default: the run's data.test_split, "
                   "else its data.eval_split)")
    p.add_argument("--stride", type=int,
                   help="sliding-window stride in tokens (default: the run's eval.stride, "
                   "else block_size = non-overlapping windows)")
    p.add_argument("--batch-size", type=int, help="windows per forward pass")
    options.add_inference(
        p, quantize=f"{options.INT8_HELP}; shows the perplexity int8 costs against a run without "
        "it", precision="autocast precision of the forward passes (default: the run's "
        "train.precision, as its evaluation during training ran, so the loss is the one "
        "training logged)")
    options.add_json(p, "the result")
    options.add_no_progress(p, "shown on stderr while scoring")
    p.set_defaults(handler=evaluate)

    p = commands.add_parser(
        "eval-generate", help="BLEU, ROUGE and exact match of a run's generated answers",
        description="Generate the run's answer to every record of a JSONL task file "
        "(prompt/response, prompt + reference, or chat messages) and score it against the "
        "reference: corpus BLEU (sacrebleu, 0-100), ROUGE-1/2/L F-measure (rouge-score, "
        "mean, 0-1) and exact match after stripping whitespace (0-1).",
    )
    options.add_run(p)
    p.add_argument("--data", required=True, metavar="FILE",
                   help="JSONL task file, e.g. examples/tasks.jsonl")
    p.add_argument("--max-new-tokens", type=int, default=64,
                   help="longest answer in tokens (default 64); answers end at end-of-text")
    p.add_argument("--num-beams", type=int, default=1, help="> 1: beam search (default 1)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy (default); > 0 samples")
    p.add_argument("--batch-size", type=int, default=16,
                   help="prompts generated together (default 16)")
    p.add_argument("--limit", type=int, metavar="N", help="score only the first N records")
    p.add_argument("--predictions", metavar="FILE",
                   help="write one JSON line per example: prompt, reference, prediction, exact")
    options.add_inference(p)
    options.add_json(p, "the scores")
    p.set_defaults(handler=evaluate_generation)


def evaluate(args: argparse.Namespace) -> None:
    from gptkit.compress import is_int8
    from gptkit.data.prepare import prepare
    from gptkit.data.sources import is_wikitext
    from gptkit.device import resolve_precision
    from gptkit.evaluate import evaluate_split
    from gptkit.run import load_run

    for option, value in (("--stride", args.stride), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:  # 0 is no "default": leave the option out for that
            raise GptkitError(f"{option} must be >= 1 (got {value}); leave it out for the "
                              "run's own setting")
    # fp32 weights, autocast as in training (gptkit.device): the loss training logged
    run = load_run(args.run, which=args.checkpoint, device=args.device, quantize=args.quantize)
    cfg, device = run.config, run.device
    precision = "fp32" if is_int8(run.model) else resolve_precision(
        args.precision or cfg.train.precision, device)
    source = args.data or cfg.data.source
    split = args.split or cfg.data.test_split or cfg.data.eval_split
    # another source with the run's other data settings, unchecked as before: a WikiText
    # run's splits may name what --data does not have, and --split picks the one to score
    data_cfg = cfg.data.model_copy(update={"source": source})
    batch_size = args.batch_size if args.batch_size is not None else cfg.eval.batch_size
    if cfg.data.format == "sft":
        _evaluate_responses(run, data_cfg, split, batch_size, precision, args.json)
        return
    data = prepare(data_cfg, splits=[split], data_dir=args.data_dir, tokenizer=run.tokenizer)
    block = cfg.model.block_size
    stride = args.stride if args.stride is not None else cfg.eval.stride or block
    if stride < 1 or stride > block:
        raise GptkitError(f"--stride must be between 1 and block_size ({block}), got {stride}")
    if len(data.tokens(split)) < 2:
        raise GptkitError(f"split {split!r} of {source} has fewer than 2 tokens; nothing to score")
    special = [] if run.tokenizer.eot_id is None else [run.tokenizer.eot_id]
    result = evaluate_split(run.model, data, split, block_size=block, stride=stride,
                            word_level=is_wikitext(source), batch_size=batch_size,
                            device=device, precision=precision, special_ids=special,
                            progress=not args.no_progress)
    int8 = is_int8(run.model)
    if args.json:
        print(json.dumps({"run": str(run.path), "source": source,
                          "quantization": "int8" if int8 else None, **result.to_dict()},
                         indent=2))
        return
    print(f"{run.path}{' (int8)' if int8 else ''} on {source} [{split}], {result.tokens:,} "
          f"tokens, window {block}, stride {stride}")
    print(f"  loss            {result.loss:.4f}")
    print(f"  perplexity      {result.perplexity:.3f}")
    if result.bits_per_byte is not None:
        print(f"  bits per byte   {result.bits_per_byte:.4f}   ({result.bytes:,} bytes)")
    if result.word_perplexity is not None:
        print(f"  word perplexity {result.word_perplexity:.3f}   ({result.words:,} words)")


def _evaluate_responses(run: Any, data_cfg: Any, split: str, batch_size: int, precision: str,
                        as_json: bool) -> None:
    """An SFT run is scored on what it learnt: the responses of the split's records."""
    from gptkit.finetune import sft

    examples = sft.encode_records(sft.load_split(data_cfg, split), run.tokenizer,
                                  run.config.model.block_size,
                                  side=run.config.finetune.truncation_side)
    totals = sft.response_loss(run.model, examples, batch_size=batch_size,
                               pad_id=int(run.tokenizer.eot_id or 0), device=run.device,
                               precision=precision)
    result = {"split": split, "examples": len(examples), **sft.response_metrics(totals)}
    if as_json:
        print(json.dumps({"run": str(run.path), "source": data_cfg.source, **result}, indent=2))
        return
    print(f"{run.path} on the responses of {data_cfg.source} [{split}]: {len(examples)} "
          f"examples, {result['response_tokens']:,} response tokens")
    print(f"  loss            {result['loss']:.4f}")
    print(f"  perplexity      {result['perplexity']:.3f}")
    print(f"  token accuracy  {result['token_accuracy']:.4f}")


def evaluate_generation(args: argparse.Namespace) -> None:
    from gptkit.finetune.eval_generate import check_options, evaluate_generation
    from gptkit.finetune.records import read_records

    settings = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams,
                "temperature": args.temperature, "batch_size": args.batch_size,
                "limit": args.limit}
    check_options(**settings, prefix="--")
    if args.predictions and not Path(args.predictions).resolve().parent.is_dir():
        raise GptkitError(f"--predictions {args.predictions}: its folder does not exist; "
                          "create it first")
    records = read_records(args.data)
    run = options.load_for_inference(args)
    scores = evaluate_generation(run, records, **settings)
    if args.predictions:
        lines = [json.dumps(e.to_dict(), ensure_ascii=False) + "\n" for e in scores.examples]
        Path(args.predictions).write_text("".join(lines), encoding="utf-8")
    if args.json:
        print(json.dumps({"run": str(run.path), "data": args.data, **scores.to_dict()}, indent=2))
        return
    print(f"{run.path} on {args.data}, {scores.n} examples")
    print(f"  BLEU         {scores.bleu:.2f}")
    print(f"  ROUGE-1      {scores.rouge1:.4f}")
    print(f"  ROUGE-2      {scores.rouge2:.4f}")
    print(f"  ROUGE-L      {scores.rougeL:.4f}")
    print(f"  exact match  {scores.exact_match:.4f}")
    if args.predictions:
        print(f"predictions in {args.predictions}")
