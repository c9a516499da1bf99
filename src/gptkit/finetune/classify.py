"""`gptkit finetune-classify`: teach a GPT to label texts (sentiment, topics) or words (NER).

The model is a GPT backbone, either a trained run (`train.init_from`, whose tokenizer is
used) or a fresh one built from the recipe's model section, plus a linear head
(`gptkit.finetune.heads`). A small loop of its own trains it: examples are drawn in seeded
epochs, augmented on the fly (`data.augment`, training examples only), padded per batch;
AdamW with the usual warmup/decay schedule and gradient clipping. The held-out split is
scored every `train.eval_interval` steps and at the end; the best model by macro-F1
(sequence) or entity F1 (token), ties broken by loss, is the one kept.

A classifier run directory:

    config.yaml      resolved RunConfig          labels.json   {"task", "labels": [id -> label]}
    tokenizer.json   the tokenizer               model.safetensors  backbone + head
    metrics.jsonl    train and eval records      eval.json     the kept model's held-out metrics
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from gptkit import device as devices
from gptkit import weights
from gptkit.config import SHAPE_KEYS, RunConfig, read_config, save_config
from gptkit.config.usage import check_used, run_kinds
from gptkit.errors import GptkitError
from gptkit.finetune.augment import TEXT_OPS, Augmenter, parse_spec
from gptkit.finetune.classifier import batched_logits
from gptkit.finetune.classify_data import (
    IGNORE,
    Label,
    TaskData,
    encode_text,
    encode_words,
    join_words,
    read_task_data,
)
from gptkit.finetune.heads import GPTClassifier, pad_batch
from gptkit.model import GPT
from gptkit.rundir import EVAL_FILE, LABELS_FILE, MODEL_FILE
from gptkit.tokenizers import UNK, Tokenizer, build_tokenizer
from gptkit.train.metrics import json_line
from gptkit.train.optim import build_optimizer
from gptkit.train.schedule import lr_at

# what an earlier run (classifier or language model) may have left in a directory we replace
_STALE = (MODEL_FILE, LABELS_FILE, EVAL_FILE, "metrics.jsonl", "tokenizer.json", "checkpoints",
          "best", "tb", "data.json", "environment.json")


@dataclass
class ClassifyResult:
    run_dir: Path
    task: str
    labels: list[Label]
    steps: int
    best_step: int
    metrics: dict[str, Any] = field(default_factory=dict)  # as in eval.json


def _need(module: str) -> Any:
    """scikit-learn and seqeval come with the `finetune` extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise GptkitError(
            f"{module.split('.')[0]} is not installed; pip install 'gptkit[finetune]'"
        ) from None


def special_ids(tokenizer: Tokenizer) -> list[int]:
    """Ids augmentation must never produce or remove (end-of-text, unknown character)."""
    ids = [tokenizer.eot_id, tokenizer.backend.token_to_id(UNK)]
    return [i for i in ids if i is not None]


# --- encoding -------------------------------------------------------------------------------
class Encoder:
    """Turns examples into (ids, target) pairs, augmenting training examples on request."""

    def __init__(self, data: TaskData, tokenizer: Tokenizer, block_size: int,
                 augmenter: Augmenter | None = None) -> None:
        self.task, self.tokenizer, self.block_size = data.task, tokenizer, block_size
        self.label_ids = data.label_ids
        self.augmenter = augmenter if augmenter is not None and augmenter.enabled else None
        self._words: dict[str, list[tuple[list[int], list[int]]]] = {}  # file:line -> pieces

    def sequence(self, example: Any, key: tuple[int, ...] | None = None) -> tuple[list[int], int]:
        text, aug, label = example.text, self.augmenter, self.label_ids[example.label]
        if aug is None or key is None:
            return encode_text(self.tokenizer, text, self.block_size), label
        ids = self.tokenizer.encode(aug.text(text, key))
        ids = aug.tokens(ids, key) or self.tokenizer.encode(text)
        return ids[: self.block_size], label

    def token(self, example: Any, key: tuple[int, ...] | None = None,
              ) -> tuple[list[int], list[int], list[int]]:
        pieces = self._words.get(example.where)
        if pieces is None:
            pieces = self._words[example.where] = encode_words(self.tokenizer, example.words)
        if key is not None and self.augmenter is not None:
            aug = self.augmenter  # per word, so each word keeps its first id and its tag
            pieces = [(space, aug.tokens(word, (*key, w))) for w, (space, word) in
                      enumerate(pieces)]
        tags = [self.label_ids[t] for t in example.tags]
        return join_words(pieces, tags, self.block_size)


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> tuple[int, ...]:
    digest = hashlib.sha256(f"{seed}/{epoch}".encode()).digest()
    order = list(range(n))
    random.Random(int.from_bytes(digest[:8], "little")).shuffle(order)
    return tuple(order)


def batch_keys(step: int, batch_size: int, n: int, seed: int) -> list[tuple[int, int]]:
    """(epoch, example index) of each example of optimizer step `step`: seeded epochs, each a
    fresh permutation, so every example is seen once per epoch."""
    keys = []
    for position in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(position, n)
        keys.append((epoch, _epoch_order(seed, epoch, n)[offset]))
    return keys


# --- evaluation -----------------------------------------------------------------------------
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


def evaluate(model: GPTClassifier, data: TaskData, encoder: Encoder, device: torch.device,
             batch_size: int, precision: str = "fp32") -> dict[str, Any]:
    """Loss and metrics of `model` on the held-out examples (never augmented)."""
    if data.task == "sequence":
        encoded = [encoder.sequence(e) for e in data.val]
        gold = [label for _, label in encoded]
        logits = torch.cat(list(batched_logits(model, [ids for ids, _ in encoded], device,
                                        batch_size, precision)))
        loss = F.cross_entropy(logits, torch.tensor(gold, device=logits.device)).item()
        pred = logits.argmax(-1).tolist()
        return {"loss": loss, **sequence_metrics(gold, pred, data.labels),
                "examples": len(data.val)}
    rows = [encoder.token(e) for e in data.val]
    total, count = 0.0, 0
    gold_tags, pred_tags = [], []
    at = 0
    for logits in batched_logits(model, [ids for ids, _, _ in rows], device, batch_size, precision):
        for b in range(logits.size(0)):
            ids, targets, positions = rows[at]
            target = torch.tensor(targets, device=logits.device)
            total += F.cross_entropy(logits[b, : len(ids)], target, ignore_index=IGNORE,
                                     reduction="sum").item()
            count += int((target != IGNORE).sum())
            best = logits[b].argmax(-1).tolist()
            pred_tags.append([str(data.labels[best[p]]) if p >= 0 else "O" for p in positions])
            gold_tags.append(list(data.val[at].tags))
            at += 1
    return {"loss": total / max(count, 1), **token_metrics(gold_tags, pred_tags),
            "examples": len(data.val)}


def _score(metrics: dict[str, Any]) -> tuple[float, float]:
    """Higher is better: macro-F1 or entity F1, then lower loss."""
    return (metrics.get("macro_f1", metrics.get("f1", 0.0)), -metrics["loss"])


# --- the run --------------------------------------------------------------------------------
def _backbone(cfg: RunConfig, run_dir: Path, data: TaskData,
              data_dir: str | Path | None) -> tuple[GPT, Tokenizer, RunConfig]:
    """train.init_from's model and tokenizer, or a fresh GPT and a tokenizer of the texts;
    and `cfg` with the model size and tokenizer settings they have."""
    if not cfg.train.init_from:
        tokenizer = build_tokenizer(cfg.data, data.train_texts(), data_dir=data_dir)
        gpt = GPT.from_config(cfg.model, tokenizer.vocab_size)
        return gpt, tokenizer, cfg.updated(model={"vocab_size": gpt.config.vocab_size})
    from gptkit.run import load_run

    path = Path(cfg.train.init_from)
    if not (path / "config.yaml").is_file():
        raise GptkitError(
            f"train.init_from: {path} is not a gptkit run (no config.yaml); train or import "
            "one first"
        )
    if path.resolve() == run_dir.resolve():
        raise GptkitError(f"train.init_from ({path}) must be another run than --out")
    if (path / LABELS_FILE).is_file():
        raise GptkitError(
            f"train.init_from: {path} is a classifier run; start from the language-model run "
            f"its backbone came from (train.init_from in {path / 'config.yaml'})"
        )
    init = load_run(path)
    if cfg.model.vocab_size is None:
        cfg = cfg.updated(model={"vocab_size": init.model.config.vocab_size})
    for key in SHAPE_KEYS:
        mine, theirs = getattr(cfg.model, key), getattr(init.model.config, key)
        if mine != theirs:
            raise GptkitError(
                f"model.{key}={mine} does not match train.init_from={path} ({key}={theirs}); "
                "a run started from another keeps its shape: drop that setting"
            )
    base = read_config(path / "config.yaml").data
    # the saved config tells the truth about the tokenizer
    cfg = cfg.updated(data={k: getattr(base, k) for k in ("tokenizer", "vocab_size",
                                                          "tokenizer_path")})
    gpt = GPT.from_config(cfg.model, init.tokenizer.vocab_size)
    gpt.load_state_dict(init.model.state_dict())
    return gpt, init.tokenizer, cfg


def _fresh_run_dir(run_dir: Path) -> None:
    """An empty run directory, or one whose earlier run's files are gone (--overwrite)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in _STALE:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def finetune_classifier(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> ClassifyResult:
    """Train a classification head (and the backbone under it) on `cfg.data.source`."""
    check_used(cfg, run_kinds(cfg, classify=True))  # e.g. sample.* or dist.* would do nothing
    run_dir = Path(out_dir)
    from gptkit.train.trainer import check_run_dir

    check_run_dir(run_dir, resume=False, overwrite=overwrite)  # before any work
    data = read_task_data(cfg)
    specs = dict(parse_spec(spec) for spec in cfg.data.augment)  # bad specs fail early
    bad = [name for name, p in specs.items() if p > 0 and name in TEXT_OPS]
    if cfg.classify.task == "token" and bad:
        raise GptkitError(
            f"data.augment {', '.join(bad)} would move or drop words without their tags; "
            "token classification takes token_dropout and token_noise only"
        )
    t = cfg.train
    random.seed(t.seed)
    np.random.seed(t.seed)
    torch.manual_seed(t.seed)
    gpt, tokenizer, cfg = _backbone(cfg, run_dir, data, data_dir)
    device = devices.resolve_device(t.device)
    precision = devices.resolve_precision(t.precision, device)
    model = GPTClassifier.from_gpt(gpt, len(data.labels), cfg.classify.task,
                                   cfg.classify.pooling).to(device)
    augmenter = Augmenter(cfg.data.augment, seed=t.seed, vocab_size=tokenizer.vocab_size,
                          special_ids=special_ids(tokenizer))
    encoder = Encoder(data, tokenizer, cfg.model.block_size, augmenter)

    _fresh_run_dir(run_dir)
    save_config(cfg, run_dir / "config.yaml")
    tokenizer.save(run_dir / "tokenizer.json")
    (run_dir / LABELS_FILE).write_text(
        json.dumps({"task": data.task, "labels": data.labels}, indent=1), encoding="utf-8")

    optimizer = build_optimizer(model, t, device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    eval_batch = max(cfg.eval.batch_size, t.micro_batch_size)
    best: tuple[tuple[float, float], int, dict[str, Any], dict[str, torch.Tensor]] | None = None
    log = (run_dir / "metrics.jsonl").open("a", encoding="utf-8")
    bar = tqdm(total=t.max_steps, unit="step", dynamic_ncols=True, disable=not progress)
    try:
        for step in range(t.max_steps + 1):
            if step % t.eval_interval == 0 or step == t.max_steps:
                metrics = evaluate(model, data, encoder, device, eval_batch, precision)
                record = {"step": step, "kind": "eval",
                          **{k: v for k, v in metrics.items() if not isinstance(v, dict)}}
                log.write(json_line(record) + "\n")
                log.flush()
                improved = best is None or _score(metrics) > best[0]
                if improved:
                    state = {k: v.detach().to("cpu", copy=True)
                             for k, v in model.state_dict().items()}
                    best = (_score(metrics), step, metrics, state)
                if progress:
                    tqdm.write(f"step {step}: {describe_metrics(data.task, metrics)}"
                               + (" *best" if improved else ""))
            if step == t.max_steps:
                break
            loss = _train_step(model, optimizer, scaler, encoder, data, step, cfg, device,
                               precision)
            bar.update(1)
            if (step + 1) % t.log_interval == 0 or step + 1 == t.max_steps:
                value = loss.item()
                log.write(json_line({"step": step + 1, "kind": "train", "loss": value,
                                     "lr": lr_at(step, t)}) + "\n")
                if not math.isfinite(value):  # every later step would be wasted
                    raise GptkitError(
                        f"training stopped: the loss became {value} at or before step "
                        f"{step + 1}; start again with a lower train.lr (now {t.lr:g})")
                bar.set_postfix_str(f"loss {value:.4f}")
    finally:
        bar.close()
        log.close()
    assert best is not None  # step 0 is always evaluated
    _, best_step, metrics, state = best
    model.load_state_dict(state)
    weights.save_weights(model, run_dir / MODEL_FILE)
    final = {"task": data.task, "step": best_step, "labels": data.labels, **metrics}
    (run_dir / EVAL_FILE).write_text(json.dumps(final, indent=1), encoding="utf-8")
    return ClassifyResult(run_dir, data.task, data.labels, t.max_steps, best_step, final)


def _train_step(model: GPTClassifier, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, encoder: Encoder, data: TaskData, step: int,
                cfg: RunConfig, device: torch.device, precision: str) -> torch.Tensor:
    """One optimizer step on `train.micro_batch_size` (augmented) training examples."""
    t = cfg.train
    lr = lr_at(step, t)
    for group in optimizer.param_groups:
        group["lr"] = lr
    keys = batch_keys(step, t.micro_batch_size, len(data.train), t.seed)
    model.train()
    if data.task == "sequence":
        pairs = [encoder.sequence(data.train[i], (epoch, i)) for epoch, i in keys]
        idx, mask, _ = pad_batch([ids for ids, _ in pairs], device=device)
        target = torch.tensor([label for _, label in pairs], device=device)
        with devices.autocast(device, precision):
            logits = model(idx, mask)
        loss = F.cross_entropy(logits.float(), target)
    else:
        rows = [encoder.token(data.train[i], (epoch, i)) for epoch, i in keys]
        idx, mask, targets = pad_batch([r[0] for r in rows], device=device,
                                       targets=[r[1] for r in rows])
        assert targets is not None
        with devices.autocast(device, precision):
            logits = model(idx, mask)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                               ignore_index=IGNORE)
    scaler.scale(loss).backward()
    if t.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


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
