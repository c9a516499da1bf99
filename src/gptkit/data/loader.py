"""Training batches as a pure function of (seed, step): random windows of a token stream
(language modelling), or examples in seeded epochs (fine-tuning, classification).

A step's batch is a pure function of `(seed, step)`, so resuming at step N reproduces exactly
the batches an uninterrupted run would have seen (LESSONS.md #12) without replaying the
earlier steps. All processes draw the same global set of window starts and each takes its own
chunks of it, so the windows of a step do not depend on how they are spread over processes and
micro-batches: one process with 2 accumulation steps sees exactly what 2 processes with 1 see.
Window starts are positions in the whole split, so a sharded split (`TokenShards`) gives the
same batches as the same ids in one file; a window may run across a shard boundary.
With sequence-length warmup the windows of a step are its first `window_length(step)` ids from
the same starts: the length is a pure function of the step too, so resume stays exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch import Tensor

from gptkit.data.shards import Tokens, read_windows
from gptkit.errors import GptkitError

T = TypeVar("T")
# Warmed-up window lengths are multiples of this (DeepSpeed's seqlen curriculum recommends 8:
# shapes the matrix kernels handle well, and fewer distinct shapes for torch.compile).
WINDOW_MULTIPLE = 8


def window_length(step: int, block_size: int, warmup_steps: int, start: int) -> int:
    """The window length of optimizer step `step` under sequence-length warmup (Li et al.
    2022, "The Stability-Efficiency Dilemma"; DeepSpeed's `fixed_linear` seqlen curriculum):
    `start` tokens at step 0, growing linearly to `block_size` at step `warmup_steps`, rounded
    down to a multiple of WINDOW_MULTIPLE but never below `start`; `block_size` from then on,
    and always when `warmup_steps` is 0. Integer arithmetic: a pure function of the step."""
    if step >= warmup_steps:
        return block_size
    grown = start + (block_size - start) * step // warmup_steps
    return min(block_size, max(start, grown - grown % WINDOW_MULTIPLE))


@dataclass(frozen=True)
class EpochSize:
    """One pass over the training split, in what a batch source draws: `per_epoch` units
    (tokens, examples, packed rows) of which one optimizer step takes `per_step`, over all
    processes, so that an epoch is the same data at any world size."""

    per_epoch: int
    per_step: int
    unit: str  # plural: "tokens", "examples", "rows"

    def steps(self, epochs: float) -> int:
        """Optimizer steps of `epochs` passes: ceil(epochs x per_epoch / per_step)."""
        return math.ceil(epochs * self.per_epoch / self.per_step)

    def explain(self, epochs: float) -> str:
        """The conversion, as printed: "2 epochs = 1,003,855 train tokens x 2 / 12,288
        tokens per step = 164 steps"."""
        return (f"{epochs:g} epoch{'' if epochs == 1 else 's'} = {self.per_epoch:,} train "
                f"{self.unit} x {epochs:g} / {self.per_step:,} {self.unit} per step = "
                f"{self.steps(epochs):,} steps")


class RandomWindows:
    """Training batches: random windows, a pure function of (seed, step) so resume is exact."""

    def __init__(
        self,
        tokens: Tokens,
        block_size: int,
        micro_batch_size: int,
        accum_steps: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        split: str = "train",
        warmup_steps: int = 0,
        warmup_start: int = WINDOW_MULTIPLE,
    ) -> None:
        if tokens.ndim != 1:
            raise GptkitError(f"tokens of split {split!r} must be 1-D, got shape {tokens.shape}")
        if len(tokens) < block_size + 1:
            raise GptkitError(
                f"split {split!r} has {len(tokens)} tokens, fewer than block_size + 1 = "
                f"{block_size + 1}; use more text or a smaller model.block_size"
            )
        for name, value in (
            ("block_size", block_size), ("micro_batch_size", micro_batch_size),
            ("accum_steps", accum_steps), ("world_size", world_size),
        ):
            if value < 1:
                raise GptkitError(f"{name} must be >= 1 (got {value})")
        if not 0 <= rank < world_size:
            raise GptkitError(f"rank must be in [0, {world_size}) (got {rank})")
        if seed < 0:
            raise GptkitError(f"train.seed must be >= 0 (got {seed})")
        if warmup_steps < 0 or (warmup_steps and not 1 <= warmup_start < block_size):
            raise GptkitError(
                f"sequence-length warmup needs steps >= 0 and a start in [1, block_size = "
                f"{block_size}) (got {warmup_steps} steps from {warmup_start})")
        self.warmup_steps = warmup_steps
        self.warmup_start = warmup_start
        self.tokens = tokens
        self.block_size = block_size
        self.micro_batch_size = micro_batch_size
        self.accum_steps = accum_steps
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.split = split
        self.position = 0  # the next step to draw; saved so a resumed run knows where it was

    def window_length(self, step: int) -> int:
        """The inputs per window at `step`: block_size, or less during sequence-length warmup."""
        return window_length(step, self.block_size, self.warmup_steps, self.warmup_start)

    def epoch_size(self) -> EpochSize:
        """An epoch is the split's tokens; a step's windows hold block_size inputs each
        (steps of a sequence-length warmup hold fewer: epochs count full-length steps)."""
        per_step = self.micro_batch_size * self.block_size * self.accum_steps * self.world_size
        return EpochSize(len(self.tokens), per_step, "tokens")

    def global_starts(self, step: int) -> np.ndarray:
        """All window starts of one optimizer step, over every process and micro-batch."""
        count = self.micro_batch_size * self.accum_steps * self.world_size
        rng = np.random.default_rng([self.seed, step])
        # high is exclusive: the last window start is len - block_size - 1, whose y ends on
        # the last token
        return rng.integers(0, len(self.tokens) - self.block_size, count, dtype=np.int64)

    def step_batches(self, step: int) -> list[tuple[Tensor, Tensor]]:
        """This process's `accum_steps` (x, y) int64 CPU pairs of (micro_batch, block) for `step`.

        Micro-batch m of rank r is chunk `m * world_size + r` of the step's global starts.
        During sequence-length warmup the windows are the first `window_length(step)` inputs
        from the same starts (as many sequences, fewer tokens).
        """
        if step < 0:
            raise GptkitError(f"step must be >= 0 (got {step})")
        starts = self.global_starts(step).reshape(-1, self.micro_batch_size)
        length = self.window_length(step)
        batches = []
        for m in range(self.accum_steps):
            chunk = starts[m * self.world_size + self.rank]
            # one gather reads each window once (x is its first `length` ids, y its last)
            windows = read_windows(self.tokens, chunk, length + 1)
            x = torch.from_numpy(np.ascontiguousarray(windows[:, :-1]))
            y = torch.from_numpy(np.ascontiguousarray(windows[:, 1:]))
            batches.append((x, y))
        self.position = step + 1
        return batches

    def state_dict(self) -> dict[str, Any]:
        """What resume needs: the seed and the next step (JSON-serialisable)."""
        return {"seed": self.seed, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        try:
            seed, position = int(state["seed"]), int(state["position"])
        except (KeyError, TypeError, ValueError) as exc:
            raise GptkitError(
                f"data-loader state {state!r} needs integer 'seed' and 'position'; "
                "the checkpoint's state.json is damaged"
            ) from exc
        if seed < 0 or position < 0:
            raise GptkitError(f"data-loader state {state!r} has a negative seed or position")
        self.seed = seed
        self.position = position


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch `epoch` visits `n` examples: a permutation seeded by
    (seed, epoch), so any epoch is drawn without drawing the ones before it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class SeededEpochs(Generic[T]):
    """An endless sequence of items, epoch after epoch, cut into optimizer steps.

    `items_of(seed, epoch)` lists one epoch's items (e.g. examples in `epoch_order`, or rows packed
    from them, whose number may change from epoch to epoch); step s takes the next
    `micro_batch_size * accum_steps * world_size` items of the sequence, and micro-batch m of
    rank r is chunk `m * world_size + r` of them, as `RandomWindows` splits its windows. The
    items of a step are a pure function of the step, so resume is exact. The state is the
    same as `RandomWindows`': the seed and the next step.
    """

    def __init__(self, items_of: Callable[[int, int], list[T]], *, seed: int, micro_batch_size: int,
                 accum_steps: int = 1, rank: int = 0, world_size: int = 1) -> None:
        self.items_of = items_of
        self.seed = seed
        self.micro_batch_size = micro_batch_size
        self.accum_steps = accum_steps
        self.rank = rank
        self.world_size = world_size
        self.position = 0
        self._cache: dict[int, list[T]] = {}  # the last two epochs drawn

    def _epoch(self, epoch: int) -> list[T]:
        if epoch not in self._cache:
            items = self.items_of(self.seed, epoch)
            if not items:
                raise GptkitError("the training split has no examples; add records to "
                                  "data.source")
            self._cache = {epoch: items, **{e: v for e, v in self._cache.items()
                                            if e == epoch - 1}}
        return self._cache[epoch]

    def epoch_size(self, unit: str) -> EpochSize:
        """The items of the first epoch (packed rows may vary a little between epochs)."""
        per_step = self.micro_batch_size * self.accum_steps * self.world_size
        return EpochSize(len(self._epoch(0)), per_step, unit)

    def step_items(self, step: int) -> list[list[T]]:
        """This process's `accum_steps` micro-batches of items for optimizer step `step`."""
        per_step = self.micro_batch_size * self.accum_steps * self.world_size
        epoch, offset = 0, step * per_step
        while offset >= len(self._epoch(epoch)):  # the epoch holding this step's first item
            offset -= len(self._epoch(epoch))
            epoch += 1
        picked: list[T] = []
        while len(picked) < per_step:
            picked += self._epoch(epoch)[offset : offset + per_step - len(picked)]
            epoch, offset = epoch + 1, 0
        chunks = [picked[i : i + self.micro_batch_size]
                  for i in range(0, per_step, self.micro_batch_size)]
        self.position = step + 1
        return [chunks[m * self.world_size + self.rank] for m in range(self.accum_steps)]

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The saved seed and position; epochs are drawn again from the seed."""
        self.seed, self.position = int(state["seed"]), int(state["position"])
        self._cache = {}
