"""Nothing in a run folder runs code: a planted pickle in a sharded (DCP) checkpoint, whose
checksums the planter wrote into state.json, is refused by every command that can open it."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict

from gptkit.config import read_config
from gptkit.run import load_run
from gptkit.train import checkpoint, sharded
from gptkit.train.optim import build_optimizer
from tests.test_cli import run_cli

LAST = "step-000020"  # tiny_run's last checkpoint


class Payload:
    """Unpickling this creates the file `marker` (any code could run instead)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def model_and_optimizer(run: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer, dict]:
    """tiny_run's last checkpoint: its model, optimizer and resume state."""
    model = load_run(run, which="last").model.train()
    optimizer = build_optimizer(model, read_config(run / "config.yaml").train, "cpu")
    state = checkpoint.load_checkpoint(run / "checkpoints" / LAST, model, optimizer)
    return model, optimizer, state


def sharded_run(tiny_run: Path, out: Path, plant: str | None = None,
                marker: Path | None = None) -> Path:
    """A copy of tiny_run whose only weights are a sharded checkpoint written by DCP, and no
    best/ (so `sample` and `eval` open the checkpoint); `plant`: where to hide a Payload."""
    shutil.copytree(tiny_run, out)
    shutil.rmtree(out / "best")
    shutil.rmtree(out / "checkpoints")
    model, optimizer, state = model_and_optimizer(tiny_run)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    for name in sharded.tied_names(model):
        model_state.pop(name)
    if plant == "item":  # a non-tensor item: DCP would torch.load it with weights_only=False
        model_state["transformer.wte.weight"] = Payload(marker)  # type: ignore[arg-type]
    tmp, final = checkpoint.checkpoint_paths(out, 20, ".tmp-{name}-planted")
    files = tmp / checkpoint.SHARDED_DIR
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=files)
    if plant == "metadata":  # hidden inside real metadata, so every part of it is unpickled
        index = files / ".metadata"
        metadata = pickle.loads(index.read_bytes())  # our own file, just written
        metadata.planner_data["note"] = Payload(marker)
        index.write_bytes(pickle.dumps(metadata))
    names = sorted(str(p.relative_to(tmp)) for p in files.rglob("*") if p.is_file())
    checkpoint.finish_checkpoint(out, tmp, final, names, state, keep=3)  # checksums that pass
    assert checkpoint.verify_checkpoint(final) is None
    return out


COMMANDS = {
    "sample": ["sample", "{run}", "--max-new-tokens", "4"],
    "sample --checkpoint last": ["sample", "{run}", "--checkpoint", "last",
                                 "--max-new-tokens", "4"],
    "eval": ["eval", "{run}"],
    "export": ["export", "{run}", "--out", "{tmp}/export"],
    "serve": ["serve", "{run}", "--port", "1"],
    "train --resume": ["train", "--resume", "--out", "{run}", "--no-progress"],
}


@pytest.mark.parametrize("plant", ["metadata", "item"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_planted_pickle_never_runs_and_is_refused(tiny_run, tmp_path, capsys, monkeypatch,
                                                    command, plant):
    from gptkit.serve import server

    monkeypatch.setattr(server, "serve", lambda *args, **kwargs: None)  # if a model loaded
    marker = tmp_path / "pwned"
    run = sharded_run(tiny_run, tmp_path / "run", plant, marker)
    argv = [a.format(run=run, tmp=tmp_path) for a in COMMANDS[command]]
    code, out, err = run_cli(capsys, *argv)
    assert not marker.exists()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gptkit: error: "), err
    assert "not a valid sharded checkpoint" in lines[0]
    assert "refuses to load class io.open" in lines[0] or "builtins.open" in lines[0]
    assert not (tmp_path / "export").exists()


def test_info_never_opens_the_checkpoint(tiny_run, tmp_path, capsys):
    """`info` reads config, tokenizer and JSON files only: the planted pickle stays inert."""
    marker = tmp_path / "pwned"
    run = sharded_run(tiny_run, tmp_path / "run", "metadata", marker)
    code, out, err = run_cli(capsys, "info", str(run))
    assert code == 0, err
    assert str(run) in out
    assert not marker.exists()


def test_a_whole_metadata_file_of_code_is_refused(tiny_run, tmp_path):
    marker = tmp_path / "pwned"
    run = sharded_run(tiny_run, tmp_path / "run")
    index = run / "checkpoints" / LAST / checkpoint.SHARDED_INDEX
    index.write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(checkpoint.GptkitError, match="refuses to load class io.open"):
        sharded.read_metadata(index)
    assert not marker.exists()


def test_metadata_naming_files_outside_its_folder_is_refused(tiny_run, tmp_path):
    run = sharded_run(tiny_run, tmp_path / "run")
    index = run / "checkpoints" / LAST / checkpoint.SHARDED_INDEX
    metadata = pickle.loads(index.read_bytes())
    info = next(iter(metadata.storage_data.values()))
    info.relative_path = "../../../config.yaml"
    index.write_bytes(pickle.dumps(metadata))
    with pytest.raises(checkpoint.GptkitError, match="outside its folder"):
        sharded.read_metadata(index)


def test_real_metadata_is_made_of_the_admitted_classes_only(tiny_run, tmp_path):
    """Every class a DCP .metadata of this torch holds is in the unpickler's list."""
    run = sharded_run(tiny_run, tmp_path / "run")
    index = run / "checkpoints" / LAST / checkpoint.SHARDED_INDEX
    found: set[tuple[str, str]] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            found.add((module, name))
            return super().find_class(module, name)

    with index.open("rb") as f:
        Recorder(f).load()
    dtypes = {("torch", name) for name in dir(torch) if isinstance(getattr(torch, name),
                                                                   torch.dtype)}
    assert found and found <= sharded._METADATA_CLASSES | dtypes, found
    assert ("torch.distributed.checkpoint.metadata", "Metadata") in found
    metadata = sharded.read_metadata(index)
    assert metadata.state_dict_metadata.keys() == pickle.loads(index.read_bytes()
                                                               ).state_dict_metadata.keys()


def test_a_real_sharded_checkpoint_still_loads_exactly(tiny_run, tmp_path):
    """Weights and optimizer state (tensors and the plain settings DCP keeps as bytes)."""
    run = sharded_run(tiny_run, tmp_path / "run")
    model, optimizer, state = model_and_optimizer(tiny_run)
    fresh = load_run(tiny_run).model.train()  # best/, not the last step's weights
    fresh_optimizer = build_optimizer(fresh, read_config(run / "config.yaml").train, "cpu")
    loaded = checkpoint.load_checkpoint(run / "checkpoints" / LAST, fresh, fresh_optimizer)
    assert loaded == state
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    assert json.dumps(optimizer.state_dict()["param_groups"]) == json.dumps(
        fresh_optimizer.state_dict()["param_groups"])
    for key, value in optimizer.state_dict()["state"].items():
        for part, tensor in value.items():
            assert torch.equal(tensor, fresh_optimizer.state_dict()["state"][key][part])
    assert load_run(run, which="last").weights.name == checkpoint.SHARDED_DIR
