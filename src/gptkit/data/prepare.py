"""Text -> token ids on disk: one `<split>.bin` per split plus meta.json and tokenizer.json.

A split's token stream is `[eot] doc1 [eot] doc2 ...` (EOT only where the tokenizer has
one), so the first token of each document has a context. Results are cached under a key
of (source, tokenizer, its settings), so a second run skips tokenisation.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from tqdm import tqdm

from gptkit.config import DataConfig
from gptkit.data.sources import load_source, source_files
from gptkit.errors import GptkitError
from gptkit.tokenizers import Tokenizer, build_tokenizer

FORMAT = 1
PIECE_CHARS = 1 << 18  # long documents are cut into pieces this long, encoded in parallel
BATCH_CHARS = 1 << 24  # characters per encode_batch call (bounds memory)
COUNTS = ("tokens", "words", "bytes", "characters", "documents")


@dataclass
class PreparedData:
    path: Path  # folder with <split>.bin, meta.json, tokenizer.json
    meta: dict[str, Any]
    tokenizer: Tokenizer

    def _split(self, split: str) -> dict[str, Any]:
        try:
            return self.meta["splits"][split]
        except KeyError:
            have = ", ".join(self.meta["splits"])
            raise GptkitError(f"split {split!r} was not prepared (prepared: {have})") from None

    def tokens(self, split: str) -> np.ndarray:
        """The split's token ids, memory-mapped read-only."""
        info, dtype = self._split(split), np.dtype(self.meta["dtype"])
        if info["tokens"] == 0:
            return np.zeros(0, dtype)
        return np.memmap(self.path / info["file"], dtype=dtype, mode="r")

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


def _encode_split(
    docs: Sequence[str], tokenizer: Tokenizer, out: BinaryIO, dtype: np.dtype, progress: bool
) -> int:
    """Writes `[eot] + encode(doc)` for each document to `out`; returns the token count.

    Documents are cut into pieces that encode exactly as the whole (`Tokenizer.split_text`)
    and go through `encode_batch` in batches, so all cores work and memory stays bounded.
    """
    eot = np.array([] if tokenizer.eot_id is None else [tokenizer.eot_id], dtype=np.int64)
    limit = np.iinfo(dtype).max
    bar = tqdm(total=sum(map(len, docs)), unit="char", unit_scale=True, disable=not progress)

    def write(pieces: list[str], starts: list[bool]) -> int:
        parts = []
        for start, ids in zip(starts, tokenizer.encode_batch(pieces), strict=True):
            if start:
                parts.append(eot)
            parts.append(np.asarray(ids, dtype=np.int64))
        array = np.concatenate(parts) if parts else eot[:0]
        if len(array) and array.max() > limit:
            raise GptkitError(f"token id {array.max()} does not fit {dtype}; report this bug")
        out.write(array.astype(dtype).tobytes())
        bar.update(sum(map(len, pieces)))
        return len(array)

    total, size = 0, 0
    pieces: list[str] = []
    starts: list[bool] = []
    for doc in docs:
        for i, piece in enumerate(tokenizer.split_text(doc, PIECE_CHARS)):
            pieces.append(piece)
            starts.append(i == 0)
            size += len(piece)
            if size >= BATCH_CHARS or len(pieces) >= 1 << 14:
                total += write(pieces, starts)
                pieces, starts, size = [], [], 0
    total += write(pieces, starts)
    bar.close()
    return total


def _split_info(file: str, tokens: int, docs: Sequence[str], fingerprint: str) -> dict[str, Any]:
    return {
        "file": file,
        "tokens": tokens,
        "words": count_words(docs),
        "bytes": sum(len(doc.encode("utf-8")) for doc in docs),
        "characters": sum(map(len, docs)),
        "documents": len(docs),
        "source_files": fingerprint,  # the split is rebuilt when its files change
    }


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
    """
    splits = list(dict.fromkeys(splits or (cfg.train_split, cfg.eval_split)))
    if tokenizer is None and cfg.tokenizer == "gpt2":
        tokenizer = build_tokenizer(cfg, [], data_dir=data_dir)
    trains = [cfg.train_split] if tokenizer is None else []
    files = source_files(cfg.source, [*splits, *trains], data_dir=data_dir)
    fingerprints = {split: _fingerprint(paths) for split, paths in files.items()}
    identity = {"format": FORMAT, "source": _source_id(cfg.source),
                "val_fraction": cfg.val_fraction, "text_field": cfg.text_field}
    root = cache_dir(cache)
    docs: dict[str, list[str]] = {}
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
        docs = _load(cfg, [cfg.train_split], data_dir)
        if progress:
            print(f"training a {cfg.tokenizer} tokenizer on {cfg.source} [{cfg.train_split}]",
                  file=sys.stderr)
        tokenizer = build_tokenizer(cfg, docs[cfg.train_split], data_dir=data_dir)
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
        docs.update(_load(cfg, [s for s in todo if s not in docs], data_dir))
        for split in todo:
            if progress:
                print(f"tokenizing {cfg.source} [{split}]", file=sys.stderr)
            file = f"{split}.bin"
            tmp = folder / f".{file}.tmp-{os.getpid()}"
            with open(tmp, "wb") as out:
                n = _encode_split(docs[split], tokenizer, out, np.dtype(meta["dtype"]), progress)
            os.replace(tmp, folder / file)
            meta["splits"][split] = _split_info(file, n, docs[split], fingerprints[split])
        _write_atomic(meta_path, json.dumps(meta, indent=2).encode("utf-8"))
    if link is not None and linked != key:
        _write_atomic(link, json.dumps({"key": key, "tokenizer": cfg.tokenizer}).encode())
    return PreparedData(folder, meta, tokenizer)


def _key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _load(cfg: DataConfig, splits: list[str], data_dir: str | Path | None) -> dict[str, list[str]]:
    return load_source(cfg.source, splits, data_dir=data_dir, val_fraction=cfg.val_fraction,
                       text_field=cfg.text_field)
