"""Loss, perplexity, WikiText word-level perplexity and bits per byte of a token stream.

Windows are exactly those of Hugging Face's "perplexity of fixed-length models" guide, so
the figures agree with what users compute with `transformers`: a window holds up to
`block_size` tokens and starts `stride` after the previous one; it scores only the tokens
that no earlier window scored, each predicted from the window's tokens before it (so with up
to block_size - 1 of context). With `stride == block_size` windows do not overlap, the
fastest mode, and the first token of each window goes unscored; a smaller stride gives every
token more context and a lower, fairer perplexity. Token loss and perplexity are the exact
mean over the scored tokens (the guide's own loop weights each window by one token too few).
Word-level perplexity and bits per byte spread that mean over the whole split.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from gptkit.data.shards import Tokens
from gptkit.device import autocast

if TYPE_CHECKING:
    from gptkit.data.prepare import PreparedData


class Ranks(Protocol):
    """Which of how many processes scores (`gptkit.train.distributed.DistEnv` is one)."""

    rank: int
    world_size: int


def _sum_over_ranks(values: list[float], env: Ranks | None, device: torch.device
                    ) -> list[float]:
    """The totals of every process (one float64 all-reduce), or `values` in one process."""
    if env is None or env.world_size == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64,
                          device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(tensor)
    return tensor.tolist()


def _is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 shards the model: then every rank must run each forward together."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@dataclass(frozen=True)
class Window:
    """Inputs tokens[start : start + length]; its targets are scored from position `first`."""

    start: int
    length: int
    first: int


@dataclass
class Score:
    """Summed negative log-likelihood (nats) and how many targets it covers."""

    nll: float = 0.0
    tokens: int = 0
    text_nll: float = 0.0  # over targets that are not special tokens (for bits per byte)
    text_tokens: int = 0
    # targets (text targets) in the whole split, scored or not: what per-word and per-byte
    # figures are spread over when some windows are left out or some tokens go unscored
    split_tokens: int = 0
    split_text_tokens: int = 0


@dataclass
class EvalResult:
    split: str
    loss: float
    perplexity: float
    tokens: int
    nll: float
    block_size: int
    stride: int
    bits_per_byte: float | None = None
    bytes: int | None = None
    word_perplexity: float | None = None
    words: int | None = None

    def to_dict(self) -> dict[str, float | int | str | None]:
        return asdict(self)


def windows(n_tokens: int, block_size: int, stride: int) -> list[Window]:
    """Hugging Face's sliding windows over n_tokens: each scores the targets no earlier one did.

    A window of tokens [begin, end) feeds tokens[begin : end - 1] and predicts
    tokens[begin + 1 : end]; of those it scores the ones at or after the previous window's end.
    """
    if stride < 1 or stride > block_size:
        raise ValueError(f"stride must be in [1, block_size], got {stride}")
    out: list[Window] = []
    prev_end = 0
    for begin in range(0, max(n_tokens - 1, 0), stride):
        end = min(begin + block_size, n_tokens)
        first_target = max(prev_end, begin + 1)  # token index of the first target scored
        # target at input position k is token begin + k + 1
        out.append(Window(start=begin, length=end - begin - 1, first=first_target - begin - 1))
        prev_end = end
        if end == n_tokens:
            break
    return out


def _batches(items: Sequence[Window], size: int) -> Iterator[list[Window]]:
    """Group windows of equal length so each batch is one dense forward pass."""
    by_length: dict[int, list[Window]] = {}
    for window in items:
        by_length.setdefault(window.length, []).append(window)
    for group in by_length.values():
        for i in range(0, len(group), size):
            yield group[i : i + size]


@torch.no_grad()
def score_tokens(
    model: nn.Module,
    tokens: Tokens,
    *,
    block_size: int,
    stride: int | None = None,
    batch_size: int = 16,
    device: torch.device | None = None,
    precision: str = "fp32",
    max_windows: int | None = None,
    special_ids: Sequence[int] = (),
    env: Ranks | None = None,
    progress: bool = False,
) -> Score:
    """Sum the model's NLL over a token stream (all ranks together when `env` is given).

    `max_windows` keeps that many evenly spaced windows (a fixed subset, the same at every
    evaluation) to bound the cost of evaluating during training. `progress` shows a bar on
    stderr (a small stride over a long split takes minutes).
    `precision` is a resolved one (`gptkit.device.resolve_precision`): the forward passes run
    under its autocast, as in training.
    """
    stride = stride or block_size
    device = device or next(model.parameters()).device
    plan = windows(len(tokens), block_size, stride)
    if max_windows is not None and len(plan) > max_windows:
        keep = np.linspace(0, len(plan) - 1, max_windows).round().astype(int)
        plan = [plan[i] for i in sorted(set(keep.tolist()))]
    world, rank = (env.world_size, env.rank) if env is not None else (1, 0)
    share = [list(_batches(plan[r::world], batch_size)) for r in range(world)]
    batches = share[rank]
    padding = 0
    if _is_sharded(model):  # a sharded model runs a forward only with every rank:
        # ranks with fewer batches score the first window again, not counted
        padding = max(map(len, share)) - len(batches)
        batches = batches + [plan[:1]] * padding
    special = torch.tensor(sorted(set(special_ids)), dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    bar = tqdm(batches, desc="scoring", unit="batch", disable=not progress, leave=False,
               dynamic_ncols=True)
    for i, batch in enumerate(bar):
        length = batch[0].length
        idx = np.stack([np.asarray(tokens[w.start : w.start + length + 1]) for w in batch])
        rows = torch.from_numpy(idx.astype(np.int64)).to(device)
        x, y = rows[:, :-1], rows[:, 1:]
        with autocast(device, precision):
            logits, _ = model(x)
        if i >= len(batches) - padding:
            continue
        nll = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none"
        ).view_as(y)
        positions = torch.arange(length, device=device)
        first = torch.tensor([w.first for w in batch], device=device)
        mask = positions[None, :] >= first[:, None]
        text = mask & ~torch.isin(y, special) if len(special) else mask
        totals += torch.stack(
            [
                (nll * mask).sum(dtype=torch.float64),
                mask.sum(dtype=torch.float64),
                (nll * text).sum(dtype=torch.float64),
                text.sum(dtype=torch.float64),
            ]
        )
    model.train(was_training)
    values = totals.tolist()
    values = _sum_over_ranks(values, env, device)
    split_tokens = len(tokens) - 1
    if max_windows is None:  # every window was read anyway: count the split's text targets
        specials = np.isin(np.asarray(tokens[1:]), np.asarray(sorted(set(special_ids))))
        split_text_tokens = split_tokens - int(specials.sum())
    else:  # a subset (evaluation during training): estimate rather than read the whole split
        split_text_tokens = round(split_tokens * values[3] / max(values[1], 1))
    return Score(nll=values[0], tokens=int(values[1]), text_nll=values[2],
                 text_tokens=int(values[3]), split_tokens=split_tokens,
                 split_text_tokens=split_text_tokens)


def summarize(
    score: Score,
    *,
    split: str,
    block_size: int,
    stride: int,
    n_bytes: int | None = None,
    n_words: int | None = None,
) -> EvalResult:
    """Turn summed NLL into the figures users compare (DESIGN.md, "Numbers users compare").

    Word perplexity and bits per byte need the NLL of the whole split; where some targets
    went unscored (each window's first with stride == block_size), the scored mean stands
    in for them: total = mean x all targets.
    """
    loss = score.nll / max(score.tokens, 1)
    text_loss = score.text_nll / max(score.text_tokens, 1)
    total_nll = loss * (score.split_tokens or score.tokens)
    total_text_nll = text_loss * (score.split_text_tokens or score.text_tokens)
    result = EvalResult(
        split=split,
        loss=loss,
        perplexity=math.exp(min(loss, 700.0)),
        tokens=score.tokens,
        nll=score.nll,
        block_size=block_size,
        stride=stride,
    )
    if n_bytes:
        result.bytes = n_bytes
        result.bits_per_byte = total_text_nll / (math.log(2) * n_bytes)
    if n_words:
        result.words = n_words
        result.word_perplexity = math.exp(min(total_nll / n_words, 700.0))
    return result


def evaluate_split(
    model: nn.Module,
    data: PreparedData,
    split: str,
    *,
    block_size: int,
    stride: int | None = None,
    max_windows: int | None = None,
    word_level: bool = False,
    **scoring: Any,
) -> EvalResult:
    """The figures of one prepared split: what `gptkit eval` prints and what training logs.

    Bits per byte and word perplexity (`word_level`: WikiText's words) need the whole split,
    so they are left out when `max_windows` scores a subset of it. `scoring` goes to
    `score_tokens`.
    """
    stride = stride or block_size
    tokens = data.tokens(split)
    score = score_tokens(model, tokens, block_size=block_size, stride=stride,
                         max_windows=max_windows, **scoring)
    full = max_windows is None or max_windows * block_size >= len(tokens) - 1
    meta = data.split_meta(split)
    return summarize(score, split=split, block_size=block_size, stride=stride,
                     n_bytes=meta["bytes"] if full else None,
                     n_words=meta["words"] if full and word_level else None)
