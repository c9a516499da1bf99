"""How a generation job's events become an HTTP answer, for completions and chat alike.

The engine reports each job as events (`Delta`, `Finish`, `End`, `Failure`); `stream` turns
them into server-sent events and `collect` into one JSON body. What differs between
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
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from gptkit.serve.engine import Delta, End, Event, Failure, Finish, Job
from gptkit.serve.errors import APIError, error_body

DISCONNECT_POLL_S = 0.5  # how often a waiting (non-streamed) request checks its client


class Shape:
    """The completions API's choices: `{index, text, finish_reason, logprobs}`; with `echo`,
    `heads` are the prompts each choice's text starts with (sent first when streaming)."""

    id_prefix = "cmpl-"
    object = "text_completion"
    chunk_object = "text_completion"

    def __init__(self, heads: list[str]) -> None:
        self.heads = heads

    @property
    def choices(self) -> int:
        return len(self.heads)

    def opening(self, index: int) -> dict[str, Any] | None:
        """The chunk a streamed choice starts with, if any."""
        return self.piece(index, self.heads[index]) if self.heads[index] else None

    def piece(self, index: int, text: str) -> dict[str, Any]:
        return {"index": index, "text": text, "finish_reason": None, "logprobs": None}

    def ending(self, index: int, reason: str) -> dict[str, Any]:
        return {"index": index, "text": "", "finish_reason": reason, "logprobs": None}

    def whole(self, index: int, finish: Finish) -> dict[str, Any]:
        return {"index": index, "text": self.heads[index] + finish.text,
                "finish_reason": finish.reason, "logprobs": None}


class ChatShape(Shape):
    """The chat completions API's choices: a `message` whole, or `delta`s when streamed (the
    role first, then the content as it comes, then an empty delta with the finish_reason)."""

    id_prefix = "chatcmpl-"
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def __init__(self, choices: int) -> None:
        super().__init__([""] * choices)

    def opening(self, index: int) -> dict[str, Any] | None:
        return {"index": index, "delta": {"role": "assistant", "content": ""},
                "finish_reason": None, "logprobs": None}

    def piece(self, index: int, text: str) -> dict[str, Any]:
        return {"index": index, "delta": {"content": text}, "finish_reason": None,
                "logprobs": None}

    def ending(self, index: int, reason: str) -> dict[str, Any]:
        return {"index": index, "delta": {}, "finish_reason": reason, "logprobs": None}

    def whole(self, index: int, finish: Finish) -> dict[str, Any]:
        return {"index": index, "message": {"role": "assistant", "content": finish.text},
                "finish_reason": finish.reason, "logprobs": None}


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
                 include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's streamed answer: each choice's opening, text chunks as they come, a chunk with
    each choice's finish_reason, optionally the usage (with no choices), then [DONE]."""
    head = {**head, "object": shape.chunk_object}

    def chunk(choice: dict[str, Any]) -> str:
        return _sse({**head, "choices": [choice]})

    for index in range(shape.choices):
        if (opening := shape.opening(index)) is not None:
            yield chunk(opening)
    while True:
        event = await queue.get()
        if isinstance(event, Delta):
            yield chunk(shape.piece(event.index, event.text))
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
                  request: Request, job: Job) -> JSONResponse:
    """The whole answer; gives up (cancelling the work) if the client disconnects."""
    finished: dict[int, Finish] = {}
    while True:
        try:
            event = await asyncio.wait_for(queue.get(), DISCONNECT_POLL_S)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                job.cancelled.set()
                return JSONResponse(error_body(499, "the client disconnected"), 499)
            continue
        if isinstance(event, Finish):
            finished[event.index] = event
        elif isinstance(event, Failure):
            raise APIError(event.status, event.message)
        elif isinstance(event, End):
            choices = [shape.whole(i, finished[i]) for i in range(shape.choices)]
            return JSONResponse({**head, "object": shape.object, "choices": choices,
                                 "usage": usage(event)})


def usage(end: End) -> dict[str, int]:
    return {"prompt_tokens": end.prompt_tokens, "completion_tokens": end.completion_tokens,
            "total_tokens": end.prompt_tokens + end.completion_tokens}
