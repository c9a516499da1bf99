"""The study: its storage, sampler and pruner, the workers that run trials, and resuming.

Storage is Optuna's RDBStorage: SQLite in the sweep folder by default, or any database URL
Optuna accepts, so several machines can work on one study. Trials are counted finished when
COMPLETE or PRUNED; a sweep run again continues until `trials` are. A trial interrupted with
Ctrl-C is failed and its values queued again at once; one whose process died (kill, power)
stops sending its heartbeat and is failed and queued again (Optuna's RetryFailedTrialCallback)
by the next worker that starts a trial once `grace period` seconds have passed. Neither
counts; the retry trains into a new folder (trial numbers are never reused).

Security (nothing read from a file may run code): RDBStorage keeps params, distributions and
attributes as JSON and numbers; the samplers offered (TPE, random, grid) store nothing else.
Optuna's pickle.loads calls are in CmaEsSampler (its state, kept in the storage; not offered),
JournalStorage snapshots (not used: a URL gives RDBStorage here) and optuna.testing (checked
by grep in optuna 4.0.0 and 5.1.0).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gptkit.errors import GptkitError
from gptkit.sweep.objective import (
    TRIAL_PREFIX,
    Objective,
    SweepSpec,
    quiet_experimental,
    retry_callback,
)
from gptkit.sweep.space import Space

if TYPE_CHECKING:
    import optuna

WORKER_MODULE = "gptkit.sweep.worker"


def require_optuna() -> None:
    """Optuna is the `sweep` extra: without it, a one-line error saying how to install it."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise GptkitError("gptkit sweep needs Optuna: pip install 'gptkit[sweep]'") from None


def open_storage(url: str, heartbeat_s: int) -> optuna.storages.RDBStorage:
    """The study's database with heartbeats: a trial whose process died is failed after
    3 heartbeats of silence and its values queued again."""
    from optuna.storages import RDBStorage

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    keyword, retry = retry_callback()
    try:
        return quiet_experimental(RDBStorage, url, engine_kwargs=engine,
                                  heartbeat_interval=heartbeat_s, grace_period=3 * heartbeat_s,
                                  **{keyword: retry})
    except Exception as exc:  # sqlalchemy's errors for a URL it cannot open
        raise GptkitError(f"--storage {_redacted(url)} is no database Optuna can open: "
                          f"{' '.join(str(exc).split())[:300]}") from None


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unreadable URL)"


def _tpe(space: Space, seed: int | None) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.TPESampler(seed=seed)


def _random(space: Space, seed: int | None) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


def _grid(space: Space, seed: int | None) -> optuna.samplers.BaseSampler:
    import optuna

    return optuna.samplers.GridSampler(space.grid(), seed=seed)


# keyed by gptkit.config.choices.SweepSampler (tests/test_choices.py checks)
SAMPLERS: dict[str, Callable[[Space, int | None], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe, "random": _random, "grid": _grid}


def make_sampler(kind: str, space: Space, seed: int | None) -> optuna.samplers.BaseSampler:
    return SAMPLERS[kind](space, seed)


def _median() -> optuna.pruners.BasePruner:
    """A trial worse than the median of earlier trials at the same evaluation step, once 2
    trials have finished (Optuna's default waits for 5, too many for a small sweep)."""
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=2)


def _halving() -> optuna.pruners.BasePruner:
    """Successive halving with Optuna's defaults."""
    import optuna

    return optuna.pruners.SuccessiveHalvingPruner()


def _none() -> optuna.pruners.BasePruner:
    import optuna

    return optuna.pruners.NopPruner()


# keyed by gptkit.config.choices.SweepPruner (tests/test_choices.py checks)
PRUNERS: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
    "median": _median, "halving": _halving, "none": _none}


def make_pruner(kind: str) -> optuna.pruners.BasePruner:
    return PRUNERS[kind]()


def worker_seed(seed: int | None, existing: int, worker: int) -> int | None:
    """A sampler seed that differs per worker and per resumption (the same seed again would
    repeat the first random trials) yet is fixed by --seed."""
    if seed is None:
        return None
    import numpy as np

    return int(np.random.SeedSequence([seed, existing, worker]).generate_state(1)[0])


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state name (COMPLETE, PRUNED, RUNNING, WAITING, FAIL)."""
    found: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        found[trial.state.name] = found.get(trial.state.name, 0) + 1
    return found


def finished(study: optuna.Study) -> int:
    c = counts(study)
    return c.get("COMPLETE", 0) + c.get("PRUNED", 0)


def load_study(spec: SweepSpec, space: Space, worker: int = 0) -> optuna.Study:
    """The study in `spec.storage` (created on first use), with this worker's sampler."""
    import optuna

    storage = open_storage(spec.storage, spec.heartbeat_s)
    study = optuna.create_study(storage=storage, study_name=spec.study_name,
                                direction="minimize", load_if_exists=True,
                                pruner=make_pruner(spec.pruner))
    study.sampler = make_sampler(spec.sampler, space,
                                 worker_seed(spec.seed, len(study.trials), worker))
    return study


class _StopWhen:
    """Stop this worker once `trials` are finished or being run by some worker, or when it has
    failed as many trials as the sweep wants (each error is logged; do not loop forever)."""

    def __init__(self, trials: int) -> None:
        self.trials = trials
        self.failures = 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        from optuna.trial import TrialState

        self.failures += trial.state == TrialState.FAIL
        c = counts(study)
        if finished(study) + c.get("RUNNING", 0) >= self.trials or self.failures >= self.trials:
            study.stop()


def optimize(spec: SweepSpec, worker: int = 0, study: optuna.Study | None = None) -> None:
    """Run trials of the study until `spec.trials` are finished (what each worker does)."""
    import optuna

    space = spec.load_space()
    study = study or load_study(spec, space, worker)

    quiet_experimental(optuna.storages.fail_stale_trials, study)  # a killed sweep's trials: retried
    c = counts(study)
    if finished(study) + c.get("RUNNING", 0) >= spec.trials:
        return
    # Optuna calls its experimental fail_stale_trials before each trial: no warning each time
    quiet_experimental(study.optimize, Objective(spec, space),
                       callbacks=[_StopWhen(spec.trials)], catch=(GptkitError,),
                       gc_after_trial=True)


def check_trial_folders(out: Path, study: optuna.Study) -> None:
    """A trial-NNNN folder in `out` that is not a trial of this study (another study's, or
    one whose database was deleted) would be mixed up with a new trial of that number."""
    known = {t.number for t in study.get_trials(deepcopy=False)}
    strangers = sorted(p.name for p in out.glob(f"{TRIAL_PREFIX}*")
                       if p.name[len(TRIAL_PREFIX):].isdigit()
                       and int(p.name[len(TRIAL_PREFIX):]) not in known)
    if strangers:
        raise GptkitError(
            f"{out} holds {strangers[0]}, which is no trial of study {study.study_name!r} in "
            "its storage (another study's, or its database was removed): use another --out, "
            "or remove the trial folders")


def check_same_space(study: optuna.Study, space: Space) -> None:
    """A study continued with another range for a key would mix two searches (and Optuna
    refuses a retried trial's values under a changed range in the middle of the sweep)."""
    wanted = space.distributions()
    for trial in study.get_trials(deepcopy=False):
        for key, had in trial.distributions.items():
            if wanted.get(key) != had:
                raise GptkitError(
                    f"study {study.study_name!r} searched {key} as {had}, which the space now "
                    f"{'sets as ' + str(wanted[key]) if key in wanted else 'leaves out'}: "
                    "continue it with the same space, or use another --out or --study-name")


def run_workers(spec: SweepSpec, jobs: int) -> None:
    """`jobs` processes on this machine, each optimizing the same study (torch training does
    not share a process well: separate processes, each with its share of the cores)."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    # the workers import this very gptkit (a checkout's too), then what the path had
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    processes = [subprocess.Popen([sys.executable, "-m", WORKER_MODULE, spec.to_json(),
                                   str(worker), str(threads)], env=env)
                 for worker in range(jobs)]
    codes = [p.wait() for p in processes]
    if any(codes):
        raise GptkitError(f"sweep workers exited with {codes}; their errors are above "
                          "(re-run the same command to continue the study)")


def grid_trials(space: Space, trials: int) -> tuple[int, str | None]:
    """A grid has a fixed number of points: more trials would repeat them."""
    size = space.grid_size()
    if trials <= size:
        return trials, None
    return size, f"the grid has {size} points: running {size} trials, not {trials}"


def done_message(study: optuna.Study, trials: int) -> str:
    c = counts(study)
    parts = [f"{c[s]} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING") if c.get(s)]
    text = f"study {study.study_name!r}: {finished(study)}/{trials} trials finished " \
        f"({', '.join(parts) or 'none'})"
    if c.get("RUNNING"):
        text += ("; running ones belong to another worker, or to a sweep that was killed: "
                 "those are failed and retried once their heartbeat is 3 intervals old (run "
                 "the command again then)")
    return text
