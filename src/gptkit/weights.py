"""Model weights as safetensors (no pickle): tied tensors stored once, loaded back tied.

safetensors refuses tensors that share memory, so of each group of tied names only the first
is written and the others are listed in the file's metadata (`gptkit_tied`); loading fills
them again through the model's own tie. Int8 weights have their own layout
(`gptkit.compress.quantize.save_int8`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from gptkit.errors import GptkitError
from gptkit.files import fsync_file


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile and DDP wrappers, so no prefixes reach disk."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            inner = getattr(model, "_orig_mod", None)  # torch.compile's wrapper
            if not isinstance(inner, nn.Module):
                return model
            model = inner


def _storage_key(t: Tensor) -> tuple[Any, ...]:
    """Equal for two state-dict entries that are the same memory (tied weights)."""
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
            tuple(t.stride()), t.dtype)


def _alias_groups(state: dict[str, Tensor]) -> dict[str, list[str]]:
    """name -> every name of the same tensor (itself included), in state-dict order."""
    groups: dict[tuple[Any, ...], list[str]] = {}
    for name, tensor in state.items():
        key = _storage_key(tensor) if tensor.numel() else ("empty", name)
        groups.setdefault(key, []).append(name)
    return {name: names for names in groups.values() for name in names}


def save_weights(model: nn.Module, path: Path, state: dict[str, Tensor] | None = None) -> None:
    """The module's state dict (or `state`, its gathered copy) as safetensors, each tied
    tensor once, under its first name.

    safetensors refuses tensors that share memory, so `lm_head.weight` (the same tensor as
    `transformer.wte.weight`) is dropped here and filled again by the tie on load. The
    dropped names are listed in the file's metadata. Written to a temp name, then renamed.
    """
    if state is None:
        state = _unwrap(model).state_dict()
    aliases = _alias_groups(state)
    tensors: dict[str, Tensor] = {}
    tied: dict[str, str] = {}
    for name, tensor in state.items():
        first = aliases[name][0]
        if first != name:
            tied[name] = first
            continue
        tensors[name] = tensor.detach().to("cpu").contiguous()
    # distinct tensors may still be views of one buffer on CPU; give those their own memory
    seen: set[int] = set()
    for name, tensor in tensors.items():
        ptr = tensor.untyped_storage().data_ptr()
        if tensor.numel() and ptr in seen:
            tensors[name] = tensor.clone()
        seen.add(ptr)
    metadata = {"format": "pt", "gptkit_tied": json.dumps(tied)}
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    fsync_file(tmp)
    os.replace(tmp, path)


def load_weights(model: nn.Module, path: Path) -> None:
    """Copy safetensors weights into `model` in place (ties stay tied); GptkitError on a misfit.

    A name missing from the file is fine only when the model ties it to a name that is present.
    """
    path = Path(path)
    if not path.is_file():
        raise GptkitError(f"weights file {path} not found")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise GptkitError(f"cannot read weights {path} ({exc}); the file is damaged") from exc
    module = _unwrap(model)
    expected = module.state_dict()
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise GptkitError(
            f"{path} holds weights this model does not have: {', '.join(unexpected[:5])}; "
            "do the weights come from another kind of model?"
        )
    aliases = _alias_groups(expected)
    missing = [n for n in expected if n not in tensors
               and not any(a in tensors for a in aliases[n])]
    if missing:
        raise GptkitError(f"{path} lacks weights for: {', '.join(missing[:5])}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise GptkitError(
                f"{path}: {name} has shape {tuple(tensor.shape)} but the model expects "
                f"{tuple(expected[name].shape)}; the model config does not match these weights"
            )
    module.load_state_dict(tensors, strict=False)
