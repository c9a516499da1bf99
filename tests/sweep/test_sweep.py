"""Sweeps of a tiny model: run folders, the study, best.yaml, plots, pruning, resuming after an
interruption or a killed worker, the grid, and --jobs."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from gptkit.config import read_config
from gptkit.sweep import run_sweep
from gptkit.sweep.objective import SweepSpec
from gptkit.sweep.study import load_study

optuna = pytest.importorskip("optuna")

TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
        "train.max_steps=4", "train.eval_interval=2", "train.eval_tokens=512",
        "train.micro_batch_size=4", "train.warmup_steps=0", "train.checkpoint_interval=4",
        "log.plots=false", "log.sample_tokens=0", "log.tensorboard=false"]
LR = "train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"


def sets(values: list[str]) -> list[str]:
    return [a for v in values for a in ("--set", v)]


def write_space(tmp_path: Path, text: str = LR) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def states(out: Path) -> list[str]:
    return [t["state"] for t in json.loads((out / "sweep.json").read_text())["trials"]]


def test_a_tiny_sweep_makes_runs_a_study_a_recipe_and_pictures(data_dir, tmp_path, capsys):
    from gptkit.cli import main

    space = write_space(tmp_path, LR + "train.weight_decay: {low: 0.0, high: 0.2}\n")
    out = tmp_path / "sweep"
    main(["sweep", "--space", str(space), "--trials", "3", "--out", str(out), "--sampler",
          "random", "--pruner", "none", "--seed", "1", "--no-progress", *sets(TINY)])
    printed = capsys.readouterr().out
    summary = json.loads((out / "sweep.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["complete"] * 3
    for trial in summary["trials"]:
        run = Path(trial["run_dir"])
        assert run == out / f"trial-{trial['number']:04d}"
        assert (run / "best" / "model.safetensors").is_file()  # an ordinary run folder
        assert read_config(run / "config.yaml").train.lr == trial["params"]["train.lr"]
        assert trial["value"] == min(trial["val_loss_by_step"].values())
    best = summary["best"]
    assert best["value"] == min(t["value"] for t in summary["trials"])
    assert (out / "study.db").is_file() and summary["study"] == "sweep"
    assert f"validation loss {best['value']:.4f}" in printed
    assert all((out / name).stat().st_size > 1000
               for name in ("history.png", "importances.png", "parallel.png"))
    # best.yaml is a recipe `gptkit train` takes, with the best values and the sweep's --set
    recipe = yaml.safe_load((out / "best.yaml").read_text())
    assert recipe["train"]["lr"] == best["params"]["train.lr"]
    assert recipe["model"]["n_embd"] == 32 and recipe["train"]["max_steps"] == 4
    main(["train", "--recipe", str(out / "best.yaml"), "--out", str(tmp_path / "again"),
          "--no-progress"])
    again = read_config(tmp_path / "again" / "config.yaml")
    assert again.train.lr == best["params"]["train.lr"]
    assert again.train.weight_decay == best["params"]["train.weight_decay"]


@pytest.mark.parametrize("pruner", ["median", "halving"])
def test_a_clearly_worse_trial_is_pruned(data_dir, tmp_path, pruner):
    """Two good trials, then one whose learning rate barely moves the weights: either pruner
    stops it at its first evaluation after step 0 (where all trials agree): the median one as
    worse than the median, successive halving as outside the top quarter of its rung."""
    out = tmp_path / "sweep"
    out.mkdir()
    study = optuna.create_study(storage=f"sqlite:///{out / 'study.db'}", study_name="sweep")
    for lr in (1e-2, 8e-3, 1e-7):
        study.enqueue_trial({"train.lr": lr})
    space = write_space(tmp_path, "train.lr: {low: 1.0e-8, high: 1.0e-1, log: true}\n")
    result = run_sweep("shakespeare-char", space, 3, out=out,
                       overrides=[*TINY, "train.max_steps=6"], pruner=pruner)
    summary = json.loads((out / "sweep.json").read_text())
    assert [t["state"] for t in summary["trials"]] == ["complete", "complete", "pruned"]
    pruned = summary["trials"][2]
    assert list(pruned["val_loss_by_step"]) == ["0", "2"]  # stopped there, not at step 6
    metrics = (Path(pruned["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    assert max(json.loads(line)["step"] for line in metrics) == 2
    assert result.finished == 3 and result.best_params == {"train.lr": 1e-2}


def test_the_pruners_offered(data_dir):
    from gptkit.sweep.study import make_pruner

    assert isinstance(make_pruner("median"), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("halving"), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner("none"), optuna.pruners.NopPruner)


def test_an_interrupted_sweep_resumes_and_retries_the_interrupted_values(
        data_dir, tmp_path, monkeypatch):
    import gptkit.train.trainer as trainer

    real, calls = trainer.train, []

    def interrupted_second(*args, **kwargs):  # Ctrl-C during the second trial
        result = real(*args, **kwargs)
        calls.append(args[1])
        result.interrupted = len(calls) == 2
        return result

    monkeypatch.setattr(trainer, "train", interrupted_second)
    out, space = tmp_path / "sweep", write_space(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_sweep("shakespeare-char", space, 2, out=out, overrides=TINY, seed=0, pruner="none")
    monkeypatch.setattr(trainer, "train", real)
    result = run_sweep("shakespeare-char", space, 2, out=out, overrides=TINY, seed=0,
                       pruner="none")
    trials = json.loads((out / "sweep.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["complete", "fail", "complete"]
    assert result.finished == 2
    assert trials[2]["retry_of"] == 1 and trials[2]["params"] == trials[1]["params"]
    assert trials[2]["run_dir"] == str(out / "trial-0002")  # a fresh folder, not trial-0001's
    assert (out / "trial-0001" / "config.yaml").is_file()  # the interrupted one, kept


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_a_killed_workers_trial_is_failed_and_retried_after_its_heartbeat_stops(
        data_dir, tmp_path):
    out, space = tmp_path / "sweep", write_space(tmp_path)
    out.mkdir()
    spec = SweepSpec(recipe="shakespeare-char", space=str(space), trials=2, out=str(out),
                     storage=f"sqlite:///{out / 'study.db'}", study_name="sweep",
                     overrides=TINY, heartbeat_s=5)
    study = load_study(spec, spec.load_space())
    dead = study.ask({"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    study._storage.record_heartbeat(dead._trial_id)  # then its process "dies": its last
    # heartbeat is made a minute old, past the 15 s grace period (3 heartbeats), rather than
    # waited for, so that the live trials' own 15 s hold however slow the machine is
    with sqlite3.connect(out / "study.db") as db:
        db.execute("UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-60 seconds') "
                   "WHERE trial_id = ?", (dead._trial_id,))
    run_sweep("shakespeare-char", space, 2, out=out, overrides=TINY, heartbeat_s=5)
    trials = json.loads((out / "sweep.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["fail", "complete", "complete"]
    assert trials[1]["retry_of"] == 0 and trials[1]["params"] == dead.params


def test_the_grid_sampler_covers_the_grid_once(data_dir, tmp_path, capsys):
    space = write_space(tmp_path, "train.lr: {choices: [1.0e-3, 3.0e-3]}\n"
                                  "train.warmup_steps: {low: 0, high: 2, step: 2}\n")
    result = run_sweep("shakespeare-char", space, 10, out=tmp_path / "grid", overrides=TINY,
                       sampler="grid", pruner="none")
    assert "the grid has 4 points: running 4 trials, not 10" in capsys.readouterr().err
    trials = json.loads((tmp_path / "grid" / "sweep.json").read_text())["trials"]
    seen = {(t["params"]["train.lr"], t["params"]["train.warmup_steps"]) for t in trials}
    assert len(trials) == 4 and seen == {(a, b) for a in (1e-3, 3e-3) for b in (0, 2)}
    assert result.finished == 4


def test_jobs_run_trials_in_worker_processes(data_dir, tmp_path):
    out = tmp_path / "sweep"
    result = run_sweep("shakespeare-char", write_space(tmp_path), 2, out=out, overrides=TINY,
                       jobs=2, seed=0, pruner="none")
    trials = json.loads((out / "sweep.json").read_text())["trials"]
    assert [t["state"] for t in trials] == ["complete", "complete"]
    assert {t["run_dir"] for t in trials} == {str(out / "trial-0000"), str(out / "trial-0001")}
    assert trials[0]["params"] != trials[1]["params"]  # each worker samples its own
    assert result.best_recipe == out / "best.yaml"


def test_trial_folders_of_another_study_are_not_mixed_up(data_dir, tmp_path):
    from gptkit.errors import GptkitError

    out = tmp_path / "sweep"
    (out / "trial-0000").mkdir(parents=True)
    with pytest.raises(GptkitError, match="holds trial-0000, which is no trial of study"):
        run_sweep("shakespeare-char", write_space(tmp_path), 1, out=out, overrides=TINY)


def test_a_study_continues_only_with_its_own_space(data_dir, tmp_path):
    from gptkit.errors import GptkitError

    out = tmp_path / "sweep"
    run_sweep("shakespeare-char", write_space(tmp_path), 1, out=out, overrides=TINY)
    other = write_space(tmp_path, "train.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n")
    with pytest.raises(GptkitError, match="searched train.lr as .* continue it with the same"):
        run_sweep("shakespeare-char", other, 2, out=out, overrides=TINY)
