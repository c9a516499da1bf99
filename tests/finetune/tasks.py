"""Small tasks the fine-tuning tests build themselves (no downloads)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from gptkit.config import build_config
from gptkit.finetune.eval_generate import evaluate_generation
from gptkit.finetune.records import read_records, split_records
from gptkit.run import load_run
from gptkit.train.trainer import TrainResult, train

TINY_MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 32}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def reverse_task(path: Path, n: int = 400, seed: int = 0) -> Path:
    """'reverse abc: ' -> 'cba': the answer depends on every prompt character."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcde") for _ in range(rng.randint(3, 4))) for _ in range(n)]
    return write_jsonl(path, [{"prompt": f"reverse {w}: ", "response": w[::-1]} for w in words])


def sft_config(source: Path, steps: int, **sections: dict) -> object:
    raw = {
        "model": dict(TINY_MODEL),
        "data": {"source": str(source), "format": "sft"},
        "train": {"max_steps": steps, "micro_batch_size": 16, "lr": 3e-3, "min_lr": 3e-4,
                  "warmup_steps": 20, "weight_decay": 0.0, "eval_interval": 100,
                  "log_interval": 50, "checkpoint_interval": 1000,
                  # the thresholds below were measured in fp32 (auto is bf16 on some CPUs)
                  "precision": "fp32"},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return build_config(raw)


def run_sft(source: Path, out: Path, steps: int = 300, **sections: dict) -> TrainResult:
    return train(sft_config(source, steps, **sections), out, progress=False)


def held_out_exact_match(run_dir: Path, source: Path) -> float:
    """Greedy answers to the held-out records (the last 10%), scored by exact match."""
    records = split_records(read_records(source), "val", 0.1)
    scores = evaluate_generation(load_run(run_dir), records, max_new_tokens=8)
    return scores.exact_match
