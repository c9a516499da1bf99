"""Continuous batching: the server's requests decode together, joining and leaving at any step.

Each `step` (run in the model's worker thread): cancelled jobs leave; queued jobs join, first
come first served, while the pool has a free slot for each of their rows (a job that does not
fit waits, and so do the jobs behind it, so a large job is never starved); prompts are
prefilled, at most `prefill_chunk` prompt tokens per step, so a long prompt does not stall the
running rows; every row whose next token is due is decoded in one forward, each at its own
position in its own slot of the `KVPool`; then each job whose rows all have their scores takes
its next tokens. A row that ends leaves at once and frees its slot.

A job's text is what it gets alone: a job keeps what `generate_steps` builds for it alone (its
rows' token tensor as `prompt_rows` lays it out, its logits processors and its random
generator) and draws its rows' tokens from its own rows' scores only (jobs whose processors
read nothing but each row's scores are processed and drawn in one call; see `_sample`). A
row that has ended still feeds a (uniform) row into its job's draw: the draw consumes the
generator per row whatever the values, so the other rows draw what they would have drawn. A prompt
repeated n times is prefilled once and its KV copied to the n slots. A row longer than the
context slides as `Decoder` does: its last block_size tokens are recomputed every step (all
such rows in one forward, without the pool). With a `PrefixStore`, a joining prompt starts
from the longest cached prefix of it and rows that end leave their KV there.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from gptkit.errors import GptkitError
from gptkit.generation.decoding import (
    TokenBuffer,
    processors_for,
    prompt_rows,
    sampling_groups,
)
from gptkit.generation.logits_process import LogitsProcessorList
from gptkit.model import GPT
from gptkit.serve.kvpool import KVPool
from gptkit.serve.prefix import PrefixStore

if TYPE_CHECKING:
    from gptkit.serve.jobs import Job, Stats


@dataclass(eq=False)
class _Seat:
    """One row of a running job: its tokens and where its KV lives."""

    job: _Running
    index: int  # row within the job
    tokens: list[int]  # the prompt's last block_size ids, then the row's new tokens
    slot: int = -1
    cached: int = 0  # leading positions of `tokens` whose KV its slot holds
    drafted: int = 0  # leading positions whose KV the draft's pool holds (with a draft)
    leader: _Seat | None = None  # the row of the same prompt whose prompt KV it copies
    logits: Tensor | None = None  # scores of its next token, once computed
    live: bool = True


@dataclass(eq=False)
class _Running:
    """A job's decoding state: what `generate_steps` keeps for the job alone."""

    job: Job
    ids: TokenBuffer  # the job's rows as prompt_rows lays them out, then their tokens
    processors: LogitsProcessorList
    groups: list[tuple[int, torch.Generator]]
    seats: list[_Seat] = field(default_factory=list)
    step: int = 0

    @property
    def seq(self) -> Tensor:
        """(rows, width): the job's tokens so far (a view, valid until the next step)."""
        return self.ids.ids

    @property
    def key(self) -> Hashable:
        """Jobs with equal keys take their tokens together: greedy or not, and processors
        that read only each row's scores, alike (`LogitsProcessorList.row_key`); a job
        whose processors read its sequence is its own key."""
        key = self.processors.row_key()
        return self if key is None else (self.job.settings.temperature == 0, key)


@dataclass
class Listener:
    """What the engine does with a job's progress (all called in the worker thread)."""

    started: Callable[[Job], None]  # the job joined (before its first token)
    took: Callable[[Job, list[int], Tensor | None, int], list[bool]]  # tokens of step k:
    # each row's token, the log-probabilities they were drawn from (scored jobs) and the
    # step; returns which rows have ended
    failed: Callable[[Job, Exception], None]
    cancelled: Callable[[Job], None]
    empty: Callable[[Job], None]  # max_tokens 0: it ends without a step


class Stepper:
    """Rows of many jobs decoding together in a `KVPool` of `rows` slots."""

    def __init__(self, model: GPT, rows: int, *, eot_id: int | None, prefill_chunk: int,
                 stats: Stats, listener: Listener, store: PrefixStore | None = None) -> None:
        self.model = model
        self.pool = KVPool(model, rows)
        self.block_size = model.config.block_size
        self.eot_id = eot_id
        self.prefill_chunk = prefill_chunk
        self.stats = stats
        self.listener = listener
        self.store = store
        self.pending: deque[Job] = deque()
        self.running: list[_Running] = []
        self.slots: list[_Seat] = []  # slot i's row; rows occupy slots 0..len - 1
        vocab = model.lm_head.out_features
        self.blank = torch.zeros(vocab, device=self.pool.k.device)

    @property
    def busy(self) -> bool:
        return bool(self.pending or self.running)

    def pool_info(self) -> dict[str, int]:
        """The KV pool's size: rows, positions per row, bytes, and the prefix store's
        budget."""
        return {"rows": self.pool.rows, "positions_per_row": self.pool.positions,
                "bytes": self.pool.bytes,
                "prefix_cache_bytes": 0 if self.store is None else self.store.budget}

    def submit(self, job: Job) -> None:
        """Queue a job (any thread); it joins at the next step with room for it."""
        self.pending.append(job)
        self.stats.queued_jobs = len(self.pending)

    def step(self) -> None:
        """One decoding step of every running row (see the module's docstring)."""
        was_training = self.model.training
        if was_training:
            self.model.eval()
        try:
            with torch.no_grad():
                self._step()
        finally:
            if was_training:
                self.model.train()
            self._count()

    def _count(self) -> None:
        """The gauges of `Stats`: what is queued, running and cached now."""
        self.stats.queued_jobs = len(self.pending)
        self.stats.running_jobs = len(self.running)
        self.stats.running_rows = len(self.slots)
        if self.store is not None:
            self.stats.prefix_cache_bytes = self.store.used
            self.stats.prefix_cache_entries = len(self.store.entries)
            self.stats.prefix_cache_evictions = self.store.evicted

    def abort(self, exc: Exception) -> None:
        """End every job, queued or running, with `exc` (after a failure of the stepper
        itself, so that no request waits forever)."""
        jobs = [running.job for running in self.running] + list(self.pending)
        self.running.clear()
        self.slots.clear()
        self.pending.clear()
        self._count()
        for job in jobs:
            self.listener.failed(job, exc)

    def _step(self) -> None:
        for running in [r for r in self.running if r.job.cancelled.is_set()]:
            self._drop(running)
            self.listener.cancelled(running.job)
        self._admit()
        if not self.running:
            return
        self.stats.steps += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(self.running))
        try:
            self._prefill()
            self._decode()
        except Exception as exc:  # the model failed: every running job ends with it
            for running in list(self.running):
                self._drop(running)
                self.listener.failed(running.job, exc)
            return
        self._take([running for running in self.running
                    if all(seat.logits is not None for seat in running.seats if seat.live)])

    # --- joining ------------------------------------------------------------------------------
    def _admit(self) -> None:
        while self.pending:
            job = self.pending[0]
            if job.cancelled.is_set():
                self.pending.popleft()
                self.listener.cancelled(job)
                continue
            if job.rows > self.pool.rows:
                self.pending.popleft()
                self.listener.failed(job, GptkitError(
                    f"{job.rows} rows (prompts x n) are more than the server's KV pool holds "
                    f"({self.pool.rows}, --max-batch-size)"))
                continue
            if job.rows > self.pool.rows - len(self.slots):
                return  # first come, first served: the jobs behind it wait too
            self.pending.popleft()
            try:
                self._start(job)
            except Exception as exc:
                self.listener.failed(job, exc)

    def _start(self, job: Job) -> None:
        settings = job.settings
        if settings.num_beams > 1:
            raise GptkitError(f"num_beams={settings.num_beams} is beam search, which the "
                              "server does not run")
        pad = 0 if self.eot_id is None else self.eot_id
        seq, mask = prompt_rows(self.model, job.prompts, job.n, pad)
        self.listener.started(job)
        if job.max_tokens == 0:
            self.listener.empty(job)
            return
        processors = processors_for(settings, seq, mask, self.eot_id)
        groups = sampling_groups(len(job.prompts), job.n, settings.seed, None, seq.device)
        running = _Running(job, TokenBuffer(seq, min(job.max_tokens, self.block_size)),
                           processors, groups)
        for p, prompt in enumerate(job.prompts):
            ids = prompt[-self.block_size :]
            leader: _Seat | None = None
            for s in range(job.n):
                seat = _Seat(running, p * job.n + s, list(ids), slot=len(self.slots),
                             leader=leader)
                self.slots.append(seat)
                running.seats.append(seat)
                if leader is None:
                    leader = seat
                    self._reuse(seat)
        self.running.append(running)

    def _reuse(self, seat: _Seat) -> None:
        """Start a prompt from the KV of its longest cached prefix (all but its last token:
        that one's scores are computed)."""
        if self.store is None:
            return
        found = self.store.lookup(seat.tokens[:-1])
        if found is not None:
            self._restore(seat, found)
            self.stats.prompt_tokens_reused += seat.cached

    def _kept(self, seat: _Seat, length: int) -> tuple[Tensor, ...]:
        """What the prefix store keeps of `seat`'s first `length` positions: its keys and
        values (a hook: the speculative stepper keeps its draft's too, as far as they go)."""
        return self.pool.read(seat.slot, length)

    def _restore(self, seat: _Seat, kv: tuple[Tensor, ...]) -> None:
        """`seat` starts from a stored prefix (`_kept`'s tensors)."""
        k, v = kv
        self.pool.write(seat.slot, k, v)
        seat.cached = k.size(2)

    # --- computing scores ---------------------------------------------------------------------
    def _forward(self, first: int, positions: list[int], ids: list[list[int]]) -> Tensor:
        """fp32 scores (rows, vocab) after `ids` (rows, T) written from `positions` on."""
        return run_on(self.model, self.pool, first, positions, ids, keep=1)[:, -1].float()

    def _prefilled(self, seat: _Seat, start: int, ids: list[int]) -> None:
        """Prompt positions `ids` of `seat` from `start` on are in its slot (a hook: the
        speculative stepper fills its draft's pool alike)."""

    def _copy(self, source: _Seat, target: _Seat) -> None:
        """`target` takes `source`'s prompt KV (rows of one prompt share its prefill)."""
        self.pool.move(source.slot, target.slot, source.cached)
        target.cached = source.cached

    def _relocate(self, seat: _Seat, slot: int) -> None:
        """`seat`'s KV moves to `slot` (a row left there)."""
        self.pool.move(seat.slot, slot, seat.cached)
        seat.slot = slot

    def _prefill(self) -> None:
        """A chunk of the waiting prompts (oldest first), and the rows past the context."""
        budget = self.prefill_chunk
        sliding: list[_Seat] = []
        for running in self.running:
            for seat in running.seats:
                if not seat.live or seat.logits is not None or seat.leader is not None:
                    continue
                if len(seat.tokens) > self.block_size:
                    sliding.append(seat)
                    continue
                todo = len(seat.tokens) - seat.cached
                if todo <= 1 or budget <= 0:
                    continue  # one token: the decoding forward takes it
                take = min(todo, budget)
                budget -= take
                chunk = seat.tokens[seat.cached : seat.cached + take]
                logits = self._forward(seat.slot, [seat.cached], [chunk])
                self._prefilled(seat, seat.cached, chunk)
                seat.cached += take
                self.stats.prompt_tokens_computed += take
                if seat.cached == len(seat.tokens):
                    self._ready(seat, logits[0])
        if sliding:  # their last block_size tokens, recomputed without a cache, together
            windows = torch.tensor([seat.tokens[-self.block_size :] for seat in sliding],
                                   device=self.pool.k.device)
            logits = self.model(windows, logits_to_keep=1)[0][:, -1].float()
            for i, seat in enumerate(sliding):
                seat.cached = 0  # its slot is not read again
                self._ready(seat, logits[i])

    def _due(self) -> list[_Seat]:
        """The rows whose one new token is to be run through the model."""
        return [seat for seat in self.slots if seat.logits is None and seat.leader is None
                and len(seat.tokens) <= self.block_size
                and len(seat.tokens) - seat.cached == 1]

    def _decode(self, due: list[_Seat] | None = None) -> None:
        """One forward for every row whose one new token is due (`due`; default: all such
        rows), slots 0..width - 1, a view of the pool; rows in between that wait write a
        throwaway position."""
        due = self._due() if due is None else due
        if not due:
            return
        width = max(seat.slot for seat in due) + 1
        ids = [[0] for _ in range(width)]
        # a waiting row writes at its next position, which its own forward overwrites later
        positions = [min(seat.cached, self.block_size - 1) for seat in self.slots[:width]]
        for seat in due:
            ids[seat.slot][0] = seat.tokens[-1]
            if seat.job.step == 0:
                self.stats.prompt_tokens_computed += 1
        logits = self._forward(0, positions, ids)
        for seat in due:
            seat.cached += 1
            self._ready(seat, logits[seat.slot])

    def _ready(self, seat: _Seat, logits: Tensor) -> None:
        """`seat` has its scores; the rows waiting for its prompt copy its KV."""
        seat.logits = logits
        if seat.job.step > 0:
            return
        if self.store is not None:  # a prompt just prefilled: later ones may share it
            self.store.add(seat.tokens, *self._kept(seat, seat.cached))
        for other in seat.job.seats:
            if other.leader is seat:
                self._copy(seat, other)
                other.logits, other.leader = logits, None
                self.stats.prompt_tokens_reused += seat.cached

    # --- taking tokens and leaving ------------------------------------------------------------
    def _take(self, ready: list[_Running]) -> None:
        """The next tokens of the `ready` jobs, each drawn as `generate_steps` draws it for
        the job alone, from its own rows' scores and generator; jobs whose processors agree
        and read only each row's scores (`_Running.key`) are processed in one call."""
        together: dict[Hashable, list[_Running]] = {}
        for running in ready:
            together.setdefault(running.key, []).append(running)
        for jobs in together.values():
            try:
                scores = self._scores(jobs)
                tokens = self._sample(jobs, scores)
            except Exception as exc:
                for running in jobs:
                    self._fail(running, exc)
                continue
            values = tokens.tolist()
            first = 0
            for running in jobs:
                rows = slice(first, first + len(running.seats))
                first = rows.stop
                try:
                    self._emit(running, tokens[rows], scores[rows], values[rows])
                except Exception as exc:
                    self._fail(running, exc)

    def _scores(self, jobs: list[_Running]) -> Tensor:
        """The processed scores of `jobs`' rows, stacked in order (an ended row's blank)."""
        rows = [seat.logits if seat.live and seat.logits is not None else self.blank
                for running in jobs for seat in running.seats]
        logits = rows[0][None] if len(rows) == 1 else torch.stack(rows)
        if len(jobs) == 1:
            return jobs[0].processors(jobs[0].seq, logits)
        return jobs[0].processors(logits, logits)  # equal keys: they read no token ids

    def _sample(self, jobs: list[_Running], scores: Tensor) -> Tensor:
        """Tokens from `scores` of `jobs` (all greedy or all sampled, by their key).

        A sampled job draws what `torch.multinomial(probs, 1, generator)` draws, which for
        one sample is the argmax of probs / q, q ~ Exp(1) of probs' shape from the generator
        (ATen's multinomial; tests/serve/test_continuous.py checks the equality): so each
        job consumes its own generator exactly as alone, and the jobs' divisions and argmax
        are one call. An ended row still draws (uniform scores), as it does alone."""
        if jobs[0].job.settings.temperature == 0:
            return scores.argmax(dim=-1)
        probs = scores.softmax(dim=-1)
        if bool(probs.isnan().any()):  # what multinomial refuses: every token excluded
            raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
        noise = [torch.empty(rows, probs.size(-1), dtype=probs.dtype,
                             device=probs.device).exponential_(1, generator=generator)
                 for running in jobs for rows, generator in running.groups]
        return (probs / (noise[0] if len(noise) == 1 else torch.cat(noise))).argmax(dim=-1)

    def _fail(self, running: _Running, exc: Exception) -> None:
        if running in self.running:
            self._drop(running)
        self.listener.failed(running.job, exc)

    def _emit(self, running: _Running, token: Tensor, scores: Tensor,
              values: list[int] | None = None) -> None:
        """The job's next token per row (`token`, drawn from the processed `scores`;
        `values`: the same as a list, when the caller has it): to the listener, then rows
        that ended leave."""
        seats = running.seats
        values = token.tolist() if values is None else values
        if self.eot_id is not None and not all(seat.live for seat in seats):
            gone = [not seat.live for seat in seats]
            token = token.masked_fill(torch.tensor(gone, device=token.device), self.eot_id)
            values = [self.eot_id if dead else value for dead, value in zip(gone, values,
                                                                              strict=True)]
        running.ids.append(token)
        running.step += 1
        logprobs = scores.float().log_softmax(dim=-1) if running.job.scored else None
        ended = self.listener.took(running.job, values, logprobs, running.step)
        for seat, value, end in zip(seats, values, ended, strict=True):
            if not seat.live:
                continue
            seat.logits = None
            if end:
                self._leave(seat, keep=True)
            else:
                seat.tokens.append(value)
        if all(not seat.live for seat in seats) and running in self.running:
            self.running.remove(running)

    def _leave(self, seat: _Seat, keep: bool = False) -> None:
        """Free the row's slot (the last row moves into it); `keep`: leave its KV in the
        prefix store, unless it slid past the context."""
        seat.live = False
        if keep and self.store is not None and len(seat.tokens) <= self.block_size:
            length = min(seat.cached, self.block_size - 1)  # the last may be a throwaway
            if length > 0:
                self.store.add(seat.tokens[:length], *self._kept(seat, length))
        last = self.slots.pop()
        if last is not seat:
            self._relocate(last, seat.slot)
            self.slots[seat.slot] = last

    def _drop(self, running: _Running) -> None:
        for seat in running.seats:
            if seat.live:
                self._leave(seat)
        self.running.remove(running)


def run_on(model: GPT, pool: KVPool, first: int, positions: list[int],
           ids: list[list[int]], keep: int = 0) -> Tensor:
    """`model`'s logits (rows, T, vocab) after `ids` (rows, T), each row written into its
    slot of `pool` (slots first, first + 1, ...) from its own position on; `keep` > 0: of
    the last `keep` positions only."""
    idx = torch.tensor(ids, device=pool.k.device)
    logits, _ = model(idx, kv_cache=pool.view(first, positions, idx.size(1)),
                      logits_to_keep=keep)
    return logits
