"""Generation speed, gptkit vs `transformers.generate`, on the same weights, in one run.

    python -m benchmarks.generate_vs_transformers [--repeats 3] [--new-tokens 256]

A random GPT-2 (default 6 layers, 6 heads, 384 wide, context 512, GPT-2's 50,257-token
vocabulary) is exported to `transformers` with `gptkit.interop.hf.to_transformers`; both
decode greedily with a KV cache, no end-of-text stop, from 16-token prompts at batch 1 and
batch 8. The two sides alternate so that drift in this machine's speed hits both alike;
tokens/s is new tokens (batch x new) over the median wall time. Both must produce the same
token ids, which is checked.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from gptkit.config import ModelConfig
from gptkit.generate import generate
from gptkit.interop.hf import to_transformers
from gptkit.model import GPT


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
    parser.add_argument("--json", type=Path,
                        default=Path("benchmarks/results/generate_vs_transformers.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    config = ModelConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd,
                         block_size=args.block_size, vocab_size=args.vocab_size, dropout=0.0)
    model = GPT(config).eval()
    hf = to_transformers(model)
    hf.generation_config.eos_token_id = None  # run the full length on both sides
    hf.generation_config.pad_token_id = 0
    print(f"model: {model.num_params():,} parameters, {torch.get_num_threads()} threads")

    results = {}
    for batch in args.batches:
        prompts = torch.randint(0, args.vocab_size, (batch, args.prompt_tokens))

        def run_gptkit(prompts: torch.Tensor = prompts) -> torch.Tensor:
            return generate(model, prompts, max_new_tokens=args.new_tokens, temperature=0.0)

        def run_hf(prompts: torch.Tensor = prompts) -> torch.Tensor:
            with torch.no_grad():
                out: torch.Tensor = hf.generate(
                    prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                    max_new_tokens=args.new_tokens,
                    top_k=None, top_p=None, temperature=None)
            return out

        times: dict[str, list[float]] = {"gptkit": [], "transformers": []}
        outputs = {}
        run_gptkit(), run_hf()  # warm-up
        for i in range(args.repeats):
            order = ("gptkit", "transformers") if i % 2 == 0 else ("transformers", "gptkit")
            for side in order:
                start = time.perf_counter()
                outputs[side] = run_gptkit() if side == "gptkit" else run_hf()
                times[side].append(time.perf_counter() - start)
        same = torch.equal(outputs["gptkit"], outputs["transformers"])
        tok_s = {side: batch * args.new_tokens / statistics.median(t) for side, t in times.items()}
        ratio = tok_s["gptkit"] / tok_s["transformers"]
        results[f"batch_{batch}"] = {"tokens_per_s": tok_s, "ratio_gptkit_over_transformers":
                                     ratio, "same_tokens": same, "times_s": times}
        print(f"batch {batch}: gptkit {tok_s['gptkit']:8.1f} tok/s, transformers "
              f"{tok_s['transformers']:8.1f} tok/s, ratio {ratio:.2f}, same tokens: {same}",
              flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
