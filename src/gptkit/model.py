"""GPT-2, the whole model in one file.

Pre-LayerNorm transformer blocks (causal self-attention through
`F.scaled_dot_product_attention`, a GELU MLP, residual connections), learned position
embeddings, and an output layer tied to the token embedding. Module names follow Hugging
Face's `GPT2LMHeadModel` (`transformer.h.0.attn.c_attn`, ...) so that import and export are a
key map plus a transpose: HF stores these layers as `Conv1D` (weight `(in, out)`), we use
`nn.Linear` (weight `(out, in)`). Attention is always `F.scaled_dot_product_attention`;
what a forward call's layers share (KV cache, mask, rotary angles) travels in one
`AttentionContext`. Seeing the attention weights (`gptkit.viz.capture`) and the CPU-bf16
attention kernel (`gptkit.attention_precision`) are contexts around a call, outside the model.

Options beyond GPT-2, each a `ModelConfig` switch whose default keeps GPT-2 exactly (these
are what later models, e.g. LLaMA and the nanoGPT speedruns, changed): rotary position
embeddings instead of the position table (`pos_embedding`), RMSNorm instead of LayerNorm
(`norm`), RMSNorm of queries and keys (`qk_norm`), squared-ReLU or SwiGLU MLPs (`mlp`), and
an output layer of its own (`tie_embeddings`). Modules keep GPT-2's names where their role
is the same (`ln_1` is an RMSNorm under `norm: rmsnorm`).

The model knows nothing about parallelism, precision or compilation: the trainer wraps an
unchanged module, and checkpoints hold this module's own state dict.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gptkit.config import ModelConfig
from gptkit.errors import GptkitError

# The target id the loss skips (PyTorch's default ignore_index): prompt tokens of SFT, padding,
# the inner sub-tokens of a tagged word. One definition for every loss in gptkit.
IGNORE = -100


class KVCache:
    """Keys and values of the positions seen so far, for incremental decoding.

    One slab per layer is allocated up front, so decoding a token writes into place instead
    of concatenating (which would copy the whole cache at every step). `length` counts the
    positions filled; `GPT.forward` advances it after all layers have written.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_head: int,
        max_len: int,
        head_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        # each layer's slab as a view, taken once: indexing `self.k[layer, ...]` at every
        # layer of every token costs more than the copy it does for a small model
        self.layers = [(self.k[i], self.v[i]) for i in range(n_layer)]
        self.batch_size = batch_size
        self.max_len = max_len
        self.length = 0

    def reset(self) -> None:
        """Forget every position (the memory is reused, not cleared)."""
        self.length = 0

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store `k`, `v` (B, n_head, T, head_dim) after the filled positions of `layer`.

        Returns the keys and values of all positions so far. A batch of 1 is broadcast to
        every row, so one prompt can be prefilled once for many samples.
        """
        start, end = self.length, self.length + k.size(2)
        cached_k, cached_v = self.layers[layer]
        cached_k[:, :, start:end] = k
        cached_v[:, :, start:end] = v
        return cached_k[:, :, :end], cached_v[:, :, :end]

    def context(self, tokens: int) -> tuple[Tensor | None, Tensor | None] | None:
        """The attention rule and position ids of `tokens` new positions, for a cache whose
        rows sit at positions of their own (the server's slot pool; None position ids: from
        `length` on); None: the caller's."""
        return None

    def row_keys(self, tokens: int) -> list[int] | None:
        """How many keys each row's one new position sees, when the rows attend row by row
        instead of in one masked call over the longest row's keys (a cache whose rows sit at
        positions of their own, where that reads enough fewer keys); None: one call."""
        return None

    def reorder(self, rows: Tensor) -> None:
        """Row i takes over what row `rows[i]` held: beam search follows surviving beams."""
        filled = slice(0, self.length)
        self.k[:, :, :, filled] = self.k[:, rows, :, filled]
        self.v[:, :, :, filled] = self.v[:, rows, :, filled]


class RMSNorm(nn.RMSNorm):
    """x / RMS(x) times a learnt gain (Zhang & Sennrich 2019): LayerNorm without the mean
    and the bias. Computed in at least fp32, as autocast runs LayerNorm, and returned in the
    input's dtype (a bf16 input with an fp32 gain would miss PyTorch's fused kernel)."""

    def forward(self, x: Tensor) -> Tensor:
        wide = torch.promote_types(x.dtype, torch.float32)
        return super().forward(x.to(wide)).to(x.dtype)


def norm(config: ModelConfig, size: int) -> nn.Module:
    """GPT-2's LayerNorm, or RMSNorm (`norm: rmsnorm`)."""
    if config.norm == "rmsnorm":
        return RMSNorm(size, eps=1e-5)
    return nn.LayerNorm(size, bias=config.bias)


def rotary_angles(position_ids: Tensor, head_dim: int, base: float = 10_000.0,
                  scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """cos and sin (B, 1, T, head_dim / 2) of position * scale * base ** (-2i / head_dim), fp32.

    base 10000 is RoFormer's and LLaMA's; a context extended by position interpolation
    scales positions, NTK-aware scaling raises the base (`model.rope_scale`, `rope_base`)."""
    exponent = torch.arange(0, head_dim, 2, device=position_ids.device) / head_dim
    angles = (position_ids[:, None, :, None].float() * scale) * base ** -exponent
    return angles.cos(), angles.sin()


def rotate(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """Rotary position embedding (Su et al. 2021) of queries or keys (B, n_head, T, head_dim).

    Channel pairs (i, i + head_dim / 2) are turned by angles growing with the position, so a
    query-key product depends only on how far apart the two are: positions need no table
    and left padding shifts nothing.
    """
    cos, sin = (t.to(x.dtype) for t in rope)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


@dataclass(frozen=True)
class AttentionContext:
    """What the attention of every layer needs for one forward call, worked out once by
    `Transformer.forward` and handed down whole (the layers only read it)."""

    kv_cache: KVCache | None = None  # positions cached so far; the new ones are written in
    mask: Tensor | None = None  # bool, True = may attend (`attention_rule`); None: causal
    rope: tuple[Tensor, Tensor] | None = None  # rotary angles of the new positions
    # one new position per row, row i attending to its first row_keys[i] keys (no mask)
    row_keys: list[int] | None = None

    @property
    def start(self) -> int:
        """Cached positions before the new ones (the cache advances after every layer)."""
        return 0 if self.kv_cache is None else self.kv_cache.length


class CausalSelfAttention(nn.Module):
    """Multi-head attention in which a position sees only itself and earlier positions."""

    def __init__(self, config: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.layer = layer  # its slab of the KV cache
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        # QK-norm (Dehghani et al. 2023): unit-RMS queries and keys (times a learnt gain)
        # keep attention logits from growing, which lets higher learning rates train stably.
        head_dim = config.n_embd // config.n_head
        self.q_norm = RMSNorm(head_dim, eps=1e-5) if config.qk_norm else None
        self.k_norm = RMSNorm(head_dim, eps=1e-5) if config.qk_norm else None

    def forward(self, x: Tensor, ctx: AttentionContext | None = None) -> Tensor:
        """`ctx.mask` replaces the plain causal rule when given; keys are cached rotated."""
        ctx = ctx or AttentionContext()
        B, T, C = x.shape
        # (B, T, 3C) -> 3 x (B, n_head, T, head_dim): one view and one permute for all three
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).permute(
            2, 0, 3, 1, 4).unbind(0)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if ctx.rope is not None:
            q, k = rotate(q, ctx.rope), rotate(k, ctx.rope)
        start = ctx.start
        if ctx.kv_cache is not None:
            cached_k, cached_v = ctx.kv_cache.update(self.layer, k, v)
            if start > 0:
                k, v = cached_k.to(q.dtype), cached_v.to(q.dtype)
        if ctx.row_keys is not None:  # each row reads its own keys only (KVCache.row_keys)
            y = torch.cat([F.scaled_dot_product_attention(q[i : i + 1], k[i : i + 1, :, :n],
                                                          v[i : i + 1, :, :n])
                           for i, n in enumerate(ctx.row_keys)])
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=ctx.mask, dropout_p=self.dropout if self.training else 0.0,
                # without a mask: causal from position 0; one new token after a cache sees all
                is_causal=ctx.mask is None and start == 0,
            )
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        y = self.c_proj(y)
        return self.resid_dropout(y) if self.training else y  # eval: not even the call


def mlp_width(config: ModelConfig) -> int:
    """The MLP's hidden width: 4 x n_embd, or for SwiGLU 8/3 x n_embd rounded up to a
    multiple of 64, so that its three matrices hold about as many weights as GELU's two."""
    if config.mlp == "swiglu":
        return 64 * math.ceil(8 * config.n_embd / 3 / 64)
    return 4 * config.n_embd


class MLP(nn.Module):
    """Position-wise feed-forward layer, 4x wide, GELU with GPT-2's tanh approximation.

    `mlp: relu2` squares a ReLU instead (So et al. 2021, "Primer"); `mlp: swiglu` gates:
    SiLU(gate) * up (Shazeer 2020), c_fc computing gate and up together.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.kind = config.mlp
        hidden = mlp_width(config)
        fc_width = 2 * hidden if self.kind == "swiglu" else hidden
        self.c_fc = nn.Linear(config.n_embd, fc_width, bias=config.bias)
        self.act = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c_fc(x)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            h = self.act(h)
        h = self.c_proj(h)
        return self.dropout(h) if self.training else h


class Block(nn.Module):
    """One transformer layer: x + attn(ln_1(x)), then x + mlp(ln_2(x)) (pre-LayerNorm)."""

    def __init__(self, config: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.ln_1 = norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, ctx: AttentionContext | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), ctx)
        return x + self.mlp(self.ln_2(x))


def attention_rule(
    tokens: int, start: int, attention_mask: Tensor | None, device: torch.device
) -> Tensor | None:
    """Which keys each new query may see (bool, broadcastable to (B, heads, T, keys)).

    None where SDPA's own causal rule suffices. `attention_mask` (B, start + T), 1 for real
    tokens and 0 for padding, hides padded keys as in Hugging Face. A padded query keeps
    itself so that its (unused) row never becomes NaN; real tokens never see padding.
    A 3-D `attention_mask` (B, T, start + T) says per query which keys it may see (before
    the causal rule), e.g. block-diagonal for examples packed into one row.
    """
    if attention_mask is None and (start == 0 or tokens == 1):
        return None
    keys = start + tokens
    query_pos = torch.arange(start, keys, device=device)[:, None]
    key_pos = torch.arange(keys, device=device)[None, :]
    causal = key_pos <= query_pos  # (T, keys)
    if attention_mask is None:
        return causal
    if attention_mask.dim() == 3 and attention_mask.shape[1:] == (tokens, keys):
        return ((causal[None] & attention_mask.bool()) | (key_pos == query_pos)[None])[:, None]
    if attention_mask.dim() != 2 or attention_mask.size(1) != keys:
        raise GptkitError(
            f"attention_mask must have shape (batch, {keys}): one entry per cached and new "
            f"position, got {tuple(attention_mask.shape)}"
        )
    visible = causal[None] & attention_mask.bool()[:, None, :]
    return (visible | (key_pos == query_pos)[None])[:, None]


def _replay_modes() -> tuple[contextlib.AbstractContextManager[None],
                             contextlib.AbstractContextManager[None]]:
    """For `checkpoint`: recomputation runs under the torch function modes the forward pass
    ran under (checkpoint itself replays only autocast and RNG state), e.g. the precision
    policy's attention kernel, so that recomputed tensors are the ones saved."""
    modes = torch.overrides._get_current_function_mode_stack()

    @contextlib.contextmanager
    def replay() -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            active = torch.overrides._get_current_function_mode_stack()
            for mode in modes:
                if not any(mode is other for other in active):
                    stack.enter_context(mode)
            yield

    return contextlib.nullcontext(), replay()


class Transformer(nn.Module):
    """Embeddings, blocks and the final LayerNorm (HF's `GPT2Model`): ids -> hidden states."""

    def __init__(self, config: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.head_dim = config.n_embd // config.n_head
        self.rope = (config.rope_base, config.rope_scale)  # (base, position scale)
        self.wte = nn.Embedding(vocab_size, config.n_embd)
        # a learnt vector per position (GPT-2), or none: RoPE turns queries and keys instead
        self.wpe = (nn.Embedding(config.block_size, config.n_embd)
                    if config.pos_embedding == "learned" else None)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.ln_f = norm(config, config.n_embd)
        # recompute each block's activations during backward (train.activation_checkpointing)
        self.activation_checkpointing = False

    def forward(
        self,
        idx: Tensor,
        kv_cache: KVCache | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        """Hidden states (B, T, C) (arguments as in `GPT.forward`)."""
        start = 0 if kv_cache is None else kv_cache.length
        own = None if kv_cache is None else kv_cache.context(idx.size(1))
        if own is not None:
            mask, position_ids = own
        else:
            mask = attention_rule(idx.size(1), start, attention_mask, idx.device)
        x = self.wte(idx)
        rope = None
        if self.wpe is not None and position_ids is None:
            # positions start, start + 1, ...: rows of the table, without building ids
            x = x + self.wpe.weight[start : start + idx.size(1)]
        elif self.wpe is not None:
            x = x + self.wpe(position_ids)
        else:
            if position_ids is None:
                position_ids = torch.arange(start, start + idx.size(1), device=idx.device)[None]
            rope = rotary_angles(position_ids, self.head_dim, *self.rope)
        x = self.drop(x) if self.training else x
        row_keys = None if kv_cache is None else kv_cache.row_keys(idx.size(1))
        ctx = AttentionContext(kv_cache, mask, rope, row_keys)
        recompute = self.activation_checkpointing and torch.is_grad_enabled() and self.training
        for block in self.h:
            # recomputed: the block's RNG state is replayed, so dropout masks are the same
            x = checkpoint(block, x, ctx, use_reentrant=False, context_fn=_replay_modes
                           ) if recompute else block(x, ctx)
        return self.ln_f(x)


class GPT(nn.Module):
    """GPT-2 language model: token ids in, next-token logits (and optionally the loss) out."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise GptkitError(
                "model.vocab_size is None; build the model with "
                "GPT.from_config(config, tokenizer.vocab_size)"
            )
        self.config = config
        self.transformer = Transformer(config, config.vocab_size)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # Weight tying (Press & Wolf 2017, as in GPT-2): one matrix embeds and un-embeds.
            self.lm_head.weight = self.transformer.wte.weight
        # (weight's identity, its transpose) for `unembed`: a cache, not state (no buffer)
        self._lm_head_t: tuple[tuple[object, ...], Tensor] | None = None
        self.apply(self._init_weights)
        # GPT-2 scales the residual projections by 1/sqrt(number of residual additions), so
        # the residual stream's variance does not grow with depth.
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @classmethod
    def from_config(cls, config: ModelConfig, vocab_size: int) -> GPT:
        """A fresh model whose vocabulary is the tokenizer's, unless the config pads it."""
        if config.vocab_size is None:
            config = config.updated(vocab_size=vocab_size)
        elif config.vocab_size < vocab_size:
            raise GptkitError(
                f"model.vocab_size ({config.vocab_size}) is smaller than the tokenizer's "
                f"vocabulary ({vocab_size}); set model.vocab_size to null or >= {vocab_size}"
            )
        return cls(config)

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        kv_cache: KVCache | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> tuple[Tensor, Tensor | None]:
        """Logits (B, T, vocab) for ids `idx` (B, T); the mean loss over targets != -100.

        `logits_to_keep` > 0 (Hugging Face's argument of that name) computes the logits of
        only the last that many positions, (B, logits_to_keep, vocab): a prompt's prefill
        needs only its last position's, and the output layer is a large share of the
        forward for a large vocabulary (GPT-2's 50k: 30% of a prompt's arithmetic).

        With `kv_cache`, `idx` continues the cached positions, and the cache is advanced.
        `attention_mask` and `position_ids` mean what they mean in Hugging Face's GPT-2:
        the mask (B, cached + T) marks real tokens with 1 and padding with 0; positions
        default to 0, 1, ... from the first cached position (left-padded batches pass
        `attention_mask.cumsum(-1) - 1`, as `generate` does). A 3-D mask (B, T, cached + T)
        instead says which keys each query may see (packed examples, `finetune.sft`).
        """
        self._check_input(idx, kv_cache)
        batch, tokens = idx.shape
        start = 0 if kv_cache is None else kv_cache.length
        if kv_cache is not None:
            if start + tokens > kv_cache.max_len:
                raise GptkitError(
                    f"KV cache holds {kv_cache.max_len} positions, {start + tokens} needed"
                )
            if batch != kv_cache.batch_size and not (batch == 1 and start == 0):
                raise GptkitError(
                    f"batch of {batch} does not match the KV cache's batch of "
                    f"{kv_cache.batch_size}"
                )
        if logits_to_keep < 0 or (logits_to_keep and targets is not None):
            raise GptkitError(f"logits_to_keep must be >= 0 and is for inference (no "
                              f"targets), got {logits_to_keep}")
        x = self.transformer(idx, kv_cache, attention_mask, position_ids)
        logits = self.unembed(x[:, -logits_to_keep:] if logits_to_keep else x)
        if kv_cache is not None:
            kv_cache.length += tokens
        loss = None
        if targets is not None:
            # The loss is taken in (at least) fp32 even under autocast: a bf16 log-softmax
            # over a large vocabulary loses precision.
            wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
            loss = F.cross_entropy(wide.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
        return logits, loss

    def unembed(self, x: Tensor) -> Tensor:
        """`lm_head(x)`: hidden states (B, T, C) -> logits (B, T, vocab).

        A decoding step on a CPU (one new position per row, no gradients) multiplies by a
        transposed copy of the weight instead, kept until the weight changes (another
        tensor, device or dtype, or an in-place update, which bumps its version): on one
        row, MKL reads a (C, vocab) matrix about twice as fast as the (vocab, C) one that
        `nn.Linear` holds, and for a 50k vocabulary that product is most of the step. The
        logits equal `lm_head`'s up to float rounding (~1e-6 at batch 1). Costs one more
        copy of the output matrix in memory while generating.
        """
        head = self.lm_head
        traced = torch.jit.is_tracing() or torch.compiler.is_compiling()  # exports see lm_head
        if (type(head) is not nn.Linear or x.size(1) != 1 or x.device.type != "cpu"
                or torch.is_grad_enabled() or traced):
            return head(x)
        w = head.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        if self._lm_head_t is None or self._lm_head_t[0] != key:
            self._lm_head_t = (key, w.t().contiguous())
        return x @ self._lm_head_t[1]

    def _check_input(self, idx: Tensor, kv_cache: KVCache | None) -> None:
        """Ids must be (batch, tokens >= 1) and fit in the context after the cached ones."""
        if idx.dim() != 2 or idx.size(1) == 0:
            raise GptkitError(
                f"model input must have shape (batch, tokens >= 1), got {tuple(idx.shape)}"
            )
        start = 0 if kv_cache is None else kv_cache.length
        if start + idx.size(1) > self.config.block_size:
            raise GptkitError(
                f"sequence of {start + idx.size(1)} tokens exceeds model.block_size "
                f"({self.config.block_size}); keep only the last {self.config.block_size} tokens"
            )

    def new_kv_cache(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """An empty cache for `batch_size` sequences of up to block_size positions."""
        weight = self.transformer.wte.weight
        c = self.config
        return KVCache(
            c.n_layer,
            batch_size,
            c.n_head,
            c.block_size,
            c.n_embd // c.n_head,
            device=weight.device if device is None else device,
            dtype=weight.dtype if dtype is None else dtype,
        )

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count, tied weights once.

        `non_embedding` leaves out the tables that are only looked up: the position
        embeddings, and the token embedding when the output layer has its own matrix. A tied
        token embedding is also the output layer, whose matrix multiply is real work
        (nanoGPT's convention).
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields shared ones once
        if non_embedding:
            if self.transformer.wpe is not None:
                n -= self.transformer.wpe.weight.numel()
            if not self.config.tie_embeddings:
                n -= self.transformer.wte.weight.numel()
        return n

    def flops_per_token(self, training: bool = True) -> int:
        """Estimated FLOPs per token at full context (PaLM paper, appendix B).

        Training (forward + backward) is 6N for the weights plus 12 * n_layer * n_embd *
        block_size for attention scores and their use; inference is a third of that.
        """
        c = self.config
        flops = 6 * self.num_params(non_embedding=True) + 12 * c.n_layer * c.n_embd * c.block_size
        return flops if training else flops // 3
