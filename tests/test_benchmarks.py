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


def test_results_say_when_where_and_how_they_were_measured(tmp_path, monkeypatch):
    """Every benchmark's JSON carries its date, machine, exact command and commit, which
    docs/results.md prints beside each figure."""
    import json
    import sys

    from benchmarks.common import REPO, write_results

    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / "compress.py"), "--run", "r x"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    write_results(tmp_path / "compress.json", {"x": 1.5})
    saved = json.loads((tmp_path / "compress.json").read_text())
    assert saved["benchmark"] == "compress" and saved["results"] == {"x": 1.5}
    made = saved["provenance"]
    assert made["command"] == "OMP_NUM_THREADS=1 python -m benchmarks.compress --run 'r x'"
    assert made["date"].startswith("20") and made["date"].endswith("+00:00")
    assert made["machine"]["cpu"] and made["machine"]["cores"] >= 1
    assert made["machine"]["torch"] and "gpu" in made["machine"]
    assert made["commit"] is None or len(made["commit"].split("+")[0]) == 40


def test_a_measured_run_carries_the_command_that_trained_it(tmp_path):
    import json

    from benchmarks.common import made_by

    (tmp_path / "environment.json").write_text(json.dumps(
        {"argv": ["/x/gptkit/__main__.py", "train", "--set", "train.max_steps=500"]}))
    assert made_by(tmp_path) == "gptkit train --set train.max_steps=500"
    assert made_by(tmp_path / "missing") is None
