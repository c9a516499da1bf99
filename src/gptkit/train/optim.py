"""Optimizers and their parameter groups (decay on matrices only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from gptkit.config import TrainConfig
from gptkit.errors import GptkitError

OPTIMIZERS = ("adamw", "adam", "sgd", "rmsprop", "adagrad")


def param_groups(
    model: nn.Module, weight_decay: float, lr_scale: Callable[[str], float] | None = None
) -> list[dict[str, Any]]:
    """Two groups: weight decay on the weight matrices of nn.Linear layers, none elsewhere.

    Biases, LayerNorm parameters and embeddings are not decayed: they are not the matrices
    whose growth weight decay is meant to hold back. (nanoGPT also decays its embeddings; on
    the default recipe that made no difference beyond seed noise.) A tied parameter
    (lm_head.weight is wte.weight) counts as an embedding and is listed once, under its
    first name. Frozen parameters are
    left out. Each group carries `param_names` (PyTorch's own key), so optimizer state
    dicts say which tensor is which. Empty groups are dropped.

    With `lr_scale` (parameter name -> factor, e.g. layer-wise LR decay) each of the two is
    split further by factor, kept in the group as `lr_scale` for the schedule to apply.
    """
    embedding_ids = {
        id(p) for m in model.modules() if isinstance(m, nn.Embedding)
        for p in m.parameters(recurse=False)
    }
    matrix_ids = {
        id(m.weight) for m in model.modules()
        if isinstance(m, nn.Linear) and m.weight.dim() >= 2
    }
    groups: dict[tuple[bool, float], dict[str, Any]] = {}
    # named_parameters yields each parameter once (by identity), under its first name
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_matrix = id(param) in matrix_ids and id(param) not in embedding_ids
        scale = 1.0 if lr_scale is None else lr_scale(name)
        group = groups.setdefault((is_matrix, scale), {
            "params": [], "param_names": [], "weight_decay": weight_decay if is_matrix else 0.0,
            "lr_scale": scale,
        })
        group["params"].append(param)
        group["param_names"].append(name)
    return sorted(groups.values(), key=lambda g: (g["weight_decay"] == 0, -g["lr_scale"]))


def build_optimizer(
    model: nn.Module,
    cfg: TrainConfig,
    device_type: str,
    lr_scale: Callable[[str], float] | None = None,
) -> torch.optim.Optimizer:
    """The optimizer `cfg.optimizer` names, over `param_groups(model, cfg.weight_decay, ...)`.

    Adam(W) runs its fused kernel on CUDA and the multi-tensor (foreach) path elsewhere, one
    kernel launch for all parameters instead of one per parameter (DESIGN.md, speed).
    """
    name = cfg.optimizer.lower()
    if name not in OPTIMIZERS:
        raise GptkitError(
            f"unknown train.optimizer {cfg.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}"
        )
    groups = param_groups(model, cfg.weight_decay, lr_scale)
    if not groups:
        raise GptkitError("the model has no trainable parameters; unfreeze some layers")
    if name in ("adamw", "adam"):
        speed: dict[str, bool] = {"fused": True} if device_type == "cuda" else {"foreach": True}
        adam_cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        return adam_cls(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **speed)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, foreach=True)
    if name == "rmsprop":
        return torch.optim.RMSprop(
            groups, lr=cfg.lr, momentum=cfg.momentum, eps=cfg.eps, foreach=True
        )
    return torch.optim.Adagrad(groups, lr=cfg.lr, eps=cfg.eps, foreach=True)
