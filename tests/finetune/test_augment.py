"""Augmentation of training examples: seeded per example, each op does what it says."""

from __future__ import annotations

import re

import pytest

from gptkit.errors import GptkitError
from gptkit.finetune.augment import Augmenter, parse_spec

TEXT = ("The film was great. We saw it with friends on Sunday! Was the ending too long? "
        "The music was lovely and the actors were superb.")
IDS = list(range(2, 200))
EOT = 0


def words(text: str) -> list[str]:
    return text.split()


def is_subsequence(small: list, big: list) -> bool:
    it = iter(big)
    return all(any(x == y for y in it) for x in small)


@pytest.mark.parametrize("spec", ["word_swap=0.3", "word_delete=0.3", "sentence_shuffle",
                                  "token_dropout=0.3", "token_noise=0.3"])
def test_same_seed_and_key_give_the_same_result_whatever_the_call_order(spec):
    a = Augmenter([spec], seed=7, vocab_size=256, special_ids=[EOT])
    b = Augmenter([spec], seed=7, vocab_size=256, special_ids=[EOT])
    keys = [(0, i) for i in range(20)]
    first = [(a.text(TEXT, k), tuple(a.tokens(IDS, k))) for k in keys]
    backwards = [(b.text(TEXT, k), tuple(b.tokens(IDS, k))) for k in reversed(keys)][::-1]
    assert first == backwards
    # different keys (examples, epochs) and seeds give different perturbations
    assert len(set(first)) >= 10  # (4 sentences have 24 orders)
    other_seed = Augmenter([spec], seed=8, vocab_size=256, special_ids=[EOT])
    assert [(other_seed.text(TEXT, k), tuple(other_seed.tokens(IDS, k)))
            for k in keys] != first
    assert a.text(TEXT, (1, 0)) != a.text(TEXT, (0, 0)) or a.tokens(IDS, (1, 0)) != a.tokens(
        IDS, (0, 0))


def test_probability_zero_and_no_specs_change_nothing():
    zero = Augmenter(["word_swap=0", "word_delete=0", "sentence_shuffle=0", "token_dropout=0",
                      "token_noise=0"], seed=1, vocab_size=256)
    assert not zero.enabled and zero.names == ()
    assert not Augmenter([], seed=1).enabled
    for i in range(10):
        assert zero.text(TEXT, (0, i)) == TEXT
        assert zero.tokens(IDS, (0, i)) == IDS
    assert Augmenter(["word_swap=0.1"], seed=1).enabled


def test_token_dropout_drops_about_p_keeps_order_and_special_ids():
    aug = Augmenter(["token_dropout=0.3"], seed=3, special_ids=[EOT])
    ids = [EOT, *IDS, EOT]
    kept = 0
    for i in range(50):
        out = aug.tokens(ids, (0, i))
        assert is_subsequence(out, ids) and out[0] == EOT and out[-1] == EOT
        kept += len(out) - 2
    assert kept / (50 * len(IDS)) == pytest.approx(0.7, abs=0.03)
    # p=1 never empties the example: one content token survives, special ids stay
    out = Augmenter(["token_dropout=1"], seed=3, special_ids=[EOT]).tokens(ids, (0, 0))
    assert len(out) == 3 and out[0] == out[-1] == EOT and out[1] in IDS


def test_token_noise_replaces_about_p_within_the_vocabulary_never_with_special_ids():
    aug = Augmenter(["token_noise=0.25"], seed=3, vocab_size=200, special_ids=[EOT, 1])
    ids = [EOT, *IDS, 1]
    changed = 0
    for i in range(50):
        out = aug.tokens(ids, (0, i))
        assert len(out) == len(ids) and out[0] == EOT and out[-1] == 1
        assert all(2 <= t < 200 for t in out[1:-1])  # never a special id, always in range
        changed += sum(a != b for a, b in zip(out, ids, strict=True))
    # a replacement draws the same id again 1 time in 198
    assert changed / (50 * len(IDS)) == pytest.approx(0.25 * 197 / 198, abs=0.03)
    full = Augmenter(["token_noise=1"], seed=3, vocab_size=200, special_ids=[EOT, 1])
    assert sum(a == b for a, b in zip(full.tokens(IDS, (0, 0)), IDS, strict=True)) < 5


def test_word_swap_swaps_neighbours_and_keeps_words_and_whitespace():
    assert Augmenter(["word_swap=1"], seed=0).text("a b  c\nd e", (0,)) == "b a  d\nc e"
    aug = Augmenter(["word_swap=0.2"], seed=5)
    moved = 0
    for i in range(50):
        out = aug.text(TEXT, (0, i))
        assert sorted(words(out)) == sorted(words(TEXT))
        assert re.findall(r"\s+", out) == re.findall(r"\s+", TEXT)
        moved += sum(a != b for a, b in zip(words(out), words(TEXT), strict=True))
    # each word starts a swap w.p. 0.2 unless its left neighbour did: ~1/3 of words move
    assert 0.2 < moved / (50 * len(words(TEXT))) < 0.45


def test_word_delete_deletes_about_p_and_never_every_word():
    aug = Augmenter(["word_delete=0.2"], seed=5)
    kept = 0
    for i in range(50):
        out = aug.text(TEXT, (0, i))
        assert is_subsequence(words(out), words(TEXT))
        assert "  " not in out and out == out.strip()
        kept += len(words(out))
    assert kept / (50 * len(words(TEXT))) == pytest.approx(0.8, abs=0.04)
    everything = Augmenter(["word_delete=1"], seed=5)
    for i in range(5):
        out = everything.text(TEXT, (0, i))
        assert len(words(out)) == 1 and out in words(TEXT)
    assert everything.text("", (0,)) == ""


def test_sentence_shuffle_reorders_whole_sentences():
    sentences = ["The film was great.", "We saw it with friends on Sunday!",
                 "Was the ending too long?", "The music was lovely and the actors were superb."]
    aug = Augmenter(["sentence_shuffle"], seed=2)
    orders = set()
    for i in range(30):
        out = aug.text(TEXT, (0, i))
        parts = re.split(r"(?<=[.!?]) ", out)
        assert sorted(parts) == sorted(sentences)
        orders.add(tuple(parts))
    assert len(orders) > 10
    assert aug.text("Just one sentence here.", (0, 0)) == "Just one sentence here."
    # quotes closing a sentence stay with it; surrounding whitespace stays in place
    moved = {aug.text(' "Hi." Bye! \n', (0, i)) for i in range(20)}
    assert moved == {' "Hi." Bye! \n', ' Bye! "Hi." \n'}
    assert Augmenter(["sentence_shuffle=0"], seed=2).text(TEXT, (0, 0)) == TEXT


def test_ops_run_in_the_listed_order():
    ids = list(range(2, 50))
    a = Augmenter(["token_noise=0.5", "token_dropout=0.5"], seed=1, vocab_size=60)
    b = Augmenter(["token_dropout=0.5", "token_noise=0.5"], seed=1, vocab_size=60)
    assert a.names == ("token_noise", "token_dropout")
    assert a.tokens(ids, (0, 0)) != b.tokens(ids, (0, 0))


@pytest.mark.parametrize(("spec", "match"), [
    ("word_shuffle=0.1", r"unknown augmentation 'word_shuffle=0.1'; valid names: "
                         r"sentence_shuffle, word_swap, word_delete, token_dropout, token_noise"),
    ("word_swap=1.5", r"'word_swap=1.5' needs a probability in \[0, 1\]"),
    ("word_swap=-0.1", r"needs a probability in \[0, 1\]"),
    ("word_swap=often", r"'word_swap=often' needs a probability"),
    ("word_swap=nan", r"needs a probability"),
    ("", r"unknown augmentation ''"),
])
def test_bad_specs_name_the_spec_and_the_valid_choices(spec, match):
    with pytest.raises(GptkitError, match=match) as info:
        Augmenter([spec], seed=0, vocab_size=10)
    assert "\n" not in str(info.value)


def test_duplicates_and_token_noise_without_a_vocabulary_are_errors():
    with pytest.raises(GptkitError, match="names word_swap twice"):
        Augmenter(["word_swap=0.1", "word_swap=0.2"], seed=0)
    with pytest.raises(GptkitError, match="token_noise needs the tokenizer's vocabulary"):
        Augmenter(["token_noise=0.1"], seed=0)
    assert parse_spec(" word_delete = 0.25 ") == ("word_delete", 0.25)
    assert parse_spec("token_noise") == ("token_noise", 0.1)
