"""Hyperparameter search with Optuna (`gptkit sweep`, `run_sweep`); Optuna is the `sweep`
extra and is imported only when a sweep runs.

    space.py      the search space file: --set keys to ranges or choices, checked as --set is
    objective.py  one trial: one ordinary run folder, pruned through the trainer's eval hook
    study.py      storage, samplers, pruners, workers, resuming
    results.py    sweep.json and best.yaml
    plots.py      optimisation history, parameter importances, parallel coordinates (PNG)
    runner.py     run_sweep, all of it
    worker.py     `python -m gptkit.sweep.worker`: one of --jobs N processes
"""

from gptkit.sweep.runner import SweepResult, run_sweep

__all__ = ["SweepResult", "run_sweep"]
