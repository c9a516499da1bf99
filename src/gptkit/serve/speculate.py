"""Speculative decoding inside the continuous batcher: a draft model proposes K tokens for
every running row, the model checks the K + 1 positions of every row in one forward.

The draft has a `KVPool` of its own, of the same rows (a row's slot is the same in both);
prompts are prefilled into both. Each step, the jobs whose rows are all decoding and have
room (K + 1 more positions within both contexts) speculate: K batched draft forwards (each
row at its own position; the first also catches up on the one or two tokens the draft has
not seen), then one forward of the model over [last token, K drafted] per row, writing
slots x (start + arange(K + 1)). Per job, its logits processors score each position on its
tokens extended with the drafted ones (as `gptkit.generation.speculative` does) and `accept`
decides: the rows of a job advance together by the fewest tokens any of its rows kept, plus
one (`in_step`: exact, and a job of one row advances by its own count, 1 to K + 1); jobs
advance independently. Positions past what was kept are overwritten later: each row keeps
its own length in both pools. Other rows (prefilling, first token, near the context's end,
past it) decode plainly in the same step.

Greedy text is token for token the text without a draft; sampled text follows the model's
distribution but not its random stream (a seeded request's text differs from the one it gets
without a draft). With prefix reuse, the store keeps the draft's KV beside the model's (as far
as the draft's pool holds the row), so a reused prefix is computed by neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from gptkit.generation.speculative import Speculative, accept, in_step, on_vocab
from gptkit.model import GPT
from gptkit.serve.kvpool import KVPool
from gptkit.serve.prefix import PrefixStore
from gptkit.serve.stepper import Listener, Stepper, _Running, _Seat, run_on

if TYPE_CHECKING:
    from gptkit.serve.jobs import Stats


class SpeculativeStepper(Stepper):
    """A `Stepper` whose decoding rows are drafted by `draft.draft`, `draft.tokens` at a
    time; `Stats.draft_tokens` and `Stats.accepted_tokens` count what it proposed and what
    the model kept (each row's own count)."""

    def __init__(self, model: GPT, rows: int, draft: Speculative, *, eot_id: int | None,
                 prefill_chunk: int, stats: Stats, listener: Listener,
                 store: PrefixStore | None = None) -> None:
        super().__init__(model, rows, eot_id=eot_id, prefill_chunk=prefill_chunk, stats=stats,
                         listener=listener, store=store)
        self.draft = draft.draft
        self.k = draft.tokens
        self.draft_pool = KVPool(self.draft, rows)
        self.draft_block = self.draft.config.block_size
        self.vocab = model.lm_head.out_features

    def pool_info(self) -> dict[str, int]:
        return super().pool_info() | {
            "draft_positions_per_row": self.draft_pool.positions,
            "draft_bytes": self.draft_pool.bytes, "draft_tokens": self.k}

    def step(self) -> None:
        was_training = self.draft.training
        if was_training:
            self.draft.eval()
        try:
            super().step()
        finally:
            if was_training:
                self.draft.train()

    # --- the draft's pool follows the model's -------------------------------------------------
    def _prefilled(self, seat: _Seat, start: int, ids: list[int]) -> None:
        if seat.drafted == start and start + len(ids) <= self.draft_block:
            with torch.no_grad():
                run_on(self.draft, self.draft_pool, seat.slot, [start], [ids], keep=1)
            seat.drafted = start + len(ids)

    def _kept(self, seat: _Seat, length: int) -> tuple[Tensor, ...]:
        length = min(length, seat.drafted)  # positions both pools hold
        return (*self.pool.read(seat.slot, length), *self.draft_pool.read(seat.slot, length))

    def _restore(self, seat: _Seat, kv: tuple[Tensor, ...]) -> None:
        k, v, draft_k, draft_v = kv
        self.pool.write(seat.slot, k, v)
        self.draft_pool.write(seat.slot, draft_k, draft_v)
        seat.cached = seat.drafted = k.size(2)

    def _copy(self, source: _Seat, target: _Seat) -> None:
        super()._copy(source, target)
        self.draft_pool.move(source.slot, target.slot, source.drafted)
        target.drafted = source.drafted

    def _relocate(self, seat: _Seat, slot: int) -> None:
        self.draft_pool.move(seat.slot, slot, seat.drafted)
        super()._relocate(seat, slot)

    # --- deciding who speculates --------------------------------------------------------------
    def _fits(self, seat: _Seat) -> bool:
        """Room for K + 1 positions in the model's context and K in the draft's, and a draft
        pool at most two tokens behind (what a round leaves)."""
        n = len(seat.tokens)
        return (n + self.k <= self.block_size and n + self.k - 1 <= self.draft_block
                and n - seat.drafted <= 2)

    def _decode(self, due: list[_Seat] | None = None) -> None:
        due = self._due() if due is None else due
        ready = set(due)
        jobs = [running for running in self.running
                if running.step >= 1 and running.job.max_tokens - running.step >= 2
                and all(seat in ready and self._fits(seat)
                        for seat in running.seats if seat.live)]
        chosen = {seat for running in jobs for seat in running.seats if seat.live}
        super()._decode([seat for seat in due if seat not in chosen])
        if jobs:
            self._speculate(jobs)

    # --- a round ------------------------------------------------------------------------------
    def _rows(self, running: _Running, logits: dict[_Seat, Tensor]) -> Tensor:
        """The job's rows' logits (rows, ..., vocab), an ended row's blank."""
        first = next(iter(logits.values()))
        return torch.stack([logits[seat] if seat in logits
                            else self.blank.expand_as(first) for seat in running.seats])

    def _propose(self, jobs: list[_Running], seats: list[_Seat]
                 ) -> tuple[dict[_Running, Tensor], dict[_Running, list[Tensor]]]:
        """K batched draft forwards: each job's rows with the drafted tokens appended, and
        the draft's processed scores of each drafted token."""
        k, width = self.k, max(seat.slot for seat in seats) + 1
        grown = {running: running.seq for running in jobs}
        q_scores: dict[_Running, list[Tensor]] = {running: [] for running in jobs}
        extra: dict[_Seat, list[int]] = {seat: [] for seat in seats}
        for j in range(k):
            tokens = max(len(s.tokens) - s.drafted for s in seats) if j == 0 else 1
            ids = [[0] * tokens for _ in range(width)]
            # rows that wait write throwaway positions, from their own length on
            positions = [min(s.drafted, self.draft_block - 1) for s in self.slots[:width]]
            at: dict[_Seat, int] = {}
            for seat in seats:
                seq = seat.tokens + extra[seat]
                start = max(0, len(seq) - tokens)
                row = seq[start : start + tokens]
                ids[seat.slot][: len(row)] = row
                positions[seat.slot] = start
                at[seat] = len(seq) - 1 - start
            logits = run_on(self.draft, self.draft_pool, 0, positions, ids)
            for seat in seats:
                seat.drafted = len(seat.tokens) + j
            for running in jobs:
                own = {seat: on_vocab(logits[seat.slot, at[seat]][None].float(),
                                      self.vocab)[0]
                       for seat in running.seats if seat in at}
                scores = running.processors(grown[running], self._rows(running, own))
                token = self._sample([running], scores)
                q_scores[running].append(scores)
                grown[running] = torch.cat([grown[running], token[:, None]], dim=1)
                for seat in running.seats:
                    if seat in extra:
                        extra[seat].append(int(token[seat.index]))
        return grown, q_scores

    def _speculate(self, jobs: list[_Running]) -> None:
        """Draft, check in one forward, accept per job, then hand each job its tokens."""
        k = self.k
        seats = [seat for running in jobs for seat in running.seats if seat.live]
        grown, q_scores = self._propose(jobs, seats)
        width = max(seat.slot for seat in seats) + 1
        ids = [[0] * (k + 1) for _ in range(width)]
        positions = [seat.cached for seat in self.slots[:width]]
        for seat in seats:
            ids[seat.slot] = [seat.tokens[-1], *grown[seat.job][seat.index, -k:].tolist()]
        logits = run_on(self.model, self.pool, 0, positions, ids).float()
        # every job's outcome first: handing out tokens may move rows between slots
        outcomes: list[tuple[_Running, Tensor, Tensor]] = []
        for running in jobs:
            own = {seat: logits[seat.slot] for seat in running.seats if seat.live}
            rows = self._rows(running, own)
            width0 = running.seq.size(1)
            seq = grown[running]
            p = torch.stack([running.processors(seq[:, : width0 + j], rows[:, j])
                             for j in range(k + 1)], dim=1)
            proposed = seq[:, width0:]
            kept, token = accept(p, torch.stack(q_scores[running], dim=1), proposed,
                                 running.job.settings.temperature == 0, running.groups)
            live = torch.tensor([seat.live for seat in running.seats], device=kept.device)
            least = int(kept[live].min())
            self.stats.draft_tokens += k * int(live.sum())
            self.stats.accepted_tokens += int(kept[live].sum())
            for seat in running.seats:
                if seat.live:  # KV kept: the last token and the `least` drafted after it
                    seat.cached = len(seat.tokens) + least
                    seat.drafted = min(seat.drafted, seat.cached)
            outcomes.append((running, in_step(kept, token, proposed, least), p))
        for running, new, p in outcomes:
            try:
                for j in range(new.size(1)):
                    self._emit(running, new[:, j], p[:, j])
                    if running not in self.running:
                        break
            except Exception as exc:
                if running in self.running:
                    self._drop(running)
                self.listener.failed(running.job, exc)
