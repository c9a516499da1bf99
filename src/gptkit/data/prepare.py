"""Text -> token ids on disk: token shards per split plus meta.json and tokenizer.json.

A split's token stream is `[eot] doc1 [eot] doc2 ...` (EOT only where the tokenizer has
one), so the first token of each document has a context. It is written as shards of at most
`data.shard_tokens` ids (`<split>-00000.bin`, ...; see `gptkit.data.shards`), indexed in
meta.json with each shard's token count and global offset. The source is streamed: files
are read in blocks, documents cut into pieces that encode exactly as the whole
(`Tokenizer.split_stream`) and encoded a batch at a time, by `data.workers` processes when
more than one, so memory stays bounded whatever the corpus size. Results are cached under a
key of (source, tokenizer, its settings), so a second run skips tokenisation.
"""

from __future__ import annotations

import collections
import hashlib
import json
import multiprocessing
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
from tqdm import tqdm

from gptkit.config import DataConfig
from gptkit.data.hf_source import HfOptions, is_hf
from gptkit.data.hf_source import identity as hf_identity
from gptkit.data.shards import ShardWriter, TokenShards
from gptkit.data.sources import (
    NAMED,
    documents,
    empty_split_error,
    source_files,
    stream_source,
)
from gptkit.errors import GptkitError
from gptkit.tokenizers import UNK, Tokenizer, build_tokenizer, training_pieces, unknown_warning

# 2: splits are token shards listed in meta.json (1: one <split>.bin per split)
FORMAT = 2
PIECE_CHARS = 1 << 16  # documents are cut into pieces this long, encoded in parallel
BATCH_CHARS = 1 << 20  # characters per encode call (bounds memory: ids are int64 until written)
BATCH_PIECES = 1 << 12
COUNTS = ("tokens", "words", "bytes", "characters", "documents")


@dataclass
class PreparedData:
    path: Path  # folder with the token shards, meta.json, tokenizer.json
    meta: dict[str, Any]
    tokenizer: Tokenizer

    def _split(self, split: str) -> dict[str, Any]:
        try:
            return self.meta["splits"][split]
        except KeyError:
            have = ", ".join(self.meta["splits"])
            raise GptkitError(f"split {split!r} was not prepared (prepared: {have})") from None

    def tokens(self, split: str) -> TokenShards:
        """The split's token ids, memory-mapped read-only, indexed like one 1-D array."""
        shards = self._split(split)["shards"]
        return TokenShards([self.path / s["file"] for s in shards],
                           [s["tokens"] for s in shards], np.dtype(self.meta["dtype"]))

    def split_meta(self, split: str) -> dict[str, int]:
        """tokens, words (WikiText convention), bytes (UTF-8), characters, documents."""
        info = self._split(split)
        return {name: info[name] for name in COUNTS}


def cache_dir(cache: str | Path | None = None) -> Path:
    """cache, else $GPTKIT_CACHE_DIR, else ~/.cache/gptkit/prepared."""
    chosen = cache or os.environ.get("GPTKIT_CACHE_DIR")
    return Path(chosen).expanduser() if chosen else Path.home() / ".cache" / "gptkit" / "prepared"


def _fingerprint(files: Sequence[Path]) -> str:
    """Changes whenever one of the files is renamed, resized or rewritten."""
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


def _source_id(spec: str) -> str:
    """Named data sets by name; paths made absolute so the same file is the same source."""
    if spec in ("tinyshakespeare", "wikitext2", "wikitext2-raw"):
        return spec
    return os.path.abspath(os.path.expanduser(spec))


def count_words(docs: Sequence[str]) -> int:
    """WikiText convention: whitespace-separated words plus one end-of-line token per line."""
    return sum(len(doc.split()) + doc.count("\n") for doc in docs)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class _Encoded:
    """One batch of pieces encoded, with the counts of its text."""

    ids: np.ndarray
    words: int
    bytes: int
    characters: int
    documents: int
    has_text: bool
    unknown: dict[str, int]  # characters the tokenizer lacks (they became <unk>): count


def _encode_batch(tokenizer: Tokenizer, dtype: np.dtype, pieces: list[str],
                  starts: list[bool]) -> _Encoded:
    """`[eot]` before each document's first piece, then the pieces' ids.

    Pieces are cut where whitespace ends a word, so their word counts add up to the
    documents'.
    """
    eot = np.array([] if tokenizer.eot_id is None else [tokenizer.eot_id], dtype=np.int64)
    parts = []
    for start, ids in zip(starts, tokenizer.encode_arrays(pieces), strict=True):
        if start:
            parts.append(eot)
        parts.append(ids)
    array = np.concatenate(parts) if parts else eot[:0]
    if len(array) and array.max() > np.iinfo(dtype).max:
        raise GptkitError(f"token id {array.max()} does not fit {dtype}; report this bug")
    unk = tokenizer.backend.token_to_id(UNK)
    unknown = {} if unk is None or not (array == unk).any() else dict(
        tokenizer.unknown_characters(pieces))
    return _Encoded(
        unknown=unknown,
        ids=array.astype(dtype),
        words=count_words(pieces),
        bytes=sum(len(piece.encode("utf-8")) for piece in pieces),
        characters=sum(map(len, pieces)),
        documents=sum(starts),
        has_text=any(piece.strip() for piece in pieces),
    )


_worker: tuple[Tokenizer, np.dtype] | None = None  # a pool process's tokenizer


def _start_worker(spec: str, dtype: str, threads: int) -> None:
    global _worker
    os.environ["RAYON_NUM_THREADS"] = str(threads)  # HF's encode threads: a share of the cores
    _worker = (Tokenizer(tokenizers.Tokenizer.from_str(spec)), np.dtype(dtype))


def _encode_in_worker(batch: tuple[list[str], list[bool]]) -> _Encoded:
    assert _worker is not None, "pool process not started by _start_worker"
    return _encode_batch(*_worker, *batch)


def _batches(docs: Iterable[Iterable[str]], tokenizer: Tokenizer
             ) -> Iterator[tuple[list[str], list[bool]]]:
    """(pieces, starts a document?) in batches of about BATCH_CHARS characters."""
    pieces: list[str] = []
    starts: list[bool] = []
    size = 0
    for doc in docs:
        for i, piece in enumerate(tokenizer.split_stream(doc, PIECE_CHARS)):
            pieces.append(piece)
            starts.append(i == 0)
            size += len(piece)
            if size >= BATCH_CHARS or len(pieces) >= BATCH_PIECES:
                yield pieces, starts
                pieces, starts, size = [], [], 0
    if pieces:
        yield pieces, starts


def _encoded(batches: Iterable[tuple[list[str], list[bool]]], tokenizer: Tokenizer,
             dtype: np.dtype, workers: int) -> Iterator[_Encoded]:
    """The batches encoded in order: here, or by `workers` processes (a few batches ahead)."""
    if workers <= 1:
        for batch in batches:
            yield _encode_batch(tokenizer, dtype, *batch)
        return
    # spawn: a forked copy of a process that already runs threads (torch, tokenizers) can hang
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    with context.Pool(workers, _start_worker,
                      (tokenizer.backend.to_str(), dtype.str, threads)) as pool:
        pending: collections.deque[Any] = collections.deque()
        for batch in batches:
            pending.append(pool.apply_async(_encode_in_worker, (batch,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _worker_count(workers: int) -> int:
    return workers if workers > 0 else (os.cpu_count() or 1)


def data_options(cfg: DataConfig, data_dir: str | Path | None) -> dict[str, Any]:
    """The settings `stream_source` cuts a source's splits by."""
    return dict(data_dir=data_dir, val_fraction=cfg.val_fraction, text_field=cfg.text_field,
                split_by=cfg.split_by, hf=HfOptions.of(cfg))


def _write_split(cfg: DataConfig, split: str, tokenizer: Tokenizer, folder: Path,
                 dtype: np.dtype, data_dir: str | Path | None, progress: bool) -> dict[str, Any]:
    """Streams one split into shards; its index and counts (meta.json's entry)."""
    options: dict[str, Any] = data_options(cfg, data_dir)
    docs = documents(stream_source(cfg.source, split, **options))
    counts = dict.fromkeys(COUNTS, 0)
    unknown: collections.Counter[str] = collections.Counter()
    has_text = False
    bar = tqdm(unit="char", unit_scale=True, disable=not progress)
    with ShardWriter(folder, split, dtype, cfg.shard_tokens) as writer:
        for encoded in _encoded(_batches(docs, tokenizer), tokenizer, dtype,
                                _worker_count(cfg.workers)):
            writer.write(encoded.ids)
            counts["tokens"] += len(encoded.ids)
            for name in ("words", "bytes", "characters", "documents"):
                counts[name] += getattr(encoded, name)
            has_text |= encoded.has_text
            unknown.update(encoded.unknown)
            bar.update(encoded.characters)
        bar.close()
        if not has_text:
            raise empty_split_error(cfg.source, split, **options)
        shards = writer.close()
    # the characters a tokenizer trained on other text lacks, said by `prepare`
    common = dict(unknown.most_common(5))
    return {"shards": shards, **counts, "unknown_characters": sum(unknown.values()),
            "unknown_examples": common}


def prepare(
    cfg: DataConfig,
    *,
    splits: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    cache: str | Path | None = None,
    tokenizer: Tokenizer | None = None,
    progress: bool = False,
) -> PreparedData:
    """Tokenise the requested splits (default: train and eval split), reusing the cache.

    Without `tokenizer`, one is built from `cfg`: char/bpe trained on `cfg.train_split` only,
    gpt2 read from `cfg.tokenizer_path` (else the data root). The cache folder is keyed by
    the source and the tokenizer's hash, so a run's own tokenizer (resume, eval) finds the
    data prepared when it was trained; `<cache>/<settings key>.json` points trained
    tokenizer settings at that folder, so a second run neither trains nor tokenises.
    The source is streamed (see the module docstring): memory does not grow with its size.
    """
    splits = list(dict.fromkeys(splits or (cfg.train_split, cfg.eval_split)))
    if tokenizer is None and cfg.tokenizer == "gpt2":
        tokenizer = build_tokenizer(cfg, [], data_dir=data_dir)
    trains = [cfg.train_split] if tokenizer is None else []
    files = source_files(cfg.source, [*splits, *trains], data_dir=data_dir,
                         hf=HfOptions.of(cfg))
    fingerprints = {split: _fingerprint(paths) for split, paths in files.items()}
    identity = {"format": FORMAT, "source": _source_id(cfg.source),
                "val_fraction": cfg.val_fraction, "text_field": cfg.text_field}
    if is_hf(cfg.source):  # streamed or not, the same rows: hf_streaming is not in the key
        identity.update(hf_identity(cfg.source, HfOptions.of(cfg)))
    if cfg.split_by != "documents":  # the default keeps the keys caches were made with
        identity["split_by"] = cfg.split_by
    root = cache_dir(cache)
    link, linked = None, None
    if tokenizer is None:
        settings = {"kind": cfg.tokenizer, "on": cfg.train_split,
                    "vocab_size": cfg.vocab_size if cfg.tokenizer == "bpe" else None,
                    "files": fingerprints[cfg.train_split]}
        link = root / f"{_key({**identity, 'tokenizer': settings})}.json"
        if link.is_file():
            linked = json.loads(link.read_text(encoding="utf-8"))["key"]
            if (root / linked / "tokenizer.json").is_file():
                tokenizer = Tokenizer.load(root / linked / "tokenizer.json")
    if tokenizer is None:
        tokenizer = _train_tokenizer(cfg, data_dir, progress)
    key = _key({**identity, "tokenizer": tokenizer.sha256()})
    folder = root / key
    meta_path = folder / "meta.json"
    meta: dict[str, Any] = {
        "format": FORMAT, "source": cfg.source, "tokenizer_kind": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id,
        "dtype": "uint16" if tokenizer.vocab_size <= 1 << 16 else "uint32",
        "key": key, "splits": {},
    }
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    todo = [s for s in splits if meta["splits"].get(s, {}).get("source_files") != fingerprints[s]]
    if todo:
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "tokenizer.json").is_file():
            _write_atomic(folder / "tokenizer.json", tokenizer.backend.to_str(True).encode())
    for split in todo:
        if progress:
            print(f"tokenizing {cfg.source} [{split}]", file=sys.stderr)
        info = _write_split(cfg, split, tokenizer, folder, np.dtype(meta["dtype"]), data_dir,
                            progress)
        old = meta["splits"].get(split, {}).get("shards", [])
        meta["splits"][split] = {**info, "source_files": fingerprints[split]}
        _write_atomic(meta_path, json.dumps(meta, indent=2).encode("utf-8"))
        kept = {shard["file"] for shard in info["shards"]}
        for shard in old:  # a rebuilt split that became shorter
            if shard["file"] not in kept:
                (folder / shard["file"]).unlink(missing_ok=True)
    for split in splits:  # every time, not only when tokenising: the model will see <unk>
        info = meta["splits"][split]
        if info.get("unknown_characters"):
            warning = unknown_warning(info["unknown_examples"], f"{cfg.source} [{split}]",
                                      info["unknown_characters"])
            print(f"gptkit: {warning}", file=sys.stderr)
    warning = _split_share_warning(cfg, meta["splits"])
    if warning:
        print(f"gptkit: {warning}", file=sys.stderr)
    if link is not None and linked != key:
        _write_atomic(link, json.dumps({"key": key, "tokenizer": cfg.tokenizer}).encode())
    return PreparedData(folder, meta, tokenizer)


def _split_share_warning(cfg: DataConfig, splits: dict[str, Any]) -> str | None:
    """Your own files are cut by whole documents: say so when val's share of the text is far
    from data.val_fraction (e.g. the last of two files, 43% of the text)."""
    if cfg.source in NAMED or is_hf(cfg.source) or cfg.split_by != "documents":
        return None
    train = splits.get("train", {}).get("characters")
    val = next((splits[s]["characters"] for s in ("val", "valid") if s in splits), None)
    if not train or val is None:
        return None
    share, wanted = val / (train + val), cfg.val_fraction
    if wanted / 2 <= share <= 2 * wanted:
        return None
    return (f"warning: val holds {100 * share:.0f}% of the text of {cfg.source}, not the "
            f"{100 * wanted:g}% data.val_fraction asks for: your own data is split by whole "
            "documents (a text file or a JSONL record each), the last ones going to val; set "
            "data.split_by=fraction to cut every document at val_fraction, or use more, "
            "smaller files")


def _train_tokenizer(cfg: DataConfig, data_dir: str | Path | None, progress: bool) -> Tokenizer:
    """char/bpe learnt from the train split, read once as a stream of pieces."""
    options: dict[str, Any] = data_options(cfg, data_dir)
    has_text = False

    def pieces() -> Iterator[str]:
        nonlocal has_text
        for doc in documents(stream_source(cfg.source, cfg.train_split, **options)):
            for piece in training_pieces(doc):
                if not has_text and piece.strip():  # said once the source reads as text
                    has_text = True
                    if progress:
                        print(f"training a {cfg.tokenizer} tokenizer on {cfg.source} "
                              f"[{cfg.train_split}]", file=sys.stderr)
                yield piece

    tokenizer = build_tokenizer(cfg, pieces(), data_dir=data_dir)
    if not has_text:
        raise empty_split_error(cfg.source, cfg.train_split, **options)
    return tokenizer


def _key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

