"""Run the app under uvicorn: on the command line (`gptkit serve`), or in a background thread
(`background`, for notebooks and tests).

The listening socket is bound here, before uvicorn starts, so that a taken port is a
one-line error and port 0 (any free port) tells its number.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gptkit.errors import GptkitError
from gptkit.finetune.classifier import Classifier
from gptkit.generation.speculative import Speculative
from gptkit.guard import OutputGuard
from gptkit.memory import human_bytes
from gptkit.run import Run
from gptkit.serve.arena import Arena
from gptkit.serve.settings import ServeSettings


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise GptkitError(f"--host {host}: not an address of this machine ({exc.strerror})"
                          ) from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise GptkitError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another "
                          "--port (0 = any free port)") from exc
    sock.listen(2048)
    return sock


def _server(app: Any, log_level: str) -> Any:
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=log_level in ("debug", "info"),
                            timeout_graceful_shutdown=3, lifespan="on")
    return uvicorn.Server(config)


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(model: Run | Classifier, settings: ServeSettings, *, log_level: str = "info",
          draft: Speculative | None = None, guard: OutputGuard | None = None,
          arena: Arena | None = None) -> None:
    """Serve until Ctrl-C (uvicorn then lets open requests finish for up to 3 seconds);
    `draft`: decode speculatively with it; `guard`: withhold what crosses its threshold;
    `arena`: also serve a blind comparison."""
    from gptkit.serve.app import create_app

    settings.check()
    app = create_app(model, settings, draft=draft, guard=guard, arena=arena)
    sock = bind(settings.host, settings.port)
    url = base_url(sock)
    engine = app.state.engine
    print(f"serving {engine.name} ({engine.task}) on {url}: playground {url}/, API "
          f"{url}/v1/{'classify' if engine.task == 'classify' else 'completions'}, "
          f"docs {url}/docs; Ctrl-C stops", flush=True)
    if arena is not None:
        print(f"arena: {', '.join(sorted(arena.seats))}; votes in {arena.store.file}; "
              f"Compare tab {url}/", flush=True)
    pool = engine.pool_info()
    if pool is not None:
        cache = (f"prefix cache up to {human_bytes(pool['prefix_cache_bytes'])} "
                 "(--prefix-cache-mb)")
        if "draft_bytes" in pool:
            cache = (f"draft's KV pool {pool['draft_positions_per_row']} positions per row "
                     f"({human_bytes(pool['draft_bytes'])}), {pool['draft_tokens']} draft "
                     f"tokens per step (--draft-tokens), {cache} with the draft's KV")
        print(f"KV pool: {pool['rows']} rows x {pool['positions_per_row']} positions "
              f"({human_bytes(pool['bytes'])}, --max-batch-size), {cache}", flush=True)
    if guard is not None:
        print(f"guard: {guard.name} withholds answers with P({guard.label}) >= "
              f"{guard.threshold:g} (finish_reason content_filter)", flush=True)
    if not settings.is_loopback and settings.api_key is None:
        print(f"gptkit: warning: {settings.host} may be reachable from other machines and no "
              "--api-key is set: anyone who can connect can use the model", file=sys.stderr)
    try:
        _server(app, log_level).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down: the way to stop
        print("gptkit serve: stopped", flush=True)


@contextmanager
def background(app: Any, host: str = "127.0.0.1", port: int = 0,
               log_level: str = "warning") -> Iterator[str]:
    """Run `app` under uvicorn in a daemon thread; yields its base URL once it accepts
    connections, and stops it on exit."""
    sock = bind(host, port)
    server = _server(app, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="gptkit-serve")
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise GptkitError("the server did not start; see its log above")
            time.sleep(0.01)
        yield base_url(sock)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
