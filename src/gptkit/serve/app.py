"""The HTTP API and the playground page: `create_app(run, settings)` builds the FastAPI app.

Endpoints: POST /v1/completions and POST /v1/chat/completions (OpenAI's completions and chat
APIs, server-sent events when `stream` is true; both through one submit path and
`replies`), GET /v1/models and /v1/models/{id}, POST /v1/classify (classifier runs),
POST /v1/attention (the playground's attention map), GET /health (with /health/live and
/health/ready for orchestrators), GET /metrics (Prometheus), and the playground at /.
Model work runs in one worker thread; completion requests decode together, joining and leaving
at every step (`scheduler`, `stepper`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from gptkit.chat_template import ChatTemplate, require_chat_template
from gptkit.errors import GptkitError
from gptkit.finetune.classifier import Classifier
from gptkit.generation.config import GenerationConfig
from gptkit.generation.speculative import Speculative
from gptkit.guard import OutputGuard
from gptkit.run import Run
from gptkit.serve.arena import Arena
from gptkit.serve.chat import ChatCompletion, ChatRequest, chat_prompt
from gptkit.serve.engine import Engine
from gptkit.serve.errors import APIError, install_handlers
from gptkit.serve.health import Readiness, warm_up
from gptkit.serve.limits import Gate, Guard
from gptkit.serve.metrics import Metrics, RequestCounter, readings_of
from gptkit.serve.replies import ChatShape, Shape, answer
from gptkit.serve.scheduler import Scheduler
from gptkit.serve.schemas import (
    AttentionRequest,
    AttentionResponse,
    ClassifyRequest,
    ClassifyResponse,
    Completion,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    SamplingRequest,
)
from gptkit.serve.settings import ServeSettings

STATIC = Path(__file__).resolve().parent / "static"
T = TypeVar("T")

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": why} for status, why in {
        400: "malformed JSON", 401: "missing or wrong API key (--api-key)",
        404: "unknown model", 413: "body or prompt too large", 422: "invalid or unknown field",
        429: "too many requests in progress (--max-concurrent)"}.items()
}


def create_app(model: Run | Classifier | Engine, settings: ServeSettings | None = None,
               *, name: str | None = None, draft: Speculative | None = None,
               guard: OutputGuard | None = None, arena: Arena | None = None) -> FastAPI:
    """The API for one loaded run (`load_run`; a classifier run's `Run.classifier`); `name`
    is its model id (default: the run folder's name); `draft`: decode speculatively with
    this draft model (same tokenizer; `gptkit.serve.speculate`); `guard`: withhold answers
    that cross its threshold (finish_reason content_filter; `gptkit.guard`); `arena`: also
    serve a blind comparison of this run and the arena's (`gptkit.serve.arena`, /v1/arena/*)."""
    settings = settings or ServeSettings()
    settings.check()
    engine = model if isinstance(model, Engine) else Engine(
        model, name=name, max_batch_size=settings.max_batch_size,
        prefill_chunk=settings.prefill_chunk, prefix_cache_mb=settings.prefix_cache_mb,
        draft=draft, guard=guard)
    if (draft is not None or guard is not None) and engine is model:
        raise GptkitError("create_app(engine, draft=..., guard=...): give them to "
                          "Engine(..., draft=, guard=) instead")
    scheduler = Scheduler(engine)
    gate = Gate(settings.max_concurrent)
    readiness = Readiness()
    metrics = Metrics(engine.name, readings_of(engine.stats, lambda: scheduler.queued,
                                               settings.max_batch_size))
    sample = engine.run.config.sample
    default_tokens = min(sample.max_new_tokens, settings.max_tokens)
    defaults: dict[str, Any] = {
        "max_tokens": default_tokens, "temperature": sample.temperature,
        "top_k": sample.top_k or 0, "top_p": sample.top_p,
    }

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # the model's one worker thread: batches, attention maps and classifications
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptkit-model")
        app.state.executor = executor
        readiness.begin()
        executor.submit(warm_up, engine).add_done_callback(readiness.warmed_by)
        scheduler.start(executor)
        if arena is not None:
            arena.start()
        try:
            yield
        finally:
            readiness.stop()
            await scheduler.stop()
            if arena is not None:
                await arena.stop()
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="gptkit", summary=f"serving {engine.name}", lifespan=lifespan,
                  redoc_url=None)
    app.state.engine, app.state.scheduler, app.state.gate = engine, scheduler, gate
    app.state.settings, app.state.metrics, app.state.readiness = settings, metrics, readiness
    app.add_middleware(Guard, api_key=settings.api_key,
                       max_body_bytes=settings.max_body_bytes)
    # outermost: counts the answers Guard gives too (401, 413)
    app.add_middleware(RequestCounter, metrics=metrics, routes=lambda: app.routes)
    install_handlers(app)
    if arena is not None:
        app.include_router(arena.router(engine, scheduler, gate, settings, metrics))

    def check_model(requested: str | None, task: str) -> None:
        if requested is not None and requested != engine.name:
            raise APIError(404, f"model {requested!r} is not served here; this server serves "
                           f"{engine.name!r} (GET /v1/models)", code="model_not_found",
                           param="model")
        if engine.task != task:
            kind, use = (("a classifier", "POST /v1/classify") if engine.task == "classify"
                         else ("a language model", "POST /v1/completions"))
            raise APIError(400, f"{engine.name} is {kind} run; use {use}", code="wrong_task")

    template: ChatTemplate | None = None
    no_template = ""
    if engine.task == "generate":
        try:
            template = require_chat_template(engine.run.path)
        except GptkitError as exc:
            no_template = " ".join(str(exc).split())

    def check_prompt(ids: list[int], limit: int, what: str = "prompt") -> None:
        if len(ids) > limit:
            raise APIError(413, f"the {what} is {len(ids)} tokens long, more than the server's "
                           f"limit of {limit} tokens", code="prompt_too_long", param="prompt")

    async def in_worker(fn: Callable[..., T], *args: Any) -> T:
        """Run model work in the worker thread, between batches; user errors become 422."""
        try:
            return await asyncio.get_running_loop().run_in_executor(app.state.executor, fn,
                                                                    *args)
        except GptkitError as exc:
            raise APIError(422, str(exc)) from exc

    # --- pages and metadata ---------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def ready() -> tuple[bool, str]:
        state = readiness.state(scheduler.alive)
        return state == "ready", state

    @app.get("/health")
    async def health() -> JSONResponse:
        """Status and load: 200 while the scheduler runs, 503 if it has stopped; `ready` says
        whether requests are taken now (as GET /health/ready)."""
        ok, state = ready()
        body = {
            "status": "ok" if scheduler.alive else "error", "ready": ok, "state": state,
            "model": engine.name,
            "task": engine.task, "auth": settings.api_key is not None,
            "context_length": engine.block_size, "in_progress": gate.active,
            "queued": scheduler.queued, "stats": asdict(engine.stats),
            "kv_pool": engine.pool_info(),
            "arena": arena is not None,  # the playground's Compare tab (/v1/arena/*)
            "defaults": defaults if engine.task == "generate" else None,
            "guard": None if engine.guard is None else {
                "run": engine.guard.name, "label": engine.guard.label,
                "threshold": engine.guard.threshold},
            "limits": {"max_tokens": settings.max_tokens,
                       "max_prompt_tokens": settings.max_prompt_tokens,
                       "max_concurrent": settings.max_concurrent,
                       "max_batch_size": settings.max_batch_size,
                       "max_body_bytes": settings.max_body_bytes,
                       "max_logprobs": settings.max_logprobs,
                       "max_attention_tokens": min(settings.max_attention_tokens,
                                                   engine.block_size)},
        }
        return JSONResponse(body, status_code=200 if scheduler.alive else 503)

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        """Liveness: 200 whenever the process answers at all."""
        return {"status": "alive"}

    @app.get("/health/ready", responses={503: {"description": "not ready: `state` says why"}})
    async def is_ready() -> JSONResponse:
        """Readiness: 200 once the model is warmed up and the scheduler runs; 503 while
        starting, after the scheduler died, and while shutting down."""
        ok, state = ready()
        return JSONResponse({"ready": ok, "state": state}, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {}},
                              "description": "Prometheus' text exposition format"}})
    async def prometheus(request: Request) -> Response:
        """The server's metrics, for Prometheus to scrape; needs no API key (as /health)."""
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    @app.get("/v1/models", response_model=ModelList, responses={401: ERRORS[401]})
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=engine.name, created=engine.created,
                                         task=engine.task,
                                         context_length=engine.block_size)])

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard,
             responses={401: ERRORS[401], 404: ERRORS[404]})
    async def model_card(model_id: str) -> ModelCard:
        """The served model's card; 404 for any other id."""
        if model_id != engine.name:
            raise APIError(404, f"model {model_id!r} is not served here; this server serves "
                           f"{engine.name!r} (GET /v1/models)", code="model_not_found",
                           param="model")
        return ModelCard(id=engine.name, created=engine.created, task=engine.task,
                         context_length=engine.block_size)

    # --- completions and chat: one path from checked request to answer --------------------
    def check_sampling(body: SamplingRequest, max_tokens: int | None, param: str,
                       prompts: list[list[int]], logprobs: tuple[str, int | None]) -> int:
        """Check what completions and chat requests share (`logprobs`: the field naming how
        many top log-probabilities are asked, and its value); the resolved max_tokens."""
        max_tokens = default_tokens if max_tokens is None else max_tokens
        if max_tokens > settings.max_tokens:
            raise APIError(422, f"{param}: {max_tokens} is more than the server's limit of "
                           f"{settings.max_tokens}", param=param)
        field, top = logprobs
        if top is not None and top > settings.max_logprobs:
            raise APIError(422, f"{field}: {top} is more than the server's limit of "
                           f"{settings.max_logprobs} (gptkit serve --max-logprobs)",
                           param=field)
        most = settings.max_batch_size  # the rows the KV pool holds
        rows, what = body.candidates(), "n" if body.candidates() == body.n else "best_of"
        if len(prompts) * rows > most:
            raise APIError(422, f"{what}: {len(prompts)} prompts x {what} {rows} = "
                           f"{len(prompts) * rows} completions, more than the server's "
                           f"limit of {most} per request (--max-batch-size)", param=what)
        try:
            engine.check_ids(body.bias() or {}, "logit_bias")
        except GptkitError as exc:
            raise APIError(422, str(exc), param="logit_bias") from exc
        for p in prompts:
            check_prompt(p, settings.max_prompt_tokens)
        return max_tokens

    async def generate(prompts: list[list[int]], config: GenerationConfig, shape: Shape,
                       body: SamplingRequest, request: Request, logprobs: int | None = None,
                       echo_logprobs: bool = False) -> Response:
        """Queue the job for the scheduler; answer with its events streamed or collected.
        `logprobs`: how many top log-probabilities each token reports (None: none)."""
        return await answer(scheduler, gate, metrics.main, request, shape, engine.name, prompts,
                            config, body.stream, include_usage=body.include_usage,
                            logprobs=logprobs, echo_logprobs=echo_logprobs, keep=body.n)

    @app.post("/v1/completions", response_model=Completion, responses=ERRORS)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        """Continue the prompt(s); `stream: true` sends server-sent events, `data: [DONE]`
        last. Choices come prompt by prompt, each prompt's `n` together."""
        check_model(body.model, "generate")
        best_of = body.candidates()
        if body.best_of is not None and body.best_of < body.n:
            raise APIError(422, f"best_of ({body.best_of}) must be at least n ({body.n}): it "
                           "is how many candidates the n returned are chosen from",
                           param="best_of")
        if best_of > body.n and body.stream:
            raise APIError(422, f"best_of ({best_of}) above n ({body.n}) cannot stream: the "
                           "best candidates are known only once all have ended; set stream "
                           "false or best_of to n", param="best_of")
        prompts = body.prompts()
        try:
            ids = [engine.encode_prompt(p) for p in prompts]
        except GptkitError as exc:
            raise APIError(422, str(exc), param="prompt") from exc
        max_tokens = check_sampling(body, body.max_tokens, "max_tokens", ids,
                                    ("logprobs", body.logprobs))
        echo_logprobs = body.echo and body.logprobs is not None
        for p in ids:
            if echo_logprobs and len(p) > engine.block_size:
                raise APIError(422, f"the prompt is {len(p)} tokens long; echo with logprobs "
                               "needs it inside the model's context window of "
                               f"{engine.block_size} tokens (its first tokens would have no "
                               "log-probabilities): shorten it", param="prompt")
        texts = [engine.tokenizer.decode(p) if isinstance(p, list) else (p or "")
                 for p in prompts]
        heads = [text if body.echo else "" for text in texts for _ in range(body.n)]
        shape = Shape(heads, body.n, body.logprobs is not None, echo_logprobs)
        return await generate(ids, body.generation_config(sample, max_tokens), shape, body,
                              request, body.logprobs, echo_logprobs)

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses=ERRORS)
    async def chat_completions(body: ChatRequest, request: Request) -> Response:
        """Answer the conversation as the assistant, through the run's chat template;
        `stream: true` sends `chat.completion.chunk` events, `data: [DONE]` last."""
        check_model(body.model, "generate")
        if template is None:
            raise APIError(400, no_template, code="no_chat_template", param="messages")
        try:
            ids, turn_stops = chat_prompt(body, template, engine.tokenizer)
        except GptkitError as exc:
            raise APIError(422, str(exc), param="messages") from exc
        param = "max_tokens" if body.max_tokens is not None else "max_completion_tokens"
        top = (body.top_logprobs or 0) if body.logprobs else None
        max_tokens = check_sampling(body, body.new_tokens, param, [ids], ("top_logprobs", top))
        config = body.generation_config(sample, max_tokens, more_stops=turn_stops)
        return await generate([ids], config, ChatShape(body.n, top is not None), body, request,
                              top)

    # --- classification and attention ----------------------------------------------------
    @app.post("/v1/classify", response_model=ClassifyResponse, responses=ERRORS)
    async def classify(body: ClassifyRequest) -> ClassifyResponse:
        """Label each text (sequence runs) or tag its words (token runs), as `gptkit
        classify` does."""
        check_model(body.model, "classify")
        texts = body.input if isinstance(body.input, list) else [body.input]
        for text in texts:
            check_prompt(engine.tokenizer.encode(text), settings.max_prompt_tokens, "input")
        gate.enter()
        try:
            task, data = await in_worker(engine.classify, texts)
        finally:
            gate.leave()
        return ClassifyResponse.model_validate({"model": engine.name, "task": task,
                                                "data": data})

    @app.post("/v1/attention", response_model=AttentionResponse, responses=ERRORS)
    async def attention(body: AttentionRequest) -> AttentionResponse:
        """Every head's attention weights of one layer on the prompt (gptkit viz attention)."""
        check_model(body.model, "generate")
        limit = min(settings.max_attention_tokens, engine.block_size)
        check_prompt(engine.tokenizer.encode(body.prompt), limit)
        gate.enter()
        try:
            maps = await in_worker(engine.attention, body.prompt, body.layer)
        finally:
            gate.leave()
        return AttentionResponse.model_validate({"model": engine.name, **maps})

    return app
