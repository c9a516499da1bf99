"""Attention weights as the model uses them (Hugging Face's `output_attentions`), without the
model knowing: inside `capture_attention()` every `scaled_dot_product_attention` call is
computed step by step instead (softmax(q k^T / sqrt(head_dim)) @ v, in at least fp32), and
its weights are kept, so the weights one looks at are exactly those that produced the
output. The model's own forward pass stays the fused kernel and returns what it always does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from gptkit.model import GPT


def explicit_attention(
    q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
    is_causal: bool = False, scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """What SDPA computes, written out with the weights kept: (y, weights). A bool mask
    (True = may attend) or `is_causal` hide keys; dropout (train mode) is applied to the
    weights, whose rows then no longer sum to one."""
    wide = torch.promote_types(q.dtype, torch.float32)
    scale = 1 / math.sqrt(q.size(-1)) if scale is None else scale
    scores = q.to(wide) @ k.to(wide).transpose(-2, -1) * scale
    if is_causal:
        attn_mask = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool,
                               device=q.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    weights = F.dropout(scores.softmax(dim=-1), dropout_p, training=dropout_p > 0)
    return (weights @ v.to(wide)).to(q.dtype), weights


class _Capture(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.weights: list[Tensor] = []

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        y, weights = explicit_attention(*args, **kwargs)
        self.weights.append(weights)
        return y


@contextmanager
def capture_attention() -> Iterator[list[Tensor]]:
    """A list that receives each attention call's weights (B, n_head, queries, keys), in
    call order (layer by layer), while the block runs."""
    with _Capture() as capture:
        yield capture.weights


def attention_weights(
    model: GPT, idx: Tensor, attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
) -> Tensor:
    """Every layer's attention weights for ids `idx` (B, T): (n_layer, B, n_head, T, T).

    Row i of a map holds how query position i spreads its attention over the key positions
    0..i (it sums to one; later keys get exactly 0). The weights are computed in at least
    fp32 and are the ones the model uses: put the model in eval mode first, or attention
    dropout is applied to them. `attention_mask` and `position_ids` as in `GPT.forward`.
    """
    with capture_attention() as found:
        model(idx, attention_mask=attention_mask, position_ids=position_ids)
    return torch.stack(found)
