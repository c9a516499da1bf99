"""A trained classifier (a `gptkit finetune-classify` run) in use: labels for texts, tags for
words. `gptkit.run.load_run` opens such a run and returns it as `Run.classifier`; the CLI
(`gptkit classify`) and the server (`POST /v1/classify`) call `predict` / `predict_tokens`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptkit.config import RunConfig
from gptkit.device import autocast
from gptkit.errors import GptkitError
from gptkit.finetune.chunks import Chunking, document_logits
from gptkit.finetune.classify_data import (
    Label,
    encode_text,
    encode_words,
    join_words,
    split_words,
)
from gptkit.finetune.heads import GPTClassifier, pad_batch
from gptkit.tokenizers import Tokenizer


@torch.no_grad()
def batched_logits(model: GPTClassifier, sequences: list[list[int]], device: torch.device,
                   batch_size: int, precision: str = "fp32") -> Iterator[torch.Tensor]:
    """Float logits per batch of `sequences`, in order, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(sequences), batch_size):
            idx, mask, _ = pad_batch(sequences[start : start + batch_size], device=device)
            with autocast(device, precision):
                logits = model(idx, mask)
            yield logits.float()
    finally:
        model.train(was_training)


@dataclass
class Prediction:
    label: Label
    score: float  # probability of `label`
    probabilities: dict[str, float]  # str(label) -> probability


@dataclass
class TokenPrediction:
    word: str
    tag: str
    score: float  # probability of `tag`


@dataclass
class Classifier:
    """A trained classifier run: `predict(texts)` (sequence) or `predict_tokens(words)` (token)."""

    path: Path
    config: RunConfig
    tokenizer: Tokenizer
    model: GPTClassifier
    labels: list[Label]
    metrics: dict[str, Any] | None = None  # eval.json
    precision: str = "fp32"  # autocast of the forward passes, resolved (gptkit.device)

    @property
    def task(self) -> str:
        return self.model.task

    @property
    def device(self) -> torch.device:
        return self.model.score.weight.device

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[Prediction]:
        """The most likely label of each text, with every label's probability; a text longer
        than the context is cut, or read in chunks whose logits are aggregated
        (classify.long_inputs, gptkit.finetune.chunks)."""
        if self.task != "sequence":
            raise GptkitError(f"{self.path} tags words (token task); use predict_tokens")
        if isinstance(texts, str):
            texts = [texts]
        logits = self.text_logits(texts, batch_size)
        out = []
        for probs in logits.softmax(-1).tolist():
            best = max(range(len(probs)), key=probs.__getitem__)
            named = {str(lab): p for lab, p in zip(self.labels, probs, strict=True)}
            out.append(Prediction(self.labels[best], probs[best], named))
        return out

    def text_logits(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """(texts, labels): each text's logits, aggregated over its chunks when chunked."""
        chunking = Chunking.of(self.config)
        docs = []
        for text in texts:
            ids = encode_text(self.tokenizer, text)
            docs.append([ids[s:e] for s, e in chunking.spans(len(ids))])
        flat = [chunk for doc in docs for chunk in doc]
        logits = torch.cat(list(batched_logits(self.model, flat, self.device, batch_size,
                                               self.precision)))
        return document_logits(logits, [len(d) for d in docs], chunking.aggregate)

    def predict_tokens(self, sentences: Sequence[Sequence[str]],
                       batch_size: int = 32) -> list[list[TokenPrediction]]:
        """A tag for every word of each sentence (a list of words); past the model's context,
        words get O (truncate) or their tag from the chunk where they have the most context
        (classify.long_inputs=chunk)."""
        if self.task != "token":
            raise GptkitError(f"{self.path} labels whole texts (sequence task); use predict")
        chunking = Chunking.of(self.config)
        rows = []
        for words in sentences:
            if isinstance(words, str) or not words or not all(
                    isinstance(w, str) and w.strip() for w in words):
                raise GptkitError(
                    f"predict_tokens takes lists of non-empty words, got {words!r}")
            pieces = encode_words(self.tokenizer, [w.strip() for w in words])
            rows.append(split_words(*join_words(pieces, None), chunking))
        flat = [ids for doc in rows for ids, _ in doc.rows]
        logits = [row for batch in batched_logits(self.model, flat, self.device, batch_size,
                                                  self.precision) for row in batch]
        out, at = [], 0
        for words, doc in zip(sentences, rows, strict=True):
            tagged = []
            for word, owner in zip(words, doc.owners, strict=True):
                if owner is None:
                    tagged.append(TokenPrediction(word, "O", 1.0))
                    continue
                score, best = logits[at + owner[0]][owner[1]].softmax(-1).max(-1)
                tagged.append(TokenPrediction(word, str(self.labels[int(best)]), float(score)))
            out.append(tagged)
            at += len(doc.rows)
        return out
