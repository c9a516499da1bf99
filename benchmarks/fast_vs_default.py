"""More quality per step: `shakespeare-char-fast` against the default recipe, same machine.

    python -m benchmarks.fast_vs_default [--repeats 3] [--work DIR]

Runs `gptkit train --recipe shakespeare-char` and `--recipe shakespeare-char-fast`
alternately (so drifts in the machine's speed hit both alike), times each whole command, and
scores each run's best model on the whole val split with `gptkit eval`'s evaluator. The fast
recipe should take no longer and reach a clearly lower loss.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import full_val_loss, write_results

RECIPES = ("shakespeare-char", "shakespeare-char-fast")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, help="where runs go (default: a temp folder)")
    parser.add_argument("--steps", type=int,
                        help="train.max_steps of both (default: each recipe's own)")
    parser.add_argument("--json", type=Path,
                        default=Path("benchmarks/results/fast_vs_default.json"))
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="gptkit-fast-"))
    results: dict[str, list[tuple[float, float]]] = {r: [] for r in RECIPES}
    steps = ["--set", f"train.max_steps={args.steps}"] if args.steps else []
    for i in range(args.repeats):
        for recipe in RECIPES:
            out = work / f"{recipe}-{i}"
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "gptkit", "train", "--recipe", recipe,
                            "--out", str(out), "--overwrite", *steps], check=True,
                           stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - started
            loss = full_val_loss(out)
            results[recipe].append((wall, loss))
            print(json.dumps({"recipe": recipe, "repeat": i, "wall_s": round(wall, 1),
                              "val_loss": round(loss, 4)}), flush=True)
    print(f"{'recipe':<24} {'wall time (mean)':>17} {'val loss, full split (mean)':>28}")
    for recipe, rows in results.items():
        print(f"{recipe:<24} {statistics.mean(w for w, _ in rows):>15.1f} s "
              f"{statistics.mean(v for _, v in rows):>28.4f}")
    ratio = (statistics.mean(w for w, _ in results[RECIPES[1]])
             / statistics.mean(w for w, _ in results[RECIPES[0]]))
    print(f"wall-time ratio fast / default: {ratio:.2f}")
    write_results(args.json, {"steps": args.steps, "runs": {
        recipe: [{"wall_s": w, "val_loss": v} for w, v in rows]
        for recipe, rows in results.items()}, "wall_time_ratio_fast_over_default": ratio})


if __name__ == "__main__":
    main()
