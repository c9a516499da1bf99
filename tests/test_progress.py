"""What long commands show: a progress bar on stderr (not with --no-progress), and the lines
a user needs (evaluations, the end, a finished run) with or without it."""

from __future__ import annotations

import shutil

from tests.conftest import TINY
from tests.test_cli import run_cli


def test_eval_shows_progress_on_stderr_unless_no_progress(tiny_run, capsys):
    code, out, err = run_cli(capsys, "eval", str(tiny_run), "--stride", "8")
    assert code == 0 and "scoring" in err and "perplexity" in out
    code, out, err = run_cli(capsys, "eval", str(tiny_run), "--stride", "8", "--no-progress")
    assert code == 0 and "scoring" not in err and "perplexity" in out


def test_no_progress_training_still_prints_evaluations_and_a_finished_run_says_so(
        data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    sets = [a for s in TINY for a in ("--set", s)]
    code, out, err = run_cli(capsys, "train", "--no-progress", "--out", str(run), *sets)
    assert code == 0, err
    assert "step 0: train loss" in out and "step 20: train loss" in out
    assert "done: 20 steps" in out
    code, out, err = run_cli(capsys, "train", "--no-progress", "--resume", "--out", str(run))
    assert code == 0, err
    assert ("run already reached train.max_steps=20 (at step 20); raise it with --set "
            "train.max_steps=40 to train further") in out
    assert "tok/s" not in out
    shutil.rmtree(run)
