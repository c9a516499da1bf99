"""The memory estimate against what autograd really keeps, and the weight counts."""

from __future__ import annotations

import pytest
import torch

from gptkit.config import load_config
from gptkit.memory import (
    activation_bytes,
    block_matrix_count,
    human_bytes,
    inference_memory,
    parameter_count,
    training_memory,
)
from gptkit.model import GPT


def _config(n_layer: int, n_embd: int, n_head: int, block: int, vocab: int, dropout: float,
            bias: bool = True, options: tuple[str, ...] = ()):
    return load_config("shakespeare-char", [
        f"model.n_layer={n_layer}", f"model.n_embd={n_embd}", f"model.n_head={n_head}",
        f"model.block_size={block}", f"model.vocab_size={vocab}", f"model.dropout={dropout}",
        f"model.bias={str(bias).lower()}", "train.micro_batch_size=2", *options,
    ])


def saved_for_backward(model: GPT, batch: int, dtype: torch.dtype | None) -> int:
    """Bytes of the distinct non-parameter storages autograd saves in one forward pass."""
    storages: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.randint(0, model.config.vocab_size or 1, (batch, model.config.block_size))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        model(x, x)
    return sum(n for ptr, n in storages.items() if ptr not in params)


@pytest.mark.parametrize("shape", [
    (2, 128, 4, 64, 65, 0.0), (2, 128, 4, 128, 65, 0.1), (1, 256, 4, 64, 2000, 0.0),
    (2, 64, 8, 128, 65, 0.2),
])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_activation_estimate_matches_what_autograd_saves(shape, precision):
    cfg = _config(*shape)
    torch.manual_seed(0)
    model = GPT.from_config(cfg.model, shape[4]).train()
    measured = saved_for_backward(model, 2, torch.bfloat16 if precision == "bf16" else None)
    estimate = activation_bytes(cfg, shape[4], 2, precision)
    assert estimate == pytest.approx(measured, rel=0.12), (estimate, measured)


@pytest.mark.parametrize("options", [
    ("model.pos_embedding=rope",), ("model.norm=rmsnorm",), ("model.qk_norm=true",),
    ("model.mlp=relu2",), ("model.mlp=swiglu",), ("model.tie_embeddings=false",),
    ("model.pos_embedding=rope", "model.norm=rmsnorm", "model.qk_norm=true", "model.mlp=relu2"),
    ("model.pos_embedding=rope", "model.norm=rmsnorm", "model.qk_norm=true", "model.mlp=swiglu",
     "model.dropout=0.1"),
], ids=str)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_activation_estimate_covers_the_architecture_options(options, precision):
    cfg = _config(2, 128, 4, 64, 65, 0.0, options=options)
    torch.manual_seed(0)
    model = GPT.from_config(cfg.model, 65).train()
    measured = saved_for_backward(model, 2, torch.bfloat16 if precision == "bf16" else None)
    estimate = activation_bytes(cfg, 65, 2, precision)
    assert estimate == pytest.approx(measured, rel=0.12), (estimate, measured)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("options", [
    [], ["model.pos_embedding=rope"], ["model.norm=rmsnorm"], ["model.qk_norm=true"],
    ["model.mlp=relu2"], ["model.mlp=swiglu"], ["model.tie_embeddings=false"],
    ["model.pos_embedding=rope", "model.norm=rmsnorm", "model.qk_norm=true",
     "model.mlp=swiglu", "model.tie_embeddings=false"],
], ids=str)
def test_parameter_count_equals_the_model(bias, options):
    cfg = _config(3, 96, 4, 48, 500, 0.0, bias=bias, options=tuple(options))
    with torch.device("meta"):
        model = GPT.from_config(cfg.model, 500)
    assert parameter_count(cfg, 500) == model.num_params()
    matrices = sum(p.numel() for n, p in model.named_parameters()
                   if n.startswith("transformer.h.") and p.dim() == 2)
    assert block_matrix_count(cfg) == matrices


def test_training_and_inference_memory_add_up():
    cfg = _config(2, 128, 4, 64, 65, 0.0)
    n = parameter_count(cfg, 65)
    train = training_memory(cfg, 65)
    assert (train.weights, train.gradients, train.optimizer) == (4 * n, 4 * n, 8 * n)  # AdamW
    assert train.total == sum(v for k, v in train.to_dict().items() if k != "total")
    sgd_cfg = load_config("shakespeare-char", ["train.optimizer=sgd"])
    assert training_memory(sgd_cfg, 65).optimizer == 4 * parameter_count(sgd_cfg, 65)
    muon_cfg = load_config("shakespeare-char", ["train.optimizer=muon"])  # momentum only
    assert training_memory(muon_cfg, 65).optimizer == 4 * (
        2 * parameter_count(muon_cfg, 65) - block_matrix_count(muon_cfg))
    infer = inference_memory(cfg, 65, batch_size=3)
    assert infer.kv_cache == 4 * 2 * 2 * 3 * 64 * 128
    assert infer.total < train.total


def test_human_bytes():
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 2**30) == "3.0 GiB"
