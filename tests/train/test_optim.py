from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gptkit.config import TrainConfig
from gptkit.errors import GptkitError
from gptkit.train.optim import build_optimizer, param_groups


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 2 * d)
        self.c_proj = nn.Linear(2 * d, d)


class Transformer(nn.Module):
    def __init__(self, vocab: int, d: int, block: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block, d)
        self.h = nn.ModuleList([Block(d)])
        self.ln_f = nn.LayerNorm(d)


class TinyLM(nn.Module):
    """GPT-2-shaped names: tied wte/lm_head, wpe, one block, ln_f."""

    def __init__(self, vocab: int = 11, d: int = 8, block: int = 6, head_first: bool = False):
        super().__init__()
        if head_first:  # register the head before the embedding it is tied to
            self.lm_head = nn.Linear(d, vocab, bias=False)
        self.transformer = Transformer(vocab, d, block)
        if not head_first:
            self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = self.transformer
        x = t.wte(idx) + t.wpe(torch.arange(idx.shape[1]))
        b = t.h[0]
        assert isinstance(b, Block)
        x = x + b.c_proj(F.gelu(b.c_fc(b.ln_1(x))))
        logits = self.lm_head(t.ln_f(x))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


DECAY = {"transformer.h.0.c_fc.weight", "transformer.h.0.c_proj.weight"}
NO_DECAY = {
    "transformer.wte.weight", "transformer.wpe.weight",
    "transformer.h.0.ln_1.weight", "transformer.h.0.ln_1.bias",
    "transformer.h.0.c_fc.bias", "transformer.h.0.c_proj.bias",
    "transformer.ln_f.weight", "transformer.ln_f.bias",
}


def test_groups_hold_the_right_names() -> None:
    decay, no_decay = param_groups(TinyLM(), 0.1)
    assert set(decay["param_names"]) == DECAY
    assert set(no_decay["param_names"]) == NO_DECAY
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])


def test_tied_weight_is_an_embedding_even_when_the_head_comes_first() -> None:
    model = TinyLM(head_first=True)
    decay, no_decay = param_groups(model, 0.1)
    ids = [id(p) for p in no_decay["params"]]
    assert id(model.transformer.wte.weight) in ids
    assert id(model.lm_head.weight) not in [id(p) for p in decay["params"]]
    assert len(decay["params"]) == 2


def test_every_trainable_parameter_appears_exactly_once() -> None:
    model = TinyLM()
    model.transformer.wpe.weight.requires_grad_(False)  # frozen: left out
    groups = param_groups(model, 0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    names = [n for g in groups for n in g["param_names"]]
    assert len(ids) == len(set(ids)) == len(names)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert set(ids) == trainable
    assert "transformer.wpe.weight" not in names
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )


def test_model_without_linear_layers_has_one_group() -> None:
    groups = param_groups(nn.Sequential(nn.Embedding(5, 3), nn.LayerNorm(3)), 0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "rmsprop", "adagrad"])
def test_every_optimizer_builds_and_steps(name: str) -> None:
    torch.manual_seed(0)
    model = TinyLM()
    cfg = TrainConfig(optimizer=name, lr=1e-2, weight_decay=0.1)
    opt = build_optimizer(model, cfg, "cpu")
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    # Adam(W) runs torch's fused CPU kernel, the others the multi-tensor path
    assert opt.defaults["fused" if name in ("adamw", "adam") else "foreach"] is True
    before = [p.detach().clone() for p in model.parameters()]
    idx = torch.randint(0, 11, (2, 6))
    model(idx, idx).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert model.lm_head.weight is model.transformer.wte.weight


def test_adam_settings_and_fused_kernels() -> None:
    cfg = TrainConfig(optimizer="adamw", lr=3e-4, beta1=0.8, beta2=0.95, eps=1e-6)
    opt = build_optimizer(TinyLM(), cfg, "cpu")
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.8, 0.95) and opt.defaults["eps"] == 1e-6
    assert opt.defaults["lr"] == 3e-4 and opt.defaults["fused"] is True
    assert build_optimizer(TinyLM(), cfg, "cuda").defaults["fused"] is True
    mps = build_optimizer(TinyLM(), cfg, "mps").defaults  # the flag choice only
    assert mps["foreach"] is True and not mps["fused"]
    assert isinstance(build_optimizer(TinyLM(), TrainConfig(optimizer="adam"), "cpu"),
                      torch.optim.Adam)


def test_sgd_and_rmsprop_use_momentum() -> None:
    for name in ("sgd", "rmsprop"):
        opt = build_optimizer(TinyLM(), TrainConfig(optimizer=name, momentum=0.7), "cpu")
        assert opt.defaults["momentum"] == 0.7


def test_unknown_optimizer_is_an_error() -> None:
    with pytest.raises(GptkitError, match="train.optimizer must be adamw.*'lion'"):
        build_optimizer(TinyLM(), TrainConfig(optimizer="lion"), "cpu")


def test_no_trainable_parameters_is_an_error() -> None:
    model = TinyLM()
    model.requires_grad_(False)
    with pytest.raises(GptkitError, match="no trainable"):
        build_optimizer(model, TrainConfig(), "cpu")


# --- Muon (hidden matrices) + AdamW (the rest) ------------------------------------------------


def _gpt(**options: object) -> nn.Module:
    from gptkit.config import ModelConfig
    from gptkit.model import GPT

    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11,
                           **options))  # type: ignore[arg-type]


def _step(model: nn.Module, opt: torch.optim.Optimizer, seed: int = 0) -> None:
    idx = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(seed))
    model(idx, idx)[1].backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def test_muon_takes_the_block_matrices_and_adamw_the_rest() -> None:
    model = _gpt(tie_embeddings=False)
    opt = build_optimizer(model, TrainConfig(optimizer="muon", momentum=0.95), "cpu")
    assert isinstance(opt, torch.optim.Optimizer)
    muon = {n for g in opt.muon.param_groups for n in g["param_names"]}
    adamw = {n for g in opt.adamw.param_groups for n in g["param_names"]}
    assert muon == {f"transformer.h.{i}.{m}.weight" for i in range(2)
                    for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert {"transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight",
            "transformer.ln_f.weight", "transformer.h.0.attn.c_attn.bias"} <= adamw
    assert muon.isdisjoint(adamw)
    assert len(muon | adamw) == len(list(model.parameters()))
    # the trainer's view: every group, each carrying its own lr_scale and weight decay
    assert opt.param_groups == opt.muon.param_groups + opt.adamw.param_groups
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.1, 0.0]
    assert opt.muon.defaults["adjust_lr_fn"] == "match_rms_adamw"
    assert opt.muon.defaults["momentum"] == 0.95 and opt.adamw.defaults["fused"]
    for group in opt.param_groups:  # what the schedule does each step reaches both
        group["lr"] = 0.0
    before = [p.detach().clone() for p in model.parameters()]
    _step(model, opt)
    after = list(model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    for group in opt.param_groups:
        group["lr"] = 1e-2
    _step(model, opt)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_muon_update_is_scaled_to_adamw_size_from_one_learning_rate() -> None:
    """match_rms_adamw: the update's RMS is 0.2 x lr, whatever the matrix's shape."""
    model = _gpt()
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-2, weight_decay=0.0),
                          "cpu")
    matrices = {n: p for n, p in model.named_parameters() if n.startswith("transformer.h.")
                and p.dim() == 2}
    before = {n: p.detach().clone() for n, p in matrices.items()}
    _step(model, opt)
    for name, p in matrices.items():
        rms = (p.detach() - before[name]).pow(2).mean().sqrt().item()
        assert rms == pytest.approx(0.2 * 1e-2, rel=0.35), name


def test_muon_state_dict_round_trip_continues_identically() -> None:
    model, twin = _gpt(), _gpt()
    cfg = TrainConfig(optimizer="muon", lr=1e-2)
    opt, twin_opt = build_optimizer(model, cfg, "cpu"), build_optimizer(twin, cfg, "cpu")
    _step(model, opt, 1)
    _step(twin, twin_opt, 1)
    saved = copy.deepcopy(opt.state_dict())  # as if read back from optimizer.pt
    assert set(saved) == {"muon", "adamw"}
    fresh = build_optimizer(twin, cfg, "cpu")
    fresh.load_state_dict(saved)
    for group in fresh.param_groups:
        group["lr"] = 5e-3  # the loaded groups are the ones the trainer sets
    for group in opt.param_groups:
        group["lr"] = 5e-3
    _step(model, opt, 2)
    _step(twin, fresh, 2)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError):
        fresh.load_state_dict(build_optimizer(twin, TrainConfig(), "cpu").state_dict())


def test_muon_with_layer_lr_scales_and_without_block_matrices() -> None:
    model = _gpt()
    scale = lambda name: 0.5 if ".h.0." in name else 1.0  # noqa: E731
    opt = build_optimizer(model, TrainConfig(optimizer="muon"), "cpu", scale)
    assert sorted(g["lr_scale"] for g in opt.muon.param_groups) == [0.5, 1.0]
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith("transformer.h."))
    with pytest.raises(GptkitError, match="no trainable weight matrices"):
        build_optimizer(model, TrainConfig(optimizer="muon"), "cpu")


def test_muon_with_lora_is_a_config_error() -> None:
    from gptkit.config import load_config

    with pytest.raises(GptkitError, match="muon does not train LoRA"):
        load_config("shakespeare-char", ["train.optimizer=muon", "finetune.lora_r=4"])
