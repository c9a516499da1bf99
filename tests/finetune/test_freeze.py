from __future__ import annotations

import pytest
import torch

from gptkit.config import FinetuneConfig, ModelConfig
from gptkit.finetune import freeze
from gptkit.model import GPT
from gptkit.train.trainer import Trainer
from tests.finetune.tasks import reverse_task, sft_config


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_depth_and_layer_lr_decay():
    cfg = FinetuneConfig(layer_lr_decay=0.5)
    assert freeze.depth("transformer.wte.weight", 4) == 0
    lora_name = "base_model.model.transformer.h.2.attn.c_attn.lora_A.default.weight"
    assert freeze.depth(lora_name, 4) == 3
    assert freeze.depth("transformer.ln_f.weight", 4) == 5
    assert freeze.lr_scale("transformer.ln_f.weight", cfg, 4) == 1.0
    assert freeze.lr_scale("transformer.h.3.mlp.c_fc.weight", cfg, 4) == 0.5
    assert freeze.lr_scale("transformer.h.0.mlp.c_fc.weight", cfg, 4) == 0.5**4
    assert freeze.lr_scale("transformer.wpe.weight", cfg, 4) == 0.5**5


def test_gradual_unfreezing_releases_the_top_frozen_block_first():
    cfg = FinetuneConfig(freeze_layers=3, unfreeze_every=10)
    assert [freeze.frozen_blocks(cfg, s) for s in (0, 9, 10, 25, 30, 99)] == [3, 3, 2, 1, 0, 0]
    model = GPT(ModelConfig(n_layer=4, n_head=2, n_embd=16, block_size=8, vocab_size=11))
    learnable = freeze.ever_learnable(model, cfg, 4)
    freeze.apply_freezing(model, cfg, 4, 10, learnable=learnable)
    trains = {n.split(".")[2] for n, p in model.named_parameters()
              if n.startswith("transformer.h.") and p.requires_grad}
    assert trains == {"2", "3"}


def test_frozen_parameters_do_not_change_and_the_others_do(tmp_path):
    source = reverse_task(tmp_path / "rev.jsonl", n=60)
    cfg = sft_config(source, 1, finetune={"freeze_embeddings": True, "freeze_layers": 1})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    before = _weights(trainer.model)
    for _ in range(3):
        trainer._train_step()
        trainer.step += 1
    after = _weights(trainer.model)
    for name in before:
        changed = not torch.equal(before[name], after[name])
        frozen = ".wte." in name or ".wpe." in name or ".h.0." in name
        assert changed != frozen, name


def test_gradual_unfreezing_in_training(tmp_path):
    source = reverse_task(tmp_path / "rev.jsonl", n=60)
    cfg = sft_config(source, 1, finetune={"freeze_layers": 2, "unfreeze_every": 2})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    start = _weights(trainer.model)
    history = []
    for _ in range(4):
        trainer._train_step()
        trainer.step += 1
        now = _weights(trainer.model)
        history.append({b: not torch.equal(now[f"transformer.h.{b}.attn.c_attn.weight"],
                                           start[f"transformer.h.{b}.attn.c_attn.weight"])
                        for b in (0, 1)})
    # steps 0-1: both frozen; steps 2-3: block 1 released; block 0 from step 4
    assert history == [{0: False, 1: False}, {0: False, 1: False},
                       {0: False, 1: True}, {0: False, 1: True}]


def test_layer_lr_decay_sets_each_groups_rate(tmp_path):
    source = reverse_task(tmp_path / "rev.jsonl", n=60)
    cfg = sft_config(source, 1, finetune={"layer_lr_decay": 0.5},
                     train={"warmup_steps": 0, "schedule": "constant", "lr": 1e-3})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    trainer._train_step()
    for group in trainer.optimizer.param_groups:
        for name in group["param_names"]:
            expected = 1e-3 * freeze.lr_scale(name, cfg.finetune, 2)
            assert group["lr"] == pytest.approx(expected), name
    assert {round(g["lr_scale"], 4) for g in trainer.optimizer.param_groups} == {
        1.0, 0.5, 0.25, 0.125}


def test_continued_pretraining_recipe_from_the_cli(tmp_path, capsys, data_dir):
    from tests.conftest import TINY
    from tests.test_cli import run_cli

    base = tmp_path / "base"
    sets = [a for s in TINY for a in ("--set", s)]
    assert run_cli(capsys, "train", "--out", str(base), "--no-progress", *sets)[0] == 0
    code, out, err = run_cli(
        capsys, "train", "--recipe", "shakespeare-continue", "--init-from", str(base),
        "--out", str(tmp_path / "more"), "--no-progress", "--set", "train.max_steps=4",
        "--set", "train.eval_interval=4", "--set", "finetune.unfreeze_every=2",
        "--set", "finetune.freeze_layers=1", "--set", "train.micro_batch_size=4")
    assert code == 0, err
    from gptkit.run import load_run

    old, new = load_run(base).model, load_run(tmp_path / "more", which="last").model
    assert torch.equal(old.transformer.wte.weight, new.transformer.wte.weight)
    assert not torch.equal(old.transformer.h[1].attn.c_attn.weight,
                           new.transformer.h[1].attn.c_attn.weight)
