from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gptkit.data.loader import RandomWindows
from gptkit.errors import GptkitError

BLOCK, MICRO = 8, 4


def windows(tokens: np.ndarray, accum: int = 1, rank: int = 0, world: int = 1,
            seed: int = 7) -> RandomWindows:
    return RandomWindows(tokens, BLOCK, MICRO, accum, seed, rank=rank, world_size=world)


@pytest.fixture
def tokens() -> np.ndarray:
    # every token is its own position, so a window shows where it starts
    return np.arange(1000, dtype=np.uint16)


def test_shapes_dtypes_and_shift(tokens: np.ndarray) -> None:
    batches = windows(tokens, accum=3).step_batches(0)
    assert len(batches) == 3
    for x, y in batches:
        assert x.shape == y.shape == (MICRO, BLOCK)
        assert x.dtype == y.dtype == torch.int64 and x.device.type == "cpu"
        assert x.is_contiguous() and y.is_contiguous()
        assert torch.equal(y[:, :-1], x[:, 1:])
        # consecutive tokens: x is the window at its first token, y the same window plus one
        assert torch.equal(x, x[:, :1] + torch.arange(BLOCK))
        assert torch.equal(y, x + 1)


def test_same_seed_and_step_give_the_same_batch(tokens: np.ndarray) -> None:
    a = windows(tokens, accum=2).step_batches(5)
    b = windows(tokens, accum=2).step_batches(5)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_different_steps_and_seeds_differ(tokens: np.ndarray) -> None:
    loader = windows(tokens)
    x3, x4 = loader.step_batches(3)[0][0], loader.step_batches(4)[0][0]
    assert not torch.equal(x3, x4)
    other = windows(tokens, seed=8).step_batches(3)[0][0]
    assert not torch.equal(x3, other)


def test_batch_does_not_depend_on_earlier_calls(tokens: np.ndarray) -> None:
    fresh = windows(tokens).step_batches(9)[0][0]
    used = windows(tokens)
    for step in range(9):
        used.step_batches(step)
    assert torch.equal(used.step_batches(9)[0][0], fresh)


def test_accumulation_equals_ranks_in_chunk_order(tokens: np.ndarray) -> None:
    one = windows(tokens, accum=2).step_batches(11)
    rank0 = windows(tokens, accum=1, rank=0, world=2).step_batches(11)
    rank1 = windows(tokens, accum=1, rank=1, world=2).step_batches(11)
    assert torch.equal(one[0][0], rank0[0][0]) and torch.equal(one[1][0], rank1[0][0])
    assert torch.equal(one[0][1], rank0[0][1]) and torch.equal(one[1][1], rank1[0][1])


def test_micro_batch_m_of_rank_r_is_chunk_m_times_world_plus_r(tokens: np.ndarray) -> None:
    single = windows(tokens, accum=6).step_batches(2)
    for rank in range(3):
        mine = windows(tokens, accum=2, rank=rank, world=3).step_batches(2)
        for m, (x, _) in enumerate(mine):
            assert torch.equal(x, single[m * 3 + rank][0])


def test_every_window_is_in_range_and_every_start_is_used() -> None:
    tokens = np.arange(BLOCK + 3, dtype=np.uint16)  # starts 0, 1, 2 only
    loader = windows(tokens, accum=2)
    starts = set()
    for step in range(30):
        for x, y in loader.step_batches(step):
            starts.update(x[:, 0].tolist())
            assert int(y.max()) <= len(tokens) - 1
    assert starts == {0, 1, 2}


def test_smallest_split_has_a_single_window() -> None:
    tokens = np.arange(BLOCK + 1, dtype=np.uint32)
    x, y = windows(tokens).step_batches(0)[0]
    assert torch.equal(x, torch.arange(BLOCK).expand(MICRO, BLOCK))
    assert torch.equal(y, torch.arange(1, BLOCK + 1).expand(MICRO, BLOCK))


def test_reads_a_memmap(tmp_path: Path, tokens: np.ndarray) -> None:
    path = tmp_path / "train.bin"
    tokens.tofile(path)
    mm = np.memmap(path, dtype=np.uint16, mode="r")
    a, b = windows(mm).step_batches(3)[0], windows(tokens).step_batches(3)[0]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_too_short_split_is_an_error() -> None:
    with pytest.raises(GptkitError, match=r"'valid' has 8 tokens.*9"):
        RandomWindows(np.arange(BLOCK, dtype=np.uint16), BLOCK, MICRO, 1, 0, split="valid")


def test_bad_rank_is_an_error(tokens: np.ndarray) -> None:
    with pytest.raises(GptkitError, match="rank"):
        windows(tokens, rank=2, world=2)


def test_state_dict_round_trip(tokens: np.ndarray) -> None:
    loader = windows(tokens)
    assert loader.state_dict() == {"seed": 7, "position": 0}
    loader.step_batches(4)
    state = loader.state_dict()
    assert state == {"seed": 7, "position": 5}
    resumed = windows(tokens, seed=99)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state
    assert torch.equal(resumed.step_batches(5)[0][0], loader.step_batches(5)[0][0])
    with pytest.raises(GptkitError, match="position"):
        resumed.load_state_dict({"seed": 1})


@pytest.mark.parametrize("shard_tokens", [1000, 97, 8, 1])
def test_shard_reader_equals_the_single_file_reader(tmp_path: Path, shard_tokens: int) -> None:
    """The same ids in shards give exactly the batches of one file, on every rank and step;
    windows may run across shard boundaries."""
    from tests.data.test_shards import write_shards

    ids = (np.arange(1000, dtype=np.int64) * 7919 % 65000).astype(np.uint16)
    ids.tofile(tmp_path / "train.bin")
    single = np.memmap(tmp_path / "train.bin", dtype=np.uint16, mode="r")
    (tmp_path / "shards").mkdir()
    sharded = write_shards(tmp_path / "shards", ids, shard_tokens)
    crossing = 0
    for rank in range(2):
        a = windows(single, accum=3, rank=rank, world=2)
        b = windows(sharded, accum=3, rank=rank, world=2)
        for step in (0, 1, 7, 1234):
            for (xa, ya), (xb, yb) in zip(a.step_batches(step), b.step_batches(step),
                                          strict=True):
                assert torch.equal(xa, xb) and torch.equal(ya, yb)
            starts = a.global_starts(step)
            crossing += int((starts // shard_tokens != (starts + BLOCK) // shard_tokens).sum())
    assert crossing > 0 or shard_tokens >= 1000
    resumed = windows(sharded, accum=3)
    resumed.load_state_dict(windows(single, accum=3).state_dict())
    expected = windows(single, accum=3).step_batches(5)[1][0]
    assert torch.equal(resumed.step_batches(5)[1][0], expected)
