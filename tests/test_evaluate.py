import math

import numpy as np
import pytest
import torch
from torch import nn

from gptkit.evaluate import Score, score_tokens, summarize, windows


class PositionalBigram(nn.Module):
    """A toy LM whose prediction depends on the previous token and the position in the window,
    so the score reveals exactly which context each target was scored with."""

    def __init__(self, vocab: int, position_weight: float) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=g))
        self.position_weight = position_weight

    def forward(self, idx, targets=None):
        logits = self.table[idx]
        position = torch.arange(idx.size(1), dtype=logits.dtype)[None, :, None]
        tilt = torch.linspace(-1, 1, logits.size(-1))
        return logits + self.position_weight * position * tilt, None


def hand_nll(model: PositionalBigram, tokens: np.ndarray, block: int, stride: int):
    """Per-target brute force: find the window that scores each target, compute its NLL."""
    total, count = 0.0, 0
    plan = windows(len(tokens), block, stride)
    for w in plan:
        x = torch.tensor(tokens[w.start : w.start + w.length], dtype=torch.long)[None]
        logits, _ = model(x)
        logp = torch.log_softmax(logits[0].double(), -1)
        for k in range(w.first, w.length):
            total -= logp[k, int(tokens[w.start + k + 1])].item()
            count += 1
    return total, count


@pytest.mark.parametrize(("n", "block", "stride"), [(50, 8, 8), (50, 8, 3), (9, 8, 8), (10, 4, 1)])
def test_windows_score_each_target_once_with_bounded_context(n, block, stride):
    scored = []
    for w in windows(n, block, stride):
        assert 1 <= w.length <= block and 0 <= w.first < w.length
        for k in range(w.first, w.length):
            target = w.start + k + 1
            scored.append(target)
            context = k + 1
            assert context <= block
            if w.start > 0:
                assert context >= block - stride + 1 or w.length < block
    assert scored == list(range(1, n))


@pytest.mark.parametrize("stride", [16, 7, 1])
def test_score_equals_hand_computation(stride):
    tokens = np.random.default_rng(0).integers(0, 11, size=203).astype(np.uint16)
    model = PositionalBigram(11, position_weight=0.05)
    score = score_tokens(model, tokens, block_size=16, stride=stride, batch_size=4)
    expected, count = hand_nll(model, tokens, 16, stride)
    assert score.tokens == count == 202
    assert score.nll == pytest.approx(expected, rel=1e-5)


def test_stride_does_not_matter_for_a_context_free_model():
    tokens = np.random.default_rng(1).integers(0, 7, size=100)
    model = PositionalBigram(7, position_weight=0.0)
    results = {s: score_tokens(model, tokens, block_size=10, stride=s).nll for s in (10, 4, 1)}
    assert results[10] == pytest.approx(results[4], rel=1e-6)
    assert results[10] == pytest.approx(results[1], rel=1e-6)


def test_special_tokens_excluded_from_text_nll_and_max_windows():
    tokens = np.array([0, 3, 4, 5, 0, 3, 4, 5, 0, 3] * 5)
    model = PositionalBigram(6, position_weight=0.0)
    score = score_tokens(model, tokens, block_size=8, special_ids=[0])
    assert score.tokens == len(tokens) - 1
    assert score.text_tokens == score.tokens - int((tokens[1:] == 0).sum())
    assert score.text_nll < score.nll
    few = score_tokens(model, tokens, block_size=8, max_windows=2)
    # 7 windows (6 full, the last scoring 1 target): the first and the last are kept
    assert few.tokens == 8 + 1


def test_summarize_formulas():
    score = Score(nll=100.0, tokens=50, text_nll=90.0, text_tokens=45)
    r = summarize(score, split="test", block_size=8, stride=8, n_bytes=200, n_words=40)
    assert r.loss == pytest.approx(2.0)
    assert r.perplexity == pytest.approx(math.exp(2.0))
    assert r.bits_per_byte == pytest.approx(90.0 / (math.log(2) * 200))
    assert r.word_perplexity == pytest.approx(math.exp(100.0 / 40))
