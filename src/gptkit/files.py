"""Files and folders that a crash leaves either whole or absent: atomic folder replacement,
fsync, checksums, and the checks before an output folder is replaced.

Everything gptkit writes to a run or an export goes through here, so the same rules hold for
checkpoints, `best/`, exports, pruned and quantized runs: built aside in a `.tmp-*` sibling,
fsynced, renamed into place; an existing folder is replaced only with `overwrite` and only
when it is of the kind being written (it holds `marker`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gptkit.errors import GptkitError


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename durable; directories cannot be opened for syncing on Windows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_dir(src: Path, dst: Path) -> None:
    """Move folder `src` to `dst`, replacing a `dst` that exists (rename cannot do that)."""
    if dst.exists():
        aside = dst.with_name(f".old-{dst.name}-{os.getpid()}")
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(dst, aside)
        os.replace(src, dst)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(src, dst)
    fsync_dir(dst.parent)


@contextmanager
def new_folder(out: Path, *, overwrite: bool, marker: str, what: str) -> Iterator[Path]:
    """A temporary sibling of `out` to fill; renamed to `out` only if the block succeeds.

    An existing non-empty `out` is replaced only with `overwrite`, and only when it holds
    `marker` (so that a typo cannot replace an unrelated folder).
    """
    out = out.resolve()
    check_target(out, overwrite=overwrite, marker=marker, what=what)
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_target(out: Path, *, overwrite: bool, marker: str, what: str) -> None:
    if out.exists() and not out.is_dir():
        raise GptkitError(f"{out} exists and is not a folder; choose another --out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise GptkitError(f"{out} already exists; use --overwrite to replace it, or another --out")
    if not (out / marker).is_file():
        raise GptkitError(
            f"refusing to overwrite {out}: it is not a {what} (no {marker}); choose another --out"
        )


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
