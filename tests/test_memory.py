"""The memory estimate against what autograd really keeps, and the weight counts."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from gptkit import device as devices
from gptkit.config import load_config
from gptkit.errors import GptkitError
from gptkit.memory import (
    activation_bytes,
    block_matrix_count,
    block_parameter_count,
    human_bytes,
    inference_memory,
    memory_plan,
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
    precision = {None: "fp32", torch.bfloat16: "bf16"}[dtype]  # training's autocast region
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            devices.autocast(torch.device("cpu"), precision):
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
    estimate = activation_bytes(cfg, shape[4], 2, precision, device_type="cpu")
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
    estimate = activation_bytes(cfg, 65, 2, precision, device_type="cpu")
    assert estimate == pytest.approx(measured, rel=0.12), (estimate, measured)


def allocator_bytes(fn: Callable[[], object]) -> tuple[int, int]:
    """(bytes still allocated when `fn` returns, peak while it runs), from where it started,
    as the CPU allocator saw them (the profiler's memory events, in time order)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    held = peak = 0
    for event in events:
        held += event.nbytes()
        peak = max(peak, held)
    return held, peak


def step_memory(model: GPT, precision: str) -> tuple[int, int, int]:
    """What a training step allocates beyond the weights: (held after the forward pass, the
    forward's peak, the backward's peak over what the forward left). Gradients are allocated
    before the backward pass, so its peak is activations and temporaries only."""
    x = torch.randint(0, model.config.vocab_size or 1, (2, model.config.block_size))
    loss = []

    def forward() -> None:
        with devices.autocast(torch.device("cpu"), precision):
            loss.append(model(x, x)[1])

    held, forward_peak = allocator_bytes(forward)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    _, backward_peak = allocator_bytes(loss[0].backward)
    return held, forward_peak, backward_peak


@pytest.mark.parametrize("shape", [
    (4, 128, 4, 128, 65, 0.0), (4, 128, 4, 128, 65, 0.1), (6, 64, 4, 128, 65, 0.0),
    (3, 192, 6, 64, 65, 0.0),
])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_activation_checkpointing_estimate_matches_what_the_allocator_holds(shape, precision):
    """With torch.utils.checkpoint around each block, autograd keeps the block inputs and
    recomputes one block at a time: the estimate against the bytes really allocated."""
    cfg = _config(*shape)
    torch.manual_seed(0)
    plain = GPT.from_config(cfg.model, shape[4]).train()
    torch.manual_seed(0)
    checkpointed = GPT.from_config(cfg.model, shape[4]).train()
    checkpointed.transformer.activation_checkpointing = True
    _, _, temporaries = step_memory(plain, precision)  # the backward's own, without recompute
    held, forward_peak, backward_peak = step_memory(checkpointed, precision)
    measured = max(forward_peak, held + backward_peak - temporaries)
    estimate = activation_bytes(cfg, shape[4], 2, precision, checkpointing=True,
                                device_type="cpu")
    assert estimate == pytest.approx(measured, rel=0.2), (estimate, measured)
    assert estimate < 0.6 * activation_bytes(cfg, shape[4], 2, precision, device_type="cpu")


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
    assert train.total == sum(v for k, v in train.to_dict().items() if k not in ("total", "host"))
    sgd_cfg = load_config("shakespeare-char", ["train.optimizer=sgd"])
    assert training_memory(sgd_cfg, 65).optimizer == 4 * parameter_count(sgd_cfg, 65)
    muon_cfg = load_config("shakespeare-char", ["train.optimizer=muon"])  # momentum only
    assert training_memory(muon_cfg, 65).optimizer == 4 * (
        2 * parameter_count(muon_cfg, 65) - block_matrix_count(muon_cfg))
    infer = inference_memory(cfg, 65, batch_size=3)
    assert infer.kv_cache == 4 * 2 * 2 * 3 * 64 * 128
    assert infer.total < train.total


def test_block_parameters_are_one_block_of_the_model():
    cfg = _config(3, 96, 4, 48, 500, 0.0, options=("model.qk_norm=true", "model.mlp=swiglu"))
    with torch.device("meta"):
        model = GPT.from_config(cfg.model, 500)
    assert block_parameter_count(cfg) == sum(p.numel() for p in model.transformer.h[0].parameters())


def test_strategies_shard_replicate_and_offload():
    cfg = load_config("gpt2-124m", ["train.micro_batch_size=8"])
    v, n = 50257, parameter_count(load_config("gpt2-124m"), 50257)
    block = block_parameter_count(cfg)
    root = n - 12 * block  # embeddings (tied output layer) and the final LayerNorm
    assert root == 50257 * 768 + 1024 * 768 + 2 * 768
    single = training_memory(cfg, v, "bf16")
    ddp = training_memory(cfg, v, "bf16", strategy="ddp", world_size=8)
    assert (ddp.weights, ddp.gradients, ddp.optimizer) == (4 * n, 4 * n, 8 * n)
    assert ddp.buffers == 4 * n and ddp.total == single.total + 4 * n  # gradient buckets
    fsdp = training_memory(cfg, v, "bf16", strategy="fsdp", world_size=8)
    assert (fsdp.weights, fsdp.gradients, fsdp.optimizer) == (n // 2, n // 2, n)  # 4n/8, 8n/8
    assert fsdp.buffers == 2 * (2 * root + 3 * block) + 4 * block
    # FSDP's parameters are bf16 already: no autocast weight copies among the activations
    assert fsdp.activations == single.activations - 2 * n
    offload = training_memory(cfg, v, "bf16", strategy="fsdp", world_size=8, offload=True)
    assert (offload.weights, offload.gradients, offload.optimizer) == (0, 0, 0)
    assert offload.host == 2 * n and offload.total == fsdp.buffers + fsdp.activations
    fp32 = training_memory(cfg, v, strategy="fsdp", world_size=8)
    assert fp32.buffers == 4 * (2 * root + 3 * block)  # no cast for the reduce-scatter
    checkpointed = training_memory(cfg, v, "bf16", activation_checkpointing=True)
    assert checkpointed.activations < single.activations / 2  # the logits stay: 1.6 GB
    assert checkpointed.total - checkpointed.activations == single.total - single.activations


def test_memory_plan_rows_and_bad_strategies():
    cfg = load_config("gpt2-124m")
    rows = memory_plan(cfg, 50257, "bf16", 8)
    assert [(r["strategy"], r["world_size"], r["activation_checkpointing"]) for r in rows] == [
        (s, w, ac) for s, w in (("none", 1), ("ddp", 8), ("fsdp", 8), ("fsdp+offload", 8))
        for ac in (False, True)]
    totals = {(r["strategy"], r["activation_checkpointing"]): r["total"] for r in rows}
    assert totals["fsdp+offload", True] < totals["fsdp", True] < totals["ddp", True]
    assert all(totals[s, True] < totals[s, False] for s, _ in totals)
    for kwargs, match in (({"strategy": "zero3"}, "strategy must be none, ddp or fsdp"),
                          ({"world_size": 8}, "strategy none is one process"),
                          ({"strategy": "ddp", "offload": True}, "offload is an FSDP option"),
                          ({"strategy": "fsdp", "world_size": 0}, "world size must be >= 1")):
        with pytest.raises(GptkitError, match=match):
            training_memory(cfg, 50257, **kwargs)


def test_docs_memory_table_is_what_the_planner_says():
    """docs/memory.md is written by docs/make_memory_table.py, never typed by hand."""
    script = Path(__file__).resolve().parent.parent / "docs" / "make_memory_table.py"
    spec = importlib.util.spec_from_file_location("make_memory_table", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.OUT.read_text(encoding="utf-8") == module.render(), (
        "docs/memory.md is out of date: run python docs/make_memory_table.py")


def test_human_bytes():
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 2**30) == "3.0 GiB"
