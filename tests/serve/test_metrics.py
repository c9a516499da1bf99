"""GET /metrics (parsed with prometheus-client's own parser) and readiness apart from liveness."""

from __future__ import annotations

from tests.serve.conftest import require_serve

require_serve()

import threading
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gptkit.serve import ServeSettings, create_app
from gptkit.serve.engine import Engine
from gptkit.serve.health import warm_up
from gptkit.serve.jobs import Stats
from tests.serve.conftest import live_server, sse_events, wait_until, worker_blocked

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: Any) -> Samples:
    """Every sample of GET /metrics: (name, sorted labels) -> value."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted({"model": "tiny", **labels}.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def requests(samples: Samples, endpoint: str, status: int) -> float:
    return value(samples, "gptkit_requests_total", endpoint=endpoint, status=str(status))


def test_metrics_count_requests_tokens_and_latencies(run):
    settings = ServeSettings(max_tokens=64, api_key="k3y", max_concurrent=1)
    auth = {"Authorization": "Bearer k3y"}
    with TestClient(create_app(run, settings)) as client:
        before = scrape(client)  # no key needed, as for /health
        # every family exists before any request, the engine's at 0
        for name in ("gptkit_time_to_first_token_seconds_count", "gptkit_prompt_tokens_total",
                     "gptkit_prompt_tokens_reused_total", "gptkit_spec_draft_tokens_total",
                     "gptkit_spec_accepted_tokens_total", "gptkit_rows_running",
                     "gptkit_requests_waiting", "gptkit_kv_cache_usage_ratio"):
            assert value(before, name) == 0, name
        whole = client.post("/v1/completions", headers=auth,
                            json={"prompt": "ROMEO:", "max_tokens": 10, "temperature": 0})
        assert whole.status_code == 200
        with client.stream("POST", "/v1/completions", headers=auth,
                           json={"prompt": "KING:", "n": 2, "max_tokens": 7, "seed": 1,
                                 "stream": True}) as response:
            assert response.status_code == 200
            events = sse_events(response.iter_lines())
        assert events[-1] == "[DONE]"
        assert client.post("/v1/completions", headers=auth,
                           json={"prompt": "A", "max_tokens": 65}).status_code == 422
        assert client.post("/v1/completions", json={"prompt": "A"}).status_code == 401
        assert client.get("/v1/models/nothing", headers=auth).status_code == 404
        assert client.get("/no/such/page").status_code == 404
        after = scrape(client)

    assert moved(before, after, "gptkit_requests_total", endpoint="/v1/completions",
                 status="200") == 2
    assert requests(after, "/v1/completions", 422) == 1
    assert requests(after, "/v1/completions", 401) == 1  # answered by Guard, before routing
    assert requests(after, "/v1/models/{model_id:path}", 404) == 1  # the route's template
    assert requests(after, "other", 404) == 1
    assert requests(after, "/metrics", 200) == 1  # the first scrape
    # tokens of the two finished requests: characters are tokens in the tiny run
    usage = whole.json()["usage"]
    assert moved(before, after, "gptkit_prompt_tokens_total") == len("ROMEO:") + len("KING:")
    assert moved(before, after, "gptkit_completion_tokens_total") == (
        usage["completion_tokens"] + 2 * 7)
    # one observation per finished request in each histogram, whatever the timing
    for name in ("gptkit_time_to_first_token_seconds", "gptkit_time_per_output_token_seconds",
                 "gptkit_request_duration_seconds"):
        assert moved(before, after, f"{name}_count") == 2, name
        assert value(after, f"{name}_bucket", le="+Inf") == 2, name
        assert value(after, f"{name}_sum") > 0, name
    # every prompt token was computed once; with n = 2 the second row reuses the first's KV
    assert moved(before, after, "gptkit_prompt_tokens_computed_total") == (
        len("ROMEO:") + len("KING:"))
    assert moved(before, after, "gptkit_prompt_tokens_reused_total") == len("KING:")


def test_waiting_requests_are_read_at_scrape_time(run):
    with live_server(run, max_batch_size=4, max_tokens=64) as (url, app):
        metrics = httpx.Client(base_url=url, timeout=10)
        results: list[int] = []

        def complete() -> None:
            results.append(httpx.post(url + "/v1/completions", timeout=60, json={
                "prompt": "A", "max_tokens": 8, "n": 2}).status_code)

        threads = [threading.Thread(target=complete) for _ in range(3)]
        with worker_blocked(app):
            for thread in threads:
                thread.start()
            wait_until(lambda: value(scrape(metrics), "gptkit_requests_waiting") == 3,
                       "three requests wait")
        for thread in threads:
            thread.join()
        assert results == [200, 200, 200]
        # the gauges are updated at the end of the step that ended the last request
        wait_until(lambda: value(scrape(metrics), "gptkit_rows_running") == 0, "rows left")
        after = scrape(metrics)
    assert value(after, "gptkit_requests_waiting") == 0
    assert value(after, "gptkit_kv_cache_usage_ratio") == 0


def test_running_rows_and_kv_cache_use_while_a_batch_runs(run):
    app = create_app(run, ServeSettings(max_batch_size=4, max_tokens=64))
    stepper = app.state.engine.stepper
    step = stepper.step
    registry = app.state.metrics.registry
    seen: list[tuple[float | None, ...]] = []

    def watched() -> None:  # what a scrape reads between decoding steps
        step()
        seen.append(tuple(registry.get_sample_value(name, {"model": "tiny"}) for name in
                          ("gptkit_rows_running", "gptkit_kv_cache_usage_ratio")))

    stepper.step = watched
    body: dict[str, Any] = {"prompt": "A", "max_tokens": 3, "n": 3}
    if run.tokenizer.eot_id is not None:  # no row ends early: all 3 run until max_tokens
        body["logit_bias"] = {str(run.tokenizer.eot_id): -100}
    with TestClient(app) as client:
        assert client.post("/v1/completions", json=body).status_code == 200
    app.state.executor.shutdown(wait=True)  # the worker's last step (the reply may come first)
    assert (3.0, 0.75) in seen  # 3 rows of the pool's 4 slots
    assert seen[-1] == (0.0, 0.0)  # they left once done


def test_two_apps_have_registries_of_their_own(run):
    first, second = create_app(run), create_app(run)
    assert first.state.metrics.registry is not second.state.metrics.registry
    with TestClient(first) as one, TestClient(second) as two:
        assert one.post("/v1/completions", json={"max_tokens": 2}).status_code == 200
        assert requests(scrape(one), "/v1/completions", 200) == 1
        assert requests(scrape(two), "/v1/completions", 200) == 0


def test_metrics_are_outside_the_concurrency_limit(run):
    with live_server(run, max_concurrent=1) as (url, app):
        with worker_blocked(app):
            waiting = threading.Thread(target=lambda: httpx.post(
                url + "/v1/completions", json={"max_tokens": 2}, timeout=60))
            waiting.start()
            wait_until(lambda: httpx.get(url + "/health", timeout=10).json()["in_progress"]
                       == 1, "one request is in progress")
            busy = httpx.post(url + "/v1/completions", json={"max_tokens": 2}, timeout=10)
            assert busy.status_code == 429
            client = httpx.Client(base_url=url, timeout=10)
            samples = scrape(client)  # answered although the limit is reached
            assert requests(samples, "/v1/completions", 429) == 1
        waiting.join()


def test_readiness_is_not_liveness(run):
    app = create_app(run)
    unstarted = TestClient(app)  # no `with`: the lifespan (worker, scheduler) never ran
    assert unstarted.get("/health/live").status_code == 200
    not_yet = unstarted.get("/health/ready")
    assert not_yet.status_code == 503 and not_yet.json() == {"ready": False,
                                                             "state": "starting"}
    with TestClient(app) as client:
        wait_until(lambda: client.get("/health/ready").status_code == 200, "it is ready")
        assert client.get("/health/ready").json() == {"ready": True, "state": "ready"}
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["ready"] is True
        # the scheduler dies: still live, no longer ready
        client.portal.call(app.state.scheduler.stop)
        gone = client.get("/health/ready")
        assert gone.status_code == 503 and gone.json()["state"] == "scheduler stopped"
        assert client.get("/health/live").status_code == 200
        assert client.get("/health").json()["ready"] is False
    app.state.readiness.stop()  # what the lifespan's shutdown did
    assert app.state.readiness.state(True) == "stopping"


def test_not_ready_until_warmed_up(run, monkeypatch):
    warming = threading.Event()
    monkeypatch.setattr("gptkit.serve.app.warm_up", lambda engine: warming.wait(30))
    with TestClient(create_app(run)) as client:
        assert client.get("/health").json()["status"] == "ok"  # live and running
        answer = client.get("/health/ready")
        assert answer.status_code == 503
        assert answer.json() == {"ready": False, "state": "warming up"}
        warming.set()
        wait_until(lambda: client.get("/health/ready").status_code == 200, "it is ready")


def test_the_warm_up_runs_the_model_and_counts_nothing(run):
    engine = Engine(run)
    warm_up(engine)
    assert engine.stats == Stats()


@pytest.mark.parametrize("failure", [RuntimeError("no memory")])
def test_a_failed_warm_up_leaves_the_server_unready(run, monkeypatch, failure):
    def broken(engine: Any) -> None:
        raise failure

    monkeypatch.setattr("gptkit.serve.app.warm_up", broken)
    with TestClient(create_app(run)) as client:
        wait_until(lambda: "failed" in client.get("/health/ready").json()["state"],
                   "the warm-up failed")
        answer = client.get("/health/ready")
        assert answer.status_code == 503 and "no memory" in answer.json()["state"]
        assert client.get("/health/live").status_code == 200
