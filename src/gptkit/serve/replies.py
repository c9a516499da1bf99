"""How a generation job's events become an HTTP answer, for completions and chat alike.

The engine reports each job as events (`Prompt`, `Delta`, `Finish`, `End`, `Failure`);
`stream` turns them into server-sent events and `collect` into one JSON body. What differs between
`/v1/completions` and `/v1/chat/completions` is only the shape of a choice (`text`, or a
`message` / `delta`), which a `Shape` says, so both endpoints share one submit, stream and
collect path and cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gptkit.generation.config import GenerationConfig
from gptkit.generation.logprobs import TokenLogprob
from gptkit.serve.errors import APIError, error_body
from gptkit.serve.jobs import Delta, End, Event, Failure, Finish, Job, Prompt
from gptkit.serve.limits import Gate
from gptkit.serve.metrics import ModelMetrics, ReplyClock
from gptkit.serve.scheduler import Scheduler

DISCONNECT_POLL_S = 0.5  # how often a waiting (non-streamed) request checks its client


class Shape:
    """The completions API's choices: `{index, text, finish_reason, logprobs}`; with `echo`,
    `heads` are the prompts each choice's text starts with (sent first when streaming), `n`
    choices per prompt. With `logprobs`, each choice carries OpenAI's legacy log-probabilities
    of its tokens (`echo_logprobs`: its echoed prompt's first, from Prompt events)."""

    id_prefix = "cmpl-"
    object = "text_completion"
    chunk_object = "text_completion"

    def __init__(self, heads: list[str], n: int = 1, logprobs: bool = False,
                 echo_logprobs: bool = False) -> None:
        self.heads = heads
        self.n = n
        self.logprobs = logprobs
        self.echo_logprobs = echo_logprobs

    @property
    def choices(self) -> int:
        return len(self.heads)

    def opening(self, index: int) -> dict[str, Any] | None:
        """The chunk a streamed choice starts with, if any (an echoed prompt with
        log-probabilities waits for them: `prompt_piece`)."""
        if self.echo_logprobs or not self.heads[index]:
            return None
        return self.piece(index, self.heads[index], None, head=True)

    def prompt_piece(self, index: int, tokens: list[TokenLogprob]) -> dict[str, Any]:
        """A streamed choice's echoed prompt, with its tokens' log-probabilities."""
        return self.piece(index, self.heads[index], tokens, head=True)

    def piece(self, index: int, text: str, tokens: list[TokenLogprob] | None,
              head: bool = False) -> dict[str, Any]:
        shift = 0 if head else len(self.heads[index])
        logprobs = _legacy(tokens, shift) if self.logprobs and tokens is not None else None
        return {"index": index, "text": text, "finish_reason": None, "logprobs": logprobs}

    def ending(self, index: int, reason: str) -> dict[str, Any]:
        return {"index": index, "text": "", "finish_reason": reason, "logprobs": None}

    def whole(self, index: int, finish: Finish,
              prompt: list[TokenLogprob] | None) -> dict[str, Any]:
        logprobs = None
        if self.logprobs:
            logprobs = _legacy(prompt or [])
            for key, values in _legacy(finish.tokens or [], len(self.heads[index])).items():
                logprobs[key] += values
        return {"index": index, "text": self.heads[index] + finish.text,
                "finish_reason": finish.reason, "logprobs": logprobs}


class ChatShape(Shape):
    """The chat completions API's choices: a `message` whole, or `delta`s when streamed (the
    role first, then the content as it comes, then an empty delta with the finish_reason);
    with `logprobs`, OpenAI's `logprobs.content` of the tokens a message or delta carries."""

    id_prefix = "chatcmpl-"
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def __init__(self, choices: int, logprobs: bool = False) -> None:
        super().__init__([""] * choices, logprobs=logprobs)

    def opening(self, index: int) -> dict[str, Any] | None:
        return {"index": index, "delta": {"role": "assistant", "content": ""},
                "finish_reason": None, "logprobs": None}

    def piece(self, index: int, text: str, tokens: list[TokenLogprob] | None,
              head: bool = False) -> dict[str, Any]:
        return {"index": index, "delta": {"content": text}, "finish_reason": None,
                "logprobs": self._content(tokens)}

    def ending(self, index: int, reason: str) -> dict[str, Any]:
        return {"index": index, "delta": {}, "finish_reason": reason, "logprobs": None}

    def whole(self, index: int, finish: Finish,
              prompt: list[TokenLogprob] | None) -> dict[str, Any]:
        return {"index": index, "message": {"role": "assistant", "content": finish.text},
                "finish_reason": finish.reason, "logprobs": self._content(finish.tokens)}

    def _content(self, tokens: list[TokenLogprob] | None) -> dict[str, Any] | None:
        """OpenAI's chat log-probabilities: per token its text, log-probability and UTF-8
        bytes, and the most likely tokens at its position alike."""
        if not self.logprobs:
            return None

        def entry(text: str, logprob: float) -> dict[str, Any]:
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        return {"content": [
            {**entry(t.text, t.logprob if t.logprob is not None else 0.0),
             "top_logprobs": [entry(text, lp) for _, text, lp in t.top or []
                              if lp != float("-inf")]}
            for t in tokens or []], "refusal": None}


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


def meta(shape: Shape, model: str) -> dict[str, Any]:
    """The fields every answer (and every chunk) of one request carries."""
    return {"id": f"{shape.id_prefix}{uuid.uuid4().hex}", "created": int(time.time()),
            "model": model}


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


async def stream(queue: asyncio.Queue[Event], shape: Shape, head: dict[str, Any],
                 include_usage: bool, clock: ReplyClock) -> AsyncIterator[str]:
    """OpenAI's streamed answer: each choice's opening, text chunks as they come, a chunk with
    each choice's finish_reason, optionally the usage (with no choices), then [DONE]. `clock`
    times the events for /metrics."""
    head = {**head, "object": shape.chunk_object}

    def chunk(choice: dict[str, Any]) -> str:
        return _sse({**head, "choices": [choice]})

    for index in range(shape.choices):
        if (opening := shape.opening(index)) is not None:
            yield chunk(opening)
    while True:
        event = await queue.get()
        clock.saw(event)
        if isinstance(event, Prompt):
            for index in range(event.prompt * shape.n, (event.prompt + 1) * shape.n):
                yield chunk(shape.prompt_piece(index, event.tokens))
        elif isinstance(event, Delta):
            yield chunk(shape.piece(event.index, event.text, event.tokens or []))
        elif isinstance(event, Finish):
            yield chunk(shape.ending(event.index, event.reason))
        elif isinstance(event, Failure):
            yield _sse(error_body(event.status, event.message))
            return
        elif isinstance(event, End):
            if include_usage:
                yield _sse({**head, "choices": [], "usage": usage(event)})
            yield _sse("[DONE]")
            return


async def collect(queue: asyncio.Queue[Event], shape: Shape, head: dict[str, Any],
                  request: Request, job: Job, clock: ReplyClock) -> JSONResponse:
    """The whole answer; gives up (cancelling the work) if the client disconnects. `clock`
    times the events for /metrics."""
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
        clock.saw(event)
        if isinstance(event, Prompt):
            prompts[event.prompt] = event.tokens
        elif isinstance(event, Finish):
            finished[event.index] = event
        elif isinstance(event, Failure):
            raise APIError(event.status, event.message)
        elif isinstance(event, End):
            choices = [shape.whole(i, finished[i], prompts.get(i // shape.n))
                       for i in range(shape.choices)]
            return JSONResponse({**head, "object": shape.object, "choices": choices,
                                 "usage": usage(event)})


async def answer(scheduler: Scheduler, gate: Gate, metrics: ModelMetrics, request: Request,
                 shape: Shape, model: str, prompts: list[list[int]], config: GenerationConfig,
                 streamed: bool, *, include_usage: bool = False, logprobs: int | None = None,
                 echo_logprobs: bool = False, keep: int | None = None) -> Response:
    """Queue one job on `scheduler` and answer with its events, streamed or collected, named
    `model`. The request holds a place in `gate` until its answer ends or its client leaves;
    the job is then cancelled, so generation stops at its next token if still running. Every
    generating endpoint (completions, chat, the arena's answers) answers through here."""
    gate.enter()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Event] = asyncio.Queue()

    def emit(event: Event) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody listens
            loop.call_soon_threadsafe(queue.put_nowait, event)

    job = Job(prompts=prompts, settings=config, stream=streamed, emit=emit, logprobs=logprobs,
              echo_logprobs=echo_logprobs, keep=keep)
    closed = False

    def close() -> None:
        nonlocal closed
        if not closed:
            closed = True
            job.cancelled.set()
            gate.leave()

    head = meta(shape, model)
    clock = metrics.clock(job)
    try:
        scheduler.submit(job)
    except Exception:
        close()
        raise
    if streamed:
        return EventStream(stream(queue, shape, head, include_usage, clock), close)
    try:
        return await collect(queue, shape, head, request, job, clock)
    finally:
        close()


def usage(end: End) -> dict[str, int]:
    return {"prompt_tokens": end.prompt_tokens, "completion_tokens": end.completion_tokens,
            "total_tokens": end.prompt_tokens + end.completion_tokens}
