"""load_run: which weights, and the dtype they are cast to for inference."""

from __future__ import annotations

import pytest
import torch

from gptkit import device
from gptkit.errors import GptkitError
from gptkit.generation.sampling import generate
from gptkit.run import load_run
from tests.generation_opts import opts


def test_fp32_by_default_and_bf16_on_request(tiny_run):
    fp32 = load_run(tiny_run).model
    bf16 = load_run(tiny_run, precision="bf16").model
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    prompt = torch.tensor([[1, 2, 3, 4]])
    a = generate(fp32, prompt, opts(max_new_tokens=8, temperature=0.0))
    b = generate(bf16, prompt, opts(max_new_tokens=8, temperature=0.0))
    assert a.shape == b.shape == (1, 12)
    # the same first steps: bf16 weights move the logits by ~1e-2, not the argmax of a
    # trained model's confident predictions at the start
    assert torch.equal(a[:, :6], b[:, :6])


def test_auto_follows_the_training_policy(tiny_run, monkeypatch):
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    small = load_run(tiny_run, precision="auto").model  # cached weights: bf16 only adds casts
    assert next(small.parameters()).dtype == torch.float32
    monkeypatch.setattr(device, "CPU_BF16_INFERENCE_MIN_PARAMS", small.num_params())
    large = load_run(tiny_run, precision="auto").model
    assert next(large.parameters()).dtype == torch.bfloat16
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: False)
    assert next(load_run(tiny_run, precision="auto").model.parameters()).dtype == torch.float32


def test_bad_precision_is_one_clear_error(tiny_run):
    with pytest.raises(GptkitError, match="precision must be auto, fp32, bf16 or fp16"):
        load_run(tiny_run, precision="int4")
