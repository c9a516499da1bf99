"""The search space file: what it accepts, and a one-line error for each bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gptkit.errors import GptkitError
from gptkit.sweep.space import Choices, Range, as_text, load_space, space_names

pytest.importorskip("optuna")


def space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, overrides: list[str] | None = None):
    return load_space(space(tmp_path, text), "shakespeare-char", overrides or [])


def test_ranges_and_choices_are_typed(tmp_path):
    parsed = load(tmp_path, """
train.lr: {low: 1e-4, high: 1.0e-2, log: true}
train.warmup_steps: {low: 0, high: 200, step: 50}
train.weight_decay: {low: 0, high: 0.2, step: 0.1}
train.schedule: {choices: [cosine, wsd]}
""")
    lr, warmup, decay, schedule = parsed.params.values()
    assert isinstance(lr, Range) and lr.low == 1e-4 and lr.log and not lr.is_int
    assert warmup.is_int and warmup.points() == [0, 50, 100, 150, 200]
    assert not decay.is_int and decay.points() == [0.0, 0.1, 0.2]
    assert isinstance(schedule, Choices) and schedule.choices == ["cosine", "wsd"]
    with pytest.raises(GptkitError, match="train.lr is a continuous range.*give it a step"):
        parsed.grid()


def test_the_shipped_space_loads_by_name():
    assert "optimizer" in space_names()
    parsed = load_space("optimizer", "shakespeare-char", [])
    assert set(parsed.params) == {"train.lr", "train.warmup_steps", "train.weight_decay"}


def test_values_become_set_text():
    assert [as_text(v) for v in (True, None, 3, 1e-4, "wsd")] == [
        "true", "null", "3", "0.0001", "wsd"]


@pytest.mark.parametrize("text,message", [
    ("train.lrr: {low: 0.1, high: 0.2}", r"unknown setting 'train.lrr' \(did you mean 'lr'\?\)"),
    ("trian.lr: {low: 0.1, high: 0.2}", r"unknown setting 'trian'"),
    ("", r"is empty; name at least one --set key"),
    ("- train.lr", r"must map --set keys to ranges or choices, got list"),
    ("train.lr: 0.1", r"train.lr must be a mapping"),
    ("train.lr: {low: 0.2, high: 0.1}", r"train.lr: low \(0.2\) must be below high \(0.1\)"),
    ("train.lr: {low: 0, high: 0.1, log: true}", r"a log range needs low > 0 \(got 0\)"),
    ("train.lr: {low: 0.001, high: 0.1, log: true, step: 0.001}",
     r"log and step do not go together"),
    ("train.lr: {low: 0.001, high: 0.1, step: -1}", r"step must be > 0"),
    ("train.lr: {lo: 0.001, high: 0.1}", r"train.lr: low: Field required"),
    ("train.lr: {low: .nan, high: 0.1}", r"low and high must be finite"),
    ("train.schedule: {choices: []}", r"train.schedule: choices: List should have at least 1"),
    ("train.schedule: {choices: [cosine, cosine]}", r"choices must differ"),
    ("train.schedule: {choices: [cosine, bogus]}", r"train.schedule=bogus is refused: "),
    ("train.weight_decay: {low: -0.1, high: 0.1}", r"train.weight_decay=-0.1 is refused"),
    ("train.lr: [", r"is not valid YAML"),
])
def test_bad_spaces_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(GptkitError, match=message) as caught:
        load(tmp_path, text)
    assert len(str(caught.value).splitlines()) == 1


def test_values_are_checked_with_the_sweeps_own_settings(tmp_path):
    """A value fine alone but refused next to the sweep's --set (min_lr above the lr)."""
    with pytest.raises(GptkitError, match=r"train.lr=0.0001 is refused: train.min_lr must"):
        load(tmp_path, "train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}",
             ["train.min_lr=0.001", "train.min_lr_ratio=null"])


def test_missing_files_and_unknown_names(tmp_path):
    with pytest.raises(GptkitError, match="sweep space file .*nope.yaml' does not exist"):
        load_space(tmp_path / "nope.yaml", "shakespeare-char", [])
    with pytest.raises(GptkitError, match="unknown sweep space 'nope'; choose one of: optimizer"):
        load_space("nope", "shakespeare-char", [])


def test_cli_bad_space_exits_2_with_one_line(tmp_path, capsys):
    from gptkit.cli import main

    path = space(tmp_path, "train.lrr: {low: 0.1, high: 0.2}")
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--space", str(path), "--trials", "2", "--out", str(tmp_path / "s")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("gptkit: error: ") and "train.lrr" in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()  # nothing made before the space is checked


@pytest.mark.parametrize("argv,message", [
    (["--trials", "0"], "--trials must be >= 1"),
    (["--trials", "2", "--jobs", "0"], "--jobs must be >= 1"),
    (["--trials", "2", "--set", "train.lrr=1"], "unknown setting 'train.lrr'"),
    (["--trials", "2", "--storage", "nosuchdb://x"], "--storage nosuchdb://x is no database"),
])
def test_cli_bad_arguments(tmp_path, capsys, argv, message):
    from gptkit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--space", "optimizer", "--out", str(tmp_path / "s"), *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_without_optuna_the_error_says_how_to_install_it(monkeypatch):
    from gptkit.sweep import run_sweep

    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    with pytest.raises(GptkitError, match=r"pip install 'gptkit\[sweep\]'"):
        run_sweep("shakespeare-char", "optimizer", 2)
