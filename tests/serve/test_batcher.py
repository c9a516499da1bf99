"""Batching over HTTP: requests arriving together decode together, and none of them gets a
different text for it; a short bounded load of concurrent requests all succeeds."""

from __future__ import annotations

from tests.serve.conftest import require_serve

require_serve()

import asyncio
import threading
from typing import Any

import httpx

from tests.serve.conftest import health, live_server, sse_events, stream_texts, wait_until
from tests.serve.conftest import worker_blocked as blocked

# mixed requests: prompt lengths (padding), n, max_tokens, stops, seeds, greedy and sampled
REQUESTS: list[dict[str, Any]] = [
    {"prompt": "ROMEO:", "temperature": 0, "max_tokens": 60},
    {"prompt": "A", "temperature": 0, "max_tokens": 45},
    {"prompt": "To be, or not to be, that is the", "temperature": 0, "max_tokens": 50,
     "stop": ["\n\n"]},
    {"prompt": ["KING:", "First Citizen:\nWe"], "temperature": 0, "max_tokens": 30},
    {"prompt": "ROMEO:", "seed": 1, "max_tokens": 60},
    {"prompt": "JULIET:\nO", "seed": 2, "n": 3, "max_tokens": 40},
    {"prompt": "A", "seed": 3, "max_tokens": 50, "stop": ["e"]},
    {"prompt": ["To be", "Hark"], "seed": 4, "n": 2, "max_tokens": 35},
]


def texts(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [c["text"] for c in response.json()["choices"]]


def test_a_requests_text_does_not_depend_on_its_batch(run):
    with live_server(run, max_batch_size=64, max_tokens=256) as (url, app):
        alone = [texts(httpx.post(url + "/v1/completions", json=r, timeout=60))
                 for r in REQUESTS]
        assert health(url)["stats"]["largest_batch"] == 1
        together: list[Any] = [None] * len(REQUESTS)

        def ask(i: int) -> None:
            together[i] = httpx.post(url + "/v1/completions", json=REQUESTS[i], timeout=60)

        with blocked(app):  # all of them queue, then run as batches
            threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(REQUESTS))]
            for thread in threads:
                thread.start()
            wait_until(lambda: health(url)["queued"] == len(REQUESTS), "all requests queue")
        for thread in threads:
            thread.join(timeout=60)
        assert [texts(r) for r in together] == alone
        # all of them joined the first step (greedy and sampled, any settings, 14 rows)
        assert health(url)["stats"]["largest_batch"] == len(REQUESTS)


async def _load(url: str, count: int, concurrency: int) -> list[tuple[dict[str, Any], Any]]:
    """`count` requests (streamed and not), at most `concurrency` at a time."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(i: int) -> tuple[dict[str, Any], Any]:
            body = {**REQUESTS[i % len(REQUESTS)], "stream": i % 2 == 1}
            async with limit:
                if not body["stream"]:
                    response = await client.post("/v1/completions", json=body)
                    assert response.status_code == 200, response.text
                    return body, [c["text"] for c in response.json()["choices"]]
                async with client.stream("POST", "/v1/completions", json=body) as response:
                    assert response.status_code == 200
                    lines = [line async for line in response.aiter_lines()]
                joined, _ = stream_texts(sse_events(iter(lines)))
                return body, [joined[k] for k in range(len(joined))]

        return await asyncio.gather(*(one(i) for i in range(count)))


def test_concurrent_requests_under_a_short_bounded_load(run):
    with live_server(run, max_batch_size=8, max_tokens=256) as (url, app):
        expected = [texts(httpx.post(url + "/v1/completions", json=r, timeout=60))
                    for r in REQUESTS]
        results = asyncio.run(_load(url, count=32, concurrency=8))
        for i, (_, got) in enumerate(results):
            assert got == expected[i % len(REQUESTS)], i
        after = health(url)
        assert after["status"] == "ok" and after["in_progress"] == 0
        assert after["stats"]["largest_batch"] > 1  # they did share batches


def test_a_short_request_finishes_while_a_long_one_streams(run):
    """Requests join at every step: a later short request need not wait for a long one."""
    long_body = {"prompt": "ROMEO:", "temperature": 0, "max_tokens": 1000, "stream": True}
    short_body = {"prompt": "KING:", "temperature": 0, "max_tokens": 3}
    with live_server(run, max_tokens=1000) as (url, _), httpx.Client(timeout=60) as client:
        expected = texts(client.post(url + "/v1/completions", json=short_body))
        with client.stream("POST", url + "/v1/completions", json=long_body) as response:
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert "text_completion" in first  # the long one is generating
            assert texts(client.post(url + "/v1/completions", json=short_body)) == expected
            now = health(url)
            assert now["in_progress"] == 1 and now["stats"]["largest_batch"] == 2
            rest = list(lines)
        assert "data: [DONE]" in rest
