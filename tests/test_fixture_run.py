"""A run written by gptkit before issue 18's restructuring still loads, samples, evaluates and
resumes: tests/fixtures/run-v0 was trained with that code (1 layer, 16 wide, 6 steps) and is
kept as it was written, so a change to the run-folder layout or a file format fails here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gptkit.cli import main
from gptkit.config import apply_overrides, build_config, read_config
from gptkit.generation.sampling import generate
from gptkit.run import load_run
from gptkit.train.trainer import train
from tests.generation_opts import opts

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run-v0"


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    copy = tmp_path / "run-v0"
    shutil.copytree(FIXTURE, copy)
    return copy


def test_old_run_loads_best_and_last_and_samples(old_run):
    best = load_run(old_run)
    last = load_run(old_run, which="last")
    assert best.weights == old_run / "best" / "model.safetensors"
    assert last.weights == old_run / "checkpoints" / "step-000006" / "model.safetensors"
    for a, b in zip(best.model.parameters(), last.model.parameters(), strict=True):
        assert torch.equal(a, b)  # the best model is the last step's (the loss only fell)
    out = generate(best.model, torch.tensor([[1, 2, 3]]), opts(max_new_tokens=5, temperature=0.0))
    assert out.shape == (1, 8)


def test_old_run_evaluates_to_its_logged_loss(old_run, capsys, data_dir):
    main(["eval", str(old_run), "--split", "val", "--json", "--no-progress",
          "--data-dir", str(data_dir)])
    result = json.loads(capsys.readouterr().out)
    assert result["split"] == "val" and result["tokens"] > 0
    best = json.loads((old_run / "best" / "config.json").read_text())
    # training scored a subset of the split (train.eval_tokens=512): close, not equal
    assert result["loss"] == pytest.approx(best["val_loss"], abs=0.05)


def test_old_run_resumes(old_run, data_dir):
    saved = read_config(old_run / "config.yaml").model_dump()
    cfg = build_config(apply_overrides(saved, ["train.max_steps=9"]))
    result = train(cfg, old_run, resume=True, progress=False, data_dir=data_dir)
    assert result.step == 9
    records = [json.loads(line) for line in (old_run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) == 9
    assert (old_run / "checkpoints" / "step-000009" / "state.json").is_file()
