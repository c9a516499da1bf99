"""A LoRA run's adapter in peft's own layout, for `AutoPeftModelForCausalLM`.

A LoRA run keeps `best/` merged (a plain GPT) and `best/adapter/` as peft saved it on
gptkit's `GPT`: its config names no base model and no task, and its auto mapping points at
`gptkit.model`, so peft alone cannot open it. `export_adapter` rebuilds the adapter on a
Hugging Face `GPT2LMHeadModel` (the same module names: `transformer.h.N.attn.c_attn`, ...)
and lets peft write it, so the folder is exactly what peft writes for GPT-2: task
CAUSAL_LM, `fan_in_fan_out` for GPT-2's `Conv1D`, tensors named
`base_model.model.transformer.h.N.attn.c_attn.lora_A.weight`. LoRA's A and B matrices are
`nn.Linear` on both sides, so they carry over as they are.

The base the adapter belongs to is the run's weights without the adapters: a checkpoint
holds them as they were (frozen), best/ as merged minus the adapters' product (equal to
float rounding). It is written beside the adapter as an HF folder (`OUT/base`), or named
with `base=` (a folder or hub id), which is checked to hold those weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from gptkit.errors import GptkitError
from gptkit.files import new_folder
from gptkit.finetune.lora import ADAPTER_DIR, add_lora
from gptkit.model import GPT
from gptkit.model_card import hub_card
from gptkit.run import Run, load_run
from gptkit.rundir import RunDir
from gptkit.train import checkpoint

BASE_DIR = "base"  # the base model's folder inside the export, unless base= names one
ADAPTER_CONFIG = "adapter_config.json"


def _peft() -> Any:
    try:
        import peft
        import transformers  # noqa: F401  (peft's GPT-2 is transformers')
    except ImportError as exc:
        raise GptkitError("exporting a peft adapter needs peft and transformers: "
                          "pip install 'gptkit[hf,finetune]'") from exc
    return peft


def _check_lora_run(rundir: RunDir) -> None:
    cfg = rundir.config()
    if rundir.is_classifier or cfg.finetune.lora_r <= 0:
        raise GptkitError(
            f"{rundir.path} is not a LoRA run (finetune.lora_r is 0), so it has no adapter; "
            f"drop --adapter-only to export the whole model"
        )
    if "lm_head" in cfg.finetune.lora_targets:
        raise GptkitError("an adapter on lm_head cannot be exported: Hugging Face GPT-2 ties "
                          "lm_head to the token embedding; export the merged model instead "
                          "(drop --adapter-only)")


def adapted_model(run: Run) -> nn.Module:
    """The run's GPT under peft with its adapters, the base weights unmerged."""
    peft = _peft()
    rundir = RunDir(run.path)
    cfg = run.config.finetune
    if rundir.is_checkpoint(run.weights):  # frozen base + adapters, as trained
        wrapped = add_lora(GPT.from_config(run.config.model, run.tokenizer.vocab_size), cfg)
        checkpoint.load_checkpoint(run.weights.parent, wrapped)
        return wrapped.eval()
    adapter_file = run.weights.parent / ADAPTER_DIR / "adapter_model.safetensors"
    if not adapter_file.is_file():
        raise GptkitError(f"{adapter_file} is missing; export --checkpoint last, or train the "
                          "run again to write best/adapter/")
    wrapped = add_lora(run.model, cfg)  # best/: merged weights; take the adapters back out
    result = peft.set_peft_model_state_dict(wrapped, load_file(str(adapter_file)))
    lora_missing = [k for k in result.missing_keys if "lora_" in k]
    if lora_missing or result.unexpected_keys:
        raise GptkitError(f"{adapter_file} does not fit the run's LoRA settings: "
                          f"{(lora_missing or result.unexpected_keys)[:2]}")
    with torch.no_grad():
        for module in wrapped.modules():
            if isinstance(module, peft.tuners.lora.LoraLayer):
                layer: Any = module  # peft's LoRA Linear: base_layer and get_delta_weight
                layer.base_layer.weight -= layer.get_delta_weight("default")
    return wrapped.eval()


def _check_base(source: str, base: dict[str, Tensor]) -> None:
    """`source` (a folder or hub id) must hold `base`, the run's weights without adapters."""
    from gptkit.interop.hf import hf_folder, read_hf_weights

    folder = hf_folder(source)
    _, theirs = read_hf_weights(folder)
    theirs = {k if k.startswith("transformer.") else f"transformer.{k}": v
              for k, v in theirs.items()}
    for key, tensor in base.items():
        other = theirs.get(key)
        if other is None or other.shape != tensor.shape:
            what = "has no" if other is None else "has another shape of"
            raise GptkitError(f"--base {source} {what} weight {key}, so it is not the model this "
                              "adapter was trained on; leave out --base to write that model "
                              "beside the adapter")
        if not torch.allclose(other.float(), tensor, rtol=1e-5, atol=1e-6):
            diff = (other.float() - tensor).abs().max().item()
            raise GptkitError(f"--base {source} differs from this run's base weights ({key} "
                              f"by up to {diff:.3g}); pass the model the run was fine-tuned "
                              "from, or leave out --base to write it beside the adapter")


def export_adapter(run_dir: str | Path, out: str | Path, *, which: str = "best",
                   base: str | None = None, overwrite: bool = False) -> Path:
    """Write the run's LoRA adapter as peft writes one for GPT-2 (see the module docstring).

    `AutoPeftModelForCausalLM.from_pretrained(out)` loads it with no gptkit installed: the
    config's `base_model_name_or_path` is `out/base` (absolute) or `base`, and the
    tokenizer files sit beside the adapter.
    """
    from gptkit.chat_template import read_chat_template
    from gptkit.interop.hf import (
        check_gpt2_architecture,
        to_hf_state_dict,
        to_transformers,
        write_hf_folder,
        write_hf_tokenizer,
    )

    peft = _peft()
    _check_lora_run(RunDir(run_dir).check())
    run = load_run(run_dir, which=which)
    check_gpt2_architecture(run.model.config)
    cfg = run.config.finetune
    wrapped = adapted_model(run)
    lora_state = peft.get_peft_model_state_dict(wrapped)
    base_model: GPT = wrapped.unload()  # type: ignore[operator]
    if base is not None:
        _check_base(base, to_hf_state_dict(base_model))
        path = Path(base).expanduser()
        reference = str(path.resolve()) if path.is_dir() else base
    else:
        reference = str(Path(out).resolve() / BASE_DIR)
    hf = peft.get_peft_model(to_transformers(base_model, run.tokenizer.eot_id), peft.LoraConfig(
        task_type="CAUSAL_LM", r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout, target_modules=list(cfg.lora_targets),
        fan_in_fan_out=True, bias="none"))
    result = peft.set_peft_model_state_dict(hf, lora_state)
    if result.unexpected_keys:
        raise GptkitError(f"the adapter does not fit GPT-2: {result.unexpected_keys[:2]}")
    hf.peft_config["default"].base_model_name_or_path = reference
    hf.peft_config["default"].inference_mode = True
    template = read_chat_template(run.path)
    with new_folder(Path(out), overwrite=overwrite, marker=ADAPTER_CONFIG,
                    what="peft adapter folder") as tmp:
        hf.save_pretrained(str(tmp), save_embedding_layers=False)
        write_hf_tokenizer(tmp, run.tokenizer, run.model.config.block_size,
                           None if template is None else template.source)
        if base is None:
            (tmp / BASE_DIR).mkdir()
            write_hf_folder(tmp / BASE_DIR, base_model, run.tokenizer, run.path,
                            card=hub_card(run_dir))
    return Path(out)
