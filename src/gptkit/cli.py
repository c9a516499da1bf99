"""`gptkit <command>`: parse arguments, call the library, turn GptkitError into exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from gptkit.config import (
    RunConfig,
    apply_overrides,
    build_config,
    inherit_init_model,
    load_config,
    load_recipe,
    recipe_names,
)
from gptkit.errors import GptkitError
from gptkit.generation.config import GenerationConfig

DEFAULT_RECIPE = "shakespeare-char"


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line and exit 2, like every other gptkit error: the usage block
    argparse would print first is behind `--help`. Subcommands' parsers are of this class too
    (add_subparsers makes them of the parent's class)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"gptkit: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


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


def _recipe_args(parser: argparse.ArgumentParser, default: str = DEFAULT_RECIPE) -> None:
    parser.add_argument(
        "--recipe", default=None if default == DEFAULT_RECIPE else default, metavar="NAME",
        help=f"a shipped recipe ({', '.join(recipe_names())}) or a .yaml path "
        f"(default: {default})",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one setting, e.g. --set train.lr=3e-4 --set model.n_layer=6 (repeatable)",
    )


def _run_out_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="DIR", help="run directory (default: runs/<name>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing run directory")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (the evaluation lines are still printed)")


def _checkpoint_arg(parser: argparse.ArgumentParser, verb: str = "load") -> None:
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help=f"which weights to {verb} (default: best)")


def _device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")


def _inference_args(parser: argparse.ArgumentParser, quantize: str | None = None) -> None:
    """--checkpoint and --device of a command that runs a run's model; --quantize int8 too when
    `quantize`, its help, is given."""
    _checkpoint_arg(parser)
    _device_arg(parser)
    if quantize is not None:
        parser.add_argument("--quantize", choices=("int8",), help=quantize)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    p.add_argument("--workers", type=int, metavar="N",
                   help="processes that tokenise (default: data.workers; 0: one per core)")
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
    p.add_argument("--init-from", metavar="RUN",
                   help="start from this run's weights, model shape and tokenizer, e.g. an "
                   "imported GPT-2 (sets train.init_from; optimizer and schedule start fresh)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (the evaluation lines are still printed)")
    _common(p)

    p = commands.add_parser(
        "finetune", help="supervised fine-tuning on prompt/response or chat JSONL",
        description="Fine-tune a run on JSONL records {\"prompt\", \"response\"} or "
        "{\"messages\": [...]}, with the loss on responses only (docs/finetuning.md). Same as "
        "`gptkit train --recipe sft --init-from RUN --set data.source=FILE`.",
    )
    p.add_argument("run", metavar="RUN", help="the run to start from (e.g. an imported GPT-2)")
    p.add_argument("--data", required=True, metavar="FILE", help="JSONL training records")
    _recipe_args(p, default="sft")
    _run_out_args(p)
    _common(p)

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
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting of the student's recipe (repeatable)")
    _run_out_args(p)
    _common(p)

    p = commands.add_parser(
        "eval", help="loss, perplexity and bits per byte of a run",
        description="Score a run's model on a data split: loss, token perplexity, bits per "
        "byte, and word-level perplexity for WikiText sources.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--data", metavar="SOURCE",
                   help="data source to score (default: the run's own source)")
    p.add_argument("--split", help="split to score (default: the run's data.test_split, "
                   "else its data.eval_split)")
    p.add_argument("--stride", type=int,
                   help="sliding-window stride in tokens (default: the run's eval.stride, "
                   "else block_size = non-overlapping windows)")
    p.add_argument("--batch-size", type=int, help="windows per forward pass")
    _inference_args(p, quantize="int8: dynamic int8 linear layers (gptkit.compress), on the "
                    "CPU; shows the perplexity int8 costs against a run without it")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (shown on stderr while scoring)")
    _common(p)

    p = commands.add_parser(
        "sample", help="generate text from a run",
        description="Generate text from a run's model. Defaults come from the run's sample "
        "settings.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--prompt", action="append",
                   help="text to continue; repeat it for a batch of prompts generated together "
                   "(default: the run's sample.prompt; none = start from the end-of-text token)")
    p.add_argument("--prompts-file", metavar="FILE",
                   help="a batch of prompts, one per line (blank lines skipped), added after "
                   "any --prompt")
    p.add_argument("--max-new-tokens", type=int, help="tokens to generate per sample")
    p.add_argument("--min-new-tokens", type=int,
                   help="forbid the end-of-text token until this many new tokens (0 = off)")
    p.add_argument("--temperature", type=float,
                   help="0 = greedy (or plain beam search); higher = more random")
    p.add_argument("--top-k", type=int, help="sample among the K most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, help="nucleus sampling: smallest set with this "
                   "probability mass, in (0, 1]")
    p.add_argument("--typical-p", type=float,
                   help="typical sampling: keep the tokens whose surprise is closest to the "
                   "entropy, up to this probability mass, in (0, 1] (1 = off)")
    p.add_argument("--repetition-penalty", type=float,
                   help="> 1 makes tokens already in the text (prompt included) less likely, "
                   "< 1 more likely (1 = off; 1.2 is a common choice)")
    p.add_argument("--no-repeat-ngram-size", type=int, metavar="N",
                   help="never repeat a sequence of N tokens, prompt included (0 = off)")
    p.add_argument("--bad-words", action="append", metavar="TEXT",
                   help="a word or phrase never to generate, e.g. to filter unwanted or toxic "
                   "text (also banned after a space); repeatable. It bans these token sequences: "
                   "a model could still spell the word with other tokens")
    p.add_argument("--stop", action="append", metavar="TEXT",
                   help="stop a sample once its new text contains TEXT; the text ends before it "
                   "(repeatable; e.g. --stop $'\\n\\n' in bash for a blank line)")
    p.add_argument("--num-samples", "--num-return-sequences", dest="num_samples", type=int,
                   help="samples per prompt; with beam search, how many of the best beams to "
                   "show (at most --num-beams)")
    p.add_argument("--num-beams", type=int,
                   help="> 1: beam search with this many beams (with --temperature > 0: beam "
                   "sampling); 1 = off")
    p.add_argument("--length-penalty", type=float,
                   help="beam search: a text's score is its log-probability / new tokens ** "
                   "this; > 0 favours longer texts, < 0 shorter (default 1)")
    p.add_argument("--early-stopping", choices=("true", "false", "never"),
                   help="beam search: true = stop once --num-beams texts have ended; false = "
                   "once the best open beam, scored at its current length, cannot beat them; "
                   "never = only once no open beam could (default: false)")
    p.add_argument("--seed", type=int,
                   help="random seed: the same seed gives the same text. Without it each call "
                   "draws fresh randomness, as gptkit serve (a request without a seed), "
                   "transformers' pipeline and llama.cpp do: a sampler asked again is asked "
                   "for another text (the run's sample.seed seeds only the samples training "
                   "writes to samples.txt)")
    p.add_argument("--stream", action="store_true", help="print text as it is generated "
                   "(beam search: when the search ends)")
    _inference_args(p, quantize="int8: dynamic int8 linear layers (gptkit.compress), on the "
                    "CPU: weights about 3.5x smaller in memory. Faster only for wide models: "
                    "batch-1 generation measured 0.90x to 1.08x the fp32 speed (median 0.97x) "
                    "on the default recipe's 0.8M-parameter model, 3.1x on a 6-layer, "
                    "384-wide GPT-2 with its 50,257-token vocabulary (README, Compression)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="weights' dtype for generation; auto (default): bf16 on GPUs and on "
                   "CPUs with bf16 matrix instructions for models at least 256 wide (about 2x "
                   "faster per token there), else fp32")
    _common(p)

    p = commands.add_parser(
        "info", help="model size, parameters, FLOPs, memory, data statistics, best metrics",
        description="Describe a run directory, or a recipe when no RUN is given.",
    )
    p.add_argument("run", metavar="RUN", nargs="?", help="run directory")
    _recipe_args(p)
    p.add_argument("--json", action="store_true", help="print the description as JSON")
    p.add_argument("--world-size", type=int, metavar="N",
                   help="add the memory plan: per-process training memory over N processes "
                   "for each strategy (none, ddp, fsdp, fsdp + CPU offload), with and without "
                   "activation checkpointing")
    p.add_argument("--precision", choices=("fp32", "bf16"),
                   help="precision of the memory figures (default: the run's, else "
                   "train.precision; auto counts as fp32)")
    _common(p)

    p = commands.add_parser(
        "export", help="write a run as a Hugging Face model folder, or as an int8 run",
        description="Write a run's model and tokenizer as a folder that transformers loads "
        "(AutoModelForCausalLM / AutoTokenizer.from_pretrained(OUT)). With --quantize int8, "
        "write a gptkit run folder instead (config.yaml, tokenizer.json, best/ with int8 "
        "weights and their scales in safetensors, marked \"quantization\": \"int8\" in "
        "best/config.json) that gptkit sample/eval/info OUT load as an int8 model on the CPU; "
        "Hugging Face GPT-2 has no int8 layers to hold it.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--format", choices=("hf", "gptkit"),
                   help="hf: Hugging Face GPT-2 (config.json, model.safetensors, tokenizer; "
                   "the default); gptkit: a run folder (the default with --quantize)")
    p.add_argument("--quantize", choices=("int8",),
                   help="int8: dynamic int8 linear layers for CPU inference (--format gptkit)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write")
    _checkpoint_arg(p, "export")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export")
    _common(p)

    p = commands.add_parser(
        "prune", help="zero a share of a run's weights; write the result as a new run",
        description="Prune a run's model with torch.nn.utils.prune and write it, pruning made "
        "permanent, as a new run (config, tokenizer, best/ with a model-card note of the "
        "achieved sparsity) that eval, sample, export and prune accept. Methods: magnitude = "
        "the smallest weights of every linear layer of the blocks (the same share in each); "
        "heads = whole attention heads; mlp = whole MLP hidden channels (both chosen over "
        "all layers by the L2 norm of their weights). Zeros make no dense kernel faster; "
        "measure what they cost with gptkit eval OUT.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--method", required=True, choices=("magnitude", "heads", "mlp"),
                   help="what to remove")
    p.add_argument("--amount", required=True, type=float,
                   help="share to remove, between 0 and 1: of the weights (magnitude), heads "
                   "or MLP channels (rounded to whole ones)")
    p.add_argument("--out", required=True, metavar="DIR", help="the new run directory")
    _checkpoint_arg(p, "prune")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    _common(p)

    p = commands.add_parser(
        "import", help="make a run from a Hugging Face GPT-2",
        description="Turn a Hugging Face GPT-2 (a local folder, or a hub id such as gpt2 or "
        "distilgpt2, downloaded unless offline) into a run directory that eval, sample, info "
        "and train --init-from accept.",
    )
    p.add_argument("source", metavar="SOURCE", help="folder with config.json, weights and "
                   "tokenizer files, or a hub id")
    p.add_argument("--out", metavar="RUN", help="run directory (default: runs/<source name>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    _common(p)
    p = commands.add_parser(
        "eval-generate", help="BLEU, ROUGE and exact match of a run's generated answers",
        description="Generate the run's answer to every record of a JSONL task file "
        "(prompt/response, prompt + reference, or chat messages) and score it against the "
        "reference: corpus BLEU (sacrebleu, 0-100), ROUGE-1/2/L F-measure (rouge-score, "
        "mean, 0-1) and exact match after stripping whitespace (0-1).",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
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
    _inference_args(p)
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    _common(p)

    p = commands.add_parser(
        "examples", help="write small synthetic example data files",
        description="Write generated example files (question answering, summarisation, "
        "translation, chat, arithmetic, evaluation tasks, sentiment CSV, NER) to try "
        "fine-tuning on; the same seed gives the same files.",
    )
    p.add_argument("--out", default="examples", metavar="DIR",
                   help="folder to write into (default: examples)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing example files")
    _common(p)

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
    _recipe_args(p, default="sentiment")
    p.add_argument("--init-from", metavar="RUN",
                   help="start from this run's weights, model shape and tokenizer (sets "
                   "train.init_from; default: a fresh model from the recipe)")
    _run_out_args(p)
    _common(p)

    p = commands.add_parser(
        "classify", help="label texts (or tag their words) with a finetune-classify run",
        description="Print the label and its probability for each --text; for a token "
        "(tagging) run, each --text is split on whitespace into words and printed as "
        "word/TAG pairs.",
    )
    p.add_argument("run", metavar="RUN", help="a run directory written by finetune-classify")
    p.add_argument("--text", action="append", required=True, metavar="TEXT",
                   help="a text to classify (repeatable)")
    _device_arg(p)
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    _common(p)

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
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _common(p)

    p = commands.add_parser(
        "compare", help="the settings that differ between runs, and their final metrics",
        description="A table with one column per run: every configuration key whose value "
        "differs between the runs (and only those), then each run's best and final "
        "validation loss, perplexity, steps, tokens seen, wall time and throughput.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="two or more run directories")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    _common(p)

    p = commands.add_parser(
        "viz", help="pictures of what a model does (viz attention: attention maps)",
        description="Draw what a run's model does on an input. `gptkit viz attention RUN "
        "--prompt TEXT --out FILE.png` draws its attention weights.",
    )
    views = p.add_subparsers(dest="view", metavar="VIEW", required=True)
    p = views.add_parser(
        "attention", help="heat maps of a run's attention weights on a prompt",
        description="Run the model once on --prompt and draw its real attention weights (the "
        "ones that produce the attention output) as heat maps: one row per query token, one "
        "column per key token, both labelled with the decoded tokens (space shown as ␣, "
        "newline as \\n). Cells hidden by the causal mask are hatched grey. One map for "
        "--layer L --head H; a grid when either is 'all' (the default: every layer and head, "
        "one row per layer). From Python: gptkit.viz.attention.attention_maps.",
    )
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--prompt", required=True, metavar="TEXT",
                   help="text to look at, at most block_size tokens (write a newline as "
                   "$'...\\n...' in bash: \\n is not interpreted)")
    p.add_argument("--layer", default="all", metavar="L",
                   help="layer from 0, or all for a grid of every layer (default: all)")
    p.add_argument("--head", default="all", metavar="H",
                   help="head from 0, or all for a grid of every head (default: all)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="picture to write (.png, .svg or .pdf)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    _inference_args(p)
    p.add_argument("--json", action="store_true",
                   help="print the tokens and the drawn weights [layer][head][query][key] as "
                   "JSON")
    _common(p)

    p = commands.add_parser(
        "serve", help="serve a run over HTTP: OpenAI-style API, streaming, playground page",
        description="Serve a run's model on an HTTP API (needs the serve extra: pip install "
        "-e '.[serve]'): POST /v1/completions (OpenAI's completions API; server-sent events "
        "with \"stream\": true; same settings and meaning as gptkit sample; a request "
        "without a seed draws fresh randomness, as gptkit sample without --seed), "
        "GET /v1/models, "
        "GET /health, POST /v1/classify for finetune-classify runs, and a playground page at "
        "/. Requests that arrive together are generated as one batch. Listens on 127.0.0.1 "
        "(this machine only) unless --host says otherwise.",
    )
    p.add_argument("run", metavar="RUN", help="run directory (a language model or a "
                   "finetune-classify run)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; "
                   "0.0.0.0 = every network, better with --api-key)")
    p.add_argument("--port", type=int, default=8000,
                   help="port (default: 8000; 0 = any free port, printed at start)")
    p.add_argument("--api-key", metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1/* (the page asks for it)")
    p.add_argument("--max-batch-size", type=int, default=8, metavar="N",
                   help="completion rows (prompts x n) generated together (default 8; 1 = "
                   "no batching)")
    p.add_argument("--batch-window-ms", type=float, default=5.0, metavar="MS",
                   help="how long a request waits for others to share its batch (default 5)")
    p.add_argument("--max-prompt-tokens", type=int, default=2048, metavar="N",
                   help="longest prompt accepted, in tokens (default 2048; longer: 413)")
    p.add_argument("--max-tokens", type=int, default=1024, metavar="N",
                   help="largest max_tokens a request may ask for (default 1024; more: 422)")
    p.add_argument("--max-concurrent", type=int, default=32, metavar="N",
                   help="requests in progress at once, queued or generating (default 32; "
                   "more: 429)")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, metavar="N",
                   help="largest request body (default 1000000; larger: 413)")
    _inference_args(p, quantize="int8: dynamic int8 linear layers (gptkit.compress), on the "
                    "CPU, as for gptkit sample")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   default="info", help="server log detail; info shows each request "
                   "(default: info)")
    _common(p)
    return parser


# --- commands ---------------------------------------------------------------------------------


def _config_from(args: argparse.Namespace) -> RunConfig:
    raw = load_recipe(args.recipe or DEFAULT_RECIPE)
    overrides = list(args.overrides)
    if getattr(args, "init_from", None):
        overrides.append(f"train.init_from={args.init_from}")
    return build_config(inherit_init_model(raw, overrides))


def cmd_prepare(args: argparse.Namespace) -> None:
    from gptkit.data.prepare import prepare

    if args.workers is not None:
        args.overrides = [*args.overrides, f"data.workers={args.workers}"]
    from gptkit.data.sources import resolve_protocol

    cfg = _config_from(args)
    cfg.data, protocol = resolve_protocol(cfg.data, args.data_dir)
    if protocol:
        print(protocol, file=sys.stderr)
    splits = [cfg.data.train_split, cfg.data.eval_split, cfg.data.test_split]
    data = prepare(cfg.data, splits=[s for s in splits if s], data_dir=args.data_dir,
                   cache=args.cache_dir, progress=True)
    print(f"prepared {cfg.data.source} with a {data.meta['tokenizer_kind']} tokenizer "
          f"({data.tokenizer.vocab_size} tokens) in {data.path}")
    for name, split in data.meta["splits"].items():
        print(f"  {name:>6}: {split['tokens']:>11,} tokens {split['words']:>11,} words "
              f"{split['bytes']:>12,} bytes {split['documents']:>7,} documents "
              f"{len(split['shards']):>5,} shards")


def cmd_train(args: argparse.Namespace) -> None:
    from gptkit.config import read_config

    if args.resume and args.init_from:
        raise GptkitError("--init-from starts a new run; drop it to --resume (a resumed run "
                          "continues from its own checkpoint)")
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
    _train_and_report(cfg, out, args, resume=args.resume)


def _train_and_report(
    cfg: RunConfig, out: Path, args: argparse.Namespace, *, resume: bool = False
) -> None:
    from gptkit.train.trainer import train

    result = train(
        cfg, out, resume=resume, overwrite=args.overwrite, data_dir=args.data_dir,
        progress=not args.no_progress,
    )
    if os.environ.get("RANK", "0") == "0" and (result.run_dir / "config.yaml").exists():
        best = f"{result.best_val_loss:.4f}" if result.best_val_loss is not None else "n/a"
        speed = f" ({result.tokens_per_s:,.0f} tok/s)" if result.tokens_per_s else ""
        print(f"done: {result.step} steps, {result.tokens_seen:,} tokens in "
              f"{result.wall_time_s:.1f}s{speed}; "
              f"best val loss {best}; run in {result.run_dir}")
        print(f"next: gptkit sample {result.run_dir}   |   gptkit eval {result.run_dir}")


def cmd_finetune(args: argparse.Namespace) -> None:
    overrides = [*args.overrides, f"train.init_from={args.run}", f"data.source={args.data}"]
    cfg = load_config(args.recipe, overrides)
    _train_and_report(cfg, Path(args.out or Path("runs") / f"{Path(args.run).name}-{cfg.name}"),
                      args)


def cmd_distill(args: argparse.Namespace) -> None:
    overrides = [*args.overrides, f"distill.teacher={args.teacher}"]
    cfg = load_config(args.recipe, overrides)
    _train_and_report(cfg, Path(args.out or Path("runs") / cfg.name), args)


def _load_for_inference(args: argparse.Namespace) -> tuple[Any, Any]:
    """load_run for eval and sample, and the device: int8 models (--quantize int8, or an int8
    export) run on the CPU, which --device auto then means."""
    from gptkit.compress import stored_quantization
    from gptkit.run import load_run
    from gptkit.train.distributed import resolve_device

    int8 = args.quantize or stored_quantization(args.run)
    device = resolve_device("cpu" if int8 and args.device == "auto" else args.device)
    run = load_run(args.run, which=args.checkpoint, device=device, quantize=args.quantize,
                   precision=getattr(args, "precision", "fp32"))
    return run, device


def cmd_eval(args: argparse.Namespace) -> None:
    from gptkit.compress import is_int8
    from gptkit.data.prepare import prepare
    from gptkit.data.sources import is_wikitext
    from gptkit.evaluate import score_tokens, summarize

    for option, value in (("--stride", args.stride), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:  # 0 is no "default": leave the option out for that
            raise GptkitError(f"{option} must be >= 1 (got {value}); leave it out for the "
                              "run's own setting")
    run, device = _load_for_inference(args)
    cfg = run.config
    source = args.data or cfg.data.source
    split = args.split or cfg.data.test_split or cfg.data.eval_split
    data_cfg = replace(cfg.data, source=source)
    if cfg.data.format == "sft":
        _eval_responses(run, data_cfg, split, args, device)
        return
    data = prepare(data_cfg, splits=[split], data_dir=args.data_dir, tokenizer=run.tokenizer)
    block = cfg.model.block_size
    stride = args.stride if args.stride is not None else cfg.eval.stride or block
    if stride < 1 or stride > block:
        raise GptkitError(f"--stride must be between 1 and block_size ({block}), got {stride}")
    batch_size = args.batch_size if args.batch_size is not None else cfg.eval.batch_size
    tokens = data.tokens(split)
    if len(tokens) < 2:
        raise GptkitError(f"split {split!r} of {source} has fewer than 2 tokens; nothing to score")
    special = [] if run.tokenizer.eot_id is None else [run.tokenizer.eot_id]
    score = score_tokens(run.model, tokens, block_size=block, stride=stride,
                         batch_size=batch_size, device=device, special_ids=special,
                         progress=not args.no_progress)
    meta = data.split_meta(split)
    result = summarize(score, split=split, block_size=block, stride=stride,
                       n_bytes=meta["bytes"],
                       n_words=meta["words"] if is_wikitext(source) else None)
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


def _eval_responses(run: Any, data_cfg: Any, split: str, args: argparse.Namespace,
                    device: Any) -> None:
    """An SFT run is scored on what it learnt: the responses of the split's records."""
    import math

    from gptkit.finetune import sft

    examples = sft.encode_records(sft.load_split(data_cfg, split), run.tokenizer,
                                  run.config.model.block_size)
    totals = sft.response_loss(
        run.model, examples,
        batch_size=run.config.eval.batch_size if args.batch_size is None else args.batch_size,
        pad_id=int(run.tokenizer.eot_id or 0), device=device,
    )
    loss = totals["nll"] / max(totals["tokens"], 1)
    result = {"split": split, "examples": len(examples), "response_tokens": int(totals["tokens"]),
              "loss": loss, "perplexity": math.exp(min(loss, 700)),
              "token_accuracy": totals["correct"] / max(totals["tokens"], 1)}
    if args.json:
        print(json.dumps({"run": str(run.path), "source": data_cfg.source, **result}, indent=2))
        return
    print(f"{run.path} on the responses of {data_cfg.source} [{split}]: {len(examples)} "
          f"examples, {result['response_tokens']:,} response tokens")
    print(f"  loss            {loss:.4f}")
    print(f"  perplexity      {result['perplexity']:.3f}")
    print(f"  token accuracy  {result['token_accuracy']:.4f}")


def _sample_settings(
    args: argparse.Namespace, base: GenerationConfig, prompts: list[str]
) -> GenerationConfig:
    """The run's `sample` settings with the flags given on top, checked and named as flags."""
    chosen: dict[str, Any] = {
        "prompt": prompts[0] if len(prompts) == 1 else None,
        "max_new_tokens": args.max_new_tokens, "min_new_tokens": args.min_new_tokens,
        "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
        "typical_p": args.typical_p, "repetition_penalty": args.repetition_penalty,
        "no_repeat_ngram_size": args.no_repeat_ngram_size, "bad_words": args.bad_words,
        "stop": args.stop, "num_samples": args.num_samples, "num_beams": args.num_beams,
        "length_penalty": args.length_penalty,
        "early_stopping": {"true": True, "false": False}.get(args.early_stopping,
                                                             args.early_stopping),
    }
    changes = {k: v for k, v in chosen.items() if v is not None}
    changes["seed"] = args.seed  # None: fresh randomness (see --seed)
    if args.top_k == 0:
        changes["top_k"] = None
    try:
        return base.replace(prefix="--", **changes)
    except GptkitError as exc:
        raise GptkitError(str(exc).replace("_", "-")) from None


def cmd_sample(args: argparse.Namespace) -> None:
    from gptkit.generation.text import sample_text
    from gptkit.tokenizers import unknown_warning

    prompts = list(args.prompt or [])
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise GptkitError(f"--prompts-file {path} does not exist")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise GptkitError(f"--prompts-file {path} is not UTF-8 text (byte {exc.start}: "
                              f"{exc.reason}); save it as UTF-8") from None
        prompts += [line for line in lines if line.strip()]
        if not prompts:
            raise GptkitError(f"--prompts-file {path} holds no prompts; write one per line")
    run, _ = _load_for_inference(args)
    own = prompts[0] if len(prompts) == 1 else run.config.sample.prompt
    texts = prompts if len(prompts) > 1 else [own or ""]
    warning = unknown_warning(run.tokenizer.unknown_characters(texts), "the prompt", fix=(
        "the model has never seen them; leave them out, or use a run whose tokenizer has "
        "them (e.g. one trained with data.tokenizer=bpe)"))
    if warning:
        print(f"gptkit: {warning}", file=sys.stderr)
    settings = _sample_settings(args, run.config.sample, prompts)
    prompt: str | None | list[str] = prompts if len(prompts) > 1 else settings.prompt
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

        sample_text(run.model, run.tokenizer, prompt, settings, stream=show)
        for index in sorted(later):
            sys.stdout.write(separator + "".join(later[index]))
        sys.stdout.write("\n")
        return
    texts = sample_text(run.model, run.tokenizer, prompt, settings)
    print(separator.join(texts))


def cmd_info(args: argparse.Namespace) -> None:
    from gptkit.runinfo import describe, format_info, run_info

    if args.world_size is not None and args.world_size < 1:
        raise GptkitError(f"--world-size must be >= 1 (got {args.world_size})")
    if args.run:
        info = run_info(args.run, args.precision, args.world_size)
    else:
        cfg = _config_from(args)
        precision = args.precision or (
            "bf16" if cfg.train.precision in ("bf16", "fp16") else "fp32")
        if cfg.model.vocab_size is not None:  # e.g. the GPT-2 presets: no data to read
            info = describe(cfg, cfg.model.vocab_size, precision, args.world_size)
        else:  # the vocabulary is the tokenizer's, learnt from the data
            from gptkit.data.prepare import prepare
            from gptkit.data.sources import resolve_protocol

            cfg.data, _ = resolve_protocol(cfg.data, args.data_dir)
            prepared = prepare(cfg.data, data_dir=args.data_dir)
            info = describe(cfg, prepared.tokenizer.vocab_size, precision, args.world_size)
            info["data"] = prepared.meta
    print(json.dumps(info, indent=2) if args.json else format_info(info))


def cmd_export(args: argparse.Namespace) -> None:
    from gptkit.compress import stored_quantization

    if args.quantize or args.format == "gptkit":
        from gptkit.compress import export_int8

        if args.format == "hf":
            raise GptkitError("a Hugging Face GPT-2 folder cannot hold int8 layers; drop "
                              "--format hf to write an int8 gptkit run (--format gptkit)")
        if not args.quantize:
            raise GptkitError("--format gptkit writes an int8 run; add --quantize int8 (a "
                              "plain copy of the run needs no export)")
        out = export_int8(args.run, args.out, which=args.checkpoint, overwrite=args.overwrite)
        print(f"exported {args.run} with int8 weights to {out}; next: gptkit eval {out}   |   "
              f"gptkit sample {out}")
        return
    if stored_quantization(args.run):
        raise GptkitError(f"{args.run} holds int8 weights, which Hugging Face GPT-2 cannot "
                          "hold; export the fp32 run it was quantized from")
    from gptkit.interop.hf import export_hf

    out = export_hf(args.run, args.out, which=args.checkpoint, overwrite=args.overwrite)
    print(f"exported {args.run} to {out}; load it with "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")


def cmd_prune(args: argparse.Namespace) -> None:
    from gptkit.compress import prune_run

    out, report = prune_run(args.run, args.out, method=args.method, amount=args.amount,
                            which=args.checkpoint, overwrite=args.overwrite)
    units = {"heads": f"; {report['heads']['zero']} of {report['heads']['of']} attention heads",
             "mlp": (f"; {report['mlp_channels']['zero']} of {report['mlp_channels']['of']} MLP "
                     "channels")}.get(args.method, "")
    print(f"pruned {args.run} ({args.method}, {args.amount:g}) into {out}: "
          f"{100 * report['blocks']:.1f}% of the blocks' linear weights are zero "
          f"({100 * report['model']:.1f}% of all parameters){units}")
    print(f"next: gptkit eval {out}   |   gptkit sample {out}")


def cmd_import(args: argparse.Namespace) -> None:
    from gptkit.interop.hf import import_hf

    out = Path(args.out) if args.out else Path("runs") / Path(args.source).resolve().name
    import_hf(args.source, out, overwrite=args.overwrite)
    print(f"imported {args.source} into {out}")
    print(f"next: gptkit sample {out}   |   gptkit train --init-from {out} ...")


def cmd_eval_generate(args: argparse.Namespace) -> None:
    from gptkit.finetune.eval_generate import check_options, evaluate_generation
    from gptkit.finetune.records import read_records
    from gptkit.run import load_run
    from gptkit.train.distributed import resolve_device

    options = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams,
               "temperature": args.temperature, "batch_size": args.batch_size,
               "limit": args.limit}
    check_options(**options, prefix="--")
    if args.predictions and not Path(args.predictions).resolve().parent.is_dir():
        raise GptkitError(f"--predictions {args.predictions}: its folder does not exist; "
                          "create it first")
    records = read_records(args.data)
    run = load_run(args.run, which=args.checkpoint, device=resolve_device(args.device))
    scores = evaluate_generation(run, records, **options)
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


def cmd_examples(args: argparse.Namespace) -> None:
    from gptkit.finetune.examples import EXAMPLES, write_examples

    paths = write_examples(args.out, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {len(paths)} example files to {args.out}:")
    for path, (_, purpose) in zip(paths, EXAMPLES.values(), strict=True):
        print(f"  {path.name:<17} {purpose}")


def cmd_finetune_classify(args: argparse.Namespace) -> None:
    from gptkit.finetune.classify import finetune_classifier, print_report

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.source={args.data}")
    if args.init_from:
        overrides.append(f"train.init_from={args.init_from}")
    cfg = load_config(args.recipe, overrides)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    result = finetune_classifier(cfg, out, overwrite=args.overwrite, data_dir=args.data_dir,
                                 progress=not args.no_progress)
    print(f"held-out {result.task} classification, best model at step {result.best_step} "
          f"of {result.steps}, {result.metrics['examples']} examples; run in {result.run_dir}")
    print_report(result.metrics)
    print(f"next: gptkit classify {result.run_dir} --text \"...\"")


def cmd_classify(args: argparse.Namespace) -> None:
    from gptkit.finetune.classify import load_classifier
    from gptkit.train.distributed import resolve_device

    classifier = load_classifier(args.run, device=resolve_device(args.device))
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


def cmd_plot(args: argparse.Namespace) -> None:
    from gptkit.viz.curves import plot_runs

    out = plot_runs(args.runs, args.out, x=args.x, log_scale=args.log_scale, labels=args.label,
                    overwrite=args.overwrite)
    print(out)


def cmd_compare(args: argparse.Namespace) -> None:
    from gptkit.compare import compare_runs, format_table

    comparison = compare_runs(args.runs)
    if args.json:
        print(json.dumps(comparison.to_dict(), indent=2))
        return
    print(format_table(comparison))


def cmd_viz(args: argparse.Namespace) -> None:
    """`gptkit viz attention`; further views (VIEW) would be dispatched here."""
    from gptkit.run import load_run
    from gptkit.train.distributed import resolve_device
    from gptkit.viz.attention import attention_maps, pick, plot_attention

    run = load_run(args.run, which=args.checkpoint, device=resolve_device(args.device))
    layers = pick(args.layer, run.config.model.n_layer, "--layer")
    heads = pick(args.head, run.config.model.n_head, "--head")
    maps = attention_maps(run.model, run.tokenizer, args.prompt)
    out = plot_attention(maps, args.layer, args.head, args.out, overwrite=args.overwrite)
    if args.json:
        shown = maps.weights[layers][:, heads]
        print(json.dumps({
            "run": str(run.path), "out": str(out), "prompt": args.prompt,
            "tokens": maps.tokens, "ids": maps.ids, "layers": layers, "heads": heads,
            "shape": list(shown.shape), "weights": shown.astype(float).round(6).tolist(),
        }, ensure_ascii=False))
        return
    print(f"wrote {out}: attention of {len(maps.tokens)} tokens, layer {args.layer}, "
          f"head {args.head}")


def cmd_serve(args: argparse.Namespace) -> None:
    from gptkit.serve.settings import ServeSettings

    settings = ServeSettings(
        host=args.host, port=args.port, api_key=args.api_key,
        max_batch_size=args.max_batch_size, batch_window_ms=args.batch_window_ms,
        max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens,
        max_concurrent=args.max_concurrent, max_body_bytes=args.max_body_bytes,
    )
    settings.check()
    try:
        import fastapi  # noqa: F401  (the serve extra)
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise GptkitError(f"gptkit serve needs the serve extra ({exc.name} is missing): "
                          "pip install -e '.[serve]'") from exc
    from gptkit.serve import server

    model: Any
    if (Path(args.run) / "labels.json").is_file():
        model = server.load_model(args.run, device=args.device, quantize=args.quantize)
    else:
        model, _ = _load_for_inference(args)
    server.serve(model, settings, log_level=args.log_level)


COMMANDS = {
    "prepare": cmd_prepare,
    "train": cmd_train,
    "finetune": cmd_finetune,
    "distill": cmd_distill,
    "eval": cmd_eval,
    "sample": cmd_sample,
    "info": cmd_info,
    "export": cmd_export,
    "prune": cmd_prune,
    "import": cmd_import,
    "eval-generate": cmd_eval_generate,
    "examples": cmd_examples,
    "finetune-classify": cmd_finetune_classify,
    "classify": cmd_classify,
    "viz": cmd_viz,
    "plot": cmd_plot,
    "compare": cmd_compare,
    "serve": cmd_serve,
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
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("gptkit: interrupted", file=sys.stderr)
        sys.exit(130)
