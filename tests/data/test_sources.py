from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gptkit.data import sources
from gptkit.data.prepare import count_words
from gptkit.data.sources import available_splits, data_root, is_wikitext, load_source
from gptkit.errors import GptkitError


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTKIT_DATA_DIR", str(tmp_path / "env"))
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root() == tmp_path / "env"
    monkeypatch.delenv("GPTKIT_DATA_DIR")
    assert data_root().parts[-3:] == (".cache", "gptkit", "data")


def test_tinyshakespeare_splits_like_nanogpt(data_dir):
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    out = load_source("tinyshakespeare", ["train", "val"])
    (train,), (val,) = out["train"], out["val"]
    assert (len(text), len(train), len(val)) == (1_115_394, 1_003_854, 111_540)
    assert train + val == text
    assert available_splits("tinyshakespeare") == ("train", "val")


def test_wikitext2_word_counts_and_val_alias(data_dir):
    out = load_source("wikitext2", ["valid", "test", "val"])
    assert count_words(out["valid"]) == 217_646
    assert count_words(out["test"]) == 245_569
    assert out["val"] == out["valid"] and len(out["valid"]) == 1  # the whole file: one document
    assert out["valid"][0] == (data_dir / "wikitext-2" / "wiki.valid.tokens").read_text("utf-8")
    assert is_wikitext("wikitext2") and is_wikitext("wikitext2-raw")
    assert not is_wikitext("tinyshakespeare")
    assert available_splits("wikitext2") == ("train", "valid", "test", "valid-head", "valid-tail")


def write_hf_parquet(text: str, path):
    """A parquet file as Hugging Face's wikitext has them: one row per line, blank lines ""."""
    rows = [line if line.strip() else "" for line in io.StringIO(text, newline="")]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": rows}), path)


@pytest.mark.parametrize(
    ("spec", "layout"),
    [
        ("wikitext2", "wikitext-2/validation-00000-of-00001.parquet"),
        ("wikitext2-raw", "wikitext/wikitext-2-raw-v1/validation-00000-of-00001.parquet"),
    ],
)
def test_wikitext_parquet(data_dir, tmp_path, spec, layout):
    text = (data_dir / "wikitext-2" / "wiki.valid.tokens").read_text(encoding="utf-8")
    write_hf_parquet(text, tmp_path / layout)
    (loaded,) = load_source(spec, ["val"], data_dir=tmp_path)["val"]
    assert loaded == text
    assert count_words([loaded]) == 217_646


def test_missing_data_offline_names_files_and_folder(tmp_path, data_dir):
    with pytest.raises(GptkitError) as info:
        load_source("tinyshakespeare", ["train"], data_dir=tmp_path)
    message = str(info.value)
    assert "tinyshakespeare/input.txt" in message and str(tmp_path / "tinyshakespeare") in message
    assert "GPTKIT_DATA_DIR" in message and "--data-dir" in message
    with pytest.raises(GptkitError, match=r"wiki\.train\.tokens.*train-00000-of-00001\.parquet"):
        load_source("wikitext2", ["train"])  # the shared data has no train split
    with pytest.raises(GptkitError, match="wiki.test.raw"):
        load_source("wikitext2-raw", ["test"], data_dir=tmp_path)


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_when_online(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTKIT_OFFLINE", "0")
    urls = []

    def fake_urlopen(url, timeout):
        urls.append(url)
        return FakeResponse(b"First Citizen:\n" * 100)

    monkeypatch.setattr(sources.urllib.request, "urlopen", fake_urlopen)
    out = load_source("tinyshakespeare", ["val"], data_dir=tmp_path)
    assert urls == [sources.TINYSHAKESPEARE_URL]
    assert (tmp_path / "tinyshakespeare" / "input.txt").read_bytes() == b"First Citizen:\n" * 100
    assert out["val"][0] == ("First Citizen:\n" * 100)[1350:]
    assert [p.name for p in (tmp_path / "tinyshakespeare").iterdir()] == ["input.txt"]

    def failing_urlopen(url, timeout):
        raise OSError("no route to host")

    monkeypatch.setattr(sources.urllib.request, "urlopen", failing_urlopen)
    with pytest.raises(GptkitError, match=r"wikitext-2 and downloading .* \(no route to host\)"):
        load_source("wikitext2", ["test"], data_dir=tmp_path)
    assert list((tmp_path / "wikitext-2").iterdir()) == []  # no partial file left


def test_text_file_splits_characters(tmp_path):
    path = tmp_path / "corpus.txt"
    text = "hello world\r\n" * 10 + "中文 😀"
    path.write_bytes(text.encode())
    out = load_source(str(path), ["train", "val"], val_fraction=0.25)
    cut = int(len(text) * 0.75)
    assert out == {"train": [text[:cut]], "val": [text[cut:]]}
    assert load_source(str(path), ["valid"])["valid"] == [text[int(len(text) * 0.9):]]


def test_folder_documents_sorted_recursive_without_hidden(tmp_path):
    for name in ("b.txt", "a.txt", "sub/c.md", "sub/d.txt", ".hidden", ".git/config"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"text of {name}\n")
    out = load_source(str(tmp_path), ["train", "val"], val_fraction=0.3)
    names = ["a.txt", "b.txt", "sub/c.md", "sub/d.txt"]
    assert out["train"] == [f"text of {n}\n" for n in names[:3]]  # round(4 * 0.3) = 1 for val
    assert out["val"] == [f"text of {n}\n" for n in names[3:]]


def test_glob_and_jsonl(tmp_path):
    for i in range(5):
        lines = [json.dumps({"body": f"doc {i}.{j}", "id": j}) for j in range(4)]
        (tmp_path / f"part{i}.jsonl").write_text("\n".join(lines) + "\n\n")
    (tmp_path / "notes.txt").write_text("not matched")
    out = load_source(str(tmp_path / "part*.jsonl"), ["train", "val"], text_field="body")
    docs = [f"doc {i}.{j}" for i in range(5) for j in range(4)]
    assert out["train"] == docs[:18] and out["val"] == docs[18:]  # round(20 * 0.1) = 2
    one = load_source(str(tmp_path / "part0.jsonl"), ["val"], text_field="body", val_fraction=0.5)
    assert one["val"] == docs[2:4]


def test_single_jsonl_document_splits_characters(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"text": "abcdefghij"}) + "\n")
    assert load_source(str(path), ["train", "val"]) == {"train": ["abcdefghi"], "val": ["j"]}


def test_bad_jsonl_lines(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": oops}\n')
    with pytest.raises(GptkitError, match=r"bad\.jsonl:2 is not valid JSON"):
        load_source(str(path), ["train"])
    path.write_text('{"text": "fine"}\n\n{"body": "no text"}\n')
    with pytest.raises(GptkitError, match=r"bad\.jsonl:3 has no text field 'text'"):
        load_source(str(path), ["train"])


def test_empty_or_whitespace_corpus(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_text("  \n\t\n")
    with pytest.raises(GptkitError, match="blank.txt.*empty"):
        load_source(str(path), ["train"])
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("text\n")
    (folder / "b.txt").write_text("\n\n")
    with pytest.raises(GptkitError, match="split 'val'.*empty"):
        load_source(str(folder), ["val"])


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("ok text, café".encode("latin-1"))
    with pytest.raises(GptkitError, match=r"latin1\.txt is not UTF-8 text \(invalid byte 0xe9 at "
                                          r"byte offset 12\)"):
        load_source(str(path), ["train"])


def test_unknown_split_lists_the_available_ones(data_dir, tmp_path):
    with pytest.raises(GptkitError, match="no split 'dev'; available: train, valid, test"):
        load_source("wikitext2", ["dev"])
    with pytest.raises(GptkitError, match="no split 'test'; available: train, val"):
        load_source("tinyshakespeare", ["test"])


def test_paths_that_match_nothing(tmp_path):
    with pytest.raises(GptkitError, match=r"no file matches .*\*\.txt"):
        load_source(str(tmp_path / "*.txt"), ["train"])
    with pytest.raises(GptkitError, match="neither a data set"):
        load_source(str(tmp_path / "missing.txt"), ["train"])
    with pytest.raises(GptkitError, match="holds no files"):
        load_source(str(tmp_path), ["train"])


def test_only_requested_splits_are_read(tmp_path, data_dir):
    (tmp_path / "wikitext-2").mkdir()
    (tmp_path / "wikitext-2" / "wiki.test.tokens").write_text(" = A = \n")
    assert load_source("wikitext2", ["test"], data_dir=tmp_path) == {"test": [" = A = \n"]}


def test_streamed_lines_split_like_splitlines():
    text = 'a\r\nb\rc\n\n{"x": 1}\u2028d\x85e\r\r\nf\n'
    for size in (1, 2, 3, 7, 100):
        chunks = [text[i : i + size] for i in range(0, len(text), size)]
        assert list(sources._lines(chunks)) == text.splitlines()
    assert list(sources._lines(["no newline", " at all"])) == ["no newline at all"]


def test_files_are_read_in_blocks_with_exact_offsets(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "READ_BYTES", 3)  # characters cut across blocks
    path = tmp_path / "t.txt"
    text = "中文 😀\r\nü" * 5
    path.write_bytes(text.encode() + b"\xff")
    with pytest.raises(GptkitError, match=rf"invalid byte 0xff at byte offset "
                                          rf"{len(text.encode())}\)"):
        "".join(sources.read_chunks(path))
    path.write_bytes(text.encode() + "é".encode()[:1])  # a character cut at the end
    with pytest.raises(GptkitError, match=rf"byte 0xc3 at byte offset {len(text.encode())}\)"):
        "".join(sources.read_chunks(path))
    path.write_bytes(text.encode())
    assert sources.read_text(path) == text
    out = load_source(str(path), ["train", "val"], val_fraction=0.3)
    cut = int(len(text) * 0.7)
    assert out == {"train": [text[:cut]], "val": [text[cut:]]}


def test_offline_protocol_holds_out_whole_articles_of_valid(data_dir):
    """valid-head is trained on, valid-tail selects: together they are valid, sharing nothing."""
    out = load_source("wikitext2", ["valid", "valid-head", "valid-tail"], val_fraction=0.1)
    (valid,), (head,), (tail,) = out["valid"], out["valid-head"], out["valid-tail"]
    assert head + tail == valid

    def titles(text):
        return [line for line in text.split("\n")
                if line.startswith(" = ") and not line.startswith(" = = ")]

    assert tail.startswith(" = ") and not tail.startswith(" = = ")  # a whole article first
    named = {title for title in titles(head) if "<unk>" not in title}  # " = <unk> <unk> = "
    assert named and not named & set(titles(tail))
    assert len(titles(tail)) == round(0.1 * len(titles(valid)))
    assert count_words([head]) + count_words([tail]) == 217_646


def test_split_by_fraction_cuts_every_file(tmp_path):
    (tmp_path / "a.txt").write_text("a" * 300, encoding="utf-8")
    (tmp_path / "b.txt").write_text("b" * 700, encoding="utf-8")
    whole = load_source(str(tmp_path), ["train", "val"], val_fraction=0.1)
    assert whole == {"train": ["a" * 300], "val": ["b" * 700]}  # the last file, 70% of the text
    cut = load_source(str(tmp_path), ["train", "val"], val_fraction=0.1, split_by="fraction")
    assert cut == {"train": ["a" * 270, "b" * 630], "val": ["a" * 30, "b" * 70]}
