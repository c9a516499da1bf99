"""Classification heads: sequence and token tasks learn tasks built here; every bad input."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

import pytest

from gptkit.config import SHAPE_KEYS, RunConfig, build_config, read_config
from gptkit.data.loader import SeededEpochs, epoch_order
from gptkit.errors import GptkitError
from gptkit.finetune.augment import Augmenter
from gptkit.finetune.classify_data import (
    Encoder,
    encode_words,
    join_words,
    read_task_data,
    special_ids,
)
from gptkit.run import load_run
from gptkit.tokenizers import Tokenizer
from gptkit.train.objectives.classify import finetune_classifier
from tests.test_cli import expect_error, run_cli

# --- tasks built here -----------------------------------------------------------------------
POSITIVE = ["good", "great", "love", "excellent", "wonderful"]
NEGATIVE = ["bad", "awful", "hate", "terrible", "boring"]
NEUTRAL = ["the", "movie", "plot", "was", "actors", "film", "we", "saw", "it", "yesterday",
           "with", "friends", "and", "popcorn", "music", "ending", "story", "quite", "really",
           "scenes"]


def sentiment_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """A pos or neg keyword at a random place among 3-6 neutral (distractor) words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(NEUTRAL, rng.randint(3, 6))
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if i % 2 == 0
                                                                else NEGATIVE))
        rows.append({"text": " ".join(words), "label": label})
    rng.shuffle(rows)
    return rows


# Jordan and Georgia are people and places: only the context tells which
FIRST = ["Anna", "Lars", "Maria", "Omar", "Yuki", "Priya", "Carlos", "Ingrid", "Kofi", "Lena",
         "Jordan", "Georgia"]
LAST = ["Berg", "Novak", "Silva", "Tanaka", "Okafor", "Moreau"]
PLACES = [["Oslo"], ["Lima"], ["Kyoto"], ["Porto"], ["Quito"], ["New", "York"],
          ["Cape", "Town"], ["San", "Diego"], ["Rio", "de", "Janeiro"], ["Jordan"], ["Georgia"]]
TEMPLATES = ["PER lives in LOC .", "PER works in LOC with PER .", "Today PER flew to LOC .",
             "PER moved from LOC to LOC ."]


def ner_rows(n: int, seed: int = 0) -> list[dict[str, list[str]]]:
    """A tiny tag grammar: people (one or two words) and places (one to three words)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens: list[str] = []
        tags: list[str] = []
        for slot in rng.choice(TEMPLATES).split():
            if slot == "PER":
                names = [rng.choice(FIRST)] + ([rng.choice(LAST)] if rng.random() < 0.5 else [])
            elif slot == "LOC":
                names = list(rng.choice(PLACES))
            else:
                tokens.append(slot)
                tags.append("O")
                continue
            tokens += names
            tags += [("B-" if i == 0 else "I-") + slot for i in range(len(names))]
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str] | None = None) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


TINY = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32}
TINY_SETS = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
             "train.micro_batch_size=8", "train.warmup_steps=2", "train.eval_interval=10"]


def config(source: Path, task: str = "sequence", steps: int = 150,
           **sections: Any) -> RunConfig:
    raw: dict[str, Any] = {
        "name": "clf",
        "model": dict(TINY),
        "data": {"source": str(source), "tokenizer": "bpe", "vocab_size": 400,
                 "val_fraction": 0.2},
        "train": {"max_steps": steps, "micro_batch_size": 16, "lr": 3e-3, "min_lr": 3e-4,
                  "warmup_steps": 10, "weight_decay": 0.01, "eval_interval": 50,
                  "log_interval": 25, "seed": 1},
        "classify": {"task": task},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return build_config(raw)


@pytest.fixture(scope="module")
def sentiment_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "sentiment.csv", sentiment_rows(400))


@pytest.fixture(scope="module")
def ner_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "ner.jsonl", ner_rows(300))


@pytest.fixture(scope="module")
def sentiment_run(sentiment_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "sentiment"
    finetune_classifier(config(sentiment_file, steps=100, classify={"pooling": "last"}), run,
                        progress=False)
    return run


@pytest.fixture(scope="module")
def ner_run(ner_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "ner"
    finetune_classifier(config(ner_file, "token"), run, progress=False)
    return run


# --- learning -------------------------------------------------------------------------------
def test_sequence_classifier_learns_keyword_sentiment(sentiment_run: Path, sentiment_file: Path):
    result = json.loads((sentiment_run / "eval.json").read_text())
    assert result["accuracy"] >= 0.9 and result["macro_f1"] >= 0.9
    assert result["examples"] == 80 and result["labels"] == ["neg", "pos"]
    matrix = result["confusion_matrix"]
    assert sum(map(sum, matrix)) == 80 and matrix[0][0] + matrix[1][1] == round(
        80 * result["accuracy"])
    assert json.loads((sentiment_run / "labels.json").read_text()) == {
        "task": "sequence", "labels": ["neg", "pos"]}
    evals = [json.loads(line) for line in (sentiment_run / "metrics.jsonl").open()
             if '"eval"' in line]
    assert [e["step"] for e in evals] == [0, 50, 100]
    assert evals[0]["accuracy"] < 0.8 < max(e["accuracy"] for e in evals)  # it learned
    assert max(e["macro_f1"] for e in evals) == result["macro_f1"]  # the best one is kept
    saved = read_config(sentiment_run / "config.yaml")
    assert saved.model.vocab_size == Tokenizer.load(sentiment_run / "tokenizer.json").vocab_size

    # the saved model is the one measured: rescoring the held-out rows gives the same accuracy
    classifier = load_run(sentiment_run).classifier
    held_out = list(csv.DictReader(sentiment_file.open()))[-80:]
    predictions = classifier.predict([row["text"] for row in held_out])
    right = sum(p.label == row["label"] for p, row in zip(predictions, held_out, strict=True))
    assert right / 80 == pytest.approx(result["accuracy"])
    new = classifier.predict(["we really love the music", "the ending was awful"])
    assert [p.label for p in new] == ["pos", "neg"]
    for p in new:
        assert sum(p.probabilities.values()) == pytest.approx(1.0)
        assert p.score == max(p.probabilities.values()) > 0.5
    with pytest.raises(GptkitError, match="labels whole texts.*use predict"):
        classifier.predict_tokens([["a", "b"]])
    # --precision bf16 scores under bf16 autocast, as gptkit eval does: the same labels, the
    # probabilities of a bf16 forward pass
    bf16 = load_run(sentiment_run, precision="bf16").classifier
    assert bf16.precision == "bf16" and classifier.precision == "fp32"
    low = bf16.predict(["we really love the music", "the ending was awful"])
    assert [p.label for p in low] == ["pos", "neg"]
    assert [p.score for p in low] != [p.score for p in new]
    assert [p.score for p in low] == pytest.approx([p.score for p in new], abs=0.05)


def test_mean_pooling_learns_with_augmentation_that_never_touches_held_out_data(
    sentiment_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
):
    seen: list[str] = []
    original = Augmenter.text

    def spy(self: Augmenter, text: str, key: tuple[int, ...]) -> str:
        seen.append(text)
        return original(self, text, key)

    monkeypatch.setattr(Augmenter, "text", spy)
    # a mean over all tokens dilutes the keyword: it needs a higher learning rate
    cfg = config(sentiment_file, steps=200, classify={"pooling": "mean"},
                 train={"lr": 1e-2, "min_lr": 1e-3},
                 data={"augment": ["word_swap=0.1", "word_delete=0.1", "token_noise=0.05"]})
    result = finetune_classifier(cfg, tmp_path / "run", progress=False)
    assert result.metrics["accuracy"] >= 0.9
    rows = list(csv.DictReader(sentiment_file.open()))
    train_texts, val_texts = {r["text"] for r in rows[:320]}, {r["text"] for r in rows[320:]}
    assert len(seen) == 200 * 16 and set(seen) <= train_texts and not set(seen) & val_texts
    assert read_config(tmp_path / "run" / "config.yaml").data.augment == [
        "word_swap=0.1", "word_delete=0.1", "token_noise=0.05"]


def test_token_classifier_learns_a_tag_grammar(ner_run: Path):
    result = json.loads((ner_run / "eval.json").read_text())
    assert result["f1"] >= 0.9 and result["precision"] >= 0.9 and result["recall"] >= 0.9
    assert set(result["per_type"]) == {"PER", "LOC"} and result["token_accuracy"] >= 0.9
    labels = json.loads((ner_run / "labels.json").read_text())
    assert labels == {"task": "token", "labels": ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]}
    classifier = load_run(ner_run).classifier
    sentence = ["Jordan", "Silva", "works", "in", "San", "Diego", "with", "Kofi", "."]
    other = ["Georgia", "moved", "from", "Georgia", "to", "Jordan", "."]
    tagged, tagged_other = classifier.predict_tokens([sentence, other])
    assert [t.word for t in tagged] == sentence
    assert [t.tag for t in tagged] == ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O",
                                       "B-PER", "O"]
    assert [t.tag for t in tagged_other] == ["B-PER", "O", "O", "B-LOC", "O", "B-LOC", "O"]
    assert all(0.0 < t.score <= 1.0 for t in tagged)
    with pytest.raises(GptkitError, match="tags words.*use predict_tokens"):
        classifier.predict(["Lena lives in Oslo ."])


# --- mechanics ------------------------------------------------------------------------------
def test_each_word_is_labelled_at_its_first_own_token_and_cut_words_are_marked():
    tokenizer = Tokenizer.train_char(["ab cd e"])
    pieces = encode_words(tokenizer, ["ab", "cd", "e"])
    space = tokenizer.encode(" ")
    assert pieces == [([], tokenizer.encode("ab")), (space, tokenizer.encode("cd")),
                      (space, tokenizer.encode("e"))]
    ids, targets, positions = join_words(pieces, [7, 8, 9], block_size=100)
    assert ids == tokenizer.encode("ab cd e")
    assert targets == [7, -100, -100, 8, -100, -100, 9] and positions == [0, 3, 6]
    ids, targets, positions = join_words(pieces, [7, 8, 9], block_size=4)
    assert len(ids) == len(targets) == 4 and positions == [0, 3, -1]


def test_token_augmentation_keeps_every_tag_on_its_word(ner_file: Path):
    cfg = config(ner_file, "token", data={"augment": ["token_dropout=0.5"]})
    data = read_task_data(cfg)
    tokenizer = Tokenizer.train_char(data.train_texts())
    augmenter = Augmenter(cfg.data.augment, seed=0, vocab_size=tokenizer.vocab_size)
    encoder = Encoder(data, tokenizer, 1000, augmenter)
    example = data.train[0]
    plain_ids, plain_targets, _ = encoder.token(example)
    ids, targets, _ = encoder.token(example, (0, 0))
    assert len(ids) < len(plain_ids)  # characters were dropped ...
    tags = [data.label_ids[t] for t in example.tags]
    assert [t for t in targets if t != -100] == tags  # ... but every word keeps its tag
    assert [t for t in plain_targets if t != -100] == tags


def batch_keys(step: int, batch_size: int, n: int, seed: int) -> list[tuple[int, int]]:
    """(epoch, example index) of each example of optimizer step `step`, as the classifier's
    batches draw them."""
    epochs = SeededEpochs(lambda s, e: [(e, int(i)) for i in epoch_order(s, e, n)],
                          seed=seed, micro_batch_size=batch_size)
    return epochs.step_items(step)[0]


def test_training_batches_walk_seeded_epochs():
    keys = [k for step in range(5) for k in batch_keys(step, 4, 10, seed=3)]
    assert [e for e, _ in keys] == [0] * 10 + [1] * 10
    assert sorted(i for e, i in keys if e == 0) == list(range(10))
    assert [i for e, i in keys if e == 0] != [i for e, i in keys if e == 1]
    assert batch_keys(3, 4, 10, seed=3) == batch_keys(3, 4, 10, seed=3)


def test_cli_trains_and_classifies_sequences_from_another_run(
    tiny_run: Path, sentiment_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
):
    out = tmp_path / "clf"
    args = ["finetune-classify", "--data", str(sentiment_file), "--init-from", str(tiny_run),
            "--set", "train.max_steps=10", "--set", "train.eval_interval=5",
            "--out", str(out), "--no-progress"]
    code, text, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "accuracy" in text and "macro-F1" in text and "confusion matrix" in text
    # started from tiny_run: its shape and its tokenizer
    mine, theirs = read_config(out / "config.yaml"), read_config(tiny_run / "config.yaml")
    assert all(getattr(mine.model, k) == getattr(theirs.model, k) for k in SHAPE_KEYS)
    assert (out / "tokenizer.json").read_text() == (tiny_run / "tokenizer.json").read_text()
    assert (out / "model.safetensors").is_file()
    expect_error(capsys, *args, match="already exists")
    code, _, err = run_cli(capsys, *args, "--overwrite")
    assert code == 0, err
    code, text, _ = run_cli(capsys, "classify", str(out), "--text", "I love it",
                            "--text", "so boring", "--json")
    assert code == 0
    answers = json.loads(text)
    assert [a["text"] for a in answers] == ["I love it", "so boring"]
    assert all(a["label"] in ("neg", "pos") and set(a["probabilities"]) == {"neg", "pos"}
               for a in answers)
    code, text, _ = run_cli(capsys, "classify", str(out), "--text", "I love it")
    assert code == 0 and text.strip().endswith("\tI love it")
    expect_error(capsys, "sample", str(out), match="is a classifier run")


def test_cli_trains_and_tags_words(ner_file: Path, ner_run: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "ner"
    code, text, err = run_cli(capsys, "finetune-classify", "--recipe", "ner", "--data",
                              str(ner_file), *[f"--set={s}" for s in TINY_SETS],
                              "--set", "train.max_steps=10", "--out", str(out), "--no-progress")
    assert code == 0, err
    assert "entity F1" in text and "PER" in text and "LOC" in text
    code, text, _ = run_cli(capsys, "classify", str(ner_run), "--text",
                            "Omar Berg lives in Cape Town .")
    assert code == 0
    assert text.strip() == "Omar/B-PER Berg/I-PER lives/O in/O Cape/B-LOC Town/I-LOC ./O"
    code, text, _ = run_cli(capsys, "classify", str(ner_run), "--text", "Anna lives in Oslo .",
                            "--json")
    words = json.loads(text)[0]["words"]
    assert [(w["word"], w["tag"]) for w in words][0] == ("Anna", "B-PER")


# --- bad input ------------------------------------------------------------------------------
def fails(cfg: RunConfig, tmp_path: Path, match: str) -> str:
    with pytest.raises(GptkitError, match=match) as info:
        finetune_classifier(cfg, tmp_path / "run", progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()  # nothing written for bad input
    return str(info.value)


def test_missing_or_empty_fields_are_reported_with_file_and_line(tmp_path: Path):
    rows = sentiment_rows(20)
    source = write_csv(tmp_path / "s.csv", rows)
    fails(config(source, classify={"text_field": "review"}), tmp_path,
          r"s\.csv:2 has no field 'review'; set classify\.text_field")
    rows[3]["label"] = "  "
    fails(config(write_csv(tmp_path / "s.csv", rows)), tmp_path,
          r"s\.csv:5: field 'label' is empty")
    records: list[dict[str, Any]] = [dict(r) for r in sentiment_rows(20)]
    del records[4]["label"]
    fails(config(write_jsonl(tmp_path / "s.jsonl", records)), tmp_path,
          r"s\.jsonl:5 has no field 'label'")
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b",\n')
    fails(config(tmp_path / "bad.jsonl"), tmp_path, r"bad\.jsonl:2 is not valid JSON")
    records = [{"text": "good", "label": 1}, {"text": "bad", "label": "neg"}] * 5
    fails(config(write_jsonl(tmp_path / "mixed.jsonl", records)), tmp_path,
          "labels mix numbers and text")


def test_one_class_in_training_and_unseen_held_out_labels_are_errors(tmp_path: Path):
    rows = sentiment_rows(40)
    rows = [r for r in rows if r["label"] == "neg"][:16] + [
        r for r in rows if r["label"] == "pos"][:4]
    fails(config(write_csv(tmp_path / "sorted.csv", rows)), tmp_path,
          r"training split of .*sorted\.csv \(its first 16 records\) has only one label "
          r"\('neg'\).*shuffle the file")
    rows = sentiment_rows(20)
    rows[-1]["label"] = "neutral"
    fails(config(write_csv(tmp_path / "s.csv", rows)), tmp_path,
          r"s\.csv:21: label 'neutral' is in the held-out split .* but never in training")
    records = ner_rows(20)
    records[-1]["tags"][0] = "B-ORG"
    fails(config(write_jsonl(tmp_path / "n.jsonl", records), "token"), tmp_path,
          r"n\.jsonl:20: tag 'B-ORG' is in the held-out split")
    records = [{"tokens": ["a", "b"], "tags": ["O", "O"]}] * 10
    fails(config(write_jsonl(tmp_path / "o.jsonl", records), "token"), tmp_path,
          r"has only one tag \('O'\)")


def test_bad_token_records_are_errors(tmp_path: Path):
    records: list[dict[str, Any]] = [dict(r) for r in ner_rows(20)]
    records[2] = {"tokens": ["Anna", "lives", "here"], "tags": ["B-PER", "O"]}
    fails(config(write_jsonl(tmp_path / "n.jsonl", records), "token"), tmp_path,
          r"n\.jsonl:3: 3 tokens but 2 tags; give one tag per word")
    records[2] = {"tokens": "Anna lives here", "tags": ["B-PER", "O", "O"]}
    fails(config(write_jsonl(tmp_path / "n.jsonl", records), "token"), tmp_path,
          r"n\.jsonl:3: field 'tokens' must be list")
    records[2] = {"tokens": ["Anna", "", "here"], "tags": ["B-PER", "O", "O"]}
    fails(config(write_jsonl(tmp_path / "n.jsonl", records), "token"), tmp_path,
          r"n\.jsonl:3: tokens\[1\] must be a non-empty string")
    records[2] = {"tokens": [], "tags": []}
    fails(config(write_jsonl(tmp_path / "n.jsonl", records), "token"), tmp_path,
          r"n\.jsonl:3: field 'tokens' is empty")
    records[2] = {"words": ["a"], "tags": ["O"]}
    fails(config(write_jsonl(tmp_path / "n.jsonl", records), "token"), tmp_path,
          r"n\.jsonl:3 has no field 'tokens'.*classify\.tokens_field")


def test_bad_augmentation_settings_are_errors(ner_file: Path, sentiment_file: Path,
                                              tmp_path: Path):
    fails(config(ner_file, "token", data={"augment": ["word_swap=0.1"]}), tmp_path,
          "word_swap would move or drop words without their tags")
    fails(config(sentiment_file, data={"augment": ["shuffle=0.1"]}), tmp_path,
          "unknown augmentation 'shuffle=0.1'; valid names: sentence_shuffle")


def test_cli_errors_are_one_line(sentiment_run: Path, sentiment_file: Path, tiny_run: Path,
                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    expect_error(capsys, "finetune-classify", "--data", str(tmp_path / "none.csv"),
                 "--out", str(tmp_path / "x"), match="data file")
    expect_error(capsys, "classify", str(tiny_run), "--text", "hi",
                 match="is not a classifier run")
    expect_error(capsys, "classify", str(tmp_path / "nothing"), "--text", "hi",
                 match="does not exist")
    expect_error(capsys, "finetune-classify", "--init-from", str(sentiment_run), "--data",
                 str(sentiment_file), "--out", str(tmp_path / "y"), match="is a classifier run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    expect_error(capsys, "finetune-classify", "--out", str(tmp_path / "run"), "--overwrite",
                 match="not a gptkit run")
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_augmentation_never_draws_end_of_text_or_unknown():
    tokenizer = Tokenizer.train_char(["abc"])
    assert set(special_ids(tokenizer)) == {tokenizer.eot_id, tokenizer.vocab_size - 1}


def test_a_loss_that_becomes_nan_stops_training(sentiment_file: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch):
    from gptkit.train.trainer import Trainer
    from tests.train.test_metrics import strict_json

    original = Trainer._train_step

    def diverging(self: Trainer) -> Any:
        loss, grad_norm = original(self)
        return loss * float("nan"), grad_norm

    monkeypatch.setattr(Trainer, "_train_step", diverging)
    run = tmp_path / "run"
    with pytest.raises(GptkitError, match="the loss became nan at or before step 5"):
        finetune_classifier(config(sentiment_file, steps=20, train={"log_interval": 5}), run,
                            progress=False)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    last = strict_json(lines[-1])  # strict JSON: null, not NaN
    assert (last["step"], last["kind"], last["loss"]) == (5, "train", None)
