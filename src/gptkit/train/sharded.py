"""Checkpoints of sharded (FSDP) runs, through PyTorch's `torch.distributed.checkpoint` (DCP).

Every rank writes its own shards into `step-N/sharded/`, and DCP records where each slice of
each tensor lives, so a checkpoint reloads into any number of processes (2 -> 1, 2 -> 4) and
into a plain model: the tensors are addressed by parameter name, not by rank. State.json,
checksums and the atomic rename are the same as for a one-file checkpoint
(`gptkit.train.checkpoint`). A multi-node run must write to a folder every node sees.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.optim import Optimizer

from gptkit.errors import GptkitError
from gptkit.train import checkpoint, distributed
from gptkit.train.distributed import DistEnv


def tied_names(model: nn.Module) -> dict[str, str]:
    """name -> the first name of the same parameter, for parameters that have several."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            tied[name] = first[id(param)]
        else:
            first[id(param)] = name
    return tied


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The whole model's weights on rank 0's CPU (empty on the other ranks); every rank must
    call it, since the shards are gathered. Tied weights are one tensor again, as in the
    unsharded model, so `save_weights` writes them once."""
    state: dict[str, Any] = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if state:
        for name, first in tied_names(model).items():
            state[name] = state[first]
    return state


def save_sharded_checkpoint(
    run_dir: Path, step: int, model: nn.Module, optimizer: Optimizer, state: dict[str, Any],
    keep: int, env: DistEnv,
) -> Path:
    """`checkpoints/step-N` of a sharded model, written by every rank; `state` is rank 0's."""
    checkpoint.check_checkpoint_args(state, keep)
    # one name that every rank knows; rank 0 makes the folder
    tmp, final = checkpoint.checkpoint_paths(run_dir, step, ".tmp-{name}-sharded",
                                             create=env.is_main)
    distributed.barrier(env)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    for name in tied_names(model):  # the same tensor as another name: written once
        model_state.pop(name, None)
    dcp.save({"model": model_state, "optimizer": optimizer_state},
             checkpoint_id=tmp / checkpoint.SHARDED_DIR)
    if env.is_main:
        files = sorted(str(p.relative_to(tmp)) for p in (tmp / checkpoint.SHARDED_DIR).rglob("*")
                       if p.is_file())
        checkpoint.finish_checkpoint(Path(run_dir), tmp, final, files, state, keep)
    distributed.barrier(env)
    return final


def load(path: Path, model: nn.Module, optimizer: Optimizer | None) -> None:
    """Weights (and optimizer state) of checkpoint `path` into `model`, sharded or not."""
    try:
        if checkpoint.is_sharded(path):
            _load_sharded(path, model, optimizer)
        else:
            _load_full_into_sharded(path, model, optimizer)
    except GptkitError:
        raise
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GptkitError(
            f"checkpoint {path} does not fit this run's model and optimizer ({first}); resume "
            "with the run's own model and train.optimizer settings"
        ) from exc


def _load_sharded(path: Path, model: nn.Module, optimizer: Optimizer | None) -> None:
    files = Path(path) / checkpoint.SHARDED_DIR
    with warnings.catch_warnings():  # one process reading shards is what we mean to do
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        _read_shards(files, model, optimizer)


def _read_shards(files: Path, model: nn.Module, optimizer: Optimizer | None) -> None:
    if optimizer is None:
        wanted: dict[str, Any] = {"model": get_model_state_dict(model)}
    else:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        wanted = {"model": model_state, "optimizer": optimizer_state}
    tied = tied_names(model)
    for name in tied:
        wanted["model"].pop(name, None)
    dcp.load(wanted, checkpoint_id=files)
    for name, first in tied.items():
        wanted["model"][name] = wanted["model"][first]
    if optimizer is None:
        set_model_state_dict(model, wanted["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=wanted["model"],
                       optim_state_dict=wanted["optimizer"])


def _load_full_into_sharded(path: Path, model: nn.Module, optimizer: Optimizer | None) -> None:
    """A one-file checkpoint (one process or DDP) into a sharded model: every rank reads the
    whole files and keeps its shards. The optimizer file numbers parameters in the order of
    the optimizer's groups; the sharded optimizer has the same order, so the numbers become
    parameter names."""
    weights = Path(path) / checkpoint.MODEL_FILE
    try:
        tensors: dict[str, Any] = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise GptkitError(f"cannot read weights {weights} ({exc}); the file is damaged") from exc
    for name, first in tied_names(model).items():
        if name not in tensors and first in tensors:
            tensors[name] = tensors[first]
    options = StateDictOptions(full_state_dict=True)
    if optimizer is None:
        set_model_state_dict(model, tensors, options=options)
        return
    file = Path(path) / checkpoint.OPTIMIZER_FILE
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise GptkitError(f"cannot read optimizer state {file} ({exc})") from exc
    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name: dict[str, Any] = {
        "state": {order[int(i)]: value for i, value in saved["state"].items()},
        "param_groups": [
            {**group, "params": [order[int(i)] for i in group["params"]]}
            for group in saved["param_groups"]
        ],
    }
    set_state_dict(model, optimizer, model_state_dict=tensors, optim_state_dict=by_name,
                   options=options)
