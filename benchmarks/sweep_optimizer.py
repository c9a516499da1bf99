"""A sweep of learning rate, warmup and weight decay on the default recipe, then its best
settings against the default ones on two seeds, all at the same fixed step budget.

    python -m benchmarks.sweep_optimizer [--trials 20] [--steps 1000] [--seeds 1 2]
                                         [--jobs 1] [--work DIR] [--images docs/images]

1. `gptkit sweep --recipe shakespeare-char --space optimizer --trials T --seed 0 --set
   train.max_steps=S` (each trial S steps at the recipe's own train.seed; median pruning);
2. for each seed K (not the sweep's train.seed, so the comparison is not the sweep's own
   runs): `gptkit train --recipe shakespeare-char --set train.max_steps=S --set
   train.seed=K` and `gptkit train --recipe SWEEP/best.yaml --set train.seed=K`;
3. each run's best model scored on the whole val split (`gptkit eval`'s evaluator).
--images copies the sweep's three PNGs there as sweep-history.png, sweep-importances.png and
sweep-parallel.png (the pictures of docs/training.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import full_val_loss, mean_spread, write_results

RECIPE = "shakespeare-char"


def gptkit(*argv: str) -> float:
    """Run a gptkit command (its output to this one's); its wall time in seconds."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gptkit", *argv, "--no-progress"], check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--steps", type=int, default=1000, help="train.max_steps of every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="gptkit sweep --jobs")
    parser.add_argument("--work", type=Path, help="where runs go (default: a temp folder)")
    parser.add_argument("--images", type=Path, help="copy the sweep's PNGs into this folder")
    parser.add_argument("--json", type=Path,
                        default=Path("benchmarks/results/sweep_optimizer.json"))
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="gptkit-sweep-"))
    budget = f"train.max_steps={args.steps}"
    sweep = work / "sweep"
    sweep_s = gptkit("sweep", "--recipe", RECIPE, "--space", "optimizer", "--trials",
                     str(args.trials), "--out", str(sweep), "--seed", "0", "--jobs",
                     str(args.jobs), "--set", budget)
    summary = json.loads((sweep / "sweep.json").read_text())
    states = [t["state"] for t in summary["trials"]]
    losses: dict[str, list[float]] = {"default": [], "best": []}
    for seed in args.seeds:
        for side, recipe in (("default", RECIPE), ("best", str(sweep / "best.yaml"))):
            out = work / f"{side}-seed{seed}"
            gptkit("train", "--recipe", recipe, "--out", str(out), "--overwrite", "--set",
                   budget, "--set", f"train.seed={seed}")
            losses[side].append(full_val_loss(out))
            print(json.dumps({"side": side, "seed": seed, "val_loss": round(losses[side][-1], 4)}),
                  flush=True)
    gains = [d - b for d, b in zip(losses["default"], losses["best"], strict=True)]
    print(f"default: {mean_spread(losses['default'])}   best: {mean_spread(losses['best'])}   "
          f"default - best: {mean_spread(gains, signed=True)} (full val split, {args.steps} "
          f"steps, seeds {args.seeds})")
    if args.images:
        for name in ("history", "importances", "parallel"):
            if (sweep / f"{name}.png").is_file():
                shutil.copy(sweep / f"{name}.png", args.images / f"sweep-{name}.png")
    write_results(args.json, {
        "steps": args.steps, "trials": args.trials,
        "sweep": {"wall_s": sweep_s, "complete": states.count("complete"),
                  "pruned": states.count("pruned"), "failed": states.count("fail"),
                  "best_params": summary["best"]["params"],
                  "best_trial_val_loss": summary["best"]["value"]},
        "seeds": args.seeds, "val_loss_full_split": losses,
        "default_minus_best": gains,
    })


if __name__ == "__main__":
    main()
