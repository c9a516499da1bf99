"""Classification heads on the GPT: one label per text, or one tag per token.

Like Hugging Face's `GPT2ForSequenceClassification` / `GPT2ForTokenClassification`, the
model is the GPT's `transformer` (embeddings, blocks, final LayerNorm; no LM head) plus a
linear layer `score`, so its weights are `transformer.*` + `score.*` and a backbone from any
gptkit run drops in unchanged. Batches are right-padded, with `attention_mask` 1 on real
tokens: padding is never attended to and never pooled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from gptkit.config import ModelConfig
from gptkit.config.choices import ClassifyTask, Pooling, names, one_of
from gptkit.errors import GptkitError
from gptkit.model import GPT, IGNORE, Transformer

TASKS = names(ClassifyTask)


class GPTClassifier(nn.Module):
    """Hidden states of a GPT -> label logits, per text (`sequence`) or per token (`token`)."""

    def __init__(
        self, config: ModelConfig, num_labels: int, task: str = "sequence", pooling: str = "last"
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise GptkitError(f"classify.task must be {one_of(ClassifyTask)} (got {task!r})")
        if pooling not in POOLERS:
            raise GptkitError(f"classify.pooling must be {one_of(Pooling)} (got {pooling!r})")
        if config.vocab_size is None:
            raise GptkitError("model.vocab_size is None; build with GPTClassifier.from_gpt")
        if num_labels < 2:
            raise GptkitError(f"a classifier needs at least 2 labels, got {num_labels}")
        self.config = config
        self.task = task
        self.pooling = pooling
        self.transformer = Transformer(config, config.vocab_size)
        self.dropout = nn.Dropout(config.dropout)
        self.score = nn.Linear(config.n_embd, num_labels)
        nn.init.normal_(self.score.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.score.bias)

    @classmethod
    def from_gpt(
        cls, gpt: GPT, num_labels: int, task: str = "sequence", pooling: str = "last"
    ) -> GPTClassifier:
        """A fresh head on `gpt`'s transformer (shared, not copied: `gpt` is the backbone)."""
        model = cls(gpt.config, num_labels, task, pooling)
        model.transformer = gpt.transformer
        return model

    @property
    def num_labels(self) -> int:
        return self.score.out_features

    def forward(self, idx: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits (B, num_labels) for `sequence`, (B, T, num_labels) for `token`."""
        if idx.size(1) > self.config.block_size:
            raise GptkitError(
                f"sequence of {idx.size(1)} tokens exceeds model.block_size "
                f"({self.config.block_size}); truncate the input"
            )
        hidden = self.transformer(idx, attention_mask=attention_mask)  # (B, T, C), after ln_f
        if self.task == "token":
            return self.score(self.dropout(hidden))
        return self.score(self.dropout(pool(hidden, attention_mask, self.pooling)))


def _last_token(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """The last real token's state: under causal attention it has seen the whole text."""
    last = attention_mask.long().sum(1).clamp(min=1) - 1
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


def _mean(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    mask = attention_mask.to(hidden.dtype)
    return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)


# classify.pooling -> (B, T, C) hidden states and (B, T) mask to (B, C); one per Pooling
POOLERS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"last": _last_token, "mean": _mean}


def pool(hidden: Tensor, attention_mask: Tensor, pooling: str) -> Tensor:
    """(B, T, C) -> (B, C) by `pooling`, never over padding."""
    return POOLERS[pooling](hidden, attention_mask)


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int = 0, device: torch.device | str = "cpu",
    targets: Sequence[Sequence[int]] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Right-padded ids (B, T), attention mask (B, T), and targets padded with -100."""
    width = max(len(s) for s in sequences)
    idx = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        idx[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    padded_targets = None
    if targets is not None:
        padded_targets = torch.full((len(sequences), width), IGNORE, dtype=torch.long)
        for row, tags in enumerate(targets):
            padded_targets[row, : len(tags)] = torch.tensor(tags, dtype=torch.long)
        padded_targets = padded_targets.to(device)
    return idx.to(device), mask.to(device), padded_targets
