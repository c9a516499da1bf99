"""A trained model's context window cropped or extended: the tensors that follow the settings.

`gptkit.config.context.resized_model_config` settles the new `ModelConfig` (its block_size,
and RoPE's base or position scale); here the weights follow it. Only the learned position
table has a length: it is cut to the new rows (nanoGPT's `crop_block_size`), tiled (`copy`)
or linearly resampled (`interpolate`). A RoPE model's weights are the same tensors; its
config carries the new angles. Attention builds its causal mask per call, so no buffer
depends on block_size. The trainer uses `context_state` for `--init-from RUN --set
model.block_size=N`; `resize_context` is the same for a model in hand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gptkit.config import ModelConfig
from gptkit.config.choices import ContextExtension
from gptkit.config.context import resized_model_config
from gptkit.errors import GptkitError
from gptkit.model import GPT

POSITIONS = "transformer.wpe.weight"


def resize_context(model: GPT, block_size: int,
                   method: ContextExtension | None = None) -> GPT:
    """A new GPT like `model` with context `block_size` (crop, or extend by `method`; None:
    copy for learned positions, interpolate for RoPE), on `model`'s device and dtype."""
    config = resized_model_config(model.config, block_size, method)
    weight = model.transformer.wte.weight
    resized = GPT(config).to(device=weight.device, dtype=weight.dtype)
    resized.load_state_dict(context_state(model, config))
    return resized.train(model.training)


def context_state(model: GPT, config: ModelConfig) -> dict[str, Tensor]:
    """`model`'s state dict for a model of `config`, which differs from `model.config` at
    most in its context (as `resized_model_config` made it): the position table resized."""
    state = model.state_dict()
    table = state.get(POSITIONS)
    if table is not None and table.size(0) != config.block_size:
        state[POSITIONS] = position_table(table, config.block_size, config.context_extension)
    return state


def position_table(table: Tensor, rows: int, method: ContextExtension | None) -> Tensor:
    """A learned position table (old rows, n_embd) with `rows` rows: its first rows (crop),
    the old rows repeated (`copy`), or resampled linearly, ends kept (`interpolate`)."""
    old = table.size(0)
    if rows <= old:
        return table[:rows].clone()
    if method == "interpolate":
        wide = table.detach().float().t()[None]  # (1, n_embd, old): interpolate's layout
        resampled = F.interpolate(wide, size=rows, mode="linear", align_corners=True)
        return resampled[0].t().to(table.dtype).contiguous()
    if method != "copy":
        raise GptkitError(f"learned positions extend by copy or interpolate, not {method}")
    return table[torch.arange(rows, device=table.device) % old].clone()
