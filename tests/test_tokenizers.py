from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptkit.config import DataConfig
from gptkit.errors import GptkitError
from gptkit.tokenizers import EOT, UNK, Tokenizer, build_tokenizer, training_pieces

ALPHABET = "ab c\n\r\t.,'1中文字😀é"
CHINESE = "床前明月光，疑是地上霜。\n举头望明月，低头思故乡。\n" * 20
ENGLISH = "The quick brown fox jumps over the lazy dog.\n  Tabs\tand  spaces\n\n" * 20
# any text that can be UTF-8 encoded (no lone surrogates)
ANY_TEXT = st.text(st.characters(blacklist_categories=("Cs",)))


@pytest.fixture(scope="module")
def char() -> Tokenizer:
    return Tokenizer.train_char([ALPHABET])


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer.train_bpe([ENGLISH, CHINESE], vocab_size=400)


def with_eot(alphabet: str) -> st.SearchStrategy[str]:
    """Texts over `alphabet` with the EOT string mixed in."""
    return st.lists(st.one_of(st.text(st.sampled_from(alphabet)), st.just(EOT))).map("".join)


# whitespace runs, Unicode spaces, newlines, contractions and EOT: where cuts could go wrong
TRICKY = with_eot(" \n\r\t\u3000\u00a0\x1cab1.'s中😀")


@given(text=with_eot(ALPHABET))
def test_char_round_trip(char, text):
    ids = char.encode(text)
    assert char.decode(ids) == text
    assert len(ids) == len(text.replace(EOT, "x"))  # one id per character, EOT is one


@given(text=st.one_of(ANY_TEXT, TRICKY, with_eot("中文 😀\n\t ")))
def test_bpe_round_trip(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


@settings(max_examples=300)
@given(text=TRICKY, max_chars=st.integers(1, 8))
def test_pieces_encode_like_the_whole(bpe, text, max_chars):
    char = Tokenizer.train_char([text + "x"])
    for tok in (bpe, char):
        pieces = tok.split_text(text, max_chars)
        assert "".join(pieces) == text
        assert [i for ids in tok.encode_batch(pieces) for i in ids] == tok.encode(text)


def chunked(text: str, sizes: list[int]) -> list[str]:
    """`text` cut into chunks of the given sizes (cycled), the way a file is read."""
    chunks, start, i = [], 0, 0
    while start < len(text):
        size = sizes[i % len(sizes)] if sizes else len(text)
        chunks.append(text[start : start + size])
        start, i = start + size, i + 1
    return chunks


@settings(max_examples=300)
@given(text=TRICKY, max_chars=st.integers(1, 8), sizes=st.lists(st.integers(1, 20), max_size=4))
def test_streamed_pieces_encode_like_the_whole(bpe, text, max_chars, sizes):
    char = Tokenizer.train_char([text + "x"])
    for tok in (bpe, char):
        pieces = list(tok.split_stream(iter(chunked(text, sizes)), max_chars))
        assert "".join(pieces) == text
        assert [i for ids in tok.encode_batch(pieces) for i in ids] == tok.encode(text)
    pieces = list(training_pieces(chunked(text, sizes), max_chars))
    assert "".join(pieces) == text
    # every cut ends a pre-token whatever follows: words are counted as in the whole text
    words = bpe.backend.pre_tokenizer.pre_tokenize_str
    assert [w for p in pieces for w, _ in words(p)] == [w for w, _ in words(text)]


def test_streamed_pieces_stay_small_and_train_the_same_bpe():
    chunks = chunked(ENGLISH * 50, [999, 4096, 7])
    pieces = list(Tokenizer.train_bpe([ENGLISH], 300).split_stream(iter(chunks), 500))
    assert len(pieces) > 50 and max(map(len, pieces)) < 600
    whole = Tokenizer.train_bpe([ENGLISH * 50, CHINESE], 400)
    streamed = Tokenizer.train_bpe(
        [*training_pieces(iter(chunks), 300), *training_pieces([CHINESE], 300)], 400)
    assert streamed.sha256() == whole.sha256()


def test_char_vocabulary_is_sorted_characters_then_specials(char):
    chars = sorted(set(ALPHABET))
    assert char.kind == "char"
    assert char.vocab_size == len(chars) + 2
    assert [char.encode(c)[0] for c in chars] == list(range(len(chars)))
    assert char.eot_id == len(chars)
    assert char.encode(EOT) == [len(chars)]
    assert char.backend.token_to_id(UNK) == len(chars) + 1


def test_char_unknown_characters_become_unk(char):
    unk = char.backend.token_to_id(UNK)
    assert char.encode("aZb∑") == [char.encode("a")[0], unk, char.encode("b")[0], unk]
    assert char.decode(char.encode("aZ")) == "a" + UNK


def test_decode_joins_without_spaces(char, bpe):
    assert char.decode(char.encode("ab c\n")) == "ab c\n"
    assert bpe.decode(bpe.encode_batch(["fox", " jumps"])[0] + bpe.encode(" jumps")) == "fox jumps"


def test_chinese_corpus_trains_both_kinds():
    char = Tokenizer.train_char([CHINESE])
    bpe = Tokenizer.train_bpe([CHINESE], vocab_size=300)
    assert char.vocab_size == len(set(CHINESE)) + 2
    assert bpe.vocab_size > 257  # learned merges beyond the 256 bytes and EOT
    line = "举头望明月，低头思故乡。\n"
    assert len(bpe.encode(line)) < len(line.encode("utf-8"))
    for tok in (char, bpe):
        assert tok.decode(tok.encode(CHINESE)) == CHINESE


def test_bpe_is_byte_level_with_eot(bpe):
    assert bpe.kind == "bpe"
    assert bpe.encode(EOT) == [bpe.eot_id]
    assert bpe.decode(bpe.encode("ünïcödé ∀ 𝔘 " + EOT)) == "ünïcödé ∀ 𝔘 " + EOT  # unseen


def test_save_load_identity(tmp_path, char, bpe):
    for tok in (char, bpe):
        path = tmp_path / tok.kind / "tokenizer.json"
        tok.save(path)
        loaded = Tokenizer.load(path)
        assert loaded.sha256() == tok.sha256()
        assert (loaded.kind, loaded.vocab_size, loaded.eot_id) == (tok.kind, tok.vocab_size,
                                                                    tok.eot_id)
        assert loaded.encode(ALPHABET + EOT) == tok.encode(ALPHABET + EOT)
        assert loaded.split_text("a \n b" * 10, 3) == tok.split_text("a \n b" * 10, 3)


def test_gpt2_files_vocab_and_merges(tmp_path, bpe):
    bpe.backend.model.save(str(tmp_path))  # writes vocab.json and merges.txt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merges.txt", "vocab.json"]
    gpt2 = Tokenizer.from_gpt2_files(tmp_path)
    text = ENGLISH + EOT + CHINESE
    assert gpt2.kind == "bpe"
    assert (gpt2.vocab_size, gpt2.eot_id) == (bpe.vocab_size, bpe.eot_id)
    assert gpt2.encode(text) == bpe.encode(text)
    assert gpt2.decode(gpt2.encode(text)) == text


def test_gpt2_files_tokenizer_json(tmp_path, bpe):
    bpe.save(tmp_path / "tokenizer.json")
    for path in (tmp_path, tmp_path / "tokenizer.json"):
        assert Tokenizer.from_gpt2_files(path).encode(ENGLISH) == bpe.encode(ENGLISH)


def test_gpt2_files_missing_names_the_files(tmp_path):
    with pytest.raises(GptkitError, match="tokenizer.json.*vocab.json and merges.txt"):
        Tokenizer.from_gpt2_files(tmp_path)
    (tmp_path / "vocab.json").write_text("{not json")
    (tmp_path / "merges.txt").write_text("")
    with pytest.raises(GptkitError, match="vocab.json"):
        Tokenizer.from_gpt2_files(tmp_path)


def test_bad_or_missing_tokenizer_json(tmp_path):
    with pytest.raises(GptkitError, match="does not exist"):
        Tokenizer.load(tmp_path / "none.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text(json.dumps({"model": "nope"}))
    with pytest.raises(GptkitError, match="not a valid tokenizer.json"):
        Tokenizer.load(bad)


def test_build_tokenizer_by_config(tmp_path, bpe):
    texts = [ENGLISH]
    assert build_tokenizer(DataConfig(tokenizer="char"), texts).kind == "char"
    trained = build_tokenizer(DataConfig(tokenizer="bpe", vocab_size=300), texts)
    assert trained.kind == "bpe" and trained.vocab_size == 300
    bpe.save(tmp_path / "tokenizer.json")
    gpt2 = build_tokenizer(DataConfig(tokenizer="gpt2", tokenizer_path=str(tmp_path)), [])
    assert gpt2.sha256() == bpe.sha256()
    # no path, nothing in the data root, and downloads are off in tests
    with pytest.raises(GptkitError, match="tokenizer_path"):
        build_tokenizer(DataConfig(tokenizer="gpt2"), [], data_dir=tmp_path / "root")


def test_unknown_tokenizer_keeps_whole_texts(bpe):
    """A tokenizer.json we cannot cut safely (here: with a normalizer) is never cut."""
    from tokenizers import normalizers

    backend = Tokenizer.train_bpe([ENGLISH], 300).backend
    backend.normalizer = normalizers.Lowercase()
    text = "A \n B \n C \n" * 10
    assert Tokenizer(backend).split_text(text, 2) == [text]
    assert len(bpe.split_text(text, 2)) > 1



@given(st.lists(st.one_of(ANY_TEXT, st.sampled_from(ALPHABET), st.just(EOT), st.just(UNK)),
                max_size=8))
@settings(max_examples=200, deadline=None)
def test_char_fast_path_encodes_exactly_like_the_hf_tokenizer(char, parts):
    """The numpy lookup that encodes char text gives HF's ids: unknown characters, EOT in the
    text and the unknown token's own spelling included."""
    text = "".join(parts)
    expected = char.backend.encode(text, add_special_tokens=False).ids
    assert char._char_table is not None
    assert char.encode(text) == expected
    assert [a.tolist() for a in char.encode_arrays([text, text[:3]])] == [
        expected, char.backend.encode(text[:3], add_special_tokens=False).ids]
