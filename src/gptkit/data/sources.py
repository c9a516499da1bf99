"""Where text comes from: named data sets (data root, else downloaded) and the user's files.

`load_source(spec, splits)` gives each requested split as a list of documents. Named specs:
`tinyshakespeare` (train/val, nanoGPT's 90/10 cut), `wikitext2` and `wikitext2-raw`
(train/valid/test as published). Any other spec is a path: a text file, a folder, a glob or
JSONL (one document per line), split into train/val by `val_fraction`.
"""

from __future__ import annotations

import glob
import json
import os
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from gptkit.errors import GptkitError

TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
WIKITEXT_URL = (
    "https://huggingface.co/datasets/Salesforce/wikitext/resolve/main/{config}/{split}-00000-of-00001.parquet"
)
# spec -> (folder in the data root, file suffix, Hugging Face config)
WIKITEXT = {
    "wikitext2": ("wikitext-2", "tokens", "wikitext-2-v1"),
    "wikitext2-raw": ("wikitext-2-raw", "raw", "wikitext-2-raw-v1"),
}
HF_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
NAMED = ("tinyshakespeare", *WIKITEXT)
ALIASES = {"val": "valid", "valid": "val"}  # either name works for either kind of source


def data_root(data_dir: str | Path | None = None) -> Path:
    """data_dir, else $GPTKIT_DATA_DIR, else ~/.cache/gptkit/data."""
    chosen = data_dir or os.environ.get("GPTKIT_DATA_DIR")
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "gptkit" / "data"


def is_wikitext(spec: str) -> bool:
    """WikiText sources get word-level perplexity (their word count is the published one)."""
    return spec in WIKITEXT


def available_splits(spec: str) -> tuple[str, ...]:
    return ("train", "valid", "test") if spec in WIKITEXT else ("train", "val")


def _split_name(spec: str, split: str) -> str:
    """The source's own name for `split` (`val` and `valid` are aliases), or an error."""
    available = available_splits(spec)
    if split in available:
        return split
    if ALIASES.get(split) in available:
        return ALIASES[split]
    raise GptkitError(
        f"source {spec!r} has no split {split!r}; available: {', '.join(available)}"
    )


def offline() -> bool:
    return os.environ.get("GPTKIT_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download(url: str, dest: Path, what: str) -> None:
    """Fetch `url` into `dest` (temp name, then rename), or explain how to get `what` by hand."""
    fix = "put it there, or point --data-dir / GPTKIT_DATA_DIR at a data root that has it"
    if offline():
        raise GptkitError(f"{what} is not in {dest.parent} and downloads are off "
                          f"(GPTKIT_OFFLINE=1); {fix}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise GptkitError(
            f"{what} is not in {dest.parent} and downloading {url} failed ({exc}); {fix}"
        ) from exc


def _wikitext_file(spec: str, split: str, root: Path) -> Path:
    """The published split file, else a parquet copy (data root or HF layout), else download."""
    folder, suffix, config = WIKITEXT[spec]
    tokens = root / folder / f"wiki.{split}.{suffix}"
    parquet = f"{HF_SPLITS[split]}-00000-of-00001.parquet"
    for path in (tokens, root / folder / parquet, root / "wikitext" / config / parquet):
        if path.is_file():
            return path
    what = (f"WikiText-2 split {split!r} ({tokens.name}, or {parquet} from Hugging Face "
            f"Salesforce/wikitext {config})")
    download(WIKITEXT_URL.format(config=config, split=HF_SPLITS[split]), root / folder / parquet,
             what)
    return root / folder / parquet


def _path_files(spec: str) -> list[Path]:
    """Files of a path spec: a file, a folder (recursive, no hidden files) or a glob."""
    if any(c in spec for c in "*?["):
        found = [Path(p) for p in sorted(glob.glob(os.path.expanduser(spec), recursive=True))]
        files = [p for p in found if p.is_file()]
        if not files:
            raise GptkitError(f"no file matches {spec!r}; check the pattern")
        return files
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise GptkitError(f"folder {path} holds no files; put text files in it")
        return files
    raise GptkitError(
        f"data source {spec!r} is neither a data set ({', '.join(NAMED)}) nor an existing file, "
        "folder or glob; fix data.source"
    )


def source_files(
    spec: str, splits: Sequence[str], *, data_dir: str | Path | None = None
) -> dict[str, list[Path]]:
    """The files each split is read from (named data sets are downloaded when missing)."""
    names = {split: _split_name(spec, split) for split in splits}
    root = data_root(data_dir)
    if spec in WIKITEXT:
        return {split: [_wikitext_file(spec, name, root)] for split, name in names.items()}
    if spec == "tinyshakespeare":
        path = root / "tinyshakespeare" / "input.txt"
        if not path.is_file():
            download(TINYSHAKESPEARE_URL, path, "Tiny Shakespeare (tinyshakespeare/input.txt)")
        return {split: [path] for split in splits}
    files = _path_files(spec)
    return {split: files for split in splits}


def read_text(path: Path) -> str:
    """A file's text exactly (no newline translation), or where it is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GptkitError(
            f"{path} is not UTF-8 text (invalid byte 0x{data[exc.start]:02x} at byte offset "
            f"{exc.start}); convert it to UTF-8 (e.g. iconv -t utf-8)"
        ) from None


def _read_parquet(path: Path) -> str:
    """WikiText parquet rows are lines; HF stored blank lines (" \\n" in the files) as ""."""
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path, columns=["text"]).column("text").to_pylist()
    except Exception as exc:
        raise GptkitError(f"cannot read {path} as WikiText parquet ({exc}); delete it") from exc
    return "".join(row or " \n" for row in rows)


def _read_jsonl(path: Path, text_field: str) -> list[str]:
    docs = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GptkitError(f"{path}:{number} is not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise GptkitError(
                f"{path}:{number} has no text field {text_field!r}; set data.text_field"
            )
        docs.append(record[text_field])
    return docs


def _read_documents(files: Sequence[Path], text_field: str) -> list[str]:
    docs: list[str] = []
    for path in files:
        if path.suffix == ".jsonl":
            docs.extend(_read_jsonl(path, text_field))
        else:
            docs.append(read_text(path))
    return docs


def _train_val(docs: list[str], split: str, val_fraction: float) -> list[str]:
    """One document: cut its characters; several: the last documents are validation."""
    if len(docs) == 1:
        cut = int(len(docs[0]) * (1 - val_fraction))
        return [docs[0][:cut] if split == "train" else docs[0][cut:]]
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    return docs[:-n_val] if split == "train" else docs[-n_val:]


def load_source(
    spec: str,
    splits: Sequence[str],
    *,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    text_field: str = "text",
) -> dict[str, list[str]]:
    """Split name (as asked) -> its documents. Only the requested splits are read."""
    files = source_files(spec, splits, data_dir=data_dir)
    if not files:
        return {}
    if spec in WIKITEXT:
        out = {
            split: [_read_parquet(path) if path.suffix == ".parquet" else read_text(path)]
            for split, [path] in files.items()
        }
    else:
        docs = _read_documents(next(iter(files.values())), text_field)
        if not any(doc.strip() for doc in docs):
            raise GptkitError(f"data source {spec!r} is empty (only whitespace); give it text")
        cut = 0.1 if spec == "tinyshakespeare" else val_fraction  # nanoGPT's 90/10
        out = {split: _train_val(docs, _split_name(spec, split), cut) for split in splits}
    for split, docs in out.items():
        if not any(doc.strip() for doc in docs):
            raise GptkitError(
                f"split {split!r} of {spec!r} is empty (only whitespace); give the source more "
                "text or change data.val_fraction"
            )
    return out
