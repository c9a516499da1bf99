"""gptkit.device: every row of the policy table in its docstring."""

from __future__ import annotations

import pytest
import torch

from gptkit import device
from gptkit.errors import GptkitError

CPU, MPS = torch.device("cpu"), torch.device("mps")


@pytest.fixture
def cuda(monkeypatch):
    """A CUDA device whose bf16 support the test chooses (no GPU needed)."""
    def make(bf16: bool) -> torch.device:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        return torch.device("cuda", 0)
    return make


@pytest.mark.parametrize("setting, expected", [
    ("auto", "bf16"), ("bf16", "bf16"), ("fp16", "fp16"), ("fp32", "fp32")])
def test_cuda_with_bf16(cuda, setting, expected):
    assert device.resolve_precision(setting, cuda(True)) == expected


@pytest.mark.parametrize("setting, expected", [
    ("auto", "fp16"), ("bf16", None), ("fp16", "fp16"), ("fp32", "fp32")])
def test_cuda_without_bf16(cuda, setting, expected):
    if expected is None:
        with pytest.raises(GptkitError, match="no bf16 support"):
            device.resolve_precision(setting, cuda(False))
    else:
        assert device.resolve_precision(setting, cuda(False)) == expected


@pytest.mark.parametrize("fast, where, auto", [
    (True, CPU, "bf16"), (False, CPU, "fp32"), (True, MPS, "fp32")])
def test_cpu_and_mps(monkeypatch, fast, where, auto):
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: fast)
    assert device.resolve_precision("auto", where) == auto
    assert device.resolve_precision("bf16", where) == "bf16"
    assert device.resolve_precision("fp32", where) == "fp32"
    with pytest.raises(GptkitError, match="fp16 needs a CUDA GPU"):
        device.resolve_precision("fp16", where)


def test_unknown_precision_is_one_clear_error():
    with pytest.raises(GptkitError, match="precision must be auto, fp32, bf16 or fp16"):
        device.resolve_precision("int4", CPU)


def test_generation_casts_weights_but_keeps_small_cpu_models_fp32(monkeypatch):
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    small, large = 1000, device.CPU_BF16_INFERENCE_MIN_PARAMS
    assert device.inference_dtype("auto", CPU, small) is None
    assert device.inference_dtype("auto", CPU, large) == torch.bfloat16
    assert device.inference_dtype("bf16", CPU, small) == torch.bfloat16
    assert device.inference_dtype("fp32", CPU, large) is None
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: False)
    assert device.inference_dtype("auto", CPU, large) is None


def test_autocast_only_below_fp32():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with device.autocast(CPU, "fp32"):
        assert (a @ b).dtype == torch.float32
    with device.autocast(CPU, "bf16"):
        assert (a @ b).dtype == torch.bfloat16


def test_int8_runs_on_the_cpu():
    assert device.resolve_device("auto", int8=True) == CPU
    assert device.resolve_device("cpu", int8=True) == CPU
    with pytest.raises(GptkitError, match="int8 models run on the CPU"):
        device.resolve_device("cuda", int8=True)


def test_devices():
    assert device.resolve_device("cpu") == CPU
    with pytest.raises(GptkitError, match="is not a device"):
        device.resolve_device("gpu0")


def test_memory_and_compile():
    assert [device.memory_precision(p) for p in ("bf16", "fp16", "fp32", "auto", None)] == [
        "bf16", "bf16", "fp32", "fp32", "fp32"]
    assert device.resolve_compile(None, torch.device("cuda", 0)) is True
    assert device.resolve_compile(None, CPU) is False
    assert device.resolve_compile(True, CPU) is True
