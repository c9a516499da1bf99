"""`gptkit prepare`, `train`, `finetune` and `distill`: build a config, then call the trainer."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from gptkit.cli import options
from gptkit.config import RunConfig, load_config
from gptkit.errors import GptkitError


def register(commands: Any) -> None:
    p = commands.add_parser(
        "prepare", help="tokenise a corpus into cached token files",
        description="Build the tokenizer and token files of a recipe's data (cached; a second "
        "call reuses them) and print their statistics.",
    )
    options.add_recipe(p)
    p.add_argument("--cache-dir", metavar="DIR",
                   help="where prepared data is kept (default: $GPTKIT_CACHE_DIR, "
                   "else ~/.cache/gptkit/prepared)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="processes that tokenise (default: data.workers; 0: one per core)")
    p.set_defaults(handler=prepare)

    p = commands.add_parser(
        "train", help="train a GPT from a recipe",
        description="Train a GPT. Writes config.yaml, tokenizer.json, metrics.jsonl, "
        "checkpoints/ and best/ into the run directory. Under torchrun every process runs "
        "this same command (DDP). The run lasts train.max_steps optimizer steps, or "
        "train.epochs passes over the training data (--set train.max_steps=null --set "
        "train.epochs=2); the eval, checkpoint and log intervals may be epochs too "
        "(--set train.eval_interval='0.5 epochs').",
    )
    options.add_recipe(p)
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest valid checkpoint "
                   "(--set overrides apply on top of its saved config)")
    options.add_overwrite(p)
    p.add_argument("--init-from", metavar="RUN",
                   help="start from this run's weights, model shape and tokenizer, e.g. an "
                   "imported GPT-2 (sets train.init_from; optimizer and schedule start fresh)")
    options.add_no_progress(p)
    p.set_defaults(handler=train)

    p = commands.add_parser(
        "finetune", help="supervised fine-tuning on prompt/response or chat JSONL",
        description="Fine-tune a run on JSONL records {\"prompt\", \"response\"} or "
        "{\"messages\": [...]}, with the loss on responses only (docs/finetuning.md). Same as "
        "`gptkit train --recipe sft --init-from RUN --set data.source=FILE`.",
    )
    options.add_run(p, "the run to start from (e.g. an imported GPT-2)")
    p.add_argument("--data", required=True, metavar="FILE", help="JSONL training records")
    options.add_recipe(p, default="sft")
    options.add_run_out(p)
    p.set_defaults(handler=finetune)

    p = commands.add_parser(
        "distill", help="train a small student on a teacher run's predictions",
        description="Knowledge distillation: train the student a recipe describes with loss "
        "= alpha * KL(teacher || student at temperature T) * T^2 + (1 - alpha) * "
        "cross-entropy (distill.alpha, distill.temperature). The student takes the teacher's "
        "tokenizer.",
    )
    p.add_argument("--teacher", required=True, metavar="RUN", help="the teacher's run directory")
    p.add_argument("--student-recipe", dest="recipe", required=True, metavar="NAME",
                   help="recipe of the student (a shipped name or a .yaml path)")
    options.add_overrides(p, "override one setting of the student's recipe (repeatable)")
    options.add_run_out(p)
    p.set_defaults(handler=distill)


def prepare(args: argparse.Namespace) -> None:
    from gptkit.data.prepare import prepare
    from gptkit.data.sources import resolve_protocol

    if args.workers is not None:
        args.overrides = [*args.overrides, f"data.workers={args.workers}"]
    data_cfg, protocol = resolve_protocol(options.config_from(args).data, args.data_dir)
    if protocol:
        print(protocol, file=sys.stderr)
    splits = [data_cfg.train_split, data_cfg.eval_split, data_cfg.test_split]
    data = prepare(data_cfg, splits=[s for s in splits if s], data_dir=args.data_dir,
                   cache=args.cache_dir, progress=True)
    print(f"prepared {data_cfg.source} with a {data.meta['tokenizer_kind']} tokenizer "
          f"({data.tokenizer.vocab_size} tokens) in {data.path}")
    for name, split in data.meta["splits"].items():
        print(f"  {name:>6}: {split['tokens']:>11,} tokens {split['words']:>11,} words "
              f"{split['bytes']:>12,} bytes {split['documents']:>7,} documents "
              f"{len(split['shards']):>5,} shards")


def train(args: argparse.Namespace) -> None:
    from gptkit.train.resolve import resume_config

    if args.resume and args.init_from:
        raise GptkitError("--init-from starts a new run; drop it to --resume (a resumed run "
                          "continues from its own checkpoint)")
    if args.resume:
        out = Path(args.out) if args.out else Path("runs") / options.config_from(args).name
        cfg = resume_config(out, args.overrides)
    else:
        cfg = options.config_from(args)
        out = Path(args.out) if args.out else Path("runs") / cfg.name
    train_and_report(cfg, out, args, resume=args.resume)


def train_and_report(cfg: RunConfig, out: Path, args: argparse.Namespace, *,
                     resume: bool = False) -> None:
    from gptkit.rundir import RunDir
    from gptkit.train.trainer import train

    result = train(
        cfg, out, resume=resume, overwrite=args.overwrite, data_dir=args.data_dir,
        progress=not args.no_progress,
    )
    if os.environ.get("RANK", "0") == "0" and RunDir(result.run_dir).is_run():
        best = f"{result.best_val_loss:.4f}" if result.best_val_loss is not None else "n/a"
        speed = f" ({result.tokens_per_s:,.0f} tok/s)" if result.tokens_per_s else ""
        print(f"done: {result.step} steps, {result.tokens_seen:,} tokens in "
              f"{result.wall_time_s:.1f}s{speed}; "
              f"best val loss {best}; run in {result.run_dir}")
        print(f"next: gptkit sample {result.run_dir}   |   gptkit eval {result.run_dir}")


def finetune(args: argparse.Namespace) -> None:
    overrides = [*args.overrides, f"train.init_from={args.run}", f"data.source={args.data}"]
    cfg = load_config(args.recipe, overrides)
    train_and_report(cfg, Path(args.out or Path("runs") / f"{Path(args.run).name}-{cfg.name}"),
                     args)


def distill(args: argparse.Namespace) -> None:
    overrides = [*args.overrides, f"distill.teacher={args.teacher}"]
    cfg = load_config(args.recipe, overrides)
    train_and_report(cfg, Path(args.out or Path("runs") / cfg.name), args)
