"""GGUF export: the file holds gptkit's model and tokenizer as llama.cpp reads them, and
llama.cpp itself (llama-cpp-python) tokenizes as gptkit does and decodes gptkit's greedy
tokens; bad requests are one line.

Tiny random models of each tokenizer kind, everything under tmp_path, no network.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from gptkit.config import ModelConfig, RunConfig, save_config
from gptkit.errors import GptkitError
from gptkit.generation.config import GenerationConfig
from gptkit.generation.sampling import generate
from gptkit.interop.gguf import export_gguf
from gptkit.model import GPT
from gptkit.run import load_run
from gptkit.tokenizers import Tokenizer
from gptkit.train import checkpoint
from tests.test_cli import expect_error, run_cli

gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf package (extra gguf)")

CORPUS = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    "You are all resolved rather to die than to famish?  The quick brown fox jumps over 12 "
    "lazy dogs; it's 3.14 o'clock!\n\tTabs\tand   spaces.\r\n"
    "中文字符测试，汉字。 Ünïcödé ñ café — “quotes” 😀🎉 <|endoftext|> end\n"
) * 20
PIECES = ["hello", " world", "ROMEO:", " the", "'s", "123", "3.14", "!?", ",", "a", "Z", " ",
          "  ", "    ", "\n", "\n\n", "\t", " \n ", "\r\n", "   \n  ", "中文", "汉字测试", "，",
          "😀", "🎉", "é", "ñ", "Ünïcödé", "\u00a0", "\u3000", "~", "ß", "<|end", "o'clock"]
KINDS = ("gpt2", "bpe", "char")
LLAMA = {"pos_embedding": "rope", "norm": "rmsnorm", "mlp": "swiglu"}  # llama.cpp's `llama`


def varied_strings(tokenizer: Tokenizer, n: int = 120, seed: int = 0) -> list[str]:
    """ASCII, runs of spaces and newlines, digits, non-ASCII; for a character tokenizer only
    characters it has (llama.cpp has no token for the others, gptkit gives <unk>)."""
    rng = random.Random(seed)
    texts = [" ", "\n", "a\n\n\n   b", "中" * 30, "😀" * 5, "x  y", "12345 67", *[
        "".join(rng.choices(PIECES, k=rng.randint(1, 14))) for _ in range(n)]]
    if tokenizer.kind == "char":
        known = set(tokenizer.backend.get_vocab())
        texts = ["".join(c for c in t if c in known) for t in texts]
    return [t for t in texts if t]


@pytest.fixture(scope="module")
def tokenizers_by_kind(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tokenizer]:
    bpe = Tokenizer.train_bpe([CORPUS], 300)
    folder = tmp_path_factory.mktemp("gpt2-files")
    bpe.backend.model.save(str(folder))  # vocab.json + merges.txt, as GPT-2 ships them
    return {"gpt2": Tokenizer.from_gpt2_files(folder), "bpe": bpe,
            "char": Tokenizer.train_char([CORPUS])}


def make_run(path: Path, tokenizer: Tokenizer, *, pad: int = 0, **options: Any) -> Path:
    """A run directory holding a tiny random model (biases and norms jittered off 0 and 1)."""
    cfg = RunConfig(name=path.name, model=ModelConfig(
        n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=tokenizer.vocab_size + pad,
        **options))
    torch.manual_seed(0)
    model = GPT(cfg.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    path.mkdir(parents=True)
    save_config(cfg, path / "config.yaml")
    tokenizer.save(path / "tokenizer.json")
    checkpoint.save_best(path, model, {"step": 0, "val_loss": 1.0, "tokens_seen": 0})
    return path


@pytest.fixture(scope="module")
def runs(tokenizers_by_kind: dict[str, Tokenizer],
         tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf-runs")
    # a padded embedding (ids no token has) in one of them
    return {kind: make_run(root / kind, tok, pad=3 if kind == "bpe" else 0)
            for kind, tok in tokenizers_by_kind.items()}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
def test_file_holds_the_model_and_tokenizer(runs: dict[str, Path], tmp_path: Path, kind: str,
                                            outtype: str) -> None:
    out = export_gguf(runs[kind], tmp_path / "m.gguf", outtype=outtype)  # type: ignore[arg-type]
    reader = gguf.GGUFReader(out)
    field = {name: f.contents() for name, f in reader.fields.items()}
    run = load_run(runs[kind])
    config = run.model.config
    n_vocab = config.vocab_size
    assert field["general.architecture"] == "gpt2"
    assert (field["gpt2.context_length"], field["gpt2.embedding_length"],
            field["gpt2.block_count"], field["gpt2.feed_forward_length"],
            field["gpt2.attention.head_count"]) == (64, 64, 2, 256, 2)
    assert field["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    file_types = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}
    assert field["general.file_type"] == file_types[outtype]
    assert field["tokenizer.ggml.model"] == ("llama" if kind == "char" else "gpt2")
    assert field["tokenizer.ggml.pre"] == ("default" if kind == "char" else "gpt-2")
    tokens = field["tokenizer.ggml.tokens"]
    assert len(tokens) == len(field["tokenizer.ggml.token_type"]) == n_vocab
    eot = run.tokenizer.eot_id
    assert tokens[eot] == "<|endoftext|>" and field["tokenizer.ggml.token_type"][eot] == 3
    assert field["tokenizer.ggml.bos_token_id"] == field["tokenizer.ggml.eos_token_id"] == eot
    assert field["tokenizer.ggml.add_bos_token"] is False
    if kind != "char":
        merges = json.loads(run.tokenizer.backend.to_str())["model"]["merges"]
        assert field["tokenizer.ggml.merges"] == [
            m if isinstance(m, str) else " ".join(m) for m in merges]
    else:
        assert "\u2581" in tokens and " " not in tokens  # llama.cpp's space symbol
    tensors = {t.name: t for t in reader.tensors}
    names = {"token_embd.weight", "position_embd.weight", "output_norm.weight",
             "output_norm.bias"} | {f"blk.{i}.{n}.{w}" for i in range(2) for w in ("weight", "bias")
                                    for n in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm",
                                              "ffn_up", "ffn_down")}
    assert set(tensors) == names  # tied head: llama.cpp reuses token_embd
    state = run.model.state_dict()
    qkv = tensors["blk.1.attn_qkv.weight"]
    assert qkv.tensor_type.name == outtype.upper()
    assert tensors["blk.1.attn_qkv.bias"].tensor_type.name == "F32"
    values = gguf.quants.dequantize(qkv.data, qkv.tensor_type).reshape(3 * 64, 64)
    tolerance = {"f32": 0, "f16": 1e-3, "bf16": 1e-2, "q8_0": 1e-2}[outtype]
    expected = state["transformer.h.1.attn.c_attn.weight"].numpy()
    assert np.abs(values - expected).max() <= tolerance


@pytest.mark.parametrize("bias", [True, False])
def test_llama_options_go_to_llama_cpps_llama_architecture(
        tokenizers_by_kind: dict[str, Tokenizer], tmp_path: Path, bias: bool) -> None:
    run = make_run(tmp_path / "run", tokenizers_by_kind["bpe"], bias=bias, **LLAMA)
    reader = gguf.GGUFReader(export_gguf(run, tmp_path / "m.gguf"))
    field = {name: f.contents() for name, f in reader.fields.items()}
    assert field["general.architecture"] == "llama"
    assert (field["llama.feed_forward_length"], field["llama.attention.head_count_kv"],
            field["llama.rope.dimension_count"], field["llama.rope.freq_base"]) == (
        192, 2, 32, 10_000.0)
    assert field["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    names = {t.name for t in reader.tensors}
    per_block = {f"blk.0.{n}.weight" for n in ("attn_norm", "attn_q", "attn_k", "attn_v",
                                                 "attn_output", "ffn_norm", "ffn_gate",
                                                 "ffn_up", "ffn_down")}
    assert per_block <= names and "position_embd.weight" not in names
    assert ("blk.0.attn_q.bias" in names) == bias and ("blk.0.ffn_gate.bias" in names) == bias
    tensors = {t.name: t for t in reader.tensors}
    state = load_run(run).model.state_dict()
    q = state["transformer.h.0.attn.c_attn.weight"][:64].numpy()
    got = tensors["blk.0.attn_q.weight"].data.reshape(64, 64)
    # head 0's rotary pair (0, 16) of gptkit is llama.cpp's adjacent pair (0, 1)
    np.testing.assert_array_equal(got[[0, 1, 2, 32, 33]], q[[0, 16, 1, 32, 48]])


def test_untied_head_and_missing_biases_are_written(tokenizers_by_kind: dict[str, Tokenizer],
                                                    tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", tokenizers_by_kind["bpe"], bias=False,
                   tie_embeddings=False)
    reader = gguf.GGUFReader(export_gguf(run, tmp_path / "m.gguf"))
    tensors = {t.name: t for t in reader.tensors}
    model = load_run(run).model
    np.testing.assert_array_equal(tensors["output.weight"].data,
                                  model.lm_head.weight.detach().numpy())
    assert not tensors["blk.0.attn_qkv.bias"].data.any()
    assert not tensors["output_norm.bias"].data.any()


def test_bad_requests_are_one_line(runs: dict[str, Path], tokenizers_by_kind: dict[str, Tokenizer],
                                   tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = str(runs["bpe"])
    out = tmp_path / "m.gguf"
    code, stdout, _ = run_cli(capsys, "export", run, "--format", "gguf", "--out", str(out))
    assert code == 0 and out.read_bytes()[:4] == b"GGUF" and "llama" in stdout
    expect_error(capsys, "export", run, "--format", "gguf", "--out", str(out),
                 match="already exists; use --overwrite")
    assert run_cli(capsys, "export", run, "--format", "gguf", "--out", str(out), "--overwrite",
                   "--outtype", "q8_0")[0] == 0
    other = tmp_path / "notes.txt"
    other.write_text("keep me")
    expect_error(capsys, "export", run, "--format", "gguf", "--out", str(other), "--overwrite",
                 match="not a GGUF file")
    assert other.read_text() == "keep me"
    expect_error(capsys, "export", run, "--format", "gguf", "--out", str(tmp_path),
                 match="is a folder")
    expect_error(capsys, "export", run, "--outtype", "f16", "--out", str(tmp_path / "hf"),
                 match="--outtype sets GGUF weight types")
    expect_error(capsys, "export", run, "--format", "gguf", "--quantize", "int8", "--out",
                 str(tmp_path / "q.gguf"), match="--outtype q8_0")
    rope = make_run(tmp_path / "rope", tokenizers_by_kind["bpe"], pos_embedding="rope")
    expect_error(capsys, "export", str(rope), "--format", "gguf", "--out",
                 str(tmp_path / "r.gguf"), match="model.norm=layernorm to GGUF: no llama.cpp")
    assert not (tmp_path / "r.gguf").exists()
    with pytest.raises(GptkitError, match="model.qk_norm=true"):
        export_gguf(make_run(tmp_path / "qk", tokenizers_by_kind["bpe"], **LLAMA, qk_norm=True),
                    tmp_path / "q.gguf")
    code, _, err = run_cli(capsys, "export", run, "--format", "gguf", "--outtype", "q4",
                           "--out", str(tmp_path / "x.gguf"))
    assert code == 2 and "invalid choice" in err
    with pytest.raises(GptkitError, match="model.mlp=swiglu"):
        export_gguf(make_run(tmp_path / "swiglu", tokenizers_by_kind["bpe"], mlp="swiglu"),
                    tmp_path / "s.gguf")


# --- llama.cpp itself ---------------------------------------------------------------------------
def llama(path: Path) -> Any:
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama.cpp is not installed (pip install llama-cpp-python)")
    # logits_all: llama-cpp-python keeps logits (`scores`) only then
    return llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, n_batch=64,
                           logits_all=True, verbose=False)


def llama_greedy(llm: Any, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
    """llama.cpp's argmax continuation of `prompt`, and its first step's logits."""
    llm.reset()
    llm.eval(prompt)
    first = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    out: list[int] = []
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out, first


def gptkit_greedy(run_dir: Path, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
    run = load_run(run_dir)
    settings = GenerationConfig(temperature=0.0, max_new_tokens=n, top_k=None)
    tokens = generate(run.model, prompt, settings, eot_id=None)[0, len(prompt):].tolist()
    with torch.no_grad():
        logits = run.model(torch.tensor([prompt]))[0][0, -1].numpy()
    return tokens, logits


PROMPT = "First Citizen:\nBefore we"


@pytest.mark.parametrize("kind", KINDS)
def test_llama_cpp_tokenizes_as_gptkit(runs: dict[str, Path], tmp_path: Path, kind: str) -> None:
    llm = llama(export_gguf(runs[kind], tmp_path / "m.gguf"))
    tokenizer = load_run(runs[kind]).tokenizer
    texts = varied_strings(tokenizer)
    assert len(texts) > 100
    for text in texts:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        assert ids == tokenizer.encode(text), text
        assert llm.detokenize(ids).decode("utf-8") == text
    eot = "a<|endoftext|>b"
    assert llm.tokenize(eot.encode(), add_bos=False, special=True) == tokenizer.encode(eot)


@pytest.mark.parametrize("kind", KINDS)
def test_llama_cpp_greedy_equals_gptkit_at_f32(runs: dict[str, Path], tmp_path: Path,
                                               kind: str) -> None:
    tokenizer = load_run(runs[kind]).tokenizer
    prompt = tokenizer.encode(PROMPT)
    expected, logits = gptkit_greedy(runs[kind], prompt, 24)
    got, llama_logits = llama_greedy(llama(export_gguf(runs[kind], tmp_path / "m.gguf")),
                                     prompt, 24)
    assert got == expected
    # not bit-equal: ggml's CPU GELU looks its input up in an fp16 table even at f32
    assert np.abs(llama_logits - logits).max() < 2e-3  # measured 2e-4 to 4e-4


@pytest.mark.parametrize("kind", KINDS)
def test_llama_cpp_runs_rope_rmsnorm_swiglu_models_as_gptkit(
        tokenizers_by_kind: dict[str, Tokenizer], tmp_path: Path, kind: str) -> None:
    """The llama architecture, untied and without biases for one tokenizer, tied with biases
    for the others: greedy tokens equal at f32, logits close."""
    tokenizer = tokenizers_by_kind[kind]
    plain = kind == "gpt2"
    run = make_run(tmp_path / "run", tokenizer, bias=not plain, tie_embeddings=not plain,
                   **LLAMA)
    prompt = tokenizer.encode(PROMPT)
    expected, logits = gptkit_greedy(run, prompt, 24)
    got, llama_logits = llama_greedy(llama(export_gguf(run, tmp_path / "m.gguf")), prompt, 24)
    assert got == expected
    assert np.abs(llama_logits - logits).max() < 2e-3  # measured 2e-4 to 4e-4


@pytest.mark.parametrize("kind", KINDS)
def test_llama_cpp_f16_greedy_holds_on_a_short_continuation(runs: dict[str, Path],
                                                             tmp_path: Path, kind: str) -> None:
    tokenizer = load_run(runs[kind]).tokenizer
    prompt = tokenizer.encode(PROMPT)
    expected, _ = gptkit_greedy(runs[kind], prompt, 8)
    llm = llama(export_gguf(runs[kind], tmp_path / "m.gguf", outtype="f16"))
    assert llama_greedy(llm, prompt, 8)[0] == expected
