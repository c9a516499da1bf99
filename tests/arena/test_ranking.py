"""The arena's numbers against cases computed by hand: Wilson intervals and Bradley-Terry
strengths (whose maximum likelihood has a closed form when the battles form a tree: each
pair's strength ratio is its own wins ratio)."""

from __future__ import annotations

import math

import pytest

from gptkit.arena.ranking import bradley_terry, rank, wilson
from gptkit.arena.store import Vote
from gptkit.errors import GptkitError


def votes(*battles: tuple[str, str, str]) -> list[Vote]:
    return [Vote(f"b{i}", a, b, w) for i, (a, b, w) in enumerate(battles)]  # type: ignore[arg-type]


def test_wilson_interval_of_7_of_10_by_hand():
    # p = 0.7, n = 10, z = 1.959964, z^2 = 3.841459
    # centre = (0.7 + z^2/20) / (1 + z^2/10) = 0.892073 / 1.384146 = 0.644493
    # half   = z / 1.384146 * sqrt(0.7*0.3/10 + z^2/400) = 1.416009 * 0.174939 = 0.247715
    low, high = wilson(7, 10)
    assert low == pytest.approx(0.396778, abs=2e-6)
    assert high == pytest.approx(0.892208, abs=2e-6)


def test_wilson_interval_at_the_edges_stays_inside_0_1():
    # 0 of 5: centre = (z^2/10)/(1 + z^2/5) = 0.384146/1.768292 = 0.217241 = half: [0, 0.4345]
    low, high = wilson(0, 5)
    assert low == 0.0
    assert high == pytest.approx(0.434482, abs=2e-6)
    assert wilson(5, 5) == pytest.approx((1 - 0.434482, 1.0), abs=2e-6)


def test_bradley_terry_two_models_is_the_wins_ratio():
    # 3 wins to 1: the MLE of p_a / (p_a + p_b) is 3/4, so p_a = 0.75, p_b = 0.25
    p = bradley_terry(["a", "b"], {("a", "b"): 3, ("b", "a"): 1}, prior=0)
    assert p["a"] == pytest.approx(0.75) and p["b"] == pytest.approx(0.25)


def test_bradley_terry_chain_of_three_by_hand():
    # a beat b 2-1, b beat c 2-1, a and c never met: a tree, so the MLE sets each edge's ratio
    # to its wins ratio: p_a/p_b = 2, p_b/p_c = 2, hence p = (4, 2, 1) / 7
    p = bradley_terry(["a", "b", "c"], {("a", "b"): 2, ("b", "a"): 1, ("b", "c"): 2,
                                        ("c", "b"): 1}, prior=0)
    assert [p["a"], p["b"], p["c"]] == pytest.approx([4 / 7, 2 / 7, 1 / 7], abs=1e-9)


def test_a_tie_is_half_a_win_and_the_prior_keeps_a_winless_model_finite():
    # a: 2 wins and 1 tie against b -> a 2.5, b 0.5; prior 1 adds a virtual tie (0.5 each):
    # a 3, b 1, so p_a / p_b = 3 and the rating gap is 400 log10(3) = 190.85
    # (the third battle has a on side B: "b" is a's win)
    records = rank(votes(("a", "b", "a"), ("a", "b", "tie"), ("b", "a", "b")), prior=1)
    a, b = records
    assert (a.model, a.wins, a.ties, a.losses, a.battles) == ("a", 2, 1, 0, 3)
    assert (b.wins, b.losses) == (0, 2)
    assert a.strength / b.strength == pytest.approx(3)
    assert a.rating - b.rating == pytest.approx(400 * math.log10(3))
    assert a.win_rate == 1.0 and b.win_rate == 0.0  # of the decided battles
    assert (b.low, b.high) == pytest.approx(wilson(0, 2))


def test_both_bad_counts_as_a_tie():
    (a, b) = rank(votes(("a", "b", "both_bad"), ("a", "b", "a")), prior=0)
    assert (a.ties, a.both_bad, b.ties, b.both_bad) == (1, 1, 1, 1)
    assert a.strength / b.strength == pytest.approx(1.5 / 0.5)


def test_a_model_without_a_win_needs_a_prior():
    with pytest.raises(GptkitError, match="won no battle.*prior"):
        rank(votes(("a", "b", "a")), prior=0)
    with pytest.raises(GptkitError, match="do not connect"):
        bradley_terry(["a", "b", "c", "d"], {("a", "b"): 1, ("b", "a"): 1, ("c", "d"): 1,
                                             ("d", "c"): 1}, prior=0)


def test_any_number_of_models_are_ranked_strongest_first():
    battles = [("m0", "m1", "a")] * 3 + [("m1", "m2", "a")] * 3 + [("m2", "m3", "b")] \
        + [("m3", "m0", "b")] * 2 + [("m4", "m0", "tie")]
    records = rank(votes(*battles))
    assert len(records) == 5 and records[0].model == "m0"
    assert sum(r.strength for r in records) == pytest.approx(1)
    assert sum(r.battles for r in records) == 2 * len(battles)
