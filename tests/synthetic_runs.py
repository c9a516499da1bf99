"""Run directories written by hand: a config.yaml and a metrics.jsonl, no training needed.

They make plots and comparisons exact and fast: each setting and logged number is known.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from gptkit.config import load_config, save_config
from tests.conftest import TINY


def curve(step: int, lr: float = 1e-3) -> float:
    """A made-up loss that falls faster with a larger learning rate."""
    return 1.5 + 2.7 * math.exp(-step * lr * 40)


def metrics(
    steps: int = 60, *, lr: float = 1e-3, eval_every: int = 10, log_every: int = 5,
    tokens_per_step: int = 256,
) -> list[dict[str, Any]]:
    """Records shaped like the trainer's: train every `log_every`, eval every `eval_every`."""
    records: list[dict[str, Any]] = []
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            loss = curve(step, lr) + 0.05
            records.append({"step": step, "kind": "eval", "tokens": step * tokens_per_step,
                            "train_loss": curve(step, lr), "val_loss": loss,
                            "val_perplexity": math.exp(loss), "val_tokens": 2048,
                            "val_bits_per_byte": loss / math.log(2)})
        if step and (step % log_every == 0 or step == steps):
            records.append({"step": step, "kind": "train", "tokens": step * tokens_per_step,
                            "loss": curve(step, lr) + 0.02 * (-1) ** step, "lr": lr,
                            "tokens_per_s": 1000.0 + step, "elapsed_s": step / 10,
                            "grad_norm": 1.0})
    return records


def make_run(
    path: Path,
    overrides: list[str] | None = None,
    records: list[dict[str, Any]] | None = None,
    *,
    best_step: int | None = None,
) -> Path:
    """A run folder: config.yaml from TINY + overrides, metrics.jsonl, best/config.json.

    `records=None` writes the default curve; `[]` an empty metrics.jsonl. The best step
    defaults to the eval with the lowest val loss."""
    path.mkdir(parents=True)
    cfg = load_config("shakespeare-char", TINY + (overrides or []))
    save_config(cfg, path / "config.yaml")
    if records is None:
        records = metrics(lr=cfg.train.lr)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    evals = [r for r in records if r["kind"] == "eval" and "val_loss" in r]
    if evals:
        best = (min(evals, key=lambda r: r["val_loss"]) if best_step is None
                else next(r for r in evals if r["step"] == best_step))
        (path / "best").mkdir()
        (path / "best" / "config.json").write_text(json.dumps(
            {"step": best["step"], "val_loss": best["val_loss"], "tokens_seen": best["tokens"],
             "model": {}}))
    return path
