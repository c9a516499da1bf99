"""Does a teacher help? A small student trained on Tiny Shakespeare with and without one.

    python -m benchmarks.distill_shakespeare [--teacher runs/shakespeare-char] [--seeds 1337 1]

The teacher is the default recipe (trained here first unless --teacher names a run). Each
student is the `shakespeare-char-student` recipe, the same steps, data order and seed with
and without `distill.teacher`; both are scored on the whole val split by `gptkit eval`'s
evaluator, from their last checkpoint (same number of steps each).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.common import full_val_loss, made_by, write_results
from gptkit.config import load_config
from gptkit.train.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, help="a trained shakespeare-char run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1])
    parser.add_argument("--steps", type=int, help="student steps (default: the recipe's)")
    parser.add_argument("--work", type=Path, help="where runs go (default: a temp folder)")
    parser.add_argument("--json", type=Path,
                        default=Path("benchmarks/results/distill_shakespeare.json"))
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="gptkit-distill-"))
    teacher = args.teacher
    if teacher is None:
        teacher = work / "teacher"
        train(load_config("shakespeare-char"), teacher, overwrite=True)
    results = []
    for seed in args.seeds:
        row = {"seed": seed}
        for name, extra in (("alone", []), ("distilled", [f"distill.teacher={teacher}"])):
            overrides = [f"train.seed={seed}", *extra]
            if args.steps:
                overrides.append(f"train.max_steps={args.steps}")
            cfg = load_config("shakespeare-char-student", overrides)
            out = work / f"student-{name}-{seed}"
            train(cfg, out, overwrite=True, progress=False)
            row[name] = full_val_loss(out, which="last")
        row["gain"] = row["alone"] - row["distilled"]
        results.append(row)
        print(json.dumps(row))
    teacher_loss = full_val_loss(teacher, which="last")
    mean = {k: sum(r[k] for r in results) / len(results) for k in ("alone", "distilled", "gain")}
    print(f"teacher ({teacher}): full val loss {teacher_loss:.4f}")
    print(f"student alone:      {mean['alone']:.4f} (mean of {len(results)} seeds)")
    print(f"student distilled:  {mean['distilled']:.4f}")
    print(f"distillation gain:  {mean['gain']:+.4f} nats "
          f"(better in {sum(r['gain'] > 0 for r in results)} of {len(results)} seeds)")
    write_results(args.json, {"teacher_val_loss": teacher_loss,
                              "teacher_made_by": made_by(teacher), "seeds": results,
                              "mean": mean})


if __name__ == "__main__":
    main()
