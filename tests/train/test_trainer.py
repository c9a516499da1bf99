import copy
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gptkit.config import load_config, read_config
from gptkit.errors import GptkitError
from gptkit.train.resolve import accumulation_steps
from gptkit.train.trainer import train
from tests.conftest import TINY


def cfg(*overrides: str):
    return load_config("shakespeare-char", [*TINY, *overrides])


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step-{step:06d}" / "model.safetensors"))


def records(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


@pytest.mark.slow
def test_hundred_steps_on_tiny_shakespeare_lower_val_loss(data_dir, tmp_path):
    config = load_config("shakespeare-char", [
        "train.max_steps=100", "train.warmup_steps=10", "train.eval_interval=50",
        "train.eval_tokens=16384",
    ])
    result = train(config, tmp_path / "run", progress=False)
    evals = records(tmp_path / "run", "eval")
    assert [e["step"] for e in evals] == [0, 50, 100]
    assert evals[0]["val_loss"] > 4.0  # ~ln(vocab) at initialisation
    assert evals[-1]["val_loss"] < 2.9
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.2
    assert result.best_val_loss == pytest.approx(evals[-1]["val_loss"])


def test_run_directory_contents(tiny_run):
    for name in ("config.yaml", "tokenizer.json", "metrics.jsonl", "data.json",
                 "environment.json", "best/model.safetensors", "best/config.json"):
        assert (tiny_run / name).is_file(), name
    saved = load_config(str(tiny_run / "config.yaml"))
    assert saved.model.vocab_size == 67  # 65 characters + end-of-text + unknown
    steps = sorted(p.name for p in (tiny_run / "checkpoints").iterdir())
    assert steps == ["step-000010", "step-000020"]
    train_records = records(tiny_run, "train")
    assert [r["step"] for r in train_records] == [5, 10, 15, 20]
    assert all(r["tokens_per_s"] > 0 and r["grad_norm"] > 0 for r in train_records)


def test_resume_is_bit_for_bit(data_dir, tmp_path):
    config = cfg("model.dropout=0.1", "train.checkpoint_interval=6", "train.eval_interval=6",
                 "train.max_steps=12", "train.keep_checkpoints=5")
    straight = tmp_path / "straight"
    train(config, straight, progress=False)
    # "interrupt" after step 6: keep only what existed then
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-000012")
    train(config, resumed, resume=True, progress=False)
    a, b = weights(straight, 12), weights(resumed, 12)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses = lambda d: [r["loss"] for r in records(d, "train")]  # noqa: E731
    assert losses(straight) == losses(resumed)
    # what the "interrupted" attempt logged after step 6 was replaced, not repeated
    samples = (resumed / "samples.txt").read_text()
    assert samples == (straight / "samples.txt").read_text()
    assert [line.split()[2] for line in samples.splitlines() if line.startswith("===")] == [
        "0", "6", "12"]
    elapsed = [r["elapsed_s"] for r in records(resumed, "train")]
    assert elapsed == sorted(elapsed)  # the clock carries on across the resume


def test_resume_is_bit_for_bit_with_muon_wsd_and_the_architecture_options(data_dir, tmp_path):
    fast = ["train.optimizer=muon", "train.schedule=wsd", "train.momentum=0.95",
            "model.pos_embedding=rope", "model.norm=rmsnorm", "model.qk_norm=true",
            "model.mlp=relu2", "model.tie_embeddings=false"]
    config = cfg(*fast, "train.checkpoint_interval=6", "train.eval_interval=6",
                 "train.max_steps=12", "log.sample_tokens=0")
    straight = tmp_path / "straight"
    train(config, straight, progress=False)
    saved = torch.load(straight / "checkpoints" / "step-000012" / "optimizer.pt",
                       weights_only=True)
    assert set(saved) == {"muon", "adamw"}
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-000012")
    train(config, resumed, resume=True, progress=False)
    a, b = weights(straight, 12), weights(resumed, 12)
    assert a.keys() == b.keys() and "lm_head.weight" in a and "transformer.wpe.weight" not in a
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses = lambda d: [r["loss"] for r in records(d, "train")]  # noqa: E731
    assert losses(straight) == losses(resumed)
    with pytest.raises(GptkitError, match="model.mlp=gelu"):
        train(cfg(*fast[:-2], "model.tie_embeddings=false", "train.max_steps=14"), resumed,
              resume=True, progress=False)


NEW_SCHEDULES = {  # each changes the rate before and after the "interruption" at step 6
    "plateau": ["train.schedule=plateau", "train.eval_interval=2", "train.plateau_patience=0",
                "train.plateau_threshold=0.5", "train.plateau_factor=0.5"],
    "step": ["train.schedule=step", "train.step_size=3", "train.step_gamma=0.7"],
    "exponential": ["train.schedule=exponential", "train.exp_gamma=0.9"],
    # a checkpoint written before schedules had state (no "schedule" key) still resumes
    "cosine, old checkpoint": ["train.schedule=cosine"],
}


@pytest.mark.parametrize("name", list(NEW_SCHEDULES))
def test_resume_is_bit_for_bit_under_every_new_schedule(data_dir, tmp_path, name):
    config = cfg(*NEW_SCHEDULES[name], "train.warmup_steps=2", "train.checkpoint_interval=6",
                 "train.max_steps=12", "train.log_interval=1", "log.sample_tokens=0")
    straight = tmp_path / "straight"
    train(config, straight, progress=False)
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-000012")
    if name.endswith("old checkpoint"):
        edit_json(resumed / "checkpoints" / "step-000006" / "state.json",
                  lambda s: [s.pop("schedule"), s.pop("state_sha256")])
    train(config, resumed, resume=True, progress=False)
    a, b = weights(straight, 12), weights(resumed, 12)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rates = lambda d: [(r["loss"], r["lr"]) for r in records(d, "train")]  # noqa: E731
    assert rates(straight) == rates(resumed) and len(rates(straight)) == 12
    lrs = [lr for _, lr in rates(straight)]
    assert lrs[1] < lrs[2] == 1e-3  # warmup ends at lr (step 2), where every schedule starts
    assert lrs[2] > lrs[5] > lrs[11]  # it decays before the interruption and after
    if name == "plateau":  # evaluations at 2 (the best), 4, 6, 8, 10: each reduces by half
        assert lrs[5] == 5e-4 and lrs[11] == 1e-4  # 1e-4: the recipe's floor
        saved = json.loads((straight / "checkpoints" / "step-000006" / "state.json").read_text())
        assert saved["schedule"]["lr"] == 2.5e-4


def test_resume_falls_back_past_a_corrupt_checkpoint(data_dir, tmp_path, capsys):
    config = cfg("train.max_steps=20")
    run = tmp_path / "run"
    train(config, run, progress=False)
    (run / "checkpoints" / "step-000020" / "model.safetensors").write_bytes(b"garbage")
    result = train(cfg("train.max_steps=20"), run, resume=True, progress=True)
    assert result.step == 20
    assert "step-000020" in capsys.readouterr().err


def edit_json(file: Path, change) -> None:
    state = json.loads(file.read_text())
    change(state)
    file.write_text(json.dumps(state, indent=1))


STATE_EDITS = {  # what review did to state.json; each must fall back to step-000010
    "step 20 -> 15": lambda s: s.update(step=15),  # state_sha256 no longer matches
    "old format, no rng": lambda s: [s.pop("state_sha256"), s.pop("rng")],
    "old format, step forty": lambda s: [s.pop("state_sha256"), s.update(step="forty")],
}


@pytest.mark.parametrize("edit", list(STATE_EDITS))
def test_resume_falls_back_past_an_edited_state_json(data_dir, tmp_path, capsys, edit):
    run = tmp_path / "run"
    train(cfg("train.max_steps=20"), run, progress=False)
    newest = run / "checkpoints" / "step-000020"
    edit_json(newest / "state.json", STATE_EDITS[edit])
    capsys.readouterr()
    result = train(cfg("train.max_steps=20"), run, resume=True, progress=True)
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "step-000020" in warnings[0] and "state.json" in warnings[0]
    assert "resumed from" in out and "step-000010 at step 10" in out
    assert result.step == 20  # trained steps 10..20 again, then saved step-000020 anew
    assert json.loads((newest / "state.json").read_text())["step"] == 20


def test_crash_leftovers_are_removed_on_resume_and_never_left_at_the_end(tiny_run, tmp_path):
    leftovers = lambda d: sorted(  # noqa: E731
        str(p.relative_to(d)) for p in d.rglob(".*") if p.name.startswith((".tmp-", ".old-")))
    assert leftovers(tiny_run) == []  # a normal run leaves none
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for name in (".tmp-best-4242", ".old-best-4242", "checkpoints/.tmp-step-000030-4242"):
        (run / name).mkdir()
        (run / name / "model.safetensors").write_bytes(b"partial")
    train(cfg(), run, resume=True, progress=False)
    assert leftovers(run) == []


def test_a_run_killed_before_its_first_checkpoint_leads_somewhere(tiny_run, tmp_path, capsys):
    """Without --resume the message names --resume and --overwrite; --resume starts at 0."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "checkpoints")  # what a kill before step 10 leaves: files, best/
    with pytest.raises(GptkitError, match="already exists.*--resume.*--overwrite"):
        train(cfg(), run, progress=False)
    capsys.readouterr()
    result = train(cfg(), run, resume=True, progress=True)
    out = capsys.readouterr().out
    assert "no checkpoint yet" in out and "from step 0" in out
    assert result.step == 20
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000010",
                                                                       "step-000020"]
    assert [r["step"] for r in records(run, "eval")] == [0, 10, 20]  # one history, from 0


def test_resume_with_changed_shape_is_an_error(tiny_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    with pytest.raises(GptkitError, match="block_size|positions|shape"):
        train(cfg("model.block_size=48"), copy, resume=True, progress=False)


def test_existing_run_is_never_touched_without_a_flag(tiny_run):
    before = {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*")}
    with pytest.raises(GptkitError, match="already exists.*--resume.*--overwrite"):
        train(cfg(), tiny_run, progress=False)
    assert {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*")} == before


def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(GptkitError, match="not a gptkit run"):
        train(cfg(), precious, overwrite=True, progress=False)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_early_stopping_stops_a_diverging_run(data_dir, tmp_path):
    # clipped, the loss grows but stays finite (unclipped it becomes NaN: the run then stops
    # with an error, test_a_loss_that_becomes_nan_stops_the_run)
    config = cfg("train.optimizer=sgd", "train.lr=200", "train.min_lr_ratio=1",
                 "train.eval_interval=2", "train.max_steps=40",
                 "train.early_stopping_patience=2")
    result = train(config, tmp_path / "run", progress=False)
    assert result.stopped_early
    assert result.step < 40
    assert result.best_val_loss is not None and result.last_eval["val_loss"] > result.best_val_loss


@pytest.mark.parametrize(
    ("overrides", "seen_at"),
    [([], 15),  # the log at step 15 reads the loss
     (["train.log_interval=50", "train.eval_interval=50"], 20)],  # the checkpoint at step 20
)
def test_a_loss_that_becomes_nan_stops_the_run(data_dir, tmp_path, monkeypatch, overrides,
                                               seen_at):
    from gptkit.train.trainer import Trainer
    from tests.train.test_metrics import strict_json

    original = Trainer._train_step

    def diverging(self):  # the 13th step's loss (and the weights after it) become NaN
        loss, grad_norm = original(self)
        if self.step >= 12:
            for p in self.model.parameters():
                p.data.fill_(float("nan"))
            loss = loss * float("nan")
        return loss, grad_norm

    monkeypatch.setattr(Trainer, "_train_step", diverging)
    run = tmp_path / "run"
    with pytest.raises(GptkitError) as info:
        train(cfg("train.max_steps=40", *overrides), run, progress=False)
    message = str(info.value)
    assert f"the loss became nan at or before step {seen_at}" in message
    assert "the last checkpoint before it is step 10" in message
    assert f"gptkit train --resume --out {run}" in message
    # no checkpoint holds the broken weights; metrics.jsonl is strict JSON, the loss null
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000010"]
    logged = [strict_json(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == seen_at and logged[-1]["loss"] is None
    assert all(r["loss"] is not None for r in logged[:-1] if r["kind"] == "train")


def test_accumulation_is_derived_from_batch_tokens():
    assert accumulation_steps(cfg("train.batch_tokens=1024"), world_size=2) == 2
    assert accumulation_steps(cfg(), world_size=1) == 1
    with pytest.raises(GptkitError, match="multiple of"):
        accumulation_steps(cfg("train.batch_tokens=1000"), world_size=1)


def test_settings_are_settled_once_into_a_new_config_and_the_callers_is_untouched(
        tiny_run, tmp_path):
    """The vocabulary size (null: the tokenizer's) and the tokenizer's settings (the starting
    run's) are settled into config.yaml; the config the caller passed in is not written to."""
    short = ["train.max_steps=2", "train.eval_interval=2", "log.sample_tokens=0"]
    given = cfg(*short)
    before = copy.deepcopy(given)
    train(given, tmp_path / "fresh", progress=False)
    assert given == before and given.model.vocab_size is None
    assert read_config(tmp_path / "fresh" / "config.yaml").model.vocab_size == 67
    train(cfg(*short, "data.tokenizer=bpe", f"train.init_from={tiny_run}"), tmp_path / "init",
          progress=False)
    saved = read_config(tmp_path / "init" / "config.yaml")
    assert saved.data.tokenizer == read_config(tiny_run / "config.yaml").data.tokenizer == "char"


def test_vocab_size_smaller_than_tokenizer_is_an_error(data_dir, tmp_path):
    with pytest.raises(GptkitError, match="smaller than the tokenizer"):
        train(cfg("model.vocab_size=10"), tmp_path / "run", progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(data_dir, tmp_path):
    common = ["train.max_steps=6", "train.eval_interval=3", "train.checkpoint_interval=6",
              "train.micro_batch_size=4", "train.batch_tokens=256"]
    single = tmp_path / "single"
    train(cfg(*common), single, progress=False)  # accumulation 2 in one process
    args = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
            "-m", "gptkit", "train", "--no-progress", "--out", str(tmp_path / "ddp")]
    for item in [*TINY, *common]:
        args += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = weights(single, 6), weights(tmp_path / "ddp", 6)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    single_evals = records(single, "eval")
    ddp_evals = records(tmp_path / "ddp", "eval")
    assert [e["step"] for e in ddp_evals] == [e["step"] for e in single_evals]
    for x, y in zip(single_evals, ddp_evals, strict=True):
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-5)


def test_auto_precision_is_bf16_only_on_cpus_with_bf16_matrix_instructions(monkeypatch):
    from gptkit import device

    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    assert device.resolve_precision("auto", cpu) == "bf16"
    assert device.resolve_precision("fp32", cpu) == "fp32"
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: False)
    assert device.resolve_precision("auto", cpu) == "fp32"


def test_cpu_attention_kernel_runs_in_fp32_inside_bf16_autocast():
    """Autocast lists SDPA among its bf16 ops; the precision policy's autocast region must
    keep it from recasting q, k, v (the CPU flash-attention backward is ~5x slower in bf16).
    Checked below autocast, at the ATen operators that really run."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from gptkit import device as devices
    from gptkit.model import GPT

    class AttentionDtypes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[torch.dtype] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if "scaled_dot_product" in str(func):
                self.seen.append(args[0].dtype)
            return func(*args, **(kwargs or {}))

    model = GPT.from_config(cfg().model, 65)
    x = torch.randint(0, 65, (2, 16))
    mode = AttentionDtypes()
    with devices.autocast(torch.device("cpu"), "bf16"), mode:
        logits, loss = model(x, x)
    assert mode.seen and set(mode.seen) == {torch.float32}
    assert logits.dtype == torch.bfloat16  # the matmuls around it do run in bf16


def test_bf16_autocast_on_cpu_trains_like_fp32():
    """Attention runs in fp32 inside bf16 autocast on the CPU (speed); the rest in bf16."""
    from gptkit import device as devices
    from gptkit.model import GPT

    torch.manual_seed(0)
    model = GPT.from_config(cfg().model, 65)
    x = torch.randint(0, 65, (4, 32))
    _, loss32 = model(x, x)
    with devices.autocast(torch.device("cpu"), "bf16"):
        logits, loss16 = model(x, x)
    assert logits.dtype == torch.bfloat16
    assert loss16.item() == pytest.approx(loss32.item(), rel=2e-2)
    loss16.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_lora_is_refused_under_fsdp(data_dir, tmp_path, monkeypatch):
    from gptkit.train import distributed

    monkeypatch.setattr(distributed, "resolve_strategy", lambda *args: "fsdp")
    with pytest.raises(GptkitError, match=r"LoRA \(finetune.lora_r\) runs with dist.strategy=ddp"):
        train(cfg("finetune.lora_r=4"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_an_eval_callback_sees_every_evaluation_and_may_end_the_run(data_dir, tmp_path):
    """`on_eval` (how gptkit sweep prunes) gets each evaluation's step and held-out loss; a
    returned reason stops the run there, saved and marked stopped early."""
    seen = []

    def on_eval(step, val_loss, record):
        seen.append((step, val_loss, record["val_loss"]))
        return "enough" if step == 10 else None

    result = train(cfg("log.sample_tokens=0"), tmp_path / "run", progress=False,
                   on_eval=on_eval)
    assert [s[0] for s in seen] == [0, 10] and all(s[1] == s[2] for s in seen)
    assert result.step == 10 and result.stopped_early
    assert (tmp_path / "run" / "checkpoints" / "step-000010").is_dir()
