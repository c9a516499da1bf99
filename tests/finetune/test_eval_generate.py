"""`gptkit eval-generate` and its metrics: BLEU, ROUGE and exact match of generated answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from gptkit.config import ModelConfig, RunConfig, save_config
from gptkit.errors import GptkitError
from gptkit.finetune.eval_generate import evaluate_generation, score_texts
from gptkit.finetune.records import Record, read_records
from gptkit.finetune.template import segments
from gptkit.model import GPT
from gptkit.run import load_run
from gptkit.tokenizers import Tokenizer
from gptkit.train import checkpoint
from tests.test_cli import expect_error, run_cli

pytest.importorskip("sacrebleu")
pytest.importorskip("rouge_score")

# what the tiny model learns by heart; the chat is rendered by the SFT template
LEARNT = [
    {"prompt": "2+3=", "response": "5"},
    {"prompt": "4+4=", "response": "8"},
    {"prompt": "Q: sky colour?\nA: ", "response": "blue sky"},
    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "grass?"},
                  {"role": "assistant", "content": "green grass"}]},
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def memorised_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A one-layer model trained until it answers the LEARNT records exactly (about a second)."""
    texts = ["".join(text for text, _ in segments(Record(r, f"learnt:{i}")))
             for i, r in enumerate(LEARNT)]
    tokenizer = Tokenizer.train_char(texts + ["0123456789"])
    cfg = RunConfig(name="memorised",
                    model=ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only wait on a busy machine
    try:
        torch.manual_seed(0)
        model = GPT.from_config(cfg.model, tokenizer.vocab_size)
        ids = [tokenizer.encode(t) for t in texts]
        width = max(map(len, ids))
        eot = tokenizer.eot_id
        assert eot is not None
        x = torch.tensor([s[:-1] + [eot] * (width - len(s)) for s in ids])
        y = torch.tensor([s[1:] + [-100] * (width - len(s)) for s in ids])
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for _ in range(200):
            _, loss = model(x, y)
            assert loss is not None
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    run_dir = tmp_path_factory.mktemp("runs") / "memorised"
    run_dir.mkdir()
    save_config(cfg, run_dir / "config.yaml")
    tokenizer.save(run_dir / "tokenizer.json")
    checkpoint.save_best(run_dir, model, {"step": 200, "val_loss": loss.item()})
    yield run_dir


# --- metrics --------------------------------------------------------------------------------


def test_identical_texts_score_perfectly():
    texts = ["the cat sat on the mat", "a dog ran in the park today"]
    scores = score_texts(texts, [" " + t + "\n" for t in texts])  # whitespace is stripped
    assert scores.n == 2
    assert scores.bleu == pytest.approx(100.0)
    assert (scores.rouge1, scores.rouge2, scores.rougeL, scores.exact_match) == (1, 1, 1, 1)
    assert set(scores.to_dict()) == {"n", "bleu", "rouge1", "rouge2", "rougeL", "exact_match"}


def test_disjoint_texts_score_zero():
    scores = score_texts(["red green blue yellow"], ["one two three four"])
    assert scores.to_dict() == {"n": 1, "bleu": 0.0, "rouge1": 0.0, "rouge2": 0.0,
                                "rougeL": 0.0, "exact_match": 0.0}


def test_partial_overlap_by_hand():
    # hypothesis 7 words, reference 6; matched n-grams: 5/7, 3/6, 2/5, 1/4; no brevity penalty
    scores = score_texts(["the cat sat on the mat today"], ["the cat sat on a mat"])
    assert scores.bleu == pytest.approx(100 * (5 / 7 * 3 / 6 * 2 / 5 * 1 / 4) ** 0.25)
    assert scores.rouge1 == pytest.approx(2 * 5 / (7 + 6))  # 5 shared words
    assert scores.rouge2 == pytest.approx(2 * 3 / (6 + 5))  # 3 shared bigrams
    assert scores.rougeL == pytest.approx(2 * 5 / (7 + 6))  # longest common subsequence: 5
    assert scores.exact_match == 0.0


def test_means_over_examples_and_stemming():
    scores = score_texts(["19", "cats running", "x"], ["19", "cat runs", "y"])
    assert scores.exact_match == pytest.approx(1 / 3)
    assert scores.rouge1 == pytest.approx(2 / 3)  # stems match: cat, run
    assert scores.bleu == 0.0  # corpus BLEU needs 4-grams: short answers score 0


def test_score_texts_rejects_bad_input():
    with pytest.raises(GptkitError, match="2 predictions but 1 references"):
        score_texts(["a", "b"], ["a"])
    with pytest.raises(GptkitError, match="no predictions"):
        score_texts([], [])


# --- generation -----------------------------------------------------------------------------


def test_cli_scores_answers_and_writes_predictions(memorised_run, capsys, tmp_path):
    rows = [dict(r) for r in LEARNT]
    rows[1] = {"prompt": "4+4=", "reference": "9"}  # a wrong reference: not an exact match
    rows[2] = {**rows[2], "reference": rows[2].pop("response")}
    tasks = write_jsonl(tmp_path / "tasks.jsonl", rows)
    predictions = tmp_path / "predictions.jsonl"
    code, out, err = run_cli(capsys, "eval-generate", str(memorised_run), "--data", str(tasks),
                             "--max-new-tokens", "16", "--batch-size", "3", "--predictions",
                             str(predictions), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["n"] == 4 and result["exact_match"] == pytest.approx(0.75)
    assert 0 < result["rouge1"] < 1 and 0 <= result["bleu"] <= 100
    assert {"rouge2", "rougeL"} <= set(result)
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert [p["prediction"] for p in lines] == ["5", "8", "blue sky", "green grass"]
    assert [p["exact"] for p in lines] == [True, False, True, True]
    assert lines[1] == {"prompt": "4+4=", "reference": "9", "prediction": "8", "exact": False}
    assert lines[3]["prompt"].endswith("<|assistant|>\n")

    code, out, _ = run_cli(capsys, "eval-generate", str(memorised_run), "--data", str(tasks),
                           "--max-new-tokens", "16", "--limit", "2", "--num-beams", "2")
    assert code == 0 and "2 examples" in out and "exact match  0.5000" in out
    assert "ROUGE-L" in out and "BLEU" in out


def test_batching_does_not_change_greedy_answers(memorised_run):
    run = load_run(memorised_run)
    records = [Record(r, f"learnt:{i}") for i, r in enumerate(LEARNT)]
    one = evaluate_generation(run, records, max_new_tokens=12, batch_size=1)
    four = evaluate_generation(run, records, max_new_tokens=12, batch_size=4)
    assert [e.prediction for e in one.examples] == [e.prediction for e in four.examples]
    assert one.exact_match == 1.0 and one.to_dict() == four.to_dict()


def test_bad_task_files(memorised_run, capsys, tmp_path):
    def check(name: str, text: str, match: str, *extra: str) -> None:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        expect_error(capsys, "eval-generate", str(memorised_run), "--data", str(path), *extra,
                     match=match)

    good = json.dumps(LEARNT[0]) + "\n"
    check("noref.jsonl", good + json.dumps({"prompt": "2+3="}) + "\n",
          "noref.jsonl:2 has no reference answer")
    check("chat.jsonl", json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n",
          "chat.jsonl:1 has no reference answer")
    check("empty.jsonl", "\n\n", "holds no records")
    check("long.jsonl", good + json.dumps({"prompt": "1" * 80, "response": "1"}) + "\n",
          "long.jsonl:2: the prompt is 80 tokens but the model reads at most 64")
    check("bad.jsonl", good + "{not json\n", "bad.jsonl:2 is not valid JSON")
    check("ok.jsonl", good, "--batch-size must be >= 1", "--batch-size", "0")
    check("ok.jsonl", good, "--max-new-tokens must be >= 1", "--max-new-tokens", "0")
    check("ok.jsonl", good, "--limit must be >= 1", "--limit", "0")
    check("ok.jsonl", good, "its folder does not exist", "--predictions",
          str(tmp_path / "no" / "p.jsonl"))
    expect_error(capsys, "eval-generate", str(memorised_run), "--data",
                 str(tmp_path / "missing.jsonl"), match="does not exist")


def test_records_api_reads_what_the_cli_reads(memorised_run, tmp_path):
    tasks = write_jsonl(tmp_path / "tasks.jsonl", LEARNT[:2])
    scores = evaluate_generation(load_run(memorised_run), read_records(tasks),
                                 max_new_tokens=4)
    assert scores.n == 2 and scores.exact_match == 1.0
    assert scores.examples[0].reference == "5"
