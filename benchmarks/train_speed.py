"""Training and evaluation speed, gptkit vs `transformers` (and nanoGPT), same shapes, one run.

    python -m benchmarks.train_speed [--shapes char mid gpt2] [--nanogpt-dir DIR] [--repeats 5]

For each shape, gptkit trains with its own `Trainer` and defaults (precision "auto": bf16
autocast on CPUs with bf16 matrix instructions, fp32 elsewhere). The baselines are what a
user would otherwise write: `transformers.GPT2LMHeadModel` (and, given a checkout, nanoGPT's
unmodified `model.py`, imported from there, never copied) in a plain PyTorch loop with
AdamW, gradient clipping and the same batches, in fp32. The sides alternate in chunks of
steps, so drift in this machine's speed hits all alike; each figure is the median over
`--repeats` chunks (min-max shown). MFU = tokens/s x training FLOPs per token / this
machine's measured dense matmul rate in the dtype the side computes in. Evaluation tokens/s
scores windows without gradients the same way. Writes benchmarks/results/train_speed.json.

Shapes: `char` = the shakespeare-char recipe model (4 layers, 128 wide, context 64, batch
12, 65 characters); `mid` = 6 layers, 384 wide, context 256, batch 8; `gpt2` = GPT-2 small
(124M, context 1024, batch 1, GPT-2's vocabulary), a few steps.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gptkit.config import load_config
from gptkit.train.metrics import measured_matmul_flops
from gptkit.train.trainer import Trainer

SHAPES: dict[str, list[str]] = {
    "char": [],
    "mid": ["model.n_layer=6", "model.n_head=6", "model.n_embd=384", "model.block_size=256",
            "train.micro_batch_size=8"],
    "gpt2": ["model.n_layer=12", "model.n_head=12", "model.n_embd=768", "model.block_size=1024",
             "train.micro_batch_size=1", "model.vocab_size=50257", "model.bias=true"],
}
CHUNK_STEPS = {"char": 20, "mid": 4, "gpt2": 1}


def plain_loop(model: torch.nn.Module, batches: Callable[[], tuple[torch.Tensor, torch.Tensor]],
               lr: float, forward: Callable[..., torch.Tensor]) -> Callable[[int], None]:
    """The loop a user writes around a baseline model: AdamW, clip at 1, fp32."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99),
                                  weight_decay=0.1)

    def run(steps: int) -> None:
        for _ in range(steps):
            x, y = batches()
            loss = forward(model, x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return run


def load_nanogpt(folder: Path) -> Any:
    spec = importlib.util.spec_from_file_location("nanogpt_model", folder / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(fn: Callable[[int], None], steps: int) -> float:
    start = time.perf_counter()
    fn(steps)
    return time.perf_counter() - start


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench_shape(name: str, repeats: int, nanogpt: Path | None, data_dir: str | None
                ) -> dict[str, Any]:
    cfg = load_config("shakespeare-char", [
        *SHAPES[name], "train.max_steps=1000000", "log.tensorboard=false", "log.plots=false",
        "log.sample_tokens=0", "train.warmup_steps=10"])
    trainer = Trainer(cfg, Path(tempfile.mkdtemp()) / name, data_dir=data_dir, progress=False)
    gpt = trainer.model
    vocab = gpt.config.vocab_size
    batch, block = cfg.train.micro_batch_size, cfg.model.block_size
    tokens_per_step = batch * block
    train_tokens = torch.from_numpy(trainer.data.tokens("train")[: 2_000_000].astype("int64")
                                    ) if trainer.data is not None else None
    assert train_tokens is not None
    gen = torch.Generator().manual_seed(0)

    def batches() -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(train_tokens) - block - 1, (batch,), generator=gen)
        rows = torch.stack([train_tokens[s: s + block + 1] for s in starts.tolist()])
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def gptkit_run(steps: int) -> None:
        for _ in range(steps):
            trainer._train_step()
            trainer.step += 1

    sides: dict[str, Callable[[int], None]] = {"gptkit": gptkit_run}
    eval_sides: dict[str, Callable[[], None]] = {}
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(
        vocab_size=vocab, n_positions=block, n_embd=cfg.model.n_embd, n_layer=cfg.model.n_layer,
        n_head=cfg.model.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    hf.train()
    sides["transformers"] = plain_loop(
        hf, batches, cfg.train.lr, lambda m, x, y: m(input_ids=x, labels=x).loss)
    if nanogpt is not None:
        module = load_nanogpt(nanogpt)
        ngpt = module.GPT(module.GPTConfig(
            block_size=block, vocab_size=vocab, n_layer=cfg.model.n_layer,
            n_head=cfg.model.n_head, n_embd=cfg.model.n_embd, dropout=0.0, bias=cfg.model.bias))
        ngpt.train()
        sides["nanogpt"] = plain_loop(ngpt, batches, cfg.train.lr, lambda m, x, y: m(x, y)[1])

    eval_x = batches()[0].repeat(max(1, 8 // batch), 1)
    models: dict[str, Callable[[torch.Tensor], Any]] = {
        "gptkit": lambda x: gpt(x),
        "transformers": lambda x: hf(input_ids=x),
    }
    if nanogpt is not None:
        models["nanogpt"] = lambda x: ngpt(x, x)
    from gptkit.train.distributed import autocast

    for side, model_fn in models.items():
        def evaluate(fn: Callable[[torch.Tensor], Any] = model_fn, side: str = side) -> None:
            with torch.no_grad():
                if side == "gptkit":
                    with autocast(trainer.env.device, trainer.precision):
                        fn(eval_x)
                else:
                    fn(eval_x)
        eval_sides[side] = evaluate

    steps = CHUNK_STEPS[name]
    for run in sides.values():  # warm-up
        run(steps)
    times: dict[str, list[float]] = {side: [] for side in sides}
    eval_times: dict[str, list[float]] = {side: [] for side in eval_sides}
    for i in range(repeats):
        order = list(sides) if i % 2 == 0 else list(reversed(sides))
        for side in order:
            times[side].append(timed(sides[side], steps))
            start = time.perf_counter()
            eval_sides[side]()
            eval_times[side].append(time.perf_counter() - start)
    flops_per_token = gpt.flops_per_token(training=True)
    peaks = {dtype: measured_matmul_flops(torch.device("cpu"), dtype)
             for dtype in (torch.float32, torch.bfloat16)}
    result: dict[str, Any] = {"precision_gptkit": trainer.precision,
                              "parameters": gpt.num_params(), "sides": {}}
    for side in sides:
        tok_s = [steps * tokens_per_step / t for t in times[side]]
        eval_tok_s = [eval_x.numel() / t for t in eval_times[side]]
        dtype = torch.bfloat16 if side == "gptkit" and trainer.precision == "bf16" \
            else torch.float32
        result["sides"][side] = {
            "train_tokens_per_s": summary(tok_s),
            "mfu": statistics.median(tok_s) * flops_per_token / peaks[dtype],
            "eval_tokens_per_s": summary(eval_tok_s),
        }
    base = result["sides"]["gptkit"]
    for side, figures in result["sides"].items():
        if side != "gptkit":
            figures["ratio_train"] = (base["train_tokens_per_s"]["median"]
                                      / figures["train_tokens_per_s"]["median"])
            figures["ratio_eval"] = (base["eval_tokens_per_s"]["median"]
                                     / figures["eval_tokens_per_s"]["median"])
    result["peak_flops"] = {str(k): v for k, v in peaks.items()}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["char", "mid"], choices=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--nanogpt-dir", type=Path)
    parser.add_argument("--data-dir")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/train_speed.json"))
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}", file=sys.stderr)
    results = {}
    for name in args.shapes:
        result = bench_shape(name, args.repeats, args.nanogpt_dir, args.data_dir)
        results[name] = result
        print(f"{name} ({result['parameters']:,} parameters; gptkit in "
              f"{result['precision_gptkit']})")
        for side, f in result["sides"].items():
            t, e = f["train_tokens_per_s"], f["eval_tokens_per_s"]
            ratio = "" if side == "gptkit" else (
                f"  gptkit/{side}: train {f['ratio_train']:.2f}x, eval {f['ratio_eval']:.2f}x")
            print(f"  {side:<13} train {t['median']:9,.0f} tok/s ({t['min']:,.0f}-{t['max']:,.0f}),"
                  f" MFU {100 * f['mfu']:4.1f}%, eval {e['median']:9,.0f} tok/s{ratio}",
                  flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
