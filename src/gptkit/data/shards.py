"""A split's token ids as shard files of bounded size, read as if they were one array.

`prepare` writes `<split>-00000.bin`, `<split>-00001.bin`, ... (raw ids, at most
`data.shard_tokens` each) so that no file, and no step of writing one, needs the whole corpus.
`TokenShards` memory-maps them and answers `len`, integer, slice and integer-array indexing
like the 1-D array they concatenate to, so the loader and evaluation read a sharded split
exactly as they read one file: the same seed gives the same batches whatever the shard size.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias

import numpy as np

from gptkit.errors import GptkitError


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.bin"


class TokenShards:
    """The concatenation of shard files, memory-mapped lazily, read-only, as a 1-D array."""

    ndim = 1

    def __init__(self, files: list[Path], counts: list[int], dtype: np.dtype) -> None:
        if len(files) != len(counts):
            raise ValueError("one token count per shard file")
        self.files = files
        self.dtype = np.dtype(dtype)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.ends = np.cumsum(self.counts)  # shard i holds ids [ends[i] - counts[i], ends[i])
        self.starts = self.ends - self.counts
        self._maps: list[np.memmap | None] = [None] * len(files)

    def _map(self, i: int) -> np.ndarray:
        mm = self._maps[i]
        if mm is None:
            path = self.files[i]
            size = path.stat().st_size if path.is_file() else -1
            if size != int(self.counts[i]) * self.dtype.itemsize:
                raise GptkitError(
                    f"token shard {path} is missing or has {size} bytes, not the "
                    f"{int(self.counts[i]) * self.dtype.itemsize} its meta.json lists; delete "
                    f"{path.parent} and prepare the data again"
                )
            mm = self._maps[i] = np.memmap(path, dtype=self.dtype, mode="r")
        return mm

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    @property
    def size(self) -> int:
        return len(self)

    def _shard_of(self, index: int) -> int:
        return int(np.searchsorted(self.ends, index, side="right"))

    def __getitem__(self, key: Any) -> Any:
        n = len(self)
        if isinstance(key, (int, np.integer)):
            i = int(key) + n if key < 0 else int(key)
            if not 0 <= i < n:
                raise IndexError(f"index {int(key)} is out of bounds for {n} tokens")
            s = self._shard_of(i)
            return self._map(s)[i - self.starts[s]]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return self._gather(np.arange(start, stop, step, dtype=np.int64))
            return self._range(start, max(start, stop))
        return self._gather(np.asarray(key))

    def _range(self, start: int, stop: int) -> np.ndarray:
        """ids[start:stop] (0 <= start <= stop <= len): a view inside one shard, else a copy."""
        if start == stop:
            return np.zeros(0, self.dtype)
        first, last = self._shard_of(start), self._shard_of(stop - 1)
        if first == last:
            offset = int(self.starts[first])
            return self._map(first)[start - offset : stop - offset]
        parts = []
        for s in range(first, last + 1):
            offset = int(self.starts[s])
            parts.append(self._map(s)[max(start, offset) - offset : min(stop, int(self.ends[s]))
                                      - offset])
        return np.concatenate(parts)

    def _gather(self, index: np.ndarray) -> np.ndarray:
        """ids at any integer array of positions, in its shape (NumPy's fancy indexing)."""
        if index.dtype.kind not in "iu":
            raise IndexError(f"token positions must be integers, got {index.dtype}")
        n = len(self)
        flat = index.astype(np.int64, copy=False).ravel()
        if flat.size and flat.min() < 0:
            flat = np.where(flat < 0, flat + n, flat)
        if flat.size and (flat.min() < 0 or flat.max() >= n):
            raise IndexError(f"token positions must be in [{-n}, {n}) for {n} tokens")
        if not flat.size:
            return np.zeros(index.shape, self.dtype)
        first, last = self._shard_of(int(flat.min())), self._shard_of(int(flat.max()))
        if first == last:
            return np.asarray(self._map(first)[flat - self.starts[first]]).reshape(index.shape)
        shard = np.searchsorted(self.ends, flat, side="right")
        out = np.empty(flat.shape, self.dtype)
        for s in np.unique(shard).tolist():
            where = np.flatnonzero(shard == s)
            out[where] = self._map(s)[flat[where] - self.starts[s]]
        return out.reshape(index.shape)

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """ids[start : start + length] for each start, as rows: the loader's batch read.

        One shard: one fancy-indexed gather, as from a single memmap. Several: one slice copy
        per row (microseconds, whatever the number of shards); a row that runs across a shard
        boundary is joined from its pieces.
        """
        starts = np.asarray(starts, dtype=np.int64)
        if len(starts) and (starts.min() < 0 or starts.max() + length > len(self)):
            raise IndexError(f"windows of {length} tokens must lie in [0, {len(self)})")
        if len(self.files) == 1:
            return np.asarray(self._map(0)[starts[:, None] + np.arange(length)])
        out = np.empty((len(starts), length), self.dtype)
        shards = np.searchsorted(self.ends, starts, side="right")
        local = starts - self.starts[shards]
        for row, (shard, start) in enumerate(zip(shards.tolist(), local.tolist(), strict=True)):
            if start + length <= self.counts[shard]:
                out[row] = self._map(shard)[start : start + length]
            else:
                out[row] = self._range(int(starts[row]), int(starts[row]) + length)
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = np.array(self._range(0, len(self)))  # reads the whole split into memory
        return whole if dtype is None else whole.astype(dtype)

    def tolist(self) -> list[int]:
        return self._range(0, len(self)).tolist()

    def __repr__(self) -> str:
        return f"TokenShards({len(self)} tokens of {self.dtype} in {len(self.files)} shards)"


Tokens: TypeAlias = np.ndarray | TokenShards  # what the loader and evaluation read ids from


def read_windows(tokens: Tokens, starts: np.ndarray, length: int) -> np.ndarray:
    """Rows tokens[start : start + length] as int64, from an array or from shards."""
    if isinstance(tokens, TokenShards):
        return tokens.windows(starts, length).astype(np.int64)
    offsets = np.arange(length, dtype=np.int64)
    return np.asarray(tokens[np.asarray(starts)[:, None] + offsets], dtype=np.int64)


class ShardWriter:
    """Appends ids to `<split>-NNNNN.bin` shards of at most `shard_tokens` ids each.

    Shards are written under temporary names and only renamed by `close`, so an interrupted
    preparation never leaves a partial shard where a reader would take it for a whole one.
    """

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_tokens: int) -> None:
        if shard_tokens < 1:
            raise GptkitError(f"data.shard_tokens must be >= 1 (got {shard_tokens})")
        self.folder = folder
        self.split = split
        self.dtype = np.dtype(dtype)
        self.shard_tokens = shard_tokens
        self.counts: list[int] = []
        self._temps: list[Path] = []
        self._file: Any = None

    def _temp(self, index: int) -> Path:
        return self.folder / f".{shard_name(self.split, index)}.tmp-{os.getpid()}"

    def write(self, ids: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=self.dtype)
        while len(ids):
            if self._file is None or self.counts[-1] == self.shard_tokens:
                if self._file is not None:
                    self._file.close()
                self._temps.append(self._temp(len(self.counts)))
                self._file = open(self._temps[-1], "wb")  # noqa: SIM115 (closed by close/abort)
                self.counts.append(0)
            take = min(len(ids), self.shard_tokens - self.counts[-1])
            self._file.write(ids[:take].tobytes())
            self.counts[-1] += take
            ids = ids[take:]

    def close(self) -> list[dict[str, Any]]:
        """Renames the shards into place; their index: file, tokens, global token offset."""
        if self._file is not None:
            self._file.close()
            self._file = None
        shards, offset = [], 0
        for i, (temp, count) in enumerate(zip(self._temps, self.counts, strict=True)):
            os.replace(temp, self.folder / shard_name(self.split, i))
            shards.append({"file": shard_name(self.split, i), "tokens": count, "offset": offset})
            offset += count
        self._temps = []
        return shards

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for temp in self._temps:
            temp.unlink(missing_ok=True)
        self._temps = []

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.abort()  # nothing left to remove after a successful close
