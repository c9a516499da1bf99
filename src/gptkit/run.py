"""Open a finished (or running) run directory: its config, tokenizer and model weights."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptkit import compress
from gptkit.config import RunConfig, read_config
from gptkit.errors import GptkitError
from gptkit.model import GPT
from gptkit.tokenizers import Tokenizer
from gptkit.train import checkpoint
from gptkit.train.distributed import resolve_precision


@dataclass
class Run:
    path: Path
    config: RunConfig
    tokenizer: Tokenizer
    model: GPT
    weights: Path  # the file the model's weights came from

    def data_meta(self) -> dict[str, Any] | None:
        """Token, word and byte counts of the data the run was trained on."""
        path = self.path / "data.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def best(self) -> dict[str, Any] | None:
        path = self.path / "best" / "config.json"
        return json.loads(path.read_text()) if path.is_file() else None


# Below this size a model's weights sit in the CPU's caches and bf16 only adds casts:
# measured at batch 1, 0.8M parameters decoded 0.73x as fast in bf16, 4.7M 1.15x, 30M 2.1x.
CPU_BF16_INFERENCE_MIN_PARAMS = 2_000_000


def inference_dtype(precision: str, device: torch.device, num_params: int) -> torch.dtype | None:
    """The dtype to cast weights to for `precision`, None for fp32."""
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise GptkitError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    small = num_params < CPU_BF16_INFERENCE_MIN_PARAMS
    if precision == "auto" and device.type == "cpu" and small:
        return None
    resolved = resolve_precision(precision, device)
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolved)


def load_run(
    path: str | Path, *, which: str = "best", device: str | torch.device = "cpu",
    quantize: str | None = None, precision: str = "fp32",
) -> Run:
    """The run's model in eval mode, from `best/` (default) or its newest valid checkpoint.

    `which="best"` falls back to the newest checkpoint when no best model was saved yet, and
    `which="last"` to `best/` in a run without checkpoints (an imported one).
    `quantize="int8"` returns the model with int8 linear layers (`gptkit.compress`), on the
    CPU; a run written by `gptkit export --quantize int8` always loads that way.
    `precision` "bf16"/"fp16" casts the weights for inference; "auto" does so where
    training would run bf16 (`resolve_precision`), on a CPU only for models of at least
    CPU_BF16_INFERENCE_MIN_PARAMS: there it halves the bytes read per generated token.
    """
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise GptkitError(f"run directory {run_dir} does not exist; train one with `gptkit train`")
    if (run_dir / "labels.json").is_file():
        raise GptkitError(
            f"{run_dir} is a classifier run (gptkit finetune-classify); use `gptkit classify "
            f"{run_dir} --text ...`, or gptkit.finetune.classify.load_classifier in Python"
        )
    config = read_config(run_dir / "config.yaml")
    tokenizer_path = run_dir / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise GptkitError(f"{tokenizer_path} is missing; the run directory is incomplete")
    tokenizer = Tokenizer.load(tokenizer_path)
    vocab = config.model.vocab_size
    if vocab is not None and tokenizer.vocab_size > vocab:
        raise GptkitError(
            f"the tokenizer in {run_dir} has {tokenizer.vocab_size} tokens but the model only "
            f"{vocab}; restore the run's own tokenizer.json"
        )
    if which not in ("best", "last"):
        raise GptkitError(f"checkpoint choice must be best or last, got {which!r}")
    best_weights = run_dir / "best" / "model.safetensors"
    has_checkpoints = bool(checkpoint.list_checkpoints(run_dir))
    if best_weights.is_file() and (which == "best" or not has_checkpoints):
        weights = best_weights
    else:
        ckpt, _ = checkpoint.latest_valid_checkpoint(run_dir)
        weights = ckpt / (checkpoint.SHARDED_DIR if checkpoint.is_sharded(ckpt)
                          else checkpoint.MODEL_FILE)
    model = GPT.from_config(config.model, tokenizer.vocab_size)
    compress.check_quantize(quantize)
    stored = compress.stored_quantization(run_dir) if weights == best_weights else None
    if (quantize or stored) and torch.device(device).type != "cpu":
        raise GptkitError(f"int8 models run on the CPU; load {run_dir} with device cpu "
                          "(--device cpu)")
    if stored:
        model = compress.load_int8(model, weights)
        return Run(path=run_dir, config=config, tokenizer=tokenizer, model=model, weights=weights)
    # a LoRA run's checkpoints hold the adapters beside the frozen weights; best/ is merged
    lora_checkpoint = config.finetune.lora_r > 0 and weights != best_weights
    target: torch.nn.Module = model
    if lora_checkpoint:
        from gptkit.finetune.lora import add_lora

        target = add_lora(model, config.finetune)
    try:
        if weights.name == checkpoint.SHARDED_DIR:  # an FSDP run's shards, gathered here
            from gptkit.train import sharded

            sharded.load(weights.parent, target, None)
        else:
            checkpoint.load_weights(target, weights)
    except GptkitError:
        raise
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        raise GptkitError(
            f"weights in {weights} do not fit the model in {run_dir / 'config.yaml'}: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    if lora_checkpoint:
        model = target.merge_and_unload()  # type: ignore[operator]
    model.to(device).eval()
    if quantize:
        model = compress.quantize_int8(model)
    elif dtype := inference_dtype(precision, torch.device(device), model.num_params()):
        model.to(dtype)
    return Run(path=run_dir, config=config, tokenizer=tokenizer, model=model, weights=weights)
