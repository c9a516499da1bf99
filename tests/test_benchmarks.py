"""Helpers of the benchmarks that can be checked without running them (they train for minutes)."""

from __future__ import annotations

import pytest

from benchmarks.augment_classify import summarize
from benchmarks.common import mean_spread


def test_mean_spread_of_one_value_says_there_is_none():
    assert mean_spread([0.9, 0.8, 1.0]) == "0.900 ± 0.100"
    assert mean_spread([0.02, -0.04], signed=True) == "-0.010 ± 0.042"
    assert mean_spread([0.9]) == "0.900 ± n/a (1 seed)"


@pytest.mark.parametrize("seeds", [1, 3])
def test_augment_classify_summary_with_any_number_of_seeds(seeds):
    """`python -m benchmarks.augment_classify --seeds 1` crashed on the spread of one value."""
    scores = {name: [{"accuracy": 0.9 + 0.01 * i + 0.02 * s, "macro_f1": 0.8} for s in
                     range(seeds)] for i, name in enumerate(["none", "word_delete+word_swap",
                                                              "token_noise+token_dropout",
                                                              "all four"])}
    summary, lines = summarize(scores)
    assert len(lines) == 4 and summary["all four"]["seeds_better_than_none"] == seeds
    assert summary["all four"]["mean_accuracy_difference_vs_none"] == pytest.approx(0.03)
    assert ("n/a (1 seed)" in lines[0]) == (seeds == 1)
