"""`gptkit <command>`: one small module per group of commands parses its arguments and calls the
library (the same functions the server and the Python API call); `main` turns a GptkitError
into a one-line message and exit code 2.

    train.py       prepare, train, finetune, distill
    evaluation.py  eval, eval-generate
    sample.py      sample
    chat.py        chat
    runs.py        info, compare, plot
    export.py      export, prune, import
    classify.py    finetune-classify, classify
    viz.py         viz attention
    serve.py       serve
    arena.py       arena
    sweep.py       sweep
    examples.py    examples
    options.py     the options several commands share, each declared once
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gptkit.cli import (
    arena,
    chat,
    classify,
    evaluation,
    examples,
    export,
    options,
    runs,
    sample,
    serve,
    sweep,
)
from gptkit.cli import train as train_commands
from gptkit.cli import viz as viz_commands
from gptkit.errors import GptkitError

# in the order `gptkit --help` lists them
GROUPS = (train_commands, sweep, evaluation, sample, chat, runs, export, examples, classify,
          viz_commands, serve, arena)


def leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that run a command (`viz attention`, not `viz`)."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        return [parser]
    return [leaf for sub in subparsers for child in dict.fromkeys(sub.choices.values())
            for leaf in leaf_parsers(child)]


def build_parser() -> argparse.ArgumentParser:
    parser = options.Parser(
        prog="gptkit",
        description="Train, evaluate and sample from your own small GPT (GPT-2 architecture).",
        epilog="Run `gptkit COMMAND --help` for a command's options.",
    )
    options.add_common(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in GROUPS:
        group.register(commands)
    for command in dict.fromkeys(commands.choices.values()):
        for leaf in leaf_parsers(command):
            options.add_common(leaf)  # --data-dir and --debug after the command name too
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        options.resolve_runs(args)
        args.handler(args)
    except GptkitError as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        print(f"gptkit: error: {message}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("gptkit: interrupted", file=sys.stderr)
        sys.exit(130)
