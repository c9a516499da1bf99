"""`gptkit serve --guard`: answers that cross the guard's threshold end with finish_reason
"content_filter" (OpenAI's), their text withheld, in /v1/completions and /v1/chat/completions,
streamed and whole, with the official `openai` client too; a streamed answer stops before the
sentence that crossed; bad guards are refused before the server starts. The guard is the
classifier trained in the tests (`guard_run`); thresholds 0 and 1 make its decisions
certain, a stand-in that counts newlines (`tests.test_guard.counting`) places the crossing."""

from __future__ import annotations

from tests.serve.conftest import require_serve

require_serve()

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gptkit.guard import OutputGuard
from gptkit.run import Run
from gptkit.serve import ServeSettings, create_app
from tests.serve.conftest import live_server, sse_events, stream_texts
from tests.test_cli import expect_error
from tests.test_guard import counting, first_lines

HI = [{"role": "user", "content": "Hi there"}]
SAMPLED = {"max_tokens": 30, "temperature": 1.0, "seed": 3}  # noise, never blank


def app_with(model: Run, guard: OutputGuard | None) -> TestClient:
    return TestClient(create_app(model, ServeSettings(max_tokens=64, max_prompt_tokens=200),
                                 guard=guard))


@pytest.fixture(scope="module")
def everything(guard_run: Path) -> OutputGuard:
    """Every answer crosses (P >= 0)."""
    return OutputGuard.load(guard_run, "flagged", 0.0)


@pytest.fixture(scope="module")
def withholding(run: Run, everything: OutputGuard) -> Iterator[TestClient]:
    with app_with(run, everything) as client:
        yield client


@pytest.fixture(scope="module")
def withholding_chat(chat_run: Run, everything: OutputGuard) -> Iterator[TestClient]:
    with app_with(chat_run, everything) as client:
        yield client


def post(client: TestClient, path: str, **body: Any) -> Any:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def streamed(client: TestClient, path: str, **body: Any) -> list[Any]:
    with client.stream("POST", path, json={**body, "stream": True}) as response:
        assert response.status_code == 200, response.read()
        return sse_events(response.iter_lines())


def chat_stream(events: list[Any]) -> tuple[str, str | None]:
    """A streamed chat answer's content and finish_reason."""
    content, reason = "", None
    for event in events:
        if isinstance(event, str):
            continue
        for choice in event["choices"]:
            content += choice["delta"].get("content") or ""
            reason = choice["finish_reason"] or reason
    return content, reason


def test_a_crossing_completion_is_withheld_with_content_filter(withholding):
    body = post(withholding, "/v1/completions", prompt="ROMEO:", n=2, **SAMPLED)
    assert [(c["text"], c["finish_reason"]) for c in body["choices"]] == \
        [("", "content_filter")] * 2
    assert body["usage"]["completion_tokens"] > 0  # generated, then withheld
    echoed = post(withholding, "/v1/completions", prompt="ROMEO:", echo=True, **SAMPLED)
    assert echoed["choices"][0]["text"] == "ROMEO:"  # the prompt is not the model's answer
    texts, reasons = stream_texts(streamed(withholding, "/v1/completions", prompt="ROMEO:",
                                           **SAMPLED))
    assert texts == {0: ""} and reasons == {0: "content_filter"}
    health = withholding.get("/health").json()
    assert health["guard"] == {"run": health["guard"]["run"], "label": "flagged",
                               "threshold": 0.0}
    assert health["stats"]["withheld"] >= 4


def test_a_crossing_chat_answer_is_withheld_with_content_filter(withholding_chat):
    body = post(withholding_chat, "/v1/chat/completions", messages=HI, **SAMPLED)
    (choice,) = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": ""}
    assert choice["finish_reason"] == "content_filter"
    events = streamed(withholding_chat, "/v1/chat/completions", messages=HI, **SAMPLED)
    assert chat_stream(events) == ("", "content_filter") and events[-1] == "[DONE]"


def test_a_threshold_nothing_reaches_changes_nothing(run, chat_run, guard_run, client):
    never = OutputGuard.load(guard_run, "flagged", 1.0)
    plain = post(client, "/v1/completions", prompt="ROMEO:", n=2, **SAMPLED)
    with app_with(run, never) as guarded:
        assert post(guarded, "/v1/completions", prompt="ROMEO:", n=2, **SAMPLED)["choices"] \
            == plain["choices"]
        texts, reasons = stream_texts(streamed(guarded, "/v1/completions", prompt="ROMEO:",
                                               n=2, **SAMPLED))
        assert texts == {c["index"]: c["text"] for c in plain["choices"]}
        assert reasons == {c["index"]: c["finish_reason"] for c in plain["choices"]}
    with app_with(chat_run, None) as free, app_with(chat_run, never) as guarded:
        assert post(guarded, "/v1/chat/completions", messages=HI, **SAMPLED)["choices"] == \
            post(free, "/v1/chat/completions", messages=HI, **SAMPLED)["choices"]


def test_a_stream_stops_before_the_sentence_that_crosses(run, chat_run, client):
    newline = run.tokenizer.encode("\n")[0]
    lines = {**SAMPLED, "max_tokens": 60, "logit_bias": {str(newline): 4.0}}
    free = post(client, "/v1/completions", prompt="ROMEO:", **lines)["choices"][0]["text"]
    assert free.count("\n") >= 2, "the newline bias should give several lines"
    with app_with(run, counting(2)) as guarded:
        texts, reasons = stream_texts(streamed(guarded, "/v1/completions", prompt="ROMEO:",
                                               **lines))
        assert texts == {0: first_lines(free)} and reasons == {0: "content_filter"}
        assert texts[0] != ""  # sentences before the crossing were sent
        whole = post(guarded, "/v1/completions", prompt="ROMEO:", **lines)["choices"][0]
        assert (whole["text"], whole["finish_reason"]) == ("", "content_filter")
    with app_with(chat_run, None) as free_chat, app_with(chat_run, counting(2)) as guarded:
        answer = post(free_chat, "/v1/chat/completions", messages=HI, **lines)
        content = answer["choices"][0]["message"]["content"]
        assert content.count("\n") >= 2, content
        events = streamed(guarded, "/v1/chat/completions", messages=HI, **lines)
        assert chat_stream(events) == (first_lines(content), "content_filter")


# --- the official client ---------------------------------------------------------------------
def test_the_openai_client_reads_content_filter(run, chat_run, everything):
    openai = pytest.importorskip(
        "openai", reason="the openai package is not installed: pip install -e '.[dev]'")
    for model, chat in ((run, False), (chat_run, True)):
        with live_server(model, guard=everything, max_tokens=64) as (url, _):
            sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0,
                                timeout=60)
            if chat:
                whole = sdk.chat.completions.create(model="tiny", messages=HI, **SAMPLED)
                assert whole.choices[0].finish_reason == "content_filter"
                assert whole.choices[0].message.content == ""
                chunks = list(sdk.chat.completions.create(model="tiny", messages=HI,
                                                          stream=True, **SAMPLED))
                assert "".join(c.choices[0].delta.content or "" for c in chunks
                               if c.choices) == ""
            else:
                whole = sdk.completions.create(model="tiny", prompt="ROMEO:", **SAMPLED)
                assert (whole.choices[0].text, whole.choices[0].finish_reason) == \
                    ("", "content_filter")
                chunks = list(sdk.completions.create(model="tiny", prompt="ROMEO:",
                                                     stream=True, **SAMPLED))
            reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
            assert reasons[-1] == "content_filter"


# --- refused at start ------------------------------------------------------------------------
@pytest.mark.parametrize("argv, match", [
    (["--guard", "TINY", "--guard-label", "flagged"], "not a classifier run"),
    (["--guard", "GUARD", "--guard-label", "toxic"], "its labels are flagged, ok"),
    (["--guard", "GUARD", "--guard-label", "flagged", "--threshold", "-1"], "in [0, 1]"),
    (["--guard", "GUARD"], "--guard needs --guard-label"),
    (["--threshold", "0.5"], "--threshold needs --guard"),
    (["--guard", "GUARD", "--guard-label", "flagged", "--guard-retries", "1"],
     "unrecognized arguments: --guard-retries"),
])
def test_bad_guards_are_refused_before_the_server_starts(capsys, tiny_run, guard_run, argv,
                                                         match):
    argv = [{"GUARD": str(guard_run), "TINY": str(tiny_run)}.get(a, a) for a in argv]
    expect_error(capsys, "serve", str(tiny_run), "--port", "0", *argv, match=match)


def test_a_classifier_run_takes_no_guard(capsys, guard_run):
    expect_error(capsys, "serve", str(guard_run), "--port", "0", "--guard", str(guard_run),
                 "--guard-label", "flagged", match="--guard checks generated text only")


def test_gptkit_serve_guards_its_answers(tiny_run, guard_run, tmp_path):
    """The command itself: --guard reaches the engine, /health shows it, and it guards the
    arena's contestants (--compare) as it guards RUN."""
    import httpx

    from tests.serve.conftest import health, serve_cli

    step10 = tiny_run / "checkpoints" / "step-000010"
    with serve_cli(tiny_run, tmp_path / "log.txt", "--guard", str(guard_run), "--guard-label",
                   "flagged", "--threshold", "0", "--compare", str(step10), "--votes",
                   str(tmp_path / "votes")) as url:
        battle = httpx.post(url + "/v1/arena/battles", json={"prompt": "ROMEO:"},
                            timeout=60).json()
        for side in ("a", "b"):
            r = httpx.post(f"{url}/v1/arena/battles/{battle['id']}/answers/{side}",
                           json={"stream": False, "max_tokens": 8}, timeout=60)
            assert r.json()["choices"][0]["finish_reason"] == "content_filter", side
        assert health(url)["guard"] == {"run": str(guard_run), "label": "flagged",
                                        "threshold": 0.0}
        r = httpx.post(url + "/v1/completions", json={"prompt": "ROMEO:", **SAMPLED},
                       timeout=60)
        assert r.status_code == 200
        assert (r.json()["choices"][0]["text"], r.json()["choices"][0]["finish_reason"]) == \
            ("", "content_filter")
