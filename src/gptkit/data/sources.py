"""Where text comes from: named data sets (data root, else downloaded) and the user's files.

`load_source(spec, splits)` gives each requested split as a list of documents. Named specs:
`tinyshakespeare` (train/val, nanoGPT's 90/10 cut), `wikitext2` and `wikitext2-raw`
(train/valid/test as published, plus `valid-head`/`valid-tail`: valid cut by whole articles,
the last `val_fraction` of them in the tail, for the offline protocol). Any other spec is a
path: a text file, a folder, a glob or JSONL (one document per line), split into train/val
by `val_fraction`: the last documents whole (`split_by=documents`), or the last
`val_fraction` of every document's characters (`split_by=fraction`). `hf:NAME` is a Hugging
Face data set (gptkit.data.hf_source), one document per row, its own splits or its train
split cut by rows.
"""

from __future__ import annotations

import codecs
import glob
import itertools
import json
import operator
import os
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptkit.config import SPLIT_PROTOCOLS
from gptkit.data.hf_source import HfOptions, is_hf, local_files, texts
from gptkit.errors import GptkitError
from gptkit.offline import offline

if TYPE_CHECKING:
    from gptkit.config import DataConfig

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
# WikiText's valid split cut by whole articles: the first 1 - val_fraction of them (head) and
# the rest (tail), so an offline run trains on one part and selects on the other
HEAD_TAIL = {"valid-head": "valid", "valid-tail": "valid"}
NAMED = ("tinyshakespeare", *WIKITEXT)
ALIASES = {"val": "valid", "valid": "val"}  # either name works for either kind of source
READ_BYTES = 1 << 20  # bytes read from a file at a time


def data_root(data_dir: str | Path | None = None) -> Path:
    """data_dir, else $GPTKIT_DATA_DIR, else ~/.cache/gptkit/data."""
    chosen = data_dir or os.environ.get("GPTKIT_DATA_DIR")
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "gptkit" / "data"


def is_wikitext(spec: str) -> bool:
    """WikiText sources get word-level perplexity (their word count is the published one)."""
    return spec in WIKITEXT


def available_splits(spec: str) -> tuple[str, ...]:
    return ("train", "valid", "test", *HEAD_TAIL) if spec in WIKITEXT else ("train", "val")


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
    spec: str, splits: Sequence[str], *, data_dir: str | Path | None = None,
    hf: HfOptions | None = None,
) -> dict[str, list[Path]]:
    """The files each split is read from (named data sets are downloaded when missing)."""
    if is_hf(spec):
        files = local_files(spec, hf or HfOptions())
        return {split: files for split in splits}
    names = {split: _split_name(spec, split) for split in splits}
    root = data_root(data_dir)
    if spec in WIKITEXT:
        return {split: [_wikitext_file(spec, HEAD_TAIL.get(name, name), root)]
                for split, name in names.items()}
    if spec == "tinyshakespeare":
        path = root / "tinyshakespeare" / "input.txt"
        if not path.is_file():
            download(TINYSHAKESPEARE_URL, path, "Tiny Shakespeare (tinyshakespeare/input.txt)")
        return {split: [path] for split in splits}
    files = _path_files(spec)
    return {split: files for split in splits}


def read_chunks(path: Path, block_bytes: int | None = None) -> Iterator[str]:
    """A file's text exactly (no newline translation) in chunks, or where it is not UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes handed to the decoder so far
    with open(path, "rb") as file:
        while True:
            block = file.read(block_bytes or READ_BYTES)
            pending = decoder.getstate()[0]  # the start of a character cut by the last block
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                data = pending + block
                raise GptkitError(
                    f"{path} is not UTF-8 text (invalid byte 0x{data[exc.start]:02x} at byte "
                    f"offset {offset - len(pending) + exc.start}); convert it to UTF-8 (e.g. "
                    "iconv -t utf-8)"
                ) from None
            offset += len(block)
            if text:
                yield text
            if not block:
                return


def read_text(path: Path) -> str:
    """A file's text exactly (no newline translation), or where it is not UTF-8."""
    return "".join(read_chunks(path))


def _parquet_chunks(path: Path) -> Iterator[str]:
    """WikiText parquet rows are lines; HF stored blank lines (" \\n" in the files) as ""."""
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1 << 14, columns=["text"])
        for batch in batches:
            yield "".join(row or " \n" for row in batch.column("text").to_pylist())
    except Exception as exc:
        raise GptkitError(f"cannot read {path} as WikiText parquet ({exc}); delete it") from exc


def _lines(chunks: Iterable[str]) -> Iterator[str]:
    """`str.splitlines` of the joined chunks, one line at a time."""
    rest: list[str] = []  # the line under way, in pieces (a long line is joined once)
    for chunk in chunks:
        if "\n" not in chunk:
            rest.append(chunk)
            continue
        parts = chunk.split("\n")
        parts[0] = "".join([*rest, parts[0]])
        rest = [parts.pop()]
        for part in parts:  # "\n" ends a line; the other line breaks are split here
            yield from part.splitlines() or [""]
    if "".join(rest):
        yield from "".join(rest).splitlines()


def _jsonl_texts(path: Path, text_field: str) -> Iterator[str]:
    """The text of each record (non-blank line) of a JSONL file, in order."""
    for number, line in enumerate(_lines(read_chunks(path)), start=1):
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
        yield record[text_field]


def _document_count(files: Sequence[Path], text_field: str) -> int:
    """Documents of a path source: one per text file, one per JSONL record.

    Reads every JSONL record, so a broken line is reported before any tokenising starts.
    """
    return sum(
        sum(1 for _ in _jsonl_texts(path, text_field)) if path.suffix == ".jsonl" else 1
        for path in files
    )


def _documents(files: Sequence[Path], text_field: str, first: int, stop: int
               ) -> Iterator[tuple[int, Iterable[str]]]:
    """Documents number `first` to `stop - 1` of a path source, each as text chunks.

    Text files outside the range are not opened; JSONL files are read line by line.
    """
    number = 0
    for path in files:
        if number >= stop:
            return
        if path.suffix != ".jsonl":
            if number >= first:
                yield number, read_chunks(path)
            number += 1
            continue
        for text in _jsonl_texts(path, text_field):
            if number >= first:
                yield number, [text]
            number += 1
            if number >= stop:
                return


def _characters(chunks: Iterable[str], start: int, stop: int | None) -> Iterator[str]:
    """Characters [start, stop) of the text the chunks join into."""
    seen = 0
    for chunk in chunks:
        lo, hi = max(start - seen, 0), len(chunk) if stop is None else min(stop - seen, len(chunk))
        if lo < hi:
            yield chunk[lo:hi]
        seen += len(chunk)
        if stop is not None and seen >= stop:
            return


def stream_source(
    spec: str,
    split: str,
    *,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    text_field: str = "text",
    split_by: str = "documents",
    hf: HfOptions | None = None,
) -> Iterator[tuple[int, str]]:
    """One split as (document number, text) pairs, a document's text in one or more chunks.

    Reads as it goes, so a corpus larger than memory streams through; every document gives
    at least one pair (an empty document gives ""). The split is the one `load_source` gives:
    WikiText's files whole (valid-head/valid-tail: valid cut by articles), else a single
    document cut by characters (the last `val_fraction` is val; Tiny Shakespeare 10%), the
    last documents as val (`split_by=documents`), or every document cut by characters
    (`split_by=fraction`). An `hf:` source gives one document per row (`hf` its settings).
    """
    if is_hf(spec):
        rows = texts(spec, split, hf or HfOptions(), text_field=text_field,
                     val_fraction=val_fraction)
        for number, text in enumerate(rows):
            yield number, text
        return
    name = _split_name(spec, split)
    [paths] = source_files(spec, [split], data_dir=data_dir).values()
    if spec in WIKITEXT:
        [path] = paths

        def chunks() -> Iterator[str]:
            return _parquet_chunks(path) if path.suffix == ".parquet" else read_chunks(path)

        if name in HEAD_TAIL:
            yield from _numbered(0, _article_part(path, chunks, val_fraction,
                                                  tail=name == "valid-tail"))
            return
        yield from _numbered(0, chunks())
        return
    fraction = 0.1 if spec == "tinyshakespeare" else val_fraction  # nanoGPT's 90/10
    count = _document_count(paths, text_field)
    if count == 0:
        raise GptkitError(f"data source {spec!r} is empty (only whitespace); give it text")
    if count == 1 or split_by == "fraction":  # cut every document's characters
        for number, read in _document_readers(paths, text_field):
            cut = int(sum(map(len, read())) * (1 - fraction))
            start, stop = (0, cut) if name == "train" else (cut, None)
            yield from _numbered(number, _characters(read(), start, stop))
        return
    n_val = min(count - 1, max(1, round(count * fraction)))
    first, stop = (0, count - n_val) if name == "train" else (count - n_val, count)
    for number, doc in _documents(paths, text_field, first, stop):
        yield from _numbered(number, doc)


def _document_readers(files: Sequence[Path], text_field: str
                      ) -> Iterator[tuple[int, Callable[[], Iterable[str]]]]:
    """Each document of a path source with a way to read its text (again), in order."""
    number = 0
    for path in files:
        if path.suffix != ".jsonl":
            yield number, lambda path=path: read_chunks(path)  # type: ignore[misc]
            number += 1
            continue
        for text in _jsonl_texts(path, text_field):
            yield number, lambda text=text: [text]  # type: ignore[misc]
            number += 1


def _lines_with_ends(chunks: Iterable[str]) -> Iterator[str]:
    """The lines of the text the chunks join into, each with its "\n" (joined, they give it)."""
    rest: list[str] = []
    for chunk in chunks:
        start = 0
        while (end := chunk.find("\n", start)) >= 0:
            yield "".join([*rest, chunk[start : end + 1]])
            rest, start = [], end + 1
        if start < len(chunk):
            rest.append(chunk[start:])
    if rest:
        yield "".join(rest)


def _is_article_start(line: str) -> bool:
    """WikiText's article titles are ` = Title = ` lines; sections are ` = = Section = = `."""
    return line.startswith(" = ") and not line.startswith(" = = ")


def _article_part(path: Path, chunks: Callable[[], Iterable[str]], fraction: float, *,
                  tail: bool) -> Iterator[str]:
    """The head (first 1 - fraction of the articles) or tail of a WikiText split, in chunks.

    Whole articles, so no article is both trained on and selected on; head + tail is the
    split exactly.
    """
    articles = sum(map(_is_article_start, _lines_with_ends(chunks())))
    if articles < 2:
        raise GptkitError(f"{path} holds {articles} WikiText article(s); holding some out "
                          "for selection needs at least 2")
    n_head = articles - min(articles - 1, max(1, round(articles * fraction)))
    seen, kept, size = 0, [], 0
    for line in _lines_with_ends(chunks()):
        seen += _is_article_start(line)
        if (seen > n_head) == tail:
            kept.append(line)
            size += len(line)
            if size >= READ_BYTES:
                yield "".join(kept)
                kept, size = [], 0
    if kept:
        yield "".join(kept)


def resolve_protocol(cfg: DataConfig, data_dir: str | Path | None = None
                     ) -> tuple[DataConfig, str]:
    """`cfg` with `data.protocol` turned into its splits, and a line saying which and why.

    `auto` is `published` when WikiText's train split is in the data root or downloads,
    else `offline`. Other protocols (and `manual`) come back as they are.
    """
    if cfg.protocol not in (*SPLIT_PROTOCOLS, "auto"):
        return cfg, ""
    protocol, why = cfg.protocol, "data.protocol"
    if protocol == "auto":
        try:
            source_files(cfg.source, ["train"], data_dir=data_dir)
            protocol, why = "published", "the train split is available"
        except GptkitError as exc:
            protocol, why = "offline", f"no train split: {' '.join(str(exc).split(';')[0].split())}"
    train, select, test = SPLIT_PROTOCOLS[protocol]
    resolved = cfg.updated(protocol=protocol, train_split=train, eval_split=select,
                           test_split=test)
    if protocol == "published":
        what = "train on train, select on valid (best checkpoint, early stopping), report test"
    else:
        held = f"{100 * cfg.val_fraction:g}%"
        what = (f"train on valid's articles but the last {held} (valid-head), select on those "
                f"{held} (valid-tail), report test")
    return resolved, f"data protocol: {protocol} ({why}): {what}"


def _numbered(number: int, chunks: Iterable[str]) -> Iterator[tuple[int, str]]:
    """(number, chunk) for each non-empty chunk; ("") when there is none."""
    empty = True
    for chunk in chunks:
        if chunk:
            empty = False
            yield number, chunk
    if empty:
        yield number, ""


def documents(stream: Iterable[tuple[int, str]]) -> Iterator[Iterator[str]]:
    """A `stream_source` stream as one chunk iterator per document (consume them in order)."""
    for _, group in itertools.groupby(stream, key=operator.itemgetter(0)):
        yield (chunk for _, chunk in group)


def empty_split_error(spec: str, split: str, *, data_dir: str | Path | None = None,
                      val_fraction: float = 0.1, text_field: str = "text",
                      split_by: str = "documents", hf: HfOptions | None = None
                      ) -> GptkitError:
    """What to say when a split holds only whitespace: the source's fault or the split's."""
    if spec not in WIKITEXT and not is_hf(spec):
        streams = (stream_source(spec, s, data_dir=data_dir, val_fraction=val_fraction,
                                 text_field=text_field, split_by=split_by)
                   for s in available_splits(spec))
        if not any(chunk.strip() for stream in streams for _, chunk in stream):
            return GptkitError(f"data source {spec!r} is empty (only whitespace); give it text")
    return GptkitError(
        f"split {split!r} of {spec!r} is empty (only whitespace); give the source more "
        "text or change data.val_fraction"
    )


def load_source(
    spec: str,
    splits: Sequence[str],
    *,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    text_field: str = "text",
    split_by: str = "documents",
    hf: HfOptions | None = None,
) -> dict[str, list[str]]:
    """Split name (as asked) -> its documents, in memory. Only the requested splits are read.

    For corpora that fit in memory (and tests); `prepare` streams with `stream_source`.
    """
    for split in splits if not is_hf(spec) else ():
        _split_name(spec, split)
    out = {}
    options: dict[str, Any] = dict(data_dir=data_dir, val_fraction=val_fraction,
                                   text_field=text_field, split_by=split_by, hf=hf)
    for split in splits:
        docs = ["".join(doc) for doc in documents(stream_source(spec, split, **options))]
        if not any(doc.strip() for doc in docs):
            raise empty_split_error(spec, split, **options)
        out[split] = docs
    return out
