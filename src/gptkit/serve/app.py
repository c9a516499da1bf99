"""The HTTP API and the playground page: `create_app(run, settings)` builds the FastAPI app.

Endpoints: POST /v1/completions (OpenAI's completions API, server-sent events when
`stream` is true), GET /v1/models and /v1/models/{id}, POST /v1/classify (classifier runs),
POST /v1/attention (the playground's attention map), GET /health, and the playground at /.
Model work runs in one worker thread; completion requests go through the micro-batcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from gptkit.errors import GptkitError
from gptkit.finetune.classifier import Classifier
from gptkit.generation.logprobs import TokenLogprob
from gptkit.run import Run
from gptkit.serve.batcher import Batcher
from gptkit.serve.engine import Delta, End, Engine, Event, Failure, Finish, Job, Prompt
from gptkit.serve.errors import APIError, error_body, install_handlers
from gptkit.serve.limits import Gate, Guard
from gptkit.serve.schemas import (
    MAX_N,
    AttentionRequest,
    AttentionResponse,
    ClassifyRequest,
    ClassifyResponse,
    Completion,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from gptkit.serve.settings import ServeSettings

STATIC = Path(__file__).resolve().parent / "static"
DISCONNECT_POLL_S = 0.5  # how often a waiting (non-streamed) request checks its client
T = TypeVar("T")

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": why} for status, why in {
        400: "malformed JSON", 401: "missing or wrong API key (--api-key)",
        404: "unknown model", 413: "body or prompt too large", 422: "invalid or unknown field",
        429: "too many requests in progress (--max-concurrent)"}.items()
}


class EventStream(StreamingResponse):
    """Server-sent events that call `on_close` however the response ends: finished, client
    gone (its generation is then cancelled), or never started."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._content = content
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()
            with contextlib.suppress(Exception):
                await self._content.aclose()  # type: ignore[attr-defined]


def _sse(data: dict[str, Any] | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


def create_app(model: Run | Classifier | Engine, settings: ServeSettings | None = None,
               *, name: str | None = None) -> FastAPI:
    """The API for one loaded run (`load_run`; a classifier run's `Run.classifier`); `name`
    is its model id (default: the run folder's name)."""
    settings = settings or ServeSettings()
    settings.check()
    engine = model if isinstance(model, Engine) else Engine(model, name=name)
    batcher = Batcher(engine.run_batch, max_batch_size=settings.max_batch_size,
                      window_s=settings.batch_window_ms / 1000)
    gate = Gate(settings.max_concurrent)
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
        batcher.start(executor)
        try:
            yield
        finally:
            await batcher.stop()
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="gptkit", summary=f"serving {engine.name}", lifespan=lifespan,
                  redoc_url=None)
    app.state.engine, app.state.batcher, app.state.gate = engine, batcher, gate
    app.state.settings = settings
    app.add_middleware(Guard, api_key=settings.api_key,
                       max_body_bytes=settings.max_body_bytes)
    install_handlers(app)

    def check_model(requested: str | None, task: str) -> None:
        if requested is not None and requested != engine.name:
            raise APIError(404, f"model {requested!r} is not served here; this server serves "
                           f"{engine.name!r} (GET /v1/models)", code="model_not_found",
                           param="model")
        if engine.task != task:
            kind, use = (("a classifier", "POST /v1/classify") if engine.task == "classify"
                         else ("a language model", "POST /v1/completions"))
            raise APIError(400, f"{engine.name} is {kind} run; use {use}", code="wrong_task")

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

    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness and load: 200 while the batcher runs, 503 if it has stopped."""
        body = {
            "status": "ok" if batcher.alive else "error", "model": engine.name,
            "task": engine.task, "auth": settings.api_key is not None,
            "context_length": engine.block_size, "in_progress": gate.active,
            "queued": len(batcher.pending), "stats": asdict(engine.stats),
            "defaults": defaults if engine.task == "generate" else None,
            "limits": {"max_tokens": settings.max_tokens,
                       "max_prompt_tokens": settings.max_prompt_tokens,
                       "max_concurrent": settings.max_concurrent,
                       "max_batch_size": settings.max_batch_size,
                       "max_body_bytes": settings.max_body_bytes,
                       "max_logprobs": settings.max_logprobs,
                       "max_attention_tokens": min(settings.max_attention_tokens,
                                                   engine.block_size)},
        }
        return JSONResponse(body, status_code=200 if batcher.alive else 503)

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

    # --- completions ----------------------------------------------------------------------
    @app.post("/v1/completions", response_model=Completion, responses=ERRORS)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        """Continue the prompt(s); `stream: true` sends server-sent events, `data: [DONE]`
        last. Choices come prompt by prompt, each prompt's `n` together."""
        check_model(body.model, "generate")
        max_tokens = default_tokens if body.max_tokens is None else body.max_tokens
        if max_tokens > settings.max_tokens:
            raise APIError(422, f"max_tokens: {max_tokens} is more than the server's limit of "
                           f"{settings.max_tokens}", param="max_tokens")
        if body.logprobs is not None and body.logprobs > settings.max_logprobs:
            raise APIError(422, f"logprobs: {body.logprobs} is more than the server's limit "
                           f"of {settings.max_logprobs} (gptkit serve --max-logprobs)",
                           param="logprobs")
        best_of = body.n if body.best_of is None else body.best_of
        if best_of < body.n:
            raise APIError(422, f"best_of ({best_of}) must be at least n ({body.n}): it is "
                           "how many candidates the n returned are chosen from",
                           param="best_of")
        if best_of > body.n and body.stream:
            raise APIError(422, f"best_of ({best_of}) above n ({body.n}) cannot stream: the "
                           "best candidates are known only once all have ended; set stream "
                           "false or best_of to n", param="best_of")
        prompts = body.prompts()
        most = max(settings.max_batch_size, MAX_N)
        if len(prompts) * best_of > most:
            what = "n" if best_of == body.n else "best_of"
            raise APIError(422, f"{what}: {len(prompts)} prompts x {what} {best_of} = "
                           f"{len(prompts) * best_of} completions, more than the server's "
                           f"limit of {most} per request", param=what)
        try:
            ids = [engine.encode_prompt(p) for p in prompts]
        except GptkitError as exc:
            raise APIError(422, str(exc), param="prompt") from exc
        bias = body.bias()
        try:
            engine.check_ids(bias or {}, "logit_bias")
        except GptkitError as exc:
            raise APIError(422, str(exc), param="logit_bias") from exc
        for p in ids:
            check_prompt(p, settings.max_prompt_tokens)
        echo_logprobs = body.echo and body.logprobs is not None
        for p in ids:
            if echo_logprobs and len(p) > engine.block_size:
                raise APIError(422, f"the prompt is {len(p)} tokens long; echo with logprobs "
                               "needs it inside the model's context window of "
                               f"{engine.block_size} tokens (its first tokens would have no "
                               "log-probabilities): shorten it", param="prompt")
        gate.enter()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def emit(event: Event) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody listens
                loop.call_soon_threadsafe(queue.put_nowait, event)

        job = Job(prompts=ids, settings=body.generation_config(sample, max_tokens),
                  stream=body.stream, emit=emit,
                  logprobs=body.logprobs, echo_logprobs=echo_logprobs, keep=body.n)
        closed = False

        def close() -> None:
            nonlocal closed
            if not closed:
                closed = True
                job.cancelled.set()  # generation stops at its next token if still running
                gate.leave()

        texts = [engine.tokenizer.decode(p) if isinstance(p, list) else (p or "")
                 for p in prompts]
        heads = [text if body.echo else "" for text in texts for _ in range(body.n)]
        meta = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": engine.name}
        shape = _Shape(heads, body.n, body.logprobs is not None, echo_logprobs)
        try:
            batcher.submit(job)
        except Exception:
            close()
            raise
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return EventStream(_stream(queue, meta, shape, usage), close)
        try:
            return await _collect(queue, meta, shape, request, job)
        finally:
            close()

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


@dataclass
class _Shape:
    """How a completion's choices are written: each one's echoed prompt text (`heads`, one
    per choice), the choices per prompt, and whether log-probabilities are reported (and the
    echoed prompts', which arrive as Prompt events before the choices' text)."""

    heads: list[str]
    n: int
    logprobs: bool
    echo_logprobs: bool

    def shift(self, index: int) -> int:
        """Where the generated text of choice `index` starts in its text."""
        return len(self.heads[index])


def _legacy(tokens: list[TokenLogprob], shift: int = 0) -> dict[str, Any]:
    """OpenAI's legacy `logprobs` of these tokens; text offsets moved by `shift`. Each
    top_logprobs dict holds the most likely tokens and the chosen one, as OpenAI's does."""
    tops: list[dict[str, float] | None] = []
    for token in tokens:
        if token.top is None or token.logprob is None:
            tops.append(None)
            continue
        top: dict[str, float] = {}
        for _, text, logprob in token.top:
            top.setdefault(text, logprob)
        top.setdefault(token.text, token.logprob)
        tops.append(top)
    return {"tokens": [token.text for token in tokens],
            "token_logprobs": [token.logprob for token in tokens], "top_logprobs": tops,
            "text_offset": [token.offset + shift for token in tokens]}


async def _stream(queue: asyncio.Queue[Event], meta: dict[str, Any], shape: _Shape,
                  include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's streamed completion: text chunks as they come (each with the log-probabilities
    of the tokens whose text it carries), a chunk with each choice's finish_reason,
    optionally the usage, then [DONE]."""

    def chunk(index: int, text: str, reason: str | None = None,
              tokens: list[TokenLogprob] | None = None, shift: int = 0) -> str:
        logprobs = _legacy(tokens, shift) if shape.logprobs and tokens is not None else None
        return _sse({**meta, "choices": [{"index": index, "text": text,
                                          "finish_reason": reason, "logprobs": logprobs}]})

    if not shape.echo_logprobs:
        for index, head in enumerate(shape.heads):
            if head:
                yield chunk(index, head)
    while True:
        event = await queue.get()
        if isinstance(event, Prompt):
            for index in range(event.prompt * shape.n, (event.prompt + 1) * shape.n):
                yield chunk(index, shape.heads[index], tokens=event.tokens)
        elif isinstance(event, Delta):
            yield chunk(event.index, event.text, tokens=event.tokens or [],
                        shift=shape.shift(event.index))
        elif isinstance(event, Finish):
            yield chunk(event.index, "", event.reason)
        elif isinstance(event, Failure):
            yield _sse(error_body(event.status, event.message))
            return
        elif isinstance(event, End):
            if include_usage:
                yield _sse({**meta, "choices": [], "usage": _usage(event)})
            yield _sse("[DONE]")
            return


async def _collect(queue: asyncio.Queue[Event], meta: dict[str, Any], shape: _Shape,
                   request: Request, job: Job) -> JSONResponse:
    """The whole completion; gives up (cancelling the work) if the client disconnects."""
    finished: dict[int, Finish] = {}
    prompts: dict[int, list[TokenLogprob]] = {}
    while True:
        try:
            event = await asyncio.wait_for(queue.get(), DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancelled.set()
                return JSONResponse(error_body(499, "the client disconnected"), 499)
            continue
        if isinstance(event, Prompt):
            prompts[event.prompt] = event.tokens
        elif isinstance(event, Finish):
            finished[event.index] = event
        elif isinstance(event, Failure):
            raise APIError(event.status, event.message)
        elif isinstance(event, End):
            choices = []
            for i, head in enumerate(shape.heads):
                done = finished[i]
                logprobs = None
                if shape.logprobs:
                    shift = shape.shift(i)
                    logprobs = _legacy(prompts.get(i // shape.n, []))
                    generated = _legacy(done.tokens or [], shift)
                    for key, values in generated.items():
                        logprobs[key] += values
                choices.append({"index": i, "text": head + done.text,
                                "finish_reason": done.reason, "logprobs": logprobs})
            return JSONResponse({**meta, "choices": choices, "usage": _usage(event)})


def _usage(end: End) -> dict[str, int]:
    return {"prompt_tokens": end.prompt_tokens, "completion_tokens": end.completion_tokens,
            "total_tokens": end.prompt_tokens + end.completion_tokens}
