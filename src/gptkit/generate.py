"""Text generation with the semantics of Hugging Face's `generate`: greedy, sampling, beam search.

Every setting means what it means in `transformers` (`max_new_tokens`, `min_new_tokens`,
`temperature`, `top_k`, `top_p`, `typical_p`, `repetition_penalty`, `no_repeat_ngram_size`,
`bad_words_ids`, `num_return_sequences` (here `num_samples`), `num_beams`, `length_penalty`,
`early_stopping`), and the parity tests check that gptkit and `transformers` pick the same
tokens for the same weights. The end-of-text token plays `eos_token_id` and `pad_token_id`.
Prompts of different lengths are left-padded and get the attention mask and position ids
`transformers` derives from it; each prompt's rows stay together (its samples or beams).

Two things go beyond `transformers`: a sequence longer than the model's context slides its
window (the last block_size tokens are recomputed, positions restarting at 0; GPT-2 in
`transformers` cannot go past its context, so parity holds only within it), and stop
strings act on text (`sample_text`). Greedy and sampled decoding is a Python generator:
streaming is free and the caller decides when to stop. Randomness comes from a private
`torch.Generator`; on CPU its stream equals the global one's after `torch.manual_seed(seed)`,
so even sampled tokens match `transformers` under the same seed.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from gptkit.config import SampleConfig, sample_checks
from gptkit.errors import GptkitError, check_all
from gptkit.logits_process import build_processors
from gptkit.model import GPT, KVCache

# One prompt (token ids) or a batch of prompts.
Prompts = Sequence[int] | Sequence[Sequence[int]] | Tensor
# Told a candidate's new token ids, says whether it is finished (stop strings).
StopRule = Callable[[list[int]], bool]
NEG = -1.0e9  # the "impossible" beam score transformers uses (finite, so sums stay ordered)


def _check_settings(**settings: object) -> None:
    """The `sample_checks` of the config, for settings given as arguments."""
    cfg = SampleConfig(**settings)  # type: ignore[arg-type]
    check_all(sample_checks(cfg, prefix=""))


def _prompt_list(prompt: Prompts) -> list[list[int]]:
    items: list[Any] = prompt.tolist() if isinstance(prompt, Tensor) else list(prompt)
    if items and isinstance(items[0], (Sequence, Tensor)):
        return [[int(i) for i in p] for p in items]
    return [[int(i) for i in items]]


def _prompt_rows(
    model: GPT, prompt: Prompts, repeat: int, pad_id: int
) -> tuple[Tensor, Tensor | None]:
    """The prompts, each cut to its last block_size ids, left-padded with `pad_id` and each
    repeated `repeat` times in a row (as `transformers` expands them): (rows, width), and the
    attention mask (1 real, 0 padding), None when no prompt needs padding."""
    prompts = _prompt_list(prompt)
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


def _positions(mask: Tensor) -> Tensor:
    """Position ids as `transformers` derives them from a mask: 0, 1, ... from each row's
    first real token, 0 on padding."""
    return (mask.cumsum(dim=-1) - 1).masked_fill(mask == 0, 0)


def _generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()  # fresh entropy, still without touching the global generator
    else:
        generator.manual_seed(seed)
    return generator


def _sampling_groups(
    prompts: int, num_samples: int, seed: int | None,
    seed_groups: Sequence[tuple[int, int | None]] | None, device: torch.device,
) -> list[tuple[int, torch.Generator]]:
    """(rows, generator) of each group of consecutive rows that samples on its own."""
    if seed_groups is None:
        return [(prompts * num_samples, _generator(seed, device))]
    counts = [count for count, _ in seed_groups]
    if any(count < 1 for count in counts) or sum(counts) != prompts:
        raise GptkitError(f"seed_groups must split the {prompts} prompts into groups of at "
                          f"least one prompt each, got sizes {counts}")
    return [(count * num_samples, _generator(s, device)) for count, s in seed_groups]


class _Decoder:
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
            positions = _positions(mask)[:, new_from - window_from :]
        was_training = self.model.training
        if was_training:  # train()/eval() walk every module: a cost per token worth skipping
            self.model.eval()
        try:
            logits, _ = self.model(
                idx, kv_cache=self.cache, attention_mask=mask, position_ids=positions
            )
        finally:
            if was_training:
                self.model.train()
        return logits[:, -1].float().expand(rows, -1)

    def reorder(self, rows: Tensor) -> None:
        """Beam search: row i continues what row `rows[i]` held."""
        if self.cache is not None:
            self.cache.reorder(rows)


def _prompt_facts(ids: Tensor, mask: Tensor | None, eot_id: int | None) -> dict[str, Any]:
    """What `build_processors` needs to know of prompt rows `ids` (left-padded where `mask`
    has zeros): their width, the end-of-text id and each row's padding length."""
    return {
        "prompt_length": ids.size(1),
        "eos_token_id": eot_id,
        "padding_lengths": None if mask is None else mask.argmax(dim=1),  # first real token
    }


@torch.no_grad()
def generate_tokens(
    model: GPT,
    prompt: Prompts,
    *,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    typical_p: float = 1.0,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    bad_words_ids: Sequence[Sequence[int]] | None = None,
    num_samples: int = 1,
    seed: int | None = None,
    eot_id: int | None = None,
    use_cache: bool = True,
    seed_groups: Sequence[tuple[int, int | None]] | None = None,
) -> Generator[Tensor, None, None]:
    """Yield the next token of every row, a (rows,) int64 tensor per step.

    `prompt` is one list of token ids or a batch of them; rows = prompts x `num_samples`,
    each prompt's samples together. temperature 0 is greedy. Stops early once every row has
    produced `eot_id`; a finished row keeps yielding `eot_id` (transformers' padding).

    `seed_groups` [(prompts, seed), ...] splits the prompts, in order, into groups that each
    sample from a generator of their own (`seed` is then unused; a None seed draws fresh
    entropy): a group draws exactly what it would draw alone, so the requests a server batches
    together do not change each other's samples (only their logits may differ, by float
    rounding, since padding changes the shapes computed).
    """
    _check_settings(
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, temperature=temperature,
        top_k=top_k, top_p=top_p, typical_p=typical_p, repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size, num_samples=num_samples,
    )
    pad_id = 0 if eot_id is None else eot_id
    seq, mask = _prompt_rows(model, prompt, num_samples, pad_id)
    if max_new_tokens == 0:
        return
    processors = build_processors(
        temperature, top_k, top_p, typical_p=typical_p, repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size, bad_words_ids=bad_words_ids,
        min_new_tokens=min_new_tokens, **_prompt_facts(seq, mask, eot_id),
    )
    groups = _sampling_groups(len(_prompt_list(prompt)), num_samples, seed, seed_groups,
                              seq.device)
    decoder = _Decoder(model, seq.size(0), mask, use_cache)
    done = torch.zeros(seq.size(0), dtype=torch.bool, device=seq.device)
    # one prompt: computed once for all its samples
    logits = decoder.scores(seq, shared=len(_prompt_list(prompt)) == 1)
    for step in range(max_new_tokens):
        scores = processors(seq, logits)
        if temperature == 0:
            token = scores.argmax(dim=-1)
        else:
            probs = scores.softmax(dim=-1).split([rows for rows, _ in groups])
            token = torch.cat([torch.multinomial(part, 1, generator=generator).squeeze(1)
                               for part, (_, generator) in zip(probs, groups, strict=True)])
        if eot_id is not None:
            token = token.masked_fill(done, eot_id)
            done = done | (token == eot_id)
        seq = torch.cat([seq, token[:, None]], dim=1)
        yield token
        if step == max_new_tokens - 1 or bool(done.all()):
            return
        logits = decoder.scores(seq)


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
    *,
    max_new_tokens: int,
    num_beams: int,
    num_samples: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    min_new_tokens: int = 0,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    typical_p: float = 1.0,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    bad_words_ids: Sequence[Sequence[int]] | None = None,
    seed: int | None = None,
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
    `num_samples` best hypotheses per prompt.
    """
    _check_settings(
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, temperature=temperature,
        top_k=top_k, top_p=top_p, typical_p=typical_p, repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size, num_samples=num_samples,
        num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
    )
    if max_new_tokens < 1:
        raise GptkitError("beam search needs max_new_tokens >= 1")
    pad_id = 0 if eot_id is None else eot_id
    ids, mask = _prompt_rows(model, prompt, num_beams, pad_id)
    rows, prompt_len = ids.shape
    batch, beams, device = rows // num_beams, num_beams, ids.device
    max_len = prompt_len + max_new_tokens
    keep = 2 * beams  # enough candidates for num_beams to run on even if num_beams finish
    processors = build_processors(
        temperature, top_k, top_p, typical_p=typical_p, repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size, bad_words_ids=bad_words_ids,
        min_new_tokens=min_new_tokens, min_tokens_to_keep=2, **_prompt_facts(ids, mask, eot_id),
    )
    generator = _generator(seed, device)
    decoder = _Decoder(model, rows, mask, use_cache)

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
        if temperature > 0:
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


def generate(
    model: GPT,
    prompt: Prompts,
    *,
    max_new_tokens: int,
    min_new_tokens: int = 0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    typical_p: float = 1.0,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    bad_words_ids: Sequence[Sequence[int]] | None = None,
    num_samples: int = 1,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    seed: int | None = None,
    eot_id: int | None = None,
    use_cache: bool = True,
) -> Tensor:
    """What `transformers`' `generate` returns: per row the prompt used (its last block_size
    ids, left-padded in a batch) followed by the new tokens, (rows, width), rows = prompts x
    `num_samples`. `num_beams` > 1 runs `beam_search`, else `generate_tokens`."""
    rules: dict[str, Any] = {
        "max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens,
        "temperature": temperature, "top_k": top_k, "top_p": top_p, "typical_p": typical_p,
        "repetition_penalty": repetition_penalty, "no_repeat_ngram_size": no_repeat_ngram_size,
        "bad_words_ids": bad_words_ids, "num_samples": num_samples, "seed": seed,
        "eot_id": eot_id, "use_cache": use_cache,
    }
    if num_beams > 1:
        return beam_search(
            model, prompt, num_beams=num_beams, length_penalty=length_penalty,
            early_stopping=early_stopping, **rules,
        ).sequences
    _check_settings(num_beams=num_beams, length_penalty=length_penalty,
                    early_stopping=early_stopping)
    steps = [token[:, None] for token in generate_tokens(model, prompt, **rules)]
    start, _ = _prompt_rows(model, prompt, num_samples, 0 if eot_id is None else eot_id)
    return torch.cat([start, *steps], dim=1)


class TextTokenizer(Protocol):
    """What `sample_text` needs of `gptkit.tokenizers.Tokenizer`."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    @property
    def eot_id(self) -> int | None: ...


def bad_words_ids(tokenizer: TextTokenizer, words: Sequence[str]) -> list[list[int]]:
    """Token id sequences that keep `words` (words or phrases) out of generated text, as
    `transformers`' `bad_words_ids`: each as written and after a space, since a BPE tokenizer
    encodes " word" differently. The ban is on these token sequences: a model could still
    spell a word with other tokens (characters, say), which no token-level filter prevents."""
    banned: list[list[int]] = []
    for word in words:
        ids = tokenizer.encode(word)
        if not ids:
            raise GptkitError(f"banned word {word!r} encodes to no tokens; remove it")
        spaced = [] if word.startswith(" ") else tokenizer.encode(" " + word)
        for variant in (ids, spaced):
            if variant and variant not in banned:
                banned.append(variant)
    return banned


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in `text`, None if none occurs."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def showable(text: str, stops: Sequence[str]) -> int:
    """How much of a growing text can be shown for good: not a trailing partial UTF-8
    character (U+FFFD, a byte-level token can end mid-character) nor a tail that could be the
    start of a stop string (the text will be cut there if the stop string completes)."""
    end = len(text.rstrip("\ufffd"))
    held = max(
        (k for s in stops for k in range(1, len(s)) if text[:end].endswith(s[:k])), default=0
    )
    return end - held


def sample_text(
    model: GPT,
    tokenizer: TextTokenizer,
    prompt: str | None | Sequence[str],
    cfg: SampleConfig,
    stream: Callable[[int, str], None] | None = None,
) -> list[str]:
    """Generate `cfg.num_samples` texts per prompt, each the prompt plus its continuation
    up to the end-of-text token or, cut before it, the first of the stop strings `cfg.stop`.

    `prompt` is one text or a list (a batch, left-padded); None starts from the
    end-of-text token (a fresh document). `cfg.prompt` is not read, the caller passes it as
    `prompt`. Texts come prompt by prompt, each prompt's samples together. `stream(i, piece)`
    receives text i as it appears, the prompt first, so the pieces of a text join to it.
    Text is held back while it may be the start of a stop string or ends in part of a UTF-8
    character. Beam search (`cfg.num_beams` > 1) knows its texts only at the end, and
    streams each continuation in one piece then.
    """
    eot_id = tokenizer.eot_id
    prompts = [prompt] if prompt is None or isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise GptkitError("no prompts given; give at least one prompt")
    heads: list[str] = []
    prompt_ids: list[list[int]] = []
    for text in prompts:
        if text is None:
            if eot_id is None:
                raise GptkitError(
                    "this tokenizer has no end-of-text token to start from; give a prompt"
                )
            heads.append("")
            prompt_ids.append([eot_id])
            continue
        ids = tokenizer.encode(text)
        if not ids:
            raise GptkitError(f"prompt {text!r} encodes to no tokens; give a non-empty prompt")
        heads.append(text)
        prompt_ids.append(ids)
    n, stops = cfg.num_samples, list(cfg.stop)
    rows = [heads[r // n] for r in range(len(heads) * n)]
    if stream is not None:
        for i, head in enumerate(rows):
            if head:
                stream(i, head)
    rules: dict[str, Any] = {
        "max_new_tokens": cfg.max_new_tokens, "min_new_tokens": cfg.min_new_tokens,
        "temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p,
        "typical_p": cfg.typical_p, "repetition_penalty": cfg.repetition_penalty,
        "no_repeat_ngram_size": cfg.no_repeat_ngram_size,
        "bad_words_ids": bad_words_ids(tokenizer, cfg.bad_words) or None,
        "num_samples": n, "seed": cfg.seed, "eot_id": eot_id,
    }

    def cut(ids: list[int]) -> str:
        text = tokenizer.decode(ids)
        at = first_stop(text, stops)
        return text if at is None else text[:at]

    if cfg.num_beams > 1 and cfg.max_new_tokens > 0:
        def stopped(ids: list[int]) -> bool:
            return first_stop(tokenizer.decode(ids), stops) is not None

        out = beam_search(
            model, prompt_ids, num_beams=cfg.num_beams, length_penalty=cfg.length_penalty,
            early_stopping=cfg.early_stopping, stop=stopped if stops else None, **rules,
        )
        new = [ids[:-1] if ids and ids[-1] == eot_id else ids for ids in out.new_tokens]
        texts = [head + cut(ids) for head, ids in zip(rows, new, strict=True)]
        if stream is not None:
            for i, (head, text) in enumerate(zip(rows, texts, strict=True)):
                if len(text) > len(head):
                    stream(i, text[len(head) :])
        return texts

    new_ids: list[list[int]] = [[] for _ in rows]
    shown = list(rows)  # text each row has streamed so far
    finished = [False] * len(rows)
    for token in generate_tokens(model, prompt_ids, **rules):
        for i, t in enumerate(token.tolist()):
            if finished[i]:
                continue
            if t == eot_id:
                finished[i] = True
                continue
            new_ids[i].append(t)
            if stream is None and not stops:
                continue
            text = tokenizer.decode(new_ids[i])
            if first_stop(text, stops) is not None:
                finished[i] = True  # its text is cut and flushed below
            elif stream is not None:
                full = rows[i] + text[: showable(text, stops)]
                if len(full) > len(shown[i]) and full.startswith(shown[i]):
                    stream(i, full[len(shown[i]) :])
                    shown[i] = full
        if all(finished):
            break
    texts = [head + cut(ids) for head, ids in zip(rows, new_ids, strict=True)]
    if stream is not None:
        for i, text in enumerate(texts):
            if len(text) > len(shown[i]) and text.startswith(shown[i]):
                stream(i, text[len(shown[i]) :])
    return texts
