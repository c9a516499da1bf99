"""Micro-batching: completion requests that arrive close together are generated as one batch.

The first request of a batch waits at most `window_s` for others; while a batch is being
generated, new requests queue and form the next one. A batch holds requests whose sampling
settings share the logits processors (`Job.key`), up to `max_batch_size` rows (prompts x n;
a larger request runs alone); the others keep their place in the queue. Batches run one at
a time in the model's worker thread, so the event loop stays free to accept and stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

from gptkit.serve.engine import Failure, Job

log = logging.getLogger("gptkit.serve")


def _nothing() -> None:
    """Run in the worker thread: returns once the work queued before it is done."""


class Batcher:
    def __init__(self, run_batch: Callable[[list[Job]], None], *, max_batch_size: int,
                 window_s: float) -> None:
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.window_s = window_s
        self.executor: Executor | None = None
        self.pending: deque[Job] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, executor: Executor) -> None:
        """Begin taking batches (inside the running event loop), run by `executor`."""
        self.executor = executor
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="gptkit-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def submit(self, job: Job) -> None:
        """Queue a job; its events arrive through `job.emit`."""
        if self._wake is None:
            raise RuntimeError("the batcher has not been started")
        self.pending.append(job)
        self._wake.set()

    def _take(self) -> list[Job]:
        """The oldest live job and, after it, the queued jobs that fit beside it."""
        batch: list[Job] = []
        rows = 0
        kept: deque[Job] = deque()
        while self.pending:
            job = self.pending.popleft()
            if job.cancelled.is_set():
                continue  # its client left while it waited
            if not batch:
                batch, rows = [job], job.rows
            elif job.key == batch[0].key and rows + job.rows <= self.max_batch_size:
                batch.append(job)
                rows += job.rows
            else:
                kept.append(job)
        self.pending = kept
        return batch

    def _room(self) -> bool:
        """Whether the oldest job's batch could still take more rows."""
        first = self.pending[0]
        rows = sum(job.rows for job in self.pending if job.key == first.key)
        return rows < self.max_batch_size

    async def _loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            # a batch is formed only once the worker is free (after attention maps or
            # classifications queued before it), so that everything waiting can join it
            await loop.run_in_executor(self.executor, _nothing)
            if self.pending and self.max_batch_size > 1:
                delay = self.pending[0].arrived + self.window_s - time.monotonic()
                if delay > 0 and self._room():
                    await asyncio.sleep(delay)
            batch = self._take()
            if not self.pending:
                self._wake.clear()
            if not batch:
                continue
            try:
                await loop.run_in_executor(self.executor, self.run_batch, batch)
            except Exception as exc:  # run_batch reports its own failures; this is the rest
                log.exception("a batch could not run")
                for job in batch:
                    job.emit(Failure(f"the model could not run: {exc}"))
