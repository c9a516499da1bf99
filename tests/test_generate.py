"""Generation: processors, greedy and sampled decoding, KV cache, sliding window, streaming."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from gptkit.config import ModelConfig, SampleConfig
from gptkit.errors import GptkitError
from gptkit.generate import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    build_processors,
    generate,
    generate_tokens,
    sample_text,
)
from gptkit.model import GPT, KVCache

VOCAB = 29
BLOCK = 16


def tiny(vocab: int = VOCAB, block: int = BLOCK, dropout: float = 0.0) -> GPT:
    torch.manual_seed(0)
    config = ModelConfig(
        n_layer=2, n_head=2, n_embd=16, block_size=block, vocab_size=vocab, dropout=dropout
    )
    # float64 so that cached and uncached paths cannot disagree on an argmax by rounding
    return GPT(config).double().eval()


@pytest.fixture
def model() -> GPT:
    return tiny()


def reference_greedy(model: GPT, prompt: list[int], steps: int) -> list[int]:
    """Full forward over the last block_size tokens at every step: no cache, no cleverness."""
    seq = list(prompt)[-model.config.block_size :]
    with torch.no_grad():
        for _ in range(steps):
            window = torch.tensor([seq[-model.config.block_size :]])
            seq.append(int(model(window)[0][0, -1].argmax()))
    return seq


def run(model: GPT, prompt: Sequence[int], **kwargs) -> list[list[int]]:
    return generate(model, prompt, **kwargs).tolist()


# ---------------------------------------------------------------- processors


def keep(scores: torch.Tensor) -> list[int]:
    return torch.nonzero(torch.isfinite(scores[0])).flatten().tolist()


def test_temperature_divides_scores():
    scores = torch.tensor([[1.0, -2.0, 4.0]])
    torch.testing.assert_close(TemperatureLogitsWarper(0.5)(None, scores), scores * 2)
    with pytest.raises(GptkitError):
        TemperatureLogitsWarper(0.0)


def test_top_k_keeps_the_k_highest_and_ties():
    scores = torch.tensor([[1.0, 3.0, 2.0, 5.0, 4.0]])
    assert keep(TopKLogitsWarper(2)(None, scores)) == [3, 4]
    assert keep(TopKLogitsWarper(1)(None, scores)) == [3]
    assert keep(TopKLogitsWarper(50)(None, scores)) == [0, 1, 2, 3, 4]
    tied = torch.tensor([[1.0, 3.0, 3.0, 0.0]])
    assert keep(TopKLogitsWarper(1)(None, tied)) == [1, 2]  # as transformers: ties stay
    out = TopKLogitsWarper(2)(None, scores)
    assert out[0, 3] == 5.0 and out[0, 0] == -math.inf  # kept scores unchanged


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [(0.01, [2]), (0.45, [2]), (0.75, [2, 0]), (0.85, [2, 0, 3]), (0.99, [2, 0, 3, 1])],
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
    # probabilities 0.3, 0.05, 0.5, 0.15 at ids 0..3 (deliberately unsorted)
    scores = torch.tensor([[0.3, 0.05, 0.5, 0.15]]).log() + 7.0
    out = TopPLogitsWarper(top_p)(None, scores)
    assert sorted(keep(out)) == sorted(kept)
    assert torch.equal(out[torch.isfinite(out)], scores[torch.isfinite(out)])


def test_top_p_always_keeps_at_least_one_token_per_row():
    scores = torch.tensor([[0.0, 0.0, 20.0], [5.0, 0.0, 0.0]])
    out = TopPLogitsWarper(1e-9)(None, scores)
    assert torch.isfinite(out).sum(dim=-1).tolist() == [1, 1]
    assert out.argmax(dim=-1).tolist() == [2, 0]


def test_processor_chain_order_and_defaults():
    assert len(build_processors()) == 0
    chain = build_processors(temperature=0.5, top_k=3, top_p=0.9)
    assert [type(p).__name__ for p in chain] == [
        "TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper",
    ]
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    assert keep(chain(None, scores)) == [3, 4]  # /0.5 -> top 3 -> 0.9 of the mass


# ---------------------------------------------------------------- decoding


def test_greedy_is_deterministic_and_equals_manual_argmax(model):
    prompt = [1, 2, 3]
    out = run(model, prompt, max_new_tokens=10, temperature=0)
    assert out == [reference_greedy(model, prompt, 10)]
    assert run(model, prompt, max_new_tokens=10, temperature=0, seed=5) == out
    many = run(model, prompt, max_new_tokens=10, temperature=0, num_samples=3, top_k=2)
    assert many == out * 3


def test_cached_equals_uncached(model):
    prompt = [4, 0, 7, 7, 1]
    cached = run(model, prompt, max_new_tokens=9, temperature=0)
    assert cached == run(model, prompt, max_new_tokens=9, temperature=0, use_cache=False)
    sampled = {
        use: run(model, prompt, max_new_tokens=9, num_samples=3, seed=3, use_cache=use)
        for use in (True, False)
    }
    assert sampled[True] == sampled[False]


def test_seeds_reproduce_and_differ(model):
    a = run(model, [1], max_new_tokens=20, num_samples=2, seed=11)
    assert run(model, [1], max_new_tokens=20, num_samples=2, seed=11) == a
    assert run(model, [1], max_new_tokens=20, num_samples=2, seed=12) != a
    assert a[0] != a[1]  # the samples of one call differ too


def test_global_rng_is_untouched(model):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    run(model, [1, 2], max_new_tokens=8, seed=4, top_p=0.9, top_k=5)
    run(model, [1, 2], max_new_tokens=8)  # no seed: fresh entropy, still private
    assert torch.equal(torch.get_rng_state(), state)


def test_streams_one_int64_row_per_step(model):
    steps = list(generate_tokens(model, [3], max_new_tokens=6, num_samples=4, seed=0))
    assert len(steps) == 6
    assert all(s.shape == (4,) and s.dtype == torch.int64 for s in steps)
    assert list(generate_tokens(model, [3], max_new_tokens=0)) == []
    assert run(model, [3, 4], max_new_tokens=0, num_samples=2) == [[3, 4], [3, 4]]


def test_stops_at_eot(model):
    free = reference_greedy(model, [5], 12)[1:]
    eot = free[3]
    stop = free.index(eot)
    out = run(model, [5], max_new_tokens=12, temperature=0, eot_id=eot)
    assert out == [[5, *free[: stop + 1]]]


def test_finished_samples_keep_yielding_eot_until_all_finish():
    model = tiny(vocab=3)
    eot = 0
    steps = torch.stack(
        list(generate_tokens(model, [1], max_new_tokens=200, num_samples=5, seed=1,
                             temperature=2.0, eot_id=eot))
    )
    assert steps[-1].eq(eot).all()
    assert len(steps) < 200 and not steps[-2].eq(eot).all()
    for row in steps.T.tolist():
        first = row.index(eot)
        assert all(t == eot for t in row[first:])
    assert len({row.index(eot) for row in steps.T.tolist()}) > 1  # they finished apart


def test_long_prompt_keeps_its_last_block_size_tokens(model):
    prompt = [i % VOCAB for i in range(40)]
    out = generate(model, prompt, max_new_tokens=3, temperature=0)
    assert out.shape == (1, BLOCK + 3)
    assert out[0, :BLOCK].tolist() == prompt[-BLOCK:]
    assert out.tolist() == [reference_greedy(model, prompt, 3)]


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_slides_past_block_size(model, use_cache):
    prompt = [2, 9, 4, 4, 1, 8, 0, 3, 6, 5]
    out = run(model, prompt, max_new_tokens=30, temperature=0, use_cache=use_cache)
    assert out == [reference_greedy(model, prompt, 30)]
    assert len(out[0]) == 40 > BLOCK


def test_sampling_past_block_size_is_the_same_with_and_without_cache(model):
    args = {"max_new_tokens": 25, "num_samples": 2, "seed": 8, "top_k": 10}
    assert run(model, [1, 2, 3], **args) == run(model, [1, 2, 3], use_cache=False, **args)


def test_generation_runs_without_dropout_and_restores_training_mode():
    model = tiny(dropout=0.5)
    expected = run(model, [1, 2], max_new_tokens=8, temperature=0)
    model.train()
    assert run(model, [1, 2], max_new_tokens=8, temperature=0) == expected
    assert model.training and all(m.training for m in model.modules())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"num_samples": 0}, "num_samples"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
    ],
)
def test_bad_settings_are_errors(model, kwargs, match):
    with pytest.raises(GptkitError, match=match):
        generate(model, [1], **{"max_new_tokens": 2, **kwargs})


def test_bad_prompts_are_errors(model):
    with pytest.raises(GptkitError, match="no tokens"):
        generate(model, [], max_new_tokens=2)
    with pytest.raises(GptkitError, match=f"token id {VOCAB} is outside"):
        generate(model, [1, VOCAB], max_new_tokens=2)


# ---------------------------------------------------------------- text


class CharTokenizer:
    """The `Tokenizer` interface over a fixed alphabet; EOT is the last id."""

    def __init__(self, alphabet: str, eot: bool = True) -> None:
        self.alphabet = alphabet
        self.eot_id = len(alphabet) if eot else None
        self.vocab_size = len(alphabet) + int(eot)

    def encode(self, text: str) -> list[int]:
        return [self.alphabet.index(c) for c in text if c in self.alphabet]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(
            "<|endoftext|>" if i == self.eot_id else self.alphabet[i] for i in ids
        )


class ByteTokenizer:
    """Byte-level ids 0..255 plus EOT 256: a token can end in the middle of a character."""

    eot_id = 256
    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(
            b"<|endoftext|>" if i == 256 else bytes([i]) for i in ids
        ).decode("utf-8", errors="replace")


class ScriptedGPT(GPT):
    """Predicts a fixed continuation of the prompt, whatever the input."""

    def __init__(self, script: list[int], prompt_len: int) -> None:
        super().__init__(ModelConfig(n_layer=1, n_head=1, n_embd=4, block_size=64, vocab_size=257))
        self.script, self.prompt_len = script, prompt_len

    def forward(self, idx, targets=None, kv_cache: KVCache | None = None):
        start = 0 if kv_cache is None else kv_cache.length
        logits = torch.zeros(idx.size(0), idx.size(1), 257)
        for t in range(idx.size(1)):
            k = min(start + t + 1 - self.prompt_len, len(self.script) - 1)
            logits[:, t, self.script[max(k, 0)]] = 100.0
        if kv_cache is not None:
            kv_cache.length += idx.size(1)
        return logits, None


ALPHABET = "abcdefgh \n"


def text_model() -> GPT:
    return tiny(vocab=len(ALPHABET) + 1, block=32)


def test_sample_text_returns_prompt_plus_continuation():
    tok = CharTokenizer(ALPHABET)
    cfg = SampleConfig(max_new_tokens=20, temperature=0, top_k=None, num_samples=2)
    texts = sample_text(text_model(), tok, "bad", cfg)
    ids = run(text_model(), tok.encode("bad"), max_new_tokens=20, temperature=0)[0][3:]
    new = ids[: ids.index(tok.eot_id)] if tok.eot_id in ids else ids
    assert texts == ["bad" + tok.decode(new)] * 2
    assert "<|endoftext|>" not in texts[0]


def test_sample_text_from_nothing_starts_at_eot():
    tok = CharTokenizer(ALPHABET)
    cfg = SampleConfig(max_new_tokens=15, temperature=1.0, num_samples=3, seed=2)
    texts = sample_text(text_model(), tok, None, cfg)
    assert len(texts) == 3 and all(len(t) <= 15 for t in texts)
    assert all("<|endoftext|>" not in t for t in texts)
    assert texts == sample_text(text_model(), tok, None, cfg)


def test_sample_text_errors():
    cfg = SampleConfig(max_new_tokens=5)
    with pytest.raises(GptkitError, match="no end-of-text"):
        sample_text(text_model(), CharTokenizer(ALPHABET, eot=False), None, cfg)
    with pytest.raises(GptkitError, match="encodes to no tokens"):
        sample_text(text_model(), CharTokenizer(ALPHABET), "", cfg)
    with pytest.raises(GptkitError, match="encodes to no tokens"):
        sample_text(text_model(), CharTokenizer(ALPHABET), "XYZ", cfg)


def test_streamed_pieces_join_to_the_returned_texts():
    tok = CharTokenizer(ALPHABET)
    cfg = SampleConfig(max_new_tokens=30, temperature=1.0, num_samples=3, seed=5)
    pieces: dict[int, list[str]] = {0: [], 1: [], 2: []}
    texts = sample_text(text_model(), tok, "ace", cfg, stream=lambda i, p: pieces[i].append(p))
    assert texts == sample_text(text_model(), tok, "ace", cfg)
    assert ["".join(pieces[i]) for i in range(3)] == texts
    assert all(p[0] == "ace" for p in pieces.values())


def test_streaming_holds_back_partial_utf8_characters():
    prompt = "é"
    script = list("né€!".encode()) + [256]
    model = ScriptedGPT(script, prompt_len=len(prompt.encode()))
    tok = ByteTokenizer()
    pieces: list[str] = []
    cfg = SampleConfig(max_new_tokens=50, temperature=0, top_k=None)
    texts = sample_text(model, tok, prompt, cfg, stream=lambda i, p: pieces.append(p))
    assert texts == ["éné€!"]
    assert pieces == ["é", "n", "é", "€", "!"]


def test_streaming_flushes_an_unfinished_character_at_the_end():
    script = [ord("a"), 0xE2, 0x82]  # "a" then two of the three bytes of "€"
    model = ScriptedGPT(script, prompt_len=1)
    pieces: list[str] = []
    cfg = SampleConfig(max_new_tokens=3, temperature=0, top_k=None)
    texts = sample_text(model, ByteTokenizer(), "x", cfg, stream=lambda i, p: pieces.append(p))
    assert texts == ["xa\ufffd"]
    assert "".join(pieces) == texts[0] and pieces[:2] == ["x", "a"]
