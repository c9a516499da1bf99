"""Test-wide settings: real data from ../shared/data, no downloads, a private cache."""

from __future__ import annotations

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
