"""The CPU-bf16 attention kernel lives with the precision policy, not in the model: under
bf16 autocast on a CPU, attention is computed in fp32, exactly as the model did inline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gptkit import device as devices
from gptkit.attention_precision import fp32_cpu_attention
from gptkit.config import ModelConfig
from gptkit.model import GPT


def qkv(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    return tuple(torch.randn(2, 2, 16, 8, dtype=dtype) for _ in range(3))


def upcast(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """What CausalSelfAttention did inline before: fp32 SDPA, autocast off, back to bf16."""
    with torch.autocast("cpu", enabled=False):
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                              is_causal=True).to(q.dtype)


def test_bf16_cpu_attention_is_computed_in_fp32_inside_the_context():
    q, k, v = qkv(torch.bfloat16)
    plain = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert not torch.equal(plain, upcast(q, k, v))  # so the equality below means something
    with fp32_cpu_attention():
        rerouted = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert rerouted.dtype == torch.bfloat16 and torch.equal(rerouted, upcast(q, k, v))
    q32, k32, v32 = qkv(torch.float32)  # other dtypes pass through untouched
    with fp32_cpu_attention():
        same = F.scaled_dot_product_attention(q32, k32, v32, is_causal=True)
    assert torch.equal(same, F.scaled_dot_product_attention(q32, k32, v32, is_causal=True))


def test_the_bf16_autocast_region_selects_it_for_the_model():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=11))
    idx = torch.randint(0, 11, (2, 16))
    seen: list[torch.Tensor] = []
    hook = model.transformer.h[0].attn.c_proj.register_forward_pre_hook(
        lambda module, args: seen.append(args[0]))
    with devices.autocast(torch.device("cpu"), "bf16"):
        model(idx, targets=idx)[1].backward()
    hook.remove()
    # recompute layer 0's attention input by hand and compare with the old inline upcast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(16))
        q, k, v = model.transformer.h[0].attn.c_attn(model.transformer.h[0].ln_1(x)).split(16, 2)
    q, k, v = (t.view(2, 16, 2, 8).transpose(1, 2) for t in (q, k, v))
    expected = upcast(q, k, v).transpose(1, 2).reshape(2, 16, 16)
    assert torch.equal(seen[0], expected)


def test_activation_checkpointing_recomputes_under_the_same_kernel():
    """The backward pass runs outside the autocast region; recomputed blocks still take the
    fp32 attention route (else the recomputed tensors would not match the saved ones)."""
    grads = []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=11))
        model.transformer.activation_checkpointing = recompute
        idx = torch.randint(0, 11, (2, 16))
        with devices.autocast(torch.device("cpu"), "bf16"):
            loss = model(idx, targets=idx)[1]
        loss.backward()
        grads.append([p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
