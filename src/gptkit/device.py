"""The one device-and-precision policy: where a model runs and in which number format.

Training, `gptkit eval`, sample, serve, viz, classify and the benchmarks all ask here, so
the same weights give the same numbers wherever they are scored (the validation loss that
training logs is what `gptkit eval` prints for that checkpoint).

`--device auto` (`train.device: auto`) picks CUDA, then MPS, then the CPU; int8 models run
on the CPU only, which `auto` then means. `--precision` / `train.precision` resolves as:

| device                   | auto              | bf16          | fp16                   | fp32 |
|--------------------------|-------------------|---------------|------------------------|------|
| CUDA, bf16 support       | bf16              | autocast bf16 | autocast fp16 + scaler | fp32 |
| CUDA, no bf16 support    | fp16              | error         | autocast fp16 + scaler | fp32 |
| CPU with AVX512-BF16/AMX | bf16              | autocast bf16 | error                  | fp32 |
| CPU without them, MPS    | fp32              | autocast bf16 | error                  | fp32 |

Training and scoring (train, in-training evaluation, `gptkit eval`) run the forward pass
under autocast at the resolved precision; the weights stay fp32. Generation (sample, serve,
eval-generate) instead casts the weights (`inference_dtype`): bf16/fp16 halve the bytes
read per generated token. Its `auto` is the table's, except that on a CPU models under
CPU_BF16_INFERENCE_MIN_PARAMS parameters stay fp32 (their weights sit in the caches and
bf16 only adds casts). `--quantize int8` (or an int8 run) is CPU only and ignores precision.
Memory figures (`gptkit info`) count 2 bytes a value for bf16 and fp16, else 4
(`memory_precision`). `train.compile` unset compiles on CUDA only (`resolve_compile`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from gptkit.attention_precision import fp32_cpu_attention
from gptkit.errors import GptkitError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Below this size a model's weights sit in the CPU's caches and bf16 only adds casts:
# measured at batch 1, 0.8M parameters decoded 0.73x as fast in bf16, 4.7M 1.15x, 30M 2.1x.
# Without bf16 instructions bf16 weights are never faster, so "auto" stays fp32 there and
# the default path is the fp32 one (benchmarks/results/decode_step_bf16.json, an AVX2
# EPYC, 1 thread, bf16 over fp32 at batch 1 (fastest rounds) / batch 8: 0.8M 1.01x / 0.54x,
# 10.7M 0.96x / 0.38x, 16M 0.21x / 0.14x, 30M 0.31x / 0.22x).
CPU_BF16_INFERENCE_MIN_PARAMS = 2_000_000


def resolve_device(name: str, local_rank: int = 0, *, int8: bool = False) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU (the CPU for an `int8` model); `cuda` under
    torchrun means this rank's GPU. An int8 model on another device is an error."""
    if int8:
        if name == "auto":
            return torch.device("cpu")
        if torch.device(_parse(name)).type != "cpu":
            raise GptkitError(f"int8 models run on the CPU, not {name}; use --device cpu "
                              "(or auto)")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = _parse(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GptkitError("train.device is cuda but no CUDA GPU is available; use auto or cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise GptkitError("train.device is mps but MPS is not available; use auto or cpu")
    return device


def _parse(name: str) -> torch.device:
    try:
        return torch.device(name)
    except RuntimeError:
        raise GptkitError(
            f"train.device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from None


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX).

    Read from the CPU's flags (Linux), so the choice is the same on every run of a machine;
    where the flags cannot be read the answer is no, and training stays in fp32.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise GptkitError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    return precision


def resolve_precision(precision: str, device: torch.device) -> str:
    """The table in the module docstring: "auto" is bf16 autocast on GPUs, and on CPUs with
    bf16 matrix instructions, where it trains to the same loss curve faster (measured on an
    AVX512-BF16 EPYC, 2 threads: 1.35x the fp32 tokens/s at 128 wide, 1.2x at 64, 1.6x at
    384); fp16 on GPUs without bf16; fp32 elsewhere."""
    check_precision(precision)
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if precision == "auto":
            return "bf16" if bf16_ok else "fp16"
        if precision == "bf16" and not bf16_ok:
            raise GptkitError("this GPU has no bf16 support; use train.precision=fp16 or fp32")
        return precision
    if precision == "auto":
        return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
    if precision == "fp16":
        raise GptkitError(
            f"train.precision=fp16 needs a CUDA GPU (device is {device.type}); use bf16 or fp32"
        )
    return precision


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed-precision region for forward passes at a resolved precision; a no-op in fp32.
    On a CPU, attention inside it runs in fp32 (`gptkit.attention_precision`)."""
    if precision == "fp32":
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    fp32_attention = fp32_cpu_attention() if device.type == "cpu" else contextlib.nullcontext()
    with torch.autocast(device_type=device.type, dtype=dtype), fp32_attention:
        yield


def inference_dtype(precision: str, device: torch.device, num_params: int) -> torch.dtype | None:
    """The dtype generation casts the weights to for `precision`, None for fp32."""
    check_precision(precision)
    small = num_params < CPU_BF16_INFERENCE_MIN_PARAMS
    if precision == "auto" and device.type == "cpu" and small:
        return None
    resolved = resolve_precision(precision, device)
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolved)


def memory_precision(precision: str | None) -> str:
    """The precision memory figures count in: bf16 (2 bytes a value) for bf16 and fp16,
    fp32 otherwise (auto and unknown count as fp32, the larger)."""
    return "bf16" if precision in ("bf16", "fp16") else "fp32"


def resolve_compile(compile_setting: bool | None, device: torch.device) -> bool:
    """Compile on CUDA by default; elsewhere only when asked (compile time dominates there)."""
    return device.type == "cuda" if compile_setting is None else compile_setting
