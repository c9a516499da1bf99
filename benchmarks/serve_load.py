"""Load on `gptkit serve`: requests/s, tokens/s, latency and time to first token, with request
batching off and on, in one run.

    python -m benchmarks.serve_load [--run RUN] [--requests 200] [--concurrency 16]
        [--max-tokens 48] [--batch-size 16] [--rounds 4] [--threads N]

Without --run, the default recipe (`shakespeare-char`) is trained for 200 steps into a
temporary folder first. Two servers are started as users start them (`gptkit serve RUN
--port 0`), on 127.0.0.1 only: batching off (--max-batch-size 1) and on (--max-batch-size
B). The same `--requests` requests go to each, at most `--concurrency` in flight, split
into `--rounds` rounds that alternate between the servers (so drift in this machine's speed
hits both alike). Every request streams (server-sent events, with the usage chunk) from one
of a few short Shakespeare prompts at temperature 0.8, top-k 200, its own seed and `--max-tokens`
new tokens; its latency is the time to [DONE], its time to first token the time to the first
chunk with text. Because a request's text does not depend on its batch, both servers must
return the same texts: the benchmark checks that too. Zero failed requests is the bar (exit
status 1 otherwise). Threads: the servers inherit OMP_NUM_THREADS (`--threads` sets it).
Results go to benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import made_by, write_results

# at most 15 characters: with 48 new tokens a request fits the default recipe's 64-token
# context, where every step decodes from the KV cache (past it, the window slides and each
# step recomputes the whole window of every row of the batch; try --max-tokens 200)
PROMPTS = ["ROMEO:", "JULIET:\n", "KING HENRY:", "HAMLET:\nO, that", "First Citizen:",
           "MENENIUS:", "To be, or not", "O Romeo, Romeo"]


def train_default(folder: Path, steps: int, overrides: tuple[str, ...] = ()) -> Path:
    """The default recipe trained for `steps` steps (with `overrides`, --set style)."""
    from gptkit.config import load_config
    from gptkit.train.trainer import train

    run_dir = folder / "shakespeare-char"
    cfg = load_config("shakespeare-char", [f"train.max_steps={steps}", "log.plots=false",
                                           "log.sample_tokens=0", "log.tensorboard=false",
                                           *overrides])
    print(f"training the default recipe for {steps} steps into {run_dir} ...", flush=True)
    train(cfg, run_dir, progress=False)
    return run_dir


@contextmanager
def server(run: Path, batch_size: int, max_tokens: int, concurrency: int,
           threads: int | None, *, src: Path | None = None,
           extra: tuple[str, ...] = ()) -> Iterator[str]:
    """`gptkit serve RUN` on a free loopback port: its base URL. `src`: the gptkit source
    tree to serve with (another revision's `src/`, put first on PYTHONPATH); `extra`: more
    `gptkit serve` options."""
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    process = subprocess.Popen(
        [sys.executable, "-m", "gptkit", "serve", str(run), "--host", "127.0.0.1", "--port",
         "0", "--max-batch-size", str(batch_size), "--max-tokens", str(max_tokens),
         "--max-concurrent", str(max(32, 2 * concurrency)), "--log-level", "warning", *extra],
        stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if " on http://" not in line:
            raise SystemExit(f"the server did not start: {line!r}")
        url = line.split(" on ", 1)[1].split(": ", 1)[0]
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server does not answer /health")
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


async def one_request(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """Stream one completion: latency, time to first token, tokens, text, or its failure."""
    start = time.perf_counter()
    first: float | None = None
    text: list[str] = []
    tokens = 0
    done = False
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return {"ok": False, "error": f"{response.status_code}: {response.text[:200]}"}
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    continue
                event = json.loads(data)
                if "error" in event:
                    return {"ok": False, "error": event["error"]["message"]}
                for choice in event["choices"]:
                    if choice["text"] and first is None:
                        first = time.perf_counter() - start
                    text.append(choice["text"])
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
    except httpx.HTTPError as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    if not done:
        return {"ok": False, "error": "the stream ended without [DONE]"}
    return {"ok": True, "latency": time.perf_counter() - start, "ttft": first,
            "tokens": tokens, "text": "".join(text)}


def request_body(i: int, max_tokens: int) -> dict[str, Any]:
    return {"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0.8,
            "top_k": 200, "seed": i, "stream": True, "stream_options": {"include_usage": True}}


async def load(url: str, ids: list[int], concurrency: int, max_tokens: int
               ) -> tuple[float, dict[int, dict[str, Any]]]:
    """Send requests `ids`, at most `concurrency` at a time: (wall seconds, results)."""
    limit = asyncio.Semaphore(concurrency)
    pool = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=pool) as client:

        async def bounded(i: int) -> tuple[int, dict[str, Any]]:
            async with limit:
                return i, await one_request(client, request_body(i, max_tokens))

        start = time.perf_counter()
        results = await asyncio.gather(*(bounded(i) for i in ids))
        return time.perf_counter() - start, dict(results)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def summarize(wall: float, results: dict[int, dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in results.values() if r["ok"]]
    latencies = [r["latency"] for r in ok]
    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    tokens = sum(r["tokens"] for r in ok)
    return {
        "requests": len(results), "failed": len(results) - len(ok), "wall_s": wall,
        "requests_per_s": len(ok) / wall, "tokens": tokens, "tokens_per_s": tokens / wall,
        "latency_p50_s": statistics.median(latencies) if latencies else None,
        "latency_p99_s": percentile(latencies, 99),
        "ttft_p50_s": statistics.median(ttfts) if ttfts else None,
        "ttft_p99_s": percentile(ttfts, 99),
        "errors": sorted({r["error"] for r in results.values() if not r["ok"]})[:5],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="run to serve (default: train one)")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the servers")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/serve_load.json"))
    args = parser.parse_args()
    if args.requests < args.rounds or args.rounds < 1:
        parser.error("--requests must be at least --rounds (>= 1)")

    with tempfile.TemporaryDirectory() as folder:
        run = args.run or train_default(Path(folder), args.train_steps)
        configs = {"off": 1, "on": args.batch_size}
        ids = list(range(args.requests))
        rounds = [ids[r :: args.rounds] for r in range(args.rounds)]
        walls = {name: 0.0 for name in configs}
        results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in configs}
        with server(run, 1, args.max_tokens, args.concurrency, args.threads) as off_url, \
                server(run, args.batch_size, args.max_tokens, args.concurrency,
                       args.threads) as on_url:
            urls = {"off": off_url, "on": on_url}
            for url in urls.values():  # warm-up, untimed
                asyncio.run(load(url, list(range(-args.concurrency, 0)), args.concurrency,
                                 args.max_tokens))
            for r, chunk in enumerate(rounds):
                order = ["off", "on"] if r % 2 == 0 else ["on", "off"]
                for name in order:
                    wall, got = asyncio.run(load(urls[name], chunk, args.concurrency,
                                                 args.max_tokens))
                    walls[name] += wall
                    results[name].update(got)
                    print(f"round {r + 1}/{args.rounds}, batching {name}: {len(chunk)} "
                          f"requests in {wall:.2f} s", flush=True)
            batches = {name: httpx.get(url + "/health", timeout=10).json()["stats"]
                       for name, url in urls.items()}

    summary = {name: summarize(walls[name], results[name]) for name in configs}
    same = sum(results["off"][i].get("text") == results["on"][i].get("text")
               for i in ids if results["off"][i]["ok"] and results["on"][i]["ok"])
    off, on = summary["off"], summary["on"]
    rows = [("requests/s", "requests_per_s", "{:.2f}"), ("completion tokens/s", "tokens_per_s",
            "{:.0f}"), ("latency p50 (s)", "latency_p50_s", "{:.3f}"),
            ("latency p99 (s)", "latency_p99_s", "{:.3f}"),
            ("first token p50 (s)", "ttft_p50_s", "{:.3f}"),
            ("first token p99 (s)", "ttft_p99_s", "{:.3f}"), ("failed requests", "failed", "{}")]
    print(f"\n{args.requests} requests, {args.concurrency} at a time, {args.max_tokens} new "
          f"tokens each, {args.rounds} alternating rounds; run {run}")
    print(f"{'':<22}{'batching off (1)':>18}{f'batching on ({args.batch_size})':>20}"
          f"{'on / off':>10}")
    for label, key, fmt in rows:
        a, b = off[key], on[key]
        ratio = f"{b / a:.2f}x" if isinstance(a, float) and a else ""
        print(f"{label:<22}{fmt.format(a):>18}{fmt.format(b):>20}{ratio:>10}")
    print(f"decoding steps: off {batches['off']['steps']}, on {batches['on']['steps']} (at most "
          f"{batches['on']['largest_batch']} requests at once); same text with and without "
          "batching: "
          f"{same} of {args.requests}")
    report = {"requests": args.requests, "concurrency": args.concurrency,
              "max_tokens": args.max_tokens, "batch_size": args.batch_size,
              "rounds": args.rounds, "threads": os.environ.get("OMP_NUM_THREADS"),
              "run": str(args.run) if args.run else f"shakespeare-char, {args.train_steps} steps",
              "run_made_by": made_by(args.run) if args.run else None,
              "off": off, "on": on, "server_stats": batches, "same_text": same}
    write_results(args.json, report)
    print(f"wrote {args.json}")
    if off["failed"] or on["failed"]:
        print(f"FAILED requests: off {off['errors']}, on {on['errors']}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
