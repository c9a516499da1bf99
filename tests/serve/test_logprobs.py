"""Log-probabilities of POST /v1/completions: `logprobs` in OpenAI's legacy format, `echo`
with the prompt's log-probabilities (what lm-evaluation-harness' loglikelihood reads),
streamed logprobs, `best_of` ranking, the engine's records, and the 422s."""

from __future__ import annotations

from tests.serve.conftest import require_serve

require_serve()

import math
from typing import Any

import pytest
import torch

from gptkit.generation.config import GenerationConfig
from gptkit.run import Run
from gptkit.serve import ServeSettings
from gptkit.serve.engine import Engine
from gptkit.serve.jobs import Event, Finish, Job, Prompt
from tests.serve.conftest import sse_events
from tests.serve.test_limits import error


def complete(client: Any, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def model_logprobs(run: Run, ids: list[int]) -> torch.Tensor:
    """log p(next | prefix) at every position, from gptkit's own model forward (fp32)."""
    run.model.eval()
    with torch.no_grad():
        logits, _ = run.model(torch.tensor([ids]))
    return logits[0].float().log_softmax(dim=-1)


def check_consistent(choice: dict[str, Any], k: int) -> None:
    """tokens spell the text at their offsets; top_logprobs hold the top k (sorted) and the
    chosen token."""
    lp = choice["logprobs"]
    text = choice["text"]
    assert "".join(lp["tokens"]) == text
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) \
        == len(lp["text_offset"])
    for token, offset in zip(lp["tokens"], lp["text_offset"], strict=True):
        assert text[offset : offset + len(token)] == token
    for token, logprob, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"],
                                   strict=True):
        if logprob is None:
            assert top is None
            continue
        values = list(top.values())
        assert values[:k] == sorted(values[:k], reverse=True)
        assert len(top) in (k, k + 1) and top[token] == logprob
        assert all(v <= values[0] for v in values)


def test_echo_logprobs_are_the_models_log_softmax(client, run):
    ids = run.tokenizer.encode("ROMEO: what light")
    result = complete(client, prompt=ids, echo=True, max_tokens=0, logprobs=3)
    (choice,) = result["choices"]
    lp = choice["logprobs"]
    assert choice["text"] == "ROMEO: what light" and lp["tokens"][0] == "R"
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    expected = model_logprobs(run, ids)
    for i in range(1, len(ids)):
        assert math.isclose(lp["token_logprobs"][i], expected[i - 1, ids[i]].item(),
                            abs_tol=1e-5)
        top = expected[i - 1].topk(3)
        names = [run.tokenizer.decode([t]) for t in top.indices.tolist()]
        assert list(lp["top_logprobs"][i])[:3] == names
        assert list(lp["top_logprobs"][i].values())[:3] == pytest.approx(
            top.values.tolist(), abs=1e-5)
    check_consistent(choice, 3)
    assert result["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 0,
                               "total_tokens": len(ids)}


def test_lm_eval_loglikelihood_request(client, run):
    """What lm-eval's local-completions sends: context + continuation ids, echo, one token."""
    context, continuation = run.tokenizer.encode("ROMEO:"), run.tokenizer.encode(" the")
    ids = context + continuation
    result = complete(client, prompt=ids, echo=True, max_tokens=1, logprobs=1, temperature=0)
    lp = result["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) + 1
    expected = model_logprobs(run, ids)
    got = lp["token_logprobs"][len(context) : -1]
    want = [expected[i - 1, ids[i]].item() for i in range(len(context), len(ids))]
    assert got == pytest.approx(want, abs=1e-5)
    greedy = [expected[i - 1].argmax().item() == ids[i] for i in range(len(context), len(ids))]
    is_greedy = [logprob == max(top.values()) for logprob, top in
                 zip(got, lp["top_logprobs"][len(context) : -1], strict=True)]
    assert is_greedy == greedy
    # the generated token is the greedy one: its logprob is the max of its top_logprobs
    assert lp["token_logprobs"][-1] == max(lp["top_logprobs"][-1].values())


def test_generated_logprobs(client, run):
    greedy = complete(client, prompt="ROMEO:", max_tokens=12, temperature=0, logprobs=2)
    (choice,) = greedy["choices"]
    check_consistent(choice, 2)
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == greedy["usage"]["completion_tokens"] == 12
    for logprob, top in zip(lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert logprob == max(top.values()) and len(top) == 2
    # echo: offsets of the generated tokens count the prompt
    echoed = complete(client, prompt="ROMEO:", max_tokens=5, temperature=0, logprobs=1,
                      echo=True)["choices"][0]
    check_consistent(echoed, 1)
    assert echoed["logprobs"]["text_offset"][6] == 6


def test_temperature_1_without_processors_reports_the_raw_model(run):
    engine = Engine(run)
    events: list[Event] = []
    prompt = run.tokenizer.encode("ROMEO:")
    settings = GenerationConfig(max_new_tokens=6, temperature=1.0, top_k=None, seed=3)
    engine.run_batch([Job(prompts=[prompt], settings=settings, stream=False,
                          emit=events.append, logprobs=0)])
    (finish,) = [e for e in events if isinstance(e, Finish)]
    assert finish.tokens is not None
    ids = prompt + [t.id for t in finish.tokens]
    expected = model_logprobs(run, ids)
    want = [expected[i - 1, ids[i]].item() for i in range(len(prompt), len(ids))]
    assert [t.logprob for t in finish.tokens] == pytest.approx(want, abs=1e-5)
    assert all(t.top == [] for t in finish.tokens)  # logprobs 0: no alternatives


def test_a_stop_string_cuts_the_tokens_too(client):
    greedy = {"prompt": "ROMEO:", "max_tokens": 20, "temperature": 0, "logprobs": 1}
    full = complete(client, **greedy)["choices"][0]["text"]
    stop = full[8:10]
    cut = complete(client, **greedy, stop=[stop])["choices"][0]
    assert cut["text"] == full[: full.index(stop)]
    check_consistent(cut, 1)


def test_streamed_logprobs_are_the_plain_ones(client):
    body = {"prompt": "ROMEO:", "max_tokens": 15, "temperature": 0.9, "seed": 5, "n": 2,
            "logprobs": 2, "echo": True}
    plain = complete(client, **body)["choices"]
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
        events = sse_events(response.iter_lines())
    joined: dict[int, dict[str, list[Any]]] = {}
    for event in events[:-1]:
        for choice in event["choices"]:
            lp = choice["logprobs"]
            if lp is None:
                assert choice["text"] == ""  # the finish chunks
                continue
            assert "".join(lp["tokens"]) == choice["text"]  # a chunk's tokens: its text
            into = joined.setdefault(choice["index"], {})
            for key, values in lp.items():
                into[key] = into.get(key, []) + values
    for choice in plain:
        assert joined[choice["index"]] == choice["logprobs"]


def test_best_of_returns_the_best_candidate(client, run):
    body: dict[str, Any] = {"prompt": "ROMEO:", "max_tokens": 10, "temperature": 1.0,
                            "seed": 11, "logprobs": 0}
    if run.tokenizer.eot_id is not None:  # no candidate ends early: ranks from what is shown
        body["logit_bias"] = {str(run.tokenizer.eot_id): -100}
    three = complete(client, **body, n=3)
    means = [sum(c["logprobs"]["token_logprobs"]) / len(c["logprobs"]["token_logprobs"])
             for c in three["choices"]]
    assert all(c["finish_reason"] == "length" for c in three["choices"])
    best = three["choices"][means.index(max(means))]
    one = complete(client, **body, n=1, best_of=3)
    assert [c["text"] for c in one["choices"]] == [best["text"]]
    assert one["choices"][0]["logprobs"] == best["logprobs"]
    assert one["usage"] == three["usage"]  # every candidate's tokens count
    two = complete(client, **body, n=2, best_of=3)["choices"]
    ranked = sorted(range(3), key=lambda i: -means[i])[:2]
    assert [c["text"] for c in two] == [three["choices"][i]["text"] for i in ranked]
    assert [c["index"] for c in two] == [0, 1]
    plain = complete(client, **{**body, "logprobs": None}, n=1, best_of=3)["choices"][0]
    assert plain["text"] == best["text"] and plain["logprobs"] is None


@pytest.mark.parametrize(("body", "param", "says"), [
    ({"logprobs": 21}, "logprobs", "more than the server's limit of 20"),
    ({"logprobs": -1}, "logprobs", "greater than or equal to 0"),
    ({"best_of": 1, "n": 2}, "best_of", "best_of (1) must be at least n (2)"),
    ({"best_of": 3, "stream": True}, "best_of", "cannot stream"),
    ({"prompt": [5] * 33, "echo": True, "logprobs": 1}, "prompt",
     "inside the model's context window of 32 tokens"),
])
def test_what_cannot_be_done_is_a_clear_422(client, body, param, says):
    found = error(client.post("/v1/completions", json={"max_tokens": 2, **body}), 422)
    assert found["param"] == param and says in found["message"], found


def test_a_long_prompt_without_echo_logprobs_still_works(client):
    assert complete(client, prompt=[5] * 40, echo=True, max_tokens=2)["choices"]
    assert complete(client, prompt=[5] * 40, logprobs=1, max_tokens=2)["choices"]


def test_the_limit_is_a_setting_shown_by_health(run):
    from fastapi.testclient import TestClient

    from gptkit.serve import create_app

    assert TestClient(create_app(run)).get("/health").json()["limits"]["max_logprobs"] == 20
    with TestClient(create_app(run, ServeSettings(max_logprobs=8))) as wide:
        assert wide.get("/health").json()["limits"]["max_logprobs"] == 8
        choice = complete(wide, prompt="A", max_tokens=3, logprobs=8, temperature=0)
        check_consistent(choice["choices"][0], 8)
    with pytest.raises(Exception, match="--max-logprobs must be >= 0"):
        ServeSettings(max_logprobs=-1).check()


def engine_job(run: Run, logprobs: int | None, seed: int, echo: bool = False
               ) -> tuple[Job, list[Event]]:
    events: list[Event] = []
    settings = GenerationConfig(max_new_tokens=8, temperature=0.8, seed=seed, num_samples=2)
    made = Job(prompts=[run.tokenizer.encode("ROMEO:"), run.tokenizer.encode("To be")],
               settings=settings, stream=False, emit=events.append, logprobs=logprobs,
               echo_logprobs=echo)
    return made, events


def test_engine_records_do_not_depend_on_the_batch(run):
    """Jobs asking logprobs and not share a batch; each gets what it gets alone."""
    engine = Engine(run)
    alone = []
    for logprobs, seed in ((2, 1), (None, 2), (0, 3)):
        single, events = engine_job(run, logprobs, seed, echo=logprobs == 2)
        engine.run_batch([single])
        alone.append(events)
    together = [engine_job(run, logprobs, seed, echo=logprobs == 2)
                for logprobs, seed in ((2, 1), (None, 2), (0, 3))]
    engine.run_batch([j for j, _ in together])
    assert engine.stats.largest_batch == 3
    for before, (_, after) in zip(alone, together, strict=True):
        first = [e for e in before if isinstance(e, Finish | Prompt)]
        second = [e for e in after if isinstance(e, Finish | Prompt)]
        assert len(first) == len(second)
        for a, b in zip(first, second, strict=True):
            assert type(a) is type(b)
            if isinstance(a, Finish) and isinstance(b, Finish):
                assert a.text == b.text
            ta, tb = a.tokens or [], b.tokens or []
            assert [t.id for t in ta] == [t.id for t in tb]
            assert [t.offset for t in ta] == [t.offset for t in tb]
            for x, y in zip(ta, tb, strict=True):
                assert (x.logprob is None) == (y.logprob is None)
                if x.logprob is not None and y.logprob is not None:
                    assert math.isclose(x.logprob, y.logprob, abs_tol=1e-5)
                assert [i for i, _, _ in x.top or []] == [i for i, _, _ in y.top or []]
    no_logprobs = together[1][1]
    assert all(e.tokens is None for e in no_logprobs if isinstance(e, Finish))
    assert not any(isinstance(e, Prompt) for e in no_logprobs)
