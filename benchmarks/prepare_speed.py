"""`prepare` throughput in MB/s on WikiText-2-sized text, gptkit vs the loop a user writes.

    python -m benchmarks.prepare_speed [--megabytes 10.8] [--repeats 3]

The text is WikiText-2's validation and test splits from the data root, repeated up to the
size of WikiText-2's training split (10.8 MB; the train split itself is not kept offline).
Two tokenizers:
- char: gptkit `prepare` (vocabulary, encoding, token file) against nanoGPT's approach for
  Tiny Shakespeare, written out here: a Python dict from characters to ids over the text.
- bpe: a byte-level BPE of 8,192 tokens (trained once, not timed): gptkit `prepare` against
  the Hugging Face `tokenizers` loop of `run_clm.py`-style scripts: `encode_batch` of the
  lines, concatenated into one array and written.
Each figure is MB of UTF-8 text per second, median over `--repeats` runs, sides alternating.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import write_results
from gptkit.config import DataConfig
from gptkit.data.prepare import prepare
from gptkit.tokenizers import Tokenizer


def corpus(data_dir: Path, megabytes: float, out: Path) -> Path:
    """WikiText-2 valid + test, repeated to `megabytes` of UTF-8, as one text file."""
    parts = [(data_dir / "wikitext-2" / f"wiki.{s}.tokens").read_text(encoding="utf-8")
             for s in ("valid", "test")]
    text = "".join(parts)
    size = int(megabytes * 1e6)
    data = text.encode("utf-8")
    data = (data * (size // len(data) + 1))[:size]
    out.write_bytes(data[: data.rfind(b"\n") + 1])  # whole lines only
    return out


def baseline_char(text_file: Path, out: Path) -> None:
    text = text_file.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    n = len(text)
    for name, part in (("train", text[: int(n * 0.9)]), ("val", text[int(n * 0.9):])):
        np.array([stoi[c] for c in part], dtype=np.uint16).tofile(out / f"{name}.bin")


def baseline_bpe(tokenizer: Tokenizer, text_file: Path, out: Path) -> None:
    lines = text_file.read_text(encoding="utf-8").splitlines(keepends=True)
    n = len(lines)
    for name, part in (("train", lines[: int(n * 0.9)]), ("val", lines[int(n * 0.9):])):
        ids = tokenizer.backend.encode_batch(part)
        np.concatenate([np.asarray(e.ids, dtype=np.uint16) for e in ids]).tofile(
            out / f"{name}.bin")


def gptkit_prepare(cfg: DataConfig, tokenizer: Tokenizer | None) -> Callable[[Path], None]:
    def run(out: Path) -> None:
        prepare(cfg, splits=["train", "val"], cache=out, tokenizer=tokenizer)
    return run


def bench(data_dir: Path, megabytes: float, repeats: int, workers: list[int]) -> dict[str, Any]:
    """{tokenizer: {side: {"mb_per_s": {median, min, max}}, ratios}} for char and bpe."""
    work = Path(tempfile.mkdtemp(prefix="prepare-speed-"))
    text_file = corpus(data_dir, megabytes, work / "corpus.txt")
    size_mb = text_file.stat().st_size / 1e6
    bpe = Tokenizer.train_bpe([text_file.read_text(encoding="utf-8")], 8192)
    results: dict[str, Any] = {"megabytes": size_mb, "cpus": os.cpu_count()}
    for kind in ("char", "bpe"):
        cfg = DataConfig(source=str(text_file), tokenizer=kind)
        sides: dict[str, Callable[[Path], None]] = {}
        for w in workers:
            sides[f"gptkit (workers {w})"] = gptkit_prepare(
                cfg.updated(workers=w), bpe if kind == "bpe" else None)
        sides["baseline"] = ((lambda out: baseline_char(text_file, out)) if kind == "char"
                             else (lambda out: baseline_bpe(bpe, text_file, out)))
        times: dict[str, list[float]] = {side: [] for side in sides}
        for i in range(repeats):
            for side in (list(sides) if i % 2 == 0 else list(reversed(sides))):
                out = Path(tempfile.mkdtemp(dir=work))
                start = time.perf_counter()
                sides[side](out)
                times[side].append(time.perf_counter() - start)
        figures = {side: {"mb_per_s": {"median": size_mb / statistics.median(t),
                                       "min": size_mb / max(t), "max": size_mb / min(t)}}
                   for side, t in times.items()}
        base = figures["baseline"]["mb_per_s"]["median"]
        for f in figures.values():
            f["ratio_over_baseline"] = f["mb_per_s"]["median"] / base
        results[kind] = figures
    return results


def report(results: dict[str, Any]) -> None:
    print(f"prepare: {results['megabytes']:.1f} MB of WikiText-2 text")
    for kind in ("char", "bpe"):
        for side, f in results[kind].items():
            m = f["mb_per_s"]
            print(f"  {kind:<5} {side:<20} {m['median']:7.2f} MB/s ({m['min']:.2f}-{m['max']:.2f})"
                  f"  x{f['ratio_over_baseline']:.2f} the baseline", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=10.8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("GPTKIT_DATA_DIR", "../shared/data")))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/prepare.json"))
    args = parser.parse_args()
    if not (args.data_dir / "wikitext-2" / "wiki.valid.tokens").is_file():
        sys.exit(f"WikiText-2 not found in {args.data_dir}; pass --data-dir")
    results = bench(args.data_dir, args.megabytes, args.repeats, args.workers)
    report(results)
    write_results(args.json, results)


if __name__ == "__main__":
    main()
