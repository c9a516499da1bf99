"""What compression costs: perplexity and CPU speed of int8 and pruned models of one run.

    python -m benchmarks.compress --run runs/shakespeare-char [--amounts 0.1 0.3 0.5]
        [--repeats 3] [--new-tokens N] [--speed-tokens 32768]

Variants: the run's fp32 model, its int8 dynamic quantization (`gptkit.compress`), and each
pruning method (magnitude, heads, mlp) at each amount, all on the CPU. For each:

- val loss and perplexity on the whole eval split, `gptkit eval`'s evaluator (windows of
  block_size, stride block_size);
- eval tokens/s: scoring the first `--speed-tokens` tokens of the split in windows of
  block_size, batches of the run's eval.batch_size;
- generation tokens/s at batch 1: greedy decoding with the KV cache from the run's sample
  prompt (at most a quarter of the context), `--new-tokens` new tokens (default: up to the
  end of the context);
- the size of the weights file.

Speed drifts on a shared machine, so every timing of a variant is paired with one of the
fp32 baseline right before or after it (the order alternates), repeated `--repeats` times;
the table shows each variant's median and its ratio to the baseline's median from the same
pairs (the fp32 row, timed against itself, shows the noise). Threads: torch's default (set
OMP_NUM_THREADS to pin). Results go to benchmarks/results/compress.json.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import made_by, write_results
from gptkit import compress
from gptkit.data.prepare import prepare
from gptkit.errors import GptkitError
from gptkit.evaluate import score_tokens
from gptkit.generation.config import GenerationConfig
from gptkit.generation.sampling import generate
from gptkit.model import GPT
from gptkit.run import Run, load_run
from gptkit.weights import save_weights


def weights_mb(model: GPT) -> float:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "w.safetensors"
        if compress.is_int8(model):
            compress.save_int8(model, path)
        else:
            save_weights(model, path)
        return path.stat().st_size / 1e6


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/shakespeare-char"))
    parser.add_argument("--data-dir", help="data root (default: $GPTKIT_DATA_DIR, ...)")
    parser.add_argument("--amounts", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    parser.add_argument("--methods", nargs="+", default=list(compress.PRUNE_METHODS),
                        choices=compress.PRUNE_METHODS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int,
                        help="tokens generated per timing (default: fill the context after "
                        "the prompt, so every step decodes from the KV cache)")
    parser.add_argument("--speed-tokens", type=int, default=32768,
                        help="tokens of the split scored per eval-speed timing")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/compress.json"))
    args = parser.parse_args()

    run: Run = load_run(args.run)
    cfg = run.config
    split = cfg.data.eval_split
    data = prepare(cfg.data, splits=[split], data_dir=args.data_dir, tokenizer=run.tokenizer)
    tokens = data.tokens(split)
    block, batch = cfg.model.block_size, cfg.eval.batch_size
    speed_tokens = np.asarray(tokens[: args.speed_tokens + 1])
    prompt_ids = (run.tokenizer.encode(cfg.sample.prompt) if cfg.sample.prompt
                  else [run.tokenizer.eot_id or 0])[: block // 4]
    prompt = torch.tensor([prompt_ids])
    new_tokens = args.new_tokens or block - len(prompt_ids)
    print(f"{args.run}: {run.model.num_params():,} parameters, {len(tokens):,} {split} tokens, "
          f"{torch.get_num_threads()} threads", flush=True)

    variants: list[tuple[str, float | None, Callable[[GPT], GPT]]] = [
        ("fp32", None, lambda m: m), ("int8", None, compress.quantize_int8)]
    for method in args.methods:
        for amount in args.amounts:
            def pruned(m: GPT, method: str = method, amount: float = amount) -> GPT:
                m = copy.deepcopy(m)
                compress.prune_model(m, method, amount)
                return m
            variants.append((method, amount, pruned))

    base = run.model

    def eval_speed(model: GPT) -> float:
        return timed(lambda: score_tokens(model, speed_tokens, block_size=block,
                                          batch_size=batch))

    def gen_speed(model: GPT) -> float:
        greedy = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0, top_k=None)
        return timed(lambda: generate(model, prompt, greedy))

    scored = score_tokens(base, speed_tokens, block_size=block, batch_size=batch).tokens
    gen_speed(base)  # warm-up
    rows: list[dict[str, Any]] = []
    base_loss = None
    for name, amount, make in variants:
        try:
            model = make(base)
        except GptkitError as exc:
            print(f"{name} {amount}: skipped ({exc})", flush=True)
            continue
        score = score_tokens(model, tokens, block_size=block, batch_size=batch)
        loss = score.nll / score.tokens
        base_loss = loss if base_loss is None else base_loss
        times: dict[str, list[float]] = {"eval": [], "eval_fp32": [], "gen": [], "gen_fp32": []}
        eval_speed(model), gen_speed(model)  # warm-up
        for i in range(args.repeats):
            pair = ((model, ""), (base, "_fp32")) if i % 2 == 0 else ((base, "_fp32"),
                                                                      (model, ""))
            for m, suffix in pair:
                times["eval" + suffix].append(eval_speed(m))
                times["gen" + suffix].append(gen_speed(m))
        med = {k: statistics.median(v) for k, v in times.items()}
        report = compress.sparsity(model)
        row = {
            "variant": name, "amount": amount, "sparsity_blocks": report["blocks"],
            "heads_zero": report["heads"]["zero"],
            "mlp_channels_zero": report["mlp_channels"]["zero"],
            "val_loss": loss, "val_perplexity": float(np.exp(loss)),
            "perplexity_change": float(np.exp(loss) - np.exp(base_loss)),
            "eval_tokens_per_s": scored / med["eval"],
            "eval_speedup": med["eval_fp32"] / med["eval"],
            "generate_tokens_per_s": new_tokens / med["gen"],
            "generate_speedup": med["gen_fp32"] / med["gen"],
            "weights_mb": weights_mb(model), "times_s": times,
        }
        rows.append(row)
        label = name if amount is None else f"{name} {amount:g}"
        print(f"{label:<15} sparsity {row['sparsity_blocks']:.3f}  ppl {row['val_perplexity']:.3f}"
              f" ({row['perplexity_change']:+.3f})  eval {row['eval_tokens_per_s']:,.0f} tok/s "
              f"(x{row['eval_speedup']:.2f})  generate {row['generate_tokens_per_s']:,.1f} "
              f"tok/s (x{row['generate_speedup']:.2f})  {row['weights_mb']:.2f} MB", flush=True)

    print()
    print("| variant | zero weights (blocks) | val perplexity | change | eval tokens/s | vs fp32 "
          "| generate tokens/s | vs fp32 | weights MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        label = r["variant"] if r["amount"] is None else f"{r['variant']} {r['amount']:g}"
        print(f"| {label} | {100 * r['sparsity_blocks']:.1f}% | {r['val_perplexity']:.3f} | "
              f"{r['perplexity_change']:+.3f} | {r['eval_tokens_per_s']:,.0f} | "
              f"{r['eval_speedup']:.2f}x | {r['generate_tokens_per_s']:,.1f} | "
              f"{r['generate_speedup']:.2f}x | {r['weights_mb']:.2f} |")
    write_results(args.json, {
        "run": str(args.run), "run_made_by": made_by(args.run), "split": split,
        "split_tokens": len(tokens),
        "threads": torch.get_num_threads(), "new_tokens": new_tokens,
        "speed_tokens": args.speed_tokens, "repeats": args.repeats, "rows": rows,
    })
    print(f"\nwritten to {args.json}")


if __name__ == "__main__":
    main()
