"""gptkit -> ONNX: a GPT-2 decoder with past keys and values, for ONNX Runtime.

The graph has the inputs and outputs that optimum and transformers.js give GPT-2 decoders
(`input_ids`, `attention_mask`, `position_ids`, `past_key_values.N.key` / `.value` ->
`logits`, `present.N.key` / `.value`), so the tools that run those exports recognise it; the
folder beside `model.onnx` is the Hugging Face export's (config.json, tokenizer files),
written by `gptkit.interop.hf`.

The graph is gptkit's own `GPT.forward`, traced, with a cache that joins the past tensors
it is given to the new keys and values and hands each layer's result out as `present`,
instead of writing into a preallocated slab (`KVCache`), which a graph cannot keep between
calls. A first call passes pasts with 0 positions. Every axis but the model's own sizes is
dynamic: batch, new tokens and past positions.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from gptkit.errors import GptkitError
from gptkit.files import new_folder
from gptkit.interop.hf import GPT2_ARCHITECTURE, write_hf_folder
from gptkit.model import GPT, KVCache
from gptkit.model_card import hub_card
from gptkit.rundir import RunDir

MODEL_FILE = "model.onnx"
OPSET = 17  # ONNX Runtime 1.14 and later; LayerNormalization is an op of its own from 17
INPUTS = ("input_ids", "attention_mask", "position_ids")


def past_names(n_layer: int) -> list[str]:
    """past_key_values.0.key, past_key_values.0.value, ... (optimum's names)."""
    return [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


def present_names(n_layer: int) -> list[str]:
    """present.0.key, present.0.value, ... (optimum's names)."""
    return [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


class PastCache(KVCache):
    """A `KVCache` for the traced graph: the past comes in as tensors and each layer's keys
    and values, past joined to new, go out as `present` (nothing is kept in place)."""

    def __init__(self, past: list[Tensor], batch_size: int, max_len: int) -> None:
        # no slabs: KVCache.__init__ would allocate them
        self.past = past
        self.present: list[Tensor] = []
        self.batch_size = batch_size
        self.max_len = max_len
        self.length = past[0].size(2)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        k = torch.cat((self.past[2 * layer].to(k.dtype), k), dim=2)
        v = torch.cat((self.past[2 * layer + 1].to(v.dtype), v), dim=2)
        self.present += [k, v]
        return k, v

    def reorder(self, rows: Tensor) -> None:
        raise NotImplementedError("the graph's caller reorders its own past tensors")


class DecoderWithPast(nn.Module):
    """`GPT.forward` as the graph sees it: (ids, mask, positions, *past) -> (logits, *present)."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor,
                *past: Tensor) -> tuple[Tensor, ...]:
        cache = PastCache(list(past), input_ids.size(0), self.model.config.block_size)
        logits, _ = self.model(input_ids, kv_cache=cache, attention_mask=attention_mask,
                               position_ids=position_ids)
        return (logits, *cache.present)


def check_exportable(run_dir: str | Path) -> None:
    """The graph is GPT-2's, described by GPT-2's config.json: refuse what that cannot hold
    (before loading weights, which for an int8 run are no plain tensors)."""
    rundir = RunDir(run_dir).check()
    if rundir.is_classifier:
        raise GptkitError(f"{run_dir} is a classifier run; the ONNX export writes language "
                          "models (a decoder with past keys and values)")
    if rundir.quantization:
        raise GptkitError(f"{run_dir} holds int8 weights, which the ONNX export cannot hold; "
                          "export the fp32 run it was quantized from")
    config = rundir.config().model
    for key, gpt2 in GPT2_ARCHITECTURE.items():
        value = getattr(config, key)
        if value != gpt2:
            shown = str(value).lower() if isinstance(value, bool) else value
            raise GptkitError(
                f"cannot export a model with model.{key}={shown} to ONNX: the export is a "
                f"GPT-2 decoder (model_type gpt2) that ONNX tools recognise; it needs "
                f"model.{key}={str(gpt2).lower()} and the other architecture options at "
                "their defaults"
            )


def export_graph(model: GPT, path: Path) -> None:
    """Write `model` (fp32, eval) as the decoder-with-past graph at `path`.

    Traced with the TorchScript exporter on example inputs of 2 rows, 3 new tokens and
    2 past positions, each named a dynamic axis; the tracer's warnings about Python
    values are expected (the branches taken hold for every past length, 0 included).
    """
    cfg = model.config
    assert cfg.vocab_size is not None
    model = model.float().eval()
    head_dim = cfg.n_embd // cfg.n_head
    batch, tokens, past_len = 2, 3, 2
    ids = torch.randint(0, cfg.vocab_size, (batch, tokens))
    mask = torch.ones(batch, past_len + tokens, dtype=torch.int64)
    positions = torch.arange(past_len, past_len + tokens)[None].expand(batch, -1)
    past = [torch.zeros(batch, cfg.n_head, past_len, head_dim) for _ in range(2 * cfg.n_layer)]
    pasts, presents = past_names(cfg.n_layer), present_names(cfg.n_layer)
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "past_sequence_length + sequence_length"},
        "position_ids": {0: "batch_size", 1: "sequence_length"},
        "logits": {0: "batch_size", 1: "sequence_length"},
        **{name: {0: "batch_size", 2: "past_sequence_length"} for name in pasts},
        **{name: {0: "batch_size", 2: "past_sequence_length + sequence_length"}
           for name in presents},
    }
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarning, the exporter's deprecation notice
        torch.onnx.export(
            DecoderWithPast(model), (ids, mask, positions, *past), str(path),
            input_names=[*INPUTS, *pasts], output_names=["logits", *presents],
            dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )


def export_onnx(
    run_dir: str | Path, out: str | Path, *, which: str = "best", overwrite: bool = False
) -> Path:
    """Write a run as an ONNX folder: model.onnx plus the Hugging Face config and tokenizer."""
    from gptkit.run import load_run

    check_exportable(run_dir)
    try:
        import onnx  # noqa: F401  (torch.onnx writes the file with it)
    except ImportError:
        raise GptkitError("the ONNX export needs the onnx package: pip install "
                          "'gptkit[onnx]'") from None
    run = load_run(run_dir, which=which)
    with new_folder(Path(out), overwrite=overwrite, marker=MODEL_FILE,
                    what="ONNX model folder") as tmp:
        export_graph(run.model, tmp / MODEL_FILE)
        write_hf_folder(tmp, run.model, run.tokenizer, run.path, card=hub_card(run.path),
                        weights=False)
    return Path(out)
