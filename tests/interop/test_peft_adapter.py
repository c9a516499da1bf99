"""`gptkit export --adapter-only`: peft alone opens a LoRA run's adapter, and it computes
what gptkit's merged export computes. A tiny LoRA run trained for a few steps, no network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gptkit.cli import main
from gptkit.errors import GptkitError
from gptkit.interop.peft_adapter import export_adapter
from gptkit.run import load_run
from gptkit.train import checkpoint
from tests.finetune.tasks import reverse_task, run_sft

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA run (r=4 on c_attn, c_proj and c_fc) whose adapters moved away from zero."""
    tmp = tmp_path_factory.mktemp("lora")
    source = reverse_task(tmp / "rev.jsonl", n=100)
    run_sft(source, tmp / "lora", steps=12,
            train={"lr": 2e-2, "eval_interval": 6, "checkpoint_interval": 6, "warmup_steps": 2},
            finetune={"lora_r": 4, "lora_alpha": 8})
    return tmp / "lora"


@pytest.fixture(scope="module")
def exports(lora_run: Path) -> dict[str, Path]:
    out = lora_run.parent
    main(["export", str(lora_run), "--adapter-only", "--out", str(out / "adapter")])
    main(["export", str(lora_run), "--out", str(out / "merged")])
    return {"adapter": out / "adapter", "merged": out / "merged"}


def _tokens(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(0))


def test_adapter_folder_is_peft_layout_for_gpt2_without_gptkit(exports):
    folder = exports["adapter"]
    text = (folder / "adapter_config.json").read_text()
    config = json.loads(text)
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["lora_dropout"] == 0
    assert set(config["target_modules"]) == {"c_attn", "c_proj", "c_fc"}
    assert config["fan_in_fan_out"] is True  # GPT-2's Conv1D stores weights (in, out)
    assert config["base_model_name_or_path"] == str((folder / "base").resolve())
    assert not config.get("auto_mapping") and "gptkit" not in text
    names = set(load_file(str(folder / "adapter_model.safetensors")))
    assert "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight" in names
    assert "base_model.model.transformer.h.1.mlp.c_proj.lora_B.weight" in names
    assert all(".lora_A.weight" in n or ".lora_B.weight" in n for n in names)
    assert (folder / "base" / "config.json").is_file()


def test_auto_peft_model_matches_the_merged_export(exports, lora_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the base is found from anywhere, not only beside it
    model = peft.AutoPeftModelForCausalLM.from_pretrained(str(exports["adapter"])).eval()
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(exports["merged"])).eval()
    base = transformers.AutoModelForCausalLM.from_pretrained(
        str(exports["adapter"] / "base")).eval()
    ours = load_run(lora_run).model
    x = _tokens(ours.config.vocab_size)
    with torch.no_grad():
        logits = model(x).logits
        torch.testing.assert_close(logits, merged(x).logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(logits, ours(x)[0], rtol=0, atol=1e-5)
        assert (logits - base(x).logits).abs().max() > 1e-3  # the adapter does something
    folded = model.merge_and_unload().state_dict()
    for name, tensor in merged.state_dict().items():
        torch.testing.assert_close(folded[name], tensor, rtol=0, atol=1e-5, msg=name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(exports["adapter"]))
    assert tokenizer("reverse abc: ")["input_ids"] == load_run(lora_run).tokenizer.encode(
        "reverse abc: ")


def test_checkpoint_export_keeps_the_frozen_base_exactly(lora_run, tmp_path):
    out = export_adapter(lora_run, tmp_path / "last", which="last")
    saved = load_file(str(checkpoint.list_checkpoints(lora_run)[-1] / "model.safetensors"))
    base = load_file(str(out / "base" / "model.safetensors"))
    frozen = saved["base_model.model.transformer.h.0.mlp.c_fc.base_layer.weight"]
    assert torch.equal(base["transformer.h.0.mlp.c_fc.weight"], frozen.t())
    lora_a = saved["base_model.model.transformer.h.0.mlp.c_fc.lora_A.default.weight"]
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert torch.equal(adapter["base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight"], lora_a)


def test_base_names_a_matching_model_and_refuses_another(exports, lora_run, tmp_path):
    base = exports["adapter"] / "base"
    out = export_adapter(lora_run, tmp_path / "named", base=str(base))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base.resolve())
    assert not (out / "base").exists()
    model = peft.AutoPeftModelForCausalLM.from_pretrained(str(out)).eval()
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(exports["merged"])).eval()
    x = _tokens(merged.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, merged(x).logits, rtol=0, atol=1e-5)
    with pytest.raises(GptkitError, match="differs from this run's base weights"):
        export_adapter(lora_run, tmp_path / "wrong", base=str(exports["merged"]))
    assert not (tmp_path / "wrong").exists()


def test_bad_requests_are_one_line_errors(exports, lora_run, tiny_run, tmp_path, capsys):
    cases = [
        ([str(tiny_run), "--adapter-only"], "is not a LoRA run"),
        ([str(lora_run), "--adapter-only", "--quantize", "int8"], "drop --quantize"),
        ([str(lora_run), "--base", str(exports["adapter"] / "base")], "add --adapter-only"),
        ([str(lora_run), "--adapter-only", "--base", str(tmp_path / "nothing")],
         "neither a folder"),
    ]
    for args, message in cases:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main(["export", *args, "--out", str(tmp_path / "out")])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err
    with pytest.raises(SystemExit):  # an existing export needs --overwrite
        main(["export", str(lora_run), "--adapter-only", "--out", str(exports["adapter"])])
    assert "--overwrite" in capsys.readouterr().err
