"""What a sweep leaves besides its trial folders: sweep.json (every trial) and best.yaml (the
best trial's settings as a recipe that `gptkit train --recipe DIR/best.yaml` trains)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from gptkit.config import load_config, load_recipe
from gptkit.sweep.space import Choice, Space, trial_sets

if TYPE_CHECKING:
    import optuna

SUMMARY_FILE, BEST_FILE = "sweep.json", "best.yaml"


def trial_record(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    retried = trial.system_attrs.get("failed_trial")
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "value": trial.value,
        "params": trial.params,
        "run_dir": trial.user_attrs.get("run_dir"),
        "retry_of": retried,
        "val_loss_by_step": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        "seconds": (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.datetime_complete and trial.datetime_start else None,
    }


def write_summary(study: optuna.Study, out: Path, info: dict[str, Any]) -> Path:
    """sweep.json: the sweep's settings (`info`), the best trial and every trial."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = trial_record(study.best_trial) if complete else None
    trials = [trial_record(t) for t in study.get_trials(deepcopy=False)]
    path = out / SUMMARY_FILE
    path.write_text(json.dumps({**info, "study": study.study_name, "direction": "minimize",
                                "best": best, "trials": trials}, indent=2) + "\n")
    return path


def best_recipe(recipe: str, overrides: list[str], params: dict[str, Choice]) -> dict[str, Any]:
    """The recipe with the sweep's --set and the best trial's values written into it, each as
    the config reads it (typed: 0.003, not '0.003')."""
    raw = load_recipe(recipe)
    sets = [*overrides, *trial_sets(params)]
    resolved = load_config(recipe, sets).model_dump(mode="json")
    for item in sets:
        parts = item.split("=", 1)[0].strip().split(".")
        if len(parts) == 1:
            raw[parts[0]] = resolved[parts[0]]
        else:
            section, key = parts
            raw[section] = {**(raw.get(section) or {}), key: resolved[section][key]}
    return raw


def write_best(study: optuna.Study, out: Path, recipe: str, overrides: list[str]) -> Path:
    """best.yaml, headed by where it comes from."""
    trial = study.best_trial
    head = (f"# the best trial ({trial.number}, validation loss {trial.value:.4f}) of the sweep "
            f"in {out}\n# of recipe {recipe}; train it with: gptkit train --recipe "
            f"{out / BEST_FILE}\n")
    body = yaml.safe_dump(best_recipe(recipe, overrides, trial.params), sort_keys=False)
    path = out / BEST_FILE
    path.write_text(head + body, encoding="utf-8")
    return path


def space_info(space: Space) -> dict[str, Any]:
    return {key: p.model_dump(exclude_none=True) for key, p in space.params.items()}
