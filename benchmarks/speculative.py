"""Speculative decoding at batch 1: plain greedy decoding vs a draft model proposing K tokens.

    python -m benchmarks.speculative --main RUN --draft RUN [--draft-tokens 2 3 4 6]
        [--new-tokens 200] [--repeats 3] [--prompt "ROMEO:"] [--temperature 0.8]

Both runs are loaded as `gptkit sample --draft` loads them (precision "auto"); the draft is
typically `gptkit distill --teacher MAIN` with a 2-layer student (docs/finetuning.md). Every
side decodes greedily from the same prompt with no end-of-text stop; the sides alternate
(forward, then reversed) so that drift in this machine's speed hits all alike; tokens/s is new
tokens over the median wall time. The speculative tokens must equal plain decoding's (checked
and reported), and the draft's acceptance rate and tokens per main-model pass are reported.
Sampled decoding (`--temperature`, seeded) is measured too, against plain sampling: its
tokens differ by design (the same distribution, another random stream).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import made_by, write_results
from gptkit.generation.config import GenerationConfig
from gptkit.generation.sampling import generate_tokens
from gptkit.generation.speculative import SpeculativeStats, speculative_tokens
from gptkit.model import GPT


def bench_speculative(main: GPT, draft: GPT, prompt: list[int], new_tokens: int,
                      draft_tokens: list[int], repeats: int, temperature: float = 0.0,
                      ) -> dict[str, Any]:
    """{"tokens_per_s": {side: median}, "ratio_over_plain": {...}, "same_tokens": {...},
    "acceptance": {...}, "tokens_per_pass": {...}} for sides plain and k=K, greedy; with
    `temperature` > 0 also sampled sides (plain@T, k=K@T: seeded, top-k 200; their tokens
    differ from plain sampling's by design, so only the speed and acceptance are compared)."""
    new_tokens = min(new_tokens, main.config.block_size - len(prompt))  # no side slides
    greedy = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0, top_k=None, seed=0)
    stats: dict[str, SpeculativeStats] = {}

    def plain(settings: GenerationConfig) -> Callable[[], list[int]]:
        return lambda: [int(t) for t in generate_tokens(main, prompt, settings)]

    def speculative(name: str, settings: GenerationConfig, k: int) -> Callable[[], list[int]]:
        def side() -> list[int]:
            stats[name] = SpeculativeStats()
            return [int(t) for t in speculative_tokens(main, draft, prompt, settings,
                                                       draft_tokens=k, stats=stats[name])]
        return side

    sides: dict[str, Callable[[], list[int]]] = {"plain": plain(greedy)}
    sides.update({f"k={k}": speculative(f"k={k}", greedy, k) for k in draft_tokens})
    baseline = {side: "plain" for side in sides}
    if temperature > 0:
        sampled = greedy.replace(temperature=temperature, top_k=200)
        at = f"@{temperature:g}"
        sides["plain" + at] = plain(sampled)
        sides.update({f"k={k}{at}": speculative(f"k={k}{at}", sampled, k)
                      for k in draft_tokens})
        baseline.update({f"k={k}{at}": "plain" + at for k in draft_tokens})
    times: dict[str, list[float]] = {side: [] for side in sides}
    outputs: dict[str, list[int]] = {}
    for side in sides.values():  # warm-up
        side()
    for i in range(repeats):
        for name in (list(sides) if i % 2 == 0 else list(reversed(sides))):
            start = time.perf_counter()
            outputs[name] = sides[name]()
            times[name].append(time.perf_counter() - start)
    tok_s = {side: new_tokens / statistics.median(t) for side, t in times.items()}
    spec_sides = [side for side in sides if side in stats]
    return {
        "main_parameters": main.num_params(), "draft_parameters": draft.num_params(),
        "main_dtype": str(main.lm_head.weight.dtype),
        "draft_dtype": str(draft.lm_head.weight.dtype),
        "prompt_tokens": len(prompt), "new_tokens": new_tokens,
        "tokens_per_s": tok_s,
        "range_tokens_per_s": {side: [new_tokens / max(t), new_tokens / min(t)]
                               for side, t in times.items()},
        "ratio_over_plain": {side: tok_s[side] / tok_s[baseline[side]] for side in spec_sides},
        "same_tokens": {side: outputs[side] == outputs["plain"] for side in spec_sides
                        if "@" not in side},
        "acceptance": {side: stats[side].acceptance for side in spec_sides},
        "tokens_per_pass": {side: stats[side].tokens_per_pass for side in spec_sides},
    }


def report(results: dict[str, Any]) -> None:
    print(f"speculative decoding, batch 1: main {results['main_parameters']:,} parameters "
          f"({results['main_dtype']}), draft {results['draft_parameters']:,} "
          f"({results['draft_dtype']}), {results['new_tokens']} new tokens")
    print(f"  plain: {results['tokens_per_s']['plain']:,.1f} tok/s")
    for side, ratio in results["ratio_over_plain"].items():
        same = results["same_tokens"].get(side, "n/a (sampled)")
        base = "plain" + side[side.index("@"):] if "@" in side else "plain"
        print(f"  {side}: {results['tokens_per_s'][side]:,.1f} tok/s = {ratio:.2f}x {base} "
              f"({results['tokens_per_s'][base]:,.1f}); acceptance "
              f"{results['acceptance'][side]:.0%}, {results['tokens_per_pass'][side]:.2f} "
              f"tokens per main pass; same tokens: {same}", flush=True)


def main() -> None:
    from gptkit.generation.speculative import check_draft
    from gptkit.run import load_run

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--main", type=Path, required=True, help="the run to decode from")
    parser.add_argument("--draft", type=Path, required=True, help="its draft run")
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--draft-tokens", type=int, nargs="+", default=[2, 3, 4, 6])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="also measure sampling at this temperature (top-k 200); 0: only "
                        "greedy")
    parser.add_argument("--precision", default="auto", help="both models' (gptkit.device)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/speculative.json"))
    args = parser.parse_args()
    main_run = load_run(args.main, precision=args.precision)
    draft_run = load_run(args.draft, precision=args.precision)
    check_draft(main_run.tokenizer, draft_run.tokenizer, str(args.draft))
    print(f"{torch.get_num_threads()} threads")
    with torch.no_grad():
        results = bench_speculative(main_run.model, draft_run.model,
                                    main_run.tokenizer.encode(args.prompt), args.new_tokens,
                                    args.draft_tokens, args.repeats, args.temperature)
    results["main_made_by"], results["draft_made_by"] = made_by(args.main), made_by(args.draft)
    report(results)
    write_results(args.json, results)


if __name__ == "__main__":
    main()
