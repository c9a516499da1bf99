from __future__ import annotations

import json
import os
import tracemalloc

import numpy as np
import pytest

from gptkit.config import DataConfig
from gptkit.data import prepare as prepare_module
from gptkit.data import sources
from gptkit.data.prepare import cache_dir, count_words, prepare
from gptkit.errors import GptkitError
from gptkit.tokenizers import UNK, Tokenizer

DOCS = ["First doc.\nTwo lines\n", "second  one 中文 😀\n", "third\n\n", "fourth, the val doc\n"]


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, doc in enumerate(DOCS):
        (folder / f"{i}.txt").write_text(doc, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def wikitext_bpe(tmp_path_factory):
    """BPE trained on WikiText-2 valid (the offline protocol), prepared once for the module."""
    if not os.path.isfile(os.path.join(os.environ["GPTKIT_DATA_DIR"], "wikitext-2",
                                       "wiki.valid.tokens")):
        pytest.skip("reference data not found; set GPTKIT_DATA_DIR")
    cfg = DataConfig(source="wikitext2", tokenizer="bpe", vocab_size=2048, train_split="valid",
                     eval_split="test")
    return cfg, prepare(cfg, cache=tmp_path_factory.mktemp("cache"))


def test_counts_and_token_stream(corpus, tmp_path):
    cfg = DataConfig(source=str(corpus), val_fraction=0.25)
    data = prepare(cfg, cache=tmp_path / "cache")
    tok, eot = data.tokenizer, data.tokenizer.eot_id
    assert (data.meta["format"], data.meta["source"], data.meta["tokenizer_kind"]) == (
        2, str(corpus), "char")
    assert (data.meta["vocab_size"], data.meta["eot_id"], data.meta["dtype"]) == (
        tok.vocab_size, eot, "uint16")
    for split, docs in (("train", DOCS[:3]), ("val", DOCS[3:])):
        expected = [i for doc in docs for i in [eot, *tok.encode(doc)]]
        assert data.tokens(split).tolist() == expected
        assert data.tokens(split).dtype == np.uint16
        assert data.split_meta(split) == {
            "tokens": sum(len(tok.encode(doc)) + 1 for doc in docs),
            "words": sum(len(doc.split()) + doc.count("\n") for doc in docs),
            "bytes": sum(len(doc.encode("utf-8")) for doc in docs),
            "characters": sum(len(doc) for doc in docs),
            "documents": len(docs),
        }
    meta = json.loads((data.path / "meta.json").read_text())
    assert meta["key"] == data.path.name
    assert meta["splits"]["val"]["shards"] == [
        {"file": "val-00000.bin", "tokens": data.split_meta("val")["tokens"], "offset": 0}]
    assert Tokenizer.load(data.path / "tokenizer.json").sha256() == tok.sha256()


def test_count_words_wikitext_convention():
    assert count_words([" = A = \n \n b c\n", "d"]) == 6 + 3


def test_uint32_for_large_vocabularies(corpus, tmp_path):
    alphabet = "".join(chr(c) for c in range(0x10000, 0x10000 + 70_000))  # beyond uint16
    big = Tokenizer.train_char([alphabet, *DOCS])
    assert big.vocab_size > 65536
    data = prepare(DataConfig(source=str(corpus)), tokenizer=big, cache=tmp_path / "cache")
    assert data.meta["dtype"] == "uint32" and data.tokens("train").dtype == np.uint32
    assert big.decode(data.tokens("val").tolist()) == "<|endoftext|>" + DOCS[-1]
    text = alphabet[-5:]
    assert max(big.encode(text)) > 65535 and big.decode(big.encode(text)) == text


def test_chunked_encoding_equals_whole_text(wikitext_bpe, data_dir, tmp_path, monkeypatch):
    cfg, data = wikitext_bpe
    tok = data.tokenizer
    text = (data_dir / "wikitext-2" / "wiki.valid.tokens").read_text(encoding="utf-8")
    whole = [tok.eot_id, *tok.encode(text)]
    assert data.tokens("valid").tolist() == whole
    assert tok.sha256() == Tokenizer.train_bpe([text], 2048).sha256()  # trained streaming
    monkeypatch.setattr(prepare_module, "PIECE_CHARS", 1000)  # many pieces and batches
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 100_000)
    monkeypatch.setattr(sources, "READ_BYTES", 30_000)  # read in many blocks
    assert len(tok.split_text(text, 1000)) > 500
    again = prepare(cfg, splits=["valid"], tokenizer=tok, cache=tmp_path)
    assert again.path.name == data.path.name  # same source and tokenizer: same key
    assert again.tokens("valid").tolist() == whole
    assert again.split_meta("valid")["words"] == 217_646


def test_wikitext_meta(wikitext_bpe):
    _, data = wikitext_bpe
    assert data.split_meta("valid")["words"] == 217_646
    assert data.split_meta("test")["words"] == 245_569
    assert data.split_meta("test")["bytes"] == 1_256_449
    assert data.meta["tokenizer_kind"] == "bpe" and data.meta["vocab_size"] == 2048


def test_cache_is_reused(corpus, tmp_path, monkeypatch):
    cfg = DataConfig(source=str(corpus), tokenizer="bpe", vocab_size=300)
    first = prepare(cfg, cache=tmp_path)
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.path.iterdir()}

    def forbidden(*args, **kwargs):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(Tokenizer, "encode_arrays", forbidden)
    monkeypatch.setattr(Tokenizer, "train_bpe", forbidden)
    second = prepare(cfg, cache=tmp_path)
    assert second.path == first.path and second.meta == first.meta
    assert second.tokenizer.sha256() == first.tokenizer.sha256()
    assert {p.name: p.stat().st_mtime_ns for p in second.path.iterdir()} == mtimes
    assert prepare(cfg, splits=["val"], cache=tmp_path).path == first.path
    # a run's own tokenizer (resume, eval) finds the data prepared when it was trained
    assert prepare(cfg, tokenizer=Tokenizer.load(first.path / "tokenizer.json"),
                   cache=tmp_path).path == first.path


def test_missing_splits_are_added_and_changed_files_rebuilt(data_dir, tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "wikitext-2").mkdir(parents=True)
    for split in ("valid", "test"):
        (root / "wikitext-2" / f"wiki.{split}.tokens").write_text(f" = {split} = \n words \n")
    cfg = DataConfig(source="wikitext2", train_split="valid", eval_split="test")
    encoded: list[list[str]] = []
    real = Tokenizer.encode_arrays
    monkeypatch.setattr(Tokenizer, "encode_arrays",
                        lambda self, texts: encoded.append(list(texts)) or real(self, texts))
    first = prepare(cfg, splits=["valid"], data_dir=root, cache=tmp_path)
    assert list(first.meta["splits"]) == ["valid"] and len(encoded) == 1
    both = prepare(cfg, data_dir=root, cache=tmp_path)
    assert both.path == first.path and list(both.meta["splits"]) == ["valid", "test"]
    assert encoded[1] == [" = test = \n words \n"]  # only the missing split was encoded
    (root / "wikitext-2" / "wiki.test.tokens").write_text(" = changed = \n")
    changed = prepare(cfg, data_dir=root, cache=tmp_path)
    assert changed.path == first.path and encoded[2] == [" = changed = \n"]
    assert changed.split_meta("test")["words"] == 4


def test_tokenizer_learns_from_the_train_split_only(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat\n" * 90 + "zyzzyva Ω zyzzyva\n" * 10)
    cfg = DataConfig(source=str(corpus), tokenizer="char")
    char = prepare(cfg, cache=tmp_path / "cache")
    assert not {"Ω", "z"} & set(char.tokenizer.backend.get_vocab())
    unk = char.tokenizer.backend.token_to_id(UNK)
    assert unk in char.tokens("val").tolist() and unk not in char.tokens("train").tolist()
    bpe = prepare(DataConfig(source=str(corpus), tokenizer="bpe", vocab_size=400),
                  cache=tmp_path / "cache")
    vocab = bpe.tokenizer.backend.get_vocab()
    assert "Ġcat" in vocab and not any("zz" in token for token in vocab)
    assert bpe.tokenizer.decode(bpe.tokens("val").tolist()).endswith("zyzzyva Ω zyzzyva\n")


def test_given_tokenizer_and_gpt2_files(corpus, tmp_path):
    tok = Tokenizer.train_bpe(DOCS, 300)
    tok.save(tmp_path / "gpt2" / "tokenizer.json")
    given = prepare(DataConfig(source=str(corpus)), splits=["val"], tokenizer=tok,
                    cache=tmp_path / "cache")
    assert given.tokenizer is tok and list(given.meta["splits"]) == ["val"]
    cfg = DataConfig(source=str(corpus), tokenizer="gpt2", tokenizer_path=str(tmp_path / "gpt2"))
    gpt2 = prepare(cfg, cache=tmp_path / "cache")
    assert gpt2.path == given.path  # same tokenizer, same source: same cache folder
    assert gpt2.tokens("val").tolist() == given.tokens("val").tolist()


def test_errors(corpus, tmp_path):
    data = prepare(DataConfig(source=str(corpus)), splits=["train"], cache=tmp_path)
    with pytest.raises(GptkitError, match="split 'val' was not prepared"):
        data.tokens("val")
    with pytest.raises(GptkitError, match="no split 'test'"):
        prepare(DataConfig(source=str(corpus)), splits=["test"], cache=tmp_path)


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTKIT_CACHE_DIR", str(tmp_path / "env"))
    assert cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert cache_dir() == tmp_path / "env"
    monkeypatch.delenv("GPTKIT_CACHE_DIR")
    assert cache_dir().parts[-3:] == (".cache", "gptkit", "prepared")


def test_shards_of_bounded_size_read_as_one_file(corpus, tmp_path):
    one = prepare(DataConfig(source=str(corpus), val_fraction=0.25), cache=tmp_path / "one")
    cfg = DataConfig(source=str(corpus), val_fraction=0.25, shard_tokens=7)
    many = prepare(cfg, cache=tmp_path / "many")
    assert many.path.name == one.path.name  # the shard size is not part of the data's identity
    shards = many.meta["splits"]["train"]["shards"]
    assert len(shards) == -(-one.split_meta("train")["tokens"] // 7) > 1
    assert [s["offset"] for s in shards] == [7 * i for i in range(len(shards))]
    assert all(s["tokens"] == 7 for s in shards[:-1]) and 1 <= shards[-1]["tokens"] <= 7
    for split in ("train", "val"):
        assert many.tokens(split).tolist() == one.tokens(split).tolist()
        assert many.split_meta(split) == one.split_meta(split)
    assert sorted(p.name for p in many.path.iterdir() if p.name.startswith(".")) == []
    # a rebuilt split that needs fewer shards leaves none of its old ones behind
    (corpus / "1.txt").write_text("x\n", encoding="utf-8")
    rebuilt = prepare(cfg, cache=tmp_path / "many")
    files = {s["file"] for s in rebuilt.meta["splits"]["train"]["shards"]}
    assert len(files) < len(shards)
    assert {p.name for p in rebuilt.path.glob("train-*.bin")} == files


@pytest.mark.parametrize(("source", "splits", "kind"), [
    ("tinyshakespeare", ("train", "val"), "char"), ("tinyshakespeare", ("train", "val"), "bpe"),
    ("wikitext2", ("valid",), "char"),  # bpe: test_chunked_encoding_equals_whole_text
])
def test_streaming_gives_the_whole_text_encoding(data_dir, tmp_path, monkeypatch, source, splits,
                                                 kind):
    """Streamed in blocks, cut into pieces and batches, the ids are HF's encoding of each
    whole split, and the tokenizer is the one trained on the whole text: what prepare gave
    when it read the corpus into memory."""
    monkeypatch.setattr(sources, "READ_BYTES", 10_000)  # many blocks, pieces and batches
    monkeypatch.setattr(prepare_module, "PIECE_CHARS", 3_000)
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 50_000)
    cfg = DataConfig(source=source, tokenizer=kind, vocab_size=512, train_split=splits[0])
    data = prepare(cfg, splits=splits, cache=tmp_path)
    if source == "tinyshakespeare":
        text = (data_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
        cut = int(len(text) * 0.9)
        texts = {"train": text[:cut], "val": text[cut:]}
    else:
        texts = {"valid": (data_dir / "wikitext-2" / "wiki.valid.tokens").read_text("utf-8")}
    whole = (Tokenizer.train_char([texts[splits[0]]]) if kind == "char"
             else Tokenizer.train_bpe([texts[splits[0]]], 512))
    assert data.tokenizer.sha256() == whole.sha256()
    for split in splits:
        expected = [whole.eot_id, *whole.backend.encode(texts[split]).ids]
        assert data.tokens(split).tolist() == expected, split
        assert data.split_meta(split)["characters"] == len(texts[split])


def test_workers_write_what_one_process_writes(corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 8)  # a batch per piece or two
    monkeypatch.setattr(prepare_module, "PIECE_CHARS", 4)
    for kind in ("char", "bpe"):
        cfg = DataConfig(source=str(corpus), tokenizer=kind, vocab_size=300, val_fraction=0.25)
        one = prepare(cfg, cache=tmp_path / kind / "1")
        two = prepare(cfg.updated(workers=2), cache=tmp_path / kind / "2")
        assert two.meta == one.meta
        for split in ("train", "val"):
            assert two.tokens(split).tolist() == one.tokens(split).tolist()


def test_memory_stays_bounded_while_streaming_a_large_corpus(data_dir, tmp_path, monkeypatch):
    """22 MB of text is prepared (tokenizer trained, ids written) holding a fraction of it:
    memory is set by the read, piece and batch sizes (here 16 times smaller than the default),
    not by the corpus."""
    monkeypatch.setattr(sources, "READ_BYTES", 1 << 16)
    monkeypatch.setattr(prepare_module, "BATCH_CHARS", 1 << 16)
    monkeypatch.setattr(prepare_module, "PIECE_CHARS", 1 << 13)
    big = tmp_path / "big.txt"
    big.write_text((data_dir / "tinyshakespeare" / "input.txt").read_text("utf-8") * 20, "utf-8")
    size = big.stat().st_size
    tracemalloc.start()
    try:
        data = prepare(DataConfig(source=str(big), shard_tokens=1 << 21), cache=tmp_path / "c")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < size / 8, f"peak {peak:,} bytes for a corpus of {size:,}"
    train = data.split_meta("train")["tokens"]
    assert len(data.meta["splits"]["train"]["shards"]) == -(-train // (1 << 21)) >= 9
    assert data.split_meta("train")["tokens"] + data.split_meta("val")["tokens"] == size + 2


def test_empty_split_is_an_error_and_leaves_no_shards(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("text\n")
    (folder / "b.txt").write_text("\n\n")
    with pytest.raises(GptkitError, match="split 'val'.*empty"):
        prepare(DataConfig(source=str(folder)), cache=tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.startswith("val")]


def test_split_share_far_from_val_fraction_is_warned_and_split_by_fraction_fixes_it(
        tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("to be or not " * 40, encoding="utf-8")
    (tmp_path / "src" / "b.txt").write_text("that is it " * 30, encoding="utf-8")
    whole = prepare(DataConfig(source=str(tmp_path / "src")), cache=tmp_path / "cache")
    err = capsys.readouterr().err
    assert "warning: val holds 39% of the text" in err and "data.split_by=fraction" in err
    cut = prepare(DataConfig(source=str(tmp_path / "src"), split_by="fraction"),
                  cache=tmp_path / "cache")
    assert "warning" not in capsys.readouterr().err
    assert cut.path != whole.path  # its own cache entry
    chars = {s: cut.split_meta(s)["characters"] for s in ("train", "val")}
    assert chars["val"] / (chars["train"] + chars["val"]) == pytest.approx(0.1, abs=0.01)


def test_characters_the_tokenizer_lacks_are_counted_and_warned(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("abc abc\n" * 50, encoding="utf-8")
    (tmp_path / "src" / "b.txt").write_text("abc 7 中 77\n", encoding="utf-8")
    cfg = DataConfig(source=str(tmp_path / "src"), val_fraction=0.5)
    data = prepare(cfg, cache=tmp_path / "cache")
    info = data.meta["splits"]["val"]
    assert info["unknown_characters"] == 4 and info["unknown_examples"] == {"7": 3, "中": 1}
    assert data.meta["splits"]["train"]["unknown_characters"] == 0
    err = capsys.readouterr().err
    assert (f"warning: 4 characters in {tmp_path / 'src'} [val] are not in the tokenizer and "
            f"become {UNK}, e.g. '7', '中'; train the tokenizer on text") in err
    assert "data.tokenizer=bpe" in err
    prepare(cfg, cache=tmp_path / "cache")  # said again when the cache is reused
    assert "4 characters" in capsys.readouterr().err
    bpe = prepare(cfg.updated(tokenizer="bpe", vocab_size=300), cache=tmp_path / "cache")
    assert bpe.meta["splits"]["val"]["unknown_characters"] == 0  # byte level: none
