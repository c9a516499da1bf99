"""Speculative decoding in the server's engine: tokens/s of `gptkit serve` with and without
`--draft`, at batch 1 and batch 4.

    python -m benchmarks.serve_speculative --main RUN --draft RUN [--draft-tokens 3]
        [--new-tokens 128] [--batches 1 4] [--repeats 3]

Both runs are loaded as `gptkit serve --draft` loads them. Each side is the server's engine
(`gptkit.serve.engine.Engine`, continuous batching; prefix reuse off on both sides, as a
draft turns it off) decoding `batch` greedy requests of different prompts submitted at once
(no end-of-text stop, `--new-tokens` each); the sides alternate (forward, then reversed) so
that drift in this machine's speed hits both alike; tokens/s is new tokens over the median
wall time. The texts with the draft must equal those without (checked and reported), and
the acceptance rate (draft tokens the model kept / proposed) is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import made_by, write_results
from gptkit.generation.config import GenerationConfig
from gptkit.generation.speculative import Speculative
from gptkit.run import Run
from gptkit.serve.engine import Engine
from gptkit.serve.jobs import Event, Finish, Job

PROMPTS = ["ROMEO:", "JULIET:\nO", "First Citizen:\n", "KING RICHARD III:\nNow is the"]


def decode(engine: Engine, run: Run, batch: int, new_tokens: int) -> list[str]:
    """`batch` greedy requests through `engine`, all submitted at once: their texts."""
    events: list[list[Event]] = [[] for _ in range(batch)]
    settings = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                temperature=0.0, top_k=None)  # no request ends early
    jobs = [Job(prompts=[run.tokenizer.encode(PROMPTS[i % len(PROMPTS)])], settings=settings,
                stream=False, emit=events[i].append) for i in range(batch)]
    engine.run_batch(jobs)
    return [next(e.text for e in got if isinstance(e, Finish)) for got in events]


def bench(run: Run, draft: Speculative, batches: list[int], new_tokens: int,
          repeats: int) -> dict[str, Any]:
    """Per batch: tokens/s of both sides, the ratio, same texts and the acceptance rate."""
    out: dict[str, Any] = {}
    for batch in batches:
        engines = {"plain": Engine(run, max_batch_size=batch, prefix_cache_mb=0),
                   "draft": Engine(run, max_batch_size=batch, draft=draft)}
        texts = {side: decode(engine, run, batch, new_tokens)  # warm-up
                 for side, engine in engines.items()}
        for engine in engines.values():
            engine.stats.draft_tokens = engine.stats.accepted_tokens = 0
        times: dict[str, list[float]] = {side: [] for side in engines}
        for i in range(repeats):
            for side in (list(engines) if i % 2 == 0 else list(reversed(engines))):
                start = time.perf_counter()
                texts[side] = decode(engines[side], run, batch, new_tokens)
                times[side].append(time.perf_counter() - start)
        rate = {side: batch * new_tokens / statistics.median(t) for side, t in times.items()}
        stats = engines["draft"].stats
        out[f"batch={batch}"] = {
            "tokens_per_s": rate, "ratio": rate["draft"] / rate["plain"],
            "same_texts": texts["draft"] == texts["plain"],
            "acceptance": stats.accepted_tokens / max(stats.draft_tokens, 1),
        }
    return out


def main() -> None:
    from gptkit.generation.speculative import check_draft
    from gptkit.run import load_run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--main", type=Path, required=True, help="the run to serve")
    parser.add_argument("--draft", type=Path, required=True, help="its draft run")
    parser.add_argument("--draft-tokens", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="fp32", help="both models' (gptkit serve's "
                        "default: fp32)")
    parser.add_argument("--json", type=Path,
                        default=Path("benchmarks/results/serve_speculative.json"))
    args = parser.parse_args()
    run = load_run(args.main, precision=args.precision)
    draft_run = load_run(args.draft, precision=args.precision)
    check_draft(run.tokenizer, draft_run.tokenizer, str(args.draft))
    print(f"{torch.get_num_threads()} threads")
    results = bench(run, Speculative(draft_run.model, args.draft_tokens), args.batches,
                    args.new_tokens, args.repeats)
    for batch, r in results.items():
        print(f"serve engine, {batch}: plain {r['tokens_per_s']['plain']:,.1f} tok/s, draft "
              f"{r['tokens_per_s']['draft']:,.1f} tok/s = {r['ratio']:.2f}x; acceptance "
              f"{r['acceptance']:.0%}; same texts: {r['same_texts']}", flush=True)
    results |= {"main_made_by": made_by(args.main), "draft_made_by": made_by(args.draft),
                "draft_tokens": args.draft_tokens, "new_tokens": args.new_tokens}
    write_results(args.json, results)


if __name__ == "__main__":
    main()
