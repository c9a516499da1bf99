"""`gptkit info`: parameters per component, FLOPs, memory, data and best metrics."""

from __future__ import annotations

import json

import pytest
import torch

from gptkit.config import load_config
from gptkit.memory import human_bytes, training_memory
from gptkit.model import GPT
from gptkit.runinfo import describe, parameter_breakdown
from tests.test_cli import run_cli


def test_components_add_up_to_the_parameter_count():
    cfg = load_config("shakespeare-char", ["model.bias=true"])
    with torch.device("meta"):
        model = GPT.from_config(cfg.model, 65)
    parts = parameter_breakdown(model)
    assert sum(parts.values()) == model.num_params()
    c, n = cfg.model.n_embd, cfg.model.n_layer
    assert parts["attention"] == n * (4 * c * c + 4 * c)
    assert parts["MLP"] == n * (8 * c * c + 5 * c)
    assert parts["token embedding (tied output layer)"] == 65 * c


def test_components_add_up_with_the_architecture_options():
    cfg = load_config("shakespeare-char", [
        "model.pos_embedding=rope", "model.norm=rmsnorm", "model.qk_norm=true",
        "model.mlp=swiglu", "model.tie_embeddings=false"])
    with torch.device("meta"):
        model = GPT.from_config(cfg.model, 65)
    parts = parameter_breakdown(model)
    assert sum(parts.values()) == model.num_params()
    c, n = cfg.model.n_embd, cfg.model.n_layer
    assert parts["token embedding"] == parts["output layer"] == 65 * c
    assert parts["position embedding"] == 0 and parts["RMSNorms"] == (2 * n + 1) * c
    assert parts["attention"] == n * (4 * c * c + 2 * c // cfg.model.n_head)  # + q/k gains
    assert parts["MLP"] == n * 3 * c * 384  # SwiGLU, 384 wide
    info = describe(cfg, 65)
    assert info["model"]["options"] == [
        "rotary positions", "RMSNorm", "QK-norm", "SwiGLU MLP", "untied output layer"]
    assert describe(load_config("shakespeare-char"), 65)["model"]["options"] == []


def test_options_name_the_rotary_scaling_of_an_extended_context():
    cfg = load_config("shakespeare-char", [
        "model.pos_embedding=rope", "model.rope_scale=0.5", "model.rope_base=20000",
        "model.context_extension=interpolate"])
    assert describe(cfg, 65)["model"]["options"] == [
        "rotary positions (base 20000, scale 0.5)", "context extended (interpolate)"]


def test_describe_reports_memory_for_the_precision():
    cfg = load_config("shakespeare-char")
    fp32, bf16 = describe(cfg, 65), describe(cfg, 65, "bf16")
    assert fp32["memory"]["training"] == training_memory(cfg, 65).to_dict()
    assert bf16["memory"]["training"]["activations"] != fp32["memory"]["training"]["activations"]


def test_info_of_a_run_shows_everything(tiny_run, capsys):
    code, out, _ = run_cli(capsys, "info", str(tiny_run))
    assert code == 0
    for text in ("attention", "MLP", "FLOPs/token", "memory", "optimizer", "activations",
                 "inference", "tinyshakespeare", "best", "val loss", "perplexity", "trained on"):
        assert text in out, text
    code, out, _ = run_cli(capsys, "info", str(tiny_run), "--json")
    info = json.loads(out)
    assert info["memory"]["training"]["total"] > info["memory"]["inference_fp32_batch_1"]["total"]
    assert info["best"]["metrics"]["val_perplexity"] > 1
    # serving: the KV bytes of one row of full context, to size gptkit serve's pool
    kv = info["memory"]["inference_fp32_batch_1"]["kv_cache"]
    assert f"serving: {human_bytes(kv)} of KV cache per row" in run_cli(
        capsys, "info", str(tiny_run))[1]


def test_memory_plan_of_a_recipe_needs_no_data(capsys):
    """GPT-2's presets fix the vocabulary: the plan is printed offline, without its corpus."""
    code, out, _ = run_cli(capsys, "info", "--recipe", "gpt2-124m", "--world-size", "8",
                           "--precision", "bf16")
    assert code == 0 and "memory plan" in out and "8 processes" in out
    table = out[out.index("memory plan"):].splitlines()[2:]
    assert [line.split()[:3] for line in table] == [
        [s, w, ac] for s, w in (("none", "1"), ("ddp", "8"), ("fsdp", "8"), ("fsdp+offload", "8"))
        for ac in ("no", "yes")]
    code, out, _ = run_cli(capsys, "info", "--recipe", "gpt2-124m", "--world-size", "2",
                           "--json", "--set", "model.preset=gpt2-xl")
    plan = json.loads(out)["memory"]["plan"]
    assert plan["world_size"] == 2 and len(plan["rows"]) == 8
    assert plan["rows"][0]["total"] == training_memory(
        load_config("gpt2-124m", ["model.preset=gpt2-xl"]), 50257).total
    code, _, err = run_cli(capsys, "info", "--recipe", "gpt2-124m", "--world-size", "0")
    assert code == 2 and "--world-size must be >= 1" in err


def test_memory_plan_of_a_run(tiny_run, capsys):
    code, out, _ = run_cli(capsys, "info", str(tiny_run), "--world-size", "4")
    assert code == 0 and "memory plan  per process" in out and "fsdp+offload" in out
    assert "plan" not in describe(load_config("shakespeare-char"), 65)["memory"]


def test_memory_plan_marks_the_row_the_config_trains_with(capsys):
    def chosen(*args: str) -> list[tuple[str, bool]]:
        code, out, _ = run_cli(capsys, "info", "--world-size", "8", "--json", *args)
        assert code == 0
        rows = json.loads(out)["memory"]["plan"]["rows"]
        return [(r["strategy"], r["activation_checkpointing"]) for r in rows if r["chosen"]]

    assert chosen("--recipe", "gpt2-124m") == [("ddp", False)]  # auto, below 500M
    assert chosen("--recipe", "gpt2-124m", "--set", "model.preset=gpt2-large") == [
        ("fsdp", False)]
    assert chosen("--recipe", "gpt2-medium-fsdp") == [("fsdp", True)]
    assert chosen("--recipe", "gpt2-medium-fsdp", "--set", "dist.cpu_offload=true") == [
        ("fsdp+offload", True)]
    assert chosen("--recipe", "gpt2-124m", "--set", "dist.strategy=none") == []
    code, out, _ = run_cli(capsys, "info", "--recipe", "gpt2-medium-fsdp", "--world-size", "8")
    marked = [line.split()[:3] for line in out.splitlines() if line.endswith("<-")]
    assert marked == [["fsdp", "8", "yes"]]


def test_a_damaged_json_file_of_a_run_is_a_one_line_error(tiny_run, tmp_path):
    import shutil

    from gptkit.errors import GptkitError
    from gptkit.runinfo import run_info

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    (copy / "data.json").write_text('{"splits": ')
    with pytest.raises(GptkitError, match="data.json is damaged"):
        run_info(copy)
