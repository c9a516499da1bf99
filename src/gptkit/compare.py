"""`gptkit compare`: which settings differ between runs, and how each run ended.

A comparison holds exactly the configuration keys whose values differ (dotted, e.g.
`train.lr`; lists compare as whole values) and, per run, its final metrics: best and last
validation loss, perplexity, steps, tokens, wall time and throughput. `format_table` prints
it with runs as columns; `Comparison.to_dict` is the `--json` form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptkit.config import build_config, read_raw_config
from gptkit.errors import GptkitError
from gptkit.rundir import RunDir
from gptkit.viz.curves import RunMetrics, human_count, read_metrics, run_labels

# Final metrics in display order: (key, row label). Rows no run has are left out.
METRICS: tuple[tuple[str, str], ...] = (
    ("best_val_loss", "best val loss"),
    ("best_step", "best step"),
    ("val_loss", "final val loss"),
    ("val_perplexity", "final val perplexity"),
    ("val_bits_per_byte", "final val bits/byte"),
    ("val_word_perplexity", "final val word perplexity"),
    ("train_loss", "final train loss"),
    ("steps", "steps"),
    ("tokens_seen", "tokens seen"),
    ("wall_time_s", "wall time"),
    ("tokens_per_s", "tokens/s (last)"),
)
# Eval-record fields that are bookkeeping rather than results.
_NOT_RESULTS = {"step", "kind", "tokens", "val_tokens", "examples", "loss"}


class _Missing:
    """A setting one run's config does not have (shown "-"; null in JSON)."""

    def __repr__(self) -> str:
        return "-"


MISSING: Any = _Missing()


@dataclass
class Comparison:
    """Runs side by side: the settings that differ and the final metrics.

    `differences` and `metrics` map a key to one value per run, in the order of `runs`:
    `MISSING` where a run's config lacks the key, None where it did not log the metric.
    """

    runs: list[str]
    paths: list[Path]
    differences: dict[str, list[Any]]
    metrics: dict[str, list[Any]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; a missing setting becomes null."""
        differences = {key: [None if v is MISSING else v for v in values]
                       for key, values in self.differences.items()}
        return {"runs": self.runs, "paths": [str(p) for p in self.paths],
                "differences": differences, "metrics": self.metrics}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-3}} -> {"train.lr": 1e-3}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def run_settings(run_dir: Path) -> dict[str, Any]:
    """A run's resolved settings, flattened; defaults fill keys an older run did not save."""
    path = RunDir(run_dir).config_file
    if not path.is_file():
        raise GptkitError(f"{run_dir} is not a gptkit run (no config.yaml); point at a run "
                          "directory written by `gptkit train`")
    raw = read_raw_config(path)  # a damaged file is an error here
    try:
        return flatten(build_config(raw).model_dump())
    except GptkitError:
        # a config this version no longer accepts (renamed keys): compare what it says
        return flatten(raw)


def differing_keys(settings: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Exactly the keys whose values are not all equal (a key some runs lack differs)."""
    keys: list[str] = []
    for flat in settings:
        keys += [k for k in flat if k not in keys]
    out: dict[str, list[Any]] = {}
    for key in keys:
        values = [flat.get(key, MISSING) for flat in settings]
        if any(not _same(v, values[0]) for v in values[1:]):
            out[key] = values
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same kind: True and 1 differ, 1 and 1.0 do not."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def final_metrics(run: RunMetrics) -> dict[str, Any]:
    """How a run ended: best and last evaluation, steps, tokens, time and throughput."""
    out: dict[str, Any] = {}
    best, last = run.best_eval(), run.last_eval()
    if best is not None:
        out["best_val_loss"] = best.get("val_loss", best.get("loss"))
        out["best_step"] = best["step"]
    if last is not None:
        if "val_loss" in last or "loss" in last:
            out["val_loss"] = last.get("val_loss", last.get("loss"))
        for key, value in last.items():
            if key not in _NOT_RESULTS and key not in out and _is_number(value):
                out[key] = value
    out["steps"] = run.steps()
    out["tokens_seen"] = run.tokens_seen()
    out["wall_time_s"] = run.wall_time_s
    train = run.last_train()
    out["tokens_per_s"] = train.get("tokens_per_s") if train else None
    return {k: v for k, v in out.items() if v is not None}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def compare_runs(run_dirs: Sequence[str | Path],
                 labels: Sequence[str] | None = None) -> Comparison:
    """Compare two or more runs: their differing settings and their final metrics.

    A run without metrics (imported, or not trained yet) still shows its settings; its
    metrics are missing."""
    paths = [Path(p) for p in run_dirs]
    if len(paths) < 2:
        raise GptkitError("compare needs at least two runs, e.g. gptkit compare runs/a runs/b")
    if labels is not None and len(labels) != len(paths):
        raise GptkitError(f"got {len(labels)} labels for {len(paths)} runs")
    for path in paths:
        if not path.is_dir():
            raise GptkitError(f"run directory {path} does not exist; train one with "
                              f"`gptkit train --out {path}`")
    settings = [run_settings(p) for p in paths]
    finals = [final_metrics(read_metrics(p, required=False)) for p in paths]
    known = [key for key, _ in METRICS]
    extra: list[str] = []
    for final in finals:
        extra += [k for k in final if k not in known and k not in extra]
    metrics = {key: [final.get(key) for final in finals]
               for key in [*known, *extra] if any(key in final for final in finals)}
    return Comparison(runs=list(labels) if labels is not None else run_labels(paths),
                      paths=paths, differences=differing_keys(settings), metrics=metrics)


def format_setting(value: Any) -> str:
    """A setting as one would write it in --set: true, null, [a, b], 0.0003."""
    if value is MISSING:
        return "-"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(format_setting(v) for v in value) + "]"
    return repr(value) if isinstance(value, float) else str(value)


def format_metric(key: str, value: Any) -> str:
    """A metric, rounded for reading: 4 decimals for losses, 2 for perplexities."""
    if value is None:
        return "-"
    if key == "wall_time_s":
        return format_duration(float(value))
    if key in ("steps", "best_step"):
        return f"{int(value):,}"
    if key in ("tokens_seen", "tokens_per_s"):
        return human_count(float(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.2f}" if "perplexity" in key else f"{value:.4f}"
    return str(value)


def format_duration(seconds: float) -> str:
    """12.3s, 4m 05s, 2h 03m: wall time a reader takes in at a glance."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def format_table(comparison: Comparison) -> str:
    """A text table, runs as columns: the differing settings, then the final metrics."""
    labels = dict(METRICS)
    rows: list[tuple[str, list[str]] | str] = ["settings that differ"]
    if comparison.differences:
        rows += [(f"  {key}", [format_setting(v) for v in values])
                 for key, values in comparison.differences.items()]
    else:
        rows.append(("  (none: same configuration)", ["" for _ in comparison.runs]))
    rows.append("final metrics")
    if comparison.metrics:
        rows += [(f"  {labels.get(key, 'final ' + key.replace('_', ' '))}",
                  [format_metric(key, v) for v in values])
                 for key, values in comparison.metrics.items()]
    else:
        rows.append(("  (none logged)", ["" for _ in comparison.runs]))
    header = ("", comparison.runs)
    cells = [header] + [row for row in rows if isinstance(row, tuple)]
    first = max(len(name) for name, _ in cells)
    widths = [max(len(values[i]) for _, values in cells) for i in range(len(comparison.runs))]

    def line(name: str, values: list[str]) -> str:
        return "  ".join([name.ljust(first), *(v.rjust(w) for v, w in zip(values, widths,
                                                                          strict=True))]).rstrip()

    out = [line(*header), "-" * (first + sum(w + 2 for w in widths))]
    for row in rows:
        out.append(row if isinstance(row, str) else line(*row))
    return "\n".join(out)
