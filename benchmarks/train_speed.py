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
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import write_results
from gptkit.config import load_config
from gptkit.data.prepare import prepare
from gptkit.device import autocast
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


def shape_config(name: str) -> Any:
    return load_config("shakespeare-char", [
        *SHAPES[name], "train.max_steps=1000000", "log.tensorboard=false", "log.plots=false",
        "log.sample_tokens=0", "train.warmup_steps=10"])


class Sides:
    """gptkit's Trainer and the baselines on one shape: a training run(steps) and an eval
    forward per side, on the same batches of real text."""

    def __init__(self, name: str, names: list[str], nanogpt: Path | None,
                 data_dir: str | None) -> None:
        cfg = self.cfg = shape_config(name)
        data = prepare(cfg.data, data_dir=data_dir)
        vocab = cfg.model.vocab_size or data.tokenizer.vocab_size
        batch, block = cfg.train.micro_batch_size, cfg.model.block_size
        self.tokens_per_step = batch * block
        train_tokens = torch.from_numpy(np.asarray(data.tokens("train")[:2_000_000],
                                                   dtype=np.int64))
        gen = torch.Generator().manual_seed(0)

        def batches() -> tuple[torch.Tensor, torch.Tensor]:
            starts = torch.randint(0, len(train_tokens) - block - 1, (batch,), generator=gen)
            rows = torch.stack([train_tokens[s: s + block + 1] for s in starts.tolist()])
            return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

        self.eval_x = batches()[0].repeat(max(1, 8 // batch), 1)
        self.train: dict[str, Callable[[int], None]] = {}
        self.eval: dict[str, Callable[[], None]] = {}
        self.trainer: Trainer | None = None
        if "gptkit" in names:
            trainer = self.trainer = Trainer(cfg, Path(tempfile.mkdtemp()) / name,
                                             data_dir=data_dir, progress=False)
            gpt = trainer.model

            def gptkit_run(steps: int) -> None:
                for _ in range(steps):
                    trainer._train_step()
                    trainer.step += 1

            def gptkit_eval() -> None:
                with torch.no_grad(), autocast(trainer.env.device, trainer.precision):
                    gpt(self.eval_x)

            self.train["gptkit"], self.eval["gptkit"] = gptkit_run, gptkit_eval
        if "transformers" in names:
            from transformers import GPT2Config, GPT2LMHeadModel

            hf = GPT2LMHeadModel(GPT2Config(
                vocab_size=vocab, n_positions=block, n_embd=cfg.model.n_embd,
                n_layer=cfg.model.n_layer, n_head=cfg.model.n_head, resid_pdrop=0.0,
                embd_pdrop=0.0, attn_pdrop=0.0)).train()
            self.train["transformers"] = plain_loop(
                hf, batches, cfg.train.lr, lambda m, x, y: m(input_ids=x, labels=x).loss)
            self.eval["transformers"] = self._no_grad(lambda: hf(input_ids=self.eval_x))
        if "nanogpt" in names and nanogpt is not None:
            module = load_nanogpt(nanogpt)
            ngpt = module.GPT(module.GPTConfig(
                block_size=block, vocab_size=vocab, n_layer=cfg.model.n_layer,
                n_head=cfg.model.n_head, n_embd=cfg.model.n_embd, dropout=0.0,
                bias=cfg.model.bias)).train()
            self.train["nanogpt"] = plain_loop(ngpt, batches, cfg.train.lr,
                                               lambda m, x, y: m(x, y)[1])
            self.eval["nanogpt"] = self._no_grad(lambda: ngpt(self.eval_x, self.eval_x))

    @staticmethod
    def _no_grad(fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                fn()
        return run


def bench_shape(name: str, repeats: int, nanogpt: Path | None, data_dir: str | None
                ) -> dict[str, Any]:
    sides = Sides(name, ["gptkit", "transformers", "nanogpt"], nanogpt, data_dir)
    trainer = sides.trainer
    assert trainer is not None
    gpt = trainer.model
    steps = CHUNK_STEPS[name]
    for run in sides.train.values():  # warm-up
        run(steps)
    times: dict[str, list[float]] = {side: [] for side in sides.train}
    eval_times: dict[str, list[float]] = {side: [] for side in sides.train}
    for i in range(repeats):
        order = list(sides.train) if i % 2 == 0 else list(reversed(sides.train))
        for side in order:
            times[side].append(timed(sides.train[side], steps))
            start = time.perf_counter()
            sides.eval[side]()
            eval_times[side].append(time.perf_counter() - start)
    flops_per_token = gpt.flops_per_token(training=True)
    peaks = {dtype: measured_matmul_flops(torch.device("cpu"), dtype)
             for dtype in (torch.float32, torch.bfloat16)}
    result: dict[str, Any] = {"precision_gptkit": trainer.precision,
                              "parameters": gpt.num_params(), "sides": {}}
    for side in sides.train:
        tok_s = [steps * sides.tokens_per_step / t for t in times[side]]
        eval_tok_s = [sides.eval_x.numel() / t for t in eval_times[side]]
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


def peak_memory(name: str, side: str, nanogpt: Path | None, data_dir: str | None,
                steps: int = 3) -> dict[str, float]:
    """Peak resident memory of a fresh process training `side` for `steps` steps, in a
    subprocess so that no other side's tensors or allocator caches count."""
    command = [sys.executable, "-m", "benchmarks.train_speed", "--peak-memory", side,
               "--shapes", name, "--steps", str(steps)]
    if nanogpt is not None:
        command += ["--nanogpt-dir", str(nanogpt)]
    if data_dir is not None:
        command += ["--data-dir", data_dir]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _measure_peak(name: str, side: str, nanogpt: Path | None, data_dir: str | None,
                  steps: int) -> None:
    import transformers  # noqa: F401  every side's process holds the same libraries

    if nanogpt is not None:
        load_nanogpt(nanogpt)
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    before = _status_bytes("VmRSS")
    sides = Sides(name, [side], nanogpt, data_dir)
    sides.train[side](steps)
    peak = _status_bytes("VmHWM")
    print(json.dumps({"peak_rss_bytes": peak, "above_start_bytes": peak - before}))


def report(name: str, result: dict[str, Any]) -> None:
    print(f"training {name} ({result['parameters']:,} parameters; gptkit in "
          f"{result['precision_gptkit']})")
    for side, f in result["sides"].items():
        t, e = f["train_tokens_per_s"], f["eval_tokens_per_s"]
        ratio = "" if side == "gptkit" else (
            f"  gptkit/{side}: train {f['ratio_train']:.2f}x, eval {f['ratio_eval']:.2f}x")
        memory = f.get("peak_memory")
        rss = "" if memory is None else (
            f", peak RSS +{memory['above_start_bytes'] / 2**20:,.0f} MiB")
        print(f"  {side:<13} train {t['median']:9,.0f} tok/s ({t['min']:,.0f}-{t['max']:,.0f}),"
              f" MFU {100 * f['mfu']:4.1f}%, eval {e['median']:9,.0f} tok/s{rss}{ratio}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["char", "mid"], choices=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--nanogpt-dir", type=Path)
    parser.add_argument("--data-dir")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/train_speed.json"))
    parser.add_argument("--peak-memory", choices=("gptkit", "transformers", "nanogpt"),
                        help=argparse.SUPPRESS)  # the subprocess of `peak_memory`
    parser.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_memory:
        _measure_peak(args.shapes[0], args.peak_memory, args.nanogpt_dir, args.data_dir,
                      args.steps)
        return
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}", file=sys.stderr)
    results = {}
    for name in args.shapes:
        results[name] = bench_shape(name, args.repeats, args.nanogpt_dir, args.data_dir)
        report(name, results[name])
    write_results(args.json, results)


if __name__ == "__main__":
    main()
