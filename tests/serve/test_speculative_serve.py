"""Speculative decoding in the server (`gptkit serve --draft`): greedy requests give the text
they give without a draft, token for token, while requests of different lengths join and
leave; sampled ones run with every option; the draft's counters reach /metrics and /health;
what cannot work is refused."""

from __future__ import annotations

from tests.serve.conftest import require_serve

require_serve()

import copy
import dataclasses
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from gptkit.config import ModelConfig
from gptkit.errors import GptkitError
from gptkit.generation.config import GenerationConfig
from gptkit.generation.speculative import Speculative
from gptkit.model import GPT
from gptkit.run import Run
from gptkit.serve import ServeSettings, create_app, speculate
from gptkit.serve.engine import Engine
from gptkit.serve.jobs import Event, Finish, Job, Stats
from tests.serve.conftest import health, live_server, serve_cli, sse_events
from tests.serve.test_metrics import scrape, value
from tests.test_chat_cli import write_run
from tests.test_cli import expect_error
from tests.test_speculative import LIMIT, chi_square, exact_first_tokens

LONG = "First Citizen:\nBefore we proceed any"  # 36 characters: more than the context (32)


def noisy(model: GPT, scale: float, seed: int) -> GPT:
    """A copy of `model` with noise on every weight."""
    torch.manual_seed(seed)
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for p in copied.parameters():
            p.add_(torch.randn_like(p) * scale)
    return copied


def with_head(run: Run, scale: float) -> Run:
    """The run with a random output layer of this scale."""
    model = noisy(run.model, 0.0, 0)
    torch.manual_seed(1)
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.randn_like(model.lm_head.weight) * scale)
    return dataclasses.replace(run, lm=model)


@pytest.fixture(scope="module")
def sharp(run: Run) -> Run:
    """The tiny run with a peaked, varied output layer: its greedy text is not just spaces
    (which any draft would guess)."""
    return with_head(run, 3.0)


@pytest.fixture(scope="module")
def draft(sharp: Run) -> Speculative:
    """A draft that often, not always, agrees with the model."""
    return Speculative(noisy(sharp.model, 0.15, 2), tokens=3)


def submit(engine: Engine, run: Run, prompt: str | list[str], **settings: Any
           ) -> list[Event]:
    events: list[Event] = []
    defaults: dict[str, Any] = {"max_new_tokens": 20, "temperature": 0.0, "top_k": None,
                                "seed": None}
    prompts = [prompt] if isinstance(prompt, str) else prompt
    engine.submit(Job(prompts=[run.tokenizer.encode(p) for p in prompts],
                      settings=GenerationConfig(**{**defaults, **settings}),
                      stream=False,
                      emit=events.append, logprobs=2))
    return events


def finishes(events: list[Event]) -> list[Finish]:
    return sorted((e for e in events if isinstance(e, Finish)), key=lambda e: e.index)


LOAD: list[tuple[str | list[str], dict[str, Any]]] = [
    ("ROMEO:", {"max_new_tokens": 30}),
    ("A", {"max_new_tokens": 25, "num_samples": 2}),
    (LONG, {"max_new_tokens": 12}),  # past the context: decoded plainly
    (["To be", "KING RICHARD:"], {"max_new_tokens": 28, "repetition_penalty": 1.3}),
    ("JULIET:", {"max_new_tokens": 31, "stop": ["e"]}),
    ("O", {"max_new_tokens": 1}),
]


def through(engine: Engine, run: Run) -> list[list[Finish]]:
    """LOAD's jobs, the first half joining at once, the others a few steps later."""
    events = [submit(engine, run, p, **s) for p, s in LOAD[:3]]
    for _ in range(4):
        engine.stepper.step()
    events += [submit(engine, run, p, **s) for p, s in LOAD[3:]]
    engine.run_batch([])
    return [finishes(e) for e in events]


def small_draft(run: Run) -> Speculative:
    """A draft of another shape: one layer, a context of 16 (the model's is 32) and fewer
    token ids than the model (it never proposes the others)."""
    torch.manual_seed(5)
    vocab = run.model.config.vocab_size - 5
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=vocab))
    return Speculative(model.eval(), tokens=2)


@pytest.mark.parametrize("shape", ["noisy copy", "other shape"])
def test_greedy_text_and_logprobs_with_a_draft_are_those_without(sharp, draft, shape):
    plain = through(Engine(sharp, prefix_cache_mb=0), sharp)
    engine = Engine(sharp, draft=draft if shape == "noisy copy" else small_draft(sharp))
    drafted = through(engine, sharp)
    assert [[f.text for f in job] for job in drafted] == [[f.text for f in job]
                                                          for job in plain]
    assert len({f.text for job in plain for f in job}) > 5  # varied texts, not one guess
    for ours, theirs in zip(drafted, plain, strict=True):
        for a, b in zip(ours, theirs, strict=True):
            assert a.reason == b.reason and a.tokens is not None and b.tokens is not None
            assert [t.id for t in a.tokens] == [t.id for t in b.tokens]
            assert [t.logprob for t in a.tokens] == pytest.approx(
                [t.logprob for t in b.tokens], abs=1e-4)
    stats = engine.stats
    assert stats.draft_tokens > 0 and stats.accepted_tokens < stats.draft_tokens
    if shape == "noisy copy":
        assert stats.accepted_tokens > 0  # some kept, some rejected
    assert stats.running_rows == 0 and not engine.busy


def test_a_draft_equal_to_the_model_is_always_accepted(sharp):
    engine = Engine(sharp, draft=Speculative(sharp.model, tokens=4))
    events = submit(engine, sharp, "ROMEO:", max_new_tokens=26)
    engine.run_batch([])
    assert engine.stats.draft_tokens > 0
    assert engine.stats.accepted_tokens == engine.stats.draft_tokens
    assert engine.stats.steps < 26 / 2  # five tokens a step, once the first is drawn
    assert len(finishes(events)[0].text) == 26


def test_sampled_requests_with_a_draft_keep_their_limits(sharp, draft):
    engine = Engine(sharp, draft=draft)
    events = [submit(engine, sharp, "ROMEO:", max_new_tokens=17, temperature=0.9, seed=s,
                     num_samples=2, top_k=20) for s in range(3)]
    engine.run_batch([])
    for job in events:
        texts = [f.text for f in finishes(job)]
        assert len(texts) == 2 and all(len(t) == 17 for t in texts)
    # seeded: the same text again with the draft (not the text without it)
    again = Engine(sharp, draft=draft)
    repeat = submit(again, sharp, "ROMEO:", max_new_tokens=17, temperature=0.9, seed=0,
                    num_samples=2, top_k=20)
    again.run_batch([])
    assert [f.text for f in finishes(repeat)] == [f.text for f in finishes(events[0])]
    assert engine.stats.draft_tokens > 0


@contextmanager
def live_server_with_draft(run: Run, draft: Speculative) -> Iterator[tuple[str, Any]]:
    """(base URL, app) of a real uvicorn server decoding with `draft`."""
    from gptkit.serve import background

    app = create_app(run, ServeSettings(), draft=draft)
    with background(app) as url:
        yield url, app


SAMPLED = GenerationConfig(temperature=0.9, top_k=3, repetition_penalty=1.2,
                           max_new_tokens=3)


def sampled_counts(run: Run, draft: Speculative, jobs: int
                   ) -> tuple[Counter[tuple[int, ...]], Stats]:
    """The first three tokens of `jobs` seeded one-row requests decoding together, and the
    engine's counters."""
    engine = Engine(run, max_batch_size=64, draft=draft)
    seen: list[list[int]] = []
    prompt = run.tokenizer.encode("ROMEO:")
    for seed in range(jobs):
        out: list[int] = []
        seen.append(out)

        def emit(event: Event, out: list[int] = out) -> None:
            if isinstance(event, Finish):
                out.extend(run.tokenizer.encode(event.text))

        engine.submit(Job(prompts=[prompt], settings=SAMPLED.replace(seed=seed),
                          stream=False, emit=emit))
    engine.run_batch([])
    return Counter(tuple(tokens) for tokens in seen), engine.stats


def test_sampled_requests_follow_the_models_distribution(run, monkeypatch):
    """Tokens 2 and 3 of each request come from a speculative round (K = 3): the first three
    tokens of 1,500 requests against the model's exact distribution (a flatter model, whose
    three tokens take 27 values, the likeliest 40%; the draft keeps about 45%); keeping every
    draft token (the draft's distribution) fails the same test."""
    soft = with_head(run, 0.2)
    draft = Speculative(noisy(soft.model, 0.05, 3), tokens=3)
    prompt = soft.tokenizer.encode("ROMEO:")
    expected = exact_first_tokens(soft.model, prompt, SAMPLED, 3)
    assert len(expected) == 27 and max(expected.values()) < 0.5
    counts, stats = sampled_counts(soft, draft, 1500)
    assert chi_square(counts, expected, 1500) < LIMIT
    assert 0.2 < stats.accepted_tokens / stats.draft_tokens < 0.8

    def keep_all(p_scores, q_scores, drafted, greedy, groups):  # type: ignore[no-untyped-def]
        kept, token = real(p_scores, q_scores, drafted, greedy, groups)
        return torch.full_like(kept, drafted.size(1)), token

    real = speculate.accept
    monkeypatch.setattr(speculate, "accept", keep_all)
    assert chi_square(sampled_counts(soft, draft, 1500)[0], expected, 1500) > 10 * LIMIT


def completions(url: str, bodies: list[dict[str, Any]]) -> list[list[str]]:
    """POST them at once from threads (streamed ones read as events): each one's texts."""
    import httpx

    out: list[list[str]] = [[] for _ in bodies]

    def post(i: int, body: dict[str, Any]) -> None:
        if body.get("stream"):
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
                assert r.status_code == 200
                events = sse_events(r.iter_lines())
            texts: dict[int, str] = {}
            for e in events[:-1]:
                for c in e["choices"]:
                    texts[c["index"]] = texts.get(c["index"], "") + c["text"]
            out[i] = [texts[k] for k in sorted(texts)]
            return
        r = httpx.post(url + "/v1/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        out[i] = [c["text"] for c in r.json()["choices"]]

    threads = [threading.Thread(target=post, args=(i, b)) for i, b in enumerate(bodies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


BODIES: list[dict[str, Any]] = [
    {"prompt": "ROMEO:", "max_tokens": 30, "temperature": 0},
    {"prompt": "A", "max_tokens": 9, "temperature": 0, "n": 2, "stream": True},
    {"prompt": LONG, "max_tokens": 15, "temperature": 0, "stop": ["a"]},
    {"prompt": ["To be", "KING:"], "max_tokens": 24, "temperature": 0, "logprobs": 2},
    {"prompt": "JULIET:", "max_tokens": 40, "temperature": 0, "stream": True},
    {"prompt": "KING:", "max_tokens": 10, "temperature": 0, "best_of": 2},
    {"prompt": "To", "max_tokens": 6, "temperature": 0, "echo": True, "logprobs": 1},
]


def test_the_api_with_a_draft_gives_the_same_greedy_texts_and_counts_the_draft(sharp, draft):
    with live_server(sharp) as (url, _):
        plain = completions(url, BODIES)
    with live_server_with_draft(sharp, draft) as (url, app):
        assert completions(url, BODIES) == plain
        stats = app.state.engine.stats
        pool = health(url)["kv_pool"]
        assert pool["draft_tokens"] == 3 and pool["draft_bytes"] > 0
        assert pool["prefix_cache_bytes"] == 256 * 2**20  # prefix reuse with a draft too
        assert health(url)["stats"]["accepted_tokens"] == stats.accepted_tokens
        from fastapi.testclient import TestClient

        samples = scrape(TestClient(app))
    assert value(samples, "gptkit_spec_draft_tokens_total") == stats.draft_tokens > 0
    assert value(samples, "gptkit_spec_accepted_tokens_total") == stats.accepted_tokens > 0


def test_an_engine_passed_to_create_app_takes_its_draft_itself(sharp, draft):
    with pytest.raises(GptkitError, match="Engine"):
        create_app(Engine(sharp), draft=draft)


def test_a_prefix_cache_budget_with_a_draft_is_kept(sharp, draft):
    for budget, kept in ((64, 64 * 2**20), (0, 0), (None, 256 * 2**20)):
        info = Engine(sharp, draft=draft, prefix_cache_mb=budget).pool_info()
        assert info is not None and info["prefix_cache_bytes"] == kept


def converse(engine: Engine, run: Run, turns: int = 3, **settings: Any) -> list[str]:
    """A chat resent each turn: each prompt is the last one, its reply and a new line. The
    KV pools are wiped between turns, so what a turn reuses comes from the prefix store."""
    prompt, replies = "RO", []
    for _ in range(turns):
        events = submit(engine, run, prompt, max_new_tokens=6, **settings)
        engine.run_batch([])
        replies.append(finishes(events)[0].text)
        prompt += replies[-1] + "\nJ"
        stepper = engine.stepper
        for pool in (stepper.pool, getattr(stepper, "draft_pool", stepper.pool)):
            pool.k.normal_()
            pool.v.normal_()
    return replies


def test_prefix_reuse_with_a_draft_restores_both_models_kv(sharp):
    """A history resent each turn is computed once by the model and the draft alike: greedy
    replies are the model's own, and seeded sampled ones (where the draft's proposals decide
    the random path) are exactly those of a draft that computes every prompt itself, with
    the same acceptance: its restored KV is the one it computes. (Weights noisy enough that
    the next token depends on the context, not only on the last token.)"""
    model = noisy(sharp.model, 1.0, 7)
    run = dataclasses.replace(sharp, lm=model)
    draft = Speculative(noisy(model, 0.1, 2), tokens=3)
    plain = converse(Engine(run, prefix_cache_mb=0), run)
    assert len(set("".join(plain))) > 5
    for settings in ({}, {"temperature": 1.0, "seed": 3}):
        fresh = Engine(run, draft=draft, prefix_cache_mb=0)
        reused = Engine(run, draft=draft, prefix_cache_mb=64)
        replies = converse(fresh, run, **settings)
        assert converse(reused, run, **settings) == replies
        assert replies == plain or settings
        assert reused.stats.prompt_tokens_reused > 0 == fresh.stats.prompt_tokens_reused
        assert reused.stats.prompt_tokens_computed < fresh.stats.prompt_tokens_computed
        assert reused.stats.draft_tokens == fresh.stats.draft_tokens > 0
        assert reused.stats.accepted_tokens == fresh.stats.accepted_tokens


def test_serve_takes_draft_flags_and_refuses_a_draft_of_another_tokenizer(
        tiny_run: Path, tmp_path: Path, capsys):
    other = write_run(tmp_path / "other")
    expect_error(capsys, "serve", str(tiny_run), "--draft", str(other),
                 match="different tokenizer")
    expect_error(capsys, "serve", str(tiny_run), "--draft-tokens", "3", match="--draft RUN")
    expect_error(capsys, "serve", str(tiny_run), "--draft", str(tiny_run), "--draft-tokens",
                 "0", match="--draft-tokens must be >= 1")
    with serve_cli(tiny_run, tmp_path / "log.txt", "--draft", str(tiny_run),
                   "--draft-tokens", "2") as url:
        import httpx

        pool = health(url)["kv_pool"]
        assert pool["draft_tokens"] == 2 and pool["draft_bytes"] == pool["bytes"]
        r = httpx.post(url + "/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 12,
                                                      "temperature": 0}, timeout=60)
        assert r.status_code == 200 and len(r.json()["choices"][0]["text"]) == 12
        stats = health(url)["stats"]
        assert stats["accepted_tokens"] == stats["draft_tokens"] > 0  # itself: all kept


def test_the_warm_up_runs_the_draft_too(sharp):
    from gptkit.serve.health import warm_up

    draft = Speculative(noisy(sharp.model, 0.1, 4), tokens=2)
    calls: list[int] = []
    hook = draft.draft.register_forward_hook(lambda *_: calls.append(1))
    try:
        engine = Engine(sharp, draft=draft)
        warm_up(engine)
    finally:
        hook.remove()
    assert calls and engine.stats.steps == 0 and engine.stats.draft_tokens == 0
