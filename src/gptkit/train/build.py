"""The model a run trains, built once on its device(s): the objective's model, sharded (FSDP)
or moved whole, wrapped in LoRA adapters, frozen as `finetune` says, and its optimizer and
gradient scaler. Apart from the loop so that the loop reads as steps, not set-up.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from gptkit.config import RunConfig
from gptkit.errors import GptkitError
from gptkit.finetune import freeze, lora
from gptkit.run import Run
from gptkit.train import distributed
from gptkit.train.distributed import DistEnv
from gptkit.train.optim import build_optimizer

if TYPE_CHECKING:
    from gptkit.train.objectives import Objective


@dataclass
class Built:
    """What training needs of the model: the module trained (LoRA-wrapped when adapters are
    on), its optimizer and scaler, the parallel strategy, the ids of parameters that learn at
    some step (gradual unfreezing), and the training FLOPs per token (for MFU)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    strategy: str
    learnable: set[int]
    flops_per_token: int


def build_model(cfg: RunConfig, env: DistEnv, objective: Objective, init: Run | None,
                precision: str) -> Built:
    """The model on its device(s), sharded or not, with LoRA and freezing applied, and its
    optimizer; the same initial weights on every rank."""
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
    model, gpt = objective.build_model(cfg, init)
    gpt.transformer.activation_checkpointing = cfg.train.activation_checkpointing
    flops_per_token = gpt.flops_per_token(training=True)  # before sharding splits the weights
    torch.manual_seed(cfg.train.seed + env.rank)  # different dropout masks per rank
    ft, n_layer = cfg.finetune, cfg.model.n_layer
    strategy = distributed.resolve_strategy(
        cfg.dist.strategy, env.world_size, gpt.num_params(), cfg.dist.fsdp_min_params)
    if strategy == "fsdp":
        if ft.lora_r:
            raise GptkitError(
                "LoRA (finetune.lora_r) runs with dist.strategy=ddp: its trainable "
                "adapters are small, and the frozen weights gain little from sharding"
            )
        # sharding moves one block at a time to the device, never a whole copy; it comes
        # before the optimizer and freezing see the parameters, since it replaces them
        distributed.shard_fsdp(model, list(gpt.transformer.h), env, precision,
                               cfg.dist.cpu_offload)
    else:
        model.to(env.device)
    trained: torch.nn.Module = lora.add_lora(model, ft) if ft.lora_r else model  # type: ignore[arg-type]
    learnable = freeze.ever_learnable(trained, ft, n_layer)
    freeze.apply_freezing(trained, ft, n_layer, freeze.step_when_all_unfrozen(ft),
                          learnable=learnable)
    scale = None if ft.layer_lr_decay == 1 else (
        lambda name: freeze.lr_scale(name, ft, n_layer))
    optimizer = build_optimizer(trained, cfg.train, env.device.type, scale)
    freeze.apply_freezing(trained, ft, n_layer, 0, learnable=learnable)
    scaler = torch.amp.GradScaler(
        env.device.type, enabled=precision == "fp16" and env.device.type == "cuda")
    return Built(trained, optimizer, scaler, strategy, learnable, flops_per_token)
