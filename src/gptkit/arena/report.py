"""`gptkit arena`'s report: the votes of one or more folders ranked (`gptkit.arena.ranking`),
as a table, as JSON, and as a picture (Bradley-Terry ratings beside win rates with their
95% intervals)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gptkit.arena.ranking import DEFAULT_PRIOR, Record, rank
from gptkit.arena.store import Vote, VoteStore
from gptkit.errors import GptkitError


def load_votes(folders: Sequence[str | Path]) -> list[Vote]:
    """Every vote of the folders (several servers' folders may be pooled)."""
    votes = [vote for folder in folders for vote in VoteStore.open(folder).votes()]
    if not votes:
        raise GptkitError(f"no votes in {', '.join(map(str, folders))} yet; vote in the "
                          "playground's Compare tab or through POST /v1/arena/battles/ID/vote")
    return votes


def report(folders: Sequence[str | Path], prior: float = DEFAULT_PRIOR) -> list[Record]:
    """The ranking of the votes in `folders`, strongest first."""
    votes = load_votes(folders)
    return rank(votes, prior)


def _interval(record: Record) -> str:
    if record.win_rate is None or record.low is None or record.high is None:
        return "-"
    return f"{record.win_rate:.0%} [{record.low:.0%}, {record.high:.0%}]"


def table(records: Sequence[Record]) -> str:
    """The ranking as a text table (win rate: of the decided battles, Wilson 95% interval)."""
    head = ("rank", "model", "rating", "battles", "wins", "ties", "losses",
            "win rate [95% CI]")
    rows = [(str(i), r.model, f"{r.rating:.0f}", str(r.battles), str(r.wins),
             str(r.ties), str(r.losses), _interval(r)) for i, r in enumerate(records, 1)]
    widths = [max(len(row[c]) for row in [head, *rows]) for c in range(len(head))]
    left = {1, 7}  # the name and the interval; numbers are right-aligned
    lines = ["  ".join(cell.ljust(w) if c in left else cell.rjust(w)
                       for c, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in [head, *rows]]
    return "\n".join(lines)


def as_json(records: Sequence[Record], prior: float) -> dict[str, Any]:
    return {"prior": prior, "interval": "wilson 95%", "models": [asdict(r) for r in records]}


def draw(records: Sequence[Record], out: str | Path) -> Path:
    """Ratings (left) and win rates with their Wilson intervals (right), strongest on top."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise GptkitError(f"--out {out}: name a .png, .svg or .pdf file")
    names = [r.model for r in reversed(records)]  # barh draws bottom-up
    ys = range(len(names))
    fig = Figure(figsize=(10, 1.2 + 0.5 * len(names)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, sharey=True)
    ratings = [r.rating for r in reversed(records)]
    left.barh(ys, [x - 1000 for x in ratings], left=1000, color="#4c72b0")
    left.axvline(1000, color="0.4", linewidth=0.8)
    left.set_yticks(list(ys), names)
    left.set_xlabel("Bradley-Terry rating (Elo scale, mean 1000)")
    for y, x in zip(ys, ratings, strict=True):
        left.annotate(f"{x:.0f}", (x, y), xytext=(4 if x >= 1000 else -4, 0),
                      textcoords="offset points", va="center",
                      ha="left" if x >= 1000 else "right", fontsize=9)
    low, high = left.get_xlim()
    left.set_xlim(low - 0.15 * (high - low), high + 0.15 * (high - low))
    for y, r in zip(ys, reversed(records), strict=True):
        if r.win_rate is None or r.low is None or r.high is None:
            continue
        right.errorbar(r.win_rate, y, xerr=[[r.win_rate - r.low], [r.high - r.win_rate]],
                       fmt="o", color="#dd8452", capsize=4)
        right.annotate(f"{r.wins}-{r.ties}-{r.losses}", (r.high, y), xytext=(6, 0),
                       textcoords="offset points", va="center", fontsize=9)
    right.axvline(0.5, color="0.4", linewidth=0.8, linestyle="--")
    right.set_xlim(0, 1.15)
    right.set_xlabel("win rate of decided battles, Wilson 95% interval\n"
                     "(beside each: wins-ties-losses)")
    for ax in (left, right):
        ax.grid(True, axis="x", alpha=0.3)
    total = sum(r.battles for r in records) // 2
    fig.suptitle(f"arena: {total} voted battles, {len(records)} models")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
