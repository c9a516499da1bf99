"""Bad input and limits: each gets its status code and an OpenAI-style JSON error, and the
server stays healthy afterwards (400 malformed, 401 key, 404/405, 413 size, 422 invalid,
429 busy)."""

from __future__ import annotations

from tests.serve.conftest import require_serve

require_serve()

import threading
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from gptkit.serve import ServeSettings, create_app
from tests.serve.conftest import health, live_server, wait_until, worker_blocked


def error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}
    assert body["error"]["message"] and body["error"]["type"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


@pytest.mark.parametrize("raw", [b'{"prompt": ', b"{'prompt': 'single quotes'}", b"prompt=hi",
                                 b'{"prompt": "a"} trailing', b"\xff\xfe{}"])
def test_malformed_json_is_400(client, raw):
    message = error(client.post("/v1/completions", content=raw), 400, "invalid_json")["message"]
    assert "JSON" in message


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": "a", "frequncy_penalty": 0}, "frequncy_penalty"),
    ({"prompt": "a", "stream_options": {"include_usage": True, "extra": 1}},
     "stream_options.extra"),
])
def test_unknown_fields_are_422(client, body, param):
    found = error(client.post("/v1/completions", json=body), 422, "unknown_field")
    assert found["param"] == param and param in found["message"]


@pytest.mark.parametrize(("body", "param"), [
    ({"temperature": -0.1}, "temperature"), ({"temperature": "0.5"}, "temperature"),
    ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k"),
    ({"n": 0}, "n"), ({"n": 17}, "n"), ({"n": 1.5}, "n"), ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": 257}, "max_tokens"), ({"seed": 2**64}, "seed"), ({"seed": "1"}, "seed"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"stop": ""}, "stop"),
    ({"stop": [1]}, "stop"), ({"prompt": []}, "prompt"), ({"prompt": ["a"] * 17}, "prompt"),
    ({"prompt": 5}, "prompt"), ({"prompt": [["a"]]}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"), ({"prompt": [[1], []]}, "prompt"),
    ({"stream": "yes"}, "stream"),
    ({"echo": 1}, "echo"),
])
def test_out_of_range_and_wrongly_typed_values_are_422(client, body, param):
    found = error(client.post("/v1/completions", json={"prompt": "a", **body}), 422)
    assert found["param"] == param and found["message"].startswith(param)


def test_other_bad_requests(client):
    error(client.post("/v1/completions", json=[1, 2]), 422)  # not an object
    error(client.post("/v1/completions", content=b"1e999"), 422)
    error(client.post("/v1/completions", content=b'{"temperature": NaN}'), 422)
    error(client.post("/v1/completions", json={"model": "gpt-4", "prompt": "a"}), 404,
          "model_not_found")
    error(client.get("/v1/nothing"), 404, "not_found")
    error(client.get("/v1/completions"), 405, "method_not_allowed")
    too_many = error(client.post("/v1/completions", json={"prompt": ["a"] * 4, "n": 5}), 422)
    assert too_many["param"] == "n" and "20 completions" in too_many["message"]
    error(client.post("/v1/classify", json={"input": ""}), 422)
    error(client.post("/v1/attention", json={"prompt": ""}), 422)
    # the body is JSON whatever its content type says (curl -d sends a form type)
    plain = client.post("/v1/completions", content=b'{"prompt": "a", "max_tokens": 2}',
                        headers={"content-type": "application/x-www-form-urlencoded"})
    assert plain.status_code == 200
    assert client.get("/health").json()["status"] == "ok"


def test_size_limits_are_413(run):
    settings = ServeSettings(max_body_bytes=4096, max_prompt_tokens=100)
    with TestClient(create_app(run, settings)) as client:
        big = b'{"prompt": "' + b"a" * 5000 + b'"}'
        error(client.post("/v1/completions", content=big), 413, "body_too_large")

        def chunks():  # no Content-Length: counted as it arrives
            yield b'{"prompt": "'
            for _ in range(10):
                yield b"a" * 1000
            yield b'"}'

        error(client.post("/v1/completions", content=chunks()), 413, "body_too_large")
        found = error(client.post("/v1/completions", json={"prompt": "a" * 101}), 413,
                      "prompt_too_long")
        assert "101 tokens" in found["message"] and "100" in found["message"]
        error(client.post("/v1/completions", json={"prompt": ["a", "b" * 101]}), 413)
        assert client.post("/v1/completions", json={"prompt": "a" * 100, "max_tokens": 1}
                           ).status_code == 200
        assert client.get("/health").json()["status"] == "ok"


def test_api_key(run):
    with TestClient(create_app(run, ServeSettings(api_key="s3cret"))) as client:
        body = {"prompt": "a", "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                        {"Authorization": "Basic s3cret"}):
            response = client.post("/v1/completions", json=body, headers=headers)
            error(response, 401, "invalid_api_key")
            assert response.headers["www-authenticate"].startswith("Bearer")
        error(client.get("/v1/models"), 401)
        # the key is checked before the body is read
        error(client.post("/v1/completions", content=b"{bad"), 401)
        good = {"Authorization": "Bearer s3cret"}
        assert client.post("/v1/completions", json=body, headers=good).status_code == 200
        assert client.get("/v1/models", headers=good).status_code == 200
        # the page and the health check need no key; health says that the API does
        assert client.get("/").status_code == 200
        assert client.get("/health").json()["auth"] is True


def test_too_many_requests_in_progress_is_429(run):
    with live_server(run, max_concurrent=2, max_tokens=256) as (url, app):
        results: list[httpx.Response] = []

        def ask() -> None:
            results.append(httpx.post(url + "/v1/completions", timeout=60,
                                      json={"prompt": "a", "max_tokens": 5, "temperature": 0}))

        with worker_blocked(app):
            waiting = [threading.Thread(target=ask) for _ in range(2)]
            for thread in waiting:
                thread.start()
            wait_until(lambda: health(url)["in_progress"] == 2, "two requests are in progress")
            busy = httpx.post(url + "/v1/completions", json={"prompt": "a"}, timeout=60)
            found = error(busy, 429, "too_many_requests")
            assert "--max-concurrent" in found["message"] and busy.headers["retry-after"]
            error(httpx.post(url + "/v1/attention", json={"prompt": "a"}, timeout=60), 429)
        for thread in waiting:
            thread.join(timeout=60)
        assert [r.status_code for r in results] == [200, 200]
        assert health(url)["in_progress"] == 0
        assert httpx.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 2},
                          timeout=60).status_code == 200


def test_a_client_leaving_mid_stream_cancels_its_generation(run):
    with live_server(run, max_tokens=100_000) as (url, _):
        body = {"prompt": "ROMEO:", "temperature": 0, "max_tokens": 100_000, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(lines).startswith("data: {")  # the first chunk came; now hang up
        wait_until(lambda: health(url)["stats"]["cancelled"] == 1, "the generation is cancelled")
        wait_until(lambda: health(url)["in_progress"] == 0, "the request is over")
        after = health(url)
        assert after["status"] == "ok" and after["stats"]["tokens"] == 0  # it never finished
        normal = httpx.post(url + "/v1/completions", timeout=60,
                            json={"prompt": "ROMEO:", "max_tokens": 5, "temperature": 0})
        assert normal.status_code == 200 and normal.json()["usage"]["completion_tokens"] == 5


def test_a_client_leaving_a_plain_request_cancels_it_too(run):
    import socket
    from urllib.parse import urlsplit

    with live_server(run, max_tokens=100_000) as (url, _):
        parts = urlsplit(url)
        body = b'{"prompt": "A", "temperature": 0, "max_tokens": 100000}'
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/json\r\nContent-Length: " + str(len(body)).encode()
                         + b"\r\n\r\n" + body)
            wait_until(lambda: health(url)["in_progress"] == 1, "the request is in progress")
        wait_until(lambda: health(url)["stats"]["cancelled"] == 1, "the generation is cancelled")
        wait_until(lambda: health(url)["in_progress"] == 0, "the request is over")
        assert httpx.post(url + "/v1/completions", json={"prompt": "A", "max_tokens": 3},
                          timeout=60).status_code == 200


def test_text_that_is_not_unicode_is_422_and_the_connection_lives_on(run):
    """A lone surrogate ("\\ud800" in JSON) is bad input, not a crash: a crash's 500 would
    close the keep-alive connection."""
    with live_server(run) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        def local_port(response: httpx.Response) -> int:
            return response.extensions["network_stream"].get_extra_info("client_addr")[1]

        first = client.get("/health")
        port = local_port(first)
        for raw in (b'{"prompt": "\\ud800", "max_tokens": 2}',
                    b'{"prompt": ["ok", "a\\udfff"], "max_tokens": 2}'):
            response = client.post("/v1/completions", content=raw,
                                   headers={"Content-Type": "application/json"})
            message = error(response, 422, "invalid_value")["message"]
            assert "lone surrogate" in message and local_port(response) == port
        after = client.post("/v1/completions", json={"prompt": "A", "max_tokens": 2})
        assert after.status_code == 200 and local_port(after) == port  # the same connection


def test_temperatures_too_small_to_divide_by_act_as_greedy(client):
    def text(temperature: float) -> str:
        response = client.post("/v1/completions", json={
            "prompt": "ROMEO:", "max_tokens": 20, "temperature": temperature, "seed": 3})
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["text"]

    greedy = text(0)
    assert text(1e-45) == greedy and text(1e-320) == greedy


@pytest.mark.parametrize("lengths", [b"Content-Length: ten\r\n",
                                     b"Content-Length: 2\r\nContent-Length: 3\r\n"])
def test_broken_http_framing_is_a_plain_400_from_uvicorn(run, lengths):
    """As the README says: uvicorn answers these before gptkit sees them, in plain text."""
    import socket
    from urllib.parse import urlsplit

    with live_server(run) as (url, _):
        parts = urlsplit(url)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/json\r\n" + lengths + b"\r\n{}")
            answer = b""
            while chunk := sock.recv(4096):  # the server closes the connection
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert answer.endswith(b"\r\n\r\nInvalid HTTP request received.")
        assert health(url)["status"] == "ok"
