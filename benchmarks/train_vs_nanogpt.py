"""Default recipe, gptkit vs nanoGPT, end to end on this machine: wall time and val loss.

    python -m benchmarks.train_vs_nanogpt --nanogpt-dir /path/to/nanoGPT [--repeats 2]

Both train nanoGPT's CPU recipe for Tiny Shakespeare (4 layers, 4 heads, 128 wide, context
64, batch 12, 2000 steps). The two sides alternate, so drift in this machine's speed hits both
alike. nanoGPT runs unmodified from its own checkout (never copied into gptkit), with the
command line its README gives for CPUs; its data is prepared by its own prepare.py from the
Tiny Shakespeare file in gptkit's data root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import write_results
from gptkit.config import ModelConfig
from gptkit.evaluate import score_tokens
from gptkit.model import GPT

NANOGPT_CPU_ARGS = [
    "config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
    "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
    "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0",
]


def prepare_nanogpt(nanogpt: Path, data_root: Path) -> None:
    folder = nanogpt / "data" / "shakespeare_char"
    if (folder / "train.bin").exists():
        return
    shutil.copy(data_root / "tinyshakespeare" / "input.txt", folder / "input.txt")
    # prepare.py imports requests only to download input.txt, which is already in place
    stub = Path(tempfile.mkdtemp())
    (stub / "requests.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(stub)}
    subprocess.run([sys.executable, "prepare.py"], cwd=folder, env=env, check=True)


def full_val_loss_of_nanogpt(checkpoint: Path, data_root: Path) -> float:
    """Score nanoGPT's saved model on the whole val split with gptkit's evaluator.

    nanoGPT reports a 20-batch random estimate; scoring both sides' weights on the same
    full split, with the same windows, is the like-for-like comparison. Its parameter names
    are gptkit's (both follow GPT-2's), and its vocabulary is the sorted set of characters.
    """
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    args = ckpt["model_args"]
    config = ModelConfig(n_layer=args["n_layer"], n_head=args["n_head"], n_embd=args["n_embd"],
                         block_size=args["block_size"], bias=args["bias"], dropout=0.0,
                         vocab_size=args["vocab_size"])
    model = GPT(config)
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()}
    model.load_state_dict(state)
    text = (data_root / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    stoi = {ch: i for i, ch in enumerate(sorted(set(text)))}
    val = np.array([stoi[ch] for ch in text[int(len(text) * 0.9):]], dtype=np.uint16)
    torch.set_num_threads(os.cpu_count() or 1)
    score = score_tokens(model, val, block_size=config.block_size, batch_size=64)
    return score.nll / score.tokens


def run_nanogpt(nanogpt: Path, steps: int, data_root: Path) -> tuple[float, float, float]:
    args = [a if not a.startswith(("--max_iters", "--lr_decay")) else
            f"{a.split('=')[0]}={steps}" for a in NANOGPT_CPU_ARGS]
    out_dir = Path(tempfile.mkdtemp())
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "train.py", *args, f"--out_dir={out_dir}",
                           "--always_save_checkpoint=True"],
                          cwd=nanogpt, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    losses = re.findall(r"step \d+: train loss [\d.]+, val loss ([\d.]+)", done.stdout)
    full = full_val_loss_of_nanogpt(out_dir / "ckpt.pt", data_root)
    shutil.rmtree(out_dir, ignore_errors=True)
    return wall, float(losses[-1]), full


def run_gptkit(steps: int) -> tuple[float, float, float]:
    run_dir = Path(tempfile.mkdtemp()) / "run"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gptkit", "train", "--no-progress", "--out",
                    str(run_dir), "--set", f"train.max_steps={steps}"], check=True)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in records if r["kind"] == "eval"][-1]
    done = subprocess.run([sys.executable, "-m", "gptkit", "eval", str(run_dir), "--checkpoint",
                           "last", "--json"], check=True, capture_output=True, text=True)
    full = json.loads(done.stdout)["loss"]
    shutil.rmtree(run_dir.parent, ignore_errors=True)
    return wall, val, full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt-dir", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("GPTKIT_DATA_DIR", "../shared/data")))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--json", type=Path,
                        default=Path("benchmarks/results/train_vs_nanogpt.json"))
    args = parser.parse_args()
    os.environ["GPTKIT_DATA_DIR"] = str(args.data_dir.resolve())
    prepare_nanogpt(args.nanogpt_dir, args.data_dir)
    rows: list[dict[str, float | int | str]] = []
    for i in range(args.repeats):
        for side in ("gptkit", "nanogpt") if i % 2 == 0 else ("nanogpt", "gptkit"):
            wall, val, full = run_gptkit(args.steps) if side == "gptkit" else run_nanogpt(
                args.nanogpt_dir, args.steps, args.data_dir)
            rows.append({"side": side, "repeat": i, "wall_s": wall, "val_loss_reported": val,
                         "val_loss_full_split": full})
            print(f"{side:>8} run {i}: {wall:7.1f} s, val loss {val:.4f} as reported, "
                  f"{full:.4f} on the full val split", flush=True)

    def mean(side: str, key: str) -> float:
        return sum(float(r[key]) for r in rows if r["side"] == side) / args.repeats

    summary = {
        "gptkit_wall_s": mean("gptkit", "wall_s"),
        "nanogpt_wall_s": mean("nanogpt", "wall_s"),
        "gptkit_val_loss_reported": mean("gptkit", "val_loss_reported"),
        "nanogpt_val_loss_reported": mean("nanogpt", "val_loss_reported"),
        "gptkit_val_loss_full_split": mean("gptkit", "val_loss_full_split"),
        "nanogpt_val_loss_full_split": mean("nanogpt", "val_loss_full_split"),
    }
    summary["wall_ratio_gptkit_over_nanogpt"] = summary["gptkit_wall_s"] / summary["nanogpt_wall_s"]
    print(json.dumps(summary, indent=2))
    write_results(args.json, {"runs": rows, "summary": summary})


if __name__ == "__main__":
    main()
