"""Does `data.augment` help a classifier trained on a few dozen examples? Held-out accuracy.

    python -m benchmarks.augment_classify [--train 64] [--seeds 5] [--steps 300]

The task is built here: each text is 5-9 neutral words with one sentiment keyword (8
positive, 8 negative) among them. With 64 training texts, chance co-occurrences of neutral
words and labels are easy to memorise instead of the keywords; deleting and swapping words,
or replacing tokens, breaks those co-occurrences up. Every setting trains the same small
GPT (bpe tokenizer trained on the training texts, 2 layers, 64 wide, last-token pooling) from
scratch with the same seeds, and is scored on the same 400 held-out texts, so the
differences are paired by seed.
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import mean_spread, write_results
from gptkit.config import build_config
from gptkit.train.objectives.classify import finetune_classifier

POSITIVE = ["good", "great", "love", "excellent", "wonderful", "superb", "lovely", "brilliant"]
NEGATIVE = ["bad", "awful", "hate", "terrible", "boring", "dreadful", "poor", "horrible"]
NEUTRAL = ["the", "movie", "plot", "was", "actors", "film", "we", "saw", "it", "yesterday",
           "with", "friends", "and", "popcorn", "music", "ending", "story", "quite", "really",
           "scenes", "cinema", "sunday", "tickets", "my", "sister", "long", "after", "work",
           "seats", "screen", "evening", "director", "cast", "sequel", "trailer", "night"]

SETTINGS: dict[str, list[str]] = {
    "none": [],
    "word_delete+word_swap": ["word_delete=0.1", "word_swap=0.1"],
    "token_noise+token_dropout": ["token_noise=0.1", "token_dropout=0.1"],
    "all four": ["word_delete=0.1", "word_swap=0.1", "token_noise=0.1", "token_dropout=0.1"],
}


def make_task(path: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    """Balanced rows; the first n_train train, the last n_val are held out."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_train + n_val):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(NEUTRAL, rng.randint(5, 9))
        keyword = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
        words.insert(rng.randrange(len(words) + 1), keyword)
        rows.append({"text": " ".join(words), "label": label})
    train, val = rows[:n_train], rows[n_train:]
    rng.shuffle(train)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(train + val)
    return path


def run_one(source: Path, out: Path, augment: list[str], seed: int, steps: int,
            val_fraction: float) -> dict[str, Any]:
    cfg = build_config({
        "name": "augment-bench",
        "model": {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 32, "dropout": 0.0},
        "data": {"source": str(source), "tokenizer": "bpe", "vocab_size": 400,
                 "val_fraction": val_fraction, "augment": augment},
        "train": {"max_steps": steps, "micro_batch_size": 16, "lr": 2e-3, "min_lr": 2e-4,
                  "warmup_steps": 20, "weight_decay": 0.01, "eval_interval": steps,
                  "log_interval": 50, "seed": seed},
        "classify": {"task": "sequence", "pooling": "last"},
    })
    # scored at the end only (eval_interval = steps), so no setting gets to pick its best step
    result = finetune_classifier(cfg, out, overwrite=True, progress=False)
    return {"accuracy": result.metrics["accuracy"], "macro_f1": result.metrics["macro_f1"]}


def summarize(scores: dict[str, list[dict[str, float]]]) -> tuple[dict[str, Any], list[str]]:
    """Per setting: its accuracies and macro-F1s over the seeds against `none`'s, as JSON
    and as printed lines (any number of seeds, one included)."""
    base = scores["none"]
    summary: dict[str, Any] = {}
    lines = []
    for name, runs in scores.items():
        accs = [r["accuracy"] for r in runs]
        f1s = [r["macro_f1"] for r in runs]
        diffs = [r["accuracy"] - b["accuracy"] for r, b in zip(runs, base, strict=True)]
        summary[name] = {
            "augment": SETTINGS[name], "accuracy": accs, "macro_f1": f1s,
            "mean_accuracy": statistics.mean(accs), "mean_macro_f1": statistics.mean(f1s),
            "mean_accuracy_difference_vs_none": statistics.mean(diffs),
            "seeds_better_than_none": sum(d > 0 for d in diffs),
        }
        lines.append(f"{name:<26} {mean_spread(accs):>17} {mean_spread(f1s):>17}"
                     f"     {mean_spread(diffs, signed=True)} "
                     f"({summary[name]['seeds_better_than_none']}/{len(diffs)} seeds better)")
    return summary, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=64, help="training texts (default 64)")
    parser.add_argument("--val", type=int, default=400, help="held-out texts (default 400)")
    parser.add_argument("--seeds", type=int, default=5, help="training seeds per setting")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of 16 texts")
    parser.add_argument("--json", type=Path,
                        default=Path("benchmarks/results/augment_classify.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gptkit-augment-bench-"))
    source = make_task(work / "task.csv", args.train, args.val)
    val_fraction = args.val / (args.train + args.val)
    seeds = list(range(1, args.seeds + 1))
    scores: dict[str, list[dict[str, Any]]] = {}
    started = time.perf_counter()
    for name, augment in SETTINGS.items():
        scores[name] = [run_one(source, work / "run", augment, seed, args.steps, val_fraction)
                        for seed in seeds]
        accs = [s["accuracy"] for s in scores[name]]
        print(f"{name:<26} accuracy per seed {' '.join(f'{a:.3f}' for a in accs)}", flush=True)

    print(f"\n{args.train} training texts, {args.val} held out, {args.steps} steps, seeds "
          f"{seeds} ({time.perf_counter() - started:.0f}s)")
    print(f"{'setting':<26} {'accuracy':>17} {'macro-F1':>17} {'Δ accuracy vs none':>24}")
    summary, lines = summarize(scores)
    print("\n".join(lines))
    write_results(args.json, {"train": args.train, "val": args.val, "steps": args.steps,
                              "seeds": seeds, "settings": summary})


if __name__ == "__main__":
    main()
