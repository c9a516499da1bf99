"""Loss curves: valid PNGs of the documented size, run names in the legend, best markers,
log scale and a tokens axis; robust reading of metrics.jsonl; the `plot` command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from matplotlib.image import imread

from gptkit.errors import GptkitError
from gptkit.viz.curves import (
    DPI,
    FIGSIZE,
    figure_for_runs,
    human_count,
    plot_runs,
    read_metrics,
    run_labels,
    write_run_plots,
)
from tests.synthetic_runs import make_run, metrics
from tests.test_cli import expect_error, run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WIDTH, HEIGHT = int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI)


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = imread(path)
    assert pixels.shape[:2] == (HEIGHT, WIDTH) == (450, 1200)
    assert pixels.std() > 0  # something was drawn


def legend_texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend()
            for t in ax.get_legend().get_texts()]


def stars(ax) -> list[tuple[float, float]]:
    return [(float(line.get_xdata()[0]), float(line.get_ydata()[0]))
            for line in ax.get_lines() if line.get_marker() == "*"]


def test_plot_of_real_and_synthetic_runs_is_a_png_with_their_names(tiny_run, tmp_path):
    other = make_run(tmp_path / "lr-3e-3", ["train.lr=3e-3"])
    out = plot_runs([tiny_run, other], tmp_path / "pics" / "curves.png")
    assert out == tmp_path / "pics" / "curves.png"
    assert_png(out)
    runs = [read_metrics(tiny_run), read_metrics(other)]
    fig = figure_for_runs(runs, labels=run_labels([tiny_run, other]))
    texts = legend_texts(fig)
    assert "tiny" in texts and "lr-3e-3" in texts and "best checkpoint" in texts
    loss_ax, ppl_ax = fig.axes
    assert loss_ax.get_xlabel() == "step" and loss_ax.get_yscale() == "linear"
    assert len(stars(loss_ax)) == 2 and len(stars(ppl_ax)) == 2


def test_custom_labels_and_tokens_axis_with_log_scale(tmp_path):
    a = make_run(tmp_path / "a", ["train.lr=1e-3"])
    b = make_run(tmp_path / "b", ["train.lr=3e-3"])
    out = plot_runs([a, b], tmp_path / "t.png", x="tokens", log_scale=True,
                    labels=["slow", "fast"])
    assert_png(out)
    fig = figure_for_runs([read_metrics(a), read_metrics(b)], labels=["slow", "fast"],
                          x="tokens", log_scale=True)
    assert {"slow", "fast"} <= set(legend_texts(fig))
    for ax in fig.axes:
        assert ax.get_yscale() == "log" and ax.get_xlabel() == "tokens seen"
        assert ax.xaxis.get_major_formatter()(1_200_000, 0) == "1.2M"
    # validation points sit at the tokens seen when they were taken
    val = [line for line in fig.axes[0].get_lines() if line.get_marker() == "o"][0]
    assert list(val.get_xdata()) == [step * 256 for step in range(0, 61, 10)]


def test_best_marker_sits_at_the_saved_best_checkpoint(tmp_path):
    records = metrics()
    run = make_run(tmp_path / "r", records=records, best_step=20)
    fig = figure_for_runs([read_metrics(run)], labels=["r"])
    val20 = next(r["val_loss"] for r in records if r["kind"] == "eval" and r["step"] == 20)
    assert stars(fig.axes[0]) == [(20.0, pytest.approx(val20))]
    # without best/config.json: the evaluation with the lowest validation loss
    shutil.rmtree(run / "best")
    fig = figure_for_runs([read_metrics(run)], labels=["r"])
    assert stars(fig.axes[0])[0][0] == 60.0


def test_run_labels_are_distinct():
    assert run_labels(["runs/a", "runs/b"]) == ["a", "b"]
    assert run_labels(["x/lr", "y/lr"]) == ["x/lr", "y/lr"]
    assert run_labels(["x/lr", "x/lr"]) == ["x/lr (1)", "x/lr (2)"]


def test_human_count():
    assert [human_count(v) for v in (0, 512, 1200, 3_072_000, 2.5e9)] == [
        "0", "512", "1.2k", "3.07M", "2.5B"]


def test_read_metrics_is_robust_to_resumes_and_cut_lines(tmp_path):
    run = make_run(tmp_path / "r", records=[])
    lines = [
        {"step": 0, "kind": "eval", "tokens": 0, "val_loss": 4.0, "val_perplexity": 54.6},
        {"step": 5, "kind": "train", "tokens": 80, "loss": 3.9, "elapsed_s": 1.0},
        {"step": 10, "kind": "train", "tokens": 160, "loss": 3.8, "elapsed_s": 2.0},
        # resumed from step 5: step 10 is logged again, the clock carried on from step 5
        {"step": 10, "kind": "train", "tokens": 160, "loss": 3.7, "elapsed_s": 2.5},
        {"step": 10, "kind": "eval", "tokens": 160, "val_loss": 3.6, "val_perplexity": 36.6},
    ]
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"step": 15, "kind": "tr'
    (run / "metrics.jsonl").write_text(text)
    m = read_metrics(run)
    assert [r["step"] for r in m.train] == [5, 10] and m.train[-1]["loss"] == 3.7
    assert [r["step"] for r in m.evals] == [0, 10]
    assert m.wall_time_s == pytest.approx(2.5)
    assert m.steps() == 10 and m.tokens_seen() == 160


def test_a_run_with_one_evaluation_and_a_classifier_run_still_plot(tmp_path):
    single = make_run(tmp_path / "single", records=metrics(0))
    paths = write_run_plots(single)
    assert [p.name for p in paths] == ["loss.png", "loss-tokens.png"]
    # a classifier logs its held-out loss as `loss`, accuracy, and no tokens
    classifier = make_run(tmp_path / "cls", records=[
        {"step": 0, "kind": "eval", "loss": 0.7, "accuracy": 0.5, "examples": 20},
        {"step": 5, "kind": "train", "loss": 0.6, "lr": 1e-3},
        {"step": 10, "kind": "eval", "loss": 0.4, "accuracy": 0.8, "examples": 20},
    ])
    (classifier / "eval.json").write_text(json.dumps({"step": 10, "loss": 0.4}))
    paths = write_run_plots(classifier)
    assert [p.name for p in paths] == ["loss.png"]
    assert_png(paths[0])
    fig = figure_for_runs([read_metrics(classifier)], labels=["cls"])
    assert stars(fig.axes[0]) == [(10.0, 0.4)]
    with pytest.raises(GptkitError, match="--x steps"):
        plot_runs([classifier], tmp_path / "c.png", x="tokens")


def test_write_run_plots_replaces_the_runs_own_pictures(tiny_run, tmp_path):
    run = tmp_path / "tiny"
    shutil.copytree(tiny_run, run)
    first = write_run_plots(run)
    assert first == [run / "plots" / "loss.png", run / "plots" / "loss-tokens.png"]
    for path in first:
        assert_png(path)
    (run / "plots" / "loss.png").write_bytes(b"old")
    assert write_run_plots(run) == first
    assert_png(run / "plots" / "loss.png")
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["loss-tokens.png", "loss.png"]
    # nothing logged yet: nothing written, no error
    (run / "metrics.jsonl").write_text("")
    shutil.rmtree(run / "plots")
    assert write_run_plots(run) == [] and not (run / "plots").exists()


def test_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(GptkitError, match="does not exist"):
        read_metrics(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(GptkitError, match="not a gptkit run"):
        read_metrics(tmp_path / "plain")
    untrained = make_run(tmp_path / "untrained")
    (untrained / "metrics.jsonl").unlink()
    with pytest.raises(GptkitError, match="train it first"):
        read_metrics(untrained)
    assert read_metrics(untrained, required=False).empty
    empty = make_run(tmp_path / "empty", records=[])
    with pytest.raises(GptkitError, match="no records yet"):
        plot_runs([empty], tmp_path / "e.png")
    run = make_run(tmp_path / "r")
    with pytest.raises(GptkitError, match=r"\.png"):
        plot_runs([run], tmp_path / "curves.txt")
    with pytest.raises(GptkitError, match="one label per run"):
        plot_runs([run], tmp_path / "x.png", labels=["a", "b"])


def test_plot_command(capsys, tmp_path):
    a = make_run(tmp_path / "a", ["train.lr=1e-3"])
    b = make_run(tmp_path / "b", ["train.lr=3e-3"])
    out = tmp_path / "cmp.png"
    code, printed, _ = run_cli(capsys, "plot", str(a), str(b), "--out", str(out), "--x",
                               "tokens", "--log-scale", "--label", "slow", "--label", "fast")
    assert code == 0 and printed.strip() == str(out)
    assert_png(out)
    before = out.read_bytes()
    expect_error(capsys, "plot", str(a), "--out", str(out), match="--overwrite")
    assert out.read_bytes() == before  # what the user had is untouched
    code, _, _ = run_cli(capsys, "plot", str(a), "--out", str(out), "--overwrite")
    assert code == 0 and out.read_bytes() != before
    expect_error(capsys, "plot", str(tmp_path / "missing"), "--out", str(tmp_path / "m.png"),
                 match="does not exist")
