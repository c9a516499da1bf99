"""The model settings of a run whose context window differs from the run it starts from.

`gptkit train --init-from RUN --set model.block_size=N` keeps RUN's shape except the context:
a shorter one crops (nanoGPT's `crop_block_size`), a longer one extends by the method
`model.context_extension` names (null: the position kind's default). The arithmetic lives
here, on settings alone, so that a recipe is checked before any weights are read; the
tensors follow in `gptkit.context`, which applies these settings.

What each method means (and does to positions the old model already knew):
- learned `copy`: position p takes the old row p mod old_block_size; rows 0..old-1 are kept,
  so the logits of inputs the old model could read are unchanged.
- learned `interpolate`: the table linearly resampled to N rows (as ViT/BERT position
  interpolation); its first and last rows are kept, the ones between move.
- rope `interpolate`: position interpolation (Chen et al. 2023), positions scaled by old/new
  (`model.rope_scale`); the model reads position p as the old one read p * old/new.
- rope `ntk`: NTK-aware scaling, the angle base times (new/old)^(d/(d-2)) for head size d
  (`model.rope_base`): fast-turning channels (local order) barely change, slow ones stretch.
"""

from __future__ import annotations

from gptkit.config.choices import ContextExtension, PosEmbedding
from gptkit.config.sections import ModelConfig
from gptkit.errors import GptkitError

# The methods each position kind offers, its default first.
METHODS: dict[PosEmbedding, tuple[ContextExtension, ...]] = {
    "learned": ("copy", "interpolate"),
    "rope": ("interpolate", "ntk"),
}
# Position interpolation was shown to extend a RoPE model up to 16x (Chen et al. 2023,
# 2048 -> 32768); further, neighbouring positions become too close to tell apart, and a
# tiled or resampled position table is no better. One limit for every method.
MAX_FACTOR = 16


def resized_model_config(old: ModelConfig, block_size: int,
                         method: ContextExtension | None = None,
                         source: str = "the model") -> ModelConfig:
    """`old` with context `block_size`: cropped (no method may be given), kept (idem), or
    extended by `method` (None: the default for its position kind), which is recorded in
    `context_extension`. `source` names the old model in messages."""
    old_size = old.block_size
    if block_size <= old_size:
        if method is not None:
            change = "is" if block_size == old_size else "crops"
            raise GptkitError(
                f"model.context_extension={method} does nothing: model.block_size={block_size} "
                f"{change} {source}'s context ({old_size}); it applies when block_size grows: "
                "drop it, or set a larger model.block_size")
        return old.updated(block_size=block_size, context_extension=None)
    offered = METHODS[old.pos_embedding]
    chosen = offered[0] if method is None else method
    if chosen not in offered:
        raise GptkitError(
            f"model.context_extension={chosen} does not apply to {source}'s "
            f"{old.pos_embedding} positions; use {_either(offered)}")
    if block_size > MAX_FACTOR * old_size:
        raise GptkitError(
            f"model.block_size={block_size} extends {source}'s context ({old_size}) more than "
            f"{MAX_FACTOR}x, beyond what {old.pos_embedding} positions extended by {chosen} "
            f"support; extend to at most {MAX_FACTOR * old_size}, train, then extend again")
    factor = block_size / old_size
    extra: dict[str, float] = {}
    if old.pos_embedding == "rope" and chosen == "interpolate":
        extra["rope_scale"] = old.rope_scale / factor
    elif chosen == "ntk":
        head_dim = old.n_embd // old.n_head
        exponent = head_dim / (head_dim - 2) if head_dim > 2 else 1.0
        extra["rope_base"] = old.rope_base * factor ** exponent
    return old.updated(block_size=block_size, context_extension=chosen, **extra)


def _either(values: tuple[str, ...]) -> str:
    """'a or b' for a position kind's methods (`choices.one_of` takes a Literal)."""
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"

