"""Logits processors: the rules that reshape next-token scores before a token is chosen.

Each class has the name, constructor arguments and `(input_ids, scores) -> scores` call of
its counterpart in Hugging Face's `transformers.generation.logits_process`, and keeps or drops
exactly the tokens it would (the parity tests check this on random inputs), so a setting means
the same in gptkit and in `transformers`. `input_ids` is the whole sequence so far, prompt
(and its left padding) included, as in `transformers`. `build_processors` chains them in the
order `transformers`' `generate` applies them.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from gptkit.errors import GptkitError


class LogitsProcessor(Protocol):
    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor: ...


class LogitsProcessorList(list[LogitsProcessor]):
    """Processors applied in order, itself a processor."""

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        for processor in self:
            scores = processor(input_ids, scores)
        return scores

    def row_key(self) -> tuple[Hashable, ...] | None:
        """What the chain does, when each of its processors reads nothing but each row's own
        scores (the warpers and logit bias set a `row_key`): chains with equal keys give a
        row the same scores whether it is processed alone or stacked with other requests'
        rows, so a server processes them in one call. None when one reads the sequence so
        far (penalties, n-grams, banned words, minimum length)."""
        keys = [getattr(processor, "row_key", None) for processor in self]
        return None if any(key is None for key in keys) else tuple(keys)


def _token_mask(ids: Tensor, vocab: int) -> Tensor:
    """(rows, vocab) bool: which ids occur in each row; ids >= vocab are ignored."""
    mask = torch.zeros(ids.size(0), vocab + 1, dtype=torch.bool, device=ids.device)
    return mask.scatter_(1, ids.clamp(max=vocab), True)[:, :vocab]


class RepetitionPenaltyLogitsProcessor:
    """Makes tokens already in the sequence (prompt included) less likely (CTRL's penalty):
    positive scores are divided by `penalty`, negative ones multiplied, so > 1 discourages
    repeats and < 1 encourages them. `prompt_ignore_length` (per row) skips leading ids, which
    `generate` sets to each row's left padding so that padding is never penalised."""

    def __init__(self, penalty: float, prompt_ignore_length: int | Tensor | None = None) -> None:
        if not penalty > 0:
            raise GptkitError(f"repetition_penalty must be > 0 (got {penalty}); 1 means none")
        self.penalty = penalty
        self.prompt_ignore_length = prompt_ignore_length

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        vocab = scores.size(-1)
        ignore = self.prompt_ignore_length
        if isinstance(ignore, int):
            input_ids = input_ids[:, ignore:]
        elif ignore is not None:
            position = torch.arange(input_ids.size(1), device=input_ids.device)
            skipped = position[None, :] < ignore.to(input_ids.device)[:, None]
            input_ids = input_ids.masked_fill(skipped, vocab)  # out of range: ignored
        seen = _token_mask(input_ids, vocab)
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen, penalised, scores)


class FrequencyPresencePenaltyLogitsProcessor:
    """OpenAI's `frequency_penalty` and `presence_penalty`: a token's score loses
    `presence_penalty` if it occurs among the generated tokens and `frequency_penalty` times
    the number of times it occurs there (negative values encourage repeats). As in OpenAI's
    API (its docs: "based on their existing frequency in the text so far", counted over the
    completion, as vLLM and llama.cpp's server do too) only the tokens generated so far
    count, never the prompt's: `prompt_length` is the (padded) prompt width to skip.
    `transformers` has no counterpart (its repetition penalty scales, and counts the prompt).
    """

    def __init__(self, frequency_penalty: float, presence_penalty: float,
                 prompt_length: int) -> None:
        for name, value in (("frequency_penalty", frequency_penalty),
                            ("presence_penalty", presence_penalty)):
            if not -2 <= value <= 2:
                raise GptkitError(f"{name} must be in [-2, 2] (got {value}); 0 means none")
        self.frequency_penalty = frequency_penalty
        self.presence_penalty = presence_penalty
        self.prompt_length = prompt_length

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        vocab = scores.size(-1)
        generated = input_ids[:, self.prompt_length :].clamp(max=vocab)  # vocab: ignored
        counts = torch.zeros(scores.size(0), vocab + 1, dtype=scores.dtype,
                             device=scores.device)
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        counts = counts[:, :vocab]
        return (scores - self.frequency_penalty * counts
                - self.presence_penalty * (counts > 0).to(scores.dtype))


class LogitBiasLogitsProcessor:
    """OpenAI's `logit_bias`: adds a fixed number to chosen tokens' scores at every step
    (-100 in effect bans a token, 100 forces it). `transformers`' `SequenceBiasLogitsProcessor`
    with one-token sequences does the same."""

    def __init__(self, logit_bias: dict[int, float]) -> None:
        bad = [(i, b) for i, b in logit_bias.items() if i < 0 or not -100 <= b <= 100]
        if not logit_bias or bad:
            raise GptkitError(f"logit_bias must map token ids >= 0 to biases in [-100, 100] "
                              f"(got {logit_bias!r})")
        self.ids = list(logit_bias)
        self.bias = list(logit_bias.values())
        self.row_key = ("logit_bias", tuple(logit_bias.items()))

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        vocab = scores.size(-1)
        too_big = [i for i in self.ids if i >= vocab]
        if too_big:
            raise GptkitError(
                f"logit_bias token id {too_big[0]} is outside the vocabulary [0, {vocab})")
        bias = torch.zeros(vocab, dtype=scores.dtype, device=scores.device)
        bias[self.ids] = torch.tensor(self.bias, dtype=scores.dtype, device=scores.device)
        return scores + bias


class NoRepeatNGramLogitsProcessor:
    """Forbids any token that would complete an n-gram already present in the sequence
    (prompt included), so no n-gram of `ngram_size` tokens occurs twice."""

    def __init__(self, ngram_size: int) -> None:
        if ngram_size < 1:
            raise GptkitError(f"no_repeat_ngram_size must be >= 1 here (got {ngram_size})")
        self.ngram_size = ngram_size

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        n, length = self.ngram_size, input_ids.size(1)
        if length < n:  # no complete n-gram yet
            return scores
        ngrams = input_ids.unfold(1, n, 1)  # (rows, length - n + 1, n): every n-gram so far
        context = input_ids[:, length - n + 1 :]  # the n - 1 ids the next token would extend
        repeats = (ngrams[..., :-1] == context[:, None, :]).all(dim=-1)
        vocab = scores.size(-1)
        banned = _token_mask(torch.where(repeats, ngrams[..., -1], vocab), vocab)
        return scores.masked_fill(banned, -math.inf)


class NoBadWordsLogitsProcessor:
    """Forbids token sequences (banned words or phrases): a one-token sequence is never
    produced; a longer one loses its last token whenever the sequence ends with the rest.
    A lone `eos_token_id` is never banned (generation must be able to end)."""

    def __init__(
        self, bad_words_ids: Sequence[Sequence[int]], eos_token_id: int | None = None
    ) -> None:
        words = [list(word) for word in bad_words_ids]
        if not words or any(not word or min(word) < 0 for word in words):
            raise GptkitError(
                f"bad_words_ids must be a non-empty list of non-empty token id lists "
                f"(got {bad_words_ids!r})"
            )
        words = [word for word in words if word != [eos_token_id]]
        self.single = sorted({word[0] for word in words if len(word) == 1})
        self.phrases = sorted({(tuple(word[:-1]), word[-1]) for word in words if len(word) > 1})

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        vocab = scores.size(-1)
        too_big = [i for i in self.single + [last for _, last in self.phrases] if i >= vocab]
        too_big += [i for prefix, _ in self.phrases for i in prefix if i >= vocab]
        if too_big:
            raise GptkitError(
                f"banned token id {too_big[0]} is outside the vocabulary [0, {vocab})"
            )
        banned = torch.zeros_like(scores, dtype=torch.bool)
        banned[:, self.single] = True
        length = input_ids.size(1)
        for prefix, last in self.phrases:
            if len(prefix) <= length:
                tail = input_ids[:, length - len(prefix) :]
                ends_with_prefix = (tail == torch.tensor(prefix, device=tail.device)).all(dim=-1)
                banned[:, last] |= ends_with_prefix
        return scores.masked_fill(banned, -math.inf)


class MinNewTokensLengthLogitsProcessor:
    """Forbids the end-of-sequence token until `min_new_tokens` tokens follow the prompt
    (`prompt_length_to_skip` ids, padding included)."""

    def __init__(self, prompt_length_to_skip: int, min_new_tokens: int, eos_token_id: int) -> None:
        if prompt_length_to_skip < 0 or min_new_tokens < 0:
            raise GptkitError(
                f"prompt_length_to_skip and min_new_tokens must be >= 0 "
                f"(got {prompt_length_to_skip}, {min_new_tokens})"
            )
        self.prompt_length_to_skip = prompt_length_to_skip
        self.min_new_tokens = min_new_tokens
        self.eos_token_id = eos_token_id

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if input_ids.size(1) - self.prompt_length_to_skip >= self.min_new_tokens:
            return scores
        eos = torch.arange(scores.size(-1), device=scores.device) == self.eos_token_id
        return scores.masked_fill(eos, -math.inf)


class TemperatureLogitsWarper:
    """Divides the scores: below 1 sharpens the distribution, above 1 flattens it.

    A temperature so small that the division overflows (1e-45, or 1e-320, which is 0 in
    float32) gives a row its limit instead of infinities and NaN: all probability on the
    highest score, as greedy decoding. The CLI, the server and Python share this."""

    def __init__(self, temperature: float) -> None:
        if not temperature > 0:
            raise GptkitError(f"temperature must be > 0 here (got {temperature}); 0 means greedy")
        self.temperature = temperature
        self.row_key = ("temperature", temperature)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        scaled = scores / self.temperature
        # dividing by >= 1 cannot overflow; nor did it when every scaled score is finite
        # (one check, instead of building the limit at every step)
        if self.temperature >= 1 or bool(scaled.isfinite().all()):
            return scaled
        overflowed = (~scaled.isfinite() & scores.isfinite()).any(dim=-1, keepdim=True)
        limit = torch.full_like(scores, -math.inf).scatter(
            -1, scores.argmax(dim=-1, keepdim=True), 0.0)
        return torch.where(overflowed, limit, scaled)


class TopKLogitsWarper:
    """Keeps the `top_k` highest scores (and any tied with the k-th), drops the rest."""

    def __init__(
        self, top_k: int, filter_value: float = -math.inf, min_tokens_to_keep: int = 1
    ) -> None:
        if top_k < 1:
            raise GptkitError(f"top_k must be >= 1 (got {top_k})")
        self.top_k = max(top_k, min_tokens_to_keep)
        self.filter_value = filter_value
        self.row_key = ("top_k", self.top_k, filter_value)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        k = min(self.top_k, scores.size(-1))
        if k == scores.size(-1):  # keeps every token (top_k 200 of a 65-character vocabulary)
            return scores
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
        self.row_key = ("top_p", top_p, filter_value, min_tokens_to_keep)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        # Ascending order: a token is dropped when it and every less likely token together
        # hold no more than 1 - top_p, i.e. the more likely tokens already reach top_p.
        sorted_scores, order = torch.sort(scores, dim=-1)
        mass_up_to = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = mass_up_to <= 1 - self.top_p
        drop_sorted[..., -self.min_tokens_to_keep :] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        return scores.masked_fill(drop, self.filter_value)


class TypicalLogitsWarper:
    """Typical sampling (Meister et al. 2022): ranks tokens by how close their surprise
    (-log p) is to the distribution's entropy and keeps the closest ones until they hold
    `mass` of the probability; the most likely token may be dropped."""

    def __init__(
        self, mass: float = 0.9, filter_value: float = -math.inf, min_tokens_to_keep: int = 1
    ) -> None:
        if not 0 < mass < 1:
            raise GptkitError(f"typical_p must be in (0, 1) here (got {mass}); 1 means off")
        self.mass = mass
        self.filter_value = filter_value
        self.min_tokens_to_keep = min_tokens_to_keep
        self.row_key = ("typical_p", mass, filter_value, min_tokens_to_keep)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        log_p = scores.log_softmax(dim=-1)
        entropy = -(log_p * log_p.exp()).nansum(dim=-1, keepdim=True)  # 0 * -inf = nan: skip
        distance = (-log_p - entropy).abs()
        sorted_distance, order = torch.sort(distance, dim=-1)
        mass_up_to = scores.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
        # the last kept rank is the first whose running mass reaches `mass`
        last = (mass_up_to < self.mass).sum(dim=-1).clamp(max=scores.size(-1) - 1)
        drop_sorted = sorted_distance > sorted_distance.gather(-1, last[:, None])
        drop_sorted[..., : self.min_tokens_to_keep] = False
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        return scores.masked_fill(drop, self.filter_value)


def build_processors(
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    *,
    typical_p: float = 1.0,
    repetition_penalty: float = 1.0,
    frequency_penalty: float = 0.0,
    presence_penalty: float = 0.0,
    logit_bias: dict[int, float] | None = None,
    no_repeat_ngram_size: int = 0,
    bad_words_ids: Sequence[Sequence[int]] | None = None,
    min_new_tokens: int = 0,
    prompt_length: int = 0,
    eos_token_id: int | None = None,
    padding_lengths: Tensor | None = None,
    min_tokens_to_keep: int = 1,
) -> LogitsProcessorList:
    """The chain `transformers`' `generate` builds for these settings, in its order.

    Processors first (repetition penalty, then OpenAI's frequency/presence penalties and
    logit bias, which `transformers` lacks, then n-gram blocking, banned words, minimum new
    tokens), then, only when sampling (temperature > 0; 0 is greedy), the warpers:
    temperature, top-k, top-p, typical. Settings at their neutral value add nothing.
    `prompt_length` is the (padded) prompt width; `padding_lengths` each row's left padding;
    beam sampling keeps `min_tokens_to_keep=2`, as `transformers` does.
    """
    processors = LogitsProcessorList()
    if repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(repetition_penalty, padding_lengths))
    if frequency_penalty != 0 or presence_penalty != 0:
        processors.append(FrequencyPresencePenaltyLogitsProcessor(
            frequency_penalty, presence_penalty, prompt_length))
    if logit_bias:
        processors.append(LogitBiasLogitsProcessor(logit_bias))
    if no_repeat_ngram_size > 0:
        processors.append(NoRepeatNGramLogitsProcessor(no_repeat_ngram_size))
    if bad_words_ids:
        processors.append(NoBadWordsLogitsProcessor(bad_words_ids, eos_token_id))
    if min_new_tokens > 0 and eos_token_id is not None:
        processors.append(
            MinNewTokensLengthLogitsProcessor(prompt_length, min_new_tokens, eos_token_id)
        )
    if temperature == 0:  # greedy: warpers would not change the argmax
        return processors
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_k is not None and top_k != 0:
        processors.append(TopKLogitsWarper(top_k, min_tokens_to_keep=min_tokens_to_keep))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p, min_tokens_to_keep=min_tokens_to_keep))
    if typical_p < 1.0:
        processors.append(TypicalLogitsWarper(typical_p, min_tokens_to_keep=min_tokens_to_keep))
    return processors
