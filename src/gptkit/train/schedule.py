"""Learning-rate schedules: linear warmup, then cosine, linear, constant, warmup-stable-decay,
step or exponential decay, or a reduction when the validation loss stops improving (plateau).

Every schedule but plateau is a pure function of the step (`lr_at`), so resuming needs
nothing beyond the step number and the schedule can be plotted or tested at any step.
plateau reacts to the evaluations, so it has state (`Plateau`); the trainer owns one
`Schedule`, asks it for each step's rate, tells it each evaluation's loss, and saves its
state in every checkpoint, so a resumed run takes the same rates bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from gptkit.config import TrainConfig
from gptkit.config.choices import ScheduleName
from gptkit.errors import GptkitError


def _cosine(lr: float, floor: float, ratio: float) -> float:
    return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - floor)


def _linear(lr: float, floor: float, ratio: float) -> float:
    return lr - ratio * (lr - floor)


def _ratio(step: int, t: TrainConfig) -> float:
    """How far the decay has gone at `step`: 0 where it starts, 1 at decay_steps and after.
    The decay starts where warmup ends; wsd holds lr until its cooldown starts."""
    decay = t.decay_steps if t.decay_steps is not None else t.steps
    start = t.warmup_steps
    if t.schedule == "wsd":
        start = max(start, decay - round(t.cooldown_fraction * decay))
    # the floor from step decay_steps on (also when the decay would end before warmup does)
    return 1.0 if step >= decay else max(step - start, 0) / max(decay - start, 1)


# train.schedule -> the rate of a step at or after the end of warmup; one per ScheduleName.
# step and exponential count their decays from the end of warmup and stop at the floor (as
# every decaying schedule here does; set train.min_lr=0 for PyTorch's unbounded decay).
SCHEDULES: dict[ScheduleName, Callable[[int, TrainConfig], float]] = {
    "cosine": lambda step, t: _cosine(t.lr, t.floor_lr, _ratio(step, t)),
    "linear": lambda step, t: _linear(t.lr, t.floor_lr, _ratio(step, t)),
    "constant": lambda step, t: t.lr,
    "wsd": lambda step, t: _linear(t.lr, t.floor_lr, _ratio(step, t)),
    # the rate before any reduction: the evaluations lower it (Plateau)
    "plateau": lambda step, t: t.lr,
    "step": lambda step, t: max(
        t.lr * t.step_gamma ** ((step - t.warmup_steps) // t.step_size), t.floor_lr),
    "exponential": lambda step, t: max(
        t.lr * t.exp_gamma ** (step - t.warmup_steps), t.floor_lr),
}


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate of optimizer step `step` (0-based), for a schedule without state
    (plateau: the rate before any reduction; `Schedule` gives the one in force).

    Warmup starts above zero, at lr / (warmup_steps + 1), so the very first step already
    learns, and reaches lr at step warmup_steps, where every schedule starts from lr.
    cosine and linear then run to the floor (min_lr, or lr x min_lr_ratio) at step
    decay_steps (default max_steps) and stay there after.

    wsd (warmup-stable-decay; Hägele et al. 2024, as in the nanoGPT speedruns) holds lr and
    decays linearly only over the last `cooldown_fraction` of the steps up to decay_steps:
    most of the run learns at the full rate, and the short cooldown gives the loss drop a
    long cosine spreads out. (Stopping a stable phase early and cooling down gives a
    finished model of any length.)

    step multiplies the rate by step_gamma every step_size steps (PyTorch's StepLR),
    exponential by exp_gamma every step (ExponentialLR); both stop at the floor.
    """
    warmup = cfg.warmup_steps
    if step < warmup:
        return cfg.lr * (step + 1) / (warmup + 1)
    return SCHEDULES[cfg.schedule](step, cfg)


class Plateau:
    """PyTorch's ReduceLROnPlateau in mode 'min', one evaluation per call, rule for rule.

    An evaluation improves when its loss is below best x (1 - threshold) (mode 'rel') or
    best - threshold ('abs'); after more than `patience` evaluations in a row without one,
    the rate becomes max(rate x factor, min_lr), unless that changes it by eps or less, and
    the next `cooldown` evaluations count as neither good nor bad.
    """

    eps = 1e-8  # PyTorch's default: smaller reductions are skipped

    def __init__(self, lr: float, *, factor: float, patience: int, threshold: float,
                 threshold_mode: str, cooldown: int, min_lr: float) -> None:
        self.factor, self.patience, self.cooldown = factor, patience, cooldown
        self.threshold, self.threshold_mode, self.min_lr = threshold, threshold_mode, min_lr
        self.lr = lr
        self.best = math.inf
        self.num_bad_epochs = 0  # evaluations, here; PyTorch's names
        self.cooldown_counter = 0

    def is_better(self, loss: float) -> bool:
        if self.threshold_mode == "rel":
            return loss < self.best * (1.0 - self.threshold)
        return loss < self.best - self.threshold

    def step(self, loss: float) -> bool:
        """Count one evaluation's loss; True when it reduced the rate."""
        if self.is_better(loss):
            self.best, self.num_bad_epochs = loss, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad evaluations in cooldown do not count
        if self.num_bad_epochs <= self.patience:
            return False
        self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        new_lr = max(self.lr * self.factor, self.min_lr)
        if self.lr - new_lr <= self.eps:
            return False
        self.lr = new_lr
        return True

    def state_dict(self) -> dict[str, Any]:
        """JSON values (the best so far is null before the first evaluation)."""
        return {"lr": self.lr, "best": None if math.isinf(self.best) else self.best,
                "bad_evals": self.num_bad_epochs, "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr = float(state["lr"])
        self.best = math.inf if state["best"] is None else float(state["best"])
        self.num_bad_epochs = int(state["bad_evals"])
        self.cooldown_counter = int(state["cooldown_counter"])


class Schedule:
    """The rate of each step of one run, and the state behind it (plateau's), for checkpoints.

    plateau counts the evaluations every train.eval_interval steps from the end of warmup:
    not those during warmup (the rate is still rising), nor the extra one a run makes where
    it stops (an interrupted run must reduce where an uninterrupted one does).
    """

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.plateau = None if cfg.schedule != "plateau" else Plateau(
            cfg.lr, factor=cfg.plateau_factor, patience=cfg.plateau_patience,
            threshold=cfg.plateau_threshold, threshold_mode=cfg.plateau_threshold_mode,
            cooldown=cfg.plateau_cooldown, min_lr=cfg.floor_lr)

    def lr(self, step: int) -> float:
        """The rate of optimizer step `step` (0-based), as things stand."""
        if self.plateau is None or step < self.cfg.warmup_steps:
            return lr_at(step, self.cfg)
        return self.plateau.lr

    def observe(self, step: int, loss: float) -> float | None:
        """Count the evaluation at `step`; the new rate when it reduced the rate, else None."""
        interval = self.cfg.eval_interval
        if not isinstance(interval, int):  # "0.5 epochs": the trainer settles it first
            raise GptkitError(f"train.eval_interval={interval!r} is not yet in steps "
                              "(gptkit.train.epochs.settle_epochs)")
        counted = step >= self.cfg.warmup_steps and step % interval == 0
        if self.plateau is None or not counted or not self.plateau.step(loss):
            return None
        return self.plateau.lr

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps ({} for a schedule without state), with the lr it ran at."""
        if self.plateau is None:
            return {}
        return {"base_lr": self.cfg.lr, **self.plateau.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A checkpoint's state. One without it (written before plateau existed, or by a run
        under another schedule) starts plateau afresh; one resumed with another train.lr
        keeps its reductions, scaled to the new lr (a diverged run resumes with a lower one)."""
        if self.plateau is None or not state:
            return
        self.plateau.load_state_dict(state)
        base = float(state.get("base_lr", self.cfg.lr))
        if base != self.cfg.lr:
            self.plateau.lr = max(self.plateau.lr * self.cfg.lr / base, self.cfg.floor_lr)
