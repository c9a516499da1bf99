"""The `data:` section: where the text comes from, how it is split and becomes token ids.

Its own module because of the split rules: in a run, the split trained on, the one the best
checkpoint is selected on and the one reported must never share text, and WikiText's
`data.protocol` chooses all three (`SPLIT_PROTOCOLS`, which gptkit.data.sources reads).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from gptkit.config.choices import DataFormat, SplitBy, SplitProtocol, TokenizerKind
from gptkit.config.fields import (
    Bool,
    Float,
    Int,
    Nullable,
    Settings,
    Str,
    StrList,
    at_least,
    rule,
    within,
)

# data.protocol -> (train_split, eval_split, test_split); data/sources.py reads the splits
SPLIT_PROTOCOLS = {
    "published": ("train", "valid", "test"),
    "offline": ("valid-head", "valid-tail", "test"),
}
WIKITEXT = ("wikitext2", "wikitext2-raw")


class DataConfig(Settings):
    """Where the text comes from and how it becomes token ids."""

    section = "data"
    # tinyshakespeare | wikitext2 | wikitext2-raw | a text file, folder, glob or .jsonl file
    source: Str = "tinyshakespeare"
    tokenizer: TokenizerKind = "char"
    # size of a trained BPE vocabulary (tokenizer: bpe)
    vocab_size: Annotated[Int, at_least(260)] = 8192
    # gpt2: tokenizer.json, or a folder with vocab.json + merges.txt
    tokenizer_path: Nullable[Str] = None
    train_split: Str = "train"
    # evaluated during training: picks best/ and stops early, so it is not the split to report
    eval_split: Str = "val"
    # what `gptkit eval` reports by default; never eval_split (None: no separate test split)
    test_split: Nullable[Str] = None
    # WikiText only; the three splits above follow from it. published: train/valid/test;
    # offline (no train split): train on valid's articles but the last val_fraction
    # (valid-head), select on those (valid-tail), report test; auto: published when the train
    # split is in the data root or downloads, else offline. manual: the splits as given.
    protocol: SplitProtocol = "manual"
    # held-out share for text/JSONL sources that have no splits (and for protocol offline)
    val_fraction: Annotated[Float, within(0, 1, "()")] = 0.1
    # how a text/JSONL source is cut into train/val: documents (the last documents whole: a
    # text file or a JSONL record is one document) | fraction (the last val_fraction of
    # every document's characters)
    split_by: SplitBy = "documents"
    text_field: Str = "text"  # JSONL and hf: sources: the field holding each document's text
    # hf: sources (gptkit.data.hf_source): the data set's configuration (hub name), its local
    # data files (hf:json, hf:csv, hf:parquet, hf:text) and whether to stream its rows
    hf_config: Nullable[Str] = None
    hf_data_files: Annotated[StrList, rule(lambda v: all(v), "must be a list of paths or "
                                           "globs (got {got})")] = Field(default_factory=list)
    hf_streaming: Bool = False
    # prepared token files are shards of at most this many ids (2**28: 512 MiB of uint16), so
    # no file or write holds the whole corpus; an existing cache keeps the size it was made with
    shard_tokens: Annotated[Int, at_least(1)] = 1 << 28
    # processes that tokenise when preparing data (0: one per CPU core)
    workers: Annotated[Int, rule(lambda v: v >= 0,
                                 "must be >= 0 (0: one per CPU core; got {got})")] = 1
    # text: language modelling on the whole text. sft: JSONL of {"prompt", "response"} or
    # {"messages": [...]} records, loss on responses only (gptkit.finetune.sft)
    format: DataFormat = "text"
    packing: Bool = False  # sft: pack examples into full windows instead of padding each one
    # augmentations of training examples (sft, classification), e.g. [word_swap=0.1];
    # see gptkit.finetune.augment
    augment: Annotated[StrList, rule(lambda v: all(v), "must be a list of non-empty strings "
                                     "(got {got})")] = Field(default_factory=list)


def _split_parts(split: str) -> set[str]:
    """The pieces of text a split name covers, so overlapping names can be told apart."""
    split = "valid" if split == "val" else split
    return {"valid-head", "valid-tail"} if split == "valid" else {split}


def split_checks(d: DataConfig) -> list[tuple[bool, str]]:
    """The split trained on, the one selected on and the one reported never share text.

    A run's checks (RunConfig), not the section's: a DataConfig alone may name any split,
    e.g. to prepare or score it."""
    names = {"data.train_split": d.train_split, "data.eval_split": d.eval_split,
             "data.test_split": d.test_split}
    wikitext = d.source in WIKITEXT
    default_fraction = DataConfig.model_fields["val_fraction"].default
    checks = [
        (d.protocol == "manual" or wikitext,
         f"data.protocol={d.protocol} applies to WikiText sources (wikitext2, wikitext2-raw); "
         "for other data add --set data.protocol=manual (and set data.train_split, "
         "data.eval_split, data.test_split where its splits have other names)"),
        (d.split_by == "documents" or not d.source.startswith("hf:"),
         "data.split_by=fraction applies to your own text/JSONL files; hf: sources are cut by "
         "rows (the last data.val_fraction of train when there is no validation split)"),
        (d.split_by == "documents" or not (wikitext or d.source == "tinyshakespeare"),
         f"data.split_by applies to your own text/JSONL files; {d.source} has fixed splits"),
        (d.val_fraction == default_fraction or d.source != "tinyshakespeare",
         "data.val_fraction does nothing for tinyshakespeare (nanoGPT's fixed 90/10 cut); it "
         "applies to your own files and to WikiText's data.protocol=offline"),
        (d.val_fraction == default_fraction or not wikitext
         or d.protocol in ("offline", "auto"),
         f"data.val_fraction does nothing for {d.source} with data.protocol={d.protocol}; it "
         "sets the share of valid held out by data.protocol=offline (or auto)"),
    ]
    defaults = (DataConfig.model_fields["train_split"].default,
                DataConfig.model_fields["eval_split"].default, None)
    chosen = SPLIT_PROTOCOLS.get(d.protocol, defaults)
    for (key, value), default, mine in zip(names.items(), defaults, chosen, strict=True):
        checks.append((
            d.protocol == "manual" or value in (default, mine),
            f"{key}={value} contradicts data.protocol={d.protocol}, which chooses the splits; "
            f"drop {key}, or set data.protocol=manual",
        ))
    pairs = [("data.train_split", "data.eval_split"), ("data.train_split", "data.test_split"),
             ("data.eval_split", "data.test_split")]
    for a, b in pairs:
        first, second = names[a], names[b]
        checks.append((
            first is None or second is None or not _split_parts(first) & _split_parts(second),
            f"{a} ({first}) and {b} ({second}) share text: a model must not be trained on, "
            "or select its best checkpoint by, the split it is judged on; choose another "
            f"{b}" + (" (e.g. data.protocol=offline holds out part of valid)"
                      if wikitext else ""),
        ))
    return checks
