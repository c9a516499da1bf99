"""gptkit run -> one GGUF file that llama.cpp (and Ollama, LM Studio, llama-cpp-python) runs.

Written with the `gguf` package llama.cpp publishes (extra `gguf`), under llama.cpp's `gpt2`
architecture: the same network as gptkit's GPT-2 (learned positions, LayerNorm, tanh-GELU
MLP, fused QKV), so the tensors go across by name only (`nn.Linear` already stores
`(out, in)`, the row-major layout GGUF wants). Options beyond GPT-2 (RoPE, RMSNorm, QK-norm,
SwiGLU, squared ReLU) have no place in that architecture and are refused; an untied output
layer and a model without biases are not: llama.cpp reads `output` when present and the
biases are written as zeros.

The tokenizer goes in as llama.cpp's own tokenizer models, chosen so that it splits text
as gptkit does:
- `gpt2` and `bpe` (byte-level BPE): model `gpt2` with pre-tokenizer `gpt-2`, the one
  llama.cpp name that selects GPT-2's regex, which is exactly what gptkit's byte-level
  pre-tokenizer applies (HF `ByteLevel(use_regex=True)`), trained vocabularies included.
- `char`: model `llama` (SentencePiece-style), whose tokenizer only merges adjacent
  symbols into a longer vocabulary entry: a vocabulary of single characters then yields one
  token per character. Its space symbol is `▁`, so the space token is stored under that
  name. A character the vocabulary lacks has no token in llama.cpp (gptkit gives `<unk>`):
  such text is outside what the file can tokenize the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gptkit.config.choices import GgufType
from gptkit.errors import GptkitError
from gptkit.tokenizers import UNK, Tokenizer

if TYPE_CHECKING:
    from gptkit.model import GPT

SPM_SPACE = "\u2581"  # SentencePiece's visible space, llama.cpp's `llama` tokenizer's space
LAYER_NORM_EPS = 1e-5
# GPT-2 values of the architecture options (config.ModelConfig) llama.cpp's gpt2 cannot vary
GGUF_GPT2 = {"pos_embedding": "learned", "norm": "layernorm", "qk_norm": False, "mlp": "gelu"}
# gptkit name -> GGUF name, per block
BLOCK_TENSORS = {
    "ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down",
}


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise GptkitError("GGUF export needs the gguf package: pip install 'gptkit[gguf]'"
                          ) from None
    return gguf


def check_gguf_architecture(config: Any) -> None:
    """llama.cpp's gpt2 architecture holds GPT-2; refuse a model using an option beyond it."""
    for key, gpt2 in GGUF_GPT2.items():
        value = getattr(config, key)
        if value != gpt2:
            shown = str(value).lower() if isinstance(value, bool) else value
            raise GptkitError(
                f"cannot export a model with model.{key}={shown} to GGUF: llama.cpp's gpt2 "
                f"architecture has no such option (it needs model.{key}="
                f"{str(gpt2).lower()}, and the other architecture options at their defaults)"
            )


def _tensors(model: GPT) -> dict[str, torch.Tensor]:
    """GGUF name -> fp32 weight, biases the model lacks as zeros."""
    config = model.config
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    n = config.n_embd

    def get(name: str, width: int) -> torch.Tensor:
        return state.get(name, torch.zeros(width))

    out = {"token_embd.weight": state["transformer.wte.weight"],
           "position_embd.weight": state["transformer.wpe.weight"],
           "output_norm.weight": state["transformer.ln_f.weight"],
           "output_norm.bias": get("transformer.ln_f.bias", n)}
    if not config.tie_embeddings:
        out["output.weight"] = state["lm_head.weight"]
    widths = {"attn.c_attn": 3 * n, "mlp.c_fc": 4 * n}
    for layer in range(config.n_layer):
        for ours, theirs in BLOCK_TENSORS.items():
            prefix = f"transformer.h.{layer}.{ours}"
            out[f"blk.{layer}.{theirs}.weight"] = state[f"{prefix}.weight"]
            out[f"blk.{layer}.{theirs}.bias"] = get(f"{prefix}.bias", widths.get(ours, n))
    return out


def _add_tensor(writer: Any, gguf: Any, name: str, tensor: torch.Tensor, outtype: str) -> None:
    """f32 for 1-D tensors (norms, biases), as llama.cpp's own converter does; the matrices
    in `outtype` (q8_0 needs rows of whole 32-value blocks, else f16)."""
    q = gguf.GGMLQuantizationType
    data = tensor.numpy().astype(np.float32)
    kind = q.F32
    if data.ndim == 2:
        kind = {"f32": q.F32, "f16": q.F16, "bf16": q.BF16, "q8_0": q.Q8_0}[outtype]
        if kind == q.Q8_0 and data.shape[-1] % gguf.GGML_QUANT_SIZES[q.Q8_0][0]:
            kind = q.F16
    if kind in (q.F32, q.F16):
        writer.add_tensor(name, gguf.quants.quantize(data, kind))
    else:
        writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)


def _spec(tokenizer: Tokenizer) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(tokenizer.backend.to_str())
    return spec


def _vocabulary(tokenizer: Tokenizer, n_vocab: int,
                space: str | None) -> tuple[list[str], list[int]]:
    """Token strings and types by id; ids past the tokenizer (a padded embedding) unused."""
    gguf = _gguf()
    types = gguf.TokenType
    vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
    by_id = {i: t for t, i in vocab.items()}
    special = {t["content"] for t in _spec(tokenizer).get("added_tokens", []) if t["special"]}
    tokens, kinds = [], []
    for i in range(n_vocab):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            kinds.append(types.UNUSED)
        elif token in special:
            tokens.append(token)
            kinds.append(types.CONTROL)
        elif token == UNK and tokenizer.kind == "char":
            tokens.append(token)
            kinds.append(types.UNKNOWN)
        else:
            tokens.append(space if space is not None and token == " " else token)
            kinds.append(types.NORMAL)
    return tokens, kinds


def _add_tokenizer(writer: Any, tokenizer: Tokenizer, n_vocab: int) -> None:
    spec = _spec(tokenizer)
    eot = tokenizer.eot_id
    if tokenizer.kind == "bpe":
        pre = spec.get("pre_tokenizer") or {}
        if not (pre.get("type") == "ByteLevel" and pre.get("use_regex", True)) \
                or spec.get("normalizer") is not None:
            raise GptkitError(
                "cannot export this tokenizer to GGUF: it is not byte-level BPE with GPT-2's "
                "pre-tokenizer (the one llama.cpp's 'gpt-2' pre-tokenizer reproduces); "
                "use a tokenizer gptkit trained or GPT-2's"
            )
        tokens, kinds = _vocabulary(tokenizer, n_vocab, None)
        merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(tokens)
        writer.add_token_types(kinds)
        writer.add_token_merges(merges)
    else:
        if SPM_SPACE in tokenizer.backend.get_vocab():
            raise GptkitError(
                f"cannot export this character tokenizer to GGUF: it has {SPM_SPACE!r} as a "
                "character, which llama.cpp's tokenizer uses for the space"
            )
        tokens, kinds = _vocabulary(tokenizer, n_vocab, SPM_SPACE)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types(kinds)
        writer.add_token_scores([0.0] * len(tokens))
        writer.add_add_space_prefix(False)
        unk = tokenizer.backend.token_to_id(UNK)
        if unk is not None:
            writer.add_unk_token_id(unk)
    if eot is not None:
        writer.add_bos_token_id(eot)
        writer.add_eos_token_id(eot)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)


def check_gguf_target(out: Path, overwrite: bool) -> None:
    """`out` is a file to write: an existing one is replaced only with `overwrite`, and only
    when it is a GGUF file (so that a typo cannot replace something else)."""
    if out.is_dir():
        raise GptkitError(f"{out} is a folder; --out names the .gguf file to write")
    if not out.exists():
        return
    if not overwrite:
        raise GptkitError(f"{out} already exists; use --overwrite to replace it, or another --out")
    with open(out, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GptkitError(f"refusing to overwrite {out}: it is not a GGUF file; choose "
                              "another --out")


def write_gguf(model: GPT, tokenizer: Tokenizer, out: Path, *, outtype: GgufType = "f32",
               name: str = "gptkit") -> None:
    """Write `model` and `tokenizer` as a GGUF file at `out` (through a temporary sibling)."""
    gguf = _gguf()
    config = model.config
    check_gguf_architecture(config)
    n_vocab = model.transformer.wte.weight.shape[0]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, "gpt2")
    try:
        writer.add_name(name)
        writer.add_context_length(config.block_size)
        writer.add_embedding_length(config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_feed_forward_length(4 * config.n_embd)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(LAYER_NORM_EPS)
        writer.add_file_type(int(file_type))
        _add_tokenizer(writer, tokenizer, n_vocab)
        for key, tensor in _tensors(model).items():
            _add_tensor(writer, gguf, key, tensor, outtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(out)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)


def export_gguf(run_dir: str | Path, out: str | Path, *, outtype: GgufType = "f32",
                which: str = "best", overwrite: bool = False) -> Path:
    """Write a run as a GGUF file for llama.cpp (`llama-cli -m OUT`, `Llama(OUT)`)."""
    from gptkit.run import load_run
    from gptkit.rundir import RunDir

    out = Path(out).resolve()
    check_gguf_target(out, overwrite)
    rundir = RunDir(run_dir)
    if rundir.quantization:
        raise GptkitError(f"{run_dir} holds int8 weights; export the fp32 run it was quantized "
                          "from (--outtype q8_0 quantizes for llama.cpp)")
    check_gguf_architecture(rundir.config().model)
    if rundir.is_classifier:
        raise GptkitError(f"{run_dir} is a classifier run; GGUF holds language models "
                          "(export a classifier with --format hf)")
    run = load_run(run_dir, which=which)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(run.model, run.tokenizer, out, outtype=outtype, name=Path(run_dir).resolve().name)
    return out
