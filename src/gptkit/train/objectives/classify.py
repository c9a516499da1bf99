"""Classification objectives: a label per text (sequence) or a tag per word (token, e.g. NER),
trained by the one training loop (`gptkit finetune-classify`).

The model is a GPT backbone, either a trained run (`train.init_from`, whose tokenizer is used)
or a fresh one built from the recipe's model section, plus a linear head
(`gptkit.finetune.heads`). Examples are drawn in seeded epochs, augmented on the fly
(`data.augment`, training examples only) and padded per micro-batch. The held-out split is
scored at every evaluation; the best model by macro-F1 (sequence) or entity F1 (token), ties
broken by loss, is the one kept, and at the end published beside labels.json as
model.safetensors with its metrics in eval.json (`gptkit.finetune.classify` reads them).
Being the one loop, a classifier run resumes exactly, runs under torchrun (DDP/FSDP), writes
checkpoints, stops early and logs to metrics.jsonl and TensorBoard as every run does.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gptkit.config import RunConfig
from gptkit.data.loader import EpochSize, SeededEpochs, epoch_order
from gptkit.errors import GptkitError
from gptkit.finetune.augment import TEXT_OPS, Augmenter, parse_spec
from gptkit.finetune.chunks import Chunking, Counts, document_logits
from gptkit.finetune.classifier import batched_logits
from gptkit.finetune.classify_data import (
    Encoder,
    Label,
    TaskData,
    TokenChunks,
    read_task_data,
    special_ids,
)
from gptkit.finetune.classify_metrics import describe_metrics, sequence_metrics, token_metrics
from gptkit.finetune.heads import GPTClassifier, pad_batch
from gptkit.model import GPT, IGNORE
from gptkit.run import Run
from gptkit.rundir import EVAL_FILE, LABELS_FILE, MODEL_FILE, RunDir
from gptkit.tokenizers import Tokenizer, build_tokenizer
from gptkit.train.distributed import DistEnv
from gptkit.train.objectives.base import Batch, Objective, Setup, same_tokenizer_everywhere
from gptkit.train.trainer import Trainer


class ClassifyBatches:
    """Training batches of (augmented) examples: ids, targets (a label per row, or a tag per
    token) and the attention mask, in seeded epochs (`SeededEpochs`). An item is a chunk
    (epoch, example, chunk): a long example chunked (classify.long_inputs=chunk) is as many
    items, each with the example's label or its words' tags; others are one."""

    def __init__(self, data: TaskData, encoder: Encoder, *, seed: int, micro_batch_size: int,
                 accum_steps: int = 1, rank: int = 0, world_size: int = 1) -> None:
        self.data, self.encoder = data, encoder
        chunks = [encoder.chunk_count(e) for e in data.train]
        self.epochs: SeededEpochs[tuple[int, int, int]] = SeededEpochs(
            lambda seed, epoch: [(epoch, int(i), k) for i in epoch_order(seed, epoch, len(chunks))
                                 for k in range(chunks[i])],
            seed=seed, micro_batch_size=micro_batch_size, accum_steps=accum_steps, rank=rank,
            world_size=world_size)

    def collate(self, keys: list[tuple[int, int, int]]) -> Batch:
        """One micro-batch of the chunks `keys` ((epoch, index) is the augmentation's key;
        an augmented example may have fewer chunks: then its last)."""
        train, encoder = self.data.train, self.encoder
        if self.data.task == "sequence":
            pairs = []
            for epoch, i, k in keys:
                chunks, label = encoder.sequence_chunks(train[i], (epoch, i))
                pairs.append((chunks[min(k, len(chunks) - 1)], label))
            idx, mask, _ = pad_batch([ids for ids, _ in pairs])
            return idx, torch.tensor([label for _, label in pairs]), {"attention_mask": mask}
        rows = []
        for epoch, i, k in keys:
            parts = encoder.token_chunks(train[i], (epoch, i)).rows
            rows.append(parts[min(k, len(parts) - 1)])
        idx, mask, targets = pad_batch([r[0] for r in rows], targets=[r[1] for r in rows])
        assert targets is not None
        return idx, targets, {"attention_mask": mask}

    def step_batches(self, step: int) -> list[Batch]:
        return [self.collate(keys) for keys in self.epochs.step_items(step)]

    def epoch_size(self) -> EpochSize:
        return self.epochs.epoch_size("examples")

    def state_dict(self) -> dict[str, Any]:
        return self.epochs.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs.load_state_dict(state)


def chunk_logits(model: GPTClassifier, rows: list[list[int]], device: torch.device,
                 batch_size: int, precision: str = "fp32") -> list[Tensor]:
    """Each row's logits, in order."""
    return [row for logits in batched_logits(model, rows, device, batch_size, precision)
            for row in logits]


def word_logits(logits: list[Tensor], docs: list[TokenChunks]) -> list[list[Tensor | None]]:
    """Per document, per word: the logits of its chunk of most context at its first id, or
    None for a word cut off (truncation), from every chunk's `logits` in order."""
    out, at = [], 0
    for doc in docs:
        out.append([None if owner is None else logits[at + owner[0]][owner[1]]
                    for owner in doc.owners])
        at += len(doc.rows)
    return out


def evaluate(model: GPTClassifier, data: TaskData, encoder: Encoder, device: torch.device,
             batch_size: int, precision: str = "fp32") -> dict[str, Any]:
    """Loss and metrics of `model` on the held-out examples (never augmented): a long one's
    label from its chunks' aggregated logits, its words' tags from their chunks of most
    context (gptkit.finetune.chunks)."""
    if data.task == "sequence":
        docs = [encoder.sequence_chunks(e) for e in data.val]
        gold = [label for _, label in docs]
        flat = [chunk for chunks, _ in docs for chunk in chunks]
        per_chunk = torch.cat(list(batched_logits(model, flat, device, batch_size, precision)))
        logits = document_logits(per_chunk, [len(c) for c, _ in docs],
                                 encoder.chunking.aggregate)
        loss = F.cross_entropy(logits, torch.tensor(gold, device=logits.device)).item()
        pred = logits.argmax(-1).tolist()
        return {"loss": loss, **sequence_metrics(gold, pred, data.labels),
                "examples": len(data.val)}
    token_docs = [encoder.token_chunks(e) for e in data.val]
    rows = chunk_logits(model, [ids for d in token_docs for ids, _ in d.rows], device,
                        batch_size, precision)
    total, count = 0.0, 0
    gold_tags, pred_tags = [], []
    for example, words in zip(data.val, word_logits(rows, token_docs), strict=True):
        kept = [(w, tag) for w, tag in zip(words, example.tags, strict=True) if w is not None]
        if kept:
            target = torch.tensor([encoder.label_ids[t] for _, t in kept], device=device)
            total += F.cross_entropy(torch.stack([w for w, _ in kept]), target,
                                     reduction="sum").item()
            count += len(kept)
        pred_tags.append([str(data.labels[int(w.argmax())]) if w is not None else "O"
                          for w in words])
        gold_tags.append(list(example.tags))
    return {"loss": total / max(count, 1), **token_metrics(gold_tags, pred_tags),
            "examples": len(data.val)}


class Classification(Objective):
    """Sequence or token classification (classify.task) with a head on a GPT."""

    command = "finetune-classify"
    loss_key = "loss"
    finite_keys = ("loss",)
    samples = False
    outputs = (MODEL_FILE, LABELS_FILE, EVAL_FILE)

    def __init__(self) -> None:
        self.data: TaskData | None = None
        self.encoder: Encoder | None = None
        self.tokenizer_kind = ""
        self.counts: dict[str, dict[str, int]] = {}
        self.data_long_inputs = "truncate"

    def kinds(self, cfg: RunConfig) -> set[str]:
        return {"classify"}

    def prepare(self, cfg: RunConfig, tokenizer: Tokenizer | None, setup: Setup) -> Tokenizer:
        """The labelled records, checked; a tokenizer of the training texts unless given."""
        data = read_task_data(cfg)
        specs = dict(parse_spec(spec) for spec in cfg.data.augment)  # bad specs fail early
        bad = [name for name, p in specs.items() if p > 0 and name in TEXT_OPS]
        if cfg.classify.task == "token" and bad:
            raise GptkitError(
                f"data.augment {', '.join(bad)} would move or drop words without their tags; "
                "token classification takes token_dropout and token_noise only"
            )
        if tokenizer is None:
            tokenizer = same_tokenizer_everywhere(build_tokenizer(
                cfg.data, data.train_texts(), data_dir=setup.data_dir), setup.env)
        augmenter = Augmenter(cfg.data.augment, seed=cfg.train.seed,
                              vocab_size=tokenizer.vocab_size, special_ids=special_ids(tokenizer))
        self.data, self.tokenizer_kind = data, tokenizer.kind
        chunking = Chunking.of(cfg)
        self.data_long_inputs = cfg.classify.long_inputs
        self.encoder = Encoder(data, tokenizer, cfg.model.block_size, augmenter, chunking)
        self.source, self.vocab_size = cfg.data.source, tokenizer.vocab_size
        self.counts = {split: self.encoder.counts(examples).as_dict()
                       for split, examples in (("train", data.train), ("val", data.val))}
        setup.say(data_summary(self.counts, cfg))
        return tokenizer

    def build_model(self, cfg: RunConfig, init: Run | None) -> tuple[nn.Module, GPT]:
        assert self.data is not None
        _, gpt = super().build_model(cfg, init)
        model = GPTClassifier.from_gpt(gpt, len(self.data.labels), cfg.classify.task,
                                       cfg.classify.pooling)
        return model, gpt

    def batches(self, cfg: RunConfig, env: DistEnv, accum_steps: int) -> ClassifyBatches:
        assert self.data is not None and self.encoder is not None
        return ClassifyBatches(self.data, self.encoder, seed=cfg.train.seed,
                               micro_batch_size=cfg.train.micro_batch_size,
                               accum_steps=accum_steps, rank=env.rank,
                               world_size=env.world_size)

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, extra: dict[str, Tensor]) -> Tensor:
        """Cross-entropy of the labels (sequence) or of the tagged tokens (token)."""
        logits = model(x, extra["attention_mask"]).float()
        if logits.dim() == 2:
            return F.cross_entropy(logits, y)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)

    def evaluate(self, model: nn.Module, cfg: RunConfig, precision: str,
                 env: DistEnv) -> dict[str, Any]:
        """Every process scores the whole held-out split (small), so all agree on the best."""
        assert self.data is not None and self.encoder is not None
        assert isinstance(model, GPTClassifier)
        return evaluate(model, self.data, self.encoder, env.device,
                        max(cfg.eval.batch_size, cfg.train.micro_batch_size), precision)

    def score(self, record: dict[str, Any]) -> tuple[float, ...]:
        """Higher is better: macro-F1 or entity F1, then lower loss."""
        return (float(record.get("macro_f1", record.get("f1", 0.0))), -float(record["loss"]))

    def describe(self, record: dict[str, Any]) -> str:
        assert self.data is not None
        return describe_metrics(self.data.task, record)

    def data_meta(self) -> dict[str, Any]:
        assert self.data is not None
        return {"format": "classify", "task": self.data.task, "source": self.source,
                "labels": self.data.labels, "tokenizer_kind": self.tokenizer_kind,
                "vocab_size": self.vocab_size,
                "long_inputs": self.data_long_inputs, "splits": self.counts}

    def run_files(self) -> dict[str, str]:
        assert self.data is not None
        return {LABELS_FILE: json.dumps({"task": self.data.task, "labels": self.data.labels},
                                        indent=1)}

    def best_files(self, cfg: RunConfig, record: dict[str, Any], info: dict[str, Any],
                   environment: dict[str, Any]) -> dict[str, str]:
        """eval.json of the kept model: its step, labels and every held-out metric."""
        assert self.data is not None
        metrics = {k: v for k, v in record.items() if k not in ("step", "kind", "tokens")}
        result = {"task": self.data.task, "step": info["step"], "labels": self.data.labels,
                  **metrics}
        return {EVAL_FILE: json.dumps(result, indent=1)}

    def finish(self, run_dir: Path) -> None:
        """The best model's weights and metrics, from best/ to where classifiers are read."""
        for name, source in ((MODEL_FILE, MODEL_FILE), (EVAL_FILE, EVAL_FILE)):
            partial = run_dir / f".tmp-{name}-{os.getpid()}"
            shutil.copyfile(RunDir(run_dir).best / source, partial)
            os.replace(partial, run_dir / name)


def data_summary(counts: dict[str, dict[str, int]], cfg: RunConfig) -> str:
    """The data line printed at the start: examples per split, and how many were longer than
    the model's context and so cut or chunked (into how many chunks)."""
    block, chunk = cfg.model.block_size, cfg.classify.long_inputs == "chunk"
    parts = [Counts(**c).describe(split, block, chunk) for split, c in counts.items()]
    return "data: " + "; ".join(parts)


@dataclass
class ClassifyResult:
    run_dir: Path
    task: str
    labels: list[Label]
    steps: int
    best_step: int
    metrics: dict[str, Any] = field(default_factory=dict)  # as in eval.json


def finetune_classifier(
    cfg: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> ClassifyResult:
    """Train (or resume) a classification head and the backbone under it on data.source."""
    run_dir = Path(out_dir)
    trainer = Trainer(cfg, run_dir, resume=resume,
                      overwrite=overwrite, data_dir=data_dir, progress=progress,
                      objective=Classification())
    result = trainer.fit()
    final = json.loads((run_dir / EVAL_FILE).read_text(encoding="utf-8"))
    return ClassifyResult(run_dir, final["task"], final["labels"], result.step, final["step"],
                          final)
