"""gptkit.compress: int8 dynamic quantization (in memory, on disk, in the CLI) and pruning
(exact sparsity, permanent, written as a run every command reads)."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from safetensors import safe_open
from torch import nn

from gptkit import compress, ops
from gptkit.config import ModelConfig
from gptkit.errors import GptkitError
from gptkit.generation.text import sample_text
from gptkit.model import GPT
from gptkit.run import load_run
from tests.test_cli import expect_error, run_cli


@pytest.fixture(scope="module")
def fp32(tiny_run):
    return load_run(tiny_run)


def window(run, rows: int = 4) -> torch.Tensor:
    return torch.randint(0, run.tokenizer.vocab_size, (rows, run.config.model.block_size),
                         generator=torch.Generator().manual_seed(0))


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)[0]


# --- int8 ---------------------------------------------------------------------------------------
def test_int8_logits_are_close_to_fp32_and_the_original_is_untouched(fp32):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.ao's deprecation notices stay inside gptkit
        q = compress.quantize_int8(fp32.model)
        ids = window(fp32)
        got, want = logits(q, ids), logits(fp32.model, ids)
    assert compress.is_int8(q) and not compress.is_int8(fp32.model)
    assert isinstance(fp32.model.lm_head, nn.Linear)
    # observed on the 20-step tiny run (logits up to ~0.7): mean |difference| 0.0015, max
    # 0.08 (activations are quantized per tensor on the fly), loss difference 2e-4 nats
    assert (got - want).abs().mean() < 0.01
    assert (got - want).abs().max() < 0.25
    loss = torch.nn.functional.cross_entropy
    target = ids[:, 1:].flatten()
    assert abs(loss(got[:, :-1].flatten(0, 1), target) - loss(want[:, :-1].flatten(0, 1), target)
               ) < 0.01
    # the tie survives in value: the embedding is the LM head's int8 matrix, dequantized
    head = q.lm_head.weight().dequantize()
    assert torch.equal(q.transformer.wte.weight, head)
    assert (head - fp32.model.lm_head.weight).abs().max() < 0.01
    assert compress.quantize_int8(q) is q


def test_int8_model_generates(fp32):
    q = compress.quantize_int8(fp32.model)
    settings = fp32.config.sample.replace(max_new_tokens=20, min_new_tokens=20,
                                          temperature=0.0)
    text = sample_text(q, fp32.tokenizer, "ROMEO:", settings)[0]
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 20


def test_int8_export_loads_back_as_the_same_model(tiny_run, fp32, tmp_path):
    out = ops.export_int8(tiny_run, tmp_path / "int8")
    run = load_run(out)
    assert compress.is_int8(run.model)
    ids = window(fp32)
    assert torch.equal(logits(run.model, ids), logits(compress.quantize_int8(fp32.model), ids))
    info = json.loads((out / "best" / "config.json").read_text())
    assert info["quantization"] == "int8" and info["step"] == fp32.best()["step"]
    assert "Quantized to int8" in (out / "best" / "README.md").read_text()
    assert (out / "data.json").is_file() and (out / "environment.json").is_file()
    with safe_open(str(out / "best" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("transformer.h.0.mlp.c_fc.weight").dtype == torch.int8
    assert "transformer.wte.weight" not in keys and "lm_head.weight_scale" in keys
    size = (out / "best" / "model.safetensors").stat().st_size
    assert size < 0.5 * fp32.weights.stat().st_size
    with pytest.raises(GptkitError, match="--overwrite"):
        ops.export_int8(tiny_run, out)
    with pytest.raises(GptkitError, match="CPU"):
        load_run(out, device="meta")


def test_int8_round_trip_of_an_untied_model(tmp_path):
    config = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=11,
                         tie_embeddings=False)
    torch.manual_seed(0)
    model = GPT(config).eval()
    q = compress.quantize_int8(model)
    assert torch.equal(q.transformer.wte.weight, model.transformer.wte.weight)
    compress.save_int8(q, tmp_path / "w.safetensors")
    back = compress.load_int8(GPT(config), tmp_path / "w.safetensors")
    ids = torch.randint(0, 11, (2, 8))
    assert torch.equal(logits(back, ids), logits(q, ids))
    with pytest.raises(GptkitError, match="config does not match"):
        compress.load_int8(GPT(config.updated(n_embd=32)), tmp_path / "w.safetensors")


def test_cli_sample_eval_and_export_int8(tiny_run, capsys, tmp_path):
    code, out, err = run_cli(capsys, "sample", str(tiny_run), "--quantize", "int8",
                             "--prompt", "ROMEO:", "--max-new-tokens", "12", "--min-new-tokens",
                             "12", "--temperature", "0")
    assert code == 0, err
    assert out.startswith("ROMEO:") and len(out) == len("ROMEO:") + 12 + 1
    scores = {}
    for flags in ((), ("--quantize", "int8")):
        code, out, err = run_cli(capsys, "eval", str(tiny_run), "--json", *flags)
        assert code == 0, err
        scores[flags[-1] if flags else "fp32"] = json.loads(out)
    assert scores["int8"]["quantization"] == "int8" and scores["fp32"]["quantization"] is None
    # observed: the 20-step model's whole-split val loss moves by 2e-4 nats
    assert abs(scores["int8"]["loss"] - scores["fp32"]["loss"]) < 0.02
    exported = tmp_path / "int8"
    code, out, err = run_cli(capsys, "export", str(tiny_run), "--quantize", "int8",
                             "--out", str(exported))
    assert code == 0, err
    code, out, err = run_cli(capsys, "eval", str(exported), "--json")
    assert code == 0, err
    assert json.loads(out)["loss"] == scores["int8"]["loss"]
    code, out, err = run_cli(capsys, "sample", str(exported), "--max-new-tokens", "5")
    assert code == 0, err
    code, out, err = run_cli(capsys, "info", str(exported))
    assert code == 0, err
    assert "compressed   int8 weights (from " in out
    expect_error(capsys, "export", str(tiny_run), "--quantize", "int8", "--out", str(exported),
                 match="--overwrite")
    expect_error(capsys, "export", str(tiny_run), "--quantize", "int8", "--format", "hf",
                 "--out", str(tmp_path / "x"), match="--format hf")
    expect_error(capsys, "export", str(tiny_run), "--format", "gptkit",
                 "--out", str(tmp_path / "x"), match="--quantize int8")
    expect_error(capsys, "export", str(exported), "--out", str(tmp_path / "hf"),
                 match="fp32 run")
    expect_error(capsys, "prune", str(exported), "--method", "heads", "--amount", "0.5",
                 "--out", str(tmp_path / "p"), match="fp32 run")
    assert not (tmp_path / "x").exists() and not (tmp_path / "p").exists()
    expect_error(capsys, "train", "--init-from", str(exported), "--out", str(tmp_path / "t"),
                 match="int8 weights")


# --- pruning ------------------------------------------------------------------------------------
def linear_weights(model: GPT) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": m.weight.detach().clone()
            for name, m in compress._block_linears(model)}


def test_magnitude_pruning_is_exact_per_layer_and_permanent(fp32):
    model = copy.deepcopy(fp32.model)
    before = model.state_dict()
    report = compress.prune_magnitude(model, 0.3)
    after = model.state_dict()
    assert list(before) != [] and set(after) == set(before)
    assert not any(k.endswith(("_orig", "_mask")) for k in after)
    assert not any(m._forward_pre_hooks for m in model.modules())  # no pruning hooks left
    for name, weight in linear_weights(model).items():
        expected = round(0.3 * weight.numel())
        assert int((weight == 0).sum()) == expected, name
        assert report["layers"][name] == expected / weight.numel()
        kept = weight != 0  # the survivors are the largest, unchanged
        assert torch.equal(weight[kept], before[name][kept])
        assert before[name][~kept].abs().max() <= before[name][kept].abs().min()
    assert report["blocks"] == pytest.approx(0.3, abs=1e-3)
    assert torch.equal(after["transformer.wte.weight"], before["transformer.wte.weight"])
    assert model.lm_head.weight is model.transformer.wte.weight


def test_amounts_are_targets_so_pruning_again_changes_nothing(fp32):
    model = copy.deepcopy(fp32.model)
    for method, amount in (("magnitude", 0.4), ("heads", 0.5), ("mlp", 0.25)):
        first = compress.prune_model(model, method, amount)
        state = copy.deepcopy(model.state_dict())
        assert compress.prune_model(model, method, amount)["blocks"] == first["blocks"]
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_head_pruning_zeroes_whole_heads(fp32):
    model = copy.deepcopy(fp32.model)
    original = copy.deepcopy(model)
    c, n_head = model.config.n_embd, model.config.n_head
    hd = c // n_head
    report = compress.prune_heads(model, 0.5)  # 2 of the 4 heads (2 layers x 2 heads)
    assert report["heads"] == {"zero": 2, "of": 4}
    assert report["mlp_channels"]["zero"] == 0
    zero_heads = 0
    for block, old in zip(model.transformer.h, original.transformer.h, strict=True):
        w = block.attn.c_attn.weight.view(3, n_head, hd, c)
        proj = block.attn.c_proj.weight.view(c, n_head, hd)
        for h in range(n_head):
            if (w[:, h] == 0).all():
                zero_heads += 1
                assert (proj[:, h] == 0).all()
            else:  # an unpruned head is untouched
                assert torch.equal(w[:, h], old.attn.c_attn.weight.view(3, n_head, hd, c)[:, h])
                assert torch.equal(proj[:, h], old.attn.c_proj.weight.view(c, n_head, hd)[:, h])
    assert zero_heads == 2
    assert report["blocks"] == pytest.approx(2 * (4 * c * hd) / (2 * 12 * c * c))
    assert set(model.state_dict()) == set(original.state_dict())
    assert torch.isfinite(logits(model, window(fp32))).all()


def test_mlp_pruning_zeroes_whole_channels_and_handles_swiglu(fp32):
    model = copy.deepcopy(fp32.model)
    report = compress.prune_mlp(model, 0.3)
    channels = 2 * 4 * model.config.n_embd
    assert report["mlp_channels"] == {"zero": round(0.3 * channels), "of": channels}
    for block in model.transformer.h:
        rows = (block.mlp.c_fc.weight == 0).all(dim=1)
        assert torch.equal(rows, (block.mlp.c_proj.weight == 0).all(dim=0))
    torch.manual_seed(0)
    swiglu = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=8, vocab_size=11,
                             mlp="swiglu", bias=True)).eval()
    with torch.no_grad():
        for name, param in swiglu.named_parameters():
            if name.endswith("bias"):
                param.normal_()  # GPT-2 initialises biases to zero
    hidden = swiglu.transformer.h[0].mlp.c_proj.in_features
    report = compress.prune_mlp(swiglu, 0.25)
    assert report["mlp_channels"] == {"zero": round(0.25 * 2 * hidden), "of": 2 * hidden}
    for block in swiglu.transformer.h:
        fc = block.mlp.c_fc
        gate, up = (fc.weight == 0).all(dim=1).chunk(2)
        assert torch.equal(gate, up) and torch.equal(gate, (fc.bias == 0).chunk(2)[0])


def test_bad_amounts_and_methods_are_one_line_errors(fp32):
    model = copy.deepcopy(fp32.model)
    for amount in (0, 1, 1.5, -0.1, float("nan")):
        with pytest.raises(GptkitError, match="between 0 and 1"):
            compress.prune_magnitude(model, amount)
    with pytest.raises(GptkitError, match="prunes none"):
        compress.prune_heads(model, 0.1)  # 0.4 of 4 heads
    with pytest.raises(GptkitError, match="all 4 heads"):
        compress.prune_heads(model, 0.9)
    with pytest.raises(GptkitError, match="magnitude, heads, mlp"):
        compress.prune_model(model, "random", 0.3)
    with pytest.raises(GptkitError, match="prune the fp32"):
        compress.prune_magnitude(compress.quantize_int8(model), 0.3)


def test_cli_prune_writes_a_run_every_command_reads(tiny_run, fp32, capsys, tmp_path):
    out = tmp_path / "pruned"
    code, text, err = run_cli(capsys, "prune", str(tiny_run), "--method", "magnitude",
                              "--amount", "0.5", "--out", str(out))
    assert code == 0, err
    assert "50.0% of the blocks' linear weights are zero" in text
    run = load_run(out)
    assert set(run.model.state_dict()) == set(fp32.model.state_dict())
    with safe_open(str(out / "best" / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    with safe_open(str(fp32.weights), "pt") as f:
        assert saved == set(f.keys())
    assert compress.sparsity(run.model)["blocks"] == pytest.approx(0.5, abs=1e-3)
    info = json.loads((out / "best" / "config.json").read_text())
    assert info["pruned"]["method"] == "magnitude" and info["pruned"]["amount"] == 0.5
    assert "Pruned from" in (out / "best" / "README.md").read_text()
    code, text, err = run_cli(capsys, "info", str(out))
    assert code == 0, err
    assert "pruned (magnitude, amount 0.5): 50.0% of the blocks' weights zero" in text
    assert (out / "data.json").is_file()
    code, text, err = run_cli(capsys, "eval", str(out), "--json")
    assert code == 0, err
    code, fp32_text, _ = run_cli(capsys, "eval", str(tiny_run), "--json")
    assert json.loads(text)["loss"] != json.loads(fp32_text)["loss"]
    code, text, err = run_cli(capsys, "sample", str(out), "--max-new-tokens", "5")
    assert code == 0, err
    code, text, err = run_cli(capsys, "export", str(out), "--quantize", "int8",
                              "--out", str(tmp_path / "pruned-int8"))
    assert code == 0, err
    assert compress.sparsity(load_run(tmp_path / "pruned-int8").model)["blocks"] >= 0.5
    code, text, err = run_cli(capsys, "prune", str(out), "--method", "heads", "--amount",
                              "0.5", "--out", str(out), "--overwrite")
    assert code == 2 and "the run itself" in err
    expect_error(capsys, "prune", str(tiny_run), "--method", "heads", "--amount", "0.5",
                 "--out", str(out), match="--overwrite")
    code, text, err = run_cli(capsys, "prune", str(tiny_run), "--method", "heads",
                              "--amount", "0.5", "--out", str(out), "--overwrite")
    assert code == 0 and "2 of 4 attention heads" in text, err
    assert load_run(out).best()["pruned"]["method"] == "heads"
    for amount in ("0", "1.2"):
        expect_error(capsys, "prune", str(tiny_run), "--method", "mlp", "--amount", amount,
                     "--out", str(tmp_path / "bad"), match="--amount must be")
    expect_error(capsys, "prune", str(tiny_run), "--method", "heads", "--amount", "0.1",
                 "--out", str(tmp_path / "bad"), match="prunes none")
    assert not (tmp_path / "bad").exists()
    code, _, err = run_cli(capsys, "prune", str(tiny_run), "--method", "random", "--amount",
                           "0.3", "--out", str(tmp_path / "bad"))
    assert code == 2 and "invalid choice" in err


def test_help_explains_compression():
    import subprocess
    import sys

    for command, words in (("prune", ("--method", "--amount", "permanent")),
                           ("export", ("--quantize", "int8", "best/config.json")),
                           ("eval", ("--quantize",)), ("sample", ("--quantize",))):
        text = subprocess.run([sys.executable, "-m", "gptkit", command, "--help"],
                              capture_output=True, text=True, check=True).stdout
        assert all(w in text for w in words), (command, text)
