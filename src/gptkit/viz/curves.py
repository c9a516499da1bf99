"""Loss and perplexity curves of one or several runs, read from their `metrics.jsonl`.

`plot_runs` overlays runs (one colour each) on two panels side by side: loss (training loss
as a thin line, validation loss with markers) and validation perplexity, with a star at each
run's best checkpoint. `write_run_plots` is what a finished run writes into `runs/X/plots/`.
matplotlib is used through its object API only (no pyplot state, no display needed), and
imported when a figure is drawn, so reading metrics (`gptkit compare`) stays quick.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptkit.errors import GptkitError
from gptkit.rundir import RunDir
from gptkit.viz.fonts import families_for

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

# Every figure has this fixed size: 1200 x 450 pixels (documented, and checked by the tests).
FIGSIZE = (12.0, 4.5)
DPI = 100
X_AXES = ("steps", "tokens")
FORMATS = (".png", ".svg", ".pdf")


@dataclass
class RunMetrics:
    """What a run logged: its train and eval records, one per step, sorted by step."""

    run_dir: Path
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    best_step: int | None = None  # the step of the saved best model (best/config.json)
    wall_time_s: float | None = None  # training time over all attempts of a resumed run

    @property
    def empty(self) -> bool:
        return not self.train and not self.evals

    def val_losses(self) -> list[tuple[dict[str, Any], float]]:
        """Eval records with their validation loss; a classifier run logs it as `loss`."""
        out = []
        for record in self.evals:
            value = record.get("val_loss", record.get("loss"))
            if isinstance(value, (int, float)) and math.isfinite(value):
                out.append((record, float(value)))
        return out

    def best_eval(self) -> dict[str, Any] | None:
        """The eval record of the best checkpoint, else the one with the lowest val loss."""
        scored = self.val_losses()
        for record, _ in scored:
            if record["step"] == self.best_step:
                return record
        return min(scored, key=lambda pair: pair[1])[0] if scored else None

    def last_eval(self) -> dict[str, Any] | None:
        return self.evals[-1] if self.evals else None

    def last_train(self) -> dict[str, Any] | None:
        return self.train[-1] if self.train else None

    def steps(self) -> int | None:
        """How many optimizer steps the logged records reach."""
        steps = [r["step"] for r in (*self.train, *self.evals)]
        return max(steps) if steps else None

    def tokens_seen(self) -> int | None:
        tokens = [r["tokens"] for r in (*self.train, *self.evals)
                  if isinstance(r.get("tokens"), (int, float))]
        return int(max(tokens)) if tokens else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _best_step(run_dir: Path) -> int | None:
    """The best model's step: best/config.json (a language model) or eval.json (a classifier).

    An imported run's best/ has no step of its own (val_loss null): no best marker then."""
    best = _read_json(RunDir(run_dir).best_info_file)
    if best is not None and best.get("val_loss") is not None:
        step = best.get("step")
        return int(step) if isinstance(step, int) else None
    kept = _read_json(RunDir(run_dir).eval_file)
    if kept is not None and isinstance(kept.get("step"), int):
        return int(kept["step"])
    return None


def read_metrics(run_dir: str | Path, *, required: bool = True) -> RunMetrics:
    """A run's records from metrics.jsonl, robust to resumed and interrupted runs.

    A step logged twice (a resumed run repeats what an interrupted attempt logged) keeps its
    last record; a line cut short by a crash is skipped. `required=False` returns empty
    metrics for a run that has none (an imported run) instead of raising.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GptkitError(f"run directory {run_dir} does not exist; train one with "
                          f"`gptkit train --out {run_dir}`")
    if not RunDir(run_dir).is_run():
        raise GptkitError(f"{run_dir} is not a gptkit run (no config.yaml); point at a run "
                          "directory written by `gptkit train`")
    path = RunDir(run_dir).metrics_file
    metrics = RunMetrics(run_dir, best_step=_best_step(run_dir))
    if not path.is_file():
        if required:
            raise GptkitError(f"{run_dir} has no metrics.jsonl (an imported run, or one not "
                              f"trained yet); train it first: gptkit train --out {run_dir}")
        return metrics
    by_kind: dict[str, dict[int, dict[str, Any]]] = {"train": {}, "eval": {}}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        kind = record.get("kind")
        if kind not in by_kind:
            continue
        by_kind[kind][record["step"]] = record
    metrics.train = [by_kind["train"][s] for s in sorted(by_kind["train"])]
    metrics.evals = [by_kind["eval"][s] for s in sorted(by_kind["eval"])]
    elapsed = metrics.train[-1].get("elapsed_s") if metrics.train else None
    if isinstance(elapsed, (int, float)):  # cumulative: a resumed run carries it on
        metrics.wall_time_s = float(elapsed)
    return metrics


def run_labels(run_dirs: Sequence[str | Path]) -> list[str]:
    """Short, distinct names for runs: the folder's name, else parent/name, else numbered."""
    paths = [Path(p) for p in run_dirs]
    labels = [p.name or str(p) for p in paths]
    if len(set(labels)) < len(labels):
        labels = [
            f"{p.resolve().parent.name}/{p.resolve().name}" if labels.count(label) > 1 else label
            for p, label in zip(paths, labels, strict=True)
        ]
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if labels.count(label) == 1 else f"{label} ({seen[label]})")
    return unique


def human_count(value: float) -> str:
    """1200 -> 1.2k, 3072000 -> 3.07M: token counts a reader takes in at a glance."""
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}" if value != int(value) else str(int(value))


def _check_out(out: Path, overwrite: bool) -> None:
    if out.suffix.lower() not in FORMATS:
        raise GptkitError(f"--out {out}: the picture's name must end in {', '.join(FORMATS)} "
                          f"(e.g. {out.with_suffix('.png').name})")
    if out.is_dir():
        raise GptkitError(f"--out {out} is a folder; name a file, e.g. {out / 'loss.png'}")
    folder = next((p for p in out.parents if p.exists()), None)  # the one the picture goes in
    if folder is not None and not folder.is_dir():
        raise GptkitError(f"--out {out}: {folder} is a file, not a folder; choose another --out")
    if out.exists() and not overwrite:
        raise GptkitError(f"{out} already exists; use --overwrite to replace it, or choose "
                          "another --out")


def figure_for_runs(
    runs: Sequence[RunMetrics],
    *,
    labels: Sequence[str],
    x: str = "steps",
    log_scale: bool = False,
) -> Figure:
    """The two-panel figure (loss, validation perplexity) of several runs overlaid.

    Returned rather than saved so that tests (and notebooks) can inspect legends and axes.
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogFormatter, MaxNLocator

    if x not in X_AXES:
        raise GptkitError(f"x axis must be steps or tokens (got {x!r})")
    if len(labels) != len(runs):
        raise GptkitError(f"got {len(labels)} labels for {len(runs)} runs; give one per run")
    key = "step" if x == "steps" else "tokens"
    for run in runs:
        if x == "tokens" and any(not isinstance(r.get("tokens"), (int, float))
                                 for r in (*run.train, *run.evals)):
            raise GptkitError(f"{run.run_dir} did not log tokens seen (a classifier run?); "
                              "plot it against steps (--x steps)")
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    loss_ax, ppl_ax = fig.subplots(1, 2)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    any_ppl = False
    for run, color in zip(runs, colors, strict=True):
        if run.train:
            loss_ax.plot([r[key] for r in run.train], [r["loss"] for r in run.train],
                         color=color, linewidth=1.0, alpha=0.55)
        scored = run.val_losses()
        if scored:
            loss_ax.plot([r[key] for r, _ in scored], [v for _, v in scored], color=color,
                         linewidth=1.8, marker="o", markersize=4)
        ppl = [r for r in run.evals if isinstance(r.get("val_perplexity"), (int, float))]
        if ppl:
            any_ppl = True
            ppl_ax.plot([r[key] for r in ppl], [r["val_perplexity"] for r in ppl], color=color,
                        linewidth=1.8, marker="o", markersize=4)
        best = run.best_eval()
        if best is not None:
            star = dict(marker="*", markersize=15, color=color, markeredgecolor="black",
                        markeredgewidth=0.8, linestyle="none", zorder=5)
            loss_ax.plot([best[key]], [best.get("val_loss", best.get("loss"))], **star)
            if isinstance(best.get("val_perplexity"), (int, float)):
                ppl_ax.plot([best[key]], [best["val_perplexity"]], **star)

    xlabel = "step" if x == "steps" else "tokens seen"
    loss_ax.set_title("Loss")
    loss_ax.set_ylabel("loss (nats)")
    ppl_ax.set_title("Validation perplexity")
    ppl_ax.set_ylabel("perplexity")
    if not any_ppl:
        ppl_ax.text(0.5, 0.5, "no validation perplexity logged", transform=ppl_ax.transAxes,
                    ha="center", va="center", color="0.4")
        ppl_ax.set_xticks([])
        ppl_ax.set_yticks([])
    xs = {r[key] for run in runs for r in (*run.train, *run.evals)}
    axes: list[Axes] = [loss_ax, ppl_ax]
    for ax in axes:
        ax.set_xlabel(xlabel)
        if not ax.has_data():
            continue
        # matplotlib's usual ticks (1, 2, 2.5, 5 x 10^n), but whole: steps and tokens are
        ax.xaxis.set_major_locator(MaxNLocator("auto", steps=[1, 2, 2.5, 5, 10], integer=True))
        if len(xs) == 1:  # one evaluation (a run stopped at step 0): centre it
            (only,) = xs
            ax.set_xlim(only - 1, only + 1)
            ax.set_xticks([only])
        ax.grid(True, which="major", alpha=0.3)
        if x == "tokens":
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_count(v)))
        if log_scale:
            ax.set_yscale("log")
            # plain numbers (4.5, 200) rather than matplotlib's default 4.5 x 10^0
            ax.yaxis.set_major_formatter(LogFormatter(10))
            ax.yaxis.set_minor_formatter(LogFormatter(10, labelOnlyBase=False))
            ax.grid(True, which="minor", alpha=0.12)

    handles: list[Line2D] = [Line2D([], [], color=c, linewidth=2.5, label=label)
                             for label, c in zip(labels, colors, strict=True)]
    handles += [
        Line2D([], [], color="0.35", linewidth=1.0, alpha=0.7, label="train (per step)"),
        Line2D([], [], color="0.35", linewidth=1.8, marker="o", markersize=4,
               label="validation"),
        Line2D([], [], color="0.6", marker="*", markersize=12, markeredgecolor="black",
               markeredgewidth=0.8, linestyle="none", label="best checkpoint"),
    ]
    loss_ax.legend(handles=handles, loc="best", framealpha=0.9,
                   prop={"size": 9, "family": families_for(labels)})
    return fig


def _save(fig: Figure, out: Path) -> Path:
    """Write through a temporary file, so a reader never sees half a picture."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings():  # families_for warned once; matplotlib: per glyph
            warnings.filterwarnings("ignore", "Glyph .* missing from font")
            fig.savefig(tmp, dpi=DPI, format=out.suffix.lower().lstrip("."))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def plot_runs(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    x: str = "steps",
    log_scale: bool = False,
    labels: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Draw the loss and perplexity curves of `run_dirs` into `out` (1200 x 450 pixels).

    `x`: "steps" or "tokens" (tokens seen); `log_scale`: logarithmic loss and perplexity
    axes; `labels`: legend names (default: the runs' folder names). An existing `out` is
    only replaced with `overwrite=True`. Returns the path written.
    """
    out = Path(out)
    if not run_dirs:
        raise GptkitError("name at least one run to plot")
    if labels is not None and len(labels) != len(run_dirs):
        raise GptkitError(f"got {len(labels)} --label for {len(run_dirs)} runs; give one label "
                          "per run, in the same order")
    if x not in X_AXES:
        raise GptkitError(f"--x must be steps or tokens (got {x!r})")
    _check_out(out, overwrite)
    runs = [read_metrics(path) for path in run_dirs]
    for run in runs:
        if run.empty:
            raise GptkitError(f"{run.run_dir}/metrics.jsonl holds no records yet; let the run "
                              "reach its first log or evaluation, then plot it")
    names = list(labels) if labels is not None else run_labels(run_dirs)
    return _save(figure_for_runs(runs, labels=names, x=x, log_scale=log_scale), out)


def write_run_plots(run_dir: str | Path) -> list[Path]:
    """A run's own curves: plots/loss.png (against steps) and plots/loss-tokens.png.

    Called at the end of training; previous plots of the run are replaced. Writes nothing
    (and never raises for want of records) when the run has logged nothing yet; the tokens
    plot is left out for a run that does not log tokens (a classifier).
    """
    run_dir = Path(run_dir)
    run = read_metrics(run_dir, required=False)
    if run.empty:
        return []
    folder = run_dir / "plots"
    written = []
    label = [run_dir.resolve().name]
    written.append(_save(figure_for_runs([run], labels=label, x="steps"), folder / "loss.png"))
    has_tokens = all(isinstance(r.get("tokens"), (int, float)) for r in (*run.train, *run.evals))
    if has_tokens:
        written.append(_save(figure_for_runs([run], labels=label, x="tokens"),
                             folder / "loss-tokens.png"))
    return written
