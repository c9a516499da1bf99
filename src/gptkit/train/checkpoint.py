"""Checkpoints that survive crashes: atomic, checksummed, loaded without unpickling code.

The one checkpoint interface: `save_checkpoint`, `load_checkpoint`, `verify_checkpoint`,
`latest_valid_checkpoint` (and `save_best`), with both formats behind it, the one-file
format here and the sharded (DCP) one in `gptkit.train.sharded`, which knows nothing of
state.json or checksums.

    run/checkpoints/step-000500/{model.safetensors, optimizer.pt, state.json}
    run/checkpoints/step-000500/{sharded/, state.json}    (an FSDP run: gptkit.train.sharded)
    run/best/{model.safetensors, config.json}

A checkpoint is written into a temporary folder next to its final place, its files fsynced,
and then renamed into place, so a crash leaves either the whole checkpoint or an ignored
`.tmp-*` folder. `state.json` holds the caller's resume state plus SHA-256 checksums and sizes
of the other files, and a checksum of itself (`state_sha256`, over its canonical JSON); resume
walks back from the newest checkpoint to the first that verifies.
Weights are safetensors (no pickle); the optimizer state is read with
`torch.load(weights_only=True)` (LESSONS.md, anti-patterns).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptkit.errors import GptkitError
from gptkit.files import fresh_dir, fsync_dir, fsync_file, replace_dir, sha256

if TYPE_CHECKING:
    from torch import Tensor, nn
    from torch.optim import Optimizer

    from gptkit.train.distributed import DistEnv

# torch, numpy and the sharded format are imported where they are used: finding, reading and
# verifying checkpoints (gptkit.rundir, `gptkit compare`) needs none of them

MODEL_FILE = "model.safetensors"  # the weights, in a checkpoint, in best/ and in a classifier run
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"
SHARDED_DIR = "sharded"  # torch.distributed.checkpoint files of a sharded (FSDP) run
SHARDED_INDEX = f"{SHARDED_DIR}/.metadata"  # DCP's index of the shards
CHECKPOINTS_DIR = "checkpoints"
BEST_DIR = "best"
BEST_INFO_FILE = "config.json"
# keys save_checkpoint adds to the caller's state; load_checkpoint takes them out again
STATE_DIGEST = "state_sha256"  # of state.json itself; older checkpoints lack it and still load
_BOOKKEEPING = ("checksums", "sizes", STATE_DIGEST)
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _state_digest(state: dict[str, Any]) -> str:
    """SHA-256 of `state` as canonical JSON (sorted keys, no spaces), less its own digest."""
    rest = {k: v for k, v in state.items() if k != STATE_DIGEST}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# --- checkpoints ------------------------------------------------------------------------------
def _checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR


def _step_of(path: Path) -> int:
    match = _STEP_DIR.match(path.name)
    return int(match.group(1)) if match else -1


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints `step-N`, oldest first; temporary folders are ignored."""
    folder = _checkpoints_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=_step_of)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: Optimizer,
    state: dict[str, Any],
    keep: int,
    sharded_over: DistEnv | None = None,
) -> Path:
    """Write `checkpoints/step-{step:06d}` atomically, then keep only the newest `keep`.

    `state` must be JSON-serialisable. Checkpoints of later steps than this one belong to a
    timeline that was abandoned (resume fell back past them) and are removed, so they can
    never shadow the new ones. A sharded (FSDP) model is written into `sharded/` by every
    process of `sharded_over`, which all call this (`state` is rank 0's); a plain one by the
    one process that calls this.
    """
    import torch

    from gptkit.weights import save_weights

    check_checkpoint_args(state, keep)
    if sharded_over is not None:
        return _save_sharded(Path(run_dir), step, model, optimizer, state, keep, sharded_over)
    tmp, final = checkpoint_paths(run_dir, step, f".tmp-{{name}}-{os.getpid()}")
    save_weights(model, tmp / MODEL_FILE)
    torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
    fsync_file(tmp / OPTIMIZER_FILE)
    return finish_checkpoint(run_dir, tmp, final, [MODEL_FILE, OPTIMIZER_FILE], state, keep)


def _save_sharded(run_dir: Path, step: int, model: nn.Module, optimizer: Optimizer,
                  state: dict[str, Any], keep: int, env: DistEnv) -> Path:
    from gptkit.train import distributed, sharded

    # one name that every rank knows; rank 0 makes the folder
    tmp, final = checkpoint_paths(run_dir, step, ".tmp-{name}-sharded", create=env.is_main)
    distributed.barrier(env)
    sharded.write(tmp / SHARDED_DIR, model, optimizer)
    if env.is_main:
        files = sorted(str(p.relative_to(tmp)) for p in (tmp / SHARDED_DIR).rglob("*")
                       if p.is_file())
        finish_checkpoint(run_dir, tmp, final, files, state, keep)
    distributed.barrier(env)
    return final


def check_checkpoint_args(state: dict[str, Any], keep: int) -> None:
    if keep < 1:
        raise GptkitError(f"train.keep_checkpoints must be >= 1 (got {keep})")
    clash = sorted(set(_BOOKKEEPING) & set(state))
    if clash:
        raise GptkitError(f"checkpoint state may not use the reserved keys {clash}")


def checkpoint_paths(run_dir: Path, step: int, tmp_name: str, create: bool = True
                     ) -> tuple[Path, Path]:
    """(temporary folder, final folder) of the checkpoint of `step`; `tmp_name` with
    `{name}` for the final folder's name. `create`: make the temporary one, fresh."""
    folder = _checkpoints_dir(run_dir)
    final = folder / f"step-{step:06d}"
    tmp = folder / tmp_name.format(name=final.name)
    if create:
        folder.mkdir(parents=True, exist_ok=True)
        fresh_dir(tmp)
    return tmp, final


def finish_checkpoint(run_dir: Path, tmp: Path, final: Path, files: list[str],
                      state: dict[str, Any], keep: int) -> Path:
    """Checksum `files` (paths in `tmp`) into state.json, then move `tmp` into place."""
    for name in files:
        fsync_file(tmp / name)
    record = {
        **state,
        "checksums": {name: sha256(tmp / name) for name in files},
        "sizes": {name: (tmp / name).stat().st_size for name in files},
    }
    record[STATE_DIGEST] = _state_digest(record)
    (tmp / STATE_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
    fsync_file(tmp / STATE_FILE)
    fsync_dir(tmp)
    replace_dir(tmp, final)
    _prune(run_dir, final, keep)
    return final


def is_sharded(path: Path) -> bool:
    """Whether a checkpoint holds torch.distributed.checkpoint shards (an FSDP run's)."""
    return (Path(path) / SHARDED_DIR).is_dir()


def _prune(run_dir: Path, newest: Path, keep: int) -> None:
    """Keep `newest` and the `keep - 1` checkpoints before it; drop leftovers of crashed writes."""
    found = list_checkpoints(run_dir)
    step = _step_of(newest)
    older = [p for p in found if _step_of(p) < step]
    doomed = [p for p in found if _step_of(p) > step] + older[: max(len(older) - (keep - 1), 0)]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    remove_leftovers(run_dir)


def remove_leftovers(run_dir: Path) -> None:
    """Delete what interrupted writes left: `.tmp-*`/`.old-*` folders in checkpoints/, and
    `.tmp-best-*`/`.old-best-*` (`save_best`, `replace_dir`) beside best/. Only the process
    that writes the run may call it, when it is not writing."""
    run_dir = Path(run_dir)
    for folder, prefixes in ((_checkpoints_dir(run_dir), (".tmp-", ".old-")),
                             (run_dir, (".tmp-best-", ".old-best-"))):
        if folder.is_dir():
            for leftover in folder.glob(".*"):
                if leftover.is_dir() and leftover.name.startswith(prefixes):
                    shutil.rmtree(leftover, ignore_errors=True)


def _read_state(path: Path) -> dict[str, Any]:
    """state.json of a checkpoint; GptkitError naming the problem if it cannot be used."""
    file = path / STATE_FILE
    if not file.is_file():
        raise GptkitError(f"{STATE_FILE} is missing")
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise GptkitError(f"{STATE_FILE} is not valid JSON ({exc})") from exc
    if not isinstance(state, dict):
        raise GptkitError(f"{STATE_FILE} is not a JSON object")
    if STATE_DIGEST in state and state[STATE_DIGEST] != _state_digest(state):
        raise GptkitError(f"{STATE_FILE} does not match its checksum {STATE_DIGEST} (the file "
                          "was modified or damaged)")
    return state


StateCheck = Callable[[dict[str, Any], int], str | None]


def verify_checkpoint(path: Path, check_state: StateCheck | None = None) -> str | None:
    """None when the checkpoint is whole, else a short description of what is wrong.

    `check_state(state, step)`: what is wrong with the caller's own keys in state.json (of
    the checkpoint of `step`), or None; e.g. `resume_state_problem`.
    """
    path = Path(path)
    if not path.is_dir():
        return "the folder is missing"
    try:
        state = _read_state(path)
    except GptkitError as exc:
        return str(exc)
    if check_state is not None and (problem := check_state(state, _step_of(path))):
        return f"{STATE_FILE}: {problem}"
    checksums, sizes = state.get("checksums"), state.get("sizes", {})
    weights = SHARDED_INDEX if is_sharded(path) else MODEL_FILE
    if not isinstance(checksums, dict) or weights not in checksums:
        return f"{STATE_FILE} has no checksum for {weights}"
    if not isinstance(sizes, dict):
        sizes = {}
    for name, digest in sorted(checksums.items()):
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        size, expected_size = file.stat().st_size, sizes.get(name)
        if isinstance(expected_size, int) and size != expected_size:
            return f"{name} is truncated or padded ({size} bytes, expected {expected_size})"
        if sha256(file) != digest:
            return f"{name} does not match its checksum (the file was modified or damaged)"
    return None


def latest_valid_checkpoint(run_dir: Path, check_state: StateCheck | None = None
                            ) -> tuple[Path, list[str]]:
    """The newest checkpoint that verifies, and a warning for each newer corrupt one skipped.

    `check_state`: as for `verify_checkpoint`; a checkpoint whose state it rejects is skipped
    like one with a damaged file."""
    found = list_checkpoints(run_dir)
    if not found:
        raise GptkitError(
            f"no checkpoint in {_checkpoints_dir(run_dir)} yet; continue training the run with "
            f"`gptkit train --resume --out {run_dir}`"
        )
    warnings: list[str] = []
    for path in reversed(found):
        problem = verify_checkpoint(path, check_state)
        if problem is None:
            return path, warnings
        warnings.append(f"skipping corrupt checkpoint {path}: {problem}")
    details = "; ".join(f"{p.name}: {verify_checkpoint(p, check_state)}"
                        for p in reversed(found))
    raise GptkitError(
        f"every checkpoint in {_checkpoints_dir(run_dir)} is corrupt ({details}); "
        "train without --resume (with --overwrite) to start over"
    )


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: Optimizer | None = None
) -> dict[str, Any]:
    """Restore weights and optimizer state in place; return the state given to save.

    Does not re-hash the files: pick `path` with `latest_valid_checkpoint`, which does.
    Either kind of checkpoint loads into either kind of model: a sharded (FSDP) one into a
    model sharded over any number of processes, or into a plain one, and the other way round.
    """
    path = Path(path)
    try:
        state = _read_state(path)
    except GptkitError as exc:
        raise GptkitError(f"checkpoint {path}: {exc}") from exc
    from gptkit.train import distributed, sharded

    try:
        if is_sharded(path):
            sharded.load(path / SHARDED_DIR, model, optimizer)
        elif distributed.is_sharded(model):
            sharded.load_full(path / MODEL_FILE, path / OPTIMIZER_FILE, model, optimizer)
        else:
            _load_one_file(path, model, optimizer)
    except GptkitError:
        raise
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GptkitError(
            f"checkpoint {path} does not fit this run's model and optimizer ({first}); resume "
            "with the run's own model and train.optimizer settings"
        ) from exc
    return {k: v for k, v in state.items() if k not in _BOOKKEEPING}


def _load_one_file(path: Path, model: nn.Module, optimizer: Optimizer | None) -> None:
    import torch

    from gptkit.weights import load_weights

    load_weights(model, path / MODEL_FILE)
    if optimizer is None:
        return
    file = path / OPTIMIZER_FILE
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise GptkitError(f"cannot read optimizer state {file} ({exc})") from exc
    try:
        optimizer.load_state_dict(saved)
    except (ValueError, KeyError, TypeError) as exc:
        raise GptkitError(
            f"optimizer state in {file} does not fit this run's optimizer ({exc}); "
            "resume with the run's own train.optimizer and model settings"
        ) from exc


def save_best(
    run_dir: Path, model: nn.Module, info: dict[str, Any],
    extra: Callable[[Path], None] | None = None, state: dict[str, Tensor] | None = None,
) -> None:
    """`best/` = weights with the lowest validation loss so far plus `info`, replaced atomically.

    `extra(folder)` may write more files into the new folder before it replaces the old;
    `state`: the weights gathered from a sharded model, to write instead of its own.
    """
    from gptkit.weights import save_weights

    run_dir = Path(run_dir)
    tmp = fresh_dir(run_dir / f".tmp-best-{os.getpid()}")
    save_weights(model, tmp / MODEL_FILE, state)
    if extra is not None:
        extra(tmp)
    (tmp / BEST_INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
    fsync_file(tmp / BEST_INFO_FILE)
    fsync_dir(tmp)
    replace_dir(tmp, run_dir / BEST_DIR)


# --- the trainer's resume state ---------------------------------------------------------------
def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_rng(value: Any) -> bool:
    """The shape `rng_state` writes; the values themselves `set_rng_state` checks."""
    return (isinstance(value, dict) and isinstance(value.get("python"), list)
            and len(value["python"]) == 3 and isinstance(value.get("numpy"), dict)
            and isinstance(value.get("torch"), str))


def resume_state_problem(state: dict[str, Any], step: int) -> str | None:
    """What is wrong with the trainer's keys in the state.json of checkpoint `step-{step}`
    (Trainer._save_checkpoint writes them, Trainer._restore reads them), or None."""
    required: dict[str, tuple[Callable[[Any], bool], str]] = {
        "step": (lambda v: _is_int(v) and v == step, f"the folder's step {step}"),
        "tokens_seen": (_is_int, "a whole number >= 0"),
        "loader": (lambda v: isinstance(v, dict) and _is_int(v.get("seed"))
                   and _is_int(v.get("position")), "an object with whole-number seed and "
                   "position"),
        "rng": (lambda v: isinstance(v, list) and bool(v) and all(map(_is_rng, v)),
                "a list of random-generator states"),
    }
    optional: dict[str, tuple[Callable[[Any], bool], str]] = {
        "best_val_loss": (lambda v: v is None or _is_number(v), "a number or null"),
        "bad_evals": (_is_int, "a whole number >= 0"),
        "elapsed_s": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "world_size": (lambda v: _is_int(v, 1), "a whole number >= 1"),
        "scaler": (lambda v: isinstance(v, dict), "an object"),
        "schedule": (lambda v: isinstance(v, dict), "an object"),
    }
    for key, (ok, what) in {**required, **optional}.items():
        if key not in state:
            if key in required:
                return f"{key!r} is missing"
        elif not ok(state[key]):
            return f"{key!r} must be {what} (got {json.dumps(state[key])[:40]})"
    return None


# --- random number generators -----------------------------------------------------------------
def _bytes_to_text(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _text_to_byte_tensor(text: str) -> Tensor:
    import torch

    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def rng_state() -> dict[str, Any]:
    """The state of every generator training draws from, as JSON-serialisable values.

    Python `random`, NumPy's global generator, torch on CPU, and torch on the current CUDA
    device when CUDA is in use (each process saves its own device; untouched GPUs stay so).
    """
    import numpy as np
    import torch

    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": {
            "kind": kind,
            "keys": _bytes_to_text(np.asarray(keys, dtype="<u4").tobytes()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": _bytes_to_text(torch.get_rng_state().numpy().tobytes()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = _bytes_to_text(torch.cuda.get_rng_state().numpy().tobytes())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved (CUDA only where saved and available)."""
    import numpy as np
    import torch

    try:
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
        saved = state["numpy"]
        keys = np.frombuffer(base64.b64decode(saved["keys"]), dtype="<u4").astype(np.uint32)
        np.random.set_state(
            (saved["kind"], keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"])
        )
        torch.set_rng_state(_text_to_byte_tensor(state["torch"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(_text_to_byte_tensor(state["cuda"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise GptkitError(
            f"random-generator state in the checkpoint cannot be restored ({exc}); "
            "the checkpoint's state.json is damaged"
        ) from exc
