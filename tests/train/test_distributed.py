import pytest
import torch

from gptkit import cli
from gptkit.errors import GptkitError, ProcessGroupError
from gptkit.train import distributed
from gptkit.train.distributed import DistEnv

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

    monkeypatch.setitem(cli.COMMANDS, "info", lost)
    with pytest.raises(SystemExit) as exited:
        cli.main(["info"])
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip() == "gptkit: error: rank 0 of 2: another process failed"
