"""`gptkit serve`: the HTTP API and playground of a run."""

from __future__ import annotations

import argparse
from typing import Any

from gptkit.cli import options
from gptkit.errors import GptkitError
from gptkit.serve.settings import DEFAULT_PREFIX_CACHE_MB


def register(commands: Any) -> None:
    p = commands.add_parser(
        "serve", help="serve a run over HTTP: OpenAI-style API, streaming, playground page",
        description="Serve a run's model on an HTTP API (needs the serve extra: pip install "
        "-e '.[serve]'): POST /v1/completions (OpenAI's completions API; server-sent events "
        "with \"stream\": true; same settings and meaning as gptkit sample; a request "
        "without a seed draws fresh randomness, as gptkit sample without --seed), "
        "GET /v1/models, "
        "GET /health, POST /v1/classify for finetune-classify runs, and a playground page at "
        "/. Requests decode together, joining and leaving at every step (continuous batching, "
        "shared prompt prefixes computed once; --draft RUN: speculative decoding with a small "
        "model of the same tokenizer; --compare RUN2 --votes FOLDER: a blind comparison of runs "
        "or checkpoints, the playground's Compare tab and POST /v1/arena/battles, ranked by "
        "gptkit arena FOLDER). Listens on 127.0.0.1 "
        "(this machine only) unless --host says otherwise.",
    )
    p.add_argument("run", metavar="RUN", help="run directory (a language model or a "
                   "finetune-classify run), or a Hugging Face GPT-2 folder or cached hub id")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; "
                   "0.0.0.0 = every network, better with --api-key)")
    p.add_argument("--port", type=int, default=8000,
                   help="port (default: 8000; 0 = any free port, printed at start)")
    p.add_argument("--api-key", metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1/* (the page asks for it)")
    p.add_argument("--max-batch-size", type=int, default=16, metavar="N",
                   help="completion rows (prompts x n) decoding together (default 16): the "
                   "KV pool allocated at start holds N rows of the full context (gptkit info "
                   "shows the bytes per row); more wait in the queue; also the most rows one "
                   "request may ask for")
    p.add_argument("--prefill-chunk", type=int, default=64, metavar="N",
                   help="prompt tokens prefilled per decoding step, so that long prompts do "
                   "not stall the running rows (default 64)")
    p.add_argument("--prefix-cache-mb", type=float, metavar="MB",
                   help="memory for the KV of recent prompts and texts, reused by requests "
                   "that start the same way, least recently used evicted (default "
                   f"{DEFAULT_PREFIX_CACHE_MB}; 0 = off; with --draft it holds the draft's "
                   "KV too)")
    p.add_argument("--max-prompt-tokens", type=int, default=2048, metavar="N",
                   help="longest prompt accepted, in tokens (default 2048; longer: 413)")
    p.add_argument("--max-tokens", type=int, default=1024, metavar="N",
                   help="largest max_tokens a request may ask for (default 1024; more: 422)")
    p.add_argument("--max-logprobs", type=int, default=20, metavar="N",
                   help="most alternatives per token a request's logprobs (completions) or "
                   "top_logprobs (chat) may ask for (default 20; more: 422)")
    p.add_argument("--max-concurrent", type=int, default=32, metavar="N",
                   help="requests in progress at once, queued or generating (default 32; "
                   "more: 429)")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, metavar="N",
                   help="largest request body (default 1000000; larger: 413)")
    options.add_inference(p, quantize=f"{options.INT8_HELP}, as for gptkit sample")
    add_arena(p)
    options.add_draft(p)
    options.add_guard(p, retries=False)
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   default="info", help="server log detail; info shows each request "
                   "(default: info)")
    p.set_defaults(handler=serve)


def serve(args: argparse.Namespace) -> None:
    from gptkit.serve.settings import ServeSettings

    settings = ServeSettings(
        host=args.host, port=args.port, api_key=args.api_key,
        max_batch_size=args.max_batch_size, prefill_chunk=args.prefill_chunk,
        prefix_cache_mb=args.prefix_cache_mb,
        max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens,
        max_concurrent=args.max_concurrent, max_body_bytes=args.max_body_bytes,
        max_logprobs=args.max_logprobs,
    )
    settings.check()
    try:
        import fastapi  # noqa: F401  (the serve extra)
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise GptkitError(f"gptkit serve needs the serve extra ({exc.name} is missing): "
                          "pip install -e '.[serve]'") from exc
    from gptkit.serve import server

    run = options.load_for_inference(args)
    if run.classifier is not None and args.draft is not None:
        raise GptkitError(f"{args.run} is a classifier run; --draft speeds up generation "
                          "only: leave it out")
    if run.classifier is not None and args.guard is not None:
        raise GptkitError(f"{args.run} is a classifier run; --guard checks generated text "
                          "only: leave it out")
    draft = options.load_draft(args, run)
    guard = options.load_guard(args)
    arena = load_arena(args, settings, guard)
    server.serve(run.classifier or run, settings, log_level=args.log_level, draft=draft,
                 guard=guard, arena=arena)


def add_arena(p: argparse.ArgumentParser) -> None:
    """--compare, --votes and --prompts: a blind comparison (`gptkit.serve.arena`)."""
    p.add_argument("--compare", action="append", metavar="RUN2",
                   help="also serve this run, or one checkpoint RUN/checkpoints/step-N, for "
                   "a blind comparison with RUN (the playground's Compare tab, POST "
                   "/v1/arena/battles); repeat for more models; needs --votes")
    p.add_argument("--votes", metavar="FOLDER",
                   help="folder keeping the comparison's battles and votes (SQLite, made if "
                   "missing; several servers may share one); gptkit arena FOLDER ranks them")
    p.add_argument("--prompts", metavar="FILE",
                   help="prompts a battle may be given when it names none: one a line, or a "
                   ".jsonl file of JSON strings or {\"prompt\": ...} objects")


def load_arena(args: argparse.Namespace, settings: Any, guard: Any = None) -> Any:
    """The --compare runs, each behind an engine of its own (guarded by --guard like RUN's),
    with the --votes store and the --prompts; None without --compare."""
    if not args.compare:
        for flag, value in (("--votes", args.votes), ("--prompts", args.prompts)):
            if value is not None:
                raise GptkitError(f"{flag} belongs to a comparison, which needs at least 2 "
                                  "models: add --compare RUN2")
        return None
    if args.votes is None:
        raise GptkitError("--compare needs --votes FOLDER, where the votes are kept")
    from gptkit.arena.store import VoteStore
    from gptkit.run import load_run
    from gptkit.serve.arena import Arena, contestant, read_prompts
    from gptkit.serve.engine import Engine

    store = VoteStore.create(args.votes)
    prompts = read_prompts(args.prompts) if args.prompts else []
    engines = []
    for spec in args.compare:
        path, which, name = contestant(spec)
        run = load_run(path, which=which or args.checkpoint, device=args.device,
                       precision=args.precision or "fp32", quantize=args.quantize)
        if run.classifier is not None:
            raise GptkitError(f"--compare {spec} is a classifier run; only language models "
                              "can answer prompts in the arena")
        engines.append(Engine(run, name, max_batch_size=settings.max_batch_size,
                              prefill_chunk=settings.prefill_chunk,
                              prefix_cache_mb=settings.prefix_cache_mb, guard=guard))
    return Arena(engines, store, prompts)
