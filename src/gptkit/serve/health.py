"""Liveness and readiness, kept apart as orchestrators (Kubernetes probes, load balancers)
expect: a live server answers at all (restart it if not); a ready one can take requests now
(send it none if not).

The server is ready once its model is loaded (before the app exists), warmed up (`warm_up`,
the first work of the worker thread, so that lazy initialisation is not paid by the first
request) and its scheduler runs; it stops being ready when the scheduler dies or shutdown
begins. `Readiness` is that state; `create_app` moves it along in the app's lifespan.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future

from gptkit.generation.config import GenerationConfig
from gptkit.generation.sampling import generate_steps
from gptkit.serve.engine import Engine
from gptkit.serve.speculate import SpeculativeStepper

log = logging.getLogger("gptkit.serve")


def warm_up(engine: Engine) -> None:
    """Run the model once, as requests will (a short greedy generation with the KV cache, or
    a classification), so that what is done on first use is done before the first request.
    Writes nothing to the engine's stats."""
    if engine.task == "classify":
        engine.classify(["warm up"])
        return
    start = engine.tokenizer.eot_id or 0
    stepper = engine.stepper
    models = [engine.model, *([stepper.draft] if isinstance(stepper, SpeculativeStepper)
                              else [])]
    for model in models:  # and the draft's, with one
        steps = generate_steps(model, [[start]], GenerationConfig(max_new_tokens=2,
                                                                  temperature=0.0),
                               eot_id=None)
        for _ in steps:
            pass


class Readiness:
    """Where the server is between start and stop: `state` says it in words."""

    def __init__(self) -> None:
        self.started = False  # the lifespan has begun (the scheduler was started)
        self.warmed = False
        self.stopping = False
        self.failure: str | None = None  # why the warm-up failed

    def begin(self) -> None:
        """The lifespan starts (again, when an app is served a second time)."""
        self.started, self.warmed, self.stopping, self.failure = True, False, False, None

    def warmed_by(self, done: Future[None]) -> None:
        """The warm-up's outcome (a done-callback of its future)."""
        if done.cancelled():
            return
        error = done.exception()
        if error is None:
            self.warmed = True
        else:
            log.error("the warm-up failed: %s", error, exc_info=error)
            self.failure = f"the warm-up failed ({type(error).__name__}: {error})"

    def stop(self) -> None:
        self.stopping = True

    def state(self, scheduler_alive: bool) -> str:
        """'ready', or why not: 'starting', 'warming up', 'stopping', the warm-up's failure,
        'scheduler stopped'."""
        if self.stopping:
            return "stopping"
        if not self.started:
            return "starting"
        if self.failure is not None:
            return self.failure
        if not scheduler_alive:
            return "scheduler stopped"
        return "ready" if self.warmed else "warming up"
