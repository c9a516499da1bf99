"""The Python API (docs/python-api.md): `from gptkit import train` is the training function
whatever was imported before (Python binds `gptkit.train` to the subpackage when that is first
imported)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
from gptkit import load_config, load_run, train
import gptkit, gptkit.train.trainer
assert callable(train) and gptkit.train is train, type(train)
assert list(__import__("inspect").signature(train).parameters)[:2] == ["cfg", "run_dir"]
assert gptkit.train.trainer.train.__name__ == "train"
"""


@pytest.mark.parametrize("before", ["", "import gptkit.train.trainer",
                                    "from gptkit import load_run",
                                    "import gptkit.train.checkpoint", "import gptkit.cli"])
def test_train_is_callable_whatever_was_imported_first(before):
    done = subprocess.run([sys.executable, "-c", before + "\n" + CHECK], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


def test_the_package_call_trains(monkeypatch, tmp_path):
    import gptkit
    from gptkit.train import trainer

    calls = []
    monkeypatch.setattr(trainer, "train", lambda *a, **k: calls.append((a, k)) or "result")
    assert gptkit.train("cfg", tmp_path, progress=False) == "result"
    assert calls == [(("cfg", tmp_path), {"resume": False, "overwrite": False, "data_dir": None,
                                          "progress": False})]
