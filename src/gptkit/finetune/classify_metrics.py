"""Scores of a classifier on held-out examples, and the report `gptkit finetune-classify` prints.

Sequence task: accuracy, macro-F1, per-label precision/recall/F1 and the confusion matrix
(scikit-learn). Token task: entity-level precision, recall and F1 under the CoNLL rules
(seqeval), and word accuracy. Both libraries come with the `finetune` extra.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from gptkit.errors import GptkitError
from gptkit.finetune.classify_data import Label


def _need(module: str) -> Any:
    """scikit-learn and seqeval come with the `finetune` extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise GptkitError(
            f"{module.split('.')[0]} is not installed; pip install 'gptkit[finetune]'"
        ) from None


def sequence_metrics(gold: list[int], pred: list[int], labels: list[Label]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-label scores and the confusion matrix (rows: gold)."""
    metrics = _need("sklearn.metrics")
    ids = list(range(len(labels)))
    p, r, f1, support = metrics.precision_recall_fscore_support(
        gold, pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(metrics.accuracy_score(gold, pred)),
        "macro_f1": float(metrics.f1_score(gold, pred, labels=ids, average="macro",
                                           zero_division=0)),
        "per_label": {str(labels[i]): {"precision": float(p[i]), "recall": float(r[i]),
                                       "f1": float(f1[i]), "support": int(support[i])}
                      for i in ids},
        "confusion_matrix": metrics.confusion_matrix(gold, pred, labels=ids).tolist(),
    }


def token_metrics(gold: list[list[str]], pred: list[list[str]]) -> dict[str, Any]:
    """Entity-level precision, recall and F1 (seqeval, CoNLL rules) and word accuracy."""
    seqeval = _need("seqeval.metrics")
    report = seqeval.classification_report(gold, pred, output_dict=True, zero_division=0)
    words = sum(len(g) for g in gold)
    right = sum(a == b for g, q in zip(gold, pred, strict=True)
                for a, b in zip(g, q, strict=True))
    return {
        "precision": float(seqeval.precision_score(gold, pred, zero_division=0)),
        "recall": float(seqeval.recall_score(gold, pred, zero_division=0)),
        "f1": float(seqeval.f1_score(gold, pred, zero_division=0)),
        "token_accuracy": right / max(words, 1),
        "per_type": {k: {"precision": float(v["precision"]), "recall": float(v["recall"]),
                         "f1": float(v["f1-score"]), "support": int(v["support"])}
                     for k, v in report.items() if not k.endswith(" avg")},
    }


def describe_metrics(task: str, m: dict[str, Any]) -> str:
    """One line: the numbers a user compares."""
    if task == "sequence":
        return f"loss {m['loss']:.4f}, accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}"
    return (f"loss {m['loss']:.4f}, entity F1 {m['f1']:.4f} (precision {m['precision']:.4f}, "
            f"recall {m['recall']:.4f}), token accuracy {m['token_accuracy']:.4f}")


def print_report(result: dict[str, Any], file: Any = None) -> None:
    """Held-out metrics as `gptkit finetune-classify` shows them (on stdout by default)."""
    file = sys.stdout if file is None else file
    print(describe_metrics(result["task"], result), file=file)
    if result["task"] == "sequence":
        names = [str(label) for label in result["labels"]]
        width = max(len(n) for n in names)
        cells = [max(len(n), 5) for n in names]
        print("confusion matrix (rows: true label, columns: predicted)", file=file)
        print(" " * width + "".join(f" {n:>{w}}" for n, w in zip(names, cells, strict=True)),
              file=file)
        for name, row in zip(names, result["confusion_matrix"], strict=True):
            counts = "".join(f" {v:>{w}}" for v, w in zip(row, cells, strict=True))
            print(f"{name:>{width}}{counts}", file=file)
    else:
        for kind, m in sorted(result.get("per_type", {}).items()):
            print(f"  {kind:<10} precision {m['precision']:.4f} recall {m['recall']:.4f} "
                  f"F1 {m['f1']:.4f} ({m['support']} entities)", file=file)
