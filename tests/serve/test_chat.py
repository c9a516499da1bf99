"""POST /v1/chat/completions in process: the answer's shapes, streamed and whole answers
agreeing under a seed, the same text as /v1/completions on the rendered prompt, the
template's end-of-turn text as a stop, the 4xx errors of the new fields, and a run without
a chat template."""

from __future__ import annotations

from tests.serve.conftest import require_serve

require_serve()

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gptkit.chat_template import ChatTemplate, default_chat_template, stop_strings
from gptkit.run import Run
from gptkit.serve import ServeSettings, create_app
from gptkit.serve.chat import ChatRequest, chat_prompt
from tests.serve.conftest import chat_copy, sse_events

HI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
TALK = [*HI, {"role": "assistant", "content": "Well met."},
        {"role": "user", "content": [{"type": "text", "text": "And "},
                                     {"type": "text", "text": "now?"}]}]
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(scope="module")
def chat(chat_run: Run) -> Iterator[TestClient]:
    with TestClient(create_app(chat_run, ServeSettings(max_tokens=64,
                                                       max_prompt_tokens=200))) as client:
        yield client


def post(client: TestClient, **body: Any) -> Any:
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def streamed(client: TestClient, **body: Any) -> list[Any]:
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return sse_events(r.iter_lines())


def rendered(run: Run, messages: list[Any], template: ChatTemplate | None = None) -> list[int]:
    """The ids of the conversation with the generation prompt (as token ids: a char
    tokenizer's unknown characters do not survive decoding)."""
    request = ChatRequest.model_validate({"messages": messages})
    ids, _ = chat_prompt(request, template or default_chat_template(), run.tokenizer)
    return ids


def test_an_answer_has_openais_shape(chat):
    body = post(chat, model="tiny", messages=HI, max_tokens=12, temperature=0)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length") and choice["logprobs"] is None
    usage = body["usage"]
    assert usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


@pytest.mark.parametrize("n", [1, 3])
def test_streamed_and_whole_answers_agree_under_a_seed(chat, n):
    settings = {"messages": TALK, "max_completion_tokens": 20, "temperature": 1.0,
                "seed": 11, "n": n, "stream_options": {"include_usage": True}}
    whole = post(chat, **{k: v for k, v in settings.items() if k != "stream_options"})
    events = streamed(chat, **settings)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    *chunks, last = chunks
    assert last["choices"] == [] and last["usage"] == whole["usage"]
    texts: dict[int, str] = {}
    for i in range(n):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == i]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert mine[-1]["delta"] == {} and mine[-1]["finish_reason"] in ("stop", "length")
        assert all(m["finish_reason"] is None for m in mine[:-1])
        texts[i] = "".join(m["delta"].get("content", "") for m in mine)
        assert mine[-1]["finish_reason"] == whole["choices"][i]["finish_reason"]
    assert texts == {c["index"]: c["message"]["content"] for c in whole["choices"]}
    if n > 1:
        assert len(set(texts.values())) > 1


def test_the_answer_is_the_completion_of_the_rendered_prompt(chat, chat_run):
    same = {"max_tokens": 24, "temperature": 0.9, "top_p": 0.95, "seed": 5, "n": 2,
            "stop": ["xq"], "presence_penalty": 0.5}
    answer = post(chat, messages=TALK, **same)
    completion = chat.post("/v1/completions", json={"prompt": rendered(chat_run, TALK),
                                                    **same}).json()
    assert [c["message"]["content"] for c in answer["choices"]] == [
        c["text"] for c in completion["choices"]]
    assert answer["usage"] == completion["usage"]


def test_logprobs_are_those_completions_report_for_the_reply(chat, chat_run):
    same = {"max_tokens": 10, "temperature": 0.8, "seed": 2}
    answer = post(chat, messages=TALK, logprobs=True, top_logprobs=3, **same)
    legacy = chat.post("/v1/completions", json={"prompt": rendered(chat_run, TALK),
                                                "logprobs": 3, **same}).json()
    content = answer["choices"][0]["logprobs"]["content"]
    expected = legacy["choices"][0]["logprobs"]
    assert [t["token"] for t in content] == expected["tokens"]
    assert "".join(t["token"] for t in content) == answer["choices"][0]["message"]["content"]
    assert [t["logprob"] for t in content] == expected["token_logprobs"]
    for token, top in zip(content, expected["top_logprobs"], strict=True):
        assert len(token["top_logprobs"]) == 3
        assert token["bytes"] == list(token["token"].encode())
        ranked = [t["logprob"] for t in token["top_logprobs"]]
        assert ranked == sorted(ranked, reverse=True)
        assert {t["token"]: t["logprob"] for t in token["top_logprobs"]}.items() <= top.items()
    events = streamed(chat, messages=TALK, logprobs=True, top_logprobs=3, **same)
    pieces = [t for e in events[:-1] for c in e["choices"] if c["logprobs"]
              for t in c["logprobs"]["content"]]
    assert pieces == content  # streamed chunks carry the tokens of their text
    no_top = post(chat, messages=TALK, logprobs=True, **same)["choices"][0]["logprobs"]
    assert [t["logprob"] for t in no_top["content"]] == expected["token_logprobs"]
    assert all(t["top_logprobs"] == [] for t in no_top["content"])


def test_a_stop_of_the_request_cuts_the_reply(chat):
    sampled = {"messages": HI, "max_tokens": 40, "temperature": 1.0, "seed": 3}
    whole = post(chat, **sampled)["choices"][0]["message"]["content"]
    stop = whole[5:7]
    cut = post(chat, **sampled, stop=stop)["choices"][0]
    assert cut["message"]["content"] == whole[:whole.index(stop)]
    assert cut["finish_reason"] == "stop"


def test_the_templates_end_of_turn_text_stops_the_reply(tiny_run, tmp_path):
    chatml = ChatTemplate(CHATML, "chatml")
    run = chat_copy(tiny_run, tmp_path, chatml)
    assert stop_strings(chatml, run.tokenizer) == ["<|im_end|>"]
    # the char model cannot spell <|im_end|>: the same format with an end-of-turn text it
    # writes all the time ("e") shows the marker ending the reply and left out of it
    e_marked = ChatTemplate(CHATML.replace("<|im_end|>", "e"), "e-marked")
    (tmp_path / "e").mkdir()
    e_run = chat_copy(tiny_run, tmp_path / "e", e_marked)
    with TestClient(create_app(e_run, ServeSettings(max_prompt_tokens=200))) as client:
        sampled = {"max_tokens": 100, "temperature": 0.5, "seed": 1}
        reply = post(client, messages=HI, **sampled)["choices"][0]
        free = client.post("/v1/completions", json={
            "prompt": rendered(e_run, HI, e_marked), **sampled}).json()["choices"][0]["text"]
    assert "e" in free
    assert reply["message"]["content"] == free[:free.index("e")]
    assert reply["finish_reason"] == "stop"


def test_a_run_without_a_template_is_a_400_saying_how_to_get_one(client):
    response = client.post("/v1/chat/completions",
                           json={"messages": HI, "max_tokens": 2})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "no_chat_template" and "no chat template" in error["message"]
    assert "fine-tune it on chat records" in error["message"] and "\n" not in error["message"]


NEUTRAL = {"logprobs": False, "top_logprobs": None, "tools": None, "tool_choice": "none",
           "response_format": {"type": "text"}, "parallel_tool_calls": True, "store": False,
           "metadata": {}, "service_tier": "auto", "user": "someone", "modalities": ["text"],
           "functions": [], "function_call": None, "frequency_penalty": 0,
           "presence_penalty": 0, "logit_bias": {}, "n": 1}


def test_neutral_values_of_openais_other_fields_are_accepted(chat):
    greedy = {"messages": HI, "max_tokens": 10, "temperature": 0}
    assert post(chat, **greedy, **NEUTRAL)["choices"] == post(chat, **greedy)["choices"]
    named = [{**HI[0], "name": "boss"}, HI[1]]
    assert post(chat, **{**greedy, "messages": named})["choices"] == post(
        chat, **greedy)["choices"]


@pytest.mark.parametrize(("change", "status", "says"), [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 422, "tools: "),
    ({"tool_choice": "auto"}, 422, "not supported by gptkit"),
    ({"response_format": {"type": "json_object"}}, 422, "response_format"),
    ({"store": True}, 422, "store"),
    ({"metadata": {"a": "b"}}, 422, "metadata"),
    ({"service_tier": "flex"}, 422, "service_tier"),
    ({"max_tokens": 5, "max_completion_tokens": 6}, 422, "differ; give one"),
    ({"max_tokens": None, "max_completion_tokens": 65}, 422,
     "max_completion_tokens: 65 is more than"),
    ({"max_tokens": 65}, 422, "max_tokens: 65 is more than"),
    ({"logprobs": True, "top_logprobs": 21}, 422, "less than or equal to 20"),
    ({"logprobs": True, "top_logprobs": 21}, 422, "top_logprobs"),
    ({"top_logprobs": 2}, 422, "top_logprobs needs logprobs"),
    ({"messages": []}, 422, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 422, "messages.0.role"),
    ({"messages": [{"role": "user"}]}, 422, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "x", "extra": 1}]}, 422, "unknown field"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "text": ""}]}]}, 422,
     "read text only"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 422, "at most 4"),
    ({"n": 17}, 422, "n"),
    ({"logit_bias": {"99999": 1}}, 422, "outside the vocabulary"),
    ({"model": "gpt-4"}, 404, "not served here"),
    ({"temprature": 1}, 422, "unknown field"),
    ({"messages": [{"role": "user", "content": "x" * 300}]}, 413, "more than the server's"),
])
def test_bad_requests_are_json_errors(chat, change, status, says):
    body = {"messages": HI, "max_tokens": 4, **change}
    response = chat.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    assert says in response.json()["error"]["message"]


def test_max_completion_tokens_is_max_tokens(chat):
    greedy = {"messages": HI, "temperature": 0}
    by_new = post(chat, **greedy, max_completion_tokens=3)
    assert by_new["usage"]["completion_tokens"] == 3
    assert by_new["choices"] == post(chat, **greedy, max_tokens=3)["choices"]
    assert by_new["choices"] == post(chat, **greedy, max_tokens=3,
                                     max_completion_tokens=3)["choices"]
