"""One trial: the recipe, the sweep's `--set` and the trial's values, trained by the one loop
(`gptkit.train.trainer.train`) into its own run folder, DIR/trial-NNNN.

The trial's value is the best validation loss the trainer reports. After each evaluation the
trainer calls `on_eval` (its generic hook), which reports the loss to Optuna and ends the run
when the pruner says so; the trial then ends PRUNED, its folder kept as an ordinary run.
Trial numbers are never reused within a study, so a retried trial (its attempt interrupted)
trains into a fresh folder and the interrupted one stays as it was, for inspection.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptkit.config import load_config
from gptkit.errors import GptkitError
from gptkit.sweep.space import Space, load_space, trial_sets

if TYPE_CHECKING:
    import optuna

TRIAL_PREFIX = "trial-"
MAX_RETRY = 3  # an interrupted trial's values are tried again at most this often


def quiet_experimental(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call an API Optuna marks experimental (heartbeats, retries) without its warning."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return function(*args, **kwargs)


def trial_dir(out: Path, number: int) -> Path:
    return out / f"{TRIAL_PREFIX}{number:04d}"


@dataclass(frozen=True)
class SweepSpec:
    """What every worker of a sweep needs, as plain JSON (workers are separate processes)."""

    recipe: str
    space: str
    trials: int
    out: str
    storage: str
    study_name: str
    overrides: list[str] = field(default_factory=list)
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int | None = None
    data_dir: str | None = None
    progress: bool = False
    heartbeat_s: int = 10

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SweepSpec:
        return cls(**json.loads(text))

    def load_space(self) -> Space:
        return load_space(self.space, self.recipe, self.overrides)


class Objective:
    """Optuna's objective: train one trial, return its best validation loss."""

    def __init__(self, spec: SweepSpec, space: Space) -> None:
        self.spec = spec
        self.space = space

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        from gptkit.train.trainer import train

        values = self.space.suggest(trial)
        cfg = load_config(self.spec.recipe, [*self.spec.overrides, *trial_sets(values)])
        run_dir = trial_dir(Path(self.spec.out), trial.number)
        trial.set_user_attr("run_dir", str(run_dir))
        pruned: list[int] = []

        def on_eval(step: int, val_loss: float, record: dict[str, Any]) -> str | None:
            trial.report(val_loss, step)
            if trial.should_prune():
                pruned.append(step)
                return f"trial {trial.number} pruned by the {self.spec.pruner} pruner"
            return None

        try:
            result = train(cfg, run_dir, data_dir=self.spec.data_dir,
                           progress=self.spec.progress, on_eval=on_eval)
        except KeyboardInterrupt:
            retry_later(trial)
            raise
        if result.interrupted:  # Ctrl-C: the trainer saved a checkpoint and returned
            retry_later(trial)
            raise KeyboardInterrupt
        if pruned:
            raise optuna.TrialPruned(f"pruned at step {pruned[0]}")
        if result.best_val_loss is None:
            raise GptkitError(f"{run_dir} reported no validation loss to compare trials by")
        return float(result.best_val_loss)


def retry_later(trial: optuna.Trial) -> None:
    """Queue this trial's values again (it is about to fail, interrupted), as Optuna's
    RetryFailedTrialCallback does for a trial whose process died: the retry is a new trial,
    with a new number and folder, and records which trial it retries."""
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    retry_callback()[1](trial.study, frozen)


def retry_callback() -> tuple[str, Any]:
    """(RDBStorage's keyword, callback) that queues a dead trial's values again: Optuna 4.9
    renamed RetryFailedTrialCallback to RetryHeartbeatStaleTrialCallback (same behaviour and
    the same system attributes, `failed_trial` and `retry_history`)."""
    from optuna import storages

    renamed = getattr(storages, "RetryHeartbeatStaleTrialCallback", None)
    if renamed is not None:
        return "heartbeat_stale_trial_callback", quiet_experimental(renamed, MAX_RETRY)
    return "failed_trial_callback", quiet_experimental(storages.RetryFailedTrialCallback,
                                                       MAX_RETRY)
