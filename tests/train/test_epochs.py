"""train.epochs and intervals in epochs: converted to steps through the training data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gptkit.config import build_config, load_config
from gptkit.data.loader import EpochSize, RandomWindows, SeededEpochs
from gptkit.errors import GptkitError
from gptkit.runinfo import format_info, run_info
from gptkit.train.epochs import Budget, settle_epochs
from gptkit.train.resolve import resume_config
from gptkit.train.trainer import train
from tests.conftest import TINY

TOKENS = np.arange(1_003_855, dtype=np.uint16)


def windows(world_size: int, rank: int = 0, accum: int = 1) -> RandomWindows:
    return RandomWindows(TOKENS, block_size=32, micro_batch_size=8, accum_steps=accum, seed=1,
                         rank=rank, world_size=world_size)


def test_an_epoch_is_the_same_tokens_at_any_world_size():
    one, two = windows(1).epoch_size(), windows(2, rank=1).epoch_size()
    assert (one.per_epoch, one.per_step) == (1_003_855, 256)
    assert (two.per_epoch, two.per_step) == (1_003_855, 512)  # world size counts in a step
    assert one.steps(1) == 3922 and two.steps(1) == 1961  # ceil(1,003,855 / 256), / 512
    assert one.steps(1) * one.per_step >= one.per_epoch  # each covers the epoch once
    assert two.steps(1) * two.per_step >= two.per_epoch
    # accumulation is a step's share too: 2 micro-batches in one process = 2 processes
    assert windows(1, accum=2).epoch_size() == two
    assert one.explain(2) == ("2 epochs = 1,003,855 train tokens x 2 / 256 tokens per step "
                              "= 7,843 steps")
    assert EpochSize(10, 4, "examples").steps(0.5) == 2  # ceil(1.25)


def test_an_epoch_of_examples_counts_the_first_epochs_items():
    source = SeededEpochs(lambda seed, epoch: list(range(10)), seed=0, micro_batch_size=2,
                          accum_steps=1, world_size=2)
    assert source.epoch_size("examples") == EpochSize(10, 4, "examples")


class Fixed:
    def __init__(self, size: EpochSize) -> None:
        self.size = size

    def epoch_size(self) -> EpochSize:
        return self.size


def test_settling_turns_every_setting_in_epochs_into_steps():
    cfg = build_config({"train": {"epochs": 2, "eval_interval": "0.5 epochs",
                                  "checkpoint_interval": "1 epoch", "log_interval": 5}})
    with pytest.raises(GptkitError, match="settled into steps first"):
        Budget.of(cfg.train)
    settled, record = settle_epochs(cfg, Fixed(EpochSize(1_003_855, 12_288, "tokens")))
    t = settled.train
    assert (t.epochs, t.max_steps, t.eval_interval, t.checkpoint_interval, t.log_interval) == (
        None, 164, 41, 82, 5)
    assert Budget.of(t) == Budget(164, 41, 82, 5)
    assert record["lines"][0] == ("train.epochs: 2 epochs = 1,003,855 train tokens x 2 / "
                                  "12,288 tokens per step = 164 steps")
    assert record["settings"]["train.eval_interval"] == {"epochs": 0.5, "steps": 41}
    # nothing in epochs: the config as it was, and the data is never measured
    plain = build_config({})
    assert settle_epochs(plain, Fixed(EpochSize(0, 1, "tokens"))) == (plain, {})


def test_a_run_by_epochs_trains_the_converted_steps_and_resumes_with_them(data_dir, tmp_path):
    run = tmp_path / "run"
    config = load_config("shakespeare-char", [*TINY, "train.max_steps=null",
                                              "train.epochs=0.004", "train.eval_interval=8",
                                              "train.checkpoint_interval=0.002 epochs"])
    result = train(config, run, progress=False)
    steps = -(-0.004 * 1_003_855 // 256)  # ceil: 16 steps
    assert result.step == steps == 16
    record = json.loads((run / "epochs.json").read_text())
    assert record["settings"]["train.max_steps"] == {"epochs": 0.004, "steps": 16}
    assert record["settings"]["train.checkpoint_interval"] == {"epochs": 0.002, "steps": 8}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-000008", "step-000016"]
    assert f"  epochs       {record['lines'][0]}" in format_info(run_info(run))
    saved = resume_config(run, [])
    assert (saved.train.max_steps, saved.train.epochs) == (16, None)
    assert saved.train.checkpoint_interval == 8
    again = train(resume_config(run, ["train.max_steps=null", "train.epochs=0.006"]), run,
                  resume=True, progress=False)
    assert again.step == 24  # ceil(0.006 x 1,003,855 / 256)
    # a fresh run by steps in the same directory drops the old conversion
    train(load_config("shakespeare-char", [*TINY, "train.max_steps=2"]), run, overwrite=True,
          progress=False)
    assert not (run / "epochs.json").exists()


def test_plateau_counts_evaluations_given_in_epochs(data_dir, tmp_path):
    """The schedule reads the settled intervals: plateau with train.eval_interval in epochs
    evaluates (and may reduce) every converted number of steps."""
    config = load_config("shakespeare-char", [
        *TINY, "train.max_steps=null", "train.epochs=0.004", "train.schedule=plateau",
        "train.plateau_patience=0", "train.plateau_threshold=1.0", "train.warmup_steps=0",
        "train.eval_interval=0.001 epochs"])
    train(config, tmp_path / "run", progress=False)
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text(
        ).splitlines()) if r.get("kind") == "train"]
    assert lrs and min(lrs) < config.train.lr  # a threshold of 100%: every evaluation is bad


def test_two_budgets_at_once_is_one_line_on_the_command_line(data_dir, tmp_path):
    done = subprocess.run([sys.executable, "-m", "gptkit", "train", "--out", str(tmp_path / "r"),
                           "--set", "train.epochs=2"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "gptkit: error: train.epochs=2 and train.max_steps=2000 both set the length of the run; "
        "keep one (--set train.max_steps=null trains by epochs)"]


@pytest.mark.slow
def test_two_processes_take_half_the_steps_of_one_for_an_epoch(data_dir, tmp_path):
    """An epoch is the same data under torchrun: the global step holds both processes'."""
    common = [*TINY, "train.max_steps=null", "train.epochs=0.004", "train.eval_interval=100",
              "train.checkpoint_interval=100", "log.sample_tokens=0", "dist.strategy=ddp"]
    assert train(load_config("shakespeare-char", common), tmp_path / "one",
                 progress=False).step == 16
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", "-m", "gptkit", "train", "--no-progress", "--out", str(tmp_path / "two")]
    for item in common:
        args += ["--set", item]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "two" / "epochs.json").read_text())
    assert (record["per_step"], record["settings"]["train.max_steps"]["steps"]) == (512, 8)
    assert "train.epochs: 0.004 epochs = 1,003,855 train tokens x 0.004 / 512 tokens per " \
           "step = 8 steps" in done.stdout + done.stderr
    assert resume_config(tmp_path / "two", []).train.max_steps == 8


def test_train_help_says_how_to_train_by_epochs(capsys):
    from gptkit import cli

    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--set train.max_steps=null --set train.epochs=2" in text
    assert "train.eval_interval='0.5 epochs'" in text


def test_fine_tuning_and_classification_count_an_epoch_in_examples(tmp_path):
    from gptkit.train.objectives.classify import finetune_classifier
    from tests.finetune.tasks import reverse_task, run_sft
    from tests.finetune.test_classify import config, sentiment_rows, write_csv

    by_epochs = {"max_steps": None, "epochs": 2, "eval_interval": "1 epoch"}
    run_sft(reverse_task(tmp_path / "rev.jsonl", n=60), tmp_path / "sft", train=by_epochs)
    record = json.loads((tmp_path / "sft" / "epochs.json").read_text())
    examples = json.loads((tmp_path / "sft" / "data.json").read_text())["splits"]["train"][
        "examples"]
    assert (record["unit"], record["per_epoch"], record["per_step"]) == ("examples", examples, 16)
    assert record["settings"]["train.max_steps"]["steps"] == -(-2 * examples // 16)

    source = write_csv(tmp_path / "sentiment.csv", sentiment_rows(40))
    result = finetune_classifier(config(source, train=by_epochs), tmp_path / "clf",
                                 progress=False)
    record = json.loads((tmp_path / "clf" / "epochs.json").read_text())
    assert (record["unit"], record["per_epoch"], record["per_step"]) == ("examples", 32, 16)
    assert result.steps == record["settings"]["train.max_steps"]["steps"] == 4
