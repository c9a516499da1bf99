from __future__ import annotations

import json

import pytest
import torch

from gptkit.config import FinetuneConfig, ModelConfig
from gptkit.errors import GptkitError
from gptkit.finetune import lora
from gptkit.finetune.freeze import count_parameters
from gptkit.model import GPT
from gptkit.run import load_run
from gptkit.train import checkpoint
from tests.finetune.tasks import held_out_exact_match, reverse_task, run_sft


def _gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11))


def test_only_adapters_train_and_their_count_is_r_times_in_plus_out():
    model = lora.add_lora(_gpt(), FinetuneConfig(lora_r=4, lora_targets=["c_attn", "c_fc"]))
    trainable, total = count_parameters(model)
    # per block: c_attn 16 -> 48 and c_fc 16 -> 64, each r * (in + out)
    assert trainable == 2 * 4 * ((16 + 48) + (16 + 64))
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert total == _gpt().num_params() + trainable


def test_merge_and_unload_equals_the_adapted_model():
    model = lora.add_lora(_gpt(), FinetuneConfig(lora_r=4, lora_alpha=8))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero; give the adapters something to add
            torch.nn.init.normal_(p, std=0.2)
    x = torch.randint(0, 11, (3, 8))
    adapted, _ = model(x)
    merged = lora.merged_copy(model)
    assert isinstance(merged, GPT)
    torch.testing.assert_close(merged(x)[0], adapted, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(_gpt()(x)[0], adapted, atol=1e-3)  # the adapters did something


def test_unknown_target_is_a_clear_error():
    with pytest.raises(GptkitError, match="names layers the GPT does not have: q_proj"):
        lora.add_lora(_gpt(), FinetuneConfig(lora_r=4, lora_targets=["q_proj"]))


def test_lora_run_learns_keeps_the_base_and_saves_merged_model_and_adapter(tmp_path):
    source = reverse_task(tmp_path / "rev.jsonl")
    base = run_sft(source, tmp_path / "base", steps=100).run_dir  # a weak start
    assert held_out_exact_match(base, source) < 0.5
    result = run_sft(source, tmp_path / "lora", steps=300,
                     train={"init_from": str(base), "lr": 1e-2, "min_lr": 1e-3},
                     finetune={"lora_r": 8, "lora_alpha": 16})
    assert result.last_eval["val_token_accuracy"] > 0.9
    assert held_out_exact_match(tmp_path / "lora", source) >= 0.8
    adapter = tmp_path / "lora" / "best" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and set(config["target_modules"]) == {"c_attn", "c_proj", "c_fc"}
    assert (adapter / "adapter_model.safetensors").is_file()
    # the checkpoint's frozen base weights are the base run's, untouched
    ckpt = checkpoint.list_checkpoints(tmp_path / "lora")[-1]
    from safetensors.torch import load_file

    saved = load_file(ckpt / "model.safetensors")
    base_model = load_run(base).model
    key = "base_model.model.transformer.h.0.attn.c_attn.base_layer.weight"
    torch.testing.assert_close(saved[key], base_model.transformer.h[0].attn.c_attn.weight)
    # both ways of opening the run give a plain GPT that answers like the adapted one
    last = load_run(tmp_path / "lora", which="last").model
    best = load_run(tmp_path / "lora").model
    assert isinstance(last, GPT) and isinstance(best, GPT)
    x = torch.randint(0, base_model.config.vocab_size, (2, 16))
    assert not torch.allclose(best(x)[0], base_model(x)[0], atol=1e-3)
