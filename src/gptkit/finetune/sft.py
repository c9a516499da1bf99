"""Supervised fine-tuning data: records -> token ids with the loss on responses only.

Each example is its ids plus a `learnt` mask (see `gptkit.finetune.template`); targets of
ids that are only read are -100, the index the loss ignores. Batches either pad each
example to the longest of its micro-batch, or pack several whole examples into each row
(`data.packing`: less padding, more examples per step), with positions restarting and a
block-diagonal attention mask so that packed examples never see each other — the same
model inputs as padding, minus the padding. Batches are a pure function of (seed, step),
so resume is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gptkit.chat_template import ChatTemplate, encode_segments
from gptkit.config import DataConfig
from gptkit.data.loader import EpochSize, SeededEpochs, epoch_order
from gptkit.device import autocast
from gptkit.errors import GptkitError
from gptkit.finetune import heads
from gptkit.finetune.augment import Augmenter
from gptkit.finetune.records import Record, load_records, split_records
from gptkit.finetune.template import Segments, is_chat, segments
from gptkit.model import IGNORE
from gptkit.tokenizers import Tokenizer

# (x, y) or, for packed rows, (x, y, extra model arguments)
Batch = tuple[Tensor, Tensor] | tuple[Tensor, Tensor, dict[str, Tensor]]


@dataclass
class Example:
    ids: np.ndarray  # int64 token ids
    learnt: np.ndarray  # bool: is ids[i] a token the model must learn to produce?


def load_split(cfg: DataConfig, split: str) -> list[Record]:
    """The records of `split`: `train` is the start of data.source, others its last part."""
    records = load_records(cfg)
    return split_records(records, "train" if split == "train" else "val", cfg.val_fraction)


def training_texts(records: list[Record], template: ChatTemplate | None = None) -> list[str]:
    """The rendered texts, to train a char/BPE tokenizer on."""
    return ["".join(text for text, _ in segments(r, template)) for r in records]


def encode(parts: Segments, tokenizer: Tokenizer, whole: bool = False) -> Example:
    """The parts' ids and learnt mask. A prompt and its response are encoded apart, as the
    prompt is when the model answers it; a chat (`whole`) is encoded whole, as its template's
    text is when the model answers (`gptkit.chat_template.encode_chat`)."""
    ids: list[int] = []
    learnt: list[bool] = []
    if whole:
        ids, learnt = encode_segments(parts, tokenizer)
    else:
        for text, trained in parts:
            piece = tokenizer.encode(text)
            ids += piece
            learnt += [trained] * len(piece)
    return Example(np.asarray(ids, dtype=np.int64), np.asarray(learnt, dtype=bool))


def cut(example: Example, block_size: int, side: str = "right") -> Example:
    """The example cut to block_size + 1 tokens (inputs and next-token targets): its end cut
    off (side right, keeping the start) or its start (left, keeping the end)."""
    end = block_size + 1
    if len(example.ids) <= end:
        return example
    keep = slice(None, end) if side == "right" else slice(len(example.ids) - end, None)
    return Example(example.ids[keep], example.learnt[keep])


def cut_counts(examples: list[Example], lengths: list[int]) -> dict[str, int]:
    """How many examples were cut, and how many tokens that dropped, from their uncut
    `lengths`: the data summary's numbers."""
    cut_off = [n - len(e.ids) for e, n in zip(examples, lengths, strict=True)]
    return {"cut": sum(1 for c in cut_off if c > 0), "cut_tokens": sum(cut_off)}


def encode_records(records: list[Record], tokenizer: Tokenizer, block_size: int,
                   template: ChatTemplate | None = None, side: str = "right",
                   lengths: list[int] | None = None) -> list[Example]:
    """Examples of `records` (chats through `template`), cut to block_size + 1 tokens on
    `side` (finetune.truncation_side); each one's uncut length is appended to `lengths`
    when given. Errors if one has nothing to learn."""
    if tokenizer.eot_id is None:
        raise GptkitError(
            "supervised fine-tuning needs a tokenizer with an end-of-text token "
            "(<|endoftext|>) to end responses; use a gptkit tokenizer"
        )
    examples = []
    for record in records:
        example = encode(segments(record, template), tokenizer, whole=is_chat(record))
        if lengths is not None:
            lengths.append(len(example.ids))
        example = cut(example, block_size, side)
        if not example.learnt[1:].any():
            raise GptkitError(
                f"{record.where}: the prompt fills all {block_size} positions of "
                "model.block_size, leaving no response to learn; shorten it, use a model "
                "with a larger block_size, or set finetune.truncation_side=left"
                if side == "right" else
                f"{record.where}: the last {block_size + 1} tokens (model.block_size + 1, "
                "finetune.truncation_side=left) hold no response to learn; shorten it")
        examples.append(example)
    return examples


def targets(example: Example) -> tuple[np.ndarray, np.ndarray]:
    """(x, y): inputs and next-token targets, -100 where the next token is not learnt."""
    x = example.ids[:-1]
    y = np.where(example.learnt[1:], example.ids[1:], IGNORE)
    return x, y


def pad_batch(pairs: list[tuple[np.ndarray, np.ndarray]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-padded (x, y); padding comes after every real token, so causal attention never
    lets a real token see it, and its targets are ignored."""
    x, _, y = heads.pad_batch([x.tolist() for x, _ in pairs], pad_id,
                              targets=[y.tolist() for _, y in pairs])
    assert y is not None
    return x, y


def pack(
    pairs: list[tuple[np.ndarray, np.ndarray]], block_size: int
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Whole examples, in order, into rows of at most `block_size` tokens (none is split)."""
    rows: list[list[tuple[np.ndarray, np.ndarray]]] = []
    used = block_size
    for pair in pairs:
        if used + len(pair[0]) > block_size:
            rows.append([])
            used = 0
        rows[-1].append(pair)
        used += len(pair[0])
    return rows


def collate(items: list[list[tuple[np.ndarray, np.ndarray]]], pad_id: int, packed: bool) -> Batch:
    """One micro-batch. Padded: (x, y). Packed: each row's examples joined, plus the model
    arguments that keep them apart: positions restarting at 0 for every example, and a
    block-diagonal attention mask so that no example sees another."""
    rows = [(np.concatenate([x for x, _ in row]), np.concatenate([y for _, y in row]))
            for row in items]
    x, y = pad_batch(rows, pad_id)
    if not packed:
        return x, y
    positions = torch.zeros_like(x)
    documents = torch.full_like(x, -1)
    for r, row in enumerate(items):
        start = 0
        for d, (ids, _) in enumerate(row):
            positions[r, start : start + len(ids)] = torch.arange(len(ids))
            documents[r, start : start + len(ids)] = d
            start += len(ids)
    mask = documents[:, :, None] == documents[:, None, :]
    return x, y, {"position_ids": positions, "attention_mask": mask}


class SFTBatches:
    """Training batches of examples; the same interface as `RandomWindows`.

    Epoch e visits the examples in `epoch_order(seed, e)`; step s takes the next
    `micro_batch_size * accum_steps * world_size` of that endless sequence (packed: of rows),
    micro-batch m of rank r being chunk m * world_size + r (`SeededEpochs`).
    """

    def __init__(
        self,
        examples: list[Example],
        records: list[Record],
        tokenizer: Tokenizer,
        *,
        block_size: int,
        micro_batch_size: int,
        accum_steps: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        packing: bool = False,
        augment: list[str] | None = None,
        template: ChatTemplate | None = None,
        truncation_side: str = "right",
    ) -> None:
        if not examples:
            raise GptkitError("the training split has no examples; add records to data.source")
        self.examples = examples
        self.records = records
        self.tokenizer = tokenizer
        self.template = template
        self.block_size = block_size
        self.truncation_side = truncation_side
        self.packing = packing
        self.pad_id = int(tokenizer.eot_id or 0)
        specials = [] if tokenizer.eot_id is None else [tokenizer.eot_id]
        self.augmenter = Augmenter(augment or [], seed, tokenizer.vocab_size, specials)
        self.epochs: SeededEpochs[list[tuple[np.ndarray, np.ndarray]]] = SeededEpochs(
            self._items, seed=seed, micro_batch_size=micro_batch_size, accum_steps=accum_steps,
            rank=rank, world_size=world_size)

    def _example(self, epoch: int, index: int) -> Example:
        """Example `index`, augmented for `epoch` on its read-only (prompt) side only:
        responses are what the model must learn to produce exactly."""
        if not self.augmenter.enabled:
            return self.examples[index]
        ids: list[int] = []
        learnt: list[bool] = []
        for part, (text, trained) in enumerate(segments(self.records[index], self.template)):
            if trained:
                piece = self.tokenizer.encode(text)
            else:
                key = (epoch, index, part)
                piece = self.augmenter.tokens(
                    self.tokenizer.encode(self.augmenter.text(text, key)), key)
            ids += piece
            learnt += [trained] * len(piece)
        return cut(Example(np.asarray(ids, dtype=np.int64), np.asarray(learnt, dtype=bool)),
                   self.block_size, self.truncation_side)

    def _items(self, seed: int, epoch: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
        """The items of one epoch: single examples, or (packed) rows of whole examples."""
        order = epoch_order(seed, epoch, len(self.examples))
        pairs = [targets(self._example(epoch, int(i))) for i in order]
        return pack(pairs, self.block_size) if self.packing else [[p] for p in pairs]

    def step_batches(self, step: int) -> list[Batch]:
        return [collate(chunk, self.pad_id, self.packing)
                for chunk in self.epochs.step_items(step)]

    def epoch_size(self) -> EpochSize:
        return self.epochs.epoch_size("rows" if self.packing else "examples")

    def state_dict(self) -> dict[str, Any]:
        return self.epochs.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs.load_state_dict(state)


@torch.no_grad()
def response_loss(
    model: torch.nn.Module,
    examples: list[Example],
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    precision: str = "fp32",
) -> dict[str, float]:
    """Summed NLL, count and accuracy of the learnt tokens of `examples` (no augmentation)."""
    was_training = model.training
    model.eval()
    nll = correct = count = 0.0
    for i in range(0, len(examples), batch_size):
        x, y = pad_batch([targets(e) for e in examples[i : i + batch_size]], pad_id)
        x, y = x.to(device), y.to(device)
        with autocast(device, precision):
            logits, _ = model(x)
        logits = logits.float()
        mask = y != IGNORE
        losses = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum"
        )
        nll += float(losses)
        correct += float(((logits.argmax(-1) == y) & mask).sum())
        count += float(mask.sum())
    model.train(was_training)
    return {"nll": nll, "correct": correct, "tokens": count}


def response_metrics(totals: dict[str, float]) -> dict[str, float]:
    """Loss, perplexity and next-token accuracy over the responses `response_loss` summed."""
    loss = totals["nll"] / max(totals["tokens"], 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 700)),
            "token_accuracy": totals["correct"] / max(totals["tokens"], 1),
            "response_tokens": int(totals["tokens"])}


def data_summary(examples: dict[str, int], cuts: dict[str, dict[str, int]], limit: int,
                 side: str) -> str:
    """The data line printed at the start: examples per split, and how many were longer than
    `limit` tokens and cut on `side` (and how many tokens that dropped)."""
    parts = []
    for split, n in examples.items():
        c = cuts[split]
        parts.append(f"{split}: {n} examples, " + (
            f"{c['cut']} longer than {limit} tokens cut on the {side} "
            f"({c['cut_tokens']} tokens dropped)" if c["cut"] else
            f"none longer than {limit} tokens"))
    return "data: " + "; ".join(parts)
