"""Sharded token data: batch reads against one memmap, and streaming `prepare`'s memory and speed.

    python -m benchmarks.data_shards [--megabytes 50 200] [--bpe-megabytes 20] [--repeats 5]

1. Gather: `RandomWindows.step_batches` reading from one `np.memmap` (how a split was read
   before shards) against `TokenShards` of 1, 16 and 256 shards holding the same 2^26 ids;
   microseconds per micro-batch, median over repeats, sides alternating.
2. Prepare: a corpus of WikiText-2 validation text repeated to each size, prepared in a fresh
   process (char tokenizer trained from the stream; a given byte-level BPE of 8,192 tokens on
   the `--bpe-megabytes` corpus, once, as it is slow): peak resident memory of that process
   (its own; with workers, each pool process has its own tokenizer and batches) against the
   corpus size, and MB/s with `data.workers` 1 and 2 (alternating).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import write_results
from gptkit.data.loader import RandomWindows
from gptkit.data.shards import ShardWriter, TokenShards

# peak RSS from /proc (VmHWM): ru_maxrss would carry the parent's peak over the exec
CHILD = """
import json, sys, time
from gptkit.config import DataConfig
from gptkit.data.prepare import prepare
from gptkit.tokenizers import Tokenizer
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
source, kind, workers, cache, bpe = sys.argv[1:6]
tokenizer = Tokenizer.load(bpe) if kind == "bpe" else None
before = hwm()
start = time.perf_counter()
data = prepare(DataConfig(source=source, tokenizer="char", shard_tokens=1 << 24,
                          workers=int(workers)), tokenizer=tokenizer, cache=cache)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_before_mib": before, "rss_peak_mib": hwm(),
                  "shards": sum(len(s["shards"]) for s in data.meta["splits"].values())}))
"""


def bench_gather(repeats: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="gptkit-shards-"))
    n = 1 << 26
    ids = np.random.default_rng(0).integers(0, 50257, n).astype(np.uint16)
    ids.tofile(folder / "one.bin")
    readers: dict[str, Any] = {"one memmap": np.memmap(folder / "one.bin", np.uint16, mode="r")}
    for count in (1, 16, 256):
        sub = folder / str(count)
        sub.mkdir()
        with ShardWriter(sub, "train", np.dtype(np.uint16), n // count) as writer:
            writer.write(ids)
            shards = writer.close()
        readers[f"{count} shards"] = TokenShards([sub / s["file"] for s in shards],
                                                 [s["tokens"] for s in shards], ids.dtype)
    out: dict[str, Any] = {}
    for micro, block in ((8, 1024), (64, 1024), (12, 256)):
        times: dict[str, list[float]] = {name: [] for name in readers}
        loaders = {name: RandomWindows(r, block, micro, 4, 1234) for name, r in readers.items()}
        for loader in loaders.values():
            for step in range(10):
                loader.step_batches(step)
        for _ in range(repeats):
            for name, loader in loaders.items():
                start = time.perf_counter()
                for step in range(50):
                    loader.step_batches(step)
                times[name].append((time.perf_counter() - start) / 200 * 1e6)
        key = f"micro {micro} x context {block}"
        out[key] = {name: statistics.median(t) for name, t in times.items()}
        print(key + ": " + ", ".join(f"{name} {t:.0f} us" for name, t in out[key].items()))
    return out


def corpus(megabytes: float, folder: Path, data_dir: Path) -> Path:
    path = folder / f"corpus-{megabytes:g}MB.txt"
    text = (data_dir / "wikitext-2" / "wiki.valid.tokens").read_text(encoding="utf-8")
    with open(path, "w", encoding="utf-8") as out:
        written = 0
        while written < megabytes * 2**20:
            out.write(text)
            written += len(text.encode("utf-8"))
    return path


def prepare_once(source: Path, kind: str, workers: int, bpe: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as cache:
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(source), kind, str(workers), cache, str(bpe)],
            capture_output=True, text=True, check=True)
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def bench_prepare(sizes: list[float], bpe_sizes: list[float], repeats: int, data_dir: Path
                  ) -> dict[str, Any]:
    from gptkit.tokenizers import Tokenizer

    folder = Path(tempfile.mkdtemp(prefix="gptkit-prepare-"))
    bpe = folder / "bpe.json"
    text = (data_dir / "wikitext-2" / "wiki.test.tokens").read_text(encoding="utf-8")
    Tokenizer.train_bpe([text], 8192).save(bpe)
    out: dict[str, Any] = {}
    jobs = [(mb, "char") for mb in sizes] + [(mb, "bpe") for mb in bpe_sizes]
    for megabytes in sorted(set(sizes) | set(bpe_sizes)):
        source = corpus(megabytes, folder, data_dir)
        size = source.stat().st_size / 2**20
        for kind in [k for mb, k in jobs if mb == megabytes]:
            runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
            for _ in range(repeats if kind == "char" else 1):
                for workers in (1, 2):
                    runs[workers].append(prepare_once(source, kind, workers, bpe))
            row = {}
            for workers, results in runs.items():
                row[f"workers {workers}"] = {
                    "MB/s": statistics.median(size / r["seconds"] for r in results),
                    "rss_peak_mib": max(r["rss_peak_mib"] for r in results),
                    "rss_before_mib": min(r["rss_before_mib"] for r in results),
                    "shards": results[0]["shards"],
                }
            key = f"{size:.0f} MB {kind}"
            out[key] = row
            print(key + ": " + ", ".join(
                f"{w}: {r['MB/s']:.1f} MB/s, peak RSS {r['rss_peak_mib']:.0f} MiB (start "
                f"{r['rss_before_mib']:.0f}), {r['shards']} shards" for w, r in row.items()))
        source.unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, nargs="+", default=[50, 200])
    parser.add_argument("--bpe-megabytes", type=float, nargs="*", default=[20])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("GPTKIT_DATA_DIR", "../shared/data")))
    parser.add_argument("--skip", nargs="*", default=[], choices=["gather", "prepare"])
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/data_shards.json"))
    args = parser.parse_args()
    results: dict[str, Any] = {"cpus": os.cpu_count()}
    if "gather" not in args.skip:
        results["gather_us_per_micro_batch"] = bench_gather(args.repeats)
    if "prepare" not in args.skip:
        results["prepare"] = bench_prepare(args.megabytes, args.bpe_megabytes, args.repeats,
                                           args.data_dir)
    write_results(args.json, results)


if __name__ == "__main__":
    main()
