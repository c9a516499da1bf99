"""Text in, text out: `sample_text` encodes prompts, bans words, generates, and cuts and
streams the texts at stop strings (which act on text, beyond `transformers`' token-level
settings). The server reuses `first_stop` and `showable` to stream as `sample_text` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from gptkit.errors import GptkitError
from gptkit.generation.beam import beam_search
from gptkit.generation.config import GenerationConfig
from gptkit.generation.sampling import generate_tokens
from gptkit.generation.speculative import Speculative, check_settings, speculative_tokens
from gptkit.model import GPT


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
    cfg: GenerationConfig,
    stream: Callable[[int, str], None] | None = None,
    speculative: Speculative | None = None,
) -> list[str]:
    """Generate `cfg.num_samples` texts per prompt, each the prompt plus its continuation
    up to the end-of-text token or, cut before it, the first of the stop strings `cfg.stop`.

    `prompt` is one text or a list (a batch, left-padded); None starts from the
    end-of-text token (a fresh document). `cfg.prompt` is not read, the caller passes it as
    `prompt`. Texts come prompt by prompt, each prompt's samples together. `stream(i, piece)`
    receives text i as it appears, the prompt first, so the pieces of a text join to it.
    Text is held back while it may be the start of a stop string or ends in part of a UTF-8
    character. Beam search (`cfg.num_beams` > 1) knows its texts only at the end, and
    streams each continuation in one piece then. `cfg.bad_words` are encoded here, as
    written and after a space, and banned with `cfg.bad_words_ids`. `speculative` (a draft
    model, `gptkit.generation.speculative`) decodes with a draft: the same texts when greedy,
    the same distribution when sampled; its `stats` count the draft tokens accepted.
    """
    if speculative is not None:
        check_settings(cfg)
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
    banned = bad_words_ids(tokenizer, cfg.bad_words) + list(cfg.bad_words_ids or [])
    settings = cfg.model_copy(update={"bad_words": [], "bad_words_ids": banned or None})
    if cfg.max_new_tokens == 0:
        return rows

    def cut(ids: list[int]) -> str:
        text = tokenizer.decode(ids)
        at = first_stop(text, stops)
        return text if at is None else text[:at]

    if cfg.num_beams > 1:
        def stopped(ids: list[int]) -> bool:
            return first_stop(tokenizer.decode(ids), stops) is not None

        out = beam_search(model, prompt_ids, settings, eot_id=eot_id,
                          stop=stopped if stops else None)
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
    tokens = (generate_tokens(model, prompt_ids, settings, eot_id=eot_id)
              if speculative is None else
              speculative_tokens(model, speculative.draft, prompt_ids, settings, eot_id=eot_id,
                                 draft_tokens=speculative.tokens, stats=speculative.stats))
    for token in tokens:
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
