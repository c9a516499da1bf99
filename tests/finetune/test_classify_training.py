"""Classifiers train in the one training loop: exact resume, checkpoints, early stopping,
TensorBoard, and several processes under torchrun, as every other run."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gptkit.config import read_config
from gptkit.train.objectives.classify import finetune_classifier
from tests.finetune.test_classify import (
    TINY_SETS,
    config,
    ner_rows,
    sentiment_rows,
    write_csv,
    write_jsonl,
)
from tests.test_cli import run_cli
from tests.train.test_metrics import events
from tests.train.test_trainer import records

# 12 steps, evaluated and saved every 6: the decay is fixed at 12 steps, so that a run of 6
# steps followed by `--resume --set train.max_steps=12` follows the same schedule
HALVES = [*TINY_SETS, "train.eval_interval=6", "train.checkpoint_interval=6",
          "train.log_interval=3", "train.decay_steps=12", "train.keep_checkpoints=5",
          "train.lr=0.01"]


@pytest.fixture(scope="module")
def sentiment_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "sentiment.csv", sentiment_rows(200))


@pytest.fixture(scope="module")
def ner_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "ner.jsonl", ner_rows(150))


def classify_cli(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> str:
    code, text, err = run_cli(capsys, "finetune-classify", "--out", str(out), "--no-progress",
                              *args)
    assert code == 0, err
    return text


def sets(*items: str) -> list[str]:
    return [f"--set={item}" for item in items]


@pytest.mark.parametrize(("recipe", "augment"), [("sentiment", "word_swap=0.2"),
                                                 ("ner", "token_dropout=0.1")])
def test_a_classifier_resumes_bit_for_bit(recipe: str, augment: str, sentiment_file: Path,
                                          ner_file: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]):
    """6 steps, then --resume to 12, equal 12 straight steps: weights, optimizer, augmented
    batches, dropout masks (the sentiment recipe has dropout) and every logged number."""
    data = sentiment_file if recipe == "sentiment" else ner_file
    common = ["--recipe", recipe, "--data", str(data),
              *sets(*HALVES, f"data.augment=[{augment}]")]
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    report = classify_cli(capsys, straight, *common, *sets("train.max_steps=12"))
    classify_cli(capsys, halves, *common, *sets("train.max_steps=6"))
    assert sorted(p.name for p in (halves / "checkpoints").iterdir()) == ["step-000006"]
    resumed = classify_cli(capsys, halves, "--resume", *sets("train.max_steps=12"))
    assert "resumed from" in resumed
    tail = lambda text, run: text[text.index("step 12:"):].replace(str(run), "RUN")  # noqa: E731
    assert tail(resumed, halves) == tail(report, straight)
    for name in ("checkpoints/step-000012/model.safetensors", "model.safetensors"):
        a, b = load_file(str(straight / name)), load_file(str(halves / name))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    for kind in ("train", "eval"):
        drop = ("tokens_per_s", "elapsed_s", "mfu")  # clocks
        assert [{k: v for k, v in r.items() if k not in drop} for r in records(straight, kind)] \
            == [{k: v for k, v in r.items() if k not in drop} for r in records(halves, kind)]
    assert (straight / "eval.json").read_text() == (halves / "eval.json").read_text()
    assert read_config(halves / "config.yaml").train.max_steps == 12


def test_a_classifier_saves_checkpoints_and_stops_early(sentiment_file: Path, tmp_path: Path):
    # a huge constant step (clipped: the loss grows, finite) only makes the model worse
    cfg = config(sentiment_file, steps=40,
                 train={"optimizer": "sgd", "lr": 200.0, "min_lr": 200.0, "eval_interval": 2,
                        "checkpoint_interval": 4, "keep_checkpoints": 50,
                        "early_stopping_patience": 2})
    run = tmp_path / "run"
    result = finetune_classifier(cfg, run, progress=False)
    evals = records(run, "eval")
    assert result.steps < 40 and evals[-1]["step"] == result.steps
    best = max(evals, key=lambda r: (r["macro_f1"], -r["loss"]))
    assert result.best_step == best["step"] and result.metrics["macro_f1"] == best["macro_f1"]
    assert [r["step"] for r in evals][-3] == best["step"]  # two evaluations without a better one
    saved = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").iterdir())
    assert saved == sorted({*range(4, result.steps + 1, 4), result.steps})
    state = json.loads((run / "checkpoints" / f"step-{result.steps:06d}" / "state.json")
                       .read_text())
    assert state["bad_evals"] == 2 and state["best_score"] == [best["macro_f1"], -best["loss"]]


def test_a_classifier_logs_to_tensorboard(sentiment_file: Path, tmp_path: Path):
    run = tmp_path / "run"
    finetune_classifier(config(sentiment_file, steps=20, train={"eval_interval": 10,
                                                                "log_interval": 5}),
                        run, progress=False)
    acc = events(run)
    for kind, keys in (("train", ["loss", "lr", "grad_norm"]),
                       ("eval", ["loss", "accuracy", "macro_f1"])):
        rows = records(run, kind)
        for key in keys:
            scalars = acc.Scalars(f"{kind}/{key}")
            assert [s.step for s in scalars] == [r["step"] for r in rows]
            assert [s.value for s in scalars] == pytest.approx([r[key] for r in rows], rel=1e-6)
    assert [r["step"] for r in records(run, "eval")] == [0, 10, 20]
    assert (run / "plots" / "loss.png").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_classifier_trains_in_two_processes_like_in_one(strategy: str, sentiment_file: Path,
                                                          tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]):
    """2 processes of 8 examples a step learn what one process of 16 learns (no dropout)."""
    common = [*TINY_SETS, "model.dropout=0", "train.max_steps=8", "train.eval_interval=4",
              "train.checkpoint_interval=4", "train.precision=fp32"]
    single = tmp_path / "single"
    classify_cli(capsys, single, "--data", str(sentiment_file),
                 *sets(*common, "train.micro_batch_size=16"))
    two = tmp_path / "two"
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
            "-m", "gptkit", "finetune-classify", "--no-progress", "--out", str(two),
            "--data", str(sentiment_file),
            *sets(*common, "train.micro_batch_size=8", f"dist.strategy={strategy}")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("confusion matrix") == 1  # one report, from rank 0
    a, b = load_file(str(single / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:  # padded to other widths, the sums round differently
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    for x, y in zip(records(single, "eval"), records(two, "eval"), strict=True):
        assert x["step"] == y["step"] and x["loss"] == pytest.approx(y["loss"], rel=1e-4)
    assert json.loads((two / "environment.json").read_text())["strategy"] == strategy
    assert (two / "checkpoints" / "step-000008").is_dir() and (two / "labels.json").is_file()
    shutil.rmtree(two / "checkpoints" / "step-000008")  # and its checkpoint resumes in one
    code, _, err = run_cli(capsys, "finetune-classify", "--resume", "--out", str(two),
                           "--no-progress")
    assert code == 0, err
