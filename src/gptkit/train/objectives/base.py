"""What one kind of training optimises, as the one small interface the training loop calls.

`Trainer.fit` (gptkit.train.trainer) is the same loop for every run: schedule, accumulation,
parallelism, precision, evaluation at intervals, best-keeping, early stopping, checkpoints,
resume and logging. What differs between language modelling, supervised fine-tuning,
distillation and classification is an `Objective` (the part torchtitan's TrainSpec plays):
its data and tokenizer, the model it trains, the source of its batches, its loss, its
evaluation and which evaluation counts as best, and the files it leaves in the run directory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import tokenizers
from torch import Tensor, nn
from tqdm import tqdm

from gptkit.config import DataConfig, RunConfig
from gptkit.config.usage import run_kinds
from gptkit.context import context_state
from gptkit.data.loader import EpochSize
from gptkit.model import GPT, IGNORE
from gptkit.run import Run
from gptkit.tokenizers import Tokenizer
from gptkit.train import distributed
from gptkit.train.distributed import DistEnv

# (x, y) or (x, y, more keyword arguments of the model: attention mask, positions)
Batch = tuple[Tensor, Tensor] | tuple[Tensor, Tensor, dict[str, Tensor]]


class BatchSource(Protocol):
    """Training batches as a pure function of (seed, step), so that resume is exact."""

    def step_batches(self, step: int) -> Sequence[Batch]:
        """This process's micro-batches of optimizer step `step` (CPU tensors)."""
        ...

    def epoch_size(self) -> EpochSize:
        """How many steps an epoch of the training split takes (train.epochs)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


@dataclass(frozen=True)
class Setup:
    """What an objective may read while it prepares its data."""

    env: DistEnv
    run_dir: Path
    data_dir: str | Path | None
    resume: bool
    progress: bool

    def say(self, message: str) -> None:
        """A line for the user, from the main process only."""
        if self.env.is_main:
            tqdm.write(message)


class Objective(ABC):
    """One kind of training. Subclasses set the class attributes and implement the methods."""

    command = "train"  # the command that resumes such a run (named in messages)
    loss_key = "val_loss"  # the held-out loss in its evaluation records
    finite_keys: tuple[str, ...] = ("val_loss", "train_loss")  # a NaN among them ends the run
    samples = True  # writes a sample of text at each evaluation (samples.txt)
    outputs: tuple[str, ...] = ()  # files of its own in the run directory

    def kinds(self, cfg: RunConfig) -> set[str]:
        """Its kinds of run (config.usage.RUN_KINDS): the settings it reads."""
        return run_kinds(cfg)

    def data_config(self, cfg: RunConfig, setup: Setup) -> DataConfig:
        """`cfg.data` with what this objective settles before reading data (a protocol)."""
        return cfg.data

    def tokenizer_donor(self, cfg: RunConfig) -> Path | None:
        """Another run whose tokenizer this one must use (a teacher), if any."""
        return None

    @abstractmethod
    def prepare(self, cfg: RunConfig, tokenizer: Tokenizer | None, setup: Setup) -> Tokenizer:
        """Read and encode the data; build a tokenizer from it when `tokenizer` is None."""

    def build_model(self, cfg: RunConfig, init: Run | None) -> tuple[nn.Module, GPT]:
        """(the module trained, the GPT inside it); `init`'s weights when starting from a run.
        `cfg` is resolved: model.vocab_size is set."""
        gpt = GPT.from_config(cfg.model, int(cfg.model.vocab_size or 0))
        if init is not None:  # its context cropped or extended to cfg's (gptkit.context)
            gpt.load_state_dict(context_state(init.model, gpt.config))
        return gpt, gpt

    def attach(self, cfg: RunConfig, tokenizer: Tokenizer, env: DistEnv) -> None:  # noqa: B027
        """Load what the loss needs besides the model (a teacher), once the data is read."""

    @abstractmethod
    def batches(self, cfg: RunConfig, env: DistEnv, accum_steps: int) -> BatchSource:
        """The training batches."""

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, extra: dict[str, Tensor]) -> Tensor:
        """Mean loss over the targets (y != IGNORE) of one micro-batch."""
        _, loss = model(x, y, **extra)
        return loss

    @staticmethod
    def targets(y: Tensor) -> int:
        """How many targets a micro-batch has: its share of the step's loss."""
        return int((y != IGNORE).sum())

    @abstractmethod
    def evaluate(self, model: nn.Module, cfg: RunConfig, precision: str,
                 env: DistEnv) -> dict[str, Any]:
        """Held-out numbers of `model` (every process calls it; all return the same)."""

    def score(self, record: dict[str, Any]) -> tuple[float, ...]:
        """Higher is better: which evaluation's weights are kept in best/."""
        return (-float(record[self.loss_key]),)

    @abstractmethod
    def describe(self, record: dict[str, Any]) -> str:
        """The evaluation's line for the user."""

    @abstractmethod
    def data_meta(self) -> dict[str, Any]:
        """data.json: what the run was trained on."""

    def sample(self, model: nn.Module, cfg: RunConfig, tokenizer: Tokenizer,
               precision: str, env: DistEnv) -> str:
        """A continuation of sample.prompt (objectives with `samples` only)."""
        raise NotImplementedError

    def run_files(self) -> dict[str, str]:
        """Text files (name -> content) of its own, written beside config.yaml at the start."""
        return {}

    def best_files(self, cfg: RunConfig, record: dict[str, Any], info: dict[str, Any],
                   environment: dict[str, Any]) -> dict[str, str]:
        """Text files (name -> content) to keep in best/ beside the weights."""
        return {}

    def finish(self, run_dir: Path) -> None:  # noqa: B027
        """After the last step, on the main process: publish what the run leaves."""


def same_tokenizer_everywhere(tokenizer: Tokenizer, env: DistEnv) -> Tokenizer:
    """Rank 0's tokenizer on every process, so that a tokenizer each trained on its own (BPE
    over the same texts) can never give the processes different ids or vocabularies."""
    if not env.enabled:
        return tokenizer
    text = distributed.broadcast_object(tokenizer.backend.to_str(), env)
    return Tokenizer(tokenizers.Tokenizer.from_str(text))

