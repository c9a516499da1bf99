"""Learning-rate schedules: linear warmup, then cosine, linear, constant or warmup-stable-decay.

A pure function of the step (no scheduler object with its own state), so resuming needs
nothing beyond the step number and the schedule can be plotted or tested at any step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from gptkit.config import TrainConfig
from gptkit.config.choices import ScheduleName


def _cosine(lr: float, floor: float, ratio: float) -> float:
    return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - floor)


def _linear(lr: float, floor: float, ratio: float) -> float:
    return lr - ratio * (lr - floor)


# train.schedule -> the rate after warmup, from lr (ratio 0) to the floor (ratio 1); one per
# ScheduleName. wsd decays linearly, but only over its cooldown (see lr_at).
SCHEDULES: dict[ScheduleName, Callable[[float, float, float], float]] = {
    "cosine": _cosine,
    "linear": _linear,
    "constant": lambda lr, floor, ratio: lr,
    "wsd": _linear,
}


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of optimizer step `step` (0-based).

    Warmup starts above zero, at lr / (warmup_steps + 1), so the very first step already
    learns, and reaches lr at step warmup_steps. The decay then runs from lr at step
    warmup_steps to the floor (min_lr, or lr x min_lr_ratio) at step decay_steps (default
    max_steps) and stays there after.

    wsd (warmup-stable-decay; Hägele et al. 2024, as in the nanoGPT speedruns) holds lr and
    decays linearly only over the last `cooldown_fraction` of the steps up to decay_steps:
    most of the run learns at the full rate, and the short cooldown gives the loss drop a
    long cosine spreads out. (Stopping a stable phase early and cooling down gives a
    finished model of any length.)
    """
    warmup = cfg.warmup_steps
    if step < warmup:
        return cfg.lr * (step + 1) / (warmup + 1)
    decay = cfg.decay_steps if cfg.decay_steps is not None else cfg.steps
    # the decay starts where warmup ends; wsd holds lr until its cooldown starts
    start = warmup
    if cfg.schedule == "wsd":
        start = max(warmup, decay - round(cfg.cooldown_fraction * decay))
    # min_lr from step decay_steps on (also when the decay would end before warmup does)
    ratio = 1.0 if step >= decay else max(step - start, 0) / max(decay - start, 1)
    return SCHEDULES[cfg.schedule](cfg.lr, cfg.floor_lr, ratio)
