"""What stands in front of the model: the API key, the body size limit, the concurrency limit.

`Guard` is plain ASGI middleware, so it answers before any body is read or parsed: a wrong
key is a 401 even for a malformed body, and an oversized body (by its Content-Length, or
counted as it arrives when it is sent in chunks) is a 413 without being held in memory.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gptkit.serve.errors import APIError, error_bytes

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Guard:
    """ASGI middleware: bearer token on /v1/*, body size limit, JSON bodies on /v1/*."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        assert self.api_key is not None
        return scheme.lower() == "bearer" and secrets.compare_digest(
            token.strip().encode(), self.api_key.encode())

    @staticmethod
    async def _reject(send: Send, status: int, message: str, code: str | None = None,
                      extra: list[tuple[bytes, bytes]] | None = None) -> None:
        body = error_bytes(status, message, code)
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode()), *(extra or [])]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.lower(): value for name, value in scope["headers"]}
        api = scope["path"].startswith("/v1/")
        if api and self.api_key is not None and not self._authorized(headers):
            await self._reject(send, 401, "missing or wrong API key: send the header "
                               "'Authorization: Bearer <key>' with the key the server was "
                               "started with (--api-key)",
                               extra=[(b"www-authenticate", b'Bearer realm="gptkit"')])
            return
        limit = self.max_body_bytes
        too_large = f"the request body is larger than the server's limit of {limit:,} bytes"
        if b"content-length" in headers:
            try:
                length = int(headers[b"content-length"])
            except ValueError:
                await self._reject(send, 400, "the Content-Length header is not a number",
                                   "bad_header")
                return
            if length > limit:
                await self._reject(send, 413, too_large, "body_too_large")
                return
        if api and scope["method"] == "POST":
            # the body is JSON whatever the client says (curl -d sends a form content type);
            # the scope changes in place, so that what routing adds to it (the route) reaches
            # the request counter outside
            scope["headers"] = [(k, v) for k, v in scope["headers"]
                                if k.lower() != b"content-type"]
            scope["headers"].append((b"content-type", b"application/json"))

        received = 0
        over = False
        answered = False

        async def counted_receive() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    return {"type": "http.disconnect"}  # the app stops reading here
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if over:  # whatever the app says about the cut-off body, the answer is 413
                if not answered and message["type"] == "http.response.start":
                    answered = True
                    await self._reject(send, 413, too_large, "body_too_large")
                return
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        finally:
            if over and not answered:
                answered = True
                await self._reject(send, 413, too_large, "body_too_large")


class Gate:
    """Counts the requests in progress; one more than `limit` is refused with 429.

    Used from the event loop only, so a plain counter is safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def enter(self) -> None:
        if self.active >= self.limit:
            raise APIError(429, f"the server is busy: {self.limit} requests are in progress "
                           "(its --max-concurrent limit); retry in a moment",
                           headers={"Retry-After": "1"})
        self.active += 1

    def leave(self) -> None:
        self.active = max(self.active - 1, 0)
