"""Classification data: records -> labelled examples -> token ids.

Sequence task: records (CSV or JSONL) with a text field and a label field; labels are
strings or integers, numbered in sorted order. Token task: JSONL records with a list of
words and a list of tags (e.g. BIO: B-PER, I-PER, O) of the same length; each word's tag is
predicted at its first sub-token, the other sub-tokens are ignored (-100), as in Hugging
Face's token-classification examples. The held-out split is the end of the file
(`data.val_fraction`), as for every other gptkit data source. `Encoder` turns examples into
ids and targets, augmenting training examples by a key (epoch, index) so that a resumed run
sees the same augmented batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptkit.config import ClassifyConfig, RunConfig
from gptkit.errors import GptkitError
from gptkit.finetune.augment import Augmenter
from gptkit.finetune.chunks import Chunking, Counts, max_context
from gptkit.finetune.records import Record, load_records, split_records
from gptkit.model import IGNORE
from gptkit.tokenizers import UNK, Tokenizer

Label = str | int


@dataclass
class SequenceExample:
    text: str
    label: Label
    where: str  # file:line


@dataclass
class TokenExample:
    words: list[str]
    tags: list[str]
    where: str


Example = SequenceExample | TokenExample


@dataclass
class TaskData:
    task: str
    labels: list[Label]  # id -> label, sorted
    train: list[Any]  # SequenceExample | TokenExample
    val: list[Any]

    @property
    def label_ids(self) -> dict[Label, int]:
        return {label: i for i, label in enumerate(self.labels)}

    def train_texts(self) -> list[str]:
        """What a fresh tokenizer learns from (the training split only)."""
        if self.task == "token":
            return [" ".join(e.words) for e in self.train]
        return [e.text for e in self.train]


def _sequence_example(record: Record, c: ClassifyConfig) -> SequenceExample:
    hint = f"set classify.text_field to the column holding the text (got {c.text_field!r})"
    text = record.get(c.text_field, str, hint)
    hint = f"set classify.label_field to the column holding the label (got {c.label_field!r})"
    label = record.get(c.label_field, (str, int), hint)
    if isinstance(label, str):
        label = label.strip()
        if not label:
            raise GptkitError(f"{record.where}: field {c.label_field!r} is empty")
    return SequenceExample(text, label, record.where)


def _token_example(record: Record, c: ClassifyConfig) -> TokenExample:
    words = record.get(c.tokens_field, list,
                       f"token classification needs a list of words in {c.tokens_field!r} "
                       "(classify.tokens_field)")
    tags = record.get(c.tags_field, list,
                      f"token classification needs a list of tags in {c.tags_field!r} "
                      "(classify.tags_field)")
    for name, values in ((c.tokens_field, words), (c.tags_field, tags)):
        for i, value in enumerate(values):
            if not isinstance(value, str) or not value.strip():
                raise GptkitError(
                    f"{record.where}: {name}[{i}] must be a non-empty string, got {value!r}"
                )
    if len(words) != len(tags):
        raise GptkitError(
            f"{record.where}: {len(words)} {c.tokens_field} but {len(tags)} {c.tags_field}; "
            "give one tag per word"
        )
    return TokenExample([w.strip() for w in words], [t.strip() for t in tags], record.where)


def _sorted_labels(values: set[Label], where: str) -> list[Label]:
    kinds = {type(v) for v in values}
    if len(kinds) > 1:
        raise GptkitError(
            f"{where}: labels mix numbers and text ({sorted(map(str, values))[:6]}); "
            "write every label the same way"
        )
    return sorted(values)


def read_task_data(cfg: RunConfig) -> TaskData:
    """Training and held-out examples of `data.source`, checked, with the label list."""
    c = cfg.classify
    records = load_records(cfg.data)
    file = str(Path(cfg.data.source))
    make = _token_example if c.task == "token" else _sequence_example
    examples: list[Any] = [make(r, c) for r in records]
    if len(examples) < 2:
        raise GptkitError(f"{file} has only one record; a held-out split needs at least two")
    train_records = split_records(records, "train", cfg.data.val_fraction)
    n_train = len(train_records)
    train, val = examples[:n_train], examples[n_train:]

    def values(e: Any) -> list[Label]:
        return list(e.tags) if c.task == "token" else [e.label]

    seen = {v for e in train for v in values(e)}
    what = "tag" if c.task == "token" else "label"
    if len(seen) < 2:
        raise GptkitError(
            f"the training split of {file} (its first {n_train} records) has only one {what} "
            f"({next(iter(seen))!r}); a classifier needs at least two: add examples of other "
            "classes, or shuffle the file if it is sorted by label"
        )
    labels = _sorted_labels(seen | {v for e in val for v in values(e)}, file)
    for e in val:  # a label never trained on cannot be predicted: the split is wrong
        for v in values(e):
            if v not in seen:
                raise GptkitError(
                    f"{e.where}: {what} {v!r} is in the held-out split (the last "
                    f"{len(val)} records, data.val_fraction={cfg.data.val_fraction}) but never "
                    f"in training; shuffle {file} or add training examples of it"
                )
    return TaskData(c.task, [v for v in labels if v in seen], train, val)


# --- token ids ------------------------------------------------------------------------------
def encode_text(tokenizer: Tokenizer, text: str) -> list[int]:
    """The text's ids, all of them (`Chunking.spans` says which the model reads)."""
    ids = tokenizer.encode(text)
    if not ids:
        raise GptkitError(f"text {text!r} has no tokens")
    return ids


def encode_words(tokenizer: Tokenizer, words: list[str]) -> list[tuple[list[int], list[int]]]:
    """Per word: (ids of the space before it, ids of the word itself).

    The words are encoded as the text `" ".join(words)` would be by a tokenizer that keeps a
    word's leading space with it (byte-level BPE: "Ġword") or not (char level: " ", "w", ...).
    A word's tag goes on its first own id, never on a bare space.
    """
    pieces = []
    for i, word in enumerate(words):
        ids = tokenizer.encode(word if i == 0 else " " + word)
        start = next((k for k in range(len(ids)) if tokenizer.decode(ids[: k + 1]).strip()), 0)
        pieces.append((ids[:start], ids[start:]))
    return pieces


def join_words(
    pieces: list[tuple[list[int], list[int]]], tag_ids: list[int] | None,
    block_size: int | None = None,
) -> tuple[list[int], list[int], list[int]]:
    """Ids of the whole text, targets (tag at each word's first id, else -100), and each word's
    position (-1 for words cut off by `block_size`, which are then predicted as O); None
    keeps every id."""
    ids: list[int] = []
    targets: list[int] = []
    positions: list[int] = []
    for w, (space, word) in enumerate(pieces):
        ids += space
        targets += [IGNORE] * len(space)
        positions.append(len(ids) if block_size is None or len(ids) < block_size else -1)
        ids += word
        targets += [IGNORE if tag_ids is None else tag_ids[w]] + [IGNORE] * (len(word) - 1)
    if block_size is None:
        return ids, targets, positions
    return ids[:block_size], targets[:block_size], positions


@dataclass
class TokenChunks:
    """A tagged text as the model reads it: ids and targets per chunk, and where each word is
    tagged from: (chunk, position in it), the chunk of its most context; None: cut off."""

    rows: list[tuple[list[int], list[int]]]
    owners: list[tuple[int, int] | None]


def split_words(ids: list[int], targets: list[int], positions: list[int],
                chunking: Chunking) -> TokenChunks:
    """`join_words`' uncut output in the chunks of `chunking`."""
    spans = chunking.spans(len(ids))
    end = spans[-1][1]
    return TokenChunks([(ids[s:e], targets[s:e]) for s, e in spans],
                       [max_context(p, spans) if 0 <= p < end else None for p in positions])


def special_ids(tokenizer: Tokenizer) -> list[int]:
    """Ids augmentation must never produce or remove (end-of-text, unknown character)."""
    ids = [tokenizer.eot_id, tokenizer.backend.token_to_id(UNK)]
    return [i for i in ids if i is not None]


class Encoder:
    """Turns examples into (ids, target) pairs, augmenting training examples on request, and
    splits long ones as `chunking` says (by default cut to `block_size`)."""

    def __init__(self, data: TaskData, tokenizer: Tokenizer, block_size: int,
                 augmenter: Augmenter | None = None, chunking: Chunking | None = None) -> None:
        self.task, self.tokenizer, self.block_size = data.task, tokenizer, block_size
        self.chunking = chunking or Chunking(block_size)
        self.label_ids = data.label_ids
        self.augmenter = augmenter if augmenter is not None and augmenter.enabled else None
        self._words: dict[str, list[tuple[list[int], list[int]]]] = {}  # file:line -> pieces

    def _sequence_ids(self, example: Any, key: tuple[int, ...] | None) -> list[int]:
        text, aug = example.text, self.augmenter
        if aug is None or key is None:
            return encode_text(self.tokenizer, text)
        ids = self.tokenizer.encode(aug.text(text, key))
        return aug.tokens(ids, key) or self.tokenizer.encode(text)

    def sequence_chunks(self, example: Any, key: tuple[int, ...] | None = None,
                        ) -> tuple[list[list[int]], int]:
        """The text's chunks (one when it fits, or when truncating) and its label id."""
        ids = self._sequence_ids(example, key)
        return [ids[s:e] for s, e in self.chunking.spans(len(ids))], self.label_ids[example.label]

    def sequence(self, example: Any, key: tuple[int, ...] | None = None) -> tuple[list[int], int]:
        """The text's first chunk (all of it the model reads when truncating) and label id."""
        chunks, label = self.sequence_chunks(example, key)
        return chunks[0], label

    def _pieces(self, example: Any, key: tuple[int, ...] | None,
                ) -> list[tuple[list[int], list[int]]]:
        pieces = self._words.get(example.where)
        if pieces is None:
            pieces = self._words[example.where] = encode_words(self.tokenizer, example.words)
        if key is not None and self.augmenter is not None:
            aug = self.augmenter  # per word, so each word keeps its first id and its tag
            pieces = [(space, aug.tokens(word, (*key, w))) for w, (space, word) in
                      enumerate(pieces)]
        return pieces

    def token(self, example: Any, key: tuple[int, ...] | None = None,
              ) -> tuple[list[int], list[int], list[int]]:
        """Ids, targets and word positions of the first `block_size` ids (truncation)."""
        tags = [self.label_ids[t] for t in example.tags]
        return join_words(self._pieces(example, key), tags, self.block_size)

    def token_chunks(self, example: Any, key: tuple[int, ...] | None = None) -> TokenChunks:
        """The tagged words in chunks, each word tagged from its chunk of most context."""
        tags = [self.label_ids[t] for t in example.tags]
        return split_words(*join_words(self._pieces(example, key), tags), self.chunking)

    def chunk_count(self, example: Any) -> int:
        """How many chunks the (not augmented) example is read in: training items per epoch."""
        if self.task == "token":
            return len(self.token_chunks(example).rows)
        return len(self.sequence_chunks(example)[0])

    def counts(self, examples: list[Any]) -> Counts:
        """How many of `examples` are longer than the model reads at once, and their chunks."""
        counts = Counts()
        for example in examples:
            if self.task == "token":
                n = len(join_words(self._pieces(example, None), None)[0])
            else:
                n = len(self._sequence_ids(example, None))
            counts.add(n, self.chunking.spans(n))
        return counts
