"""`gptkit examples`: synthetic task files in every format the fine-tuning commands read."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptkit.errors import GptkitError
from gptkit.finetune.examples import EXAMPLES, write_examples
from gptkit.finetune.records import read_records
from gptkit.finetune.template import generation_prompt, segments
from tests.test_cli import expect_error, run_cli

SFT = ("qa.jsonl", "summarize.jsonl", "translate.jsonl", "chat.jsonl", "arithmetic.jsonl")
TAGS = {"O", "B-PER", "I-PER", "B-LOC", "I-LOC"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("examples")
    write_examples(out)
    return out


def test_cli_writes_every_file(capsys, tmp_path):
    code, out, err = run_cli(capsys, "examples", "--out", str(tmp_path / "ex"))
    assert code == 0, err
    for name in EXAMPLES:
        assert (tmp_path / "ex" / name).is_file() and name in out
        assert 100 <= len(read_records(tmp_path / "ex" / name)) <= 1000


def test_sft_files_render_with_the_template(folder):
    for name in SFT:
        for record in read_records(folder / name):
            parts = segments(record)
            assert any(learnt for _, learnt in parts) and not parts[0][1]
            prompt, answer = generation_prompt(record)
            assert prompt and answer


def test_answers_are_right(folder):
    for record in read_records(folder / "arithmetic.jsonl"):
        a, b = record.fields["prompt"].rstrip("=").split("+")
        assert int(record.fields["response"]) == int(a) + int(b)
    for record in read_records(folder / "translate.jsonl"):
        english = record.fields["prompt"].split("\n")[0].removeprefix("English: ")
        assert len(english.split()) == len(record.fields["response"].split())
    facts = {r.fields["prompt"]: r.fields["response"] for r in read_records(folder / "qa.jsonl")}
    tasks = read_records(folder / "tasks.jsonl")
    for record in tasks:  # eval tasks ask what qa.jsonl teaches
        assert set(record.fields) == {"prompt", "reference"}
        assert facts[record.fields["prompt"]] == generation_prompt(record)[1]
    for record in read_records(folder / "chat.jsonl"):
        roles = [m["role"] for m in record.fields["messages"]]
        assert roles[0] == "system" and roles[-1] == "assistant"
        assert roles[1:] == ["user", "assistant"] * (len(roles[1:]) // 2)


def test_classification_files(folder):
    rows = read_records(folder / "sentiment.csv")
    assert all(set(r.fields) == {"text", "label"} and r.fields["text"] for r in rows)
    labels = [r.fields["label"] for r in rows]
    assert set(labels) == {"pos", "neg"} and labels.count("pos") == labels.count("neg")
    for record in read_records(folder / "ner.jsonl"):
        tokens, tags = record.get("tokens", list), record.get("tags", list)
        assert len(tokens) == len(tags) and set(tags) <= TAGS
        for previous, tag in zip(["O", *tags], tags, strict=False):
            if tag.startswith("I-"):
                assert previous[2:] == tag[2:]  # I-X continues a B-X or I-X
    all_tags = {t for r in read_records(folder / "ner.jsonl") for t in r.fields["tags"]}
    assert all_tags == TAGS


def test_same_seed_same_files(folder, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    write_examples(again)
    write_examples(other, seed=1)
    for name in EXAMPLES:
        assert (again / name).read_bytes() == (folder / name).read_bytes()
    assert (other / "qa.jsonl").read_bytes() != (folder / "qa.jsonl").read_bytes()


def test_refuses_to_overwrite(capsys, tmp_path):
    write_examples(tmp_path)
    (tmp_path / "ner.jsonl").write_text("mine\n", encoding="utf-8")
    expect_error(capsys, "examples", "--out", str(tmp_path), match="pass --overwrite")
    assert (tmp_path / "ner.jsonl").read_text() == "mine\n"
    code, _, err = run_cli(capsys, "examples", "--out", str(tmp_path), "--overwrite")
    assert code == 0, err
    assert (tmp_path / "ner.jsonl").read_text() != "mine\n"
    with pytest.raises(GptkitError, match="is a file"):
        write_examples(tmp_path / "qa.jsonl", overwrite=True)
