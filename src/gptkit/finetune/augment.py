"""Data augmentation for small fine-tuning sets (`data.augment`).

A few hundred examples are easy to memorise; perturbing them a little each time they are
seen (drop or swap a word, replace a token) is a cheap regulariser. Specs are strings
`name=p`, or `name` alone for the default probability:

| spec | what it does |
| --- | --- |
| `token_dropout=p` | drop each token id with probability p (never all of them) |
| `token_noise=p` | replace each token id with a random one w.p. p (special ids never in or out) |
| `word_swap=p` | swap a word with the next one w.p. p per word |
| `word_delete=p` | delete each word w.p. p (never all of them) |
| `sentence_shuffle=p` | shuffle the sentences of a text w.p. p (default 1: always) |

Every call draws from its own generator, seeded by `(seed, *key, op)`: with `key=(epoch,
example_index)` the same example gets the same perturbation in a rerun whatever the order of
calls, and a new one in the next epoch. Augmentation is for training examples only; callers
never pass evaluation data through it.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Sequence

from gptkit.errors import GptkitError

# name -> default probability
TEXT_OPS: dict[str, float] = {"sentence_shuffle": 1.0, "word_swap": 0.1, "word_delete": 0.1}
TOKEN_OPS: dict[str, float] = {"token_dropout": 0.1, "token_noise": 0.1}
DEFAULTS: dict[str, float] = {**TEXT_OPS, **TOKEN_OPS}

_WORD = re.compile(r"\S+")
# a sentence ends with . ! or ? (and any closing quotes/brackets) before whitespace
_SENTENCE_END = re.compile(r"(?<=[.!?])([\"')\]]*)(\s+)")


def _valid_names() -> str:
    return ", ".join(DEFAULTS)


def parse_spec(spec: str) -> tuple[str, float]:
    """`"word_swap=0.2"` -> ("word_swap", 0.2); `"word_swap"` -> its default."""
    name, sep, value = (part.strip() for part in str(spec).partition("="))
    if name not in DEFAULTS:
        raise GptkitError(
            f"data.augment: unknown augmentation {spec!r}; valid names: {_valid_names()} "
            "(written name=p, e.g. word_delete=0.1)"
        )
    if not sep:
        return name, DEFAULTS[name]
    try:
        p = float(value)
    except ValueError:
        p = float("nan")
    if not 0.0 <= p <= 1.0:  # also rejects nan
        raise GptkitError(
            f"data.augment: {spec!r} needs a probability in [0, 1] after '=', e.g. {name}=0.1"
        )
    return name, p


class Augmenter:
    """Applies the augmentations of `data.augment` to one training example at a time."""

    def __init__(
        self,
        specs: list[str],
        seed: int,
        vocab_size: int | None = None,
        special_ids: Sequence[int] = (),
    ) -> None:
        self.seed = int(seed)
        self.ops: dict[str, float] = {}
        for spec in specs:
            name, p = parse_spec(spec)
            if name in self.ops:
                raise GptkitError(f"data.augment names {name} twice; keep one {name}=p")
            self.ops[name] = p
        if self.ops.get("token_noise", 0.0) > 0 and (vocab_size is None or vocab_size < 1):
            raise GptkitError("data.augment: token_noise needs the tokenizer's vocabulary size")
        self.vocab_size = vocab_size
        self.special_ids = frozenset(int(i) for i in special_ids)
        if vocab_size is not None and self.ops.get("token_noise", 0.0) > 0:
            self._noise_ids = [i for i in range(vocab_size) if i not in self.special_ids]
            if not self._noise_ids:
                raise GptkitError("data.augment: token_noise has no non-special ids to draw from")

    @property
    def enabled(self) -> bool:
        """Whether any augmentation can change an example."""
        return any(p > 0 for p in self.ops.values())

    @property
    def names(self) -> tuple[str, ...]:
        """The augmentations that can change an example, in the order they are applied."""
        return tuple(name for name, p in self.ops.items() if p > 0)

    def _rng(self, key: tuple[int, ...], op: str) -> random.Random:
        """A generator that depends only on (seed, key, op): order of calls does not matter."""
        digest = hashlib.sha256(json.dumps([self.seed, *key, op]).encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "little"))

    def text(self, text: str, key: tuple[int, ...]) -> str:
        """The word- and sentence-level augmentations, in the order `data.augment` lists them."""
        for name, p in self.ops.items():
            if p > 0 and name in TEXT_OPS:
                text = _TEXT_FUNCS[name](text, p, self._rng(key, name))
        return text

    def tokens(self, ids: list[int], key: tuple[int, ...]) -> list[int]:
        """The token-level augmentations, in the order `data.augment` lists them."""
        out = list(ids)
        for name, p in self.ops.items():
            if p <= 0 or name not in TOKEN_OPS:
                continue
            rng = self._rng(key, name)
            if name == "token_dropout":
                out = self._dropout(out, p, rng)
            else:
                out = self._noise(out, p, rng)
        return out

    def _dropout(self, ids: list[int], p: float, rng: random.Random) -> list[int]:
        """Special ids (end-of-text, ...) are kept: they mark structure, not content."""
        keep = [i in self.special_ids or rng.random() >= p for i in ids]
        if ids and not any(k for k, i in zip(keep, ids, strict=True) if i not in self.special_ids):
            droppable = [n for n, i in enumerate(ids) if i not in self.special_ids]
            if droppable:  # never drop every content token: keep one at random
                keep[rng.choice(droppable)] = True
        return [i for i, k in zip(ids, keep, strict=True) if k]

    def _noise(self, ids: list[int], p: float, rng: random.Random) -> list[int]:
        return [
            i if i in self.special_ids or rng.random() >= p else rng.choice(self._noise_ids)
            for i in ids
        ]

    def __repr__(self) -> str:
        specs = ", ".join(f"{name}={p:g}" for name, p in self.ops.items())
        return f"Augmenter([{specs}], seed={self.seed})"


# --- text operations: whitespace between words is kept where it was ------------------------
def _split_words(text: str) -> tuple[list[str], list[str]]:
    """Words and the whitespace around them: text = gaps[0] w0 gaps[1] w1 ... wn-1 gaps[n]."""
    return _WORD.findall(text), _WORD.split(text)


def _join_words(words: list[str], gaps: list[str]) -> str:
    return gaps[0] + "".join(w + g for w, g in zip(words, gaps[1:], strict=True))


def word_swap(text: str, p: float, rng: random.Random) -> str:
    """Each word changes places with the next one w.p. p; a swapped pair is not swapped again."""
    words, gaps = _split_words(text)
    i = 0
    while i < len(words) - 1:
        if rng.random() < p:
            words[i], words[i + 1] = words[i + 1], words[i]
            i += 2
        else:
            i += 1
    return _join_words(words, gaps)


def word_delete(text: str, p: float, rng: random.Random) -> str:
    """Each word is deleted w.p. p (with the whitespace after it); one word always stays."""
    words, gaps = _split_words(text)
    if not words:
        return text
    kept = [n for n in range(len(words)) if rng.random() >= p]
    if not kept:
        kept = [rng.randrange(len(words))]
    # a kept word is followed by the gap that followed it, the last one by the text's ending
    pieces = [words[n] + (gaps[n + 1] if n != kept[-1] else gaps[-1]) for n in kept]
    return gaps[0] + "".join(pieces)


def sentence_shuffle(text: str, p: float, rng: random.Random) -> str:
    """The sentences of `text` in a random order w.p. p; the whitespace between stays put."""
    if rng.random() >= p:
        return text
    stripped = text.strip()
    lead, trail = text[: len(text) - len(text.lstrip())], text[len(text.rstrip()):]
    parts = _SENTENCE_END.split(stripped)
    # [s0, closers0, gap0, s1, closers1, gap1, ..., sn]: closers belong to their sentence
    sentences = [parts[i] + (parts[i + 1] if i + 1 < len(parts) else "")
                 for i in range(0, len(parts), 3)]
    gaps = [parts[i] for i in range(2, len(parts), 3)]
    if len(sentences) < 2:
        return text
    rng.shuffle(sentences)
    body = sentences[0] + "".join(g + s for g, s in zip(gaps, sentences[1:], strict=True))
    return lead + body + trail


_TEXT_FUNCS: dict[str, Callable[[str, float, random.Random], str]] = {
    "sentence_shuffle": sentence_shuffle,
    "word_swap": word_swap,
    "word_delete": word_delete,
}
