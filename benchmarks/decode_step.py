"""Decode speed before and after a change: this tree's gptkit against another source tree's,
and fp32 against bf16 weights, alternating in one run.

    python -m benchmarks.decode_step [--baseline-src /path/to/old/src] [--bf16]
        [--shapes shakespeare-char 6x384-50k gpt2-small] [--batches 1 8]
        [--new-tokens 64] [--prompt-tokens 8] [--rounds 5] [--threads 1]

Make the baseline tree with e.g. `git worktree add /tmp/base <rev>` (or `git archive <rev>
src | tar -x -C /tmp/base`) and pass `--baseline-src /tmp/base/src`. Each side is a worker
process of its own (PYTHONPATH = its src), so two versions of gptkit never share an
interpreter: "before" (the baseline tree, fp32), "after" (this tree, fp32) and, with
`--bf16`, "after_bf16" (this tree, weights cast to bf16, as `load_run` does when
`inference_dtype` picks bf16). Every worker builds the same random weights per shape
(`torch.manual_seed(0)`) and decodes greedily with `generate` from the same random 8-token
prompts (`--prompt-tokens`; with `--new-tokens 1` a long prompt measures the prefill: the
time to a first token), with no end-of-text stop. After one short warm-up per side the
sides alternate (A B C, C B A, ...); only one worker computes at a time. tokens/s is
batch x new tokens over the median wall time (the prompt's prefill included), and the ratio
of the fastest rounds is given too (on a shared machine, the least disturbed figure);
"same ids" is the share of new tokens equal to the first side's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROMPT_TOKENS = 8  # the default
# the shapes of benchmarks.decode_runtimes (the default recipe's model with its ~65
# characters, a 6x384 model with GPT-2's vocabulary, GPT-2 small), and two between
SHAPES: dict[str, dict[str, Any]] = {
    "shakespeare-char": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64,
                         "bias": False, "vocab_size": 65},
    "4x256-50k": {"n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 256,
                  "vocab_size": 50257},
    "6x384-char": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256,
                   "bias": False, "vocab_size": 65},
    "6x384-50k": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 512,
                  "vocab_size": 50257},
    "gpt2-small": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024,
                   "vocab_size": 50257},
}


def worker(threads: int) -> None:
    """Serve decode requests (one JSON line each on stdin, one JSON reply on stdout) with
    the gptkit on this process's path."""
    import torch

    from gptkit.config import ModelConfig
    from gptkit.generation.config import GenerationConfig
    from gptkit.generation.sampling import generate
    from gptkit.model import GPT

    torch.set_num_threads(threads)
    models: dict[str, GPT] = {}
    for line in sys.stdin:
        req = json.loads(line)
        key = json.dumps([req["shape"], req["dtype"]], sort_keys=True)
        if key not in models:
            torch.manual_seed(0)
            model = GPT(ModelConfig(**req["shape"], dropout=0.0)).eval()
            models[key] = model.to(torch.bfloat16) if req["dtype"] == "bf16" else model
        model = models[key]
        prompts = torch.randint(0, req["shape"]["vocab_size"], (req["batch"], req["prompt"]),
                                generator=torch.Generator().manual_seed(req["batch"]))
        greedy = GenerationConfig(max_new_tokens=req["new"], temperature=0.0, top_k=None)
        start = time.perf_counter()
        out = generate(model, prompts, greedy, eot_id=None)
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "tokens": out[:, req["prompt"] :].tolist(),
                          "params": model.num_params()}), flush=True)


class Side:
    """A worker process running one gptkit source tree at one weight dtype."""

    def __init__(self, src: Path, dtype: str, threads: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads)}
        self.dtype = dtype
        self.proc = subprocess.Popen(
            [sys.executable, "-u", __file__, "--worker", "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def decode(self, shape: dict[str, Any], batch: int, new: int,
               prompt: int = PROMPT_TOKENS) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {"shape": shape, "batch": batch, "new": new, "dtype": self.dtype,
                   "prompt": prompt}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"the {self.dtype} worker stopped (see its error above)")
        result: dict[str, Any] = json.loads(reply)
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def bench(sides: dict[str, Side], shape: dict[str, Any], batches: list[int], new_tokens: int,
          rounds: int, prompt: int = PROMPT_TOKENS) -> dict[str, Any]:
    new = min(new_tokens, shape["block_size"] - prompt)
    results: dict[str, Any] = {"shape": shape, "new_tokens": new}
    first = next(iter(sides))
    for batch in batches:
        for side in sides.values():  # warm-up
            results["parameters"] = side.decode(shape, batch, min(new, 4), prompt)["params"]
        times: dict[str, list[float]] = {name: [] for name in sides}
        tokens: dict[str, list[list[int]]] = {}
        for i in range(rounds):
            for name in (list(sides) if i % 2 == 0 else list(reversed(sides))):
                reply = sides[name].decode(shape, batch, new, prompt)
                times[name].append(reply["seconds"])
                tokens[name] = reply["tokens"]
        tok_s = {name: batch * new / statistics.median(t) for name, t in times.items()}
        ref = [t for row in tokens[first] for t in row]
        results[f"batch_{batch}"] = {
            "tokens_per_s": tok_s,
            "range_tokens_per_s": {name: [batch * new / max(t), batch * new / min(t)]
                                   for name, t in times.items()},
            "ratio_over_" + first: {name: v / tok_s[first] for name, v in tok_s.items()},
            # fastest rounds: on a shared machine, the least disturbed estimate of each side
            "best_ratio_over_" + first: {name: min(times[first]) / min(t)
                                         for name, t in times.items()},
            "same_ids_as_" + first: {
                name: sum(a == b for a, b in zip(ref, [t for row in toks for t in row],
                                                 strict=True)) / len(ref)
                for name, toks in tokens.items() if name != first},
        }
    return results


def report(name: str, r: dict[str, Any]) -> None:
    print(f"{name}: {r['parameters']:,} parameters, {r['new_tokens']} new tokens", flush=True)
    for key, entry in r.items():
        if not key.startswith("batch_"):
            continue
        ratios = next(v for k, v in entry.items() if k.startswith("ratio_over_"))
        best = next(v for k, v in entry.items() if k.startswith("best_ratio_over_"))
        same = next(v for k, v in entry.items() if k.startswith("same_ids_as_"))
        cells = ", ".join(f"{side} {v:,.1f} ({ratios[side]:.2f}x, best rounds "
                          f"{best[side]:.2f}x)" for side, v in entry["tokens_per_s"].items())
        print(f"  {key.replace('_', ' ')}: tok/s {cells}; same ids "
              + ", ".join(f"{s} {100 * v:.0f}%" for s, v in same.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baseline-src", type=Path,
                        help="another tree's src folder: its gptkit is the 'before' side")
    parser.add_argument("--baseline-label",
                        help="what the baseline is, for the results (e.g. its commit)")
    parser.add_argument("--bf16", action="store_true",
                        help="also this tree's gptkit with bf16 weights")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES),
                        default=["shakespeare-char", "6x384-50k", "gpt2-small"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/decode_step.json"))
    args = parser.parse_args()
    if args.worker:
        worker(args.threads)
        return
    from benchmarks.common import REPO, write_results

    sides: dict[str, Side] = {}
    if args.baseline_src is not None:
        sides["before"] = Side(args.baseline_src.resolve(), "fp32", args.threads)
    sides["after"] = Side(REPO / "src", "fp32", args.threads)
    if args.bf16:
        sides["after_bf16"] = Side(REPO / "src", "bf16", args.threads)
    print(f"{args.threads} threads; sides: {', '.join(sides)}", flush=True)
    results: dict[str, Any] = {"threads": args.threads, "rounds": args.rounds,
                               "prompt_tokens": args.prompt_tokens, "sides": list(sides),
                               "baseline_src": str(args.baseline_src or ""),
                               "baseline_label": args.baseline_label, "shapes": {}}
    try:
        for name in args.shapes:
            results["shapes"][name] = bench(sides, SHAPES[name], args.batches,
                                            args.new_tokens, args.rounds, args.prompt_tokens)
            report(name, results["shapes"][name])
    finally:
        for side in sides.values():
            side.close()
    import torch  # for the provenance's thread count: the workers' own

    torch.set_num_threads(args.threads)
    write_results(args.json, results)


if __name__ == "__main__":
    main()
