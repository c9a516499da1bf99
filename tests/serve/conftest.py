"""Servers for the serve tests: in-process (TestClient) and real uvicorn on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gptkit.run import Run, load_run
from gptkit.serve import ServeSettings

# what the serve extra and the dev extra bring; without them the serve tests skip
NEEDED = {"fastapi": "the serve extra is not installed: pip install -e '.[serve]'",
          "uvicorn": "the serve extra is not installed: pip install -e '.[serve]'",
          "prometheus_client": "the serve extra is not installed: pip install -e '.[serve]'",
          "httpx": "httpx is not installed: pip install -e '.[dev]'"}


def require_serve() -> None:
    """Skip the calling test module unless FastAPI, uvicorn and httpx are installed (called
    before its imports, which is why tests/serve may import below code)."""
    for module, reason in NEEDED.items():
        pytest.importorskip(module, reason=reason)


@pytest.fixture(scope="session")
def run(tiny_run: Path) -> Run:
    return load_run(tiny_run)


def chat_copy(tiny_run: Path, folder: Path, template: Any) -> Run:
    """The tiny run copied to `folder`/tiny with `template` as its chat template (a
    `ChatTemplate`), loaded: the 20-step model, but it can chat."""
    import shutil

    from gptkit.chat_template import write_chat_template

    shutil.copytree(tiny_run, folder / "tiny")
    write_chat_template(folder / "tiny", template)
    return load_run(folder / "tiny")


@pytest.fixture(scope="session")
def chat_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The tiny run (model id `tiny`) with gptkit's own chat template."""
    from gptkit.chat_template import default_chat_template

    return chat_copy(tiny_run, tmp_path_factory.mktemp("chat"), default_chat_template())


@pytest.fixture(scope="module")
def client(run: Run) -> Iterator[Any]:
    """The API of the tiny run with default settings, in process (FastAPI's TestClient)."""
    from fastapi.testclient import TestClient

    from gptkit.serve import create_app

    with TestClient(create_app(run, ServeSettings(max_tokens=256))) as test_client:
        yield test_client


@contextmanager
def live_server(model: Any, guard: Any = None, **settings: Any) -> Iterator[tuple[str, Any]]:
    """(base URL, app) of a real uvicorn server on a free loopback port (`guard`: an
    `OutputGuard`)."""
    from gptkit.serve import background, create_app

    app = create_app(model, ServeSettings(**settings), guard=guard)
    with background(app) as url:
        yield url, app


def sse_events(lines: Iterator[str]) -> list[Any]:
    """The `data:` payloads of a server-sent event stream, JSON-decoded, [DONE] as a string."""
    events: list[Any] = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", line  # one data line per event, then a blank line
    return events


def stream_texts(events: list[Any]) -> tuple[dict[int, str], dict[int, str]]:
    """Each choice's concatenated text and its finish_reason."""
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for event in events:
        if isinstance(event, str):
            continue
        for choice in event["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
            if choice["finish_reason"]:
                reasons[choice["index"]] = choice["finish_reason"]
    return texts, reasons


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll until `condition` holds; fail naming `what` after `timeout` (a bound, not a
    measurement)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


@contextmanager
def worker_blocked(app: Any) -> Iterator[threading.Event]:
    """Hold the model's worker thread busy until the block ends (or the event is set), so
    requests queue and then run together."""
    release = threading.Event()
    app.state.executor.submit(release.wait)
    try:
        yield release
    finally:
        release.set()


def health(url: str) -> dict[str, Any]:
    import httpx

    return httpx.get(url + "/health", timeout=10).json()


@contextmanager
def serve_cli(run_dir: Path, log: Path, *options: str) -> Iterator[str]:
    """`gptkit serve RUN` itself, in a subprocess on a free loopback port: its base URL."""
    import os
    import signal
    import subprocess
    import sys

    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "gptkit", "serve", str(run_dir), "--port", "0",
             "--log-level", "warning", *options],
            stdout=subprocess.PIPE, stderr=stderr, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # "serving tiny (generate) on http://127.0.0.1:N: ..."
        assert first.startswith(f"serving {run_dir.name} (generate) on http://127.0.0.1:"), (
            first, log.read_text())
        url = first.split(" on ", 1)[1].split(": ", 1)[0]
        wait_until(lambda: _answers(url), "the server answers")
        yield url
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn shuts down gracefully
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def cli_server(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`gptkit serve` of the tiny run, in a subprocess on a free loopback port: its base URL."""
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"
    with serve_cli(tiny_run, log, "--max-tokens", "256", "--max-logprobs", "7") as url:
        yield url


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url + "/health", timeout=5).status_code == 200
    except httpx.TransportError:
        return False
