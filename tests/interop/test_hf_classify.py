"""Classifier runs to and from Hugging Face: `gptkit export` writes GPT2ForSequenceClassification
/ GPT2ForTokenClassification folders whose transformers pipelines give `gptkit classify`'s
labels and scores, and `gptkit import` reads them (and folders transformers wrote) back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gptkit.errors import GptkitError
from gptkit.interop.hf_classify import fold_bias, to_hf_head
from gptkit.run import load_run
from gptkit.train.objectives.classify import finetune_classifier
from tests.finetune.test_classify import config, ner_rows, sentiment_rows, write_csv, write_jsonl
from tests.test_cli import expect_error, run_cli

transformers = pytest.importorskip("transformers", reason="needs the hf extra")

TEXTS = ["I love it", "the plot was awful", "we saw it yesterday with friends and popcorn",
         "excellent", "boring film , terrible ending", "actors music story"]
SENTENCES = ["Anna lives in Oslo .", "Today Jordan Berg flew to Rio de Janeiro .",
             "Kofi moved from San Diego to Georgia .", "Priya works in Cape Town with Lars ."]


@pytest.fixture(scope="module")
def sentiment_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seq")
    data = write_csv(root / "sentiment.csv", sentiment_rows(200))
    finetune_classifier(config(data, steps=40, train={"eval_interval": 20}), root / "run",
                        progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    data = write_jsonl(root / "ner.jsonl", ner_rows(200))
    finetune_classifier(config(data, "token", steps=40, train={"eval_interval": 20}),
                        root / "run", progress=False)
    return root / "run"


def export(capsys: pytest.CaptureFixture[str], run: Path, out: Path) -> Path:
    code, text, err = run_cli(capsys, "export", str(run), "--out", str(out))
    assert code == 0, err
    assert "pipeline(" in text and "classification" in text
    return out


def test_sequence_export_gives_classify_labels_and_scores_in_the_pipeline(
        sentiment_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = export(capsys, sentiment_run, tmp_path / "hf")
    run = load_run(sentiment_run)
    assert run.classifier is not None
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2ForSequenceClassification"]
    assert cfg["id2label"] == {"0": "neg", "1": "pos"} and cfg["label2id"] == {"neg": 0, "pos": 1}
    assert cfg["pad_token_id"] == run.tokenizer.eot_id
    assert not (out / "generation_config.json").exists()
    assert "pipeline_tag: text-classification" in (out / "README.md").read_text()
    expected = run.classifier.predict(TEXTS)
    # batched: the pipeline pads on the right, and the model pools the last non-pad token
    for batch_size in (1, 4):
        pipe = transformers.pipeline("text-classification", model=str(out), top_k=None,
                                     batch_size=batch_size)
        for want, got in zip(expected, pipe(TEXTS), strict=True):
            scores = {r["label"]: r["score"] for r in got}
            assert scores.keys() == want.probabilities.keys()
            for label, p in want.probabilities.items():
                assert scores[label] == pytest.approx(p, abs=1e-5)
    best = transformers.pipeline("text-classification", model=str(out))(TEXTS)
    code, text, _ = run_cli(capsys, "classify", str(sentiment_run), "--json",
                            *[a for t in TEXTS for a in ("--text", t)])
    assert code == 0
    for mine, theirs in zip(json.loads(text), best, strict=True):
        assert str(mine["label"]) == theirs["label"]
        assert mine["score"] == pytest.approx(theirs["score"], abs=1e-5)


def first_subtoken_tags(pipe_out: list[dict], sentence: str) -> list[tuple[str, float]]:
    """Per whitespace-separated word, the pipeline's tag and score at the word's first token
    (the one whose span starts at the word, or at the space before it)."""
    starts, at = [], 0
    for word in sentence.split():
        at = sentence.index(word, at)
        starts.append(at)
        at += len(word)
    by_start = {}
    for token in sorted(pipe_out, key=lambda t: t["index"]):
        by_start.setdefault(token["start"], token)
    tags = []
    for start in starts:
        token = by_start.get(start) or by_start[start - 1]
        tags.append((token["entity"], token["score"]))
    return tags


def test_token_export_gives_classify_tags_and_scores_in_the_pipeline(
        ner_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = export(capsys, ner_run, tmp_path / "hf")
    run = load_run(ner_run)
    assert run.classifier is not None
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["GPT2ForTokenClassification"]
    assert [cfg["id2label"][str(i)] for i in range(len(cfg["id2label"]))] == [
        str(lab) for lab in run.classifier.labels]
    pipe = transformers.pipeline("token-classification", model=str(out),
                                 aggregation_strategy="none", ignore_labels=[])
    expected = run.classifier.predict_tokens([s.split() for s in SENTENCES])
    for sentence, want, got in zip(SENTENCES, expected, pipe(SENTENCES), strict=True):
        tags = first_subtoken_tags(got, sentence)
        assert [t for t, _ in tags] == [w.tag for w in want]
        assert [s for _, s in tags] == pytest.approx([w.score for w in want], abs=1e-5)
    code, text, _ = run_cli(capsys, "classify", str(ner_run), "--text", SENTENCES[1])
    assert code == 0
    assert text.split() == [f"{w.word}/{w.tag}" for w in expected[1]]


@pytest.mark.parametrize("which", ["sentiment_run", "ner_run"])
def test_import_of_export_classifies_identically(which: str, request: pytest.FixtureRequest,
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]):
    run_dir = request.getfixturevalue(which)
    out = export(capsys, run_dir, tmp_path / "hf")
    before = load_run(run_dir).classifier
    assert before is not None
    # once as exported, once as transformers writes it back (save_pretrained)
    auto = (transformers.AutoModelForTokenClassification if before.task == "token"
            else transformers.AutoModelForSequenceClassification)
    resaved = tmp_path / "resaved"
    auto.from_pretrained(str(out)).save_pretrained(str(resaved))
    transformers.AutoTokenizer.from_pretrained(str(out)).save_pretrained(str(resaved))
    for i, folder in enumerate((out, resaved)):
        code, text, err = run_cli(capsys, "import", str(folder), "--out", str(tmp_path / f"r{i}"))
        assert code == 0, err
        assert "gptkit classify" in text
        after = load_run(tmp_path / f"r{i}").classifier
        assert after is not None and after.task == before.task
        assert [str(lab) for lab in before.labels] == after.labels
        if before.task == "sequence":
            for a, b in zip(before.predict(TEXTS), after.predict(TEXTS), strict=True):
                assert str(a.label) == b.label
                assert b.probabilities == pytest.approx(a.probabilities, abs=1e-5)
        else:
            words = [s.split() for s in SENTENCES]
            for a_row, b_row in zip(before.predict_tokens(words), after.predict_tokens(words),
                                    strict=True):
                assert [w.tag for w in a_row] == [w.tag for w in b_row]
                assert [w.score for w in b_row] == pytest.approx([w.score for w in a_row],
                                                                 abs=1e-5)


def test_mean_pooling_is_refused_with_a_reason(sentiment_run: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]):
    run = tmp_path / "mean"
    shutil.copytree(sentiment_run, run)
    cfg = run / "config.yaml"
    text = cfg.read_text()
    assert "pooling: last" in text
    cfg.write_text(text.replace("pooling: last", "pooling: mean"))
    expect_error(capsys, "export", str(run), "--out", str(tmp_path / "hf"),
                 match="classify.pooling=mean")
    assert not (tmp_path / "hf").exists()


def test_the_head_bias_is_folded_into_the_final_norm_or_refused():
    torch.manual_seed(0)
    weight, bias = torch.randn(3, 8), torch.randn(3)
    state = {"transformer.ln_f.bias": torch.randn(8), "score.weight": weight, "score.bias": bias}
    hf = to_hf_head(state, "sequence")
    assert set(hf) == {"transformer.ln_f.bias", "score.weight"}
    h = torch.randn(5, 8)  # normalised states before the final bias
    ours = (h + state["transformer.ln_f.bias"]) @ weight.T + bias
    theirs = (h + hf["transformer.ln_f.bias"]) @ hf["score.weight"].T
    assert torch.allclose(ours, theirs, atol=1e-5)
    token = to_hf_head(state, "token")
    assert torch.equal(token["classifier.bias"], bias)
    assert torch.equal(token["transformer.ln_f.bias"], state["transformer.ln_f.bias"])
    same = torch.randn(1, 8).repeat(2, 1)  # two labels with one weight vector, other biases
    with pytest.raises(GptkitError, match="no head bias"):
        fold_bias(same, torch.tensor([0.0, 1.0]))
