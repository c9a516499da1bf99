"""Continuous batching against the static batching it replaced: `gptkit serve` under a load
of mixed lengths, both engines at the same limits, in one run.

    python -m benchmarks.serve_mixed --baseline-src PATH/src [--run RUN]
        [--concurrency 8 32 64] [--requests 192] [--batch-size 16] [--rounds 2] [--threads N]
        [--lengths uniform|log-uniform]

`--baseline-src` is the `src/` folder of the revision to compare with (e.g. a `git worktree
add --detach /tmp/static dcc3562`, the last commit with static batching); the other side is
this tree. Without --run, the default recipe's model, with a 512-token context so that
every request fits, is trained for `--train-steps` steps into a temporary folder.

Each request streams (with the usage chunk) a prompt of 1 to 200 characters cut from Tiny
Shakespeare (the char tokenizer: one token each) and asks for 8 to 256 new tokens, drawn
from a seeded generator, sampled at temperature 0.8, top-k 200, with its own seed. Prompt
lengths are uniform; new-token counts are uniform (`--lengths uniform`) or log-uniform
(`--lengths log-uniform`: as many requests ask for 8-16 tokens as for 128-256, the long tail
of real output lengths, where most replies are short and a few are long). At each
concurrency the requests are split into `--rounds` rounds that alternate
between the two servers (drift in this machine's speed hits both alike). Latency is the
time to [DONE], time to first token the time to the first chunk with text. A request's
text does not depend on what it shares the model with, so both engines must return the
same texts: that is checked and reported. Zero failed requests is the bar (exit status 1
otherwise). "ideal" is the ratio of decoding steps the two schedulers need for these
requests when a step costs the same whatever it holds (`ideal_steps`): the most continuous
batching can gain on this workload without making a step cheaper. Results:
benchmarks/results/serve_mixed.json (uniform), serve_mixed_log_uniform.json (log-uniform).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import made_by, write_results
from benchmarks.serve_load import one_request, server, summarize, train_default

CONTEXT = 512  # the trained model's block_size: the longest request (200 + 256) fits
SIDES = ("static", "continuous")
LENGTHS = ("uniform", "log-uniform")
NEW_TOKENS = (8, 256)


def new_tokens(rng: random.Random, lengths: str) -> int:
    """A request's max_tokens in NEW_TOKENS, drawn uniformly or log-uniformly."""
    low, high = NEW_TOKENS
    if lengths == "uniform":
        return rng.randint(low, high)
    return min(high, int(low * (high / low) ** rng.random()))


def workload(text: str, requests: int, seed: int = 0, lengths: str = "uniform"
             ) -> list[dict[str, Any]]:
    """The request bodies: mixed prompt lengths and max_tokens, each with its own seed."""
    rng = random.Random(seed)
    bodies = []
    for i in range(requests):
        length = rng.randint(1, 200)
        start = rng.randrange(len(text) - length)
        bodies.append({"prompt": text[start : start + length],
                       "max_tokens": new_tokens(rng, lengths),
                       "temperature": 0.8, "top_k": 200, "seed": i, "stream": True,
                       "stream_options": {"include_usage": True}})
    return bodies


async def load(url: str, bodies: dict[int, dict[str, Any]], concurrency: int
               ) -> tuple[float, dict[int, dict[str, Any]]]:
    """Send `bodies`, at most `concurrency` at a time: (wall seconds, results by id)."""
    limit = asyncio.Semaphore(concurrency)
    pool = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=pool) as client:

        async def bounded(i: int) -> tuple[int, dict[str, Any]]:
            async with limit:
                return i, await one_request(client, bodies[i])

        loop = asyncio.get_running_loop()
        start = loop.time()
        results = await asyncio.gather(*(bounded(i) for i in bodies))
        return loop.time() - start, dict(results)


def ideal_steps(max_tokens: list[int], concurrency: int, rows: int) -> dict[str, int]:
    """Decoding steps each scheduler needs for these requests, counted without any cost but
    one step per token (no prefill, no early end), `concurrency` clients each sending its next
    request when its last one ends: static batches of up to `rows` requests, each running
    until its longest ends, against rows that join and leave at every step. Their ratio is
    what continuous batching can gain at equal cost per step on this workload."""
    todo = list(max_tokens)
    queue, static = todo[:concurrency], 0
    sent = len(queue)
    while queue:
        batch, queue = queue[:rows], queue[rows:]
        static += max(batch)
        queue += todo[sent : sent + len(batch)]
        sent += len(batch)
    running, waiting = todo[: min(concurrency, rows)], todo[min(concurrency, rows):concurrency]
    sent, continuous = min(concurrency, len(todo)), 0
    while running:
        continuous += 1
        left = [n - 1 for n in running]
        running = [n for n in left if n > 0]
        waiting += todo[sent : sent + len(left) - len(running)]
        sent += len(left) - len(running)
        while waiting and len(running) < rows:
            running.append(waiting.pop(0))
    return {"static": static, "continuous": continuous}


def measure(urls: dict[str, str], bodies: list[dict[str, Any]], concurrency: int,
            rounds: int) -> dict[str, Any]:
    """Both sides at one concurrency, alternating by round: summaries, ratios, same texts."""
    ids = list(range(len(bodies)))
    walls = dict.fromkeys(SIDES, 0.0)
    results: dict[str, dict[int, dict[str, Any]]] = {side: {} for side in SIDES}
    for r in range(rounds):
        chunk = {i: bodies[i] for i in ids[r::rounds]}
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            wall, got = asyncio.run(load(urls[side], chunk, concurrency))
            walls[side] += wall
            results[side].update(got)
            print(f"concurrency {concurrency}, round {r + 1}/{rounds}, {side}: {len(chunk)} "
                  f"requests in {wall:.2f} s", flush=True)
    summary: dict[str, Any] = {side: summarize(walls[side], results[side]) for side in SIDES}
    static, continuous = summary["static"], summary["continuous"]
    summary["ratios"] = {key: continuous[key] / static[key] for key in (
        "requests_per_s", "tokens_per_s", "ttft_p50_s", "ttft_p99_s", "latency_p50_s",
        "latency_p99_s") if static.get(key) and continuous.get(key) is not None}
    summary["same_text"] = sum(
        results["static"][i].get("text") == results["continuous"][i].get("text")
        for i in ids if results["static"][i]["ok"] and results["continuous"][i]["ok"])
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, required=True,
                        help="src/ of the static-batching revision to compare with")
    parser.add_argument("--run", type=Path, help="run to serve (default: train one)")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--requests", type=int, default=192, help="per concurrency level")
    parser.add_argument("--batch-size", type=int, default=16, help="--max-batch-size of both")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the servers")
    parser.add_argument("--lengths", choices=LENGTHS, default="uniform",
                        help="how max_tokens is drawn from 8-256 (default: uniform)")
    parser.add_argument("--json", type=Path,
                        help="default: benchmarks/results/serve_mixed[_log_uniform].json")
    args = parser.parse_args()
    suffix = "" if args.lengths == "uniform" else "_" + args.lengths.replace("-", "_")
    args.json = args.json or Path(f"benchmarks/results/serve_mixed{suffix}.json")
    if not (args.baseline_src / "gptkit").is_dir():
        parser.error(f"--baseline-src {args.baseline_src} holds no gptkit package")
    if args.requests < args.rounds or args.rounds < 1:
        parser.error("--requests must be at least --rounds (>= 1)")

    from gptkit.data.sources import read_text, source_files

    text = read_text(source_files("tinyshakespeare", ["train"])["train"][0])
    bodies = workload(text, args.requests, lengths=args.lengths)
    top = max(args.concurrency)
    report: dict[str, Any] = {
        "requests": args.requests, "batch_size": args.batch_size, "rounds": args.rounds,
        "threads": args.threads, "baseline_src": str(args.baseline_src),
        "prompt_chars": [1, 200], "max_tokens": list(NEW_TOKENS), "lengths": args.lengths,
        "levels": {}}
    with tempfile.TemporaryDirectory() as folder:
        run = args.run or train_default(Path(folder), args.train_steps,
                                        (f"model.block_size={CONTEXT}",))
        report["run"] = str(args.run) if args.run else (
            f"shakespeare-char, block_size {CONTEXT}, {args.train_steps} steps")
        report["run_made_by"] = made_by(args.run) if args.run else None
        with server(run, args.batch_size, 256, top, args.threads,
                    src=args.baseline_src.resolve()) as static_url, \
                server(run, args.batch_size, 256, top, args.threads) as continuous_url:
            urls = {"static": static_url, "continuous": continuous_url}
            warm = {i: bodies[i] for i in range(min(8, len(bodies)))}
            for url in urls.values():  # warm-up, untimed
                asyncio.run(load(url, warm, 8))
            for concurrency in args.concurrency:
                level = measure(urls, bodies, concurrency, args.rounds)
                steps = ideal_steps([b["max_tokens"] for b in bodies], concurrency,
                                    args.batch_size)
                level["ideal_steps"] = {**steps, "ratio": steps["static"] / steps["continuous"]}
                report["levels"][str(concurrency)] = level
    failed = False
    print(f"\n{args.requests} streamed requests per level, prompts 1-200 tokens, 8-256 new "
          f"tokens ({args.lengths}), --max-batch-size {args.batch_size} on both; "
          f"run {report['run']}")
    print(f"{'concurrency':<12}{'req/s static':>14}{'continuous':>12}{'ratio':>8}"
          f"{'ideal':>8}{'TTFT p99 static':>17}{'continuous':>12}{'same text':>11}"
          f"{'failed':>8}")
    for level, summary in report["levels"].items():
        s, c = summary["static"], summary["continuous"]
        failed = failed or bool(s["failed"] or c["failed"])
        print(f"{level:<12}{s['requests_per_s']:>14.2f}{c['requests_per_s']:>12.2f}"
              f"{summary['ratios'].get('requests_per_s', float('nan')):>7.2f}x"
              f"{summary['ideal_steps']['ratio']:>7.2f}x"
              f"{s['ttft_p99_s']:>17.3f}{c['ttft_p99_s']:>12.3f}"
              f"{summary['same_text']:>8}/{args.requests}{s['failed'] + c['failed']:>8}")
    write_results(args.json, report)
    print(f"wrote {args.json}")
    if failed:
        print("FAILED requests: see the errors in the JSON", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
