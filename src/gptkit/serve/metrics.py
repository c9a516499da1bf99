"""GET /metrics: the server's counters, gauges and latency histograms in Prometheus' format.

Each app owns its `CollectorRegistry` (`Metrics.registry`), never prometheus-client's global
one, so two apps in one process (tests, notebooks) neither share nor collide. Three kinds of
values end up there:

- what the HTTP side sees, counted as it happens: requests by endpoint and status
  (`RequestCounter`, ASGI middleware in front of everything, so the 401 and 413 answers of
  `Guard`, the 422s of validation and the 429s of the concurrency limit are counted too);
- what one generation request's events show (`ReplyClock`, fed by `replies.stream` and
  `replies.collect`): time to first token, time per output token, end-to-end latency,
  prompt and completion tokens;
- what the scheduler knows (waiting requests, running rows, KV-cache use, prompt tokens
  computed or reused, speculative tokens), read at scrape time through `EngineReadings`:
  callables, so that whichever object holds a value (the engine's `Stats`, the scheduler's
  queue) is named in one place, `readings_of`.

Every series but the requests counter is per model (label `model`): the served run's, and
with `--compare` each arena contestant's (`Metrics.for_model`), whose answers decode on an
engine of its own.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from starlette.routing import Match

from gptkit.serve.jobs import Delta, End, Event, FirstToken, Job, Stats

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# CPU serving: a small model's token takes about a millisecond, a long reply under load tens
# of seconds; the buckets span both, roughly x2-x2.5 apart
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                20.0, 40.0, 80.0)
TOKEN_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
                 10.0, 20.0)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0,
                   80.0, 160.0, 320.0)
OTHER = "other"  # the endpoint label of paths no route serves (404s), to bound its values


def _zero() -> float:
    return 0.0


@dataclass(frozen=True)
class EngineReadings:
    """Where a scrape reads the scheduler's values: each a callable, called at scrape time
    (from the event loop, while the worker thread may be writing; each reads one number).
    Values an engine does not have default to 0 (e.g. speculative tokens without a draft)."""

    waiting: Callable[[], float]  # requests queued, not yet generating
    running_rows: Callable[[], float]  # rows (prompts x n) decoding now: KV slots in use
    kv_cache_usage: Callable[[], float]  # share of the KV-cache rows in use, 0 to 1
    prompt_tokens_computed: Callable[[], float] = _zero  # prompt tokens run through the model
    prompt_tokens_reused: Callable[[], float] = _zero  # prompt tokens taken from the cache
    draft_tokens: Callable[[], float] = _zero  # tokens proposed by a draft model
    accepted_tokens: Callable[[], float] = _zero  # of those, accepted by the model


def readings_of(stats: Stats, waiting: Callable[[], float], rows: int) -> EngineReadings:
    """What a scrape reads of one engine: its `Stats`, its scheduler's queue (`waiting`) and
    its KV pool of `rows` rows (running rows are the pool's slots in use)."""
    return EngineReadings(
        waiting=waiting, running_rows=lambda: stats.running_rows,
        kv_cache_usage=lambda: stats.running_rows / rows,
        prompt_tokens_computed=lambda: stats.prompt_tokens_computed,
        prompt_tokens_reused=lambda: stats.prompt_tokens_reused,
        draft_tokens=lambda: stats.draft_tokens, accepted_tokens=lambda: stats.accepted_tokens)


# the engines' gauges and counters: (name, help, which reading)
GAUGES: tuple[tuple[str, str, str], ...] = (
    ("gptkit_requests_waiting", "Requests queued, not yet generating.", "waiting"),
    ("gptkit_rows_running", "Rows (prompts x n) being generated now.", "running_rows"),
    ("gptkit_kv_cache_usage_ratio", "Share of the KV-cache rows in use (0 to 1).",
     "kv_cache_usage"),
)
COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("gptkit_prompt_tokens_computed", "Prompt tokens run through the model.",
     "prompt_tokens_computed"),
    ("gptkit_prompt_tokens_reused",
     "Prompt tokens whose KV cache was reused from an earlier request's prefix.",
     "prompt_tokens_reused"),
    ("gptkit_spec_draft_tokens", "Tokens proposed by the speculative draft model.",
     "draft_tokens"),
    ("gptkit_spec_accepted_tokens", "Draft tokens the model accepted (speculative decoding).",
     "accepted_tokens"),
)


class EngineCollector(Collector):
    """The engines' gauges and counters, read from each model's `EngineReadings` at each
    scrape: one family per value, a sample per model."""

    def __init__(self) -> None:
        self.readings: dict[str, EngineReadings] = {}

    def collect(self) -> Iterable[Metric]:
        for kind, table in ((GaugeMetricFamily, GAUGES), (CounterMetricFamily, COUNTERS)):
            for name, doc, field in table:
                family = kind(name, doc, labels=["model"])
                for model, readings in self.readings.items():
                    family.add_metric([model], float(getattr(readings, field)()))
                yield family


@dataclass(frozen=True)
class ModelMetrics:
    """One model's series of the generation requests it answered (label model=its name)."""

    name: str
    prompt_tokens: Any  # prometheus-client's labelled children
    completion_tokens: Any
    ttft: Any
    per_token: Any
    duration: Any

    def clock(self, job: Job) -> ReplyClock:
        """The timer of one generation request (`job.rows`: prompts x n, best_of's
        candidates included, which all count in its completion tokens)."""
        return ReplyClock(self, job.arrived, job.rows)


class Metrics:
    """One app's metrics: its registry, the HTTP-side counters, and per model the latency
    histograms and the engine's readings (`main`: the served run's)."""

    def __init__(self, model: str, readings: EngineReadings) -> None:
        self.model = model
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gptkit_requests", "HTTP requests answered, by endpoint and status code.",
            ["model", "endpoint", "status"], registry=self.registry)
        self.prompt_tokens = Counter(
            "gptkit_prompt_tokens", "Prompt tokens of finished generation requests.",
            ["model"], registry=self.registry)
        self.completion_tokens = Counter(
            "gptkit_completion_tokens", "Tokens generated for finished requests.",
            ["model"], registry=self.registry)
        self.ttft = Histogram(
            "gptkit_time_to_first_token_seconds",
            "From a generation request's arrival to its first generated token.",
            ["model"], buckets=TTFT_BUCKETS, registry=self.registry)
        self.per_token = Histogram(
            "gptkit_time_per_output_token_seconds",
            "A request's mean time per generated token after its first.",
            ["model"], buckets=TOKEN_BUCKETS, registry=self.registry)
        self.duration = Histogram(
            "gptkit_request_duration_seconds",
            "From a generation request's arrival to its last token (finished requests).",
            ["model"], buckets=REQUEST_BUCKETS, registry=self.registry)
        self.engines = EngineCollector()
        self.registry.register(self.engines)
        self.main = self.for_model(model, readings)

    def for_model(self, name: str, readings: EngineReadings) -> ModelMetrics:
        """The series of model `name` (an arena contestant, or the served run), whose engine
        `readings` are read at each scrape."""
        self.engines.readings[name] = readings
        return ModelMetrics(name, self.prompt_tokens.labels(name),
                            self.completion_tokens.labels(name), self.ttft.labels(name),
                            self.per_token.labels(name), self.duration.labels(name))

    def count(self, endpoint: str, status: int) -> None:
        self.requests.labels(self.model, endpoint, str(status)).inc()

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition (Prometheus' text format, or OpenMetrics if `accept` asks for it)
        and its content type."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class ReplyClock:
    """Times one generation request from its events, as `replies` reads them off the queue:
    its first token (`FirstToken`, or a streamed job's first `Delta`, the first text its
    client sees), then its `End`."""

    def __init__(self, metrics: ModelMetrics, arrived: float, rows: int) -> None:
        self.metrics = metrics
        self.arrived = arrived  # time.monotonic() when the job was made
        self.rows = rows
        self.first: float | None = None

    def saw(self, event: Event) -> None:
        now = time.monotonic()
        if isinstance(event, End):
            self._end(event, now)
        elif isinstance(event, FirstToken | Delta) and self.first is None:
            self.first = now
            self.metrics.ttft.observe(now - self.arrived)

    def _end(self, end: End, now: float) -> None:
        m = self.metrics
        m.prompt_tokens.inc(end.prompt_tokens)
        m.completion_tokens.inc(end.completion_tokens)
        m.duration.observe(now - self.arrived)
        # rows advance together, one token each per step: a row's tokens after its first
        # are (on average) completion_tokens / rows - 1 steps
        steps = end.completion_tokens / max(self.rows, 1) - 1
        if self.first is not None and steps > 0:
            m.per_token.observe((now - self.first) / steps)


class RequestCounter:
    """ASGI middleware, outermost: counts every HTTP answer by endpoint (the route's path
    template, so `/v1/models/{model_id}` is one value) and status code."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, routes: Callable[[], list[Any]]
                 ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # the app's routes (read when a request comes: all are added)

    def endpoint(self, scope: Scope) -> str:
        """The path template of the route that answered (routing leaves it in the scope: a
        route of an included router too), else of the route that would have (an answer
        given before routing: 401, 413), else OTHER."""
        routed = getattr(scope.get("route"), "path", None)
        if routed is not None:
            return str(routed)
        for route in self.routes():
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return str(getattr(route, "path", OTHER))
        return OTHER

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app fails before answering

        async def counted_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counted_send)
        finally:
            self.metrics.count(self.endpoint(scope), status)
