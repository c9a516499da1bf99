"""Inputs longer than the context (issue 22 item 5): chunked classification, NER tags from the
chunk of most context, SFT's truncation side, and the data summary's counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gptkit.config import build_config
from gptkit.config.usage import check_used
from gptkit.errors import GptkitError
from gptkit.finetune import sft
from gptkit.finetune.chunks import Chunking, chunk_spans, max_context
from gptkit.finetune.classifier import Classifier
from gptkit.finetune.classify_data import encode_words, join_words, split_words
from gptkit.finetune.heads import GPTClassifier
from gptkit.finetune.records import Record
from gptkit.model import GPT
from gptkit.tokenizers import Tokenizer
from gptkit.train.objectives.classify import finetune_classifier
from tests.finetune.tasks import run_sft, write_jsonl
from tests.finetune.test_classify import TINY, config, write_csv

BLOCK = 16
WORDS = ["ab", "cd", "efg", "h", "ij", "klm", "no", "p"]


def classifier(task: str, long_inputs: str, **classify: object) -> Classifier:
    """A classifier with random weights over a char tokenizer, read as `long_inputs` says."""
    tokenizer = Tokenizer.train_char([" ".join(WORDS)])
    cfg = build_config({"model": {**TINY, "block_size": BLOCK},
                        "classify": {"task": task, "long_inputs": long_inputs, **classify}})
    torch.manual_seed(0)
    gpt = GPT.from_config(cfg.model, tokenizer.vocab_size)
    model = GPTClassifier.from_gpt(gpt, 3, task).eval()
    return Classifier(Path("mem"), cfg, tokenizer, model, ["A", "B", "C"])


def test_chunks_overlap_by_the_stride_and_cover_the_text():
    assert chunk_spans(10, 16, 4) == [(0, 10)]
    assert chunk_spans(16, 16, 4) == [(0, 16)]
    assert chunk_spans(50, 16, 4) == [(0, 16), (12, 28), (24, 40), (36, 50)]
    assert chunk_spans(20, 10, 0) == [(0, 10), (10, 20)]
    spans = chunk_spans(50, 16, 4)
    # 15 ends the first chunk and is 3 into the second: the second gives it more context;
    # 13 is 2 from the first's end and 1 into the second: the first
    assert max_context(15, spans) == (1, 3) and max_context(13, spans) == (0, 13)
    assert max_context(2, spans) == (0, 2) and max_context(49, spans) == (3, 13)


@pytest.mark.parametrize("aggregate", ["mean", "max"])
def test_chunked_classification_matches_unchunked_on_short_texts_and_aggregates_long(
        aggregate: str):
    short = ["ab cd", "efg h ij klm"]  # at most BLOCK characters: one chunk
    chunked = classifier("sequence", "chunk", chunk_stride=4, chunk_aggregate=aggregate)
    plain = classifier("sequence", "truncate")
    assert torch.equal(chunked.text_logits(short), plain.text_logits(short))
    text = " ".join(WORDS * 2)  # 47 characters: chunks [0,16) [12,28) [24,40) [36,47)
    ids = chunked.tokenizer.encode(text)
    assert len(ids) == 47
    with torch.no_grad():
        parts = [chunked.model(torch.tensor([ids[s:e]]), torch.ones(1, e - s, dtype=torch.long))
                 for s, e in [(0, 16), (12, 28), (24, 40), (36, 47)]]
    stacked = torch.cat(parts)
    expected = stacked.mean(0) if aggregate == "mean" else stacked.max(0).values
    torch.testing.assert_close(chunked.text_logits([text])[0], expected)
    # truncation reads the first chunk only
    torch.testing.assert_close(plain.text_logits([text])[0], parts[0][0])
    assert chunked.predict([text])[0].label in ("A", "B", "C")


def test_every_word_of_a_long_text_is_tagged_once_from_its_chunk_of_most_context():
    clf = classifier("token", "chunk", chunk_stride=6)
    words = WORDS * 4  # 95 characters, several chunks
    pieces = encode_words(clf.tokenizer, words)
    ids, targets, positions = join_words(pieces, list(range(len(words))))
    chunking = Chunking.of(clf.config)
    doc = split_words(ids, targets, positions, chunking)
    spans = chunking.spans(len(ids))
    assert len(doc.rows) == len(spans) > 3
    assert all(owner is not None for owner in doc.owners)  # every word, exactly one owner
    for w, owner in enumerate(doc.owners):
        assert owner is not None
        chunk, at = owner
        assert doc.rows[chunk][0][at] == ids[positions[w]]  # the word's own first id
        assert doc.rows[chunk][1][at] == w  # and its tag there
        start, end = spans[chunk]
        margin = min(at, end - start - 1 - at)
        others = [min(positions[w] - s, e - 1 - positions[w]) for s, e in spans
                  if s <= positions[w] < e]
        assert margin == max(others)  # no chunk gives it more context
    tagged = clf.predict_tokens([words])[0]
    assert [t.word for t in tagged] == words and all(t.tag in "ABC" for t in tagged)
    # truncation tags the words past the context O
    cut = classifier("token", "truncate").predict_tokens([words])[0]
    assert len(cut) == len(words) and cut[-1].tag == "O" and cut[-1].score == 1.0


def test_a_short_text_is_tagged_as_before_when_chunking():
    chunked, plain = classifier("token", "chunk"), classifier("token", "truncate")
    words = ["ab", "cd", "efg"]
    pieces = encode_words(chunked.tokenizer, words)
    doc = split_words(*join_words(pieces, [0, 1, 2]), Chunking.of(chunked.config))
    ids, targets, positions = join_words(pieces, [0, 1, 2], BLOCK)
    assert doc.rows == [(ids, targets)] and doc.owners == [(0, p) for p in positions]
    a, b = chunked.predict_tokens([words])[0], plain.predict_tokens([words])[0]
    assert [(t.tag, t.score) for t in a] == [(t.tag, t.score) for t in b]


def test_truncation_side_keeps_the_start_or_the_end():
    record = Record({"prompt": "abcdefghij", "response": "klmnop"}, "x:1")
    tok = Tokenizer.train_char(sft.training_texts([record]))
    lengths: list[int] = []
    [right] = sft.encode_records([record], tok, block_size=11, lengths=lengths)
    [left] = sft.encode_records([record], tok, block_size=11, side="left")
    full = tok.encode("abcdefghij") + tok.encode("klmnop") + [tok.eot_id]
    assert right.ids.tolist() == full[:12] and left.ids.tolist() == full[-12:]
    assert sft.cut_counts([right], lengths) == {"cut": 1, "cut_tokens": len(full) - 12}


def test_the_data_summary_counts_cut_and_chunked_examples(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]):
    rows = [{"text": ("good " if i % 2 else "bad ") * (20 if i % 5 == 0 else 2),
             "label": "pos" if i % 2 else "neg"} for i in range(20)]
    source = write_csv(tmp_path / "long.csv", rows)
    # "bad " x 20 and "good " x 20 (80 and 100 characters) in block 32 with overlap
    # 8: chunks start every 24 characters, so 3 and 4 chunks, twice each
    run = {"max_steps": 1, "eval_interval": 1, "log_interval": 1}
    finetune_classifier(config(source, steps=1, train=run, data={"tokenizer": "char"},
                               classify={"long_inputs": "chunk", "chunk_stride": 8}),
                        tmp_path / "chunk", progress=False)
    out = capsys.readouterr().out
    assert ("data: train: 16 examples, 4 longer than 32 tokens split into 14 chunks; "
            "val: 4 examples, none longer than 32 tokens") in out
    meta = json.loads((tmp_path / "chunk" / "data.json").read_text())
    assert meta["splits"]["train"]["chunks"] == 14
    finetune_classifier(config(source, steps=1, train=run, data={"tokenizer": "char"}),
                        tmp_path / "cut", progress=False)
    assert ("data: train: 16 examples, 4 longer than 32 tokens cut (232 tokens dropped)"
            in capsys.readouterr().out)

    records = [{"prompt": "x" * (40 if i < 3 else 4), "response": "yz"} for i in range(20)]
    sft_source = write_jsonl(tmp_path / "sft.jsonl", records)
    run_sft(sft_source, tmp_path / "sft", steps=1, finetune={"truncation_side": "left"},
            train={"eval_interval": 1, "log_interval": 1})
    # 40 + 2 + end of text = 43 tokens, cut to block_size + 1 = 33: 10 dropped from each
    assert ("data: train: 18 examples, 3 longer than 33 tokens cut on the left (30 tokens "
            "dropped); val: 2 examples, none longer than 33 tokens") in capsys.readouterr().out


@pytest.mark.parametrize(("classify", "kind", "match"), [
    ({"chunk_stride": 4}, "classify", "classify.chunk_stride=4 does nothing here; it applies "
     "with classify.long_inputs=chunk"),
    ({"task": "token", "long_inputs": "chunk", "chunk_aggregate": "max"}, "classify",
     "classify.chunk_aggregate=max does nothing here"),
    ({"long_inputs": "chunk"}, "train", "classify.long_inputs=chunk does nothing in pre-training"),
])
def test_settings_that_do_nothing_are_errors(classify: dict, kind: str, match: str):
    cfg = build_config({"classify": classify})
    with pytest.raises(GptkitError, match=match):
        check_used(cfg, {kind})
    cfg = build_config({"finetune": {"truncation_side": "left"}})
    with pytest.raises(GptkitError, match="finetune.truncation_side=left does nothing in "
                       "classification"):
        check_used(cfg, {"classify"})


@pytest.mark.parametrize(("values", "match"), [
    ({"model": {"block_size": 16}, "classify": {"long_inputs": "chunk", "chunk_stride": 16}},
     r"classify.chunk_stride \(16\) is the overlap of chunks of model.block_size \(16\)"),
    ({"classify": {"chunk_stride": -1}}, "classify.chunk_stride"),
    ({"classify": {"long_inputs": "slide"}}, "classify.long_inputs"),
    ({"finetune": {"truncation_side": "middle"}}, "finetune.truncation_side"),
])
def test_bad_values_are_one_line_errors(values: dict, match: str):
    with pytest.raises(GptkitError, match=match) as error:
        build_config(values)
    assert "\n" not in str(error.value)
