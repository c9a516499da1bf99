"""`train.epochs` and intervals given in epochs, settled into optimizer steps once the data is read.

An epoch is one pass over the training split as the batch source draws it: the tokens of a
corpus, the examples (or packed rows) of fine-tuning data (`gptkit.data.loader.EpochSize`).
A step's share counts every process, so at world size 2 an epoch takes half the steps of
world size 1 and covers the same data. The trainer settles the steps once, before it saves
config.yaml: the saved config holds max_steps and the intervals in steps (train.epochs
null), so a resumed run keeps its length and schedule even at another world size, and
epochs.json in the run directory records how they were derived.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from gptkit.config import RunConfig, TrainConfig
from gptkit.config.fields import epochs_in
from gptkit.data.loader import EpochSize
from gptkit.errors import GptkitError

INTERVALS = ("eval_interval", "checkpoint_interval", "log_interval")


class HasEpochs(Protocol):
    def epoch_size(self) -> EpochSize:
        ...


class Budget(NamedTuple):
    """The settled length and intervals of a run, in optimizer steps."""

    max_steps: int
    eval_interval: int
    checkpoint_interval: int
    log_interval: int

    @classmethod
    def of(cls, train: TrainConfig) -> Budget:
        """`train`'s, which must be settled (`settle_epochs`): every value a step count."""
        values = [train.max_steps, *(getattr(train, name) for name in INTERVALS)]
        if not all(isinstance(v, int) for v in values):
            raise GptkitError("train.epochs and intervals in epochs must be settled into "
                              "steps first (gptkit.train.epochs.settle_epochs)")
        return cls(*values)


def in_epochs(train: TrainConfig) -> dict[str, float]:
    """The settings `train` gives in epochs: `max_steps` (from train.epochs) and the
    intervals written like "0.5 epochs", each with its number of epochs."""
    given = {} if train.epochs is None else {"max_steps": train.epochs}
    for name in INTERVALS:
        epochs = epochs_in(getattr(train, name))
        if epochs is not None:
            given[name] = epochs
    return given


def settle_epochs(cfg: RunConfig, source: HasEpochs) -> tuple[RunConfig, dict[str, Any]]:
    """`cfg` with its settings in epochs turned into steps through the training data's
    `source`, and the record of the conversion (empty when nothing was given in epochs).
    Each is ceil(epochs x units per epoch / units per step)."""
    given = in_epochs(cfg.train)
    if not given:
        return cfg, {}
    size = source.epoch_size()
    steps = {name: size.steps(epochs) for name, epochs in given.items()}
    changes: dict[str, Any] = dict(steps)
    if "max_steps" in steps:
        changes["epochs"] = None  # the saved config holds the steps: one budget
    label = {"max_steps": "train.epochs"}
    record = {
        "per_epoch": size.per_epoch, "per_step": size.per_step, "unit": size.unit,
        "settings": {f"train.{name}": {"epochs": epochs, "steps": steps[name]}
                     for name, epochs in given.items()},
        "lines": [f"{label.get(name, f'train.{name}')}: {size.explain(epochs)}"
                  for name, epochs in given.items()],
    }
    return cfg.updated(train=changes), record
