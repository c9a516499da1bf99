"""FSDP2 runs on the CPU (gloo) in 2 processes: the same maths as DDP and one process, sharded
checkpoints that resume in any number of processes, two "nodes" on loopback, a hung node."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gptkit.config import load_config
from gptkit.run import load_run
from gptkit.train.trainer import train
from tests.conftest import TINY
from tests.train.test_trainer import records

# fp32 and no dropout, so one process and two compute the same sums; 65 evaluation windows,
# so one rank runs one more evaluation batch than the other
COMMON = [*TINY, "train.max_steps=6", "train.eval_interval=3", "train.checkpoint_interval=3",
          "train.micro_batch_size=4", "train.batch_tokens=256", "train.eval_tokens=2080",
          "train.precision=fp32", "train.warmup_steps=1", "train.lr=0.01",
          "train.min_lr_ratio=0.01"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _command(out: Path, settings: list[str], launcher: list[str]) -> list[str]:
    args = [sys.executable, "-m", "torch.distributed.run", *launcher,
            "-m", "gptkit", "train", "--no-progress", "--out", str(out)]
    for item in settings:
        args += ["--set", item]
    return args


def torchrun(out: Path, *settings: str, resume: bool = False) -> None:
    """Train with 2 processes on this machine."""
    launcher = ["--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(_free_port())]
    args = _command(out, [*COMMON, *settings], launcher) + (["--resume"] if resume else [])
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]


def two_nodes(out: Path, *settings: str) -> list[subprocess.Popen[str]]:
    """Two torchrun launches, one process each, meeting at a c10d rendezvous: two machines."""
    endpoint = f"127.0.0.1:{_free_port()}"
    return [
        subprocess.Popen(
            _command(out, [*COMMON, *settings],
                     ["--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1",
                      "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        for rank in (0, 1)
    ]


def last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_run(run_dir, which="last").model.state_dict()


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], exact: bool) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), key
        else:  # observed: at most 1.2e-7 apart (one float32 rounding)
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def drop_last_checkpoint(run: Path, copy: Path) -> Path:
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / "step-000006")
    return copy


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sharded")
    if not (Path(os.environ["GPTKIT_DATA_DIR"]) / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip("reference data not found; set GPTKIT_DATA_DIR")
    train(load_config("shakespeare-char", COMMON), root / "single", progress=False)
    torchrun(root / "ddp", "dist.strategy=ddp")
    torchrun(root / "fsdp", "dist.strategy=fsdp")
    return {name: root / name for name in ("single", "ddp", "fsdp")}


def test_fsdp_and_ddp_train_like_one_process(runs):
    single = last_weights(runs["single"])
    assert_same(single, last_weights(runs["ddp"]), exact=False)
    assert_same(single, last_weights(runs["fsdp"]), exact=False)
    for kind, key in (("eval", "val_loss"), ("eval", "train_loss"), ("train", "loss")):
        expected = [r[key] for r in records(runs["single"], kind)]
        for name in ("ddp", "fsdp"):
            got = [r[key] for r in records(runs[name], kind)]
            assert got == pytest.approx(expected, rel=1e-6), (name, key)


def test_fsdp_run_writes_sharded_checkpoints_and_a_whole_best_model(runs):
    step = runs["fsdp"] / "checkpoints" / "step-000006"
    assert (step / "sharded" / ".metadata").is_file()
    assert not (step / "model.safetensors").exists()
    assert len(list((step / "sharded").glob("*.distcp"))) == 2  # one file per process
    best = load_run(runs["fsdp"]).model.state_dict()
    assert_same(load_run(runs["single"]).model.state_dict(), best, exact=False)
    assert (runs["fsdp"] / "samples.txt").read_text().strip()  # sampled by both ranks


def test_each_rank_holds_the_share_of_weights_and_optimizer_state_memory_plans(runs):
    """What `gptkit info` models for FSDP, against the shards each rank really wrote."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import MetadataIndex, TensorStorageMetadata

    from gptkit.memory import parameter_count, training_memory

    folder = runs["fsdp"] / "checkpoints" / "step-000006" / "sharded"
    meta = FileSystemReader(str(folder)).read_metadata()
    assert "model.lm_head.weight" not in meta.state_dict_metadata  # tied: the embedding's
    held: dict[tuple[int, str], int] = {}  # (rank, weights | optimizer) -> bytes
    for name, item in meta.state_dict_metadata.items():
        if not isinstance(item, TensorStorageMetadata) or not item.size:
            continue
        part = "weights" if name.startswith("model.") else "optimizer"
        for chunk in item.chunks:
            file = meta.storage_data[MetadataIndex(name, chunk.offsets)].relative_path
            rank = int(file.split("_")[2])  # __<rank>_0.distcp
            size = item.properties.dtype.itemsize * int(torch.Size(chunk.sizes).numel())
            held[rank, part] = held.get((rank, part), 0) + size
    config = load_config("shakespeare-char", COMMON)
    n = parameter_count(config, 67)
    planned = training_memory(config, 67, "fp32", strategy="fsdp", world_size=2)
    assert held[0, "weights"] + held[1, "weights"] == 4 * n
    assert held[0, "optimizer"] + held[1, "optimizer"] == 8 * n  # AdamW: two moments
    for rank in (0, 1):  # uneven only by the rows FSDP pads (67 rows: 34 + 33)
        assert held[rank, "weights"] == pytest.approx(planned.weights, rel=0.01)
        assert held[rank, "optimizer"] == pytest.approx(planned.optimizer, rel=0.01)


def test_sharded_checkpoint_resumes_in_one_process_and_in_two(runs, tmp_path):
    uninterrupted = last_weights(runs["fsdp"])
    one = drop_last_checkpoint(runs["fsdp"], tmp_path / "one")
    # one thread, as each torchrun rank has (ENV): with two, a CPU's matmul kernels may split
    # sums differently, and bit-for-bit equality would hold only on some processors
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config("shakespeare-char", COMMON), one, resume=True, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert_same(uninterrupted, last_weights(one), exact=True)
    two = drop_last_checkpoint(runs["fsdp"], tmp_path / "two")
    torchrun(two, "dist.strategy=fsdp", resume=True)
    assert_same(uninterrupted, last_weights(two), exact=True)
    assert (two / "checkpoints" / "step-000006" / "sharded").is_dir()


def test_one_file_checkpoint_resumes_sharded(runs, tmp_path):
    run = drop_last_checkpoint(runs["single"], tmp_path / "run")
    torchrun(run, "dist.strategy=fsdp", resume=True)
    assert_same(last_weights(runs["single"]), last_weights(run), exact=False)
    assert (run / "checkpoints" / "step-000006" / "sharded").is_dir()


def test_sharded_checkpoint_exports_to_hugging_face(runs, tmp_path):
    transformers = pytest.importorskip("transformers")
    from gptkit.interop.hf import export_hf

    out = export_hf(runs["fsdp"], tmp_path / "hf", which="last")
    assert (out / "model.safetensors").is_file()
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ours = load_run(runs["fsdp"], which="last").model
    ids = torch.randint(0, ours.config.vocab_size, (2, 16),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids)[0], rtol=1e-4, atol=1e-5)


def test_compiled_fsdp_trains_like_eager(runs, tmp_path):
    """torch.compile over the sharded model (the default on CUDA): observed 2.7e-7 apart."""
    torchrun(tmp_path / "run", "dist.strategy=fsdp", "train.compile=true")
    assert_same(last_weights(runs["fsdp"]), last_weights(tmp_path / "run"), exact=False)


def test_two_nodes_on_loopback_train_like_one_node(runs, tmp_path):
    nodes = two_nodes(tmp_path / "run", "dist.strategy=fsdp")
    for node in nodes:
        _, err = node.communicate(timeout=300)
        assert node.returncode == 0, err[-3000:]
    assert_same(last_weights(runs["fsdp"]), last_weights(tmp_path / "run"), exact=True)


def _worker_of(launcher: int) -> int:
    """The gptkit process a torchrun launched (not a helper process it may also start)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if parent == launcher and b"gptkit" in command:
                return int(entry.name)
    raise AssertionError(f"torchrun {launcher} has no gptkit worker")


def records_exist(run: Path) -> bool:
    path = run / "metrics.jsonl"
    return path.is_file() and '"kind": "train"' in path.read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_hung_node_ends_the_job_with_a_clear_message(tmp_path):
    run = tmp_path / "run"
    nodes = two_nodes(run, "dist.strategy=fsdp", "train.max_steps=100000", "dist.timeout_s=5")
    worker: int | None = None
    try:
        deadline = time.monotonic() + 120
        while not records_exist(run) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert records_exist(run), "training did not start"
        worker = _worker_of(nodes[1].pid)
        os.kill(worker, signal.SIGSTOP)  # node 1 stops answering, without dying
        _, err = nodes[0].communicate(timeout=90)  # a hang would time out here
        assert nodes[0].returncode != 0
        assert ("gptkit: error: rank 0 of 2: another process failed or stopped answering "
                "(dist.timeout_s=5)") in err
    finally:
        if worker is not None:
            os.kill(worker, signal.SIGKILL)
        for node in nodes:
            node.kill()
            node.communicate()

