"""The engine without HTTP: a batch's jobs get what they get alone (different n included),
every job hears back once, and failures and cancellations end only their own jobs."""

from __future__ import annotations

from tests.serve.conftest import require_serve

require_serve()

from typing import Any

from gptkit.generation.config import GenerationConfig
from gptkit.run import Run
from gptkit.serve.engine import Engine
from gptkit.serve.jobs import Delta, End, Event, Failure, Finish, Job


def job(run: Run, prompts: list[str], stream: bool = False, **settings: Any
        ) -> tuple[Job, list[Event]]:
    """A job in the request's terms (n, max_tokens, stops), as the app builds it."""
    events: list[Event] = []
    names = {"n": "num_samples", "max_tokens": "max_new_tokens", "stops": "stop"}
    defaults: dict[str, Any] = {"max_new_tokens": 30, "temperature": 0.0, "top_k": None,
                                "seed": None}
    chosen = GenerationConfig(**{**defaults, **{names.get(k, k): v for k, v in settings.items()}})
    made = Job(prompts=[run.tokenizer.encode(p) for p in prompts], settings=chosen,
               stream=stream, emit=events.append)
    return made, events


def finished(events: list[Event]) -> list[tuple[str, str]]:
    done = sorted((e for e in events if isinstance(e, Finish)), key=lambda e: e.index)
    return [(e.text, e.reason) for e in done]


def test_jobs_with_different_n_share_a_batch_unchanged(run):
    engine = Engine(run)
    specs = [(["ROMEO:"], {"n": 3, "temperature": 0.9, "seed": 1}),
             (["To be", "A"], {"n": 1, "temperature": 0.9, "seed": 2, "max_tokens": 12}),
             (["KING:"], {"n": 2, "temperature": 0.9, "seed": 3, "stops": ["e"]})]
    alone = []
    for prompts, settings in specs:
        single, events = job(run, prompts, **settings)
        engine.run_batch([single])
        alone.append(finished(events))
    together = [job(run, prompts, **settings) for prompts, settings in specs]
    engine.run_batch([j for j, _ in together])
    assert [finished(events) for _, events in together] == alone
    assert engine.stats.largest_batch == 3
    for _, events in together:  # deltas only when streaming; one End, last
        assert not any(isinstance(e, Delta) for e in events)
        assert isinstance(events[-1], End) and sum(isinstance(e, End) for e in events) == 1


def test_streamed_deltas_join_to_the_finished_text(run):
    engine = Engine(run)
    streamed, events = job(run, ["ROMEO:"], n=2, temperature=1.0, seed=4, stream=True,
                           stops=["\n\n"], max_tokens=60)
    engine.run_batch([streamed])
    for index, (text, _) in enumerate(finished(events)):
        assert "".join(e.text for e in events if isinstance(e, Delta) and e.index == index) == text


def test_failures_and_cancellations_end_only_their_jobs(run):
    engine = Engine(run)
    bad, bad_events = job(run, ["A"])
    bad.prompts = [[10_000]]  # outside the vocabulary
    engine.run_batch([bad])
    assert len(bad_events) == 1 and isinstance(bad_events[0], Failure)
    assert bad_events[0].status == 422 and "vocabulary" in bad_events[0].message

    gone, gone_events = job(run, ["A"])
    gone.cancelled.set()
    kept, kept_events = job(run, ["A"])
    engine.run_batch([gone, kept])
    assert gone_events == [] and isinstance(kept_events[-1], End)
    assert engine.stats.cancelled == 1

    def leave_after_first(event: Event) -> None:  # the client leaves while it generates
        leaving_events.append(event)
        leaving.cancelled.set()

    leaving, leaving_events = job(run, ["A"], stream=True, max_tokens=30)
    leaving.emit = leave_after_first
    engine.run_batch([leaving])
    assert len(leaving_events) == 1 and isinstance(leaving_events[0], Delta)
    assert engine.stats.cancelled == 2
