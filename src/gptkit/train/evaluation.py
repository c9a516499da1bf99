"""Which evaluation is best, when to stop early, and when a run has diverged.

Every kind of run evaluates at the same steps (`Trainer.fit`); its objective turns a record
into a score (higher is better: a lower held-out loss, or a higher F1). The selection is part
of a checkpoint, so a resumed run keeps the same best and the same patience.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gptkit.errors import GptkitError


@dataclass
class Selection:
    """The best score so far, its held-out loss, and evaluations since it (early stopping)."""

    best_score: tuple[float, ...] | None = None
    best_loss: float | None = None
    bad_evals: int = 0

    def update(self, score: tuple[float, ...], loss: float) -> bool:
        """Count one evaluation; True when it is the best so far."""
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_loss, self.bad_evals = score, loss, 0
            return True
        self.bad_evals += 1
        return False

    def out_of_patience(self, patience: int) -> bool:
        return bool(patience) and self.bad_evals >= patience

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint keys (best_val_loss and bad_evals as runs have always saved them)."""
        return {"best_val_loss": self.best_loss, "bad_evals": self.bad_evals,
                "best_score": None if self.best_score is None else list(self.best_score)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A checkpoint's selection; one written before `best_score` was saved (a language
        model's) scores by its lowest validation loss."""
        self.best_loss = state.get("best_val_loss")
        self.bad_evals = int(state.get("bad_evals", 0))
        score = state.get("best_score")
        if score is not None:
            self.best_score = tuple(float(v) for v in score)
        else:
            self.best_score = None if self.best_loss is None else (-float(self.best_loss),)


def not_finite(record: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    """The first of `keys` whose number in `record` is NaN or infinite, else None."""
    return next((key for key in keys if not math.isfinite(record[key])), None)


def diverged(record: dict[str, Any], key: str, saved_step: int | None, lr: float,
             resume: str) -> GptkitError:
    """The one-line error that ends a run whose `key` became NaN or infinite, saying where
    to resume from (`resume`: the command that resumes the run) and with what."""
    if saved_step is None:
        advice = "no checkpoint was saved before it: start again with a lower train.lr"
    else:
        advice = (f"the last checkpoint before it is step {saved_step}; resume from it with a "
                  f"lower learning rate (now {lr:g}): {resume} --set train.lr=...")
    return GptkitError(
        f"training stopped: the {key.replace('_', ' ')} became {record[key]} at or before "
        f"step {record['step']}; {advice} (a gradient clip, train.grad_clip, helps too)"
    )
