"""The attention kernel a precision chooses, kept out of the model.

On a CPU, PyTorch's fused attention runs its bf16 backward about 2.7x slower than upcasting
queries, keys and values to fp32 around it (the math backend in bf16: 1.7x; measured with
interleaved timing, 8x4 heads x 64 positions x 32, forward and backward, one thread). So
bf16 training on a CPU computes attention in fp32 while the matrix multiplies around it stay
bf16. The model just calls `F.scaled_dot_product_attention`; the precision policy's
autocast region enters `fp32_cpu_attention()`, which reroutes those calls (a torch function
mode: scoped to the `with` block and the thread, no global switch). Forward-only bf16
inference needs no reroute (the bf16 kernel is as fast there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class _Fp32CpuAttention(TorchFunctionMode):
    """Computes CPU bf16 `scaled_dot_product_attention` in fp32, autocast off, and returns
    it in bf16; every other call passes through unchanged."""

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        q, k, v, *rest = args
        if q.device.type != "cpu" or q.dtype != torch.bfloat16:
            return func(q, k, v, *rest, **kwargs)
        with torch.autocast("cpu", enabled=False):  # autocast would cast them back to bf16
            return func(q.float(), k.float(), v.float(), *rest, **kwargs).to(q.dtype)


@contextmanager
def fp32_cpu_attention() -> Iterator[None]:
    """Within the block, attention on bf16 CPU tensors is computed in fp32 (see above)."""
    with _Fp32CpuAttention():
        yield
