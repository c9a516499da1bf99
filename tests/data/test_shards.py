"""Token shards read as one array: every indexing the loader and evaluation use, and writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gptkit.data.shards import ShardWriter, TokenShards, read_windows, shard_name
from gptkit.errors import GptkitError

IDS = (np.arange(1000, dtype=np.int64) * 7919 % 50000).astype(np.uint16)


def write_shards(folder: Path, ids: np.ndarray, shard_tokens: int, writes: int = 7
                 ) -> TokenShards:
    """`ids` through a ShardWriter in uneven writes, read back as TokenShards."""
    with ShardWriter(folder, "train", ids.dtype, shard_tokens) as writer:
        for part in np.array_split(ids, writes):
            writer.write(part)
        shards = writer.close()
    return TokenShards([folder / s["file"] for s in shards], [s["tokens"] for s in shards],
                       ids.dtype)


@pytest.fixture(params=[1000, 333, 64, 1], ids=lambda n: f"shard_tokens={n}")
def shards(request, tmp_path) -> TokenShards:
    return write_shards(tmp_path, IDS, request.param)


def test_writer_cuts_bounded_shards_with_offsets(tmp_path):
    with ShardWriter(tmp_path, "val", np.dtype(np.uint16), 300) as writer:
        for part in np.array_split(IDS, 7):
            writer.write(part)
        assert not any((tmp_path / shard_name("val", i)).exists() for i in range(4))  # temps
        shards = writer.close()
    assert shards == [{"file": f"val-0000{i}.bin", "tokens": n, "offset": 300 * i}
                      for i, n in enumerate([300, 300, 300, 100])]
    assert sorted(p.name for p in tmp_path.iterdir()) == [s["file"] for s in shards]
    joined = b"".join((tmp_path / s["file"]).read_bytes() for s in shards)
    assert np.array_equal(np.frombuffer(joined, np.uint16), IDS)


def test_writer_leaves_nothing_when_interrupted(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, "train", np.dtype(np.uint16),
                                                  100) as writer:
        writer.write(IDS)
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_reads_like_the_array(shards):
    assert len(shards) == len(IDS) and shards.shape == IDS.shape and shards.ndim == 1
    assert shards.dtype == np.uint16
    for i in (0, 1, 63, 64, 332, 333, 999, -1, -1000, np.int64(500)):
        assert shards[i] == IDS[i]
    for key in (slice(None), slice(1, None), slice(60, 70), slice(330, 700), slice(5, 5),
                slice(900, 2000), slice(-10, None), slice(10, 400, 7), slice(None, None, -3)):
        part = shards[key]
        assert isinstance(part, np.ndarray) and part.dtype == np.uint16
        assert np.array_equal(part, IDS[key]), key
    index = np.array([[0, 999, 333, 332], [64, 63, -1, 5]])
    assert np.array_equal(shards[index], IDS[index])
    assert np.array_equal(shards[[3, 2, 1]], IDS[[3, 2, 1]])
    assert np.array_equal(np.asarray(shards), IDS) and shards.tolist() == IDS.tolist()
    assert np.array_equal(np.asarray(shards, dtype=np.int64), IDS.astype(np.int64))


def test_windows_across_shard_boundaries(shards):
    starts = np.array([0, 330, 320, 990, 62, 640, 300])
    expected = IDS[starts[:, None] + np.arange(10)].astype(np.int64)
    got = read_windows(shards, starts, 10)
    assert got.dtype == np.int64 and np.array_equal(got, expected)
    assert np.array_equal(read_windows(IDS, starts, 10), expected)


def test_out_of_range_reads_are_errors(shards):
    with pytest.raises(IndexError):
        shards[1000]
    with pytest.raises(IndexError):
        shards[np.array([0, 1000])]
    with pytest.raises(IndexError):
        shards.windows(np.array([995]), 10)
    with pytest.raises(IndexError):
        shards[np.array([0.5])]


def test_empty_split_and_damaged_shard(tmp_path):
    empty = TokenShards([], [], np.dtype(np.uint16))
    assert len(empty) == 0 and empty.tolist() == [] and empty[0:5].size == 0
    shards = write_shards(tmp_path, IDS, 400)
    (tmp_path / "train-00001.bin").write_bytes(b"12")
    assert shards[5] == IDS[5]  # shards are opened when first read
    with pytest.raises(GptkitError, match=r"train-00001\.bin is missing or has 2 bytes.*delete"):
        shards[500]
    (tmp_path / "train-00002.bin").unlink()
    with pytest.raises(GptkitError, match="missing"):
        shards[-1]
