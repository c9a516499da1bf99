"""Distillation: a language-modelling objective whose loss also follows a teacher's
distribution (`gptkit.finetune.distill`). Data, batches and evaluation are the wrapped
objective's (text or SFT records); only the loss and the tokenizer's origin differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gptkit.config import DataConfig, RunConfig
from gptkit.finetune.distill import distillation_loss, load_teacher
from gptkit.model import GPT
from gptkit.tokenizers import Tokenizer
from gptkit.train.distributed import DistEnv
from gptkit.train.objectives.base import BatchSource, Objective, Setup
from gptkit.train.objectives.lm import LanguageModelling


class Distillation(Objective):
    """`student` (LanguageModelling or SupervisedFineTuning) taught by distill.teacher."""

    def __init__(self, student: LanguageModelling) -> None:
        self.student = student
        self.teacher: GPT | None = None
        self.alpha, self.temperature, self.vocab_size = 0.5, 2.0, 0

    def data_config(self, cfg: RunConfig, setup: Setup) -> DataConfig:
        return self.student.data_config(cfg, setup)

    def tokenizer_donor(self, cfg: RunConfig) -> Path | None:
        """A distilled student reads the teacher's tokenizer (and records its settings)."""
        return Path(str(cfg.distill.teacher))

    def prepare(self, cfg: RunConfig, tokenizer: Tokenizer | None, setup: Setup) -> Tokenizer:
        return self.student.prepare(cfg, tokenizer, setup)

    def attach(self, cfg: RunConfig, tokenizer: Tokenizer, env: DistEnv) -> None:
        """The teacher, frozen, after checking it shares the student's tokenizer."""
        self.teacher = load_teacher(str(cfg.distill.teacher), tokenizer, env.device,
                                    cfg.model.block_size)
        d = cfg.distill
        self.alpha, self.temperature, self.vocab_size = d.alpha, d.temperature, \
            tokenizer.vocab_size

    def batches(self, cfg: RunConfig, env: DistEnv, accum_steps: int) -> BatchSource:
        return self.student.batches(cfg, env, accum_steps)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, extra: dict[str, Tensor]) -> Tensor:
        """Mean of alpha x KL to the teacher x T^2 + (1 - alpha) x cross-entropy."""
        assert self.teacher is not None
        logits, _ = model(x, y, **extra)
        with torch.no_grad():
            teacher_logits, _ = self.teacher(x, **extra)
        return distillation_loss(logits, teacher_logits, y, alpha=self.alpha,
                                 temperature=self.temperature, vocab_size=self.vocab_size)

    def evaluate(self, model: nn.Module, cfg: RunConfig, precision: str,
                 env: DistEnv) -> dict[str, Any]:
        return self.student.evaluate(model, cfg, precision, env)

    def describe(self, record: dict[str, Any]) -> str:
        return self.student.describe(record)

    def data_meta(self) -> dict[str, Any]:
        return self.student.data_meta()

    def sample(self, model: nn.Module, cfg: RunConfig, tokenizer: Tokenizer,
               precision: str, env: DistEnv) -> str:
        return self.student.sample(model, cfg, tokenizer, precision, env)

    def best_files(self, cfg: RunConfig, record: dict[str, Any], info: dict[str, Any],
                   environment: dict[str, Any]) -> dict[str, str]:
        return self.student.best_files(cfg, record, info, environment)
