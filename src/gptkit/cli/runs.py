"""`gptkit info`, `compare` and `plot`: describe a run or recipe, compare runs, draw curves."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gptkit.cli import options
from gptkit.config.choices import WeightDtype, names
from gptkit.errors import GptkitError


def register(commands: Any) -> None:
    p = commands.add_parser(
        "info", help="model size, parameters, FLOPs, memory, data statistics, best metrics",
        description="Describe a run directory, or a recipe when no RUN is given.",
    )
    p.add_argument("run", metavar="RUN", nargs="?", help="run directory")
    options.add_recipe(p)
    options.add_json(p, "the description")
    p.add_argument("--world-size", type=int, metavar="N",
                   help="add the memory plan: per-process training memory over N processes "
                   "for each strategy (none, ddp, fsdp, fsdp + CPU offload), with and without "
                   "activation checkpointing")
    p.add_argument("--precision", choices=names(WeightDtype),
                   help="precision of the memory figures (default: the run's, else "
                   "train.precision; auto counts as fp32)")
    p.set_defaults(handler=info)

    p = commands.add_parser(
        "plot", help="loss and perplexity curves of one or more runs, as a PNG",
        description="Draw the loss (training and validation) and validation perplexity of "
        "runs overlaid, against steps or tokens seen, with a star at each run's best "
        "checkpoint; 1200x450 pixels. A finished run also has its own in RUN/plots/.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="picture to write (.png, .svg or .pdf)")
    p.add_argument("--x", choices=("steps", "tokens"), default="steps",
                   help="horizontal axis: optimizer steps or tokens seen (default: steps)")
    p.add_argument("--log-scale", action="store_true",
                   help="logarithmic loss and perplexity axes")
    p.add_argument("--label", action="append", metavar="NAME",
                   help="legend name of each run, in order (repeat once per run; default: "
                   "the runs' folder names)")
    options.add_overwrite(p, "an existing --out file")
    p.set_defaults(handler=plot)

    p = commands.add_parser(
        "compare", help="the settings that differ between runs, and their final metrics",
        description="A table with one column per run: every configuration key whose value "
        "differs between the runs (and only those), then each run's best and final "
        "validation loss, perplexity, steps, tokens seen, wall time and throughput.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="two or more run directories")
    options.add_json(p, "the comparison")
    p.set_defaults(handler=compare)


def info(args: argparse.Namespace) -> None:
    from gptkit.device import memory_precision
    from gptkit.runinfo import describe, format_info, run_info

    if args.world_size is not None and args.world_size < 1:
        raise GptkitError(f"--world-size must be >= 1 (got {args.world_size})")
    if args.run:
        info = run_info(args.run, args.precision, args.world_size)
    else:
        cfg = options.config_from(args)
        precision = memory_precision(args.precision or cfg.train.precision)
        if cfg.model.vocab_size is not None:  # e.g. the GPT-2 presets: no data to read
            info = describe(cfg, cfg.model.vocab_size, precision, args.world_size)
        else:  # the vocabulary is the tokenizer's, learnt from the data
            from gptkit.data.prepare import prepare
            from gptkit.data.sources import resolve_protocol

            cfg = cfg.updated(data=resolve_protocol(cfg.data, args.data_dir)[0])
            prepared = prepare(cfg.data, data_dir=args.data_dir)
            info = describe(cfg, prepared.tokenizer.vocab_size, precision, args.world_size)
            info["data"] = prepared.meta
    print(json.dumps(info, indent=2) if args.json else format_info(info))


def plot(args: argparse.Namespace) -> None:
    from gptkit.viz.curves import plot_runs

    out = plot_runs(args.runs, args.out, x=args.x, log_scale=args.log_scale, labels=args.label,
                    overwrite=args.overwrite)
    print(out)


def compare(args: argparse.Namespace) -> None:
    from gptkit.compare import compare_runs, format_table

    comparison = compare_runs(args.runs)
    if args.json:
        print(json.dumps(comparison.to_dict(), indent=2))
        return
    print(format_table(comparison))
