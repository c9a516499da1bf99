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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from gptkit.config import RunConfig
from gptkit.model import mlp_width

# bytes saved for backward per token x channel x layer, and per (head x query x key) element
_ACT = {"fp32": 66, "bf16": 38}
_ACT_DROPOUT = {"fp32": 78, "bf16": 52}
_ATTN_PROBS_DROPOUT = 12
# what the options beyond GPT-2 add, per token x channel x layer
_ACT_OPTIONS = {
    "rope": {"fp32": 12, "bf16": 7},
    "rmsnorm": {"fp32": 10, "bf16": 10},
    "qk_norm": {"fp32": 20, "bf16": 22},
    "swiglu": {"fp32": 16, "bf16": 10},
}
# optimizer state in fp32 values per parameter (muon: 1 for the block matrices, 2 elsewhere)
_OPTIMIZER_STATES = {"adamw": 2, "adam": 2, "sgd": 1, "rmsprop": 1, "adagrad": 1, "muon": 2}


@dataclass
class TrainingMemory:
    """Bytes one process holds at the peak of a training step (before allocator overhead)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

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
    bias = 1 if m.bias else 0
    norm = c if m.norm == "rmsnorm" else c * (1 + bias)  # RMSNorm has a gain only
    hidden = mlp_width(m)
    fc = 2 * hidden if m.mlp == "swiglu" else hidden  # SwiGLU's c_fc: gate and up
    per_block = (
        2 * norm  # ln_1, ln_2
        + block_matrix_count(cfg) // m.n_layer  # c_attn, attn.c_proj, c_fc, mlp.c_proj
        + 3 * c * bias + c * bias + fc * bias + c * bias  # their biases
        + (2 * (c // m.n_head) if m.qk_norm else 0)  # q_norm, k_norm gains
    )
    vocab = m.vocab_size or vocab_size
    embeddings = vocab * c * (1 if m.tie_embeddings else 2)  # wte (and an untied lm_head)
    positions = m.block_size * c if m.pos_embedding == "learned" else 0
    return embeddings + positions + m.n_layer * per_block + norm


def block_matrix_count(cfg: RunConfig) -> int:
    """Weights of the transformer blocks' matrices (what train.optimizer=muon gives Muon)."""
    m = cfg.model
    c, hidden = m.n_embd, mlp_width(m)
    fc = 2 * hidden if m.mlp == "swiglu" else hidden
    return m.n_layer * (3 * c * c + c * c + fc * c + c * hidden)


def activation_bytes(cfg: RunConfig, vocab_size: int, micro_batch_size: int,
                     precision: str) -> int:
    """Bytes autograd saves in one micro-batch's forward pass (see the module docstring)."""
    m = cfg.model
    kind = "bf16" if precision in ("bf16", "fp16") else "fp32"
    tokens = micro_batch_size * m.block_size
    options = [name for name, used in (("rope", m.pos_embedding == "rope"),
                                       ("rmsnorm", m.norm == "rmsnorm"),
                                       ("qk_norm", m.qk_norm), ("swiglu", m.mlp == "swiglu"))
               if used]
    per_channel = (_ACT_DROPOUT if m.dropout > 0 else _ACT)[kind] + sum(
        _ACT_OPTIONS[name][kind] for name in options)
    per_layer = per_channel * tokens * m.n_embd
    if m.dropout > 0:
        per_layer += _ATTN_PROBS_DROPOUT * micro_batch_size * m.n_head * m.block_size ** 2
    logits = 4 * tokens * (m.vocab_size or vocab_size)
    weight_copies = 2 * parameter_count(cfg, vocab_size) if kind == "bf16" else 0
    return m.n_layer * per_layer + logits + weight_copies


def training_memory(cfg: RunConfig, vocab_size: int, precision: str = "fp32") -> TrainingMemory:
    """One process of a single-process or DDP run (every process holds a full replica)."""
    n = parameter_count(cfg, vocab_size)
    states = n * _OPTIMIZER_STATES.get(cfg.train.optimizer, 2)
    if cfg.train.optimizer == "muon":  # one momentum buffer per matrix weight, not two
        states -= block_matrix_count(cfg)
    return TrainingMemory(
        weights=4 * n,  # fp32 master weights; autocast casts per use
        gradients=4 * n,
        optimizer=4 * states,
        activations=activation_bytes(cfg, vocab_size, cfg.train.micro_batch_size, precision),
    )


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
