"""Prefix reuse on a multi-turn chat load: `gptkit serve` with its prefix cache on and off.

    python -m benchmarks.serve_chat [--run RUN] [--conversations 32] [--turns 8]
        [--reply-tokens 24] [--batch-size 16] [--rounds 2] [--threads N]
        [--draft DRAFT_RUN [--draft-tokens K]]

Each conversation resends its whole history every turn, as chat clients do: turn t's
prompt is turn t-1's prompt, the reply it got and a new user line (a Tiny Shakespeare line
of up to 40 characters). The conversations run concurrently, each turn after the previous
one's reply. Replies are greedy, so both sides must return the same texts (checked). The
two servers run the same code, one with `--prefix-cache-mb 0`; the conversations are split
into `--rounds` rounds that alternate between them. Reported per side: prompt tokens the
model actually computed and those reused from the cache (the server's /health counters),
time to first token (p50, p99) and wall time. Without --run, the default recipe's model
with a 512-token context is trained for `--train-steps` steps first. With `--draft`, both
servers decode speculatively with that draft (the cache then holds its KV too), and the
draft's proposed and accepted tokens are reported. Results:
benchmarks/results/serve_chat.json (serve_chat_draft.json with --draft).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import made_by, write_results
from benchmarks.serve_load import one_request, percentile, server, train_default

CONTEXT = 512
SIDES = ("cache off", "cache on")
COUNTERS = ("prompt_tokens_computed", "prompt_tokens_reused",  # in /health's "stats"
            "draft_tokens", "accepted_tokens")


def user_lines(text: str, count: int, seed: int) -> list[str]:
    """Short non-empty lines of the play, as the users' messages."""
    lines = [line.strip() for line in text.splitlines() if 3 <= len(line.strip()) <= 40]
    return random.Random(seed).sample(lines, count)


async def conversation(client: httpx.AsyncClient, lines: list[str], reply_tokens: int
                       ) -> list[dict[str, Any]]:
    """One conversation, turn after turn: each turn's result (text, time to first token)."""
    history = ""
    turns = []
    for line in lines:
        history += f"USER: {line}\nBOT:"
        result = await one_request(client, {
            "prompt": history, "max_tokens": reply_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}})
        turns.append(result)
        if not result["ok"]:
            break
        history += result["text"] + "\n"
    return turns


async def chat_load(url: str, conversations: dict[int, list[str]], reply_tokens: int
                    ) -> tuple[float, dict[int, list[dict[str, Any]]]]:
    pool = httpx.Limits(max_connections=len(conversations))
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=pool) as client:
        loop = asyncio.get_running_loop()
        start = loop.time()
        done = await asyncio.gather(*(conversation(client, lines, reply_tokens)
                                      for lines in conversations.values()))
        return loop.time() - start, dict(zip(conversations, done, strict=True))


def counters(url: str) -> dict[str, int]:
    stats = httpx.get(url + "/health", timeout=10).json()["stats"]
    return {key: int(stats[key]) for key in COUNTERS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="run to serve (default: train one)")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--conversations", type=int, default=32)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--reply-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=16, help="--max-batch-size of both")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the servers")
    parser.add_argument("--draft", type=Path, help="a draft run for both servers")
    parser.add_argument("--draft-tokens", type=int, default=4)
    parser.add_argument("--json", type=Path,
                        help="default: benchmarks/results/serve_chat[_draft].json")
    args = parser.parse_args()
    args.json = args.json or Path(
        f"benchmarks/results/serve_chat{'_draft' if args.draft else ''}.json")
    draft = (("--draft", str(args.draft), "--draft-tokens", str(args.draft_tokens))
             if args.draft else ())
    if args.conversations < args.rounds or args.rounds < 1:
        parser.error("--conversations must be at least --rounds (>= 1)")

    from gptkit.data.sources import read_text, source_files

    text = read_text(source_files("tinyshakespeare", ["train"])["train"][0])
    lines = user_lines(text, args.conversations * args.turns, seed=0)
    talks = {c: lines[c * args.turns : (c + 1) * args.turns] for c in range(args.conversations)}
    totals = {side: {"wall_s": 0.0, **dict.fromkeys(COUNTERS, 0)} for side in SIDES}
    results: dict[str, dict[int, list[dict[str, Any]]]] = {side: {} for side in SIDES}
    with tempfile.TemporaryDirectory() as folder:
        run = args.run or train_default(Path(folder), args.train_steps,
                                        (f"model.block_size={CONTEXT}",))
        with server(run, args.batch_size, args.reply_tokens, args.conversations, args.threads,
                    extra=("--prefix-cache-mb", "0", *draft)) as off_url, \
                server(run, args.batch_size, args.reply_tokens, args.conversations,
                       args.threads, extra=draft) as on_url:
            urls = {"cache off": off_url, "cache on": on_url}
            for url in urls.values():  # warm-up, untimed, on other lines
                asyncio.run(chat_load(url, {0: ["Hello there.", "And again."]}, 4))
            ids = list(talks)
            for r in range(args.rounds):
                chunk = {c: talks[c] for c in ids[r :: args.rounds]}
                for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                    before = counters(urls[side])
                    wall, got = asyncio.run(chat_load(urls[side], chunk, args.reply_tokens))
                    after = counters(urls[side])
                    totals[side]["wall_s"] += wall
                    for key in COUNTERS:
                        totals[side][key] += after[key] - before[key]
                    results[side].update(got)
                    print(f"round {r + 1}/{args.rounds}, {side}: {len(chunk)} conversations "
                          f"in {wall:.2f} s", flush=True)
    report: dict[str, Any] = {
        "conversations": args.conversations, "turns": args.turns,
        "reply_tokens": args.reply_tokens, "batch_size": args.batch_size, "rounds": args.rounds,
        "threads": args.threads,
        "run": str(args.run) if args.run else (
            f"shakespeare-char, block_size {CONTEXT}, {args.train_steps} steps"),
        "run_made_by": made_by(args.run) if args.run else None,
        "draft": str(args.draft) if args.draft else None,
        "draft_tokens_per_step": args.draft_tokens if args.draft else None}
    failed = 0
    for side in SIDES:
        turns = [t for talk in results[side].values() for t in talk]
        ok = [t for t in turns if t["ok"]]
        failed += len(turns) - len(ok) + sum(
            args.turns - len(talk) for talk in results[side].values())
        ttfts = [t["ttft"] for t in ok if t["ttft"] is not None]
        report[side] = {**totals[side], "requests": len(turns), "failed": len(turns) - len(ok),
                        "ttft_p50_s": statistics.median(ttfts) if ttfts else None,
                        "ttft_p99_s": percentile(ttfts, 99)}
    report["same_text"] = sum(
        a.get("text") == b.get("text") for c in talks
        for a, b in zip(results["cache off"][c], results["cache on"][c], strict=False))
    off, on = report["cache off"], report["cache on"]
    print(f"\n{args.conversations} conversations x {args.turns} turns, {args.reply_tokens}-token "
          f"greedy replies; run {report['run']}")
    for label, key, fmt in (("prompt tokens computed", "prompt_tokens_computed", "{:,}"),
                            ("prompt tokens reused", "prompt_tokens_reused", "{:,}"),
                            ("draft tokens proposed", "draft_tokens", "{:,}"),
                            ("draft tokens accepted", "accepted_tokens", "{:,}"),
                            ("first token p50 (s)", "ttft_p50_s", "{:.3f}"),
                            ("first token p99 (s)", "ttft_p99_s", "{:.3f}"),
                            ("wall (s)", "wall_s", "{:.2f}"), ("failed", "failed", "{}")):
        print(f"{label:<24}{fmt.format(off[key]):>12}{fmt.format(on[key]):>12}")
    print(f"same replies with and without the cache: {report['same_text']} of "
          f"{args.conversations * args.turns}")
    write_results(args.json, report)
    print(f"wrote {args.json}")
    if failed:
        print(f"FAILED: {failed} turns", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
