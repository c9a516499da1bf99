"""The asyncio side of continuous batching: requests are queued at once, and the model's one
worker thread runs decoding steps (`Engine.work`, a few tens of milliseconds of steps per
call) while any job is queued or running. Jobs join and leave at every step (`stepper`);
attention maps and classifications queued on the same worker run between calls, and the
event loop stays free to accept and stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import Executor

from gptkit.serve.engine import Engine
from gptkit.serve.jobs import Job

log = logging.getLogger("gptkit.serve")


class Scheduler:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.executor: Executor | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self, executor: Executor) -> None:
        """Begin running jobs (inside the running event loop), in `executor`."""
        self.executor = executor
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(),
                                                            name="gptkit-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queued(self) -> int:
        return self.engine.queued

    def submit(self, job: Job) -> None:
        """Queue a job; its events arrive through `job.emit`."""
        if self._wake is None:
            raise RuntimeError("the scheduler has not been started")
        self.engine.submit(job)
        self._wake.set()

    async def _loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()  # a job submitted from now on sets it again
            try:
                while await loop.run_in_executor(self.executor, self.engine.work):
                    pass
            except Exception:  # Engine.work ends its own failures; this is the rest
                log.exception("the model's worker could not run")
