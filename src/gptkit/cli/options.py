"""Options several commands share, each declared once here, and the parser class that turns a
bad argument into gptkit's one-line error."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptkit.config import (
    RunConfig,
    apply_overrides,
    build_config,
    inherit_init_model,
    load_recipe,
    recipe_names,
)
from gptkit.config.choices import Precision, Quantization, names
from gptkit.errors import GptkitError

if TYPE_CHECKING:
    from gptkit.generation.speculative import Speculative
    from gptkit.guard import OutputGuard
    from gptkit.run import Run

DEFAULT_RECIPE = "shakespeare-char"


class Parser(argparse.ArgumentParser):
    """Bad arguments are one line and exit 2, like every other gptkit error: the usage block
    argparse would print first is behind `--help`. Subcommands' parsers are of this class too
    (add_subparsers makes them of the parent's class)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"gptkit: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def add_common(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """--data-dir and --debug work before or after the command name."""
    default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument(
        "--data-dir", metavar="DIR", **default,
        help="data root holding tinyshakespeare/, wikitext-2/ ... "
        "(default: $GPTKIT_DATA_DIR, else ~/.cache/gptkit/data; missing data is downloaded)",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors",
                        **default)


def add_recipe(parser: argparse.ArgumentParser, default: str = DEFAULT_RECIPE) -> None:
    parser.add_argument(
        "--recipe", default=None if default == DEFAULT_RECIPE else default, metavar="NAME",
        help=f"a shipped recipe ({', '.join(recipe_names())}) or a .yaml path "
        f"(default: {default})",
    )
    add_overrides(parser)


def add_overrides(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=help or "override one setting, e.g. --set train.lr=3e-4 --set model.n_layer=6 "
        "(repeatable)",
    )


def add_overwrite(parser: argparse.ArgumentParser, what: str = "an existing run directory"
                  ) -> None:
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def add_no_progress(parser: argparse.ArgumentParser,
                    shown: str = "the evaluation lines are still printed") -> None:
    parser.add_argument("--no-progress", action="store_true", help=f"no progress bar ({shown})")


def add_run_out(parser: argparse.ArgumentParser) -> None:
    """--out, --overwrite and --no-progress of a command that trains a run."""
    parser.add_argument("--out", metavar="DIR", help="run directory (default: runs/<name>)")
    add_overwrite(parser)
    add_no_progress(parser)


def add_json(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON")


RUN_HELP = ("run directory, or a Hugging Face GPT-2 folder or cached hub id (imported into "
            "$GPTKIT_CACHE/imports on first use)")


def add_run(parser: argparse.ArgumentParser, help: str = RUN_HELP) -> None:
    parser.add_argument("run", metavar="RUN", help=help)


def resolve_runs(args: argparse.Namespace) -> None:
    """Every command's RUN and --init-from, as gptkit runs: a Hugging Face folder or hub id is
    swapped for its cached import (`gptkit.interop.hf_runs.as_run`); a run stays as typed."""
    from gptkit.interop.hf_runs import as_run

    for key in ("run", "init_from", "draft"):
        value = getattr(args, key, None)
        if isinstance(value, str):
            resolved = as_run(value)
            if resolved != Path(value).expanduser():
                setattr(args, key, str(resolved))


def add_checkpoint(parser: argparse.ArgumentParser, verb: str = "load") -> None:
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help=f"which weights to {verb} (default: best)")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


INT8_HELP = "int8: dynamic int8 linear layers (gptkit.compress), on the CPU"


def add_inference(parser: argparse.ArgumentParser, quantize: str = INT8_HELP,
                  precision: str = "fp32 (default), bf16, fp16 or auto (gptkit.device)") -> None:
    """--checkpoint, --device, --precision and --quantize of every command that runs a run's
    model: the same options everywhere, resolved by gptkit.device (`precision`, `quantize`:
    the command's help for them)."""
    add_checkpoint(parser)
    add_device(parser)
    parser.add_argument("--precision", choices=names(Precision), help=precision)
    parser.add_argument("--quantize", choices=names(Quantization), help=quantize)


def config_from(args: argparse.Namespace) -> RunConfig:
    """The config of --recipe with --set (and --init-from) applied; a `train.init_from`
    that the recipe or --set names is resolved as --init-from is (`resolve_runs`)."""
    raw = load_recipe(args.recipe or DEFAULT_RECIPE)
    overrides = list(args.overrides)
    if getattr(args, "init_from", None):
        overrides.append(f"train.init_from={args.init_from}")
    overrides += _imported_init_from(raw, overrides)
    return build_config(inherit_init_model(raw, overrides))


def _imported_init_from(raw: dict[str, Any], overrides: list[str]) -> list[str]:
    """The override pointing `train.init_from` at its import, when the recipe or --set names
    a Hugging Face folder or cached hub id there; none otherwise (a run, or a path that does
    not exist yet: the trainer reports it)."""
    from gptkit.interop.hf_runs import as_run

    train = apply_overrides(raw, overrides).get("train")
    init_from = train.get("init_from") if isinstance(train, dict) else None
    if not isinstance(init_from, str) or not init_from:
        return []
    path = Path(init_from).expanduser()
    try:
        resolved = as_run(init_from)
    except GptkitError:
        if path.exists():
            raise
        return []
    return [] if resolved == path else [f"train.init_from={resolved}"]


def load_for_inference(args: argparse.Namespace, precision: str = "fp32") -> Run:
    """The run named on the command line, loaded by the one loader (`gptkit.run.load_run`) with
    the options `add_inference` declares; `precision` is the command's default for the weights'
    dtype (`gptkit.device`)."""
    from gptkit.run import load_run

    return load_run(args.run, which=args.checkpoint, device=args.device,
                    precision=args.precision or precision, quantize=args.quantize)


def add_draft(parser: argparse.ArgumentParser) -> None:
    """--draft and --draft-tokens: speculative decoding with a small model of the same
    tokenizer (`gptkit.generation.speculative`), for every command that generates."""
    parser.add_argument(
        "--draft", metavar="RUN",
        help="speculative decoding: a smaller run with the same tokenizer (e.g. made with "
        "gptkit distill --teacher RUN) proposes tokens that the model checks in one pass; "
        "greedy text is unchanged, sampled text keeps its distribution")
    parser.add_argument("--draft-tokens", type=int, metavar="K",
                        help="tokens the draft proposes per pass of the model (default 4)")


def load_draft(args: argparse.Namespace, run: Run) -> Speculative | None:
    """The --draft run, loaded with the command's --checkpoint, --device, --precision and
    --quantize and checked to share `run`'s tokenizer; None without --draft."""
    from gptkit.generation.speculative import DEFAULT_DRAFT_TOKENS, Speculative, check_draft
    from gptkit.run import load_run

    if args.draft is None:
        if args.draft_tokens is not None:
            raise GptkitError("--draft-tokens needs --draft RUN, the draft model to use")
        return None
    if args.draft_tokens is not None and args.draft_tokens < 1:
        raise GptkitError(f"--draft-tokens must be >= 1 (got {args.draft_tokens})")
    draft = load_run(args.draft, which=args.checkpoint, device=args.device,
                     precision=args.precision or "auto", quantize=args.quantize)
    check_draft(run.tokenizer, draft.tokenizer, args.draft)
    return Speculative(draft.model, args.draft_tokens or DEFAULT_DRAFT_TOKENS)


def add_guard(parser: argparse.ArgumentParser, retries: bool = True) -> None:
    """--guard RUN, --guard-label, --threshold (and --guard-retries where an answer can be
    regenerated): a classifier run guards the generated text (`gptkit.guard`)."""
    parser.add_argument(
        "--guard", metavar="RUN",
        help="a sequence classifier run (gptkit finetune-classify) that scores each answer "
        "(streamed: each sentence as it completes) and regenerates or withholds what reaches "
        "--threshold for --guard-label")
    parser.add_argument("--guard-label", metavar="LABEL",
                        help="with --guard: the label whose probability is checked")
    parser.add_argument("--threshold", type=float, metavar="P",
                        help="with --guard: withhold (or regenerate) an answer whose "
                        "probability of --guard-label is at least P, in [0, 1] (default 0.5)")
    if retries:
        parser.add_argument("--guard-retries", type=int, metavar="K",
                            help="with --guard: regenerate an answer that crosses the "
                            "threshold up to K times before withholding it (default 2; "
                            "greedy decoding is never retried: it would give the same text)")


def load_guard(args: argparse.Namespace) -> OutputGuard | None:
    """The --guard classifier, loaded once on the command's --device; None without --guard
    (then its other options are an error)."""
    from gptkit.guard import OutputGuard

    retries = getattr(args, "guard_retries", None)
    if args.guard is None:
        given = [flag for flag, value in (("--guard-label", args.guard_label),
                                          ("--threshold", args.threshold),
                                          ("--guard-retries", retries)) if value is not None]
        if given:
            raise GptkitError(f"{given[0]} needs --guard RUN, the classifier run that guards "
                              "the answers")
        return None
    if args.guard_label is None:
        raise GptkitError("--guard needs --guard-label LABEL, the label to keep out (gptkit "
                          "classify RUN --text ... shows a run's labels)")
    if retries is not None and retries < 0:
        raise GptkitError(f"--guard-retries must be >= 0 (got {retries})")
    threshold = 0.5 if args.threshold is None else args.threshold
    return OutputGuard.load(args.guard, args.guard_label, threshold, device=args.device)
