"""`gptkit examples`: write small synthetic data files to try fine-tuning on."""

from __future__ import annotations

import argparse
from typing import Any

from gptkit.cli import options


def register(commands: Any) -> None:
    p = commands.add_parser(
        "examples", help="write small synthetic example data files",
        description="Write generated example files (question answering, summarisation, "
        "translation, chat, arithmetic, evaluation tasks, sentiment CSV, NER) to try "
        "fine-tuning on; the same seed gives the same files.",
    )
    p.add_argument("--out", default="examples", metavar="DIR",
                   help="folder to write into (default: examples)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    options.add_overwrite(p, "existing example files")
    p.set_defaults(handler=examples)


def examples(args: argparse.Namespace) -> None:
    from gptkit.finetune.examples import EXAMPLES, write_examples

    paths = write_examples(args.out, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {len(paths)} example files to {args.out}:")
    width = max(len(path.name) for path in paths)
    for path, (_, purpose) in zip(paths, EXAMPLES.values(), strict=True):
        print(f"  {path.name:<{width}} {purpose}")
