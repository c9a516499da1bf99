"""Per-token log-probabilities: of the tokens a decoder drew, and of a prompt under the model.

One record per token (`TokenLogprob`: id, text, log-probability, the most likely
alternatives) is what the server's completions (OpenAI's legacy `logprobs`) and chat
(`logprobs.content`) responses are both written from. A prompt's log-probabilities are the
raw model's (fp32 log-softmax, no logits processors): what loglikelihood evaluation reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gptkit.errors import GptkitError
from gptkit.model import GPT

Top = list[tuple[int, str, float]]  # (token id, its text, log-probability), most likely first


@dataclass
class TokenLogprob:
    """One token of a text and how likely it was: `logprob` of `id` given the tokens before
    it (None for a prompt's first token, which nothing predicts), and `top`: the most likely
    tokens at that position with theirs (None when not asked for, or for the first prompt
    token). `offset` is where its text starts in the text it belongs to (characters)."""

    id: int
    text: str
    logprob: float | None
    top: Top | None = None
    offset: int = 0


def top_of(logprobs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The `k` largest log-probabilities of each row of `logprobs` (rows, vocab), largest
    first, and their token ids; -inf entries (tokens a processor ruled out) are kept here and
    dropped by `records`."""
    values, ids = logprobs.topk(min(k, logprobs.size(-1)), dim=-1)
    return values, ids


def records(ids: Sequence[int], logprobs: Sequence[float | None],
            tops: Sequence[Top | None], decode: Callable[[Sequence[int]], str],
            offsets: Sequence[int] | None = None) -> list[TokenLogprob]:
    """The records of the tokens `ids` of one text, with each token's text; `offsets` are
    where each starts in that text (default: the length of the decoded ids before it)."""
    if offsets is None:
        offsets = [len(decode(ids[:i])) if i else 0 for i in range(len(ids))]
    return [TokenLogprob(token, decode([token]), logprob, top, offset)
            for token, logprob, top, offset in zip(ids, logprobs, tops, offsets, strict=True)]


def top_list(values: Sequence[float], ids: Sequence[int],
             decode: Callable[[Sequence[int]], str]) -> Top:
    """(id, text, log-probability) of the finite entries of a top-k, most likely first."""
    return [(i, decode([i]), v) for v, i in zip(values, ids, strict=True) if v != float("-inf")]


@torch.no_grad()
def prompt_logprobs(model: GPT, ids: Sequence[int], k: int) -> tuple[list[float], list[Top]]:
    """log p(ids[i] | ids[:i]) for i >= 1 under the raw model (one forward pass, fp32
    log-softmax, eval mode) and the `k` most likely tokens at each of those positions (ids and
    values only; text is the caller's). The prompt must fit in the context window."""
    block_size = model.config.block_size
    if len(ids) > block_size:
        raise GptkitError(f"the prompt is {len(ids)} tokens long; its log-probabilities need "
                          f"it inside the model's context window of {block_size} tokens")
    if len(ids) < 2:
        return [], []
    device = model.transformer.wte.weight.device
    x = torch.tensor([list(ids)], device=device)
    was_training = model.training
    model.eval()
    try:
        logits, _ = model(x[:, :-1])
    finally:
        if was_training:
            model.train()
    logp = logits[0].float().log_softmax(dim=-1)
    chosen = logp.gather(1, x[0, 1:, None]).squeeze(1).tolist()
    tops: list[Top] = []
    if k > 0:
        values, top_ids = top_of(logp, k)
        tops = [[(i, "", v) for v, i in zip(vs, is_, strict=True)]
                for vs, is_ in zip(values.tolist(), top_ids.tolist(), strict=True)]
    else:
        tops = [[] for _ in chosen]
    return chosen, tops
