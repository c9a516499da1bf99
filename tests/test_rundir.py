"""gptkit.rundir: a run folder's kinds, which weights `which` means, and clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gptkit.errors import GptkitError
from gptkit.run import load_run
from gptkit.rundir import RunDir

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run-v0"


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "run"))


def test_language_model_run(run):
    rundir = RunDir(run).check()
    assert rundir.kind == "language model" and not rundir.is_classifier
    assert rundir.traits() == ["language model"]
    assert rundir.weights("best") == run / "best" / "model.safetensors"
    assert rundir.weights("last") == run / "checkpoints" / "step-000006" / "model.safetensors"
    assert rundir.is_checkpoint(rundir.weights("last"))
    assert not rundir.is_checkpoint(rundir.weights("best"))
    assert rundir.best_info()["step"] == 6 and rundir.data()["splits"]
    assert rundir.quantization is None and rundir.pruned is None


def test_fallbacks_between_best_and_checkpoints(run):
    shutil.rmtree(run / "checkpoints")  # an imported run: best/ only
    assert RunDir(run).weights("last") == run / "best" / "model.safetensors"
    shutil.copytree(FIXTURE / "checkpoints", run / "checkpoints")
    shutil.rmtree(run / "best")  # early in training: no best model yet
    assert RunDir(run).weights("best").parent.name == "step-000006"


def test_int8_pruned_and_classifier_kinds(run):
    info = json.loads((run / "best" / "config.json").read_text())
    (run / "best" / "config.json").write_text(json.dumps(
        {**info, "quantization": "int8", "pruned": {"method": "heads"}}))
    assert RunDir(run).traits() == ["language model", "int8", "pruned"]
    (run / "labels.json").write_text(json.dumps({"task": "sequence", "labels": ["a", "b"]}))
    assert RunDir(run).kind == "classifier"


def test_unknown_quantization_says_update(run):
    (run / "best" / "config.json").write_text(json.dumps({"quantization": "int2"}))
    with pytest.raises(GptkitError, match="quantization 'int2'.*update gptkit"):
        RunDir(run).quantization  # noqa: B018


@pytest.mark.parametrize("remove, message", [
    (None, "does not exist"), ("config.yaml", "config.yaml is missing"),
    ("tokenizer.json", "tokenizer.json is missing")])
def test_missing_or_incomplete_folder(run, tmp_path, remove, message):
    path = tmp_path / "nothing" if remove is None else run
    if remove:
        (run / remove).unlink()
    with pytest.raises(GptkitError, match=message):
        RunDir(path).check()
    with pytest.raises(GptkitError, match=message):
        load_run(path)


def test_bad_which(run):
    with pytest.raises(GptkitError, match="must be best or last"):
        RunDir(run).weights("first")


def test_classifier_run_without_weights(run):
    (run / "labels.json").write_text(json.dumps({"task": "sequence", "labels": ["a", "b"]}))
    shutil.rmtree(run / "best")
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(GptkitError, match="model.safetensors is missing"):
        RunDir(run).weights("best")


def test_a_language_model_run_has_no_classifier(run):
    loaded = load_run(run)
    assert loaded.classifier is None and loaded.model is loaded.lm
