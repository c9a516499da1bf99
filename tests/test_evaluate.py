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


def guide_targets(n: int, block: int, stride: int) -> list[tuple[int, int]]:
    """(target index, first context index) of every target HF's guide loop scores."""
    out, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + block, n)
        trg_len = end - prev_end
        labels = list(range(begin, end))[-trg_len:]  # positions whose label is kept
        out += [(t, begin) for t in labels if t > begin]  # the shift drops the window's first
        prev_end = end
        if end == n:
            break
    return out


@pytest.mark.parametrize(
    ("n", "block", "stride"), [(50, 8, 8), (50, 8, 3), (9, 8, 8), (10, 4, 1), (64, 8, 5), (2, 8, 8)]
)
def test_windows_are_the_hf_guide_windows(n, block, stride):
    ours = []
    for w in windows(n, block, stride):
        assert 1 <= w.length <= block - 1 and 0 <= w.first < w.length
        ours += [(w.start + k + 1, w.start) for k in range(w.first, w.length)]
    assert ours == guide_targets(n, block, stride)
    if stride < block:  # every token but the very first is scored, once
        assert [t for t, _ in ours] == list(range(1, n))


@pytest.mark.parametrize("stride", [16, 7, 1])
def test_score_equals_hand_computation(stride):
    tokens = np.random.default_rng(0).integers(0, 11, size=203).astype(np.uint16)
    model = PositionalBigram(11, position_weight=0.05)
    score = score_tokens(model, tokens, block_size=16, stride=stride, batch_size=4)
    expected, count = hand_nll(model, tokens, 16, stride)
    assert score.tokens == count == len(guide_targets(203, 16, stride))
    assert score.split_tokens == 202
    assert score.nll == pytest.approx(expected, rel=1e-5)


def test_stride_does_not_matter_for_a_context_free_model():
    tokens = np.random.default_rng(1).integers(0, 7, size=100)
    model = PositionalBigram(7, position_weight=0.0)
    results = {s: score_tokens(model, tokens, block_size=10, stride=s).nll for s in (9, 4, 1)}
    assert results[9] == pytest.approx(results[4], rel=1e-6)
    assert results[9] == pytest.approx(results[1], rel=1e-6)


def test_special_tokens_excluded_from_text_nll_and_max_windows():
    tokens = np.array([0, 3, 4, 5, 0, 3, 4, 5, 0, 3] * 5)
    model = PositionalBigram(6, position_weight=0.0)
    score = score_tokens(model, tokens, block_size=8, stride=4, special_ids=[0])
    assert score.tokens == len(tokens) - 1
    assert score.text_tokens == score.tokens - int((tokens[1:] == 0).sum())
    assert score.split_text_tokens == score.text_tokens
    assert score.text_nll < score.nll
    few = score_tokens(model, tokens, block_size=8, max_windows=2)
    # 7 non-overlapping windows of 8 tokens (the last of 2), each scoring all but its first
    # token: the first and the last are kept
    assert few.tokens == 7 + 1
    assert few.split_tokens == len(tokens) - 1


def test_summarize_formulas():
    score = Score(nll=100.0, tokens=50, text_nll=90.0, text_tokens=45, split_tokens=50,
                  split_text_tokens=45)
    r = summarize(score, split="test", block_size=8, stride=8, n_bytes=200, n_words=40)
    assert r.loss == pytest.approx(2.0)
    assert r.perplexity == pytest.approx(math.exp(2.0))
    assert r.bits_per_byte == pytest.approx(90.0 / (math.log(2) * 200))
    assert r.word_perplexity == pytest.approx(math.exp(100.0 / 40))
    # unscored targets (non-overlapping windows) count at the mean of the scored ones
    partial = Score(nll=100.0, tokens=50, text_nll=90.0, text_tokens=45, split_tokens=60,
                    split_text_tokens=54)
    r = summarize(partial, split="test", block_size=8, stride=8, n_bytes=200, n_words=40)
    assert r.loss == pytest.approx(2.0)
    assert r.bits_per_byte == pytest.approx(2.0 * 54 / (math.log(2) * 200))
    assert r.word_perplexity == pytest.approx(math.exp(2.0 * 60 / 40))


@pytest.mark.parametrize("stride", [32, 9])
def test_sliding_perplexity_equals_the_hf_guide_with_transformers(stride):
    """The guide's loop, run with `transformers` on the exported model, gives our figure.

    Same windows, same scored tokens, same summed NLL. The guide then weights each window's
    mean loss by (kept labels - 1), one fewer than it averaged over once stride < block
    size; so its final figure is matched exactly only at stride == block size, and the exact
    mean elsewhere.
    """
    pytest.importorskip("transformers")
    from gptkit.config import ModelConfig
    from gptkit.interop.hf import to_transformers
    from gptkit.model import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=97)).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    hf = to_transformers(model)
    tokens = np.random.default_rng(3).integers(0, 97, size=1000)
    ids = torch.tensor(tokens)[None]
    nll_sum, n_tokens, exact_nll, exact_n, prev_end = 0.0, 0, 0.0, 0, 0
    for begin in range(0, ids.size(1), stride):
        end = min(begin + 32, ids.size(1))
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = hf(input_ids, labels=target_ids).loss.item()
        num_loss_tokens = int((target_ids != -100).sum()) - 1  # the guide's count
        nll_sum += loss * num_loss_tokens
        n_tokens += num_loss_tokens
        predicted = int((target_ids[:, 1:] != -100).sum())  # what the loss is a mean over
        exact_nll += loss * predicted
        exact_n += predicted
        prev_end = end
        if end == ids.size(1):
            break
    score = score_tokens(model, tokens, block_size=32, stride=stride)
    ours = summarize(score, split="test", block_size=32, stride=stride)
    assert score.tokens == exact_n
    assert score.nll == pytest.approx(exact_nll, rel=1e-6)
    assert ours.perplexity == pytest.approx(math.exp(exact_nll / exact_n), rel=1e-6)
    if stride == 32:
        assert ours.perplexity == pytest.approx(math.exp(nll_sum / n_tokens), rel=1e-6)
