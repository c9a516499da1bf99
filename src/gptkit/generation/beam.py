"""Beam search (and beam sampling) as Hugging Face's `generate` runs it, one step for all
prompts and beams at once, so that it picks the beams `transformers` picks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from gptkit.errors import GptkitError
from gptkit.generation.config import GenerationConfig
from gptkit.generation.decoding import (
    Decoder,
    Prompts,
    generator_for,
    processors_for,
    prompt_rows,
)
from gptkit.model import GPT

# Told a candidate's new token ids, says whether it is finished (stop strings).
StopRule = Callable[[list[int]], bool]
NEG = -1.0e9  # the "impossible" beam score transformers uses (finite, so sums stay ordered)


@dataclass
class BeamSearchOutput:
    """The best finished beams of each prompt, best first."""

    sequences: Tensor  # (rows, width) as transformers returns them: left-padded prompt,
    # continuation right-padded with the end-of-text token
    scores: Tensor  # (rows,) sum of log-probabilities / new tokens ** length_penalty
    new_tokens: list[list[int]]  # each row's continuation, its end-of-text included


@torch.no_grad()
def beam_search(
    model: GPT,
    prompt: Prompts,
    settings: GenerationConfig,
    *,
    eot_id: int | None = None,
    stop: StopRule | None = None,
    use_cache: bool = True,
) -> BeamSearchOutput:
    """Beam search as `transformers` runs it (temperature > 0: beam sampling).

    Each step, every beam's log-probabilities (after the processors) extend its score and
    the 2 x num_beams best continuations are kept: those ending in `eot_id`, reaching
    max_new_tokens or satisfying `stop` become finished hypotheses (scored sum / new tokens
    ** length_penalty; only the top num_beams candidates may finish), the best num_beams
    others run on. `early_stopping` True stops a prompt once num_beams hypotheses are
    finished; False once the best running beam, scored at its current length, cannot beat
    the worst finished one; "never" at the best length it could still reach. Returns
    `num_samples` best hypotheses per prompt. Every setting of `settings` applies but
    `stop` (text: `stop` here is the rule that reads it) and `prompt`.
    """
    max_new_tokens, num_beams, num_samples = (
        settings.max_new_tokens, settings.num_beams, settings.num_samples)
    length_penalty, early_stopping = settings.length_penalty, settings.early_stopping
    if max_new_tokens < 1:
        raise GptkitError("beam search needs max_new_tokens >= 1")
    pad_id = 0 if eot_id is None else eot_id
    ids, mask = prompt_rows(model, prompt, num_beams, pad_id)
    rows, prompt_len = ids.shape
    batch, beams, device = rows // num_beams, num_beams, ids.device
    max_len = prompt_len + max_new_tokens
    keep = 2 * beams  # enough candidates for num_beams to run on even if num_beams finish
    processors = processors_for(settings, ids, mask, eot_id, min_tokens_to_keep=2)
    generator = generator_for(settings.seed, device)
    decoder = Decoder(model, rows, mask, use_cache)

    running = torch.full((batch, beams, max_len), pad_id, dtype=torch.long, device=device)
    running[:, :, :prompt_len] = ids.view(batch, beams, prompt_len)
    running_scores = torch.zeros(batch, beams, device=device)
    running_scores[:, 1:] = NEG  # the beams start identical: expand only the first
    finished = running.clone()
    finished_scores = torch.full((batch, beams), NEG, device=device)
    is_finished = torch.zeros(batch, beams, dtype=torch.bool, device=device)
    finished_len = torch.zeros(batch, beams, dtype=torch.long, device=device)
    may_improve = torch.ones(batch, 1, dtype=torch.bool, device=device)
    first_beams = torch.arange(keep, device=device) < beams
    cur = prompt_len
    logits = decoder.scores(ids, shared=batch == 1 and mask is None)
    while True:
        flat = running[:, :, :cur].reshape(rows, cur)
        log_probs = processors(flat, logits.log_softmax(dim=-1))
        totals = (log_probs.view(batch, beams, -1) + running_scores[:, :, None]).view(batch, -1)
        if settings.temperature > 0:
            probs = totals.softmax(dim=-1)
            if int((probs > 0).sum(dim=-1).min()) < keep:
                raise GptkitError(
                    f"beam sampling draws {keep} candidates (2 x num_beams) but the filters "
                    "leave fewer tokens; raise top_k / top_p / typical_p or use temperature 0"
                )
            pick = torch.multinomial(probs, keep, generator=generator)
            # the drawn set ranked by score, so that "the first num_beams" below are its best
            # (transformers 4.45 and >= 5.24 rank it so; the releases between kept draw order)
            top_scores, order = totals.gather(1, pick).sort(dim=-1, descending=True)
            pick = pick.gather(1, order)
        else:
            top_scores, pick = totals.topk(keep)
        vocab = log_probs.size(-1)
        source = pick // vocab  # the beam each candidate extends
        candidates = running.take_along_dim(source[:, :, None], dim=1)
        candidates[:, :, cur] = pick % vocab
        hits = torch.full_like(source, cur + 1 >= max_len, dtype=torch.bool)
        if eot_id is not None:
            hits |= candidates[:, :, cur] == eot_id
        if stop is not None:
            new = candidates[:, :, prompt_len : cur + 1].tolist()
            hits |= torch.tensor([[stop(c) for c in row] for row in new], device=device)

        # the best candidates that did not finish run on
        alive_scores = top_scores + hits.float() * NEG
        chosen = alive_scores.topk(beams).indices
        running = candidates.take_along_dim(chosen[:, :, None], dim=1)
        running_scores = alive_scores.gather(1, chosen)
        running_source = source.gather(1, chosen)

        # finished candidates among the first num_beams join the hypotheses if good enough
        just_finished = hits & first_beams
        scores = top_scores / ((cur + 1 - prompt_len) ** length_penalty)
        scores += (is_finished.all(dim=-1, keepdim=True) & (early_stopping is True)).float() * NEG
        scores += (~may_improve).float() * NEG
        scores += (~just_finished).float() * NEG
        merged_scores = torch.cat([finished_scores, scores], dim=1)
        best = merged_scores.topk(beams).indices
        finished = torch.cat([finished, candidates], dim=1).take_along_dim(best[:, :, None], 1)
        finished_scores = merged_scores.gather(1, best)
        is_finished = torch.cat([is_finished, just_finished], dim=1).gather(1, best)
        lengths = torch.cat([finished_len, torch.full_like(source, cur + 1 - prompt_len)], 1)
        finished_len = lengths.gather(1, best)

        cur += 1
        if early_stopping == "never" and length_penalty > 0:
            best_length = max_len - prompt_len
        else:
            best_length = cur - prompt_len
        best_running = running_scores[:, :1] / (best_length**length_penalty)
        worst_finished = torch.where(
            is_finished, finished_scores.min(dim=1, keepdim=True).values, NEG
        )
        may_improve &= (best_running > worst_finished).any(dim=-1, keepdim=True)
        all_full = bool(is_finished.all()) and early_stopping is True
        if not bool(may_improve.any()) or all_full or bool(hits.all()):
            break
        offsets = torch.arange(batch, device=device)[:, None] * beams
        decoder.reorder((running_source + offsets).view(-1))
        logits = decoder.scores(running[:, :, :cur].reshape(rows, cur))

    width = prompt_len + int(finished_len[:, :num_samples].max())
    sequences = finished[:, :num_samples, :width].reshape(batch * num_samples, width)
    kept = finished_len[:, :num_samples].reshape(-1).tolist()
    new_tokens = [
        row[prompt_len : prompt_len + n] for row, n in zip(sequences.tolist(), kept, strict=True)
    ]
    scores = finished_scores[:, :num_samples].reshape(-1)
    return BeamSearchOutput(sequences=sequences, scores=scores, new_tokens=new_tokens)
