"""Using a classifier run (`gptkit classify`, `POST /v1/classify`): labels for texts, word tags.

A classifier is a GPT backbone plus a linear head (`gptkit.finetune.heads`), trained by
`gptkit finetune-classify` through the one training loop
(`gptkit.train.objectives.classify`). A classifier run directory:

    config.yaml      resolved RunConfig          labels.json   {"task", "labels": [id -> label]}
    tokenizer.json   the tokenizer               model.safetensors  backbone + head (the best)
    metrics.jsonl    train and eval records      eval.json     the kept model's held-out metrics
    best/, checkpoints/  as in every run (resume, early stopping)
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptkit.config import RunConfig, read_config
from gptkit.errors import GptkitError
from gptkit.finetune.classify_data import Label, encode_text, encode_words, join_words
from gptkit.finetune.heads import GPTClassifier, pad_batch
from gptkit.tokenizers import Tokenizer
from gptkit.train import checkpoint, distributed

LABELS_FILE = "labels.json"
EVAL_FILE = "eval.json"
MODEL_FILE = "model.safetensors"


@torch.no_grad()
def batch_logits(model: GPTClassifier, sequences: list[list[int]], device: torch.device,
                 batch_size: int, precision: str = "fp32") -> Iterator[torch.Tensor]:
    """Float logits per batch of `sequences`, in order, in eval mode (predicting, and
    scoring the held-out split while training)."""
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(sequences), batch_size):
            idx, mask, _ = pad_batch(sequences[start : start + batch_size], device=device)
            with distributed.autocast(device, precision):
                logits = model(idx, mask)
            yield logits.float()
    finally:
        model.train(was_training)


# --- using a trained classifier -------------------------------------------------------------
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

    @property
    def task(self) -> str:
        return self.model.task

    @property
    def device(self) -> torch.device:
        return self.model.score.weight.device

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[Prediction]:
        """The most likely label of each text, with every label's probability."""
        if self.task != "sequence":
            raise GptkitError(f"{self.path} tags words (token task); use predict_tokens")
        if isinstance(texts, str):
            texts = [texts]
        seqs = [encode_text(self.tokenizer, text, self.config.model.block_size)
                for text in texts]
        out = []
        for logits in batch_logits(self.model, seqs, self.device, batch_size):
            for probs in logits.softmax(-1).tolist():
                best = max(range(len(probs)), key=probs.__getitem__)
                named = {str(lab): p for lab, p in zip(self.labels, probs, strict=True)}
                out.append(Prediction(self.labels[best], probs[best], named))
        return out

    def predict_tokens(self, sentences: Sequence[Sequence[str]],
                       batch_size: int = 32) -> list[list[TokenPrediction]]:
        """A tag for every word of each sentence (a list of words); words past the model's
        context get O."""
        if self.task != "token":
            raise GptkitError(f"{self.path} labels whole texts (sequence task); use predict")
        rows = []
        for words in sentences:
            if isinstance(words, str) or not words or not all(
                    isinstance(w, str) and w.strip() for w in words):
                raise GptkitError(
                    f"predict_tokens takes lists of non-empty words, got {words!r}")
            pieces = encode_words(self.tokenizer, [w.strip() for w in words])
            rows.append(join_words(pieces, None, self.config.model.block_size))
        out, at = [], 0
        for logits in batch_logits(self.model, [r[0] for r in rows], self.device, batch_size):
            for probs in logits.softmax(-1):
                positions = rows[at][2]
                tagged = []
                for word, p in zip(sentences[at], positions, strict=True):
                    if p < 0:
                        tagged.append(TokenPrediction(word, "O", 1.0))
                        continue
                    score, best = probs[p].max(-1)
                    tagged.append(TokenPrediction(word, str(self.labels[int(best)]),
                                                  float(score)))
                out.append(tagged)
                at += 1
        return out


def load_classifier(path: str | Path, *, device: str | torch.device = "cpu") -> Classifier:
    """A classifier run written by `finetune_classifier`, in eval mode."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise GptkitError(
            f"classifier run {run_dir} does not exist; train one with gptkit finetune-classify")
    labels_path = run_dir / LABELS_FILE
    if not labels_path.is_file():
        raise GptkitError(
            f"{run_dir} is not a classifier run (no {LABELS_FILE}); train one with "
            "gptkit finetune-classify")
    config = read_config(run_dir / "config.yaml")
    tokenizer = Tokenizer.load(run_dir / "tokenizer.json")
    try:
        info = json.loads(labels_path.read_text(encoding="utf-8"))
        labels, task = list(info["labels"]), str(info["task"])
    except (ValueError, KeyError, TypeError) as exc:
        raise GptkitError(f"{labels_path} is damaged ({exc}); train the classifier again") from exc
    if config.model.vocab_size is None:
        config.model.vocab_size = tokenizer.vocab_size
    model = GPTClassifier(config.model, len(labels), task, config.classify.pooling)
    checkpoint.load_weights(model, run_dir / MODEL_FILE)
    model.to(device).eval()
    eval_path = run_dir / EVAL_FILE
    metrics = json.loads(eval_path.read_text()) if eval_path.is_file() else None
    return Classifier(run_dir, config, tokenizer, model, labels, metrics)
