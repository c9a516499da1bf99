"""`gptkit <command>`: parse arguments, call the library, turn GptkitError into exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from gptkit.config import (
    RunConfig,
    SampleConfig,
    apply_overrides,
    build_config,
    load_recipe,
    recipe_names,
    sample_checks,
)
from gptkit.errors import GptkitError

DEFAULT_RECIPE = "shakespeare-char"


def _common(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """--data-dir and --debug work before or after the command name."""
    default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    parser.add_argument(
        "--data-dir", metavar="DIR", **default,
        help="data root holding tinyshakespeare/, wikitext-2/ ... "
        "(default: $GPTKIT_DATA_DIR, else ~/.cache/gptkit/data; missing data is downloaded)",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors",
                        **default)


def _recipe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--recipe", default=None, metavar="NAME",
        help=f"a shipped recipe ({', '.join(recipe_names())}) or a .yaml path "
        f"(default: {DEFAULT_RECIPE})",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one setting, e.g. --set train.lr=3e-4 --set model.n_layer=6 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptkit",
        description="Train, evaluate and sample from your own small GPT (GPT-2 architecture).",
        epilog="Run `gptkit COMMAND --help` for a command's options.",
    )
    _common(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser(
        "prepare", help="tokenise a corpus into cached token files",
        description="Build the tokenizer and token files of a recipe's data (cached; a second "
        "call reuses them) and print their statistics.",
    )
    _recipe_args(p)
    p.add_argument("--cache-dir", metavar="DIR",
                   help="where prepared data is kept (default: $GPTKIT_CACHE_DIR, "
                   "else ~/.cache/gptkit/prepared)")
    _common(p)

    p = commands.add_parser(
        "train", help="train a GPT from a recipe",
        description="Train a GPT. Writes config.yaml, tokenizer.json, metrics.jsonl, "
        "checkpoints/ and best/ into the run directory. Under torchrun every process runs "
        "this same command (DDP).",
    )
    _recipe_args(p)
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest valid checkpoint "
                   "(--set overrides apply on top of its saved config)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or eval lines")
    _common(p)

    p = commands.add_parser(
        "eval", help="loss, perplexity and bits per byte of a run",
        description="Score a run's model on a data split: loss, token perplexity, bits per "
        "byte, and word-level perplexity for WikiText sources.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--data", metavar="SOURCE",
                   help="data source to score (default: the run's own source)")
    p.add_argument("--split", help="split to score (default: the run's data.eval_split)")
    p.add_argument("--stride", type=int,
                   help="sliding-window stride in tokens (default: the run's eval.stride, "
                   "else block_size = non-overlapping windows)")
    p.add_argument("--batch-size", type=int, help="windows per forward pass")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="which weights to load (default: best)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _common(p)

    p = commands.add_parser(
        "sample", help="generate text from a run",
        description="Generate text from a run's model. Defaults come from the run's sample "
        "settings.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--prompt", help="text to continue (default: the run's sample.prompt; "
                   "none = start from the end-of-text token)")
    p.add_argument("--max-new-tokens", type=int, help="tokens to generate per sample")
    p.add_argument("--temperature", type=float, help="0 = greedy; higher = more random")
    p.add_argument("--top-k", type=int, help="sample among the K most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, help="nucleus sampling: smallest set with this "
                   "probability mass, in (0, 1]")
    p.add_argument("--num-samples", type=int, help="number of samples")
    p.add_argument("--seed", type=int, help="random seed (same seed, same text)")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="which weights to load (default: best)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    _common(p)

    p = commands.add_parser(
        "info", help="model size, parameters, FLOPs per token and data statistics",
        description="Describe a run directory, or a recipe when no RUN is given.",
    )
    p.add_argument("run", metavar="RUN", nargs="?", help="run directory")
    _recipe_args(p)
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    _common(p)
    return parser


# --- commands ---------------------------------------------------------------------------------


def _config_from(args: argparse.Namespace) -> RunConfig:
    raw = load_recipe(args.recipe or DEFAULT_RECIPE)
    return build_config(apply_overrides(raw, args.overrides))


def cmd_prepare(args: argparse.Namespace) -> None:
    from gptkit.data.prepare import prepare

    cfg = _config_from(args)
    data = prepare(cfg.data, data_dir=args.data_dir, cache=args.cache_dir, progress=True)
    print(f"prepared {cfg.data.source} with a {data.meta['tokenizer_kind']} tokenizer "
          f"({data.tokenizer.vocab_size} tokens) in {data.path}")
    for name, split in data.meta["splits"].items():
        print(f"  {name:>6}: {split['tokens']:>11,} tokens {split['words']:>11,} words "
              f"{split['bytes']:>12,} bytes {split['documents']:>7,} documents")


def cmd_train(args: argparse.Namespace) -> None:
    from gptkit.config import read_config
    from gptkit.train.trainer import train

    if args.resume:
        out = Path(args.out) if args.out else Path("runs") / _config_from(args).name
        saved = read_config(out / "config.yaml") if (out / "config.yaml").is_file() else None
        if saved is None:
            raise GptkitError(
                f"cannot resume: {out} is not a gptkit run (no config.yaml); "
                "drop --resume to start a new run, or point --out at the run"
            )
        cfg = build_config(apply_overrides(saved.to_dict(), args.overrides))
    else:
        cfg = _config_from(args)
        out = Path(args.out) if args.out else Path("runs") / cfg.name
    result = train(
        cfg, out, resume=args.resume, overwrite=args.overwrite, data_dir=args.data_dir,
        progress=not args.no_progress,
    )
    if not args.no_progress and (result.run_dir / "config.yaml").exists():
        best = f"{result.best_val_loss:.4f}" if result.best_val_loss is not None else "n/a"
        print(f"done: {result.step} steps, {result.tokens_seen:,} tokens in "
              f"{result.wall_time_s:.1f}s ({result.tokens_per_s:,.0f} tok/s); "
              f"best val loss {best}; run in {result.run_dir}")
        print(f"next: gptkit sample {result.run_dir}   |   gptkit eval {result.run_dir}")


def cmd_eval(args: argparse.Namespace) -> None:
    from gptkit.data.prepare import prepare
    from gptkit.data.sources import is_wikitext
    from gptkit.evaluate import score_tokens, summarize
    from gptkit.run import load_run
    from gptkit.train.distributed import resolve_device

    device = resolve_device(args.device)
    run = load_run(args.run, which=args.checkpoint, device=device)
    cfg = run.config
    source = args.data or cfg.data.source
    split = args.split or cfg.data.eval_split
    data_cfg = replace(cfg.data, source=source)
    data = prepare(data_cfg, splits=[split], data_dir=args.data_dir, tokenizer=run.tokenizer)
    block = cfg.model.block_size
    stride = args.stride or cfg.eval.stride or block
    if stride < 1 or stride > block:
        raise GptkitError(f"--stride must be between 1 and block_size ({block}), got {stride}")
    batch_size = args.batch_size or cfg.eval.batch_size
    if batch_size < 1:
        raise GptkitError(f"--batch-size must be >= 1, got {batch_size}")
    tokens = data.tokens(split)
    if len(tokens) < 2:
        raise GptkitError(f"split {split!r} of {source} has fewer than 2 tokens; nothing to score")
    special = [] if run.tokenizer.eot_id is None else [run.tokenizer.eot_id]
    score = score_tokens(run.model, tokens, block_size=block, stride=stride,
                         batch_size=batch_size, device=device, special_ids=special)
    meta = data.split_meta(split)
    result = summarize(score, split=split, block_size=block, stride=stride,
                       n_bytes=meta["bytes"],
                       n_words=meta["words"] if is_wikitext(source) else None)
    if args.json:
        print(json.dumps({"run": str(run.path), "source": source, **result.to_dict()}, indent=2))
        return
    print(f"{run.path} on {source} [{split}], {result.tokens:,} tokens, "
          f"window {block}, stride {stride}")
    print(f"  loss            {result.loss:.4f}")
    print(f"  perplexity      {result.perplexity:.3f}")
    if result.bits_per_byte is not None:
        print(f"  bits per byte   {result.bits_per_byte:.4f}   ({result.bytes:,} bytes)")
    if result.word_perplexity is not None:
        print(f"  word perplexity {result.word_perplexity:.3f}   ({result.words:,} words)")


def cmd_sample(args: argparse.Namespace) -> None:
    from gptkit.generate import sample_text
    from gptkit.run import load_run
    from gptkit.train.distributed import resolve_device

    run = load_run(args.run, which=args.checkpoint, device=resolve_device(args.device))
    base = run.config.sample
    chosen: dict[str, Any] = {
        "prompt": args.prompt, "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
        "num_samples": args.num_samples, "seed": args.seed,
    }
    settings: SampleConfig = replace(base, **{k: v for k, v in chosen.items() if v is not None})
    if args.top_k == 0:
        settings.top_k = None
    for ok, message in sample_checks(settings, prefix="--"):
        if not ok:
            raise GptkitError(message.replace("_", "-"))
    separator = "\n" + "-" * 40 + "\n"
    if args.stream:
        # samples advance together; the first is shown live, the others once it is done
        later: dict[int, list[str]] = {}

        def show(index: int, piece: str) -> None:
            if index == 0:
                sys.stdout.write(piece)
                sys.stdout.flush()
            else:
                later.setdefault(index, []).append(piece)

        sample_text(run.model, run.tokenizer, settings.prompt, settings, stream=show)
        for index in sorted(later):
            sys.stdout.write(separator + "".join(later[index]))
        sys.stdout.write("\n")
        return
    texts = sample_text(run.model, run.tokenizer, settings.prompt, settings)
    print(separator.join(texts))


def describe(cfg: RunConfig, vocab_size: int) -> dict[str, Any]:
    """Size, parameter counts and FLOPs of the model a config describes (no weights needed)."""
    import torch

    from gptkit.model import GPT

    with torch.device("meta"):
        model = GPT.from_config(cfg.model, vocab_size)
    return {
        "name": cfg.name,
        "model": {
            "n_layer": cfg.model.n_layer, "n_head": cfg.model.n_head,
            "n_embd": cfg.model.n_embd, "block_size": cfg.model.block_size,
            "vocab_size": model.config.vocab_size, "dropout": cfg.model.dropout,
            "bias": cfg.model.bias,
        },
        "parameters": model.num_params(),
        "parameters_non_embedding": model.num_params(non_embedding=True),
        "weights_mb_fp32": model.num_params() * 4 / 2**20,
        "flops_per_token_training": model.flops_per_token(training=True),
        "flops_per_token_inference": model.flops_per_token(training=False),
    }


def cmd_info(args: argparse.Namespace) -> None:
    if args.run:
        from gptkit.config import read_config
        from gptkit.tokenizers import Tokenizer

        run_dir = Path(args.run)
        cfg = read_config(run_dir / "config.yaml")
        tokenizer = Tokenizer.load(run_dir / "tokenizer.json")
        info = describe(cfg, tokenizer.vocab_size)
        info["run"] = str(run_dir)
        for name in ("data.json", "best/config.json"):
            path = run_dir / name
            if path.is_file():
                info["data" if name == "data.json" else "best"] = json.loads(path.read_text())
    else:
        from gptkit.data.prepare import prepare

        cfg = _config_from(args)
        prepared = prepare(cfg.data, data_dir=args.data_dir)
        info = describe(cfg, prepared.tokenizer.vocab_size)
        info["data"] = prepared.meta
    if args.json:
        print(json.dumps(info, indent=2))
        return
    m = info["model"]
    print(f"{info.get('run', info['name'])}")
    print(f"  model        {m['n_layer']} layers, {m['n_head']} heads, {m['n_embd']} wide, "
          f"context {m['block_size']}, vocabulary {m['vocab_size']:,}")
    print(f"  parameters   {info['parameters']:,} ({info['parameters_non_embedding']:,} "
          f"without embeddings), {info['weights_mb_fp32']:.1f} MB in fp32")
    print(f"  FLOPs/token  {info['flops_per_token_training']:,} training, "
          f"{info['flops_per_token_inference']:,} inference")
    data = info.get("data")
    if data:
        print(f"  data         {data['source']} ({data['tokenizer_kind']} tokenizer)")
        for name, split in data["splits"].items():
            print(f"    {name:>6}: {split['tokens']:>11,} tokens {split['words']:>11,} words "
                  f"{split['bytes']:>12,} bytes")
    best = info.get("best")
    if best:
        print(f"  best         val loss {best['val_loss']:.4f} at step {best['step']} "
              f"({best['tokens_seen']:,} tokens seen)")


COMMANDS = {
    "prepare": cmd_prepare,
    "train": cmd_train,
    "eval": cmd_eval,
    "sample": cmd_sample,
    "info": cmd_info,
}


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except GptkitError as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        print(f"gptkit: error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("gptkit: interrupted", file=sys.stderr)
        sys.exit(130)
