"""Generation speed, gptkit vs `transformers.generate` (and nanoGPT), same weights, one run.

    python -m benchmarks.generate_vs_transformers [--repeats 3] [--new-tokens 256]
        [--nanogpt-dir DIR]

A random GPT-2 (default 6 layers, 6 heads, 384 wide, context 512, GPT-2's 50,257-token
vocabulary) is exported to `transformers` with `gptkit.interop.hf.to_transformers` (and
loaded into nanoGPT's unmodified `model.py` when a checkout is given). All decode greedily
(nanoGPT: its `generate` with top_k=1) with no end-of-text stop from 16-token prompts at
batch 1 and batch 8. gptkit runs as `gptkit sample` does by default (precision "auto":
bf16 weights on CPUs with bf16 matrix instructions for models of at least 2M parameters)
and, as a second row, in fp32, whose token ids must equal transformers' (checked). The
sides alternate so that drift in this machine's speed hits all alike; tokens/s is new
tokens (batch x new) over the median wall time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import write_results
from gptkit.config import ModelConfig
from gptkit.device import inference_dtype
from gptkit.generation.config import GenerationConfig
from gptkit.generation.sampling import generate
from gptkit.interop.hf import to_transformers
from gptkit.model import GPT


def nanogpt_model(folder: Path, model: GPT) -> Any:
    """nanoGPT's GPT with `model`'s weights (its parameter names are gptkit's)."""
    from benchmarks.train_speed import load_nanogpt

    module = load_nanogpt(folder)
    c = model.config
    ngpt = module.GPT(module.GPTConfig(block_size=c.block_size, vocab_size=c.vocab_size,
                                       n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
                                       dropout=0.0, bias=c.bias))
    ngpt.load_state_dict(model.state_dict(), strict=False)  # nanoGPT keeps no rope buffers
    return ngpt.eval()


def bench_generation(config: ModelConfig, batches: list[int], prompt_tokens: int,
                     new_tokens: int, repeats: int, nanogpt: Path | None = None
                     ) -> dict[str, Any]:
    """{"batch_B": {"tokens_per_s": {side: median}, "ratio_*": ..., "same_tokens": ...}}."""
    torch.manual_seed(0)
    model = GPT(config).eval()
    dtype = inference_dtype("auto", torch.device("cpu"), model.num_params())
    fast = GPT(config).eval()
    fast.load_state_dict(model.state_dict())
    if dtype is not None:
        fast.to(dtype)
    hf = to_transformers(model)
    hf.generation_config.eos_token_id = None  # run the full length on every side
    hf.generation_config.pad_token_id = 0
    ngpt = nanogpt_model(nanogpt, model) if nanogpt is not None else None
    new_tokens = min(new_tokens, config.block_size - prompt_tokens)  # no side slides
    results: dict[str, Any] = {"parameters": model.num_params(), "new_tokens": new_tokens,
                               "gptkit_dtype": str(dtype or torch.float32)}
    greedy = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0, top_k=None)
    for batch in batches:
        prompts = torch.randint(0, config.vocab_size, (batch, prompt_tokens))
        sides: dict[str, Callable[[], torch.Tensor]] = {
            "gptkit": lambda p=prompts: generate(fast, p, greedy),
            "gptkit_fp32": lambda p=prompts: generate(model, p, greedy),
            "transformers": lambda p=prompts: hf.generate(
                p, attention_mask=torch.ones_like(p), do_sample=False,
                max_new_tokens=new_tokens, top_k=None, top_p=None, temperature=None),
        }
        if ngpt is not None:
            sides["nanogpt"] = lambda p=prompts: ngpt.generate(p, new_tokens, top_k=1)
        times: dict[str, list[float]] = {side: [] for side in sides}
        outputs: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for side in sides.values():  # warm-up
                side()
            for i in range(repeats):
                for side in (list(sides) if i % 2 == 0 else list(reversed(sides))):
                    start = time.perf_counter()
                    outputs[side] = sides[side]()
                    times[side].append(time.perf_counter() - start)
        tok_s = {side: batch * new_tokens / statistics.median(t) for side, t in times.items()}
        entry: dict[str, Any] = {
            "tokens_per_s": tok_s,
            "range_tokens_per_s": {side: [batch * new_tokens / max(t), batch * new_tokens / min(t)]
                                   for side, t in times.items()},
            "same_tokens_fp32_vs_transformers": torch.equal(outputs["gptkit_fp32"],
                                                            outputs["transformers"]),
            "same_tokens_default_vs_fp32": float(
                (outputs["gptkit"] == outputs["gptkit_fp32"]).float().mean()),
        }
        for side in sides:
            if side != "gptkit":
                entry[f"ratio_over_{side}"] = tok_s["gptkit"] / tok_s[side]
        results[f"batch_{batch}"] = entry
    return results


def report(results: dict[str, Any], name: str = "") -> None:
    print(f"generation {name}({results['parameters']:,} parameters, {results['new_tokens']} new "
          f"tokens, gptkit weights {results['gptkit_dtype']})")
    for key, entry in results.items():
        if not key.startswith("batch_"):
            continue
        sides = ", ".join(f"{side} {v:,.1f}" for side, v in entry["tokens_per_s"].items())
        ratios = ", ".join(f"/{k[len('ratio_over_'):]} {v:.2f}x" for k, v in entry.items()
                           if k.startswith("ratio_over_"))
        print(f"  {key.replace('_', ' ')}: tok/s {sides}; gptkit {ratios}; fp32 ids equal "
              f"transformers': {entry['same_tokens_fp32_vs_transformers']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--vocab-size", type=int, default=50257)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nanogpt-dir", type=Path)
    parser.add_argument("--json", type=Path,
                        default=Path("benchmarks/results/generate_vs_transformers.json"))
    args = parser.parse_args()
    config = ModelConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                         block_size=args.block_size, vocab_size=args.vocab_size, dropout=0.0)
    print(f"{torch.get_num_threads()} threads")
    results = bench_generation(config, args.batches, args.prompt_tokens, args.new_tokens,
                               args.repeats, args.nanogpt_dir)
    report(results)
    write_results(args.json, results)


if __name__ == "__main__":
    main()
