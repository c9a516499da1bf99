"""What several benchmarks share."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any


def full_val_loss(run_dir: Path, which: str = "best") -> float:
    """Mean token loss of a run's model over its whole eval split (not training's subset)."""
    # imported here: serve_load's client imports this module for write_results, without torch
    from gptkit.data.prepare import prepare
    from gptkit.device import resolve_precision
    from gptkit.evaluate import score_tokens
    from gptkit.run import load_run

    run = load_run(run_dir, which=which)
    data = prepare(run.config.data, tokenizer=run.tokenizer)
    # scored as training and `gptkit eval` score (gptkit.device): the run's own precision
    precision = resolve_precision(run.config.train.precision, run.device)
    score = score_tokens(run.model, data.tokens(run.config.data.eval_split),
                         block_size=run.config.model.block_size, batch_size=64,
                         precision=precision)
    return score.nll / score.tokens


def write_results(path: Path, results: Any, default: Callable[[Any], Any] | None = None) -> None:
    """Write a benchmark's results to `path` (its --json) as indented JSON, creating the folder;
    `default` converts what JSON cannot hold, as in json.dumps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=default))


def mean_spread(values: list[float], signed: bool = False) -> str:
    """"mean ± sample standard deviation"; with one value (--seeds 1) there is no spread,
    and the text says so instead of failing (statistics.stdev needs two values)."""
    mean = f"{statistics.mean(values):+.3f}" if signed else f"{statistics.mean(values):.3f}"
    if len(values) < 2:
        return f"{mean} ± n/a (1 seed)"
    return f"{mean} ± {statistics.stdev(values):.3f}"
