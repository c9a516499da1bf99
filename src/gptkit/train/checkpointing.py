"""The training loop's checkpoints: what resume needs, written as the run's parallelism needs.

A step checkpoint holds the weights, the optimizer and the loop's own state (step, tokens,
best-keeping, the data loader's position, every process's random generators); one process
writes it in one file (one process, DDP), or every process writes its shards (FSDP). best/
holds the weights of the best evaluation so far. The files and their checks are
`gptkit.train.checkpoint` and `gptkit.train.sharded`; this module only decides who writes
what, when.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer
from tqdm import tqdm

from gptkit.train import checkpoint, distributed, sharded
from gptkit.train.distributed import DistEnv


def _is_score(value: Any) -> bool:
    return value is None or (isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def resume_problem(state: dict[str, Any], step: int) -> str | None:
    """What is wrong with the loop's keys in a checkpoint's state.json, or None:
    `checkpoint.resume_state_problem`, and `best_score` (a list of numbers or null, written
    since every kind of run keeps its best by its own score; older checkpoints lack it)."""
    problem = checkpoint.resume_state_problem(state, step)
    if problem is None and "best_score" in state and not _is_score(state["best_score"]):
        problem = (f"'best_score' must be a list of numbers or null (got "
                   f"{json.dumps(state['best_score'])[:40]})")
    return problem


class Checkpointer:
    """Saves and restores one run's checkpoints and its best/ folder."""

    def __init__(self, run_dir: Path, env: DistEnv, strategy: str, keep: int) -> None:
        self.run_dir, self.env, self.strategy, self.keep = run_dir, env, strategy, keep
        self.saved_step: int | None = None  # the newest checkpoint: where a diverged run resumes

    def save(self, step: int, model: nn.Module, optimizer: Optimizer,
             state: dict[str, Any]) -> None:
        """Checkpoint `step` with the loop's `state` (rank 0's) and every rank's generators;
        every process calls it."""
        rngs = distributed.all_gather_objects(checkpoint.rng_state(), self.env)
        full = {**state, "rng": rngs, "world_size": self.env.world_size}
        if self.strategy == "fsdp" or self.env.is_main:  # FSDP: every rank writes its shards
            checkpoint.save_checkpoint(
                self.run_dir, step, model, optimizer, full, keep=self.keep,
                sharded_over=self.env if self.strategy == "fsdp" else None)
        distributed.barrier(self.env)
        self.saved_step = step

    def restore(self, model: nn.Module, optimizer: Optimizer) -> tuple[Path, dict[str, Any]]:
        """Weights, optimizer state and this process's generators from the newest checkpoint
        that verifies; the loop's state as saved."""
        path, warnings = checkpoint.latest_valid_checkpoint(self.run_dir, resume_problem)
        for warning in warnings:
            if self.env.is_main:
                tqdm.write(f"warning: {warning}", file=sys.stderr)
        state = checkpoint.load_checkpoint(path, model, optimizer)
        rng = state["rng"]
        checkpoint.set_rng_state(rng[self.env.rank] if self.env.rank < len(rng) else rng[0])
        self.saved_step = int(state["step"])
        return path, state

    def save_best(self, model: nn.Module, info: dict[str, Any],
                  extra: Callable[[Path], None] | None = None,
                  to_save: Callable[[nn.Module], nn.Module] | None = None) -> None:
        """best/ = `model`'s weights (`to_save(model)`'s, e.g. LoRA merged), `info` and what
        `extra(folder)` writes. A sharded model is gathered by every rank, written by rank 0."""
        state: dict[str, Tensor] | None = None
        if self.strategy == "fsdp":
            state = sharded.full_state_dict(model)
        if not self.env.is_main:
            return
        weights = model if to_save is None else to_save(model)
        checkpoint.save_best(self.run_dir, weights, info, extra=extra, state=state)
