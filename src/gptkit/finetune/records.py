"""Task data files: JSONL (one JSON object per line) or CSV with a header row.

Every record remembers where it came from (`file:line`), so a bad field is reported at its
line, and splitting is deterministic so that train and held-out examples never mix.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptkit.errors import GptkitError

if TYPE_CHECKING:
    from gptkit.config import DataConfig


@dataclass
class Record:
    fields: dict[str, Any]
    where: str  # "path:line", for error messages

    def get(self, name: str, kind: type | tuple[type, ...] = str, hint: str = "") -> Any:
        """The field `name`, which must exist and have type `kind` (not empty when text)."""
        value = self.fields.get(name)
        if value is None:
            fix = f"; {hint}" if hint else ""
            raise GptkitError(f"{self.where} has no field {name!r}{fix}")
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            names = kind.__name__ if isinstance(kind, type) else " or ".join(
                k.__name__ for k in kind)
            raise GptkitError(
                f"{self.where}: field {name!r} must be {names}, got {type(value).__name__}"
            )
        if isinstance(value, (str, list)) and not value:
            raise GptkitError(f"{self.where}: field {name!r} is empty")
        return value


def read_records(path: str | Path) -> list[Record]:
    """All records of a .jsonl/.json-lines or .csv file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise GptkitError(f"data file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise GptkitError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    records: list[Record] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames:
            raise GptkitError(f"{path} has no header row; the first line must name the columns")
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise GptkitError(
                    f"{path}:{reader.line_num} has a different number of columns than the header"
                )
            records.append(Record(dict(row), f"{path}:{reader.line_num}"))
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise GptkitError(
                    f"{path}:{number} is not valid JSON ({exc.msg}); each line must be one "
                    "JSON object"
                ) from None
            if not isinstance(value, dict):
                raise GptkitError(
                    f"{path}:{number} must be a JSON object, got {type(value).__name__}"
                )
            records.append(Record(value, f"{path}:{number}"))
    if not records:
        raise GptkitError(f"{path} holds no records; add one JSON object per line")
    return records


def load_records(cfg: DataConfig) -> list[Record]:
    """The records of `data.source`: a JSONL/CSV file, or the rows of an `hf:` data set's
    `data.train_split` (gptkit.data.hf_source), each read as a JSONL record would be."""
    from gptkit.data.hf_source import is_hf, records

    if not is_hf(cfg.source):
        return read_records(cfg.source)
    found = [Record(row, where) for row, where in records(cfg)]
    if not found:
        raise GptkitError(f"{cfg.source} [{cfg.train_split}] holds no rows")
    return found


def split_records(
    records: list[Record], split: str, val_fraction: float
) -> list[Record]:
    """`train`: the first records; `val` (or any other name): the last `val_fraction` of them.

    Like text sources, the held-out part is the end of the file, so it never depends on a seed.
    """
    if len(records) < 2:
        raise GptkitError(
            f"{records[0].where.rsplit(':', 1)[0]} has only one record; a held-out split needs "
            "at least two"
        )
    n_val = min(len(records) - 1, max(1, round(len(records) * val_fraction)))
    return records[:-n_val] if split == "train" else records[-n_val:]
