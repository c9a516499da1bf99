"""What several benchmarks share."""

from __future__ import annotations

from pathlib import Path

from gptkit.data.prepare import prepare
from gptkit.evaluate import score_tokens
from gptkit.run import load_run


def full_val_loss(run_dir: Path, which: str = "best") -> float:
    """Mean token loss of a run's model over its whole eval split (not training's subset)."""
    run = load_run(run_dir, which=which)
    data = prepare(run.config.data, tokenizer=run.tokenizer)
    score = score_tokens(run.model, data.tokens(run.config.data.eval_split),
                         block_size=run.config.model.block_size, batch_size=64)
    return score.nll / score.tokens
