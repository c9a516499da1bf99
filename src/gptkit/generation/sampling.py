"""Greedy and sampled decoding (Hugging Face's `generate` without beams), and `generate`.

Every setting means what it means in `transformers`, and the parity tests check that gptkit
and `transformers` pick the same tokens for the same weights; the end-of-text token plays
`eos_token_id` and `pad_token_id`. Decoding is a Python generator: streaming is free and the
caller decides when to stop.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gptkit.errors import GptkitError
from gptkit.generation.beam import beam_search
from gptkit.generation.config import GenerationConfig
from gptkit.generation.decoding import (
    Decoder,
    Prompts,
    TokenBuffer,
    processors_for,
    prompt_list,
    prompt_rows,
    sampling_groups,
)
from gptkit.model import GPT


@dataclass
class Step:
    """One decoding step of every row: the tokens chosen and, when asked for, the fp32
    log-probabilities (rows, vocab) of the distribution each was drawn from: the model's
    scores after the logits processors (greedy: without the warpers, which it ignores;
    the raw model's when no processor applies, as at temperature 1 with nothing else set)."""

    token: Tensor
    logprobs: Tensor | None = None


def generate_tokens(
    model: GPT,
    prompt: Prompts,
    settings: GenerationConfig,
    *,
    eot_id: int | None = None,
    use_cache: bool = True,
    seed_groups: Sequence[tuple[int, int | None]] | None = None,
) -> Generator[Tensor, None, None]:
    """Yield the next token of every row, a (rows,) int64 tensor per step (`generate_steps`
    without log-probabilities)."""
    steps = generate_steps(model, prompt, settings, eot_id=eot_id, use_cache=use_cache,
                           seed_groups=seed_groups)
    try:
        for step in steps:
            yield step.token
    finally:
        steps.close()


@torch.no_grad()
def generate_steps(
    model: GPT,
    prompt: Prompts,
    settings: GenerationConfig,
    *,
    eot_id: int | None = None,
    use_cache: bool = True,
    seed_groups: Sequence[tuple[int, int | None]] | None = None,
    logprobs: bool = False,
) -> Generator[Step, None, None]:
    """Yield the next token of every row, a (rows,) int64 tensor per step, in a `Step` that
    also holds the log-probabilities it was drawn from when `logprobs` is true (computed
    only then).

    `prompt` is one list of token ids or a batch of them; rows = prompts x
    `settings.num_samples`, each prompt's samples together. Temperature 0 is greedy. Stops
    early once every row has produced `eot_id`; a finished row keeps yielding `eot_id`
    (transformers' padding). Stop strings act on text: the caller applies `settings.stop`
    (`sample_text`, the server); `settings.prompt` is not read.

    `seed_groups` [(prompts, seed), ...] splits the prompts, in order, into groups that each
    sample from a generator of their own (`settings.seed` is then unused; a None seed draws
    fresh entropy): a group draws exactly what it would draw alone, so the requests a server
    batches together do not change each other's samples (only their logits may differ, by
    float rounding, since padding changes the shapes computed).
    """
    if settings.num_beams > 1:
        raise GptkitError(f"num_beams={settings.num_beams} is beam search: call beam_search "
                          "or generate, which run it")
    num_samples = settings.num_samples
    seq, mask = prompt_rows(model, prompt, num_samples, 0 if eot_id is None else eot_id)
    if settings.max_new_tokens == 0:
        return
    processors = processors_for(settings, seq, mask, eot_id)
    prompts = len(prompt_list(prompt))
    groups = sampling_groups(prompts, num_samples, settings.seed, seed_groups, seq.device)
    decoder = Decoder(model, seq.size(0), mask, use_cache)
    done = torch.zeros(seq.size(0), dtype=torch.bool, device=seq.device)
    logits = decoder.scores(seq, shared=prompts == 1)  # one prompt: once for all its samples
    tokens = TokenBuffer(seq, min(settings.max_new_tokens, model.config.block_size))
    for step in range(settings.max_new_tokens):
        scores = processors(seq, logits)
        if settings.temperature == 0:
            token = scores.argmax(dim=-1)
        elif len(groups) == 1:
            token = torch.multinomial(scores.softmax(dim=-1), 1, generator=groups[0][1])[:, 0]
        else:
            probs = scores.softmax(dim=-1).split([rows for rows, _ in groups])
            token = torch.cat([torch.multinomial(part, 1, generator=generator).squeeze(1)
                               for part, (_, generator) in zip(probs, groups, strict=True)])
        if eot_id is not None:
            token = token.masked_fill(done, eot_id)
            done = done | (token == eot_id)
        seq = tokens.append(token)
        yield Step(token, scores.float().log_softmax(dim=-1) if logprobs else None)
        if step == settings.max_new_tokens - 1 or (eot_id is not None and bool(done.all())):
            return
        logits = decoder.scores(seq)


def generate(
    model: GPT,
    prompt: Prompts,
    settings: GenerationConfig,
    *,
    eot_id: int | None = None,
    use_cache: bool = True,
) -> Tensor:
    """What `transformers`' `generate` returns: per row the prompt used (its last block_size
    ids, left-padded in a batch) followed by the new tokens, (rows, width), rows = prompts x
    `num_samples`. `num_beams` > 1 runs `beam_search`, else `generate_tokens`."""
    if settings.num_beams > 1:
        return beam_search(model, prompt, settings, eot_id=eot_id, use_cache=use_cache).sequences
    steps = [token[:, None] for token in
             generate_tokens(model, prompt, settings, eot_id=eot_id, use_cache=use_cache)]
    pad_id = 0 if eot_id is None else eot_id
    start, _ = prompt_rows(model, prompt, settings.num_samples, pad_id)
    return torch.cat([start, *steps], dim=1)
