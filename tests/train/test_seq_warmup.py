"""Sequence-length warmup (train.seq_warmup_steps / seq_warmup_start): the schedule of window
lengths, the loader's windows, exact resume, full-length evaluation, and its errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gptkit.config import load_config
from gptkit.data.loader import WINDOW_MULTIPLE, RandomWindows, window_length
from gptkit.errors import GptkitError
from gptkit.train.trainer import train
from tests.conftest import TINY


def cfg(*overrides: str):
    return load_config("shakespeare-char", [*TINY, *overrides])


def test_lengths_grow_linearly_in_multiples_of_8_from_start_to_block_size() -> None:
    lengths = [window_length(s, 64, 100, 8) for s in range(120)]
    assert lengths[0] == 8 and lengths[99] == 56 and lengths[100:] == [64] * 20
    assert lengths == sorted(lengths)
    assert all(n % WINDOW_MULTIPLE == 0 for n in lengths)
    # linear, rounded down: step s has 8 + 56 s / 100 tokens, to the multiple of 8 below
    assert all(n == (8 + 56 * s // 100) // 8 * 8 for s, n in enumerate(lengths[:100]))
    assert set(lengths) == {8, 16, 24, 32, 40, 48, 56, 64}


def test_lengths_never_fall_below_start_nor_pass_block_size() -> None:
    lengths = [window_length(s, 30, 10, 5) for s in range(12)]
    assert lengths == [5, 5, 8, 8, 8, 16, 16, 16, 24, 24, 30, 30]  # 5 + 25 s / 10, floored to 8s
    assert [window_length(s, 30, 0, 5) for s in range(3)] == [30, 30, 30]  # off: always full


def test_the_loader_cuts_the_same_windows_shorter() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    plain = RandomWindows(tokens, 32, 4, 2, seed=3)
    warm = RandomWindows(tokens, 32, 4, 2, seed=3, warmup_steps=10, warmup_start=8)
    for step in (0, 5, 9, 10, 11):
        n = window_length(step, 32, 10, 8)
        for (x, y), (fx, fy) in zip(warm.step_batches(step), plain.step_batches(step),
                                    strict=True):
            assert x.shape == y.shape == (4, n)  # as many sequences, fewer tokens
            assert torch.equal(x, fx[:, :n]) and torch.equal(y, fy[:, :n])
    assert warm.window_length(0) == 8 and warm.window_length(10) == 32


@pytest.mark.parametrize("start", [0, 32, 40])
def test_the_loader_refuses_a_start_outside_1_to_block_size(start: int) -> None:
    with pytest.raises(GptkitError, match="start in \\[1, block_size = 32\\)"):
        RandomWindows(np.arange(100, dtype=np.uint16), 32, 2, 1, seed=0, warmup_steps=5,
                      warmup_start=start)


@pytest.mark.parametrize(("overrides", "match"), [
    (["train.seq_warmup_steps=10", "train.seq_warmup_start=33"],
     r"train.seq_warmup_start \(33\) must be below model.block_size \(32\)"),
    (["train.seq_warmup_steps=10", "train.seq_warmup_start=32"],
     r"train.seq_warmup_start \(32\) must be below model.block_size"),
    (["train.seq_warmup_steps=10", "train.seq_warmup_start=0"],
     "train.seq_warmup_start must be >= 1"),
    (["train.seq_warmup_steps=-1"], "train.seq_warmup_steps must be >= 0"),
])
def test_bad_values_are_one_line_errors(overrides: list[str], match: str) -> None:
    with pytest.raises(GptkitError, match=match) as caught:
        cfg(*overrides)
    assert "\n" not in str(caught.value)


def test_start_without_steps_and_warmup_in_fine_tuning_are_refused(tmp_path: Path) -> None:
    from gptkit.config.usage import check_used

    with pytest.raises(GptkitError, match="train.seq_warmup_start=16 does nothing here; it "
                       "applies with train.seq_warmup_steps > 0"):
        check_used(cfg("train.seq_warmup_start=16"), {"train"})
    sft = load_config("sft", ["train.seq_warmup_steps=10"])
    with pytest.raises(GptkitError, match="train.seq_warmup_steps=10 does nothing in supervised "
                       "fine-tuning.*it applies to pre-training on text"):
        train(sft, tmp_path / "sft", progress=False)
    with pytest.raises(GptkitError, match="train.seq_warmup_steps=10 does nothing in "
                       "classification"):
        check_used(load_config("sentiment", ["train.seq_warmup_steps=10"]), {"classify"})


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_a_run_with_warmup_trains_counts_its_tokens_and_resumes_bit_for_bit(
        data_dir: Path, tmp_path: Path) -> None:
    config = cfg("model.dropout=0.1", "train.checkpoint_interval=6", "train.eval_interval=6",
                 "train.max_steps=12", "train.keep_checkpoints=5", "train.log_interval=1",
                 "train.seq_warmup_steps=10", "train.seq_warmup_start=8")
    straight = tmp_path / "straight"
    result = train(config, straight, progress=False)
    # 8 sequences a step, of the warmed-up length: fewer tokens early, block_size at the end
    lengths = [window_length(s, 32, 10, 8) for s in range(12)]
    assert lengths[0] == 8 and lengths[-1] == 32
    assert [r["tokens"] for r in records(straight, "train")] == list(
        np.cumsum([8 * n for n in lengths]))
    assert result.tokens_seen == 8 * sum(lengths)
    evals = records(straight, "eval")
    # evaluation reads full block_size windows: the same validation tokens at every step
    assert len({e["val_tokens"] for e in evals}) == 1 and evals[-1]["val_loss"] < evals[0][
        "val_loss"]
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-000012")
    train(config, resumed, resume=True, progress=False)  # from step 6, mid-warmup
    a = load_file(str(straight / "checkpoints" / "step-000012" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step-000012" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in records(straight, "train")] == [
        r["loss"] for r in records(resumed, "train")]
    assert [r["tokens"] for r in records(straight, "train")] == [
        r["tokens"] for r in records(resumed, "train")]
