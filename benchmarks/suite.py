"""The speed suite: training, evaluation, generation, `prepare` and peak memory, gptkit
against `transformers` (and nanoGPT, given a checkout), on one machine in one run.

    python -m benchmarks.suite [--shapes char mid gpt2] [--nanogpt-dir DIR] [--repeats 5]

Per shape (see `benchmarks.train_speed`: the shakespeare-char recipe model, 6x384 with
context 256, GPT-2 small for a few steps): training and evaluation tokens/s with MFU
(`train_speed.bench_shape`), peak resident memory of a process training each side for three
steps (`train_speed.peak_memory`), and greedy generation tokens/s at batch 1 and 8 from a
model of the same shape (`generate_vs_transformers.bench_generation`). Once: `prepare`
MB/s on WikiText-2-sized text (`prepare_speed.bench`). Every comparison alternates its sides
so that drift in this machine's speed hits all alike; figures are medians with min-max.
Prints ratios (gptkit / baseline) and writes benchmarks/results/suite.json.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks import prepare_speed, train_speed
from benchmarks.common import write_results
from benchmarks.generate_vs_transformers import bench_generation
from benchmarks.generate_vs_transformers import report as report_generation
from gptkit.config import ModelConfig

# new tokens per generation: the shape's context less the prompt, bounded for time
GENERATE_TOKENS = {"char": 48, "mid": 128, "gpt2": 64}


def generation_config(shape: str) -> ModelConfig:
    cfg = train_speed.shape_config(shape).model
    return ModelConfig(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                       block_size=cfg.block_size, vocab_size=cfg.vocab_size or 65,
                       bias=cfg.bias, dropout=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["char", "mid", "gpt2"],
                        choices=list(train_speed.SHAPES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--nanogpt-dir", type=Path)
    parser.add_argument("--data-dir", default=os.environ.get("GPTKIT_DATA_DIR"))
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["train", "memory", "generate", "prepare"])
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/suite.json"))
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}", file=sys.stderr)
    results: dict[str, Any] = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    for name in args.shapes:
        shape: dict[str, Any] = {}
        if "train" not in args.skip:
            shape["training"] = train_speed.bench_shape(name, args.repeats, args.nanogpt_dir,
                                                        args.data_dir)
            if "memory" not in args.skip:
                for side, figures in shape["training"]["sides"].items():
                    figures["peak_memory"] = train_speed.peak_memory(
                        name, side, args.nanogpt_dir, args.data_dir)
            train_speed.report(name, shape["training"])
        if "generate" not in args.skip:
            shape["generation"] = bench_generation(
                generation_config(name), [1, 8], 16, GENERATE_TOKENS[name],
                max(3, args.repeats // 2), args.nanogpt_dir)
            report_generation(shape["generation"], f"{name} ")
        results[name] = shape
    if "prepare" not in args.skip:
        data_dir = Path(args.data_dir or "../shared/data")
        results["prepare"] = prepare_speed.bench(data_dir, 10.8, 3, [1, 2])
        prepare_speed.report(results["prepare"])
    write_results(args.json, results, default=str)


if __name__ == "__main__":
    main()
