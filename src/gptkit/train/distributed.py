"""Process-group set-up under torchrun, collectives and the parallel strategies.

Everything that depends on the number of processes lives here, so the model and the training
loop stay unchanged between one process and many; the device and precision policy is
`gptkit.device`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gptkit.device import resolve_device
from gptkit.errors import GptkitError, ProcessGroupError


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: its rank, the world size and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device_name: str = "auto", timeout_s: float = 600.0) -> DistEnv:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def teardown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


# what PyTorch's backends say when a peer is gone or silent (gloo, NCCL, the TCP store)
_PEER_FAILURE = ("Timed out", "timed out", "Connection closed", "Connection reset",
                 "Broken pipe", "NCCL", "gloo")


@contextlib.contextmanager
def peer_failures(env: DistEnv, timeout_s: float) -> Iterator[None]:
    """Turn a collective that failed because another process died or hung into one clear
    line, instead of a backend traceback (or a hang: every collective has `timeout_s`)."""
    try:
        yield
    except RuntimeError as exc:
        text = str(exc).strip()
        if not env.enabled or not (isinstance(exc, dist.DistError)
                                   or any(key in text for key in _PEER_FAILURE)):
            raise
        detail = text.splitlines()[0] if text else type(exc).__name__
        raise ProcessGroupError(
            f"rank {env.rank} of {env.world_size}: another process failed or stopped answering "
            f"(dist.timeout_s={timeout_s:g}); its own log says why. Backend: {detail}"
        ) from exc


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Sum a few numbers over all ranks (one collective, float64 for exact token counts)."""
    if not env.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device(env))
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    if not env.enabled:
        return [obj]
    gathered: list[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's value on every rank (e.g. the tokenizer it trained)."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _collective_device(env: DistEnv) -> torch.device:
    return env.device if env.device.type == "cuda" else torch.device("cpu")


# --- parallel strategies ---------------------------------------------------------------------
def resolve_strategy(strategy: str, world_size: int, num_params: int,
                     fsdp_min_params: int) -> str:
    """The strategy a run uses: `none` in one process; `auto` shards models of at least
    `fsdp_min_params` parameters (where a full copy per process stops fitting) and
    replicates smaller ones, whose DDP all-reduce is cheaper than FSDP's gathers."""
    if world_size == 1:
        return "none"
    if strategy == "none":
        raise GptkitError(
            f"dist.strategy=none runs one process, but {world_size} were started; use "
            "ddp or fsdp, or start one process"
        )
    if strategy == "auto":
        return "fsdp" if num_params >= fsdp_min_params else "ddp"
    return strategy


def wrap_ddp(model: nn.Module, env: DistEnv) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def shard_fsdp(model: nn.Module, blocks: list[nn.Module], env: DistEnv, precision: str,
               cpu_offload: bool) -> None:
    """FSDP2 in place: each block is one sharded unit (gathered just before its forward and
    backward, freed after), the rest (embeddings, final norm, head) the root unit.

    Under bf16/fp16 the gathered weights are cast for compute and gradients reduced in fp32,
    the sharded master weights staying fp32 (as autocast keeps them without FSDP).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    if cpu_offload and env.device.type != "cuda":
        raise GptkitError(
            "dist.cpu_offload keeps FSDP's shards in host memory while a GPU computes; on "
            f"{env.device.type} they are in host memory already: drop dist.cpu_offload"
        )
    mesh = init_device_mesh(env.device.type, (env.world_size,))
    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    options: dict[str, Any] = {
        "mesh": mesh,
        "mp_policy": MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32),
    }
    if cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    for block in blocks:
        fully_shard(block, **options)
    fully_shard(model, **options)


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 shards the model: then every rank must run each forward together."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def no_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) on every micro-step but
    the last of a step."""
    inner = getattr(model, "_orig_mod", model)  # under torch.compile
    if is_sharded(inner):
        return _fsdp_gradient_sync(inner, sync)
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()  # type: ignore[operator]


@contextlib.contextmanager
def _fsdp_gradient_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    model.set_requires_gradient_sync(sync)  # type: ignore[operator]
    yield


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor from a DTensor (e.g. the gradient norm of sharded gradients)."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value
