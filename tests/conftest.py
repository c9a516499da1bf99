"""Test-wide settings: real data from ../shared/data, no downloads, a private cache."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"


def pytest_configure(config: pytest.Config) -> None:
    # process-wide (not monkeypatch) so session-scoped fixtures and subprocesses see it too
    os.environ.setdefault("GPTKIT_DATA_DIR", str(DEFAULT_DATA))
    os.environ["GPTKIT_OFFLINE"] = "1"
    os.environ["GPTKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="gptkit-test-cache-")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(os.environ.get("GPTKIT_CACHE_DIR", ""), ignore_errors=True)


@pytest.fixture
def data_dir() -> Path:
    path = Path(os.environ["GPTKIT_DATA_DIR"])
    if not (path / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip(f"reference data not found in {path}; set GPTKIT_DATA_DIR")
    return path


TINY = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
    "train.micro_batch_size=8", "train.max_steps=20", "train.warmup_steps=5",
    "train.eval_interval=10", "train.eval_tokens=2048", "train.checkpoint_interval=10",
    "train.log_interval=5", "sample.max_new_tokens=40", "log.sample_tokens=20",
    "log.plots=false",  # drawn once, by tiny_run: 0.4 s a run adds up over the suite
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A character-level model trained for 20 steps on Tiny Shakespeare (a few seconds)."""
    from gptkit.config import load_config
    from gptkit.train.trainer import train

    path = Path(os.environ["GPTKIT_DATA_DIR"])
    if not (path / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip(f"reference data not found in {path}; set GPTKIT_DATA_DIR")
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    train(load_config("shakespeare-char", [*TINY, "log.plots=true"]), run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="session")
def guard_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sequence classifier (labels `flagged`, `ok`) trained for a few steps on texts that
    do or do not hold "love": a guard for the generation tests (`gptkit.guard`); its scores
    are those of 30 steps, so tests pick thresholds from measured scores."""
    import random

    from gptkit.config import build_config
    from gptkit.train.objectives.classify import finetune_classifier

    rng = random.Random(0)
    words = ["thou", "art", "the", "king", "of", "night", "and", "my", "lord", "speak"]
    rows = []
    for i in range(120):
        text = " ".join(rng.sample(words, 5))
        rows.append({"text": f"{text} love" if i % 2 else text,
                     "label": "flagged" if i % 2 else "ok"})
    folder = tmp_path_factory.mktemp("guard")
    source = folder / "guard.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    cfg = build_config({
        "name": "guard",
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32},
        "data": {"source": str(source), "tokenizer": "bpe", "vocab_size": 300,
                 "val_fraction": 0.2},
        "train": {"max_steps": 30, "micro_batch_size": 16, "lr": 3e-3, "warmup_steps": 5,
                  "eval_interval": 30, "log_interval": 10, "seed": 1},
        "classify": {"task": "sequence"}})
    finetune_classifier(cfg, folder / "run", progress=False)
    return folder / "run"
