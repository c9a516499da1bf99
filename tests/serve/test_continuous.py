"""Continuous batching: requests join and leave at every step, in a bounded KV pool, prompts
prefilled in chunks and shared prefixes reused, and every text is what the request gets
alone (and what `sample_text` gives for the same settings)."""

from __future__ import annotations

from tests.serve.conftest import require_serve

require_serve()

from typing import Any

import pytest
import torch

from gptkit.config import ModelConfig
from gptkit.generation.config import GenerationConfig
from gptkit.generation.sampling import generate_steps
from gptkit.generation.text import sample_text
from gptkit.memory import inference_memory
from gptkit.model import GPT
from gptkit.run import Run
from gptkit.serve.engine import Engine
from gptkit.serve.jobs import Delta, End, Event, Failure, Finish, FirstToken, Job, Stats
from gptkit.serve.kvpool import KVPool
from gptkit.serve.prefix import PrefixStore
from gptkit.serve.stepper import Listener, Stepper

LONG = "First Citizen:\nBefore we proceed any"  # 36 characters: more than the context (32)


def job(run: Run, prompt: str, stream: bool = False, **settings: Any
        ) -> tuple[Job, list[Event]]:
    events: list[Event] = []
    defaults: dict[str, Any] = {"max_new_tokens": 20, "temperature": 0.0, "top_k": None,
                                "seed": None}
    made = Job(prompts=[run.tokenizer.encode(prompt)],
               settings=GenerationConfig(**{**defaults, **settings}), stream=stream,
               emit=events.append)
    return made, events


def told(events: list[Event]) -> list[Event]:
    """The events that carry text or an ending (not the time-to-first-token marker)."""
    return [e for e in events if not isinstance(e, FirstToken)]


def texts(events: list[Event]) -> list[str]:
    done = sorted((e for e in events if isinstance(e, Finish)), key=lambda e: e.index)
    assert isinstance(events[-1], End)
    return [e.text for e in done]


def alone(run: Run, prompt: str, **settings: Any) -> list[str]:
    """The text `gptkit sample` (sample_text, the Decoder) gives for these settings."""
    defaults: dict[str, Any] = {"max_new_tokens": 20, "temperature": 0.0, "top_k": None,
                                "seed": None}
    cfg = GenerationConfig(**{**defaults, **settings})
    return [t[len(prompt):] for t in sample_text(run.model, run.tokenizer, prompt, cfg)]


def running(engine: Engine) -> list[Job]:
    return [r.job for r in engine.stepper.running]


def test_a_request_joins_while_another_generates(run):
    engine = Engine(run, prefix_cache_mb=0)
    first, first_events = job(run, "ROMEO:", max_new_tokens=30, temperature=0.9, seed=1,
                              stop=["\n\n"])
    engine.submit(first)
    for _ in range(5):
        engine.stepper.step()
    second, second_events = job(run, "KING:", stream=True, num_samples=2, temperature=0.8,
                                seed=2)
    engine.submit(second)
    engine.stepper.step()
    assert running(engine) == [first, second]  # it joined mid-flight
    assert any(isinstance(e, Delta) for e in second_events) and not told(first_events)
    engine.run_batch([])
    assert texts(first_events) == alone(run, "ROMEO:", max_new_tokens=30, temperature=0.9,
                                        seed=1, stop=["\n\n"])
    assert texts(second_events) == alone(run, "KING:", num_samples=2, temperature=0.8, seed=2)
    assert engine.stats.largest_batch == 2


def test_rows_leave_at_once_and_waiting_jobs_take_their_slots(run):
    engine = Engine(run, max_batch_size=4, prefix_cache_mb=0)
    specs: list[tuple[str, dict[str, Any]]] = [
        ("A", {"max_new_tokens": 3}),  # leaves first
        ("ROMEO:", {"max_new_tokens": 25, "num_samples": 2, "temperature": 1.0, "seed": 3}),
        ("To be", {"max_new_tokens": 12, "num_samples": 2}),  # waits for 2 free slots
        ("KING:", {"max_new_tokens": 5}),  # 1 row fits beside, but it came later: waits
    ]
    jobs = [job(run, prompt, **settings) for prompt, settings in specs]
    for made, _ in jobs:
        engine.submit(made)
    seen: list[list[Job]] = []
    while engine.busy:
        engine.stepper.step()
        assert engine.stats.running_rows <= 4  # the pool's bound
        seen.append(running(engine))
    short, long, big, small = (made for made, _ in jobs)
    assert seen[0] == [short, long]

    def joined(made: Job) -> int:
        return next(i for i, now in enumerate(seen) if made in now)

    assert short not in seen[joined(big)] and long in seen[joined(big)]  # long still runs
    assert joined(small) >= joined(big)  # first come, first served: no job is starved
    for (prompt, settings), (_, events) in zip(specs, jobs, strict=True):
        assert texts(events) == alone(run, prompt, **settings)


def test_a_cancelled_request_frees_its_slot_for_the_others(run):
    engine = Engine(run, max_batch_size=2, prefix_cache_mb=0)
    leaving, leaving_events = job(run, "A", max_new_tokens=30)
    staying, staying_events = job(run, "KING:", max_new_tokens=30, temperature=0.7, seed=5)
    waiting, waiting_events = job(run, "ROMEO:", max_new_tokens=10)
    for made in (leaving, staying, waiting):
        engine.submit(made)
    for _ in range(3):
        engine.stepper.step()
    assert running(engine) == [leaving, staying]
    leaving.cancelled.set()
    engine.stepper.step()
    assert running(engine) == [staying, waiting] and engine.stats.cancelled == 1
    engine.run_batch([])
    assert told(leaving_events) == []
    assert texts(staying_events) == alone(run, "KING:", max_new_tokens=30, temperature=0.7,
                                          seed=5)
    assert texts(waiting_events) == alone(run, "ROMEO:", max_new_tokens=10)


def test_long_prompts_are_prefilled_in_chunks_beside_running_rows(run):
    prompt = LONG[:30]
    whole = Engine(run, prefix_cache_mb=0)
    expected, expected_events = job(run, prompt, temperature=0.9, seed=6)
    whole.run_batch([expected])
    engine = Engine(run, prefill_chunk=4, prefix_cache_mb=0)
    other, other_events = job(run, "A", stream=True, max_new_tokens=30)
    engine.submit(other)
    engine.stepper.step()
    chunked, chunked_events = job(run, prompt, temperature=0.9, seed=6)
    engine.submit(chunked)
    for step in range(2, 8):  # 30 prompt tokens, 4 a step: the other row never waits
        engine.stepper.step()
        assert sum(isinstance(e, Delta) for e in other_events) == step
        assert not any(isinstance(e, Finish) for e in chunked_events)
    engine.run_batch([])
    assert texts(chunked_events) == texts(expected_events)
    assert texts(chunked_events) == alone(run, prompt, temperature=0.9, seed=6)
    assert engine.stats.prompt_tokens_computed == len(prompt) + 1


def test_rows_slide_past_the_context_beside_others(run):
    engine = Engine(run, prefix_cache_mb=0)
    specs: list[tuple[str, dict[str, Any]]] = [
        (LONG, {"max_new_tokens": 15}),  # starts past the context
        ("ROMEO:", {"max_new_tokens": 40, "temperature": 0.9, "seed": 7}),  # slides later
        ("A", {"max_new_tokens": 8}),
    ]
    jobs = [job(run, prompt, **settings) for prompt, settings in specs]
    engine.run_batch([made for made, _ in jobs])
    for (prompt, settings), (_, events) in zip(specs, jobs, strict=True):
        assert texts(events) == alone(run, prompt, **settings)


def test_n_rows_of_one_prompt_prefill_it_once(run):
    engine = Engine(run, prefix_cache_mb=0)
    made, events = job(run, "JULIET:\nO", num_samples=3, temperature=1.0, seed=8)
    engine.run_batch([made])
    assert texts(events) == alone(run, "JULIET:\nO", num_samples=3, temperature=1.0, seed=8)
    prompt = len("JULIET:\nO")
    assert engine.stats.prompt_tokens_computed == prompt
    assert engine.stats.prompt_tokens_reused == 2 * prompt


def test_a_shared_prefix_is_computed_once_and_gives_the_same_text(run):
    history = "ROMEO:\nO, she doth teach the torches"
    turn = history[:24]  # the next request resends the first one's prompt and more
    for settings in ({"temperature": 0.0}, {"temperature": 0.9, "seed": 9}):
        engine = Engine(run, prefix_cache_mb=1)
        earlier, _ = job(run, turn[:14], max_new_tokens=5)
        engine.run_batch([earlier])
        before = engine.stats.prompt_tokens_computed
        later, later_events = job(run, turn, max_new_tokens=12, **settings)
        engine.run_batch([later])
        assert engine.stats.prompt_tokens_reused >= 14 and engine.stats.prefix_cache_entries
        assert engine.stats.prompt_tokens_computed - before <= len(turn) - 14
        assert texts(later_events) == alone(run, turn, max_new_tokens=12, **settings)


def test_the_prefix_store_evicts_the_least_recently_used():
    def kv(length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((2, 2, length, 4), float(length)), torch.zeros(2, 2, length, 4)

    entry = 2 * 2 * 2 * 5 * 4 * 4  # k and v of 5 positions, fp32
    store = PrefixStore(budget=2 * entry)
    store.add([1, 2, 3, 4, 5], *kv(5))
    store.add([6, 7, 8, 9, 10], *kv(5))
    found = store.lookup([1, 2, 3, 9])  # uses the first: now the second is the oldest
    assert found is not None and found[0].shape[2] == 3
    store.add([11, 12, 13, 14, 15], *kv(5))
    assert store.lookup([6, 7]) is None and store.evicted == 1
    assert store.used == 2 * entry
    store.add([1, 2, 3], *kv(3))  # held already by a longer one: nothing added
    assert store.used == 2 * entry
    store.add([11, 12, 13, 14, 15, 16], *kv(6))  # extends one: replaces it, and the
    assert list(store.entries) == [(11, 12, 13, 14, 15, 16)]  # oldest went for room
    assert store.used == entry * 6 // 5 and store.evicted == 2
    store.add(list(range(100)), *kv(100))  # larger than the whole budget: not kept
    assert (tuple(range(100))) not in store.entries


def test_the_pool_is_allocated_at_start_and_sized_per_row(run):
    engine = Engine(run, max_batch_size=3)
    info = engine.pool_info()
    c = run.model.config
    assert info is not None and info["rows"] == 3 and info["positions_per_row"] == c.block_size
    per_row = inference_memory(run.config, c.vocab_size).kv_cache  # what gptkit info shows
    assert info["bytes"] == 3 * per_row == 3 * 2 * c.n_layer * c.block_size * c.n_embd * 4


def row_by_row(monkeypatch: pytest.MonkeyPatch, on: bool) -> None:
    """Decoding steps of the pool attend row by row (`on`) or in one masked call, whatever
    the sizes (`kvpool.ROW_CALL_BYTES`: what a call per row must save)."""
    monkeypatch.setattr("gptkit.serve.kvpool.ROW_CALL_BYTES", 0 if on else 10**12)


def test_a_decoding_step_attends_row_by_row_where_that_reads_fewer_bytes():
    """With GPT-2 small's 12 heads of 64, rows far apart read much fewer keys each on their
    own than the longest row's, which pays for a call per row; rows close together do not,
    nor do the default recipe's model's 4 heads of 32, nor rows at one position or several
    tokens per row."""
    torch.manual_seed(0)
    wide = GPT(ModelConfig(n_layer=1, n_head=12, n_embd=768, block_size=1024, vocab_size=50,
                           dropout=0.0)).eval()
    pool = KVPool(wide, 4)
    assert pool.view(0, [10, 1000, 20, 30], 1).row_keys(1) == [11, 1001, 21, 31]
    assert pool.view(0, [990, 1000, 995, 1000], 1).row_keys(1) is None
    assert pool.view(0, [500] * 4, 1).row_keys(1) is None
    assert pool.view(0, [10, 900, 20, 30], 3).row_keys(3) is None
    small = GPT(ModelConfig(n_layer=1, n_head=4, n_embd=128, block_size=512, vocab_size=50,
                            dropout=0.0)).eval()
    assert KVPool(small, 16).view(0, [10 + 30 * i for i in range(16)], 1).row_keys(1) is None


@pytest.mark.parametrize("rowwise", [False, True])
@pytest.mark.parametrize("pos_embedding", ["learned", "rope"])
def test_rows_at_their_own_positions_get_a_full_forwards_scores(pos_embedding, rowwise,
                                                                monkeypatch):
    """The pool's rows decode together, each at its own position (learned positions and
    rotary angles alike; in one masked call or row by row), and score as the whole sequence
    does in one plain forward."""
    row_by_row(monkeypatch, rowwise)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=24, vocab_size=50,
                            dropout=0.0, pos_embedding=pos_embedding)).eval()
    rows = [torch.randint(0, 50, (n,)).tolist() for n in (5, 11, 8)]
    pool = KVPool(model, 3)
    with torch.no_grad():
        for slot, ids in enumerate(rows):  # prefill all but the last token, in two chunks
            half = len(ids) // 2
            model(torch.tensor([ids[:half]]), kv_cache=pool.view(slot, [0], half))
            rest = ids[half:-1]
            model(torch.tensor([rest]), kv_cache=pool.view(slot, [half], len(rest)))
        last = torch.tensor([[ids[-1]] for ids in rows])
        view = pool.view(0, [len(ids) - 1 for ids in rows], 1)
        assert (view.row_keys(1) is not None) == rowwise
        together, _ = model(last, kv_cache=view)
        for slot, ids in enumerate(rows):
            whole, _ = model(torch.tensor([ids]))
            torch.testing.assert_close(together[slot, -1], whole[0, -1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rowwise", [False, True])
@pytest.mark.parametrize("pos_embedding", ["learned", "rope"])
def test_the_stepper_draws_what_generate_steps_draws_alone(pos_embedding, rowwise, monkeypatch):
    row_by_row(monkeypatch, rowwise)
    torch.manual_seed(1)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=24, vocab_size=50,
                            dropout=0.0, pos_embedding=pos_embedding)).eval()
    with torch.no_grad():  # peaked scores: float rounding never decides a token
        for p in model.parameters():
            p.mul_(3.0)
    specs = [([[3, 4, 5, 6, 7]], {"num_samples": 2, "temperature": 1.0, "seed": 1}),
             ([[9] * 20, [1, 2]], {"temperature": 0.0, "max_new_tokens": 12}),  # slides
             ([[8, 7]], {"temperature": 0.8, "seed": 2, "repetition_penalty": 1.3}),
             # equal row-wise processors: these two take their tokens in one call
             ([[1, 2, 3]], {"temperature": 0.7, "top_k": 10, "top_p": 0.9, "seed": 3}),
             ([[4, 5]], {"temperature": 0.7, "top_k": 10, "top_p": 0.9, "seed": 4}),
             ([[6]], {"temperature": 1.2, "typical_p": 0.8, "logit_bias": {3: 4.0},
                      "seed": 5}),
             ([[2, 2]], {"temperature": 0.0}), ([[2, 9]], {"temperature": 0.0})]
    drawn: dict[int, list[list[int]]] = {}
    together: list[int] = []

    def took(made: Job, values: list[int], logprobs: Any, step: int) -> list[bool]:
        drawn.setdefault(id(made), []).append(values)
        return [step >= made.max_tokens] * made.rows

    def failed(made: Job, exc: Exception) -> None:
        raise exc

    stepper = Stepper(model, 10, eot_id=None, prefill_chunk=3, stats=Stats(),
                      listener=Listener(lambda made: None, took, failed, lambda made: None,
                                        lambda made: None))
    scores = stepper._scores
    stepper._scores = lambda jobs: together.append(len(jobs)) or scores(jobs)  # type: ignore
    jobs = []
    for prompts, settings in specs:
        cfg = GenerationConfig(**{"max_new_tokens": 8, "top_k": None, **settings})
        jobs.append(Job(prompts=prompts, settings=cfg, stream=False, emit=lambda e: None))
        stepper.submit(jobs[-1])
        stepper.step()  # each joins one step after the one before
    while stepper.busy:
        stepper.step()
    for made in jobs:
        seed_groups = [(len(made.prompts), made.settings.seed)]
        alone = [step.token.tolist() for step in generate_steps(
            model, made.prompts, made.settings, eot_id=None, seed_groups=seed_groups)]
        assert drawn[id(made)] == alone
    assert max(together) >= 2  # the grouped path ran, not only one job per call


def test_a_draw_of_many_jobs_is_what_multinomial_draws_for_each():
    """The stepper samples all jobs in one division (argmax of p / q, q ~ Exp(1) from each
    job's generator): token for token what torch.multinomial gives each job alone."""
    torch.manual_seed(0)
    for vocab in (65, 50257):
        probs = [(torch.randn(rows, vocab) * 3).softmax(dim=-1) for rows in (1, 3, 2)]
        mine = [torch.Generator().manual_seed(s) for s in range(3)]
        theirs = [torch.Generator().manual_seed(s) for s in range(3)]
        for _ in range(5):
            noise = torch.cat([torch.empty_like(p).exponential_(1, generator=g)
                               for p, g in zip(probs, mine, strict=True)])
            together = (torch.cat(probs) / noise).argmax(dim=-1)
            alone = torch.cat([torch.multinomial(p, 1, generator=g)[:, 0]
                               for p, g in zip(probs, theirs, strict=True)])
            assert torch.equal(together, alone)


def test_row_wise_processors_give_a_row_the_same_scores_stacked_or_alone():
    from gptkit.generation.logits_process import build_processors
    torch.manual_seed(0)
    scores = torch.randn(6, 80) * 4
    scores[:, :10] = scores[:, :1]  # ties: sorting and top-k must still agree
    chains = [build_processors(0.7, 10, 0.9), build_processors(1.3, None, 1.0, typical_p=0.8),
              build_processors(1.0, 5, 1.0, logit_bias={3: 4.0, 7: -100.0})]
    for chain in chains:
        assert chain.row_key() is not None
        stacked = chain(scores, scores.clone())
        for i in range(scores.size(0)):
            assert torch.equal(stacked[i], chain(scores[i : i + 1], scores[i : i + 1])[0])
    assert build_processors(0.7, repetition_penalty=1.2).row_key() is None  # reads the ids


def test_a_failing_step_ends_every_request_and_the_engine_goes_on(run, monkeypatch):
    engine = Engine(run, max_batch_size=1, prefix_cache_mb=0)
    running_job, running_events = job(run, "A")
    queued_job, queued_events = job(run, "B")
    engine.submit(running_job)
    engine.submit(queued_job)
    engine.stepper.step()
    assert running(engine) == [running_job] and engine.queued == 1

    def broken() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(engine.stepper, "_admit", broken)
    assert engine.work() is False and engine.stats.running_rows == 0
    for events in (running_events, queued_events):
        events = told(events)
        assert len(events) == 1 and isinstance(events[0], Failure) and events[0].status == 500
    monkeypatch.undo()
    again, again_events = job(run, "A")
    engine.run_batch([again])
    assert texts(again_events) == alone(run, "A")
