"""Generation: processors, greedy, sampled and beam decoding, batches, KV cache, sliding
window, stop strings, streaming, settings. Parity with `transformers` is in
test_generate_hf_parity.py."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import pytest
import torch

from gptkit.config import ModelConfig, load_config
from gptkit.errors import GptkitError
from gptkit.generation.beam import beam_search
from gptkit.generation.config import GenerationConfig
from gptkit.generation.decoding import TokenBuffer
from gptkit.generation.logits_process import (
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
    build_processors,
)
from gptkit.generation.sampling import generate, generate_tokens
from gptkit.generation.text import bad_words_ids, sample_text
from gptkit.model import GPT, KVCache
from tests.generation_opts import beam_opts, opts

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


def run(model: GPT, prompt: Sequence[int], eot_id: int | None = None, use_cache: bool = True,
        **settings) -> list[list[int]]:
    return generate(model, prompt, opts(**settings), eot_id=eot_id, use_cache=use_cache).tolist()


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


def test_seed_groups_sample_as_if_alone(model):
    """Each group of prompts draws from its own generator: what it gets does not depend on
    the prompts batched with it (the server's guarantee)."""
    def steps(prompts, seed_groups=None, **kw):
        out = generate_tokens(model, prompts, opts(max_new_tokens=15, num_samples=2, **kw),
                              seed_groups=seed_groups)
        return torch.stack(list(out), dim=1).tolist()

    alone = [steps([[1, 2, 3]], seed=5), steps([[4], [7, 8]], seed=6)]
    together = steps([[1, 2, 3], [4], [7, 8]], seed_groups=[(1, 5), (2, 6)])
    assert together == alone[0] + alone[1]
    with pytest.raises(GptkitError, match="seed_groups"):
        steps([[1], [2]], seed_groups=[(1, 5)])


def test_global_rng_is_untouched(model):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    run(model, [1, 2], max_new_tokens=8, seed=4, top_p=0.9, top_k=5)
    run(model, [1, 2], max_new_tokens=8)  # no seed: fresh entropy, still private
    assert torch.equal(torch.get_rng_state(), state)


def test_streams_one_int64_row_per_step(model):
    steps = list(generate_tokens(model, [3], opts(max_new_tokens=6, num_samples=4, seed=0)))
    assert len(steps) == 6
    assert all(s.shape == (4,) and s.dtype == torch.int64 for s in steps)
    assert list(generate_tokens(model, [3], opts(max_new_tokens=0))) == []
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
        list(generate_tokens(model, [1], opts(max_new_tokens=200, num_samples=5, seed=1,
                                              temperature=2.0), eot_id=eot))
    )
    assert steps[-1].eq(eot).all()
    assert len(steps) < 200 and not steps[-2].eq(eot).all()
    for row in steps.T.tolist():
        first = row.index(eot)
        assert all(t == eot for t in row[first:])
    assert len({row.index(eot) for row in steps.T.tolist()}) > 1  # they finished apart


def test_long_prompt_keeps_its_last_block_size_tokens(model):
    prompt = [i % VOCAB for i in range(40)]
    out = generate(model, prompt, opts(max_new_tokens=3, temperature=0))
    assert out.shape == (1, BLOCK + 3)
    assert out[0, :BLOCK].tolist() == prompt[-BLOCK:]
    assert out.tolist() == [reference_greedy(model, prompt, 3)]


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_slides_past_block_size(model, use_cache):
    prompt = [2, 9, 4, 4, 1, 8, 0, 3, 6, 5]
    out = run(model, prompt, max_new_tokens=30, temperature=0, use_cache=use_cache)
    assert out == [reference_greedy(model, prompt, 30)]
    assert len(out[0]) == 40 > BLOCK


def test_token_buffer_appends_in_place_and_grows():
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    buffer, expected = TokenBuffer(ids, room=2), ids
    for step in range(7):  # past the room it was made with: it grows
        token = torch.tensor([10 + step, 20 + step])
        expected = torch.cat([expected, token[:, None]], dim=1)
        assert torch.equal(buffer.append(token), expected)
    assert torch.equal(buffer.ids, expected) and buffer.data.size(1) >= 10


def test_processors_see_every_token_when_the_buffer_grows(model):
    # room for block_size (16) new tokens, 40 generated: a repeated bigram anywhere would
    # mean the n-gram blocker missed tokens
    out = run(model, [1, 2], max_new_tokens=40, temperature=0, no_repeat_ngram_size=2)[0]
    bigrams = list(zip(out, out[1:], strict=False))
    assert len(out) == 42 and len(set(bigrams)) == len(bigrams)


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
        generate(model, [1], opts(**{"max_new_tokens": 2, **kwargs}))


def test_bad_prompts_are_errors(model):
    with pytest.raises(GptkitError, match="no tokens"):
        generate(model, [], opts(max_new_tokens=2))
    with pytest.raises(GptkitError, match=f"token id {VOCAB} is outside"):
        generate(model, [1, VOCAB], opts(max_new_tokens=2))


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

    def forward(self, idx, targets=None, kv_cache: KVCache | None = None, **_):
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
    cfg = GenerationConfig(max_new_tokens=20, temperature=0, top_k=None, num_samples=2)
    texts = sample_text(text_model(), tok, "bad", cfg)
    ids = run(text_model(), tok.encode("bad"), max_new_tokens=20, temperature=0)[0][3:]
    new = ids[: ids.index(tok.eot_id)] if tok.eot_id in ids else ids
    assert texts == ["bad" + tok.decode(new)] * 2
    assert "<|endoftext|>" not in texts[0]


def test_sample_text_from_nothing_starts_at_eot():
    tok = CharTokenizer(ALPHABET)
    cfg = GenerationConfig(max_new_tokens=15, temperature=1.0, num_samples=3, seed=2)
    texts = sample_text(text_model(), tok, None, cfg)
    assert len(texts) == 3 and all(len(t) <= 15 for t in texts)
    assert all("<|endoftext|>" not in t for t in texts)
    assert texts == sample_text(text_model(), tok, None, cfg)


def test_sample_text_errors():
    cfg = GenerationConfig(max_new_tokens=5)
    with pytest.raises(GptkitError, match="no end-of-text"):
        sample_text(text_model(), CharTokenizer(ALPHABET, eot=False), None, cfg)
    with pytest.raises(GptkitError, match="encodes to no tokens"):
        sample_text(text_model(), CharTokenizer(ALPHABET), "", cfg)
    with pytest.raises(GptkitError, match="encodes to no tokens"):
        sample_text(text_model(), CharTokenizer(ALPHABET), "XYZ", cfg)


def test_streamed_pieces_join_to_the_returned_texts():
    tok = CharTokenizer(ALPHABET)
    cfg = GenerationConfig(max_new_tokens=30, temperature=1.0, num_samples=3, seed=5)
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
    cfg = GenerationConfig(max_new_tokens=50, temperature=0, top_k=None)
    texts = sample_text(model, tok, prompt, cfg, stream=lambda i, p: pieces.append(p))
    assert texts == ["éné€!"]
    assert pieces == ["é", "n", "é", "€", "!"]


def test_streaming_flushes_an_unfinished_character_at_the_end():
    script = [ord("a"), 0xE2, 0x82]  # "a" then two of the three bytes of "€"
    model = ScriptedGPT(script, prompt_len=1)
    pieces: list[str] = []
    cfg = GenerationConfig(max_new_tokens=3, temperature=0, top_k=None)
    texts = sample_text(model, ByteTokenizer(), "x", cfg, stream=lambda i, p: pieces.append(p))
    assert texts == ["xa\ufffd"]
    assert "".join(pieces) == texts[0] and pieces[:2] == ["x", "a"]


# ---------------------------------------------------------------- more processors


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_scores():
    scores = torch.tensor([[2.0, -2.0, 4.0, -1.0]])
    seen = torch.tensor([[0, 1, 1]])  # id 0 twice: penalised once
    out = RepetitionPenaltyLogitsProcessor(2.0)(seen, scores)
    assert out.tolist() == [[1.0, -4.0, 4.0, -1.0]]
    assert RepetitionPenaltyLogitsProcessor(0.5)(seen, scores).tolist() == [[4.0, -1.0, 4.0, -1.0]]
    skip_first = RepetitionPenaltyLogitsProcessor(2.0, torch.tensor([2]))(seen, scores)
    assert skip_first.tolist() == [[2.0, -4.0, 4.0, -1.0]]  # the padding (id 0) is not penalised


def test_no_repeat_ngram_bans_what_would_repeat_an_ngram():
    ids = torch.tensor([[1, 2, 3, 2, 1, 2]])
    scores = torch.zeros(1, 5)
    assert keep(NoRepeatNGramLogitsProcessor(3)(ids, scores)) == [0, 1, 2, 4]  # not 1 2 3 again
    assert keep(NoRepeatNGramLogitsProcessor(2)(ids, scores)) == [0, 2, 4]  # not 2 3, not 2 1
    assert keep(NoRepeatNGramLogitsProcessor(1)(ids, scores)) == [0, 4]  # nothing seen
    assert keep(NoRepeatNGramLogitsProcessor(7)(ids, scores)) == [0, 1, 2, 3, 4]


def test_bad_words_ban_tokens_and_phrase_endings_but_never_eos():
    words = [[3], [1, 2], [4]]
    scores = torch.zeros(2, 5)
    ids = torch.tensor([[0, 1], [1, 0]])
    out = NoBadWordsLogitsProcessor(words, eos_token_id=4)(ids, scores)
    assert keep(out[:1]) == [0, 1, 4] and keep(out[1:]) == [0, 1, 2, 4]
    with pytest.raises(GptkitError, match="outside the vocabulary"):
        NoBadWordsLogitsProcessor([[7]])(ids, scores)
    with pytest.raises(GptkitError, match="non-empty"):
        NoBadWordsLogitsProcessor([[]])


def test_min_new_tokens_hides_eot_until_enough_new_tokens():
    processor = MinNewTokensLengthLogitsProcessor(3, 2, eos_token_id=1)
    scores = torch.zeros(1, 3)
    assert keep(processor(torch.zeros(1, 4, dtype=torch.long), scores)) == [0, 2]
    assert keep(processor(torch.zeros(1, 5, dtype=torch.long), scores)) == [0, 1, 2]


def test_typical_keeps_tokens_closest_to_the_entropy():
    # p = 0.5, 0.25, 0.125, 0.125: entropy 1.75 bits; surprises 1, 2, 3, 3 bits
    scores = torch.tensor([[0.5, 0.25, 0.125, 0.125]]).log()
    assert keep(TypicalLogitsWarper(0.2)(None, scores)) == [1]  # 2 bits is closest, not the top
    assert keep(TypicalLogitsWarper(0.5)(None, scores)) == [0, 1]
    with pytest.raises(GptkitError, match="typical_p"):
        TypicalLogitsWarper(1.0)


def test_full_chain_follows_transformers_order():
    chain = build_processors(
        0.5, 3, 0.9, typical_p=0.9, repetition_penalty=1.1, no_repeat_ngram_size=2,
        bad_words_ids=[[1]], min_new_tokens=2, eos_token_id=0,
    )
    assert [type(p).__name__ for p in chain] == [
        "RepetitionPenaltyLogitsProcessor", "NoRepeatNGramLogitsProcessor",
        "NoBadWordsLogitsProcessor", "MinNewTokensLengthLogitsProcessor",
        "TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "TypicalLogitsWarper",
    ]
    greedy = build_processors(0.0, 3, 0.9, typical_p=0.9, repetition_penalty=1.1)
    assert [type(p).__name__ for p in greedy] == ["RepetitionPenaltyLogitsProcessor"]
    assert len(build_processors(min_new_tokens=3)) == 0  # needs an end-of-text token


# ---------------------------------------------------------------- batches and constraints


def strip(row: list[int], pad: int) -> list[int]:
    """A row without its left padding."""
    i = 0
    while row[i] == pad:
        i += 1
    return row[i:]


@pytest.mark.parametrize(
    "settings",
    [{}, {"repetition_penalty": 1.5, "bad_words_ids": [[3, 3]], "min_new_tokens": 4}],
    ids=str,
)
def test_left_padded_batch_equals_prompts_one_by_one(model, settings):
    prompts = [[1, 2, 3, 4, 5, 6], [7], [8, 9, 10]]
    eot = VOCAB - 1  # also the padding
    batch = run(model, prompts, max_new_tokens=8, temperature=0, eot_id=eot, **settings)
    for prompt, row in zip(prompts, batch, strict=True):
        alone = run(model, prompt, max_new_tokens=8, temperature=0, eot_id=eot, **settings)[0]
        assert strip(row, eot)[: len(alone)] == alone
        assert all(t == eot for t in strip(row, eot)[len(alone) :])


def test_batched_samples_stay_with_their_prompt_and_reproduce(model):
    args = {"max_new_tokens": 6, "num_samples": 3, "seed": 4}
    out = run(model, [[1, 2], [3, 4, 5]], **args)
    assert len(out) == 6 and [r[:3] for r in out] == [[0, 1, 2]] * 3 + [[3, 4, 5]] * 3
    assert run(model, [[1, 2], [3, 4, 5]], **args) == out
    steps = list(generate_tokens(model, [[1, 2], [3, 4, 5]], opts(**args)))
    assert len(steps) == 6 and steps[0].shape == (6,)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_output_has_no_repeated_ngram(model, n):
    out = run(model, [5, 6], max_new_tokens=12, temperature=0, no_repeat_ngram_size=n)[0]
    ngrams = [tuple(out[i : i + n]) for i in range(len(out) - n + 1)]
    assert len(ngrams) == len(set(ngrams))
    free = run(model, [5, 6], max_new_tokens=12, temperature=0)[0]
    assert len({tuple(free[i : i + n]) for i in range(len(free) - n + 1)}) < len(free) - n + 1


def test_bad_words_never_appear_and_min_new_tokens_delays_eot(model):
    free = run(model, [5], max_new_tokens=12, temperature=0)[0][1:]
    banned = run(model, [5], max_new_tokens=12, temperature=0, bad_words_ids=[[free[0]]])[0]
    assert free[0] not in banned[1:]
    eot = free[0]
    assert run(model, [5], max_new_tokens=12, temperature=0, eot_id=eot) == [[5, eot]]
    late = run(model, [5], max_new_tokens=12, temperature=0, eot_id=eot, min_new_tokens=4)[0]
    assert eot not in late[1:5]


def test_repetition_penalty_reduces_repeats(model):
    free = run(model, [5], max_new_tokens=15, temperature=0)[0]
    penalised = run(model, [5], max_new_tokens=15, temperature=0, repetition_penalty=3.0)[0]
    assert len(set(penalised)) > len(set(free))


# ---------------------------------------------------------------- beam search


@pytest.mark.parametrize("max_new_tokens", [6, 30], ids=["in-context", "sliding"])
def test_beam_search_cached_equals_uncached(model, max_new_tokens):
    args = {"max_new_tokens": max_new_tokens, "num_beams": 3, "num_samples": 2,
            "length_penalty": 0.7}
    cached = beam_search(model, [[1, 2, 3], [4]], beam_opts(**args), eot_id=0)
    uncached = beam_search(model, [[1, 2, 3], [4]], beam_opts(**args), eot_id=0, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.scores, uncached.scores)


def test_beam_search_returns_best_first_and_beats_greedy(model):
    out = beam_search(model, [7, 8], beam_opts(max_new_tokens=6, num_beams=4, num_samples=4))
    assert out.sequences.shape == (4, 8)
    assert out.scores.tolist() == sorted(out.scores.tolist(), reverse=True)
    greedy = run(model, [7, 8], max_new_tokens=6, temperature=0)[0]
    with torch.no_grad():
        logits = model(torch.tensor([greedy[:-1]]))[0][0].log_softmax(-1)
    greedy_score = sum(float(logits[i + 1, greedy[i + 2]]) for i in range(6)) / 6
    assert float(out.scores[0]) >= greedy_score - 1e-6
    assert out.new_tokens == [row[2:] for row in out.sequences.tolist()]


def test_beam_sampling_reproduces_and_explains_too_narrow_filters(model):
    args = {"max_new_tokens": 6, "num_beams": 2, "num_samples": 2, "temperature": 1.0}
    first = beam_search(model, [[1, 2], [3]], beam_opts(seed=3, **args))
    again = beam_search(model, [[1, 2], [3]], beam_opts(seed=3, **args))
    assert torch.equal(first.sequences, again.sequences)
    with pytest.raises(GptkitError, match="2 x num_beams"):
        beam_search(model, [1, 2],
                    beam_opts(max_new_tokens=4, num_beams=3, temperature=1.0, top_k=2))


def test_beam_search_stop_rule_finishes_hypotheses(model):
    seen: list[list[int]] = []

    def three(ids: list[int]) -> bool:
        seen.append(ids)
        return len(ids) >= 3

    out = beam_search(model, [[7, 8], [1]],
                      beam_opts(max_new_tokens=8, num_beams=2, num_samples=2), stop=three)
    assert [len(t) for t in out.new_tokens] == [3] * 4 and out.sequences.shape == (4, 5)
    assert {len(ids) for ids in seen} == {1, 2, 3}  # told each candidate's new tokens


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_beams": 0}, "num_beams"),
        ({"num_beams": 2, "num_samples": 3}, "num_samples"),
        ({"num_beams": 2, "early_stopping": "sometimes"}, "early_stopping"),
        ({"num_beams": 2, "length_penalty": math.inf}, "length_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
        ({"typical_p": 0.0}, "typical_p"),
        ({"min_new_tokens": -2}, "min_new_tokens"),
    ],
)
def test_bad_generation_settings_are_errors(model, kwargs, match):
    with pytest.raises(GptkitError, match=match):
        generate(model, [1], opts(**{"max_new_tokens": 2, **kwargs}))


# ---------------------------------------------------------------- text: batches, stops, beams


def test_sample_text_takes_a_batch_of_prompts():
    tok = CharTokenizer(ALPHABET)
    cfg = GenerationConfig(max_new_tokens=12, temperature=0, top_k=None, num_samples=2)
    texts = sample_text(text_model(), tok, ["bad", "h", "ace ace"], cfg)
    alone = [sample_text(text_model(), tok, p, cfg)[0] for p in ("bad", "h", "ace ace")]
    assert texts == [t for t in alone for _ in range(2)]


def test_stop_strings_cut_the_text_before_them():
    tok = CharTokenizer(ALPHABET)
    # min_new_tokens: 20 characters to cut (left free, this model ends after one)
    cfg = GenerationConfig(max_new_tokens=20, min_new_tokens=20, temperature=0, top_k=None)
    free = sample_text(text_model(), tok, "bad", cfg)[0][3:]
    stop = free[4:6]
    assert len(stop) == 2
    cut = free[: free.index(stop)]
    cfg = cfg.replace(stop=[stop, "zz"])
    pieces: list[str] = []
    texts = sample_text(text_model(), tok, "bad", cfg, stream=lambda i, p: pieces.append(p))
    assert texts == ["bad" + cut] and "".join(pieces) == texts[0]


def test_streaming_holds_back_what_may_start_a_stop_string():
    script = [ord(c) for c in "ab\ncd\n"] + [ord("\n"), ord("e"), 256]
    model = ScriptedGPT(script, prompt_len=1)
    pieces: list[str] = []
    cfg = GenerationConfig(max_new_tokens=50, temperature=0, top_k=None, stop=["\n\n"])
    texts = sample_text(model, ByteTokenizer(), "x", cfg, stream=lambda i, p: pieces.append(p))
    assert texts == ["xab\ncd"]
    assert pieces == ["x", "a", "b", "\nc", "d"]  # each "\n" waited for the next character


def test_sample_text_bans_words():
    tok = CharTokenizer(ALPHABET)
    cfg = GenerationConfig(max_new_tokens=30, temperature=1.5, top_k=None, num_samples=4, seed=1)
    free = "".join(sample_text(text_model(), tok, "a", cfg))
    word = max(set(free[1:]) - {"\n", " "}, key=free.count)
    cfg = cfg.replace(bad_words=[word, "hh"])
    texts = sample_text(text_model(), tok, "a", cfg)
    assert all(word not in t[1:] and "hh" not in t for t in texts)
    assert bad_words_ids(tok, ["ab", " c"]) == [[0, 1], [8, 0, 1], [8, 2]]
    with pytest.raises(GptkitError, match="encodes to no tokens"):
        bad_words_ids(tok, ["XYZ"])


def test_sample_text_with_beams_stops_and_streams():
    tok = CharTokenizer(ALPHABET)
    cfg = GenerationConfig(max_new_tokens=12, temperature=0, top_k=None, num_beams=3, num_samples=2)
    texts = sample_text(text_model(), tok, ["bad", "ce"], cfg)
    assert len(texts) == 4 and texts[0].startswith("bad") and texts[2].startswith("ce")
    cfg = cfg.replace(stop=[texts[0][4:6]])
    pieces: dict[int, list[str]] = {i: [] for i in range(4)}
    stopped = sample_text(text_model(), tok, ["bad", "ce"], cfg,
                          stream=lambda i, p: pieces[i].append(p))
    heads = ["bad"] * 2 + ["ce"] * 2
    assert all(cfg.stop[0] not in t[len(h) :] for t, h in zip(stopped, heads, strict=True))
    assert stopped[0] != texts[0]  # whose continuation held the stop string
    assert ["".join(pieces[i]) for i in range(4)] == stopped


# ---------------------------------------------------------------- settings


def test_sample_settings_parse_from_recipes_and_overrides():
    cfg = load_config("shakespeare-char", [
        "sample.min_new_tokens=3", "sample.typical_p=0.9", "sample.repetition_penalty=1.2",
        "sample.no_repeat_ngram_size=3", "sample.bad_words=[foo, bar baz]", "sample.stop=END",
        "sample.num_beams=4", "sample.num_samples=2", "sample.length_penalty=-0.5",
        "sample.early_stopping=never",
    ]).sample
    assert (cfg.min_new_tokens, cfg.typical_p, cfg.repetition_penalty) == (3, 0.9, 1.2)
    assert cfg.bad_words == ["foo", "bar baz"] and cfg.stop == ["END"]
    assert (cfg.num_beams, cfg.length_penalty, cfg.early_stopping) == (4, -0.5, "never")
    for text, value in [("true", True), ("false", False), ("never", "never")]:
        cfg = load_config(overrides=[f"sample.early_stopping={text}"]).sample
        assert cfg.early_stopping == value


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sample.min_new_tokens=-1", "sample.min_new_tokens must be >= 0"),
        ("sample.typical_p=1.5", "sample.typical_p must be in (0, 1]"),
        ("sample.repetition_penalty=0", "sample.repetition_penalty must be > 0"),
        ("sample.no_repeat_ngram_size=-3", "sample.no_repeat_ngram_size must be >= 0"),
        ("sample.num_beams=0", "sample.num_beams must be >= 1"),
        ("sample.early_stopping=maybe", "sample.early_stopping must be true, false or never"),
        ("sample.length_penalty=nan", "sample.length_penalty must be a finite number"),
        ("sample.stop=['']", "sample.stop must be a list of non-empty strings"),
        ("sample.bad_words=[a, '']", "sample.bad_words must be a list of non-empty strings"),
        ("sample.stop=[a", "sample.stop must be a list"),
    ],
)
def test_bad_sample_settings_name_the_key_and_range(override, message):
    with pytest.raises(GptkitError, match=re.escape(message)):
        load_config(overrides=[override])


def test_a_temperature_too_small_to_divide_by_takes_its_limit():
    scores = torch.tensor([[1.0, 3.0, -math.inf, 2.0], [0.5, -0.25, 0.0, 0.0]])
    for tiny in (1e-320, 1e-45):  # 0 in float32, and its smallest positive number
        warped = TemperatureLogitsWarper(tiny)(torch.zeros(2, 1), scores)
        assert warped.isfinite().sum() == 2 and not warped.isnan().any()
        assert warped.argmax(dim=-1).tolist() == [1, 0]
        assert warped.softmax(dim=-1).max(dim=-1).values.tolist() == [1.0, 1.0]
    # a temperature the division survives is divided by, exactly as before
    assert torch.equal(TemperatureLogitsWarper(1e-3)(torch.zeros(2, 1), scores), scores / 1e-3)
