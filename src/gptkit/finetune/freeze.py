"""Which parameters learn, and at what learning rate, when adapting a model.

Freezing the embeddings and the lowest blocks keeps general features while the top adapts;
gradual unfreezing (ULMFiT) releases one more block, from the top down, every K steps; and
layer-wise learning-rate decay lets lower blocks move less than higher ones. Parameters
are told apart by their GPT-2 names, so this works on a plain GPT and under peft (LoRA).
"""

from __future__ import annotations

import re

from torch import nn

from gptkit.config import FinetuneConfig

_BLOCK = re.compile(r"(?:^|\.)h\.(\d+)\.")
_EMBEDDING = re.compile(r"(?:^|\.)(wte|wpe)\.")


def depth(name: str, n_layer: int) -> int:
    """0 for the embeddings, i + 1 for block i, n_layer + 1 for the final LayerNorm/head."""
    block = _BLOCK.search(name)
    if block:
        return int(block.group(1)) + 1
    if _EMBEDDING.search(name):
        return 0
    return n_layer + 1


def frozen_blocks(cfg: FinetuneConfig, step: int) -> int:
    """How many of the lowest blocks are frozen at `step`."""
    if cfg.unfreeze_every <= 0:
        return cfg.freeze_layers
    return max(0, cfg.freeze_layers - step // cfg.unfreeze_every)


def is_frozen(name: str, cfg: FinetuneConfig, n_layer: int, step: int) -> bool:
    level = depth(name, n_layer)
    if level == 0:
        return cfg.freeze_embeddings
    return 1 <= level <= frozen_blocks(cfg, step)


def apply_freezing(
    model: nn.Module, cfg: FinetuneConfig, n_layer: int, step: int, *, learnable: set[int]
) -> None:
    """Set `requires_grad` for `step`: parameters in `learnable` (ids) learn unless frozen."""
    for name, param in model.named_parameters():
        param.requires_grad_(
            id(param) in learnable and not is_frozen(name, cfg, n_layer, step)
        )


def ever_learnable(model: nn.Module, cfg: FinetuneConfig, n_layer: int) -> set[int]:
    """Ids of parameters that learn at some step: trainable now and not frozen for good.

    (Under LoRA only the adapters are trainable to begin with.) Gradual unfreezing releases
    every block eventually; the embeddings stay frozen if asked.
    """
    final = step_when_all_unfrozen(cfg)
    return {
        id(p) for name, p in model.named_parameters()
        if p.requires_grad and not is_frozen(name, cfg, n_layer, final)
    }


def step_when_all_unfrozen(cfg: FinetuneConfig) -> int:
    if cfg.unfreeze_every <= 0:
        return 0
    return cfg.freeze_layers * cfg.unfreeze_every


def lr_scale(name: str, cfg: FinetuneConfig, n_layer: int) -> float:
    """Layer-wise LR decay: the head learns at lr, block i at lr * decay ** (n_layer - i),
    the embeddings at lr * decay ** (n_layer + 1)."""
    return float(cfg.layer_lr_decay ** (n_layer + 1 - depth(name, n_layer)))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, each tensor once (tied weights are one)."""
    seen: dict[int, nn.Parameter] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, total
