"""LoRA against full fine-tuning on one small task, from the same base model.

    python -m benchmarks.lora_vs_full [--seeds 1337 1 2] [--steps 1200] [--rank 8]

The base is a tiny char-level GPT fine-tuned (from scratch) to reverse letter strings; both
sides then learn to sort them ("sort dbca: " -> "abcd") for the same steps: all weights
(lr 1e-3) or LoRA (rank 8, alpha 16) on c_attn/c_proj/c_fc (lr 3e-3 by default, the best
of 1.5e-3, 3e-3 and 1e-2 tried on seed 1337: adapters start at zero and need a larger step).
Held-out exact match (greedy) and response-token accuracy are printed.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_results
from gptkit.config import build_config
from gptkit.finetune.eval_generate import evaluate_generation
from gptkit.finetune.freeze import count_parameters
from gptkit.finetune.records import read_records, split_records
from gptkit.run import load_run
from gptkit.train.trainer import Trainer

MODEL = {"n_layer": 2, "n_head": 4, "n_embd": 128, "block_size": 32}


def write_task(path: Path, kind: str, n: int = 600, seed: int = 0) -> Path:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6)))
        answer = word[::-1] if kind == "reverse" else "".join(sorted(word))
        lines.append(json.dumps({"prompt": f"{kind} {word}: ", "response": answer}))
    path.write_text("\n".join(lines) + "\n")
    return path


def finetune(source: Path, out: Path, steps: int, seed: int, **sections: dict) -> dict:
    raw: dict = {
        "model": dict(MODEL),
        "data": {"source": str(source), "format": "sft"},
        "train": {"max_steps": steps, "micro_batch_size": 16, "lr": 1e-3, "min_lr": 1e-4,
                  "warmup_steps": 30, "weight_decay": 0.0, "eval_interval": 100,
                  "checkpoint_interval": 10_000, "seed": seed},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    trainer = Trainer(build_config(raw), out, overwrite=True, progress=False)
    trainable, total = count_parameters(trainer.model)
    started = time.perf_counter()
    result = trainer.fit()
    records = split_records(read_records(source), "val", 0.1)
    scores = evaluate_generation(load_run(out), records, max_new_tokens=8)
    return {"exact_match": scores.exact_match,
            "token_accuracy": result.last_eval["val_token_accuracy"],
            "trainable": trainable, "total": total,
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lora-lr", type=float, default=3e-3)
    parser.add_argument("--base-steps", type=int, default=600,
                        help="steps of the base model on the reverse task")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/lora_vs_full.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gptkit-lora-"))
    base_task = write_task(work / "reverse.jsonl", "reverse")
    target = write_task(work / "sort.jsonl", "sort", seed=1)
    base = work / "base"
    print("base (reverse):", json.dumps(finetune(base_task, base, args.base_steps, 1337)))
    rows = []
    for seed in args.seeds:
        init = {"init_from": str(base), "seed": seed}
        full = finetune(target, work / f"full-{seed}", args.steps, seed, train=init)
        low = finetune(target, work / f"lora-{seed}", args.steps, seed,
                       train={**init, "lr": args.lora_lr, "min_lr": args.lora_lr / 10},
                       finetune={"lora_r": args.rank, "lora_alpha": 2 * args.rank})
        rows.append((full, low))
        print(json.dumps({"seed": seed, "full": full, "lora": low}))
    for name, i in (("full", 0), ("lora", 1)):
        em = sum(r[i]["exact_match"] for r in rows) / len(rows)
        acc = sum(r[i]["token_accuracy"] for r in rows) / len(rows)
        params = rows[0][i]["trainable"]
        print(f"{name:>5}: exact match {em:.3f}, token accuracy {acc:.3f}, "
              f"trainable {params:,} of {rows[0][i]['total']:,} parameters")
    write_results(args.json, {"steps": args.steps, "base_steps": args.base_steps,
                              "rank": args.rank, "lora_lr": args.lora_lr,
                              "seeds": [{"seed": s, "full": f, "lora": lo}
                                        for s, (f, lo) in zip(args.seeds, rows, strict=True)]})


if __name__ == "__main__":
    main()
