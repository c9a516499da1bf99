"""A decoding step of the server's continuous batcher at mixed lengths: rows attending row by
row over their own keys against one masked call over the longest row's, in one run.

    python -m benchmarks.pool_attention [--shapes shakespeare-char 6x384-50k gpt2-small]
        [--rows 4 16] [--rounds 7] [--threads 1]

Each shape (`benchmarks.decode_step`'s, with a context of at least 512 positions, as
`serve_mixed` serves) gets random weights (`torch.manual_seed(0)`) and a `KVPool` of `rows`
slots of its full context, filled with random keys and values; the rows sit at positions drawn
uniformly over the context (seeded), as requests of mixed lengths do. A step is one forward
of one new token per row through the pool (`serve.stepper.run_on`). "one call" is the same
step with `row_keys` turned off (every row reads the longest row's keys, masked), "chosen" what
`SlotView` picks (row by row where the keys saved outweigh `ROW_CALL_BYTES` a row; the
"row by row" column says which it picked). The sides alternate over the rounds; ms per step
is the median. The logits of both sides must agree (max difference reported). Results:
benchmarks/results/pool_attention.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import write_results
from benchmarks.decode_step import SHAPES
from gptkit.config import ModelConfig
from gptkit.model import GPT
from gptkit.serve.kvpool import KVPool, SlotView


class OneCall(SlotView):
    """The pool's view with row-by-row attention turned off: one masked call per layer."""

    def __init__(self, pool: KVPool, first: int, positions: list[int], tokens: int) -> None:
        super().__init__(pool, first, positions, tokens)
        self.own_keys = None


def step(model: GPT, view: SlotView, ids: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Seconds of one decoding forward through `view`, and its logits."""
    start = time.perf_counter()
    logits, _ = model(ids, kv_cache=view)
    return time.perf_counter() - start, logits


def bench(shape: dict[str, Any], rows: int, rounds: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**shape, "dropout": 0.0})).eval()
    pool = KVPool(model, rows)
    pool.k.normal_()
    pool.v.normal_()
    generator = torch.Generator().manual_seed(rows)
    block = shape["block_size"]
    positions = torch.randint(1, block, (rows,), generator=generator).tolist()
    ids = torch.randint(0, shape["vocab_size"], (rows, 1), generator=generator)
    times: dict[str, list[float]] = {"one call": [], "chosen": []}
    logits: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i in range(rounds + 1):  # the first round warms up, untimed
            for side in (("one call", "chosen") if i % 2 == 0 else ("chosen", "one call")):
                kind = OneCall if side == "one call" else SlotView
                seconds, logits[side] = step(model, kind(pool, 0, positions, 1), ids)
                if i:
                    times[side].append(seconds)
    ms = {side: 1000 * statistics.median(t) for side, t in times.items()}
    return {"rows": rows, "positions_mean": statistics.mean(positions),
            "positions_max": max(positions), "row_by_row": SlotView(
                pool, 0, positions, 1).row_keys(1) is not None,
            "ms_per_step": ms, "speedup": ms["one call"] / ms["chosen"],
            "max_logit_difference": float((logits["one call"] - logits["chosen"]).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES),
                        default=["shakespeare-char", "6x384-50k", "gpt2-small"])
    parser.add_argument("--rows", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path,
                        default=Path("benchmarks/results/pool_attention.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"threads": args.threads, "rounds": args.rounds, "shapes": {}}
    for name in args.shapes:
        shape = {**SHAPES[name], "block_size": max(SHAPES[name]["block_size"], 512)}
        results["shapes"][name] = {"shape": shape, "by_rows": {}}
        for rows in args.rows:
            r = bench(shape, rows, args.rounds)
            results["shapes"][name]["by_rows"][str(rows)] = r
            print(f"{name}, {rows} rows at mean position {r['positions_mean']:.0f} (longest "
                  f"{r['positions_max']}): one call {r['ms_per_step']['one call']:.2f} ms, "
                  f"chosen {r['ms_per_step']['chosen']:.2f} ms ({r['speedup']:.2f}x, row by "
                  f"row: {r['row_by_row']}); logits differ by {r['max_logit_difference']:.1e}",
                  flush=True)
    write_results(args.json, results)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
