"""`gptkit eval` scores a checkpoint exactly as the evaluation during training did (one device
and precision policy, gptkit.device): same weights, same windows, same autocast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptkit.cli import main
from gptkit.config import load_config
from gptkit.train.trainer import train
from tests.conftest import TINY


def logged_and_evaluated(tmp_path: Path, capsys: pytest.CaptureFixture[str], precision: str,
                         data_dir: Path) -> tuple[float, float]:
    # train.eval_tokens unset: the in-training evaluation covers the whole val split
    cfg = load_config("shakespeare-char", [*TINY, "train.eval_tokens=null", "train.max_steps=10",
                                           f"train.precision={precision}", "train.device=cpu"])
    assert cfg.train.eval_tokens is None
    run = tmp_path / precision
    train(cfg, run, progress=False, data_dir=data_dir)
    logged = json.loads((run / "best" / "config.json").read_text())["val_loss"]
    capsys.readouterr()  # what training printed
    main(["eval", str(run), "--split", cfg.data.eval_split, "--stride",
          str(cfg.model.block_size), "--device", "cpu", "--json", "--no-progress",
          "--data-dir", str(data_dir)])
    return logged, json.loads(capsys.readouterr().out)["loss"]


def test_eval_reproduces_the_logged_val_loss_in_fp32(tmp_path, capsys, data_dir):
    logged, evaluated = logged_and_evaluated(tmp_path, capsys, "fp32", data_dir)
    assert evaluated == pytest.approx(logged, abs=1e-6)


def test_eval_reproduces_the_logged_val_loss_under_bf16_autocast(tmp_path, capsys, data_dir):
    """train.precision=bf16 autocasts on any CPU (AVX512-BF16 only makes it fast)."""
    logged, evaluated = logged_and_evaluated(tmp_path, capsys, "bf16", data_dir)
    assert evaluated == pytest.approx(logged, abs=1e-6)
    # and --precision fp32 scores the same weights without autocast: a different number
    run = tmp_path / "bf16"
    main(["eval", str(run), "--split", "val", "--precision", "fp32", "--device", "cpu",
          "--json", "--no-progress", "--data-dir", str(data_dir)])
    fp32 = json.loads(capsys.readouterr().out)["loss"]
    assert fp32 != pytest.approx(logged, abs=1e-6)
    assert fp32 == pytest.approx(logged, abs=0.05)
