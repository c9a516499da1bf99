"""Learning-rate schedules: linear warmup, then cosine, linear or constant.

A pure function of the step (no scheduler object with its own state), so resuming needs
nothing beyond the step number and the schedule can be plotted or tested at any step.
"""

from __future__ import annotations

import math

from gptkit.config import TrainConfig
from gptkit.errors import GptkitError

SCHEDULES = ("cosine", "linear", "constant")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of optimizer step `step` (0-based).

    Warmup starts above zero, at lr / (warmup_steps + 1), so the very first step already
    learns, and reaches lr at step warmup_steps. The decay then runs from lr at step
    warmup_steps to min_lr at step decay_steps (default max_steps) and stays at min_lr after.
    """
    if cfg.schedule not in SCHEDULES:
        raise GptkitError(
            f"train.schedule must be one of {', '.join(SCHEDULES)} (got {cfg.schedule!r})"
        )
    warmup = cfg.warmup_steps
    if step < warmup:
        return cfg.lr * (step + 1) / (warmup + 1)
    if cfg.schedule == "constant":
        return cfg.lr
    decay = cfg.decay_steps if cfg.decay_steps is not None else cfg.max_steps
    # a decay that ends before warmup does has nothing left to decay: min_lr from here on
    ratio = 1.0 if decay <= warmup else min(max((step - warmup) / (decay - warmup), 0.0), 1.0)
    if cfg.schedule == "linear":
        return cfg.lr - ratio * (cfg.lr - cfg.min_lr)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)
