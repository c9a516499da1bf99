"""Speculative decoding: a small draft model proposes K tokens, the main model checks them
all in one forward pass through its KV cache (Leviathan et al. 2023; Chen et al. 2023).

Small models lose their time per token (Python, dispatch, cache handling), not in arithmetic,
so one main-model pass over K + 1 positions costs about what one over a single position does:
every draft token the main model accepts is a pass saved. The output is the main model's own:

- greedy: a draft token is kept while it is the main model's argmax there, then the main
  model's own token follows, so the text is token for token what the main model alone writes;
- sampled: draft token x (drawn from the draft's distribution q) is kept with probability
  min(1, p(x) / q(x)); at the first rejection the token is drawn from normalize(max(0, p - q));
  when all K are kept a bonus token is drawn from p. Each token then follows p exactly.

p and q are the distributions after the request's logits processors (penalties, temperature,
top-k, top-p ...), which see the sequence with the drafted tokens before each position.

Rows share one KV cache length (`gptkit.model.KVCache`), so a batch keeps, per round, the
fewest tokens any row accepted plus one (each row's own next token there): still exact, since
whether a position is kept never depends on the token drawn there. `accept` itself works per
row, for callers whose rows have caches of their own. Past either model's context window the
rest is decoded plainly (`Decoder`, which slides the window).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from gptkit.errors import GptkitError
from gptkit.generation.config import GenerationConfig
from gptkit.generation.decoding import (
    Decoder,
    Prompts,
    positions_of,
    processors_for,
    prompt_list,
    prompt_rows,
    sampling_groups,
)
from gptkit.generation.logits_process import LogitsProcessorList
from gptkit.model import GPT, KVCache

DEFAULT_DRAFT_TOKENS = 4


@dataclass
class SpeculativeStats:
    """How well the draft guessed: `accepted` of `proposed` draft tokens (summed over rows,
    each row's own count), `passes` main-model forward passes while decoding (the prompt's
    included), `steps` tokens generated per row and `plain` of them decoded without the draft
    (past a context window)."""

    proposed: int = 0
    accepted: int = 0
    passes: int = 0
    steps: int = 0
    plain: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.steps / self.passes if self.passes else 0.0

    def summary(self) -> str:
        """One line for stderr, e.g. `draft: 312/400 tokens accepted (78%), 2.4 tokens per
        main-model pass`."""
        line = (f"draft: {self.accepted}/{self.proposed} tokens accepted "
                f"({self.acceptance:.0%}), {self.tokens_per_pass:.1f} tokens per main-model "
                "pass")
        if self.plain:
            line += f" ({self.plain} decoded without the draft, past its context)"
        return line


@dataclass
class Speculative:
    """What `sample_text` and `ChatSession` need to decode speculatively: the draft model,
    how many tokens it proposes per main-model pass, and the running statistics."""

    draft: GPT
    tokens: int = DEFAULT_DRAFT_TOKENS
    stats: SpeculativeStats = field(default_factory=SpeculativeStats)

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise GptkitError(f"draft tokens must be >= 1 (got {self.tokens}); 4 is a good start")


def check_settings(settings: GenerationConfig, flag: str = "") -> None:
    """Refuse what a draft cannot decode: beam search (it keeps many hypotheses, the draft
    checks one)."""
    if settings.num_beams > 1:
        raise GptkitError(f"{flag}num_beams={settings.num_beams} is beam search, which "
                          "speculative decoding does not do; leave out the draft or the beams")


def accept(
    p_scores: Tensor, q_scores: Tensor, drafted: Tensor, greedy: bool,
    groups: Sequence[tuple[int, torch.Generator]],
) -> tuple[Tensor, Tensor]:
    """Which draft tokens the main model keeps, per row, and the token after them.

    `p_scores` (rows, K+1, vocab): the main model's processed scores at each drafted position
    and after the last; `q_scores` (rows, K, vocab): the draft's processed scores it drew
    `drafted` (rows, K) from; `groups` [(rows, generator), ...] split the rows by random
    generator (unused when greedy). Returns the number of draft tokens kept per row (rows,)
    and the token at the first position not kept (rows,): the main model's own choice there,
    from the residual normalize(max(0, p - q)) after a rejection or from p when all K were
    kept (a row keeps its first n draft tokens, then this token).
    """
    rows, k = drafted.shape
    if greedy:
        choice = p_scores.argmax(dim=-1)  # (rows, K+1)
        agree = (choice[:, :k] == drafted).int()
        kept = agree.cumprod(dim=1).sum(dim=1)
        return kept, choice.gather(1, kept[:, None]).squeeze(1)
    p = p_scores.float().softmax(dim=-1)
    q = q_scores.float().softmax(dim=-1)
    sizes = [n for n, _ in groups]
    u = torch.cat([torch.rand(n, k, generator=g, device=p.device) for n, g in groups])
    p_x = p[:, :k].gather(2, drafted[..., None]).squeeze(2)
    q_x = q.gather(2, drafted[..., None]).squeeze(2)
    ok = (u * q_x < p_x).int()  # u < p(x) / q(x), and q(x) > 0 since x was drawn from q
    kept = ok.cumprod(dim=1).sum(dim=1)
    q_after = torch.cat([q, q.new_zeros(rows, 1, q.size(-1))], dim=1)  # bonus: p - 0
    index = kept[:, None, None].expand(-1, 1, p.size(-1))
    residual = (p.gather(1, index) - q_after.gather(1, index)).squeeze(1).clamp(min=0)
    empty = residual.sum(dim=-1, keepdim=True) <= 0  # p == q there up to rounding
    residual = torch.where(empty, p.gather(1, index).squeeze(1), residual)
    token = torch.cat([torch.multinomial(part, 1, generator=g).squeeze(1)
                       for part, (_, g) in zip(residual.split(sizes), groups, strict=True)])
    return kept, token


def on_vocab(logits: Tensor, vocab: int) -> Tensor:
    """A draft's logits (rows, its vocab) on the main model's `vocab` ids (ids it lacks:
    never drafted)."""
    have = logits.size(-1)
    if have >= vocab:
        return logits[:, :vocab]
    return torch.cat([logits, logits.new_full((logits.size(0), vocab - have), -torch.inf)],
                     dim=1)


def in_step(kept: Tensor, token: Tensor, drafted: Tensor, least: int) -> Tensor:
    """The tokens (rows, least + 1) rows that advance together gain, as `accept` left them
    (`kept`, `token`): the first `least` (<= every row's kept) draft tokens, then each row's
    own next token. A row that kept more than `least` keeps its draft token there, which
    follows p too: still exact, since whether a position is kept never depends on the token
    drawn there."""
    last = drafted[:, least] if least < drafted.size(1) else token
    last = torch.where(kept > least, last, token)
    return torch.cat([drafted[:, :least], last[:, None]], dim=1)


class SpeculativeDecoder:
    """The two models' caches over one batch of growing sequences, advanced a round at a time.

    `round(seq, k)` drafts `k` tokens, verifies them in one main-model pass and returns the
    tokens every row gains (the same number for all rows, at least one); both caches are cut
    back to the kept positions. `plain(seq)` decodes one token with the main model alone.
    """

    def __init__(self, main: GPT, draft: GPT, seq: Tensor, mask: Tensor | None,
                 processors: LogitsProcessorList, groups: Sequence[tuple[int, torch.Generator]],
                 greedy: bool, stats: SpeculativeStats) -> None:
        rows = seq.size(0)
        self.main, self.draft = main, draft
        self.main_cache = main.new_kv_cache(rows)
        self.draft_cache = draft.new_kv_cache(rows, device=main.transformer.wte.weight.device)
        self.mask, self.width = mask, seq.size(1)
        self.processors, self.groups, self.greedy = processors, groups, greedy
        self.vocab = main.lm_head.out_features
        self.stats = stats
        self.fallback: Decoder | None = None

    def room(self, length: int) -> int:
        """How many tokens can be drafted after `length` within both contexts."""
        return min(self.main.config.block_size - length,
                   self.draft.config.block_size - length + 1)

    def prefill_shared(self, seq: Tensor) -> None:
        """One prompt for every row: its ids but the last computed once in both caches."""
        if seq.size(1) > 1 and self.room(seq.size(1)) >= 0:  # else decoded plainly
            for model, cache in ((self.main, self.main_cache), (self.draft, self.draft_cache)):
                self._forward(model, cache, seq[:1, :-1], keep=1)
            self.stats.passes += 1

    def _mask(self, length: int) -> Tensor | None:
        if self.mask is None:
            return None
        return torch.cat([self.mask, self.mask.new_ones(self.mask.size(0), length - self.width)],
                         dim=1)

    def _forward(self, model: GPT, cache: KVCache, seq: Tensor, keep: int = 0) -> Tensor:
        """Logits (rows, new, vocab) of the positions of `seq` not yet in `cache` (`keep` >
        0: of the last `keep` of them)."""
        start = cache.length
        mask = self._mask(seq.size(1))
        positions = None if mask is None else positions_of(mask)[:, start:]
        was_training = model.training
        if was_training:
            model.eval()
        try:
            logits, _ = model(seq[:, start:], kv_cache=cache, attention_mask=mask,
                              position_ids=positions, logits_to_keep=keep)
        finally:
            if was_training:
                model.train()
        return logits.float()

    def _sample(self, scores: Tensor) -> Tensor:
        if self.greedy:
            return scores.argmax(dim=-1)
        probs = scores.softmax(dim=-1).split([n for n, _ in self.groups])
        return torch.cat([torch.multinomial(part, 1, generator=g).squeeze(1)
                          for part, (_, g) in zip(probs, self.groups, strict=True)])

    def round(self, seq: Tensor, k: int) -> Tensor:
        """Draft `k` (>= 0) tokens after `seq` and keep what the main model accepts: the new
        tokens (rows, n), n >= 1."""
        length = seq.size(1)
        grown, q_scores = seq, []
        for _ in range(k):
            logits = on_vocab(self._forward(self.draft, self.draft_cache, grown, keep=1)[:, -1],
                              self.vocab)
            scores = self.processors(grown, logits)
            q_scores.append(scores)
            grown = torch.cat([grown, self._sample(scores)[:, None]], dim=1)
        logits = self._forward(self.main, self.main_cache, grown, keep=k + 1)
        p_scores = torch.stack([self.processors(grown[:, : length + j], logits[:, j])
                                for j in range(k + 1)], dim=1)
        drafted = grown[:, length:]
        q = torch.stack(q_scores, dim=1) if k else p_scores[:, :0]
        kept, token = accept(p_scores, q, drafted, self.greedy, self.groups)
        least = int(kept.min())
        self.main_cache.length = length + least
        self.draft_cache.length = min(self.draft_cache.length, length + least)
        self.stats.proposed += k * seq.size(0)
        self.stats.accepted += int(kept.sum())
        self.stats.passes += 1
        return in_step(kept, token, drafted, least)

    def plain(self, seq: Tensor) -> Tensor:
        """One token from the main model alone, its window sliding past block_size."""
        if self.fallback is None:
            self.fallback = Decoder(self.main, seq.size(0), self.mask, use_cache=True)
            self.fallback.cache = self.main_cache
        self.stats.passes += 1
        self.stats.plain += 1
        return self._sample(self.processors(seq, self.fallback.scores(seq)))[:, None]


@torch.no_grad()
def speculative_tokens(
    model: GPT,
    draft: GPT,
    prompt: Prompts,
    settings: GenerationConfig,
    *,
    eot_id: int | None = None,
    draft_tokens: int = DEFAULT_DRAFT_TOKENS,
    stats: SpeculativeStats | None = None,
    seed_groups: Sequence[tuple[int, int | None]] | None = None,
) -> Generator[Tensor, None, None]:
    """`generate_tokens` with `draft` proposing `draft_tokens` tokens per main-model pass:
    the next token of every row, a (rows,) int64 tensor per step, ending as `generate_tokens`
    does (at `max_new_tokens`, or once every row has produced `eot_id`). Greedy output is the
    main model's token for token; sampled output follows its distribution (not its random
    stream). `stats` (a `SpeculativeStats`) is updated as tokens come.

    `draft` must share the main model's tokenizer (`check_draft` checks runs' tokenizers);
    its size and context may differ (past either context the rest is decoded plainly)."""
    check_settings(settings)
    if draft_tokens < 1:
        raise GptkitError(f"draft_tokens must be >= 1 (got {draft_tokens})")
    stats = SpeculativeStats() if stats is None else stats
    seq, mask = prompt_rows(model, prompt, settings.num_samples, 0 if eot_id is None else eot_id)
    if settings.max_new_tokens == 0:
        return
    processors = processors_for(settings, seq, mask, eot_id)
    prompts = len(prompt_list(prompt))
    groups = sampling_groups(prompts, settings.num_samples, settings.seed, seed_groups,
                             seq.device)
    decoder = SpeculativeDecoder(model, draft, seq, mask, processors, groups,
                                 settings.temperature == 0, stats)
    if prompts == 1:
        decoder.prefill_shared(seq)
    done = torch.zeros(seq.size(0), dtype=torch.bool, device=seq.device)
    left = settings.max_new_tokens
    while True:
        room = decoder.room(seq.size(1))
        if decoder.fallback is None and room >= 0:
            new = decoder.round(seq, min(draft_tokens, room, left - 1))
        else:
            new = decoder.plain(seq)
        for token in new.unbind(dim=1):
            if eot_id is not None:
                token = token.masked_fill(done, eot_id)
                done = done | (token == eot_id)
            seq = torch.cat([seq, token[:, None]], dim=1)
            left -= 1
            stats.steps += 1
            yield token
            if left == 0 or bool(done.all()):
                return


class _Hashable(Protocol):
    def sha256(self) -> str: ...


def check_draft(tokenizer: _Hashable, draft_tokenizer: _Hashable, draft_name: str) -> None:
    """A draft must read and write the main model's tokens: the same tokenizer (compared by
    the hash of its serialised form: vocabulary, merges, special tokens)."""
    if tokenizer.sha256() != draft_tokenizer.sha256():
        raise GptkitError(
            f"draft {draft_name} has a different tokenizer than the model; a draft must share "
            "the model's tokenizer (make one with gptkit distill --teacher RUN)")
