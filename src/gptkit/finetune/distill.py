"""Knowledge distillation (Hinton et al. 2015): a student learns the teacher's distribution.

loss = alpha * KL(teacher || student, both softened by temperature T) * T^2
       + (1 - alpha) * cross-entropy with the data.
The T^2 keeps the soft term's gradients on the scale of the hard one's as T changes.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from gptkit.errors import GptkitError
from gptkit.model import GPT, IGNORE
from gptkit.run import load_run
from gptkit.tokenizers import Tokenizer


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    *,
    alpha: float,
    temperature: float,
    vocab_size: int,
) -> Tensor:
    """Mean over target positions (targets != -100), on the tokenizer's `vocab_size` ids
    (padding rows of either model's embedding table are left out)."""
    student = student_logits[..., :vocab_size].float().flatten(0, 1)
    teacher = teacher_logits[..., :vocab_size].float().flatten(0, 1)
    flat = targets.flatten()
    keep = flat != IGNORE
    hard = F.cross_entropy(student, flat, ignore_index=IGNORE)
    log_s = F.log_softmax(student[keep] / temperature, dim=-1)
    log_t = F.log_softmax(teacher[keep] / temperature, dim=-1)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")
    return alpha * kl * temperature**2 + (1 - alpha) * hard


def load_teacher(path: str | Path, tokenizer: Tokenizer, device: torch.device,
                 block_size: int) -> GPT:
    """The teacher's best weights, frozen and in eval mode, after checking it can teach."""
    teacher = load_run(path, device=device)
    if teacher.tokenizer.sha256() != tokenizer.sha256():
        raise GptkitError(
            f"distill.teacher {path} has a different tokenizer ({teacher.tokenizer.kind}, "
            f"{teacher.tokenizer.vocab_size} tokens) than the student ({tokenizer.kind}, "
            f"{tokenizer.vocab_size} tokens); teacher and student must share one: drop the "
            "student's own tokenizer settings or train.init_from so it takes the teacher's"
        )
    if teacher.model.config.block_size < block_size:
        raise GptkitError(
            f"the teacher's block_size ({teacher.model.config.block_size}) is smaller than the "
            f"student's model.block_size ({block_size}); set model.block_size <= "
            f"{teacher.model.config.block_size}"
        )
    for p in teacher.model.parameters():
        p.requires_grad_(False)
    return teacher.model.eval()
