"""gptkit run -> one GGUF file that llama.cpp (and Ollama, LM Studio, llama-cpp-python) runs.

Written with the `gguf` package llama.cpp publishes (extra `gguf`), under the llama.cpp
architecture whose network is gptkit's:
- GPT-2 (learned positions, LayerNorm, tanh-GELU MLP): llama.cpp's `gpt2`, with the fused
  QKV, so the tensors go across by name only (`nn.Linear` already stores `(out, in)`, the
  row-major layout GGUF wants); biases a model lacks are written as zeros.
- RoPE + RMSNorm + SwiGLU (the LLaMA options, `model.pos_embedding: rope`, `norm: rmsnorm`,
  `mlp: swiglu`, without QK-norm): llama.cpp's `llama`. Its rotary embedding turns adjacent
  channel pairs (2i, 2i+1) where gptkit (and transformers' LLaMA) turn (i, i + head_dim/2),
  so the query and key rows of each head are reordered, as llama.cpp's own converter does;
  c_fc's two halves are SwiGLU's gate and up. Biases, when the model has them, go in
  llama.cpp's optional bias tensors.
Other combinations of options (a squared-ReLU MLP, QK-norm, RoPE with LayerNorm, ...) match
no llama.cpp architecture exactly and are refused with the option named. An untied output
layer is written as `output`; a tied one is left out (llama.cpp reuses `token_embd`).

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
from typing import Any

import numpy as np
import torch

from gptkit.config.choices import GgufType
from gptkit.errors import GptkitError
from gptkit.model import GPT, mlp_width
from gptkit.tokenizers import UNK, Tokenizer

SPM_SPACE = "\u2581"  # SentencePiece's visible space, llama.cpp's `llama` tokenizer's space
NORM_EPS = 1e-5  # gptkit's LayerNorm and RMSNorm
# the architecture options (config.ModelConfig) of each llama.cpp architecture gptkit writes
ARCHITECTURES = {
    "gpt2": {"pos_embedding": "learned", "norm": "layernorm", "qk_norm": False, "mlp": "gelu"},
    "llama": {"pos_embedding": "rope", "norm": "rmsnorm", "qk_norm": False, "mlp": "swiglu"},
}
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


def gguf_architecture(config: Any) -> str:
    """The llama.cpp architecture that computes `config`'s network; refuse a model that none
    does, naming the first option that differs from the nearest one."""
    if config.rope_scale != 1:  # position interpolation: gptkit writes no RoPE scaling keys
        raise GptkitError(
            f"cannot export a model with model.rope_scale={config.rope_scale} (a context "
            "extended by position interpolation) to GGUF; extend the starting run with "
            "model.context_extension=ntk instead, whose RoPE base GGUF holds")
    for arch, options in ARCHITECTURES.items():
        if all(getattr(config, key) == value for key, value in options.items()):
            return arch
    nearest = "llama" if config.pos_embedding == "rope" else "gpt2"
    for key, value in ARCHITECTURES[nearest].items():
        mine = getattr(config, key)
        if mine != value:
            shown, needed = (str(v).lower() if isinstance(v, bool) else v for v in (mine, value))
            raise GptkitError(
                f"cannot export a model with model.{key}={shown} to GGUF: no llama.cpp "
                f"architecture computes that combination (its {nearest} architecture needs "
                f"model.{key}={needed}); GGUF holds GPT-2 models and RoPE + RMSNorm + SwiGLU "
                "models without QK-norm"
            )
    raise AssertionError("unreachable: the nearest architecture differs in some option")


def _tensors(model: GPT, arch: str) -> dict[str, torch.Tensor]:
    """GGUF name -> fp32 tensor, in `arch`'s names and layout."""
    config = model.config
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": state["transformer.wte.weight"],
           "output_norm.weight": state["transformer.ln_f.weight"]}
    if not config.tie_embeddings:
        out["output.weight"] = state["lm_head.weight"]
    blocks = _gpt2_blocks if arch == "gpt2" else _llama_blocks
    for layer in range(config.n_layer):
        out.update(blocks(state, config, layer))
    if arch == "gpt2":
        out["position_embd.weight"] = state["transformer.wpe.weight"]
        out["output_norm.bias"] = state.get("transformer.ln_f.bias", torch.zeros(config.n_embd))
    return out


def _gpt2_blocks(state: dict[str, torch.Tensor], config: Any, layer: int
                 ) -> dict[str, torch.Tensor]:
    """One block under llama.cpp's gpt2 names, biases the model lacks as zeros."""
    n = config.n_embd
    widths = {"attn.c_attn": 3 * n, "mlp.c_fc": 4 * n}
    out = {}
    for ours, theirs in BLOCK_TENSORS.items():
        prefix = f"transformer.h.{layer}.{ours}"
        out[f"blk.{layer}.{theirs}.weight"] = state[f"{prefix}.weight"]
        out[f"blk.{layer}.{theirs}.bias"] = state.get(f"{prefix}.bias",
                                                      torch.zeros(widths.get(ours, n)))
    return out


def _rope_pairs_adjacent(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """Query/key rows (or bias) of each head reordered from gptkit's rotary pairs (i, i + d/2)
    to llama.cpp's (2i, 2i + 1): new row 2i + a is old row a * d/2 + i."""
    return t.reshape(n_head, 2, -1, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


def _llama_blocks(state: dict[str, torch.Tensor], config: Any, layer: int
                  ) -> dict[str, torch.Tensor]:
    """One block under llama.cpp's llama names: separate Q, K, V and SwiGLU's gate and up."""
    ours = f"transformer.h.{layer}."
    blk = f"blk.{layer}."
    out = {f"{blk}attn_norm.weight": state[f"{ours}ln_1.weight"],
           f"{blk}ffn_norm.weight": state[f"{ours}ln_2.weight"]}
    for kind in ("weight", "bias") if config.bias else ("weight",):
        q, k, v = state[f"{ours}attn.c_attn.{kind}"].chunk(3)
        gate, up = state[f"{ours}mlp.c_fc.{kind}"].chunk(2)
        out.update({
            f"{blk}attn_q.{kind}": _rope_pairs_adjacent(q, config.n_head),
            f"{blk}attn_k.{kind}": _rope_pairs_adjacent(k, config.n_head),
            f"{blk}attn_v.{kind}": v,
            f"{blk}attn_output.{kind}": state[f"{ours}attn.c_proj.{kind}"],
            f"{blk}ffn_gate.{kind}": gate, f"{blk}ffn_up.{kind}": up,
            f"{blk}ffn_down.{kind}": state[f"{ours}mlp.c_proj.{kind}"]})
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
    arch = gguf_architecture(config)
    n_vocab = model.transformer.wte.weight.shape[0]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype]
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        writer.add_name(name)
        writer.add_context_length(config.block_size)
        writer.add_embedding_length(config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_feed_forward_length(mlp_width(config))
        writer.add_head_count(config.n_head)
        if arch == "gpt2":
            writer.add_layer_norm_eps(NORM_EPS)
        else:
            writer.add_head_count_kv(config.n_head)
            writer.add_layer_norm_rms_eps(NORM_EPS)
            writer.add_rope_dimension_count(config.n_embd // config.n_head)
            writer.add_rope_freq_base(config.rope_base)
        writer.add_file_type(int(file_type))
        _add_tokenizer(writer, tokenizer, n_vocab)
        for key, tensor in _tensors(model, arch).items():
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
    gguf_architecture(rundir.config().model)
    if rundir.is_classifier:
        raise GptkitError(f"{run_dir} is a classifier run; GGUF holds language models "
                          "(export a classifier with --format hf)")
    run = load_run(run_dir, which=which)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(run.model, run.tokenizer, out, outtype=outtype, name=Path(run_dir).resolve().name)
    return out
