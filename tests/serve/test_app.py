"""The API's schema and meaning: completions as `gptkit sample` makes them (same seed, same
text), streaming that adds up to the whole text, models/health, classification, attention."""

from __future__ import annotations

from tests.serve.conftest import require_serve

require_serve()

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from gptkit.run import load_run
from gptkit.serve import create_app
from gptkit.train.objectives.classify import finetune_classifier
from gptkit.viz.attention import attention_maps
from tests.finetune.test_classify import config, ner_rows, sentiment_rows, write_csv, write_jsonl
from tests.serve.conftest import sse_events, stream_texts
from tests.test_cli import run_cli

SEPARATOR = "\n" + "-" * 40 + "\n"


def complete(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def texts(result: dict[str, Any]) -> list[str]:
    return [c["text"] for c in sorted(result["choices"], key=lambda c: c["index"])]


def cli_sample(capsys, run: Path, *argv: str) -> list[str]:
    code, out, err = run_cli(capsys, "sample", str(run), *argv)
    assert code == 0, err
    return out[:-1].split(SEPARATOR)


def test_health_and_models(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["task"] == "generate"
    assert health["auth"] is False and health["context_length"] == 32
    assert health["defaults"] == {"max_tokens": 40, "temperature": 0.8, "top_k": 200,
                                  "top_p": 1.0}
    assert health["limits"]["max_tokens"] == 256
    pool = health["kv_pool"]  # preallocated: --max-batch-size rows of the full context
    assert (pool["rows"], pool["positions_per_row"]) == (health["limits"]["max_batch_size"], 32)
    assert pool["bytes"] == pool["rows"] * 2 * 2 * 32 * 32 * 4  # k and v, 2 layers, 32 wide
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    (card,) = models["data"]
    assert card["id"] == "tiny" and card["object"] == "model" and card["owned_by"] == "gptkit"
    assert isinstance(card["created"], int) and card["context_length"] == 32


def test_completion_schema(client):
    result = complete(client, prompt="ROMEO:", max_tokens=12, temperature=0)
    assert result["object"] == "text_completion" and result["model"] == "tiny"
    assert result["id"].startswith("cmpl-") and isinstance(result["created"], int)
    (choice,) = result["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None
    assert choice["finish_reason"] in ("stop", "length")
    usage = result["usage"]
    assert usage["prompt_tokens"] == len("ROMEO:")  # characters are tokens here
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert choice["finish_reason"] == "stop" or usage["completion_tokens"] == 12
    # the named model is accepted
    assert complete(client, model="tiny", prompt="A", max_tokens=1)["choices"][0]["text"]


def test_greedy_text_is_gptkit_samples(client, tiny_run, capsys):
    (expected,) = cli_sample(capsys, tiny_run, "--prompt", "ROMEO:", "--temperature", "0",
                             "--max-new-tokens", "60")
    result = complete(client, prompt="ROMEO:", max_tokens=60, temperature=0)
    assert "ROMEO:" + texts(result)[0] == expected
    echoed = complete(client, prompt="ROMEO:", max_tokens=60, temperature=0, echo=True)
    assert texts(echoed) == [expected]


def test_int8_models_give_gptkit_sample_quantize_text(tiny_run, capsys):

    (expected,) = cli_sample(capsys, tiny_run, "--prompt", "ROMEO:", "--temperature", "0",
                             "--max-new-tokens", "30", "--quantize", "int8")
    with TestClient(create_app(load_run(tiny_run, quantize="int8"))) as client:
        result = complete(client, prompt="ROMEO:", max_tokens=30, temperature=0)
    assert "ROMEO:" + texts(result)[0] == expected


def test_seeded_sampling_is_gptkit_samples(client, tiny_run, capsys):
    settings = ("--temperature", "0.9", "--top-k", "20", "--top-p", "0.95", "--seed", "7",
                "--max-new-tokens", "50")
    expected = cli_sample(capsys, tiny_run, "--prompt", "To be", "--num-samples", "3",
                          *settings)
    result = complete(client, prompt="To be", n=3, temperature=0.9, top_k=20, top_p=0.95,
                      seed=7, max_tokens=50)
    assert ["To be" + t for t in texts(result)] == expected
    assert len(set(expected)) > 1  # the samples differ
    # several prompts in one request: as `gptkit sample` with several --prompt
    expected = cli_sample(capsys, tiny_run, "--prompt", "To be", "--prompt", "KING:",
                          "--num-samples", "2", *settings)
    result = complete(client, prompt=["To be", "KING:"], n=2, temperature=0.9, top_k=20,
                      top_p=0.95, seed=7, max_tokens=50, echo=True)
    assert texts(result) == expected
    # a stop string cuts the text as it does for gptkit sample
    (alone,) = cli_sample(capsys, tiny_run, "--prompt", "To be", *settings)
    stop = alone[len("To be") + 8 : len("To be") + 10]
    (stopped,) = cli_sample(capsys, tiny_run, "--prompt", "To be", *settings, "--stop", stop)
    result = complete(client, prompt="To be", temperature=0.9, top_k=20, top_p=0.95, seed=7,
                      max_tokens=50, stop=[stop, "QQQ"])
    assert "To be" + texts(result)[0] == stopped
    assert result["choices"][0]["finish_reason"] == "stop"


def test_omitted_settings_are_the_runs_sample_settings(client):
    explicit = complete(client, prompt="A", seed=3, max_tokens=40, temperature=0.8, top_k=200,
                        top_p=1.0)
    assert texts(complete(client, prompt="A", seed=3)) == texts(explicit)
    assert complete(client, prompt="A", seed=3, top_k=0)["choices"] != []  # 0 = every token
    # no seed: fresh randomness each time (two 40-token samples agree by chance ~never)
    unseeded = {texts(complete(client, prompt="A", max_tokens=40, temperature=1.0))[0]
                for _ in range(3)}
    assert len(unseeded) > 1


def test_finish_reasons_and_empty_prompts(client):
    result = complete(client, prompt="ROMEO:", max_tokens=5, temperature=0)
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 5
    zero = complete(client, prompt="ROMEO:", max_tokens=0)
    assert zero["choices"] == [{"index": 0, "text": "", "finish_reason": "length",
                                "logprobs": None}]
    assert zero["usage"]["completion_tokens"] == 0
    for empty in ({}, {"prompt": ""}, {"prompt": None}):  # a fresh document
        result = complete(client, **empty, max_tokens=10, seed=1)
        assert result["usage"]["prompt_tokens"] == 1  # the end-of-text token


def stream(client: TestClient, **body: Any) -> list[Any]:
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_events(response.iter_lines())


@pytest.mark.parametrize("body", [
    {"prompt": "ROMEO:", "temperature": 0, "max_tokens": 60},
    {"prompt": ["To be", "KING:"], "n": 2, "seed": 5, "max_tokens": 50, "stop": ["\n\n", "e,"]},
    {"prompt": "JULIET:", "seed": 9, "max_tokens": 30, "echo": True},
])
def test_streamed_chunks_add_up_to_the_whole_text(client, body):
    whole = complete(client, **body)
    events = stream(client, **body, stream_options={"include_usage": True})
    assert events[-1] == "[DONE]" and all(isinstance(e, dict) for e in events[:-1])
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]
    joined, reasons = stream_texts(events)
    assert [joined[i] for i in range(len(joined))] == texts(whole)
    assert [reasons[i] for i in range(len(reasons))] == [
        c["finish_reason"] for c in whole["choices"]]
    for event in events[:-2]:
        assert event["object"] == "text_completion" and event["model"] == "tiny"
        assert event["id"] == events[0]["id"] and len(event["choices"]) == 1
    # the text arrives in many pieces, not at the end
    assert sum(1 for e in events[:-2] if e["choices"][0]["text"]) > len(joined)
    # without include_usage there is no usage chunk
    assert all(e == "[DONE]" or e["choices"] for e in stream(client, **body))


# --- classifier runs ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def classifier_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A sentiment and an NER classifier, trained for a few steps (their labels need not be
    right: the API must give what gptkit classify gives)."""
    folder = tmp_path_factory.mktemp("classifiers")
    runs = {}
    for task, source in (
        ("sequence", write_csv(folder / "sentiment.csv", sentiment_rows(60))),
        ("token", write_jsonl(folder / "ner.jsonl", ner_rows(60))),
    ):
        runs[task] = folder / task
        finetune_classifier(config(source, task, steps=8), runs[task], progress=False)
    return runs


def test_classifier_runs_are_served_at_v1_classify(classifier_runs, client):
    texts_in = ["what a wonderful film", "boring and awful plot"]
    sequence = load_run(classifier_runs["sequence"]).classifier
    with TestClient(create_app(sequence)) as served:
        assert served.get("/health").json()["task"] == "classify"
        body = served.post("/v1/classify", json={"input": texts_in}).json()
        assert body["task"] == "sequence" and body["model"] == "sequence"
        for item, p in zip(body["data"], sequence.predict(texts_in), strict=True):
            assert item["label"] == str(p.label) and item["score"] == pytest.approx(p.score)
            assert {s["label"]: s["score"] for s in item["scores"]} == pytest.approx(
                p.probabilities)
        one = served.post("/v1/classify", json={"input": texts_in[0]}).json()["data"][0]
        # alone or padded into a batch: the same label, scores equal up to float rounding
        assert one["label"] == body["data"][0]["label"]
        assert one["score"] == pytest.approx(body["data"][0]["score"], abs=1e-6)
        wrong = served.post("/v1/completions", json={"prompt": "hi"})
        assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "wrong_task"
    token = load_run(classifier_runs["token"]).classifier
    with TestClient(create_app(token)) as served:
        body = served.post("/v1/classify", json={"input": "Anna lives in Oslo ."}).json()
        expected = token.predict_tokens([["Anna", "lives", "in", "Oslo", "."]])[0]
        assert body["task"] == "token"
        assert [(w["word"], w["tag"]) for w in body["data"][0]["words"]] == [
            (w.word, w.tag) for w in expected]
    wrong = client.post("/v1/classify", json={"input": "hi"})
    assert wrong.status_code == 400 and "POST /v1/completions" in wrong.json()["error"]["message"]


# --- attention ----------------------------------------------------------------------------------
def test_attention_endpoint_gives_viz_attentions_weights(client, run):
    prompt = "ROMEO:\nWhat"
    body = client.post("/v1/attention", json={"prompt": prompt, "layer": 1}).json()
    maps = attention_maps(run.model, run.tokenizer, prompt)
    assert body["tokens"] == maps.tokens and body["n_layer"] == 2 and body["n_head"] == 2
    weights = np.array(body["weights"])
    assert weights.shape == (2, len(prompt), len(prompt))
    np.testing.assert_allclose(weights, maps.weights[1], atol=1e-5)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-4)
    too_long = client.post("/v1/attention", json={"prompt": "x" * 33})
    assert too_long.status_code == 413 and "32 tokens" in too_long.json()["error"]["message"]
    no_layer = client.post("/v1/attention", json={"prompt": "hi", "layer": 2})
    assert no_layer.status_code == 422 and "2 layers" in no_layer.json()["error"]["message"]

