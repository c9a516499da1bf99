"""What a run logs: metrics.jsonl, TensorBoard event files (read back with TensorBoard's own
reader), samples.txt, Weights & Biases when asked, and MFU."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gptkit.config import load_config, read_config
from gptkit.errors import GptkitError
from gptkit.runinfo import describe
from gptkit.train.metrics import (
    MetricsLogger,
    peak_flops,
    truncate_metrics,
    truncate_samples,
)
from gptkit.train.trainer import train
from tests.conftest import TINY


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return acc


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_event_files_hold_every_logged_scalar(tiny_run):
    acc = events(tiny_run)
    logged = records(tiny_run)
    for kind, keys in (("train", ["loss", "lr", "grad_norm", "tokens_per_s", "mfu"]),
                       ("eval", ["val_loss", "val_perplexity", "train_loss"])):
        rows = [r for r in logged if r["kind"] == kind]
        assert rows
        for key in keys:
            scalars = acc.Scalars(f"{kind}/{key}")
            assert [s.step for s in scalars] == [r["step"] for r in rows]
            assert [s.value for s in scalars] == pytest.approx([r[key] for r in rows], rel=1e-6)
    tags = acc.Tags()["tensors"]
    assert "samples/text_summary" in tags and "config/text_summary" in tags


def test_train_records_carry_mfu_and_the_environment_its_peak(tiny_run):
    env = json.loads((tiny_run / "environment.json").read_text())
    assert env["peak_flops"] > 0 and "measured" in env["peak_flops_source"]
    cfg = read_config(tiny_run / "config.yaml")
    flops_per_token = describe(cfg, cfg.model.vocab_size or 0)["flops_per_token_training"]
    train_records = [r for r in records(tiny_run) if r["kind"] == "train"]
    for r in train_records:
        expected = r["tokens_per_s"] * flops_per_token / env["peak_flops"]
        assert r["mfu"] == pytest.approx(expected, rel=1e-9) and r["mfu"] > 0


def test_samples_are_written_at_each_evaluation_from_the_fixed_prompt(tiny_run):
    text = (tiny_run / "samples.txt").read_text()
    evals = [r for r in records(tiny_run) if r["kind"] == "eval"]
    headers = [line for line in text.splitlines() if line.startswith("=== step ")]
    assert headers == [f"=== step {r['step']} (val loss {r['val_loss']:.4f}) ===" for r in evals]
    bodies = [b.split("\n", 1)[1] for b in text.strip().split("\n\n") if b.startswith("===")]
    assert all(body.startswith("ROMEO:") for body in bodies), bodies


def test_training_ends_by_drawing_its_loss_curves(tiny_run):
    import matplotlib.image

    for name in ("loss.png", "loss-tokens.png"):
        picture = tiny_run / "plots" / name
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(picture).shape[:2] == (450, 1200)


def test_logs_can_be_switched_off(data_dir, tmp_path):
    cfg = load_config("shakespeare-char", [*TINY, "train.max_steps=5", "log.tensorboard=false",
                                           "log.sample_tokens=0", "log.plots=false"])
    train(cfg, tmp_path / "run", progress=False)
    for name in ("tb", "samples.txt", "plots"):
        assert not (tmp_path / "run" / name).exists(), name
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


def test_a_resumed_logger_replaces_what_came_after_its_checkpoint(tmp_path):
    cfg = load_config("shakespeare-char")
    first = MetricsLogger(tmp_path, cfg)
    for step in (0, 5, 10, 15):
        first.log({"step": step, "kind": "train", "loss": float(step)})
        first.sample(step, f"text {step}")
    first.close()
    second = MetricsLogger(tmp_path, cfg, resume_step=10)  # steps 10 and 15 are redone
    for step in (10, 15):
        second.log({"step": step, "kind": "train", "loss": -float(step)})
    second.close()
    scalars = events(tmp_path).Scalars("train/loss")
    assert [(s.step, s.value) for s in scalars] == [(0, 0.0), (5, 5.0), (10, -10.0),
                                                    (15, -15.0)]
    assert [r["loss"] for r in records(tmp_path)] == [0.0, 5.0, 10.0, -10.0, -15.0]
    # metrics.jsonl keeps the checkpoint's own step: the resumed run does not log it again
    assert "text 15" not in (tmp_path / "samples.txt").read_text()
    assert "text 10" in (tmp_path / "samples.txt").read_text()


def strict_json(line: str) -> dict:
    """json.loads, refusing the NaN/Infinity tokens that are not JSON (Python accepts them)."""
    def refuse(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(line, parse_constant=refuse)


def test_non_finite_numbers_are_logged_as_null(tmp_path):
    logger = MetricsLogger(tmp_path, load_config("shakespeare-char", ["log.tensorboard=false"]))
    logger.log({"step": 5, "kind": "train", "loss": float("nan"), "grad_norm": float("inf"),
                "lr": 1e-3})
    logger.log({"step": 10, "kind": "eval", "val_loss": -float("inf"), "val_tokens": 7})
    logger.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [strict_json(line) for line in lines] == [
        {"step": 5, "kind": "train", "loss": None, "grad_norm": None, "lr": 1e-3},
        {"step": 10, "kind": "eval", "val_loss": None, "val_tokens": 7}]


def test_truncation_keeps_records_up_to_the_step(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s}) + "\n" for s in (0, 10, 20)))
    truncate_metrics(metrics, 10)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [0, 10]
    samples = tmp_path / "samples.txt"
    samples.write_text("=== step 0 ===\na\n\n=== step 10 ===\nb\n\n=== step 20 ===\nc\n\n")
    truncate_samples(samples, 10)
    assert samples.read_text() == "=== step 0 ===\na\n\n=== step 10 ===\nb\n\n"
    truncate_metrics(tmp_path / "missing.jsonl", 3)  # nothing to do, no error


class FakeWandb(types.ModuleType):
    """Records what gptkit asks of wandb (the real package is optional and needs an account)."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.init_kwargs: dict = {}
        self.logged: list[tuple[dict, int]] = []
        self.finished = False

    def init(self, **kwargs):
        self.init_kwargs = kwargs
        return self

    def log(self, data: dict, step: int) -> None:
        self.logged.append((data, step))

    def finish(self) -> None:
        self.finished = True


def test_wandb_gets_the_same_scalars_offline(data_dir, tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = load_config("shakespeare-char", [*TINY, "train.max_steps=10", "log.wandb=true",
                                           "log.wandb_project=demo"])
    train(cfg, tmp_path / "run", progress=False)
    kwargs = fake.init_kwargs
    assert kwargs["project"] == "demo" and kwargs["mode"] == "offline"  # GPTKIT_OFFLINE=1
    assert kwargs["config"]["train"]["max_steps"] == 10
    assert kwargs["id"] == (tmp_path / "run" / "wandb-id.txt").read_text().strip()
    losses = [(d["train/loss"], step) for d, step in fake.logged if "train/loss" in d]
    assert losses == [(r["loss"], r["step"]) for r in records(tmp_path / "run")
                      if r["kind"] == "train"]
    assert any("samples" in d for d, _ in fake.logged) and fake.finished


def test_the_real_wandb_keeps_the_run_offline(data_dir, tmp_path, monkeypatch):
    """The wandb package itself (the `wandb` extra) takes gptkit's calls, offline as
    GPTKIT_OFFLINE=1 makes it: its run, under our run's W&B id, lands in the run folder (the
    scalars it is given: the test above)."""
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config("shakespeare-char", [*TINY, "train.max_steps=10", "log.wandb=true"])
    train(cfg, tmp_path / "run", progress=False)
    run_id = (tmp_path / "run" / "wandb-id.txt").read_text().strip()
    written = list((tmp_path / "run" / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(written) == 1 and written[0].stat().st_size > 0, written


def test_wandb_missing_is_a_clear_error(data_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    cfg = load_config("shakespeare-char", [*TINY, "log.wandb=true"])
    with pytest.raises(GptkitError, match=r"pip install"):
        train(cfg, tmp_path / "run", progress=False)


def test_peak_flops_is_measured_on_the_cpu():
    flops, source = peak_flops(torch.device("cpu"), "fp32")
    assert flops > 1e8 and source == "measured torch.float32 matmul"
    before = torch.get_rng_state()
    peak_flops(torch.device("cpu"), "bf16")
    assert torch.equal(before, torch.get_rng_state())  # training's random stream untouched


def test_measured_peak_is_kept_per_machine_so_runs_share_one_figure(tmp_path, monkeypatch):
    """Re-measured at each start on a shared CPU, the peak (and so MFU) moved with the load."""
    from gptkit.train import metrics

    cache = tmp_path / "cache" / "peak-flops.json"
    rates = iter([4e9, 9e9, 7e9])
    monkeypatch.setattr(metrics, "measured_matmul_flops", lambda *a, **k: next(rates))
    cpu = torch.device("cpu")
    first, source = peak_flops(cpu, "fp32", cache)
    assert first == 4e9 and "cached in" in source and cache.is_file()
    assert peak_flops(cpu, "fp32", cache)[0] == 4e9  # not measured again
    assert peak_flops(cpu, "bf16", cache)[0] == 9e9  # another dtype: its own measurement
    assert peak_flops(cpu, "bf16", cache)[0] == 9e9
    cache.write_text("not json")  # a damaged cache is measured anew, not an error
    assert peak_flops(cpu, "fp32", cache)[0] == 7e9
