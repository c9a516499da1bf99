"""Checkpoints of sharded (FSDP) runs, through PyTorch's `torch.distributed.checkpoint` (DCP).

Every rank writes its own shards into `step-N/sharded/`, and DCP records where each slice of
each tensor lives, so a checkpoint reloads into any number of processes (2 -> 1, 2 -> 4) and
into a plain model: the tensors are addressed by parameter name, not by rank. State.json,
checksums and the atomic rename are the same as for a one-file checkpoint: this module only
reads and writes the shards, `gptkit.train.checkpoint` (the one checkpoint interface) does
the rest. A multi-node run must write to a folder every node sees.

DCP itself unpickles `.metadata` and every non-tensor item (`torch.load(weights_only=False)`),
so a planted file would run code: checksums do not help, since whoever plants the file can
write its checksum too. Reading goes through `SafeReader` and `SafePlanner` instead: metadata
through an unpickler that builds only DCP's own metadata classes, other items as
`weights_only` pickles; tensors DCP already reads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.optim import Optimizer

from gptkit.errors import GptkitError

METADATA_FILE = ".metadata"  # DCP's index of where each slice of each tensor lives

# Every class a DCP `.metadata` file is made of (torch 2.13, checked by saving one in
# tests/train/test_safe_load.py): DCP's metadata dataclasses and its memory-format enum, the
# filesystem writer's per-item storage record, torch.Size, dtypes and layouts (by name), and the
# path of the folder it was written to. Nothing here runs code when built from a pickle: the
# constructors only store their arguments, and `_get_layout` looks a name up in a table.
_DCP = "torch.distributed.checkpoint"
_METADATA_CLASSES = {
    *((f"{_DCP}.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")),
    (f"{_DCP}.filesystem", "_StorageInfo"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Builds DCP metadata and nothing else: any other class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        value = getattr(torch, name, None) if module == "torch" else None
        if (module, name) in _METADATA_CLASSES or isinstance(
                value, (torch.dtype, torch.layout, torch.memory_format)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refuses to load class {module}.{name}")


def _reason(exc: BaseException) -> str:
    """One line out of an unpickler's error (torch's weights-only one spans ten)."""
    text = str(exc)
    if found := re.search(r"GLOBAL ([\w.]+)", text):
        return f"refuses to load class {found.group(1)}"
    if found := re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text):
        return f"it is damaged ({found.group(1).strip()})"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _refused(where: Path | str, reason: str) -> GptkitError:
    return GptkitError(
        f"{where} is not a valid sharded checkpoint: {reason}; gptkit reads only tensors and "
        "DCP metadata from it, never pickled code (is the run from a source you trust?)"
    )


def read_metadata(file: Path) -> Metadata:
    """A DCP `.metadata` file, unpickled by `_MetadataUnpickler`; GptkitError if refused."""
    try:
        with open(file, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except OSError as exc:
        raise GptkitError(f"cannot read {file} ({exc})") from exc
    except Exception as exc:  # a damaged pickle raises nearly anything
        raise _refused(file, _reason(exc)) from exc
    if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data, dict):
        raise _refused(file, f"it holds a {type(metadata).__name__}, not DCP Metadata")
    for info in metadata.storage_data.values():  # data files sit beside .metadata
        relative = getattr(info, "relative_path", None)
        if not isinstance(relative, str) or os.path.basename(relative) != relative or \
                relative in ("", ".", ".."):
            raise _refused(file, f"it names a data file outside its folder: {relative!r}")
    return metadata


class SafeReader(FileSystemReader):
    """DCP's file reader with `read_metadata` that cannot run code (`_MetadataUnpickler`)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")  # set when DCP looks for one rank's own metadata
        name = ".metadata" if rank is None else f"__{rank}.metadata"
        metadata = read_metadata(Path(os.fspath(self.path)) / name)
        if metadata.storage_meta is None:  # as FileSystemReader.read_metadata does
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafePlanner(DefaultLoadPlanner):
    """DCP's load planner, reading non-tensor items (optimizer settings) as `weights_only`
    pickles: plain numbers, strings, lists, tuples and dicts; anything else is refused."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        try:
            item = torch.load(value, weights_only=True)
        except Exception as exc:  # the weights-only unpickler's refusal, or a damaged item
            raise pickle.UnpicklingError(f"item {fqn}: {_reason(exc)}") from exc
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], item)
        else:
            self.state_dict[fqn] = item


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


def write(folder: Path, model: nn.Module, optimizer: Optimizer) -> None:
    """Every rank's shards of `model` and `optimizer` into `folder` (DCP); every rank calls it.

    `gptkit.train.checkpoint.save_checkpoint` wraps this in the checkpoint's state.json,
    checksums and atomic rename."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    for name in tied_names(model):  # the same tensor as another name: written once
        model_state.pop(name, None)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=folder)


def load(files: Path, model: nn.Module, optimizer: Optimizer | None) -> None:
    """The shards in `files` (a checkpoint's `sharded/`) into `model`, sharded or not."""
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
    # refused here with its own message: DCP would swallow the error and try other files
    read_metadata(files / METADATA_FILE)
    try:
        dcp.load(wanted, storage_reader=SafeReader(files), planner=SafePlanner())
    except CheckpointException as exc:  # DCP wraps every rank's error in this BaseException
        errors = [error for error, _ in exc.failures.values()]
        refused = next((e for e in errors if isinstance(e, pickle.UnpicklingError)), None)
        if refused is not None:  # SafePlanner's refusal, or a tensor's (DCP's weights_only)
            raise _refused(files, _reason(refused)) from None
        raise RuntimeError(str(errors[0]) if errors else str(exc)) from None
    for name, first in tied.items():
        wanted["model"][name] = wanted["model"][first]
    if optimizer is None:
        set_model_state_dict(model, wanted["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=wanted["model"],
                       optim_state_dict=wanted["optimizer"])


def load_full(weights: Path, optimizer_file: Path, model: nn.Module,
              optimizer: Optimizer | None) -> None:
    """A one-file checkpoint (one process or DDP) into a sharded model: every rank reads the
    whole files and keeps its shards. The optimizer file numbers parameters in the order of
    the optimizer's groups; the sharded optimizer has the same order, so the numbers become
    parameter names."""
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
    file = optimizer_file
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
