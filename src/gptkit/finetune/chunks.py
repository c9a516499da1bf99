"""Inputs longer than the model's context: cut them, or split them into overlapping chunks.

`classify.long_inputs=chunk` splits a text's ids into windows of `model.block_size` tokens,
consecutive windows overlapping by `classify.chunk_stride` tokens (Hugging Face tokenizers'
`return_overflowing_tokens` with `stride`). A sequence classifier trains on every chunk with
its document's label and, to score or predict a document, aggregates its chunks' logits
(mean or max); a token classifier tags each word from the chunk where the word has the most
context, the rule of Hugging Face's long-document question answering (`_check_is_max_context`):
the chunk in which it is farthest from either edge. A text that fits in one window is one
chunk, the same as today's `truncate`. `Counts` is what the data summary says was cut or split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gptkit.config import RunConfig

Span = tuple[int, int]  # [start, end) of a chunk in the text's ids


def chunk_spans(n: int, length: int, overlap: int) -> list[Span]:
    """Windows of at most `length` ids covering range(n), each starting `length - overlap`
    after the one before; the last ends at n (and may be shorter)."""
    if overlap >= length:
        raise ValueError(f"overlap {overlap} must be smaller than the chunk length {length}")
    spans = [(0, min(n, length))]
    while spans[-1][1] < n:
        start = spans[-1][0] + length - overlap
        spans.append((start, min(n, start + length)))
    return spans


def max_context(position: int, spans: list[Span]) -> tuple[int, int]:
    """(chunk, position in it) of the chunk where `position` has the most context on both
    sides, ties to the longer then the earlier chunk (Hugging Face's rule)."""
    best, best_score = -1, -1.0
    for c, (start, end) in enumerate(spans):
        if start <= position < end:
            score = min(position - start, end - 1 - position) + 0.01 * (end - start)
            if score > best_score:
                best, best_score = c, score
    if best < 0:
        raise ValueError(f"position {position} is in no chunk")
    return best, position - spans[best][0]


def aggregate(logits: Tensor, how: str) -> Tensor:
    """(chunks, labels) -> (labels): the document's logits, the mean or max over chunks."""
    return logits.mean(0) if how == "mean" else logits.max(0).values


@dataclass(frozen=True)
class Chunking:
    """How one run treats a text's ids: `spans(n)` are the pieces the model reads."""

    block_size: int
    chunk: bool = False
    overlap: int = 0
    aggregate: str = "mean"

    @classmethod
    def of(cls, cfg: RunConfig) -> Chunking:
        c, block = cfg.classify, cfg.model.block_size
        overlap = block // 4 if c.chunk_stride is None else c.chunk_stride
        return cls(block, c.long_inputs == "chunk", overlap, c.chunk_aggregate)

    def spans(self, n: int) -> list[Span]:
        """Chunks of `n` ids: one cut to block_size (truncate), or overlapping windows."""
        if not self.chunk:
            return [(0, min(n, self.block_size))]
        return chunk_spans(n, self.block_size, self.overlap)


@dataclass
class Counts:
    """What happened to the long examples of a split, for the data summary and data.json."""

    examples: int = 0
    long: int = 0  # longer than the model reads at once
    chunks: int = 0  # chunks of the long examples (chunking)
    cut_tokens: int = 0  # ids dropped (truncation)

    def add(self, n: int, spans: list[Span]) -> None:
        self.examples += 1
        if len(spans) > 1 or spans[0][1] - spans[0][0] < n:
            self.long += 1
            self.chunks += len(spans) if len(spans) > 1 else 0
            self.cut_tokens += n - sum(e - s for s, e in spans) if len(spans) == 1 else 0

    def describe(self, split: str, limit: int, chunk: bool) -> str:
        """'train: 400 examples, 12 longer than 64 tokens split into 31 chunks' (or cut)."""
        line = f"{split}: {self.examples} examples"
        if not self.long:
            return f"{line}, none longer than {limit} tokens"
        if chunk:
            return (f"{line}, {self.long} longer than {limit} tokens split into "
                    f"{self.chunks} chunks")
        return (f"{line}, {self.long} longer than {limit} tokens cut ({self.cut_tokens} "
                "tokens dropped)")

    def as_dict(self) -> dict[str, int]:
        return {"examples": self.examples, "long": self.long, "chunks": self.chunks,
                "cut_tokens": self.cut_tokens}



def document_logits(chunk_logits: Tensor, chunks: list[int], how: str) -> Tensor:
    """(documents, labels) from the (all chunks, labels) logits of documents of `chunks`
    chunks each, in order, aggregated by `how`."""
    return torch.stack([aggregate(part, how) for part in chunk_logits.split(chunks)])
