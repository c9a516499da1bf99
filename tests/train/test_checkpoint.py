from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from gptkit import weights
from gptkit.config import TrainConfig
from gptkit.errors import GptkitError
from gptkit.train import checkpoint as ck
from gptkit.train.optim import build_optimizer

VOCAB, BLOCK = 13, 6


class Transformer(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, d)
        self.wpe = nn.Embedding(BLOCK, d)
        self.drop = nn.Dropout(0.2)
        self.c_fc = nn.Linear(d, 2 * d)
        self.c_proj = nn.Linear(2 * d, d)
        self.ln_f = nn.LayerNorm(d)


class TinyLM(nn.Module):
    """GPT-2-shaped names (tied wte/lm_head, Linear, LayerNorm) and dropout, which uses RNG."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.transformer = Transformer(d)
        self.lm_head = nn.Linear(d, VOCAB, bias=False)
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        t = self.transformer
        x = t.drop(t.wte(idx) + t.wpe(torch.arange(idx.shape[1])))
        x = x + t.c_proj(F.gelu(t.c_fc(x)))
        logits = self.lm_head(t.ln_f(x))
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    w = torch.randint(0, VOCAB, (4, BLOCK + 1), generator=g)
    return w[:, :-1], w[:, 1:]


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    model.train()
    for step in steps:
        x, y = batch(step)
        model(x, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def make(optimizer: str = "adamw", seed: int = 0) -> tuple[TinyLM, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = TinyLM()
    return model, build_optimizer(model, TrainConfig(optimizer=optimizer, lr=1e-2), "cpu")


def tensors_of(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for k in sorted(obj, key=str) for t in tensors_of(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors_of(v)]
    return []


def save(run: Path, step: int, keep: int = 5, **state: Any) -> Path:
    model, opt = make()
    return ck.save_checkpoint(run, step, model, opt, {"step": step, **state}, keep=keep)


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd", "rmsprop", "adagrad"])
def test_resume_continues_bit_for_bit(tmp_path: Path, optimizer: str) -> None:
    model, opt = make(optimizer)
    train(model, opt, range(3))
    state = {"step": 3, "tokens_seen": 72, "rng": ck.rng_state(), "loader": {"position": 3}}
    path = ck.save_checkpoint(tmp_path, 3, model, opt, state, keep=2)
    train(model, opt, range(3, 6))  # the uninterrupted run

    resumed, resumed_opt = make(optimizer, seed=1)  # different initial weights
    loaded = ck.load_checkpoint(path, resumed, resumed_opt)
    assert loaded == json.loads(json.dumps(state))  # the caller's state, nothing added
    ck.set_rng_state(loaded["rng"])
    train(resumed, resumed_opt, range(3, 6))

    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    want = tensors_of(opt.state_dict()["state"])
    got = tensors_of(resumed_opt.state_dict()["state"])
    assert len(want) == len(got) > 0
    assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))


def test_tied_weights_are_saved_once_and_stay_tied(tmp_path: Path) -> None:
    model, _ = make()
    weights.save_weights(model, tmp_path / "w.safetensors")
    with safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        names, tied = set(f.keys()), json.loads(f.metadata()["gptkit_tied"])
    assert "lm_head.weight" not in names and "transformer.wte.weight" in names
    assert tied == {"lm_head.weight": "transformer.wte.weight"}
    other, _ = make(seed=1)
    weights.load_weights(other, tmp_path / "w.safetensors")
    assert other.lm_head.weight is other.transformer.wte.weight
    assert torch.equal(other.lm_head.weight, model.lm_head.weight)
    assert not list(tmp_path.glob(".tmp-*"))


def test_wrapped_model_saves_plain_names(tmp_path: Path) -> None:
    model, _ = make()
    weights.save_weights(nn.DataParallel(model), tmp_path / "w.safetensors")
    with safe_open(str(tmp_path / "w.safetensors"), "pt") as f:
        names = list(f.keys())
    assert names and all(not k.startswith("module.") for k in names)


def test_weights_that_do_not_fit_are_an_error(tmp_path: Path) -> None:
    model, _ = make()
    weights.save_weights(model, tmp_path / "w.safetensors")
    bigger = TinyLM(d=16)
    with pytest.raises(GptkitError, match="shape"):
        weights.load_weights(bigger, tmp_path / "w.safetensors")
    with pytest.raises(GptkitError, match="does not have"):
        weights.load_weights(nn.Sequential(nn.Linear(2, 2)), tmp_path / "w.safetensors")
    with pytest.raises(GptkitError, match="lacks"):
        weights.load_weights(nn.ModuleDict({"transformer": TinyLM().transformer,
                                       "extra": nn.Linear(2, 2)}), tmp_path / "w.safetensors")
    with pytest.raises(GptkitError, match="not found"):
        weights.load_weights(model, tmp_path / "missing.safetensors")


def test_layout_and_state_json(tmp_path: Path) -> None:
    path = save(tmp_path, 500, best_val_loss=1.5)
    assert path == tmp_path / "checkpoints" / "step-000500"
    assert sorted(p.name for p in path.iterdir()) == [
        "model.safetensors", "optimizer.pt", "state.json"
    ]
    state = json.loads((path / "state.json").read_text())
    assert state["step"] == 500 and state["best_val_loss"] == 1.5
    assert set(state["checksums"]) == {"model.safetensors", "optimizer.pt"}
    assert ck.verify_checkpoint(path) is None
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_keeps_the_newest_k_and_ignores_temp_folders(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40):
        save(tmp_path, step, keep=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-000030", "step-000040"]
    leftover = tmp_path / "checkpoints" / ".tmp-step-000050-12345"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"partial")
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-000030", "step-000040"]
    assert ck.latest_valid_checkpoint(tmp_path) == (tmp_path / "checkpoints" / "step-000040", [])
    save(tmp_path, 50, keep=3)
    assert not leftover.exists()  # the next save clears what a crash left behind
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == [
        "step-000030", "step-000040", "step-000050"
    ]


def test_saving_an_earlier_step_drops_the_abandoned_later_ones(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        save(tmp_path, step)
    save(tmp_path, 20, note="again")  # same step: replaced
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-000010", "step-000020"]
    assert json.loads((ck.list_checkpoints(tmp_path)[-1] / "state.json").read_text())["note"] == (
        "again"
    )


def truncate(path: Path) -> None:
    file = path / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-100])


def flip_byte(path: Path) -> None:
    file = path / "optimizer.pt"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


def garble_state(path: Path) -> None:
    (path / "state.json").write_text('{"step": 2, "checks')


CORRUPTIONS = {
    "truncated": (truncate, "truncated"),
    "checksum": (flip_byte, "checksum"),
    "missing file": (lambda p: (p / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    "bad state.json": (garble_state, "not valid JSON"),
    "no state.json": (lambda p: (p / "state.json").unlink(), "state.json is missing"),
    "no checksums": (lambda p: (p / "state.json").write_text('{"step": 2}'), "no checksum"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_newest_falls_back_to_the_previous(tmp_path: Path, kind: str) -> None:
    first = save(tmp_path, 1)
    newest = save(tmp_path, 2)
    damage, words = CORRUPTIONS[kind]
    damage(newest)
    problem = ck.verify_checkpoint(newest)
    assert problem is not None and words in problem
    path, warnings = ck.latest_valid_checkpoint(tmp_path)
    assert path == first
    assert len(warnings) == 1 and "step-000002" in warnings[0] and words in warnings[0]
    assert ck.load_checkpoint(path, *make())["step"] == 1


def save_resumable(run: Path, step: int) -> Path:
    """A checkpoint holding every key the trainer's resume reads."""
    state = {"tokens_seen": 96 * step, "best_val_loss": 2.5, "bad_evals": 0,
             "elapsed_s": 1.5, "loader": {"seed": 1, "position": step},
             "rng": [ck.rng_state()], "world_size": 1}
    return save(run, step, **state)  # with "step": step


def edit_state(path: Path, old: str, new: str, *, keep_digest: bool = True) -> None:
    """Replace text in state.json; without `keep_digest` it is an old checkpoint's (no
    state_sha256, as written before the state had a checksum)."""
    file = path / "state.json"
    text = file.read_text()
    assert old in text
    text = text.replace(old, new, 1)
    if not keep_digest:
        state = json.loads(text)
        del state["state_sha256"]
        text = json.dumps(state, indent=1)
    file.write_text(text)


def flip_a_digit_bit(path: Path) -> None:
    """One bit of one digit of tokens_seen (3840 -> 3841), the checksum left as it was."""
    file = path / "state.json"
    data = bytearray(file.read_bytes())
    at = data.index(b'"tokens_seen": 3840') + len(b'"tokens_seen": 384')
    data[at] ^= 0x01
    file.write_bytes(bytes(data))
    assert b'"tokens_seen": 3841' in data


STATE_DAMAGE = {
    "step 40 -> 35": (lambda p: edit_state(p, '"step": 40', '"step": 35'), "its checksum"),
    "a flipped digit": (flip_a_digit_bit, "its checksum"),
    "no checksum, step 35": (
        lambda p: edit_state(p, '"step": 40', '"step": 35', keep_digest=False),
        "'step' must be the folder's step 40"),
    "no checksum, step forty": (
        lambda p: edit_state(p, '"step": 40', '"step": "forty"', keep_digest=False),
        "'step' must be"),
    "no checksum, no rng": (
        lambda p: edit_state(p, '"rng"', '"rng_gone"', keep_digest=False), "'rng' is missing"),
    "no checksum, loader position -1": (
        lambda p: edit_state(p, '"position": 40', '"position": -1', keep_digest=False),
        "'loader' must be"),
    "no checksum, tokens a float": (
        lambda p: edit_state(p, '"tokens_seen": 3840', '"tokens_seen": 3840.5',
                             keep_digest=False), "'tokens_seen' must be"),
}


@pytest.mark.parametrize("kind", list(STATE_DAMAGE))
def test_changed_or_ill_typed_state_falls_back_to_the_previous(tmp_path: Path, kind: str) -> None:
    first = save_resumable(tmp_path, 30)
    newest = save_resumable(tmp_path, 40)
    assert ck.verify_checkpoint(newest, ck.resume_state_problem) is None
    damage, words = STATE_DAMAGE[kind]
    damage(newest)
    path, warnings = ck.latest_valid_checkpoint(tmp_path, ck.resume_state_problem)
    assert path == first
    assert len(warnings) == 1 and "step-000040" in warnings[0] and words in warnings[0], warnings
    assert ck.load_checkpoint(path, *make())["step"] == 30


def test_state_json_holds_a_checksum_of_itself(tmp_path: Path) -> None:
    path = save_resumable(tmp_path, 40)
    state = json.loads((path / "state.json").read_text())
    assert len(state["state_sha256"]) == 64
    assert "state_sha256" not in ck.load_checkpoint(path, *make())  # bookkeeping, taken out
    with pytest.raises(GptkitError, match="reserved"):
        save(tmp_path, 50, state_sha256="x")


def test_old_checkpoints_without_the_state_checksum_still_resume(tmp_path: Path) -> None:
    save_resumable(tmp_path, 30)
    newest = save_resumable(tmp_path, 40)
    edit_state(newest, '"step": 40', '"step": 40', keep_digest=False)
    assert "state_sha256" not in (newest / "state.json").read_text()
    assert ck.latest_valid_checkpoint(tmp_path, ck.resume_state_problem) == (newest, [])
    assert ck.load_checkpoint(newest, *make())["tokens_seen"] == 3840


def test_all_corrupt_or_none_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(GptkitError, match="no checkpoint.*yet.*--resume"):
        ck.latest_valid_checkpoint(tmp_path)
    truncate(save(tmp_path, 1))
    flip_byte(save(tmp_path, 2))
    with pytest.raises(GptkitError, match="step-000002.*checksum.*step-000001.*truncated"):
        ck.latest_valid_checkpoint(tmp_path)


def test_damaged_optimizer_file_is_an_error_on_load(tmp_path: Path) -> None:
    path = save(tmp_path, 1)
    file = path / "optimizer.pt"
    file.write_bytes(file.read_bytes()[:50])
    with pytest.raises(GptkitError, match="optimizer"):
        ck.load_checkpoint(path, *make())


def test_optimizer_of_another_kind_is_an_error_on_load(tmp_path: Path) -> None:
    path = save(tmp_path, 1)
    model, _ = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # one group where two were saved
    with pytest.raises(GptkitError, match="does not fit"):
        ck.load_checkpoint(path, model, opt)


def test_save_best_replaces_atomically(tmp_path: Path) -> None:
    model, _ = make()
    ck.save_best(tmp_path, model, {"step": 1, "val_loss": 2.0})
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(3.0)
    ck.save_best(tmp_path, model, {"step": 2, "val_loss": 1.0})
    assert json.loads((tmp_path / "best" / "config.json").read_text())["step"] == 2
    other, _ = make(seed=1)
    weights.load_weights(other, tmp_path / "best" / "model.safetensors")
    assert torch.equal(other.transformer.ln_f.weight, model.transformer.ln_f.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def draws() -> tuple[list[float], list[float], list[float]]:
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.standard_normal(3).tolist() + np.random.rand(2).tolist(),
        torch.rand(4).tolist() + torch.randn(3).tolist(),
    )


def test_rng_state_round_trip() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached second gaussian behind in Python's generator
    np.random.standard_normal(1)  # and in NumPy's
    state = json.loads(json.dumps(ck.rng_state()))  # must survive state.json
    first = draws()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    ck.set_rng_state(state)
    assert draws() == first


def test_damaged_rng_state_is_an_error() -> None:
    state = ck.rng_state()
    state["numpy"]["keys"] = "AAAA"
    with pytest.raises(GptkitError, match="random"):
        ck.set_rng_state(state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_state_round_trip() -> None:
    torch.cuda.manual_seed(5)
    torch.rand(1, device="cuda")
    state = json.loads(json.dumps(ck.rng_state()))
    assert "cuda" in state
    first = torch.rand(5, device="cuda").cpu()
    torch.cuda.manual_seed(6)
    ck.set_rng_state(state)
    assert torch.equal(torch.rand(5, device="cuda").cpu(), first)
