"""Hugging Face folders and cached hub ids used directly as runs (gptkit.interop.hf_runs):
every command imports them once into a content-keyed cache, reuses it, re-imports changed
files, and refuses what is neither a run nor a GPT-2 folder in one line.

Tiny random models only, everything under tmp_path, no network.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import gptkit.interop.hf as hf_module
from gptkit.errors import GptkitError
from gptkit.interop import hf_runs
from gptkit.interop.hf_runs import as_run
from gptkit.run import load_run
from gptkit.tokenizers import Tokenizer
from tests.interop.test_chat_template import CHATML
from tests.interop.test_hf import CORPUS, FINETUNE, assert_same_function, hf_folder
from tests.test_cli import expect_error, run_cli

pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GPTKIT_CACHE", str(tmp_path / "gptkit-cache"))
    return tmp_path / "gptkit-cache" / "imports"


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train_bpe([CORPUS], 300)


def imports(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir()) if cache.is_dir() else []


def test_sample_eval_and_viz_take_an_hf_folder_importing_it_once(tmp_path, capsys, cache,
                                                                 data_dir, tokenizer):
    folder = tmp_path / "hf"
    hf = hf_folder(folder, tokenizer)
    sample = ["sample", str(folder), "--prompt", "ROMEO:", "--max-new-tokens", "5",
              "--temperature", "0"]
    code, first, err = run_cli(capsys, *sample)
    assert code == 0, err
    assert f"importing HF folder {folder} into cache {cache}" in err and "(first use)" in err
    [cached] = imports(cache)
    stamp = (cached / "config.yaml").stat().st_mtime_ns
    code, again, err = run_cli(capsys, *sample)
    assert code == 0 and "importing" not in err, err
    assert again == first and imports(cache) == [cached]
    assert (cached / "config.yaml").stat().st_mtime_ns == stamp
    # the cached run computes what transformers computes on the folder
    assert_same_function(load_run(as_run(folder)).model, hf,
                         [tokenizer.encode("ROMEO: hear me")])

    code, out, err = run_cli(capsys, "eval", str(folder), "--json")
    assert code == 0 and "importing" not in err, err
    assert json.loads(out)["loss"] > 0
    code, out, err = run_cli(capsys, "viz", "attention", str(folder), "--prompt", "to be",
                             "--out", str(tmp_path / "att.png"))
    assert code == 0, err
    assert (tmp_path / "att.png").is_file() and imports(cache) == [cached]


def test_changed_weights_are_imported_again(tmp_path, capsys, cache, tokenizer):
    folder = tmp_path / "hf"
    hf_folder(folder, tokenizer)
    before = load_run(as_run(folder)).model.transformer.wte.weight.clone()
    weights = load_file(str(folder / "model.safetensors"))
    weights["transformer.wte.weight"] = weights["transformer.wte.weight"] + 1.0
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    capsys.readouterr()
    after = load_run(as_run(folder)).model.transformer.wte.weight
    assert "importing HF folder" in capsys.readouterr().err
    assert len(imports(cache)) == 2 and torch.allclose(after, before + 1.0)
    # a copy of the same files elsewhere is the same cached run
    shutil.copytree(folder, tmp_path / "copy")
    assert as_run(tmp_path / "copy") == as_run(folder) and len(imports(cache)) == 2


def test_chat_with_an_hf_chat_model(tmp_path, capsys, monkeypatch, cache, tokenizer):
    folder = tmp_path / "hf-chat"
    hf_folder(folder, tokenizer)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
              "chat_template": CHATML}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    monkeypatch.setattr("sys.stdin", io.StringIO("hello there\n"))
    code, out, err = run_cli(capsys, "chat", str(folder), "--max-new-tokens", "4", "--seed", "0")
    assert code == 0, err
    assert "importing HF folder" in err and out.strip()


def test_serve_answers_from_an_hf_folder(tmp_path, tokenizer):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from gptkit.serve import create_app

    folder = tmp_path / "hf"
    hf_folder(folder, tokenizer)
    with TestClient(create_app(load_run(as_run(folder)))) as client:
        reply = client.post("/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 4,
                                                     "temperature": 0})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["text"] is not None


def test_cli_serve_resolves_the_folder_before_serving(tmp_path, capsys, monkeypatch, tokenizer):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from gptkit.serve import server

    served: list[Path] = []
    monkeypatch.setattr(server, "serve", lambda run, settings, **kw: served.append(run.path))
    folder = tmp_path / "hf"
    hf_folder(folder, tokenizer)
    code, _, err = run_cli(capsys, "serve", str(folder))
    assert code == 0, err
    assert served == [as_run(folder)]


def test_init_from_an_hf_folder(tmp_path, capsys, cache, data_dir, tokenizer):
    folder = tmp_path / "hf"
    hf_folder(folder, tokenizer, n_positions=32)
    sets = [a for s in FINETUNE for a in ("--set", s)]
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "ft"), "--no-progress",
                           "--init-from", str(folder), *sets)
    assert code == 0, err
    [cached] = imports(cache)
    saved = (tmp_path / "ft" / "config.yaml").read_text()
    assert f"init_from: {cached}" in saved
    assert (tmp_path / "ft" / "tokenizer.json").read_bytes() == (
        cached / "tokenizer.json").read_bytes()



def test_init_from_an_hf_folder_named_in_the_config(tmp_path, capsys, cache, data_dir,
                                                    tokenizer):
    """`train.init_from` set in a recipe or by --set resolves as --init-from does."""
    folder = tmp_path / "hf"
    hf_folder(folder, tokenizer, n_positions=32)
    sets = [a for s in [*FINETUNE, f"train.init_from={folder}"] for a in ("--set", s)]
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "ft"), "--no-progress",
                           *sets)
    assert code == 0, err
    [cached] = imports(cache)
    assert f"init_from: {cached}" in (tmp_path / "ft" / "config.yaml").read_text()

def fake_hub_cache(hub: Path, repo_id: str, folder: Path) -> Path:
    """The layout huggingface_hub keeps a downloaded snapshot in."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_a_hub_id_comes_from_the_local_cache_offline(tmp_path, capsys, monkeypatch, cache,
                                                     tokenizer):
    import huggingface_hub.constants

    hub = tmp_path / "hf-home" / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    hf_folder(tmp_path / "hf", tokenizer)
    fake_hub_cache(hub, "tiny-org/tiny-gpt2", tmp_path / "hf")
    code, out, err = run_cli(capsys, "sample", "tiny-org/tiny-gpt2", "--prompt", "ROMEO:",
                             "--max-new-tokens", "3", "--temperature", "0")
    assert code == 0, err
    assert "importing Hugging Face hub id tiny-org/tiny-gpt2" in err
    # the same files as the folder: the same cached run
    assert as_run("tiny-org/tiny-gpt2") == as_run(tmp_path / "hf")
    expect_error(capsys, "sample", "tiny-org/not-cached", "--prompt", "x",
                 match="not in the local Hugging Face cache and downloads are off")


def test_what_is_neither_a_run_nor_an_hf_folder_is_one_line(tmp_path, capsys, tokenizer):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hi")
    expect_error(capsys, "sample", str(tmp_path / "stuff"), "--prompt", "x",
                 match="is neither a gptkit run (config.yaml is missing) nor a Hugging Face GPT-2")
    folder = tmp_path / "bert"
    hf_folder(folder, tokenizer)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    expect_error(capsys, "eval", str(folder), match="cannot be used as a run: unsupported "
                 "architecture model_type 'bert'")
    with pytest.raises(GptkitError, match="does not exist"):
        load_run(as_run(tmp_path / "missing"))


def test_an_import_that_loses_a_race_uses_the_winners_run(tmp_path, monkeypatch, cache,
                                                         tokenizer):
    """Two processes importing at once: each builds aside; the second rename finds the first's
    run in place and uses it, and no temporary folder stays behind."""
    folder = tmp_path / "hf"
    hf_folder(folder, tokenizer)
    real = hf_module.import_hf
    target = cache / hf_runs.content_key(folder)

    def racing(source: str, out: Path, **kw: object) -> Path:
        built = real(source, out, **kw)
        real(source, tmp_path / "other")  # the other process finishes first
        (tmp_path / "other").rename(target)
        return built

    monkeypatch.setattr(hf_module, "import_hf", racing)
    assert as_run(folder) == target
    assert imports(cache) == [target]
    assert load_run(as_run(folder)).model.config.n_layer == 2
