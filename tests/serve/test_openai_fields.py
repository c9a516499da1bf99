"""Every field of OpenAI's completions request: neutral values accepted, penalties and
logit_bias applied, token-id prompts, what cannot be honoured refused with a clear 422, and
GET /v1/models/{id}."""

from __future__ import annotations

from tests.serve.conftest import require_serve

require_serve()

from typing import Any

import pytest

from tests.serve.test_limits import error

NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0.0, "logprobs": None, "best_of": 1,
           "logit_bias": {}, "suffix": None, "user": "someone", "echo": False,
           "stream": False, "stream_options": None, "n": 1, "stop": None, "seed": None}


def complete(client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def texts(result: dict[str, Any]) -> list[str]:
    return [choice["text"] for choice in result["choices"]]


def test_neutral_values_of_every_openai_field_change_nothing(client):
    greedy = {"prompt": "ROMEO:", "max_tokens": 15, "temperature": 0}
    assert texts(complete(client, **greedy, **NEUTRAL)) == texts(complete(client, **greedy))
    # best_of equal to n, and a null for each optional setting
    both = complete(client, **greedy, n=2, best_of=2, top_p=None, frequency_penalty=None)
    assert len(both["choices"]) == 2


def test_penalties_and_logit_bias_reach_generation(client, run):
    greedy = {"prompt": "ROMEO:", "max_tokens": 20, "temperature": 0}
    plain = texts(complete(client, **greedy))[0]
    penalised = texts(complete(client, **greedy, frequency_penalty=2, presence_penalty=2))[0]
    assert penalised != plain and len(set(penalised)) > len(set(plain))
    e_id = run.tokenizer.encode("e")[0]
    forced = complete(client, **greedy, logit_bias={str(e_id): 100})
    assert texts(forced) == ["e" * 20]
    banned = texts(complete(client, **greedy, logit_bias={str(e_id): -100}))[0]
    assert "e" not in banned


def test_token_id_prompts_are_the_texts_they_encode(client, run):
    ids = run.tokenizer.encode("ROMEO:")
    greedy = {"max_tokens": 10, "temperature": 0}
    by_text = texts(complete(client, prompt="ROMEO:", **greedy))
    assert texts(complete(client, prompt=ids, **greedy)) == by_text
    two = complete(client, prompt=[ids, run.tokenizer.encode("To be")], **greedy)
    assert texts(two) == by_text + texts(complete(client, prompt="To be", **greedy))
    assert two["usage"]["prompt_tokens"] == len(ids) + 5
    echoed = complete(client, prompt=ids, echo=True, **greedy)
    assert texts(echoed) == ["ROMEO:" + by_text[0]]


@pytest.mark.parametrize(("body", "param", "says"), [
    ({"prompt": [1, 10**6]}, "prompt", "token id 1000000 is outside the vocabulary"),
    ({"prompt": [[1], [-3]]}, "prompt", "token id -3 is outside the vocabulary"),
    ({"logit_bias": {"999999": 1}}, "logit_bias", "token id 999999 is outside the vocabulary"),
    ({"logit_bias": {"e": 1}}, "logit_bias", "keys are token ids"),
    ({"logit_bias": {"3": 101}}, "logit_bias", "must be in [-100, 100]"),
    ({"frequency_penalty": 2.5}, "frequency_penalty", "less than or equal to 2"),
    ({"presence_penalty": -3}, "presence_penalty", "greater than or equal to -2"),
    ({"suffix": "the end"}, "suffix", "suffix is not supported"),
    ({"logprobs": 21}, "logprobs", "more than the server's limit of 20"),
    ({"best_of": 1, "n": 2}, "best_of", "best_of (1) must be at least n (2)"),
])
def test_what_cannot_be_honoured_is_a_clear_422(client, body, param, says):
    found = error(client.post("/v1/completions", json={"max_tokens": 2, **body}), 422)
    assert found["param"] == param and says in found["message"], found
    assert client.get("/health").json()["status"] == "ok"


def test_a_model_is_retrieved_by_id(client):
    card = client.get("/v1/models/tiny").json()
    assert card == client.get("/v1/models").json()["data"][0]
    found = error(client.get("/v1/models/gpt-4"), 404, "model_not_found")
    assert "'gpt-4' is not served here" in found["message"] and found["param"] == "model"
