"""Text generation: logits processors, greedy and sampled decoding with a KV cache, streaming.

The processors mirror Hugging Face's `transformers.generation.logits_process` (names,
`(input_ids, scores) -> scores` calls, the same keep/drop rules) so that later additions
(repetition penalty, n-gram blocking, beam search) can follow their semantics. Decoding is a
Python generator: streaming is free and the caller decides when to stop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch
from torch import Tensor

from gptkit.config import SampleConfig, sample_checks
from gptkit.errors import GptkitError
from gptkit.model import GPT, KVCache


class LogitsProcessor(Protocol):
    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor: ...


class LogitsProcessorList(list[LogitsProcessor]):
    """Processors applied in order, itself a processor."""

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


class TemperatureLogitsWarper:
    """Divides the scores: below 1 sharpens the distribution, above 1 flattens it."""

    def __init__(self, temperature: float) -> None:
        if not temperature > 0:
            raise GptkitError(f"temperature must be > 0 here (got {temperature}); 0 means greedy")
        self.temperature = temperature

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        return scores / self.temperature


class TopKLogitsWarper:
    """Keeps the `top_k` highest scores (and any tied with the k-th), drops the rest."""

    def __init__(
        self, top_k: int, filter_value: float = -math.inf, min_tokens_to_keep: int = 1
    ) -> None:
        if top_k < 1:
            raise GptkitError(f"top_k must be >= 1 (got {top_k})")
        self.top_k = max(top_k, min_tokens_to_keep)
        self.filter_value = filter_value

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        k = min(self.top_k, scores.size(-1))
        kth = torch.topk(scores, k, dim=-1).values[..., -1:]
        return scores.masked_fill(scores < kth, self.filter_value)


class TopPLogitsWarper:
    """Nucleus sampling: keeps the smallest set of tokens whose probability adds up to at
    least `top_p` (always at least `min_tokens_to_keep`), drops the rest."""

    def __init__(
        self, top_p: float, filter_value: float = -math.inf, min_tokens_to_keep: int = 1
    ) -> None:
        if not 0 < top_p <= 1:
            raise GptkitError(f"top_p must be in (0, 1] (got {top_p})")
        self.top_p = top_p
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        # Ascending order: a token is dropped when it and every less likely token together
        # hold no more than 1 - top_p, i.e. the more likely tokens already reach top_p.
        sorted_scores, order = torch.sort(scores, dim=-1)
        mass_up_to = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = mass_up_to <= 1 - self.top_p
        drop_sorted[..., -self.min_tokens_to_keep :] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        return scores.masked_fill(drop, self.filter_value)


def build_processors(
    temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0
) -> LogitsProcessorList:
    """The sampling chain in Hugging Face's order: temperature, top-k, top-p."""
    processors = LogitsProcessorList()
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_k is not None:
        processors.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    return processors


def _check_settings(
    max_new_tokens: int, temperature: float, top_k: int | None, top_p: float, num_samples: int
) -> None:
    settings = SampleConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        num_samples=num_samples,
    )
    for ok, message in sample_checks(settings, prefix=""):
        if not ok:
            raise GptkitError(message)


def _prompt_ids(model: GPT, prompt: Sequence[int]) -> Tensor:
    """The prompt as a (1, P) tensor on the model's device, cut to its last block_size ids."""
    ids = [int(i) for i in prompt]
    if not ids:
        raise GptkitError("the prompt has no tokens; give at least one token id")
    vocab = model.transformer.wte.num_embeddings
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise GptkitError(f"prompt token id {bad[0]} is outside the vocabulary [0, {vocab})")
    device = model.transformer.wte.weight.device
    return torch.tensor(ids[-model.config.block_size :], dtype=torch.long, device=device)[None]


def _last_logits(model: GPT, idx: Tensor, kv_cache: KVCache | None) -> Tensor:
    """Logits (fp32 or wider) of the last position, computed in eval mode (no dropout)
    whatever the caller's mode, which is restored: generation never changes the model."""
    was_training = model.training
    model.eval()
    try:
        logits, _ = model(idx, kv_cache=kv_cache)
    finally:
        model.train(was_training)
    last = logits[:, -1]
    return last.to(torch.promote_types(last.dtype, torch.float32))


@torch.no_grad()
def generate_tokens(
    model: GPT,
    prompt: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    num_samples: int = 1,
    seed: int | None = None,
    eot_id: int | None = None,
    use_cache: bool = True,
) -> Iterator[Tensor]:
    """Yield the next token of every sample, a (num_samples,) int64 tensor per step.

    temperature 0 is greedy. Stops early once every sample has produced `eot_id`; a sample
    that has finished keeps yielding `eot_id`. Randomness comes from a private generator,
    never the global one. While the sequence fits in block_size, each step feeds one token
    through the KV cache; beyond it the window slides and the last block_size tokens are
    recomputed without a cache.
    """
    _check_settings(max_new_tokens, temperature, top_k, top_p, num_samples)
    ids = _prompt_ids(model, prompt)
    if max_new_tokens == 0:
        return
    block_size = model.config.block_size
    device = ids.device
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # fresh entropy, still without touching the global generator
    else:
        generator.manual_seed(seed)
    processors = build_processors(temperature, top_k, top_p) if temperature > 0 else None
    kv_cache = model.new_kv_cache(num_samples) if use_cache else None
    seq = ids.expand(num_samples, -1)
    done = torch.zeros(num_samples, dtype=torch.bool, device=device)
    # The prompt is the same for every sample: prefill it once (the cache broadcasts it).
    logits = _last_logits(model, ids, kv_cache).expand(num_samples, -1)
    for step in range(max_new_tokens):
        if processors is None:  # greedy
            token = logits.argmax(dim=-1)
        else:
            probs = processors(seq, logits).softmax(dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        if eot_id is not None:
            token = token.masked_fill(done, eot_id)
            done = done | (token == eot_id)
        seq = torch.cat([seq, token[:, None]], dim=1)
        yield token
        if step == max_new_tokens - 1 or (eot_id is not None and bool(done.all())):
            return
        if kv_cache is not None and kv_cache.length < block_size:
            logits = _last_logits(model, token[:, None], kv_cache)
        else:
            logits = _last_logits(model, seq[:, -block_size:], None)


def generate(
    model: GPT,
    prompt: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    num_samples: int = 1,
    seed: int | None = None,
    eot_id: int | None = None,
    use_cache: bool = True,
) -> Tensor:
    """The prompt used (its last block_size ids) followed by the new tokens, per sample:
    (num_samples, len(prompt_used) + steps). See `generate_tokens`."""
    steps = generate_tokens(
        model,
        prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        num_samples=num_samples,
        seed=seed,
        eot_id=eot_id,
        use_cache=use_cache,
    )
    columns = [token[:, None] for token in steps]
    start = _prompt_ids(model, prompt).expand(num_samples, -1)
    return torch.cat([start, *columns], dim=1)


class TextTokenizer(Protocol):
    """What `sample_text` needs of `gptkit.tokenizers.Tokenizer`."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    @property
    def eot_id(self) -> int | None: ...


def sample_text(
    model: GPT,
    tokenizer: TextTokenizer,
    prompt: str | None,
    cfg: SampleConfig,
    stream: Callable[[int, str], None] | None = None,
) -> list[str]:
    """Generate `cfg.num_samples` texts, each the prompt plus its continuation up to EOT.

    prompt None starts from the end-of-text token (a fresh document); `cfg.prompt` is not
    read, the caller passes it as `prompt`. `stream(i, piece)`
    receives sample i's text as it appears, the prompt first, so the pieces of a sample join
    to its returned text. Text is held back while it ends in U+FFFD, i.e. while a byte-level
    token has produced only part of a UTF-8 character.
    """
    eot_id = tokenizer.eot_id
    if prompt is None:
        if eot_id is None:
            raise GptkitError(
                "this tokenizer has no end-of-text token to start from; give a prompt"
            )
        prompt_ids, head = [eot_id], ""
    else:
        prompt_ids, head = tokenizer.encode(prompt), prompt
        if not prompt_ids:
            raise GptkitError(f"prompt {prompt!r} encodes to no tokens; give a non-empty prompt")
    n = cfg.num_samples
    new_ids: list[list[int]] = [[] for _ in range(n)]
    pending: list[list[int]] = [[] for _ in range(n)]  # ids whose text is not shown yet
    shown = [head] * n
    finished = [False] * n
    if stream is not None and head:
        for i in range(n):
            stream(i, head)
    steps = generate_tokens(
        model,
        prompt_ids,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        num_samples=n,
        seed=cfg.seed,
        eot_id=eot_id,
    )
    for token in steps:
        for i, t in enumerate(token.tolist()):
            if finished[i] or t == eot_id:
                finished[i] = True
                continue
            new_ids[i].append(t)
            if stream is None:
                continue
            pending[i].append(t)
            piece = tokenizer.decode(pending[i])
            if piece and not piece.endswith("\ufffd"):
                stream(i, piece)
                shown[i] += piece
                pending[i] = []
    texts = [head + tokenizer.decode(ids) for ids in new_ids]
    if stream is not None:
        for i, text in enumerate(texts):
            if len(text) > len(shown[i]) and text.startswith(shown[i]):
                stream(i, text[len(shown[i]) :])
    return texts
