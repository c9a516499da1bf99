"""What greedy, sampled and beam decoding share: prompt rows, the model's next-token
scores through the KV cache, random generators and the logits processors of a setting.

Prompts of different lengths are left-padded and get the attention mask and position ids
`transformers` derives from it; each prompt's rows stay together (its samples or beams). A
sequence longer than the model's context slides its window (the last block_size tokens are
recomputed, positions restarting at 0; GPT-2 in `transformers` cannot go past its context,
so parity holds only within it). Randomness comes from a private `torch.Generator`; on CPU
its stream equals the global one's after `torch.manual_seed(seed)`, so even sampled tokens
match `transformers` under the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from gptkit.errors import GptkitError
from gptkit.generation.config import GenerationConfig
from gptkit.generation.logits_process import LogitsProcessorList, build_processors
from gptkit.model import GPT, KVCache

# One prompt (token ids) or a batch of prompts.
Prompts = Sequence[int] | Sequence[Sequence[int]] | Tensor


def prompt_list(prompt: Prompts) -> list[list[int]]:
    items: list[Any] = prompt.tolist() if isinstance(prompt, Tensor) else list(prompt)
    if items and isinstance(items[0], (Sequence, Tensor)):
        return [[int(i) for i in p] for p in items]
    return [[int(i) for i in items]]


def prompt_rows(
    model: GPT, prompt: Prompts, repeat: int, pad_id: int
) -> tuple[Tensor, Tensor | None]:
    """The prompts, each cut to its last block_size ids, left-padded with `pad_id` and each
    repeated `repeat` times in a row (as `transformers` expands them): (rows, width), and the
    attention mask (1 real, 0 padding), None when no prompt needs padding."""
    prompts = prompt_list(prompt)
    vocab = model.transformer.wte.num_embeddings
    for p in prompts:
        if not p:
            raise GptkitError("a prompt has no tokens; give at least one token id")
        bad = [i for i in p if not 0 <= i < vocab]
        if bad:
            raise GptkitError(f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab})")
    prompts = [p[-model.config.block_size :] for p in prompts]
    width = max(len(p) for p in prompts)
    device = model.transformer.wte.weight.device
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    ids, mask = ids.repeat_interleave(repeat, dim=0), mask.repeat_interleave(repeat, dim=0)
    return ids, (None if bool(mask.all()) else mask)


def positions_of(mask: Tensor) -> Tensor:
    """Position ids as `transformers` derives them from a mask: 0, 1, ... from each row's
    first real token, 0 on padding."""
    return (mask.cumsum(dim=-1) - 1).masked_fill(mask == 0, 0)


def generator_for(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # fresh entropy, still without touching the global generator
    else:
        generator.manual_seed(seed)
    return generator


def sampling_groups(
    prompts: int, num_samples: int, seed: int | None,
    seed_groups: Sequence[tuple[int, int | None]] | None, device: torch.device,
) -> list[tuple[int, torch.Generator]]:
    """(rows, generator) of each group of consecutive rows that samples on its own."""
    if seed_groups is None:
        return [(prompts * num_samples, generator_for(seed, device))]
    counts = [count for count, _ in seed_groups]
    if any(count < 1 for count in counts) or sum(counts) != prompts:
        raise GptkitError(f"seed_groups must split the {prompts} prompts into groups of at "
                          f"least one prompt each, got sizes {counts}")
    return [(count * num_samples, generator_for(s, device)) for count, s in seed_groups]


class TokenBuffer:
    """The rows' tokens so far, `ids` (rows, length), with room to append in place: a step
    writes one column instead of copying every row into a new tensor (`torch.cat`). The
    room doubles when full, so a long generation still copies each token O(1) times."""

    def __init__(self, ids: Tensor, room: int) -> None:
        self.data = ids.new_empty(ids.size(0), ids.size(1) + max(room, 1))
        self.data[:, : ids.size(1)] = ids
        self.length = ids.size(1)

    @property
    def ids(self) -> Tensor:
        """(rows, length): a view, valid until the next `append`."""
        return self.data[:, : self.length]

    def append(self, token: Tensor) -> Tensor:
        """Add one token (rows,) to every row; returns the new `ids`."""
        if self.length == self.data.size(1):
            self.data = torch.cat([self.data, torch.empty_like(self.data)], dim=1)
        self.data[:, self.length] = token
        self.length += 1
        return self.ids


class Decoder:
    """Next-token scores of a batch of growing sequences.

    While the sequences fit in block_size, each call feeds only the new tokens through the
    KV cache; beyond it the window slides and the last block_size tokens are recomputed
    without a cache. The model runs in eval mode (no dropout) whatever the caller's mode,
    which is restored: generation never changes the model.
    """

    def __init__(self, model: GPT, rows: int, mask: Tensor | None, use_cache: bool) -> None:
        self.model = model
        self.cache: KVCache | None = model.new_kv_cache(rows) if use_cache else None
        self.mask = mask

    def scores(self, seq: Tensor, shared: bool = False) -> Tensor:
        """fp32 logits (rows, vocab) of the token after each row of `seq` (rows, length).

        `shared`: every row holds the same unpadded prompt, so one row is computed (the
        cache broadcasts it to all rows)."""
        rows, length = seq.shape
        block_size = self.model.config.block_size
        if self.mask is not None and self.mask.size(1) < length:
            grown = self.mask.new_ones(rows, length - self.mask.size(1))
            self.mask = torch.cat([self.mask, grown], dim=1)
        if self.cache is not None and length <= block_size:
            new_from, window_from = self.cache.length, 0
        else:
            self.cache = None
            new_from = window_from = max(length - block_size, 0)
        idx = seq[:1, new_from:] if shared else seq[:, new_from:]
        mask = positions = None
        if self.mask is not None:
            mask = self.mask[:, window_from:]
            positions = positions_of(mask)[:, new_from - window_from :]
        was_training = self.model.training
        if was_training:  # train()/eval() walk every module: a cost per token worth skipping
            self.model.eval()
        try:
            logits, _ = self.model(idx, kv_cache=self.cache, attention_mask=mask,
                                   position_ids=positions, logits_to_keep=1)
        finally:
            if was_training:
                self.model.train()
        return logits[:, -1].float().expand(rows, -1)

    def reorder(self, rows: Tensor) -> None:
        """Beam search: row i continues what row `rows[i]` held."""
        if self.cache is not None:
            self.cache.reorder(rows)


def processors_for(
    settings: GenerationConfig, ids: Tensor, mask: Tensor | None, eot_id: int | None,
    min_tokens_to_keep: int = 1,
) -> LogitsProcessorList:
    """The logits processors of `settings` for prompt rows `ids` (left-padded where `mask`
    has zeros): they need the rows' width, the end-of-text id and each row's padding."""
    if settings.bad_words:
        raise GptkitError(
            "bad_words are text, which token-level generation cannot read; pass them to "
            "sample_text (which encodes them with the tokenizer) or give bad_words_ids")
    return build_processors(
        settings.temperature, settings.top_k, settings.top_p, typical_p=settings.typical_p,
        repetition_penalty=settings.repetition_penalty,
        frequency_penalty=settings.frequency_penalty,
        presence_penalty=settings.presence_penalty, logit_bias=settings.logit_bias,
        no_repeat_ngram_size=settings.no_repeat_ngram_size,
        bad_words_ids=settings.bad_words_ids, min_new_tokens=settings.min_new_tokens,
        prompt_length=ids.size(1), eos_token_id=eot_id,
        padding_lengths=None if mask is None else mask.argmax(dim=1),  # first real token
        min_tokens_to_keep=min_tokens_to_keep,
    )
