"""Hugging Face data sets as a source: `data.source: hf:NAME`, read with the `datasets` library.

Its own module so that `datasets` (the `datasets` extra) is imported only for `hf:` sources;
gptkit.data.sources stays the one owner of sources and splits and calls in here. NAME is
- a folder written by `save_to_disk` (`hf:./folder`, `hf:/abs/folder`; a folder wins over a
  hub id of the same spelling),
- a packaged builder `json`, `csv`, `parquet` or `text` with `data.hf_data_files`, as
  `load_dataset("json", data_files=[...])`,
- else a hub id (`hf:owner/name`, config `data.hf_config`), read from the local cache with
  GPTKIT_OFFLINE=1 or HF_HUB_OFFLINE=1 (the `datasets` switch is turned on: no network).
No loading script ever runs (datasets 4+ has none and no `trust_remote_code` is passed), and
nothing is unpickled: rows come from Arrow, Parquet, JSON, CSV or text. With
`data.hf_streaming` rows are read as an iterable, so a data set larger than memory streams
into the same token shards; a cached or streamed source gives the same documents.
"""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

from gptkit.errors import GptkitError
from gptkit.offline import hub_offline

if TYPE_CHECKING:
    from gptkit.config import DataConfig

PREFIX = "hf:"
BUILDERS = ("json", "csv", "parquet", "text")
VALIDATION = ("validation", "valid", "val", "dev")  # a data set's own held-out split names
ROWS = 1024  # rows read at a time
INSTALL = "install the datasets extra: pip install 'gptkit[datasets]'"


@dataclass(frozen=True)
class HfOptions:
    """The `data.hf_*` settings: which configuration and files, and whether to stream."""

    config: str | None = None
    data_files: tuple[str, ...] = ()
    streaming: bool = False

    @classmethod
    def of(cls, cfg: DataConfig) -> HfOptions:
        return cls(cfg.hf_config, tuple(cfg.hf_data_files), cfg.hf_streaming)


def is_hf(spec: str) -> bool:
    return spec.startswith(PREFIX)


def _name(spec: str) -> str:
    name = spec[len(PREFIX):]
    if not name:
        raise GptkitError("data.source hf: needs a name: hf:owner/name, hf:json (with "
                          "data.hf_data_files) or hf:FOLDER written by save_to_disk")
    return name


def _disk_folder(spec: str) -> Path | None:
    path = Path(_name(spec)).expanduser()
    return path if path.is_dir() else None


def _data_files(spec: str, hf: HfOptions) -> list[Path]:
    """The local files a builder source reads (globs expanded), or an error."""
    files: list[Path] = []
    for pattern in hf.data_files:
        found = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not found:
            raise GptkitError(f"data.hf_data_files: no file matches {pattern!r}; check the path")
        files += [Path(p) for p in found if Path(p).is_file()]
    return files


def local_files(spec: str, hf: HfOptions) -> list[Path]:
    """The files the source is read from, so the prepared cache sees them change.

    A hub data set has none here (it is keyed by name and configuration: delete the prepared
    cache to read a new revision)."""
    name = _name(spec)
    folder = _disk_folder(spec)
    if folder is not None:
        return sorted(p for p in folder.rglob("*") if p.is_file())
    if name in BUILDERS:
        if not hf.data_files:
            raise GptkitError(f"data.source {spec} reads local files: set data.hf_data_files, "
                              f"e.g. --set 'data.hf_data_files=[train.{name}]'")
        return _data_files(spec, hf)
    if hf.data_files:
        return _data_files(spec, hf)
    return []


def identity(spec: str, hf: HfOptions) -> dict[str, Any]:
    """What names the source in the prepared cache's key (streaming gives the same tokens)."""
    folder = _disk_folder(spec)
    return {"source": PREFIX + str(folder.resolve()) if folder else spec,
            "hf_config": hf.config,
            "hf_data_files": [os.path.abspath(p) for p in hf.data_files]}


@contextlib.contextmanager
def _offline_switch(on: bool) -> Iterator[None]:
    """datasets' and huggingface_hub's offline switches on while loading, when gptkit is."""
    if not on:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    with mock.patch.object(datasets.config, "HF_HUB_OFFLINE", True), \
            mock.patch.object(huggingface_hub.constants, "HF_HUB_OFFLINE", True):
        yield


def load_splits(spec: str, hf: HfOptions) -> dict[str, Any]:
    """Split name -> Dataset (or IterableDataset when streaming), all splits, lazily read."""
    try:
        import datasets
    except ImportError:
        raise GptkitError(f"data.source {spec} needs the `datasets` library; {INSTALL}") from None
    name, folder = _name(spec), _disk_folder(spec)
    offline = hub_offline("HF_DATASETS_OFFLINE")
    try:
        if folder is not None:
            loaded = datasets.load_from_disk(str(folder))
            if isinstance(loaded, datasets.Dataset):
                loaded = datasets.DatasetDict({"train": loaded})
            if hf.streaming:
                loaded = {k: v.to_iterable_dataset() for k, v in loaded.items()}
        else:
            files = [str(p) for p in local_files(spec, hf)] or None
            with _offline_switch(offline):
                loaded = datasets.load_dataset(name, hf.config, data_files=files,
                                               streaming=hf.streaming)
    except GptkitError:
        raise
    except Exception as exc:
        why = " ".join(str(exc).split())[:300]
        if offline and folder is None and name not in BUILDERS:
            raise GptkitError(
                f"data.source {spec} is not in the Hugging Face cache and downloads are off "
                f"(GPTKIT_OFFLINE=1 or HF_HUB_OFFLINE=1): load it once with a network, or "
                f"save_to_disk it and use hf:FOLDER ({why})") from None
        raise GptkitError(f"cannot load data.source {spec}: {why}") from None
    return dict(loaded)


@dataclass
class Split:
    """One requested split: the data set's split it reads and the rows [first, stop) of it."""

    dataset: Any
    name: str
    first: int = 0
    stop: int | None = None


def _rows(dataset: Any) -> int:
    try:
        return len(dataset)
    except TypeError:  # an IterableDataset: one pass to count (like a JSONL file)
        return sum(len(batch[next(iter(batch))]) for batch in dataset.iter(batch_size=ROWS))


def choose_split(spec: str, splits: dict[str, Any], split: str, val_fraction: float) -> Split:
    """The data set's split named `split`; `val`, `valid`, `validation` and `dev` name its
    held-out split. Without one, `train` and `val` cut its train split as for your own
    files: the last `val_fraction` of the rows is val."""
    held = next((s for s in VALIDATION if s in splits), None)
    if split in splits and (split != "train" or held is not None):
        return Split(splits[split], split)
    if split in VALIDATION and held is not None:
        return Split(splits[held], held)
    if split in ("train", *VALIDATION) and "train" in splits:
        count = _rows(splits["train"])
        if count < 2:
            raise GptkitError(f"{spec} [train] has {count} row(s); holding some out for "
                              "val needs at least 2")
        n_val = min(count - 1, max(1, round(count * val_fraction)))
        cut = count - n_val
        return Split(splits["train"], "train", *((0, cut) if split == "train" else (cut, None)))
    cut_note = "" if held or "train" not in splits else (
        " (and val: the last data.val_fraction of train)")
    raise GptkitError(f"{spec} has no split {split!r}; its splits: {', '.join(splits)}"
                      f"{cut_note}; set data.train_split/data.eval_split")


def _columns(dataset: Any) -> list[str] | None:
    names = getattr(dataset, "column_names", None)
    return list(names) if names else None


def _check_field(spec: str, chosen: Split, field: str, setting: str) -> None:
    columns = _columns(chosen.dataset)
    if columns is not None and field not in columns:
        raise GptkitError(f"{spec} [{chosen.name}] has no field {field!r}; its fields: "
                          f"{', '.join(columns)}; set {setting}")


def rows(spec: str, chosen: Split, columns: Sequence[str] | None = None
         ) -> Iterator[dict[str, Any]]:
    """The rows [first, stop) of the chosen split, in order, read ROWS at a time."""
    dataset = chosen.dataset
    if columns is not None:
        dataset = dataset.select_columns(list(columns))
    number = 0
    for batch in dataset.iter(batch_size=ROWS):
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys), strict=True):
            if chosen.stop is not None and number >= chosen.stop:
                return
            if number >= chosen.first:
                yield dict(zip(keys, values, strict=True))
            number += 1


def texts(spec: str, split: str, hf: HfOptions, *, text_field: str, val_fraction: float
          ) -> Iterator[str]:
    """The text of each row of `split`, one document per row."""
    chosen = choose_split(spec, load_splits(spec, hf), split, val_fraction)
    _check_field(spec, chosen, text_field, "data.text_field")
    for number, row in enumerate(rows(spec, chosen, [text_field]), start=chosen.first + 1):
        text = row.get(text_field)
        if text is None and text_field not in row:
            fields = ", ".join(row)
            raise GptkitError(f"{spec} [{chosen.name}] has no field {text_field!r}; its "
                              f"fields: {fields}; set data.text_field")
        if not isinstance(text, str):
            raise GptkitError(f"{spec} [{chosen.name}] row {number}: field {text_field!r} is "
                              f"{type(text).__name__}, not text; set data.text_field")
        yield text


def records(cfg: DataConfig) -> Iterator[tuple[dict[str, Any], str]]:
    """(row, where) for each row of data.train_split, for fine-tuning's record readers."""
    hf = HfOptions.of(cfg)
    splits = load_splits(cfg.source, hf)
    if cfg.train_split not in splits:
        raise GptkitError(f"{cfg.source} has no split {cfg.train_split!r}; its splits: "
                          f"{', '.join(splits)}; set data.train_split")
    chosen = Split(splits[cfg.train_split], cfg.train_split)
    for number, row in enumerate(rows(cfg.source, chosen), start=1):
        yield row, f"{cfg.source} [{chosen.name}] row {number}"
