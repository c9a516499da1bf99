"""What the votes say: each model's record and win rate with a Wilson interval, and a
Bradley-Terry ranking of any number of models.

Counting rules (the same in the table, the JSON and the picture):
- a battle counts for both of its models; `tie` and `both_bad` are ties;
- the win rate is wins / (wins + losses), the decided battles, with a Wilson score interval
  (a binomial proportion's interval that stays inside [0, 1] and behaves at 0 or all wins,
  unlike the normal approximation); a model whose battles were all ties has none;
- Bradley-Terry: P(i beats j) = p_i / (p_i + p_j), fitted by maximum likelihood with Hunter's
  MM iteration (2004), a tie counting half a win for each side; `prior` adds that many
  virtual ties between every two models, which keeps the fit finite for a model with no wins
  (its MLE is p = 0) and defined when the battles do not connect every model; 0 gives the plain
  MLE, which then needs every model to have a win and the comparisons to connect them.
  Strengths are shown on the Elo scale: 1000 + 400 log10(p_i / geometric mean of p).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gptkit.arena.store import Vote
from gptkit.errors import GptkitError

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
DEFAULT_PRIOR = 1.0  # virtual ties per pair of models


@dataclass
class Record:
    """One model's battles and the ranking's numbers for it."""

    model: str
    battles: int = 0
    wins: int = 0
    ties: int = 0  # tie and both_bad
    both_bad: int = 0  # of the ties
    losses: int = 0
    win_rate: float | None = None  # wins / (wins + losses); None with no decided battle
    low: float | None = None  # the Wilson interval's ends
    high: float | None = None
    strength: float = 0.0  # Bradley-Terry p, normalised to sum 1
    rating: float = 1000.0  # on the Elo scale


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of `successes` out of `trials` (95% by default)."""
    if trials <= 0:
        raise GptkitError("a Wilson interval needs at least one trial")
    p = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


def bradley_terry(models: Sequence[str], wins: dict[tuple[str, str], float],
                  prior: float = DEFAULT_PRIOR, tol: float = 1e-12,
                  max_iter: int = 100_000) -> dict[str, float]:
    """Bradley-Terry strengths (summing to 1) by Hunter's MM algorithm: p_i <- W_i /
    sum_j n_ij / (p_i + p_j), with W_i the wins of i (ties halved, `prior` virtual ties with
    each other model added) and n_ij the games between i and j. `wins[(i, j)]`: how often i
    beat j."""
    if len(models) < 2:
        raise GptkitError(f"a ranking needs at least 2 models, the votes name {len(models)}")
    if prior < 0:
        raise GptkitError(f"--prior must be >= 0, got {prior}")
    index = {m: k for k, m in enumerate(models)}
    k = len(models)
    w = [[prior / 2 if i != j else 0.0 for j in range(k)] for i in range(k)]
    for (a, b), count in wins.items():
        w[index[a]][index[b]] += count
    total = [sum(row) for row in w]
    if prior == 0:
        if (without := [models[i] for i in range(k) if total[i] <= 0]):
            raise GptkitError(f"{', '.join(without)} won no battle, so the plain maximum "
                              "likelihood puts it at minus infinity; use a prior > 0")
        if not _connected(k, w):
            raise GptkitError("the battles do not connect every model, so their strengths "
                              "cannot be compared; use a prior > 0")
    p = [1.0] * k
    for _ in range(max_iter):
        new = []
        for i in range(k):
            denominator = sum((w[i][j] + w[j][i]) / (p[i] + p[j]) for j in range(k) if j != i)
            new.append(total[i] / denominator if denominator else p[i])
        scale = sum(new)
        new = [x / scale for x in new]
        change = max(abs(x - y) for x, y in zip(new, p, strict=True))
        p = new
        if change < tol:
            break
    return dict(zip(models, p, strict=True))


def _connected(k: int, w: list[list[float]]) -> bool:
    seen, todo = {0}, [0]
    while todo:
        i = todo.pop()
        for j in range(k):
            if j not in seen and (w[i][j] + w[j][i]) > 0:
                seen.add(j)
                todo.append(j)
    return len(seen) == k


def rank(votes: Sequence[Vote], prior: float = DEFAULT_PRIOR) -> list[Record]:
    """Every model's record, strongest first (by Bradley-Terry strength)."""
    records: dict[str, Record] = {}
    wins: dict[tuple[str, str], float] = {}
    for vote in votes:
        a = records.setdefault(vote.model_a, Record(vote.model_a))
        b = records.setdefault(vote.model_b, Record(vote.model_b))
        a.battles += 1
        b.battles += 1
        if vote.winner in ("a", "b"):
            winner, loser = (a, b) if vote.winner == "a" else (b, a)
            winner.wins += 1
            loser.losses += 1
            pair = (winner.model, loser.model)
            wins[pair] = wins.get(pair, 0.0) + 1
        else:
            for side in (a, b):
                side.ties += 1
                side.both_bad += vote.winner == "both_bad"
            for pair in ((a.model, b.model), (b.model, a.model)):
                wins[pair] = wins.get(pair, 0.0) + 0.5
    models = sorted(records)
    strengths = bradley_terry(models, wins, prior)
    mean_log = sum(math.log(p) for p in strengths.values()) / len(strengths)
    for record in records.values():
        p = strengths[record.model]
        record.strength = p
        record.rating = 1000 + 400 * (math.log(p) - mean_log) / math.log(10)
        decided = record.wins + record.losses
        if decided:
            record.win_rate = record.wins / decided
            record.low, record.high = wilson(record.wins, decided)
    return sorted(records.values(), key=lambda r: (-r.strength, r.model))
