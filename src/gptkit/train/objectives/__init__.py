"""What each kind of run optimises (`Objective`), for the one training loop.

    base.py      the interface, the batch-source protocol, the set-up context
    lm.py        language modelling on text, and supervised fine-tuning (data.format=sft)
    distill.py   distillation: a language-modelling objective plus a teacher's distribution
    classify.py  sequence and token classification (gptkit finetune-classify)

The objectives live under train/ and read their data through gptkit.data and gptkit.finetune;
nothing in finetune/ imports the trainer, so there is no import cycle.
"""

from __future__ import annotations

from gptkit.config import RunConfig
from gptkit.train.objectives.base import Batch, BatchSource, Objective, Setup
from gptkit.train.objectives.distill import Distillation
from gptkit.train.objectives.lm import LanguageModelling, SupervisedFineTuning

__all__ = ["Batch", "BatchSource", "Objective", "Setup", "objective_for"]


def objective_for(cfg: RunConfig) -> Objective:
    """The objective of `gptkit train` / `finetune` / `distill` runs, from their settings."""
    student = SupervisedFineTuning() if cfg.data.format == "sft" else LanguageModelling()
    return Distillation(student) if cfg.distill.teacher else student
