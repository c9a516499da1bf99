import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gptkit import cli
from gptkit.errors import GptkitError, ProcessGroupError
from gptkit.train import distributed
from gptkit.train.distributed import DistEnv
from tests.conftest import TINY

CPU = torch.device("cpu")
ONE = DistEnv(rank=0, local_rank=0, world_size=1, device=CPU)
TWO = DistEnv(rank=1, local_rank=1, world_size=2, device=CPU)


def test_auto_strategy_shards_only_large_models():
    assert distributed.resolve_strategy("auto", 2, 499, fsdp_min_params=500) == "ddp"
    assert distributed.resolve_strategy("auto", 2, 500, fsdp_min_params=500) == "fsdp"
    assert distributed.resolve_strategy("ddp", 2, 10**9, fsdp_min_params=500) == "ddp"
    assert distributed.resolve_strategy("fsdp", 2, 1, fsdp_min_params=500) == "fsdp"
    for strategy in ("auto", "ddp", "fsdp", "none"):  # one process needs no strategy
        assert distributed.resolve_strategy(strategy, 1, 10**9, fsdp_min_params=1) == "none"
    with pytest.raises(GptkitError, match="dist.strategy=none runs one process, but 2"):
        distributed.resolve_strategy("none", 2, 1, fsdp_min_params=500)


def test_cpu_offload_needs_a_gpu():
    with pytest.raises(GptkitError, match="drop dist.cpu_offload"):
        distributed.shard_fsdp(torch.nn.Linear(2, 2), [], TWO, "fp32", cpu_offload=True)


def test_a_lost_peer_becomes_one_clear_error_with_exit_status_1():
    gloo = ("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv "
            "operation to complete\nmore backend lines")
    with pytest.raises(ProcessGroupError) as caught, distributed.peer_failures(TWO, timeout_s=5):
        raise RuntimeError(gloo)
    message = str(caught.value)
    assert message.startswith("rank 1 of 2: another process failed or stopped answering "
                               "(dist.timeout_s=5)")
    assert "Timed out waiting 5000ms" in message and "more backend lines" not in message
    assert caught.value.exit_code == 1


def test_other_errors_pass_through_unchanged():
    with pytest.raises(RuntimeError, match="shape mismatch"), \
            distributed.peer_failures(TWO, timeout_s=5):
        raise RuntimeError("shape mismatch")
    # one process has no peers to lose
    with pytest.raises(RuntimeError, match="Timed out"), distributed.peer_failures(ONE, 5):
        raise RuntimeError("Timed out")


def test_cli_exits_with_the_errors_status(monkeypatch, capsys):
    def lost(args):
        raise ProcessGroupError("rank 0 of 2: another process failed")

    monkeypatch.setattr(cli.runs, "info", lost)  # the handler `gptkit info` registers
    with pytest.raises(SystemExit) as exited:
        cli.main(["info"])
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip() == "gptkit: error: rank 0 of 2: another process failed"


# a 2-process DDP run of 2 steps: what is measured is how the processes end
EXIT_RUN = [*TINY, "train.max_steps=2", "train.eval_interval=2", "train.eval_tokens=256",
            "train.micro_batch_size=2", "log.sample_tokens=0", "log.tensorboard=false",
            "dist.strategy=ddp"]
# launches of the repeated test; GPTKIT_TEST_DDP_LAUNCHES=10 for the count
LAUNCHES = int(os.environ.get("GPTKIT_TEST_DDP_LAUNCHES", "3"))


def _ddp_launch(out: Path, script: list[str], bound_s: float) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", *script, "train", "--no-progress", "--out", str(out)]
    for item in EXIT_RUN:
        args += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a session of its own: a hung rank is killed with its launcher at the bound
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=bound_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.mark.slow
def test_ddp_frees_its_reducer_before_the_process_group_is_destroyed(data_dir, tmp_path):
    """Freed after destroy_process_group, the DDP reducer could deadlock with a gloo thread
    waiting for the GIL (rank 1 of a finished run hung in 3 of 10 launches)."""
    probe = [str(Path(__file__).with_name("ddp_exit_probe.py")), str(tmp_path)]
    done = _ddp_launch(tmp_path / "run", probe, bound_s=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        assert report == {"ddp_alive_at_destroy": [0]}, (rank, report)


@pytest.mark.slow
def test_two_process_ddp_runs_always_exit(data_dir, tmp_path):
    """Every launch ends, both ranks, well within the bound (a hang ran 11 minutes)."""
    for i in range(LAUNCHES):
        started = time.monotonic()
        try:
            done = _ddp_launch(tmp_path / f"run-{i}", ["-m", "gptkit"], bound_s=240)
        except subprocess.TimeoutExpired:
            pytest.fail(f"launch {i + 1} of {LAUNCHES} did not exit within 240 s "
                        f"(started {time.monotonic() - started:.0f} s ago)")
        assert done.returncode == 0, done.stderr[-3000:]
