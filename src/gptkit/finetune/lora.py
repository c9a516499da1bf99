"""LoRA through Hugging Face `peft`: low-rank adapters on the attention and MLP projections.

A LoRA run trains only the adapters. Its `best/model.safetensors` holds the merged model (a
plain GPT: sample, eval and export read it like any other), and `best/adapter/` the adapter
alone in peft's own format (adapter_config.json + adapter_model.safetensors).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

from gptkit.config import FinetuneConfig
from gptkit.errors import GptkitError
from gptkit.model import GPT

ADAPTER_DIR = "adapter"


def _peft() -> Any:
    try:
        import peft
    except ImportError as exc:
        raise GptkitError(
            "LoRA needs the peft package: pip install -e \".[finetune]\" (or pip install peft)"
        ) from exc
    return peft


def add_lora(model: GPT, cfg: FinetuneConfig) -> nn.Module:
    """`model` wrapped by peft with adapters on `cfg.lora_targets`; only adapters learn."""
    peft = _peft()
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
             if isinstance(m, nn.Linear)}
    unknown = [t for t in cfg.lora_targets if t not in names]
    if unknown:
        raise GptkitError(
            f"finetune.lora_targets names layers the GPT does not have: {', '.join(unknown)}; "
            f"choose from {', '.join(sorted(names - {'lm_head'}))}"
        )
    config = peft.LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_targets), bias="none",
    )
    wrapped: nn.Module = peft.get_peft_model(model, config)
    return wrapped


def is_lora(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def merged_copy(model: nn.Module) -> GPT:
    """A plain GPT with the adapters folded into its weights; `model` is left as it was."""
    merged = copy.deepcopy(model).merge_and_unload()  # type: ignore[operator]
    assert isinstance(merged, GPT)
    return merged


def save_adapter(model: nn.Module, folder: Path) -> None:
    """The adapter weights and config alone (peft's format, loadable by PeftModel)."""
    model.save_pretrained(str(folder))  # type: ignore[operator]
