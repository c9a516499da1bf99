"""`run_sweep`: the whole of `gptkit sweep`, callable from Python."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptkit.config import load_config
from gptkit.config.choices import SweepPruner, SweepSampler, names, one_of
from gptkit.errors import GptkitError
from gptkit.sweep.objective import SweepSpec
from gptkit.sweep.plots import draw_plots
from gptkit.sweep.results import space_info, write_best, write_summary
from gptkit.sweep.space import Choice, load_space
from gptkit.sweep.study import (
    _redacted,
    check_same_space,
    check_trial_folders,
    done_message,
    finished,
    grid_trials,
    load_study,
    optimize,
    require_optuna,
    run_workers,
)


@dataclass
class SweepResult:
    out: Path
    study_name: str
    finished: int  # trials COMPLETE or PRUNED
    best_value: float | None = None  # the best trial's best validation loss
    best_params: dict[str, Choice] = field(default_factory=dict)
    best_run: Path | None = None
    best_recipe: Path | None = None  # best.yaml, for `gptkit train --recipe`
    plots: list[Path] = field(default_factory=list)


def run_sweep(
    recipe: str,
    space: str | Path,
    trials: int,
    *,
    out: str | Path | None = None,
    overrides: list[str] | None = None,
    sampler: SweepSampler = "tpe",
    pruner: SweepPruner = "median",
    storage: str | None = None,
    study_name: str | None = None,
    jobs: int = 1,
    seed: int | None = None,
    data_dir: str | Path | None = None,
    progress: bool = False,
    heartbeat_s: int = 10,
) -> SweepResult:
    """Search the `--set` keys of `space` (a YAML file, or a shipped space's name) for the
    settings of `recipe` (with `overrides` on top) that give the lowest validation loss, in
    `trials` runs, each an ordinary run folder OUT/trial-NNNN trained by `gptkit.train`.

    The study lives in `storage` (default: SQLite, OUT/study.db) under `study_name` (default:
    OUT's name); calling again with the same arguments continues it until `trials` trials are
    finished (complete or pruned). `jobs` worker processes share the study. Writes
    OUT/sweep.json, OUT/best.yaml (a recipe) and PNGs (optimisation history, parameter
    importances, parallel coordinates); prints a line per step. Raises GptkitError on bad input.

        from gptkit.sweep import run_sweep
        result = run_sweep("shakespeare-char", "optimizer", 20, out="sweeps/lr")
        print(result.best_value, result.best_params)
    """
    require_optuna()
    overrides = list(overrides or [])
    if trials < 1:
        raise GptkitError(f"--trials must be >= 1 (got {trials})")
    if jobs < 1:
        raise GptkitError(f"--jobs must be >= 1 (got {jobs})")
    if sampler not in names(SweepSampler):
        raise GptkitError(f"unknown sampler {sampler!r}; choose {one_of(SweepSampler)}")
    if pruner not in names(SweepPruner):
        raise GptkitError(f"unknown pruner {pruner!r}; choose {one_of(SweepPruner)}")
    base = load_config(recipe, overrides)  # a bad recipe or --set: its error, before any trial
    parsed = load_space(space, recipe, overrides)
    if sampler == "grid":
        trials, note = grid_trials(parsed, trials)
        if note:
            print(note, file=sys.stderr)
    folder = Path(out) if out is not None else Path("sweeps") / base.name
    folder.mkdir(parents=True, exist_ok=True)
    spec = SweepSpec(
        recipe=recipe, space=str(space), trials=trials, out=str(folder),
        storage=storage or f"sqlite:///{folder.resolve() / 'study.db'}",
        study_name=study_name or folder.resolve().name, overrides=overrides, sampler=sampler,
        pruner=pruner, seed=seed, data_dir=None if data_dir is None else str(data_dir),
        progress=progress and jobs == 1, heartbeat_s=heartbeat_s)
    study = load_study(spec, parsed)
    check_trial_folders(folder, study)
    check_same_space(study, parsed)
    before = finished(study)
    if before:
        print(f"continuing {done_message(study, trials)}")
    if jobs == 1:
        optimize(spec, study=study)
    else:
        run_workers(spec, jobs)
    return finish(study, spec, parsed_info(spec, parsed))


def parsed_info(spec: SweepSpec, parsed: Any) -> dict[str, Any]:
    return {"recipe": spec.recipe, "overrides": spec.overrides, "space": space_info(parsed),
            "sampler": spec.sampler, "pruner": spec.pruner, "trials_wanted": spec.trials,
            "storage": _redacted(spec.storage)}


def finish(study: Any, spec: SweepSpec, info: dict[str, Any]) -> SweepResult:
    """Print and write what the sweep found: sweep.json, best.yaml and the PNGs."""
    from optuna.trial import TrialState

    folder = Path(spec.out)
    print(done_message(study, spec.trials))
    summary = write_summary(study, folder, info)
    result = SweepResult(out=folder, study_name=study.study_name, finished=finished(study))
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        best = study.best_trial
        result.best_value, result.best_params = float(best.value), dict(best.params)
        run_dir = best.user_attrs.get("run_dir")
        result.best_run = Path(run_dir) if run_dir else None
        result.best_recipe = write_best(study, folder, spec.recipe, spec.overrides)
        settings = " ".join(f"--set {k}={v}" for k, v in best.params.items())
        print(f"best: trial {best.number}, validation loss {best.value:.4f} ({run_dir})")
        print(f"best settings: {settings}")
        print(f"best recipe: gptkit train --recipe {result.best_recipe}")
    else:
        print("no trial completed: no best settings (see the errors above)")
    result.plots, skipped = draw_plots(study, folder)
    for reason in skipped:
        print(f"plot skipped: {reason}")
    print(f"wrote {summary}" + "".join(f", {p.name}" for p in result.plots))
    return result
