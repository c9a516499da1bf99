"""How much memory a run needs, before it runs: weights, gradients, optimizer state, activations.

The activation figures are bytes autograd keeps for the backward pass, per token, channel
and layer of this model. They were measured on this implementation (PyTorch 2.x, the
`torch.autograd.graph.saved_tensors_hooks` count that `tests/test_memory.py` repeats), not
taken from a paper: GPT-2 in fp32 keeps 66 bytes per token and channel in each block
(LayerNorm inputs and outputs, q/k/v, the attention output, the MLP's 4x-wide hidden
layer before and after GELU); under bf16 autocast 38, plus a bf16 copy of every weight.
Dropout adds its masks and, because attention with dropout takes the non-fused path, the
attention probabilities: 12 bytes per (head, query, key). The loss keeps fp32
log-probabilities over the vocabulary for every position. The architecture options add
what they keep, measured the same way (RMSNorm and rotations are composed of several
saved steps where LayerNorm is one fused kernel).

Parallel strategies (`training_memory(strategy=...)`), per process:
- none / ddp: a full replica: fp32 weights, gradients and optimizer state. DDP adds its
  gradient buckets, a second fp32 copy of the gradients that the all-reduce works on.
- fsdp (FSDP2 `fully_shard` per block and at the root, mixed precision: bf16 compute copies,
  fp32 gradient reduction): weights, gradients and optimizer state divided by the world size,
  plus what is unsharded at once: the root's parameters (embeddings, final norm) and their
  gradients for the whole step, two blocks' parameters (the one computing and the one
  prefetched) and one block's gradients with their fp32 copy for the reduce-scatter. The
  parameters are already bf16, so autocast makes no weight copies.
- fsdp with CPU offload: the sharded weights, gradients and optimizer state live in host
  memory (the optimizer steps there); the accelerator keeps the unsharded units and the
  activations.
Activation checkpointing per block keeps each block's input (the fp32 residual stream; bf16
under FSDP's mixed precision) and recomputes one block at a time in the backward pass, so
the activations are the block inputs, what lies outside the blocks (final norm, logits) and
the larger of one block's recomputed activations (with its weight copies) and the weight
copies autocast holds until the forward pass ends. `tests/test_memory.py` checks this
against the bytes the CPU allocator holds with `torch.utils.checkpoint` around each block.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from gptkit.config import RunConfig
from gptkit.errors import GptkitError
from gptkit.model import mlp_width

# bytes saved for backward per token x channel x layer, and per (head x query x key) element
_ACT = {"fp32": 66, "bf16": 38}
_ACT_DROPOUT = {"fp32": 78, "bf16": 52}
_ATTN_PROBS_DROPOUT = 12
# bf16 on a CPU: attention runs in fp32 (model.py), so the fused kernel keeps q, k, v and
# its output in fp32, 8 bytes more per token x channel x layer
_CPU_BF16_ATTENTION = 8
# what the options beyond GPT-2 add, per token x channel x layer
_ACT_OPTIONS = {
    "rope": {"fp32": 12, "bf16": 7},
    "rmsnorm": {"fp32": 10, "bf16": 10},
    "qk_norm": {"fp32": 20, "bf16": 22},
    "swiglu": {"fp32": 16, "bf16": 10},
}
# optimizer state in fp32 values per parameter (muon: 1 for the block matrices, 2 elsewhere)
_OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd": 1, "rmsprop": 1, "adagrad": 1, "muon": 2}
STRATEGIES = ("none", "ddp", "fsdp")


@dataclass
class TrainingMemory:
    """Bytes one process holds at the peak of a training step (before allocator overhead).

    `total` is what the accelerator holds; `host` what CPU offload keeps in host memory.
    """

    weights: int
    gradients: int
    optimizer: int
    activations: int
    buffers: int = 0  # DDP's gradient buckets; FSDP's unsharded parameters and gradients
    host: int = 0  # FSDP CPU offload: sharded weights, gradients, optimizer state

    @property
    def total(self) -> int:
        return (self.weights + self.gradients + self.optimizer + self.activations
                + self.buffers)

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


@dataclass
class InferenceMemory:
    """Bytes to generate from one batch: weights, a full KV cache, one step's logits."""

    weights: int
    kv_cache: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.logits

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def parameter_count(cfg: RunConfig, vocab_size: int) -> int:
    """Parameters of the GPT a config describes (tied embedding counted once)."""
    m = cfg.model
    c = m.n_embd
    norm = c if m.norm == "rmsnorm" else c * (1 + (1 if m.bias else 0))  # RMSNorm: a gain only
    vocab = m.vocab_size or vocab_size
    embeddings = vocab * c * (1 if m.tie_embeddings else 2)  # wte (and an untied lm_head)
    positions = m.block_size * c if m.pos_embedding == "learned" else 0
    return embeddings + positions + m.n_layer * block_parameter_count(cfg) + norm


def block_matrix_count(cfg: RunConfig) -> int:
    """Weights of the transformer blocks' matrices (what train.optimizer=muon gives Muon)."""
    m = cfg.model
    c, hidden = m.n_embd, mlp_width(m)
    fc = 2 * hidden if m.mlp == "swiglu" else hidden
    return m.n_layer * (3 * c * c + c * c + fc * c + c * hidden)


def activation_bytes(cfg: RunConfig, vocab_size: int, micro_batch_size: int,
                     precision: str, *, checkpointing: bool = False,
                     weight_copies: bool = True, device_type: str = "cuda") -> int:
    """Bytes autograd saves in one micro-batch's forward pass (see the module docstring).

    `checkpointing`: activation checkpointing per block. `weight_copies`: bf16 runs cast fp32
    weights per use (autocast); False where the parameters are bf16 already (FSDP's mixed
    precision), which also makes the residual stream bf16. `device_type` "cpu": attention
    keeps fp32 tensors under bf16.
    """
    m = cfg.model
    kind = "bf16" if precision in ("bf16", "fp16") else "fp32"
    tokens = micro_batch_size * m.block_size
    options = [name for name, used in (("rope", m.pos_embedding == "rope"),
                                       ("rmsnorm", m.norm == "rmsnorm"),
                                       ("qk_norm", m.qk_norm), ("swiglu", m.mlp == "swiglu"))
               if used]
    per_channel = (_ACT_DROPOUT if m.dropout > 0 else _ACT)[kind] + sum(
        _ACT_OPTIONS[name][kind] for name in options)
    if kind == "bf16" and device_type == "cpu" and m.dropout == 0:  # the fused kernel's
        per_channel += _CPU_BF16_ATTENTION
    per_layer = per_channel * tokens * m.n_embd
    if m.dropout > 0:
        per_layer += _ATTN_PROBS_DROPOUT * micro_batch_size * m.n_head * m.block_size ** 2
    logits = 4 * tokens * (m.vocab_size or vocab_size)
    copies = kind == "bf16" and weight_copies
    weight_copies_bytes = 2 * parameter_count(cfg, vocab_size) if copies else 0
    if not checkpointing:
        return m.n_layer * per_layer + logits + weight_copies_bytes
    residual = 2 if kind == "bf16" and not weight_copies else 4  # bytes per block input value
    # outside the blocks: the final norm's input and the output layer's (cast) input
    outside = (residual + (2 if kind == "bf16" else 4)) * tokens * m.n_embd
    block_copies = 2 * block_parameter_count(cfg) if copies else 0
    recompute = per_layer + block_copies
    return (m.n_layer * residual * tokens * m.n_embd + outside + logits
            + max(recompute, weight_copies_bytes))


def block_parameter_count(cfg: RunConfig) -> int:
    """Parameters of one transformer block (what FSDP unshards at a time)."""
    m = cfg.model
    c = m.n_embd
    bias = 1 if m.bias else 0
    norm = c if m.norm == "rmsnorm" else c * (1 + bias)  # RMSNorm has a gain only
    hidden = mlp_width(m)
    fc = 2 * hidden if m.mlp == "swiglu" else hidden  # SwiGLU's c_fc: gate and up
    return (
        2 * norm  # ln_1, ln_2
        + block_matrix_count(cfg) // m.n_layer  # c_attn, attn.c_proj, c_fc, mlp.c_proj
        + 3 * c * bias + c * bias + fc * bias + c * bias  # their biases
        + (2 * (c // m.n_head) if m.qk_norm else 0)  # q_norm, k_norm gains
    )


def training_memory(
    cfg: RunConfig,
    vocab_size: int,
    precision: str = "fp32",
    *,
    strategy: str = "none",
    world_size: int = 1,
    offload: bool = False,
    activation_checkpointing: bool = False,
) -> TrainingMemory:
    """One process of a run under `strategy` (none, ddp, fsdp) over `world_size` processes.

    none and ddp hold a full replica; fsdp shards weights, gradients and optimizer state
    (`offload`: into host memory). See the module docstring for what each term counts.
    """
    if strategy not in STRATEGIES:
        raise GptkitError(f"strategy must be none, ddp or fsdp (got {strategy!r})")
    if world_size < 1:
        raise GptkitError(f"world size must be >= 1 (got {world_size})")
    if strategy == "none" and world_size != 1:
        raise GptkitError(f"strategy none is one process, not {world_size}; use ddp or fsdp")
    if offload and strategy != "fsdp":
        raise GptkitError("CPU offload is an FSDP option; use strategy fsdp")
    n = parameter_count(cfg, vocab_size)
    states = n * _OPTIMIZER_STATES.get(cfg.train.optimizer, 2)
    if cfg.train.optimizer == "muon":  # one momentum buffer per matrix weight, not two
        states -= block_matrix_count(cfg)
    activations = activation_bytes(
        cfg, vocab_size, cfg.train.micro_batch_size, precision,
        checkpointing=activation_checkpointing, weight_copies=strategy != "fsdp")
    if strategy != "fsdp":
        return TrainingMemory(
            weights=4 * n,  # fp32 master weights; autocast casts per use
            gradients=4 * n,
            optimizer=4 * states,
            activations=activations,
            buffers=4 * n if strategy == "ddp" else 0,  # DDP's gradient buckets
        )
    unsharded = 2 if precision in ("bf16", "fp16") else 4  # bytes per gathered value
    block = block_parameter_count(cfg)
    root = n - cfg.model.n_layer * block
    gathered = (unsharded * (2 * root + 2 * block + block)  # root params + grads, 2 blocks, grads
                + (4 * block if unsharded != 4 else 0))  # fp32 copy for the reduce-scatter
    shard = (-(-4 * n // world_size), -(-4 * n // world_size), -(-4 * states // world_size))
    if offload:
        return TrainingMemory(0, 0, 0, activations, gathered, host=sum(shard))
    return TrainingMemory(*shard, activations=activations, buffers=gathered)


def memory_plan(cfg: RunConfig, vocab_size: int, precision: str, world_size: int
                ) -> list[dict[str, object]]:
    """Per-process training memory of every strategy, without and with activation
    checkpointing: none (one process), ddp, fsdp and fsdp with CPU offload."""
    rows: list[dict[str, object]] = []
    for name, strategy, offload in (("none", "none", False), ("ddp", "ddp", False),
                                    ("fsdp", "fsdp", False), ("fsdp+offload", "fsdp", True)):
        processes = 1 if strategy == "none" else world_size
        for checkpointing in (False, True):
            memory = training_memory(cfg, vocab_size, precision, strategy=strategy,
                                     world_size=processes, offload=offload,
                                     activation_checkpointing=checkpointing)
            rows.append({"strategy": name, "world_size": processes,
                         "activation_checkpointing": checkpointing, **memory.to_dict()})
    return rows


def inference_memory(cfg: RunConfig, vocab_size: int, batch_size: int = 1,
                     dtype_bytes: int = 4) -> InferenceMemory:
    """Generation with a KV cache of the full context for `batch_size` sequences."""
    m = cfg.model
    return InferenceMemory(
        weights=dtype_bytes * parameter_count(cfg, vocab_size),
        kv_cache=dtype_bytes * 2 * m.n_layer * batch_size * m.block_size * m.n_embd,
        logits=4 * batch_size * (m.vocab_size or vocab_size),
    )


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while abs(n) >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"
