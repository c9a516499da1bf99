"""`gptkit compare`: exactly the settings that differ, and each run's final metrics."""

from __future__ import annotations

import json
import math

import pytest

from gptkit.compare import (
    MISSING,
    compare_runs,
    differing_keys,
    flatten,
    format_duration,
    format_table,
)
from gptkit.config import load_config
from gptkit.errors import GptkitError
from gptkit.train.trainer import train
from tests.conftest import TINY
from tests.synthetic_runs import make_run, metrics
from tests.test_cli import expect_error, run_cli


def test_reports_exactly_the_differing_keys(tmp_path):
    a = make_run(tmp_path / "a", ["train.lr=1e-3", "model.dropout=0.0"])
    b = make_run(tmp_path / "b", ["train.lr=2e-3", "model.dropout=0.1"])
    comparison = compare_runs([a, b])
    assert comparison.runs == ["a", "b"]
    assert comparison.differences == {"model.dropout": [0.0, 0.1], "train.lr": [1e-3, 2e-3]}
    same = compare_runs([a, make_run(tmp_path / "a2", ["train.lr=1e-3"])])
    assert same.differences == {}
    assert "(none: same configuration)" in format_table(same)


def test_lists_compare_as_values_and_missing_keys_differ():
    assert flatten({"name": "x", "data": {"augment": ["a"], "source": "s"}}) == {
        "name": "x", "data.augment": ["a"], "data.source": "s"}
    runs = [{"data.augment": ["a", "b"], "x": 1, "y": True, "z": None},
            {"data.augment": ["a", "b"], "x": 1.0, "y": 1},
            {"data.augment": ["b", "a"], "x": 1, "y": True, "z": None}]
    assert differing_keys(runs) == {
        "data.augment": [["a", "b"], ["a", "b"], ["b", "a"]],
        "y": [True, 1, True],
        "z": [None, MISSING, None],
    }


def test_final_metrics_of_each_run(tmp_path):
    records = metrics(60)
    a = make_run(tmp_path / "a", ["train.lr=1e-3"], records, best_step=50)
    b = make_run(tmp_path / "b", ["train.lr=2e-3"])
    imported = make_run(tmp_path / "imported", ["train.lr=3e-3"], records=[])
    (imported / "metrics.jsonl").unlink()  # an imported run has settings but no metrics
    comparison = compare_runs([a, b, imported])
    m = comparison.metrics
    last = [r for r in records if r["kind"] == "eval"][-1]
    at50 = next(r for r in records if r["kind"] == "eval" and r["step"] == 50)
    assert m["best_step"] == [50, 60, None]
    assert m["best_val_loss"][0] == pytest.approx(at50["val_loss"])
    assert m["val_loss"][0] == pytest.approx(last["val_loss"])
    assert m["val_perplexity"][0] == pytest.approx(math.exp(last["val_loss"]))
    assert m["val_bits_per_byte"][0] == pytest.approx(last["val_bits_per_byte"])
    assert "val_word_perplexity" not in m  # no run logged it: no row
    assert m["steps"] == [60, 60, None] and m["tokens_seen"] == [60 * 256, 60 * 256, None]
    assert m["wall_time_s"] == [pytest.approx(6.0), pytest.approx(6.0), None]
    assert m["tokens_per_s"] == [1060.0, 1060.0, None]
    table = format_table(comparison)
    lines = table.splitlines()
    assert lines[0].split() == ["a", "b", "imported"]
    row = next(line for line in lines if line.strip().startswith("train.lr"))
    assert row.split() == ["train.lr", "0.001", "0.002", "0.003"]
    row = next(line for line in lines if line.strip().startswith("best step"))
    assert row.split() == ["best", "step", "50", "60", "-"]
    row = next(line for line in lines if line.strip().startswith("tokens seen"))
    assert row.split() == ["tokens", "seen", "15.4k", "15.4k", "-"]
    # columns line up: every value row is as long as the header's widest layout allows
    assert len({line.index(" 0.001") + len(" 0.001") for line in lines if " 0.001" in line}) == 1
    assert json.loads(json.dumps(comparison.to_dict()))["runs"] == ["a", "b", "imported"]


def test_format_duration():
    assert [format_duration(s) for s in (1.24, 65, 3600 + 125)] == ["1.2s", "1m 05s", "1h 02m"]


def test_needs_two_runs_that_exist(tmp_path):
    a = make_run(tmp_path / "a")
    with pytest.raises(GptkitError, match="at least two runs"):
        compare_runs([a])
    with pytest.raises(GptkitError, match="does not exist"):
        compare_runs([a, tmp_path / "nowhere"])
    (tmp_path / "plain").mkdir()
    with pytest.raises(GptkitError, match="not a gptkit run"):
        compare_runs([a, tmp_path / "plain"])


def test_compare_command_on_trained_runs(tiny_run, capsys, tmp_path, data_dir):
    other = tmp_path / "tiny-lr2e-3"
    train(load_config("shakespeare-char", TINY + ["train.lr=2e-3", "model.dropout=0.1"]),
          other, progress=False)
    code, out, _ = run_cli(capsys, "compare", str(tiny_run), str(other), "--json")
    assert code == 0
    result = json.loads(out)
    assert result["runs"] == ["tiny", "tiny-lr2e-3"]
    assert result["differences"] == {"model.dropout": [0.0, 0.1], "train.lr": [1e-3, 2e-3],
                                     "log.plots": [True, False]}  # tiny_run draws its plots
    assert result["metrics"]["steps"] == [20, 20]
    assert all(v > 0 for v in result["metrics"]["best_val_loss"])
    code, out, _ = run_cli(capsys, "compare", str(tiny_run), str(other))
    assert code == 0 and "train.lr" in out and "final val perplexity" in out
    expect_error(capsys, "compare", str(tiny_run), match="at least two runs")
