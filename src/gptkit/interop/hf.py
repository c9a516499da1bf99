"""Hugging Face GPT-2 <-> gptkit: configs and weights.

The two models are the same network under the same names (`transformer.h.0.attn.c_attn`,
...); HF stores the attention and MLP matrices as `Conv1D`, weight `(in, out)`, where gptkit
uses `nn.Linear`, weight `(out, in)`: converting is a key map plus a transpose. HF GPT-2
always has biases, so a gptkit model without them exports zeros, which computes the same.
`transformers` is needed only by `to_transformers` / `from_transformers` (extra `hf`).

`export_hf` writes a run as a folder `transformers` loads (`AutoModelForCausalLM`,
`AutoTokenizer`); `import_hf` turns such a folder, or a hub id, into an ordinary run. Both
build their output in a temporary sibling folder and rename it into place at the end. A
classifier run goes to and from `GPT2ForSequenceClassification` / `GPT2ForTokenClassification`
the same way, its head and labels converted by `gptkit.interop.hf_classify`.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from gptkit.chat_template import read_chat_template, special_tokens, write_chat_template
from gptkit.config import ClassifyConfig, DataConfig, ModelConfig, RunConfig, save_config
from gptkit.errors import GptkitError
from gptkit.files import check_target, new_folder
from gptkit.finetune.heads import GPTClassifier
from gptkit.interop import hf_classify
from gptkit.model import GPT
from gptkit.model_card import CARD_FILE, hub_card
from gptkit.model_card import render as render_card
from gptkit.offline import hub_offline
from gptkit.rundir import CONFIG_FILE, RunDir
from gptkit.tokenizers import Tokenizer
from gptkit.train.checkpoint import save_best

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel

SUPPORTED_ARCHITECTURES = ("GPT2LMHeadModel", "GPT2Model", *hf_classify.ARCHITECTURES)
# GPT-2's GELU is the tanh approximation; HF names it in several ways.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Biases HF always has; a bias-free gptkit model exports them as zeros.
BIASES = ("ln_1.bias", "ln_2.bias", "attn.c_attn.bias", "attn.c_proj.bias", "mlp.c_fc.bias",
          "mlp.c_proj.bias")


# the architecture options beyond GPT-2 and their GPT-2 values (config.ModelConfig)
GPT2_ARCHITECTURE = {"pos_embedding": "learned", "norm": "layernorm", "qk_norm": False,
                     "mlp": "gelu", "tie_embeddings": True}


def check_gpt2_architecture(config: ModelConfig) -> None:
    """Export writes GPT-2 (`GPT2LMHeadModel`); a model using an option beyond it cannot be."""
    for key, gpt2 in GPT2_ARCHITECTURE.items():
        value = getattr(config, key)
        if value != gpt2:
            shown = str(value).lower() if isinstance(value, bool) else value
            raise GptkitError(
                f"cannot export a model with model.{key}={shown}: Hugging Face export needs "
                f"the GPT-2 architecture (model.{key}={str(gpt2).lower()}, and the other "
                "architecture options at their defaults)"
            )


def hf_config(config: ModelConfig, eot_id: int | None = None) -> dict[str, Any]:
    """`config.json` of a `GPT2LMHeadModel` with this shape."""
    check_gpt2_architecture(config)
    if config.vocab_size is None:
        raise GptkitError("model.vocab_size is not set; export a built model, not a recipe")
    token = 0 if eot_id is None else eot_id
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": token,
        "eos_token_id": token,
        "use_cache": True,
    }


def model_config_from_hf(cfg: dict[str, Any]) -> ModelConfig:
    """gptkit's ModelConfig for an HF `config.json`, or an error naming what differs."""
    model_type = cfg.get("model_type")
    architectures = cfg.get("architectures") or ["GPT2LMHeadModel"]
    unsupported = [a for a in architectures if a not in SUPPORTED_ARCHITECTURES]
    if model_type != "gpt2" or unsupported:
        name = unsupported[0] if unsupported else f"model_type {model_type!r}"
        raise GptkitError(
            f"unsupported architecture {name}; gptkit imports GPT-2 checkpoints "
            f"(model_type 'gpt2', architectures {' or '.join(SUPPORTED_ARCHITECTURES)})"
        )
    n_embd = int(cfg.get("n_embd", 768))
    checks = [
        (cfg.get("activation_function", "gelu_new") in TANH_GELU,
         f"activation_function {cfg.get('activation_function')!r} (GPT-2 uses gelu_new)"),
        (cfg.get("n_inner") in (None, 4 * n_embd), f"n_inner {cfg.get('n_inner')} (4 x n_embd)"),
        (abs(float(cfg.get("layer_norm_epsilon", 1e-5)) - 1e-5) < 1e-12,
         f"layer_norm_epsilon {cfg.get('layer_norm_epsilon')} (1e-5)"),
        (cfg.get("scale_attn_weights", True), "scale_attn_weights false"),
        (not cfg.get("scale_attn_by_inverse_layer_idx", False),
         "scale_attn_by_inverse_layer_idx true"),
        (cfg.get("tie_word_embeddings", True), "untied word embeddings"),
        (not cfg.get("add_cross_attention", False), "cross-attention"),
    ]
    for ok, what in checks:
        if not ok:
            raise GptkitError(f"this GPT-2 checkpoint has {what}, which gptkit does not support")
    dropout = float(cfg.get("resid_pdrop", 0.1))
    return ModelConfig(
        n_layer=int(cfg.get("n_layer", 12)),
        n_head=int(cfg.get("n_head", 12)),
        n_embd=n_embd,
        block_size=int(cfg.get("n_positions", cfg.get("n_ctx", 1024))),
        vocab_size=int(cfg.get("vocab_size", 50257)),
        dropout=dropout,
        bias=True,
    )


def to_hf_state_dict(model: GPT | GPTClassifier) -> dict[str, Tensor]:
    """The model's weights under HF names and layouts (tied head stored once, as HF does; a
    classifier's head keeps gptkit's names, `score.*`, for `hf_classify.to_hf_head`)."""
    out: dict[str, Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        tensor = tensor.detach()
        out[name] = tensor.t().contiguous() if name.endswith(TRANSPOSED) else tensor.clone()
    if not model.config.bias:
        n_embd = model.config.n_embd
        width = {"attn.c_attn.bias": 3 * n_embd, "mlp.c_fc.bias": 4 * n_embd}
        dtype = model.transformer.wte.weight.dtype
        for layer in range(model.config.n_layer):
            for bias in BIASES:
                out[f"transformer.h.{layer}.{bias}"] = torch.zeros(width.get(bias, n_embd),
                                                                   dtype=dtype)
        out["transformer.ln_f.bias"] = torch.zeros(n_embd, dtype=dtype)
    return out


def from_hf_state_dict(state: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """HF GPT-2 weights (with or without the `transformer.` prefix) as gptkit's state dict.

    HF's causal-mask buffers (`attn.bias`, `attn.masked_bias`) are dropped; a stored
    `lm_head.weight` must equal the token embedding, since both models tie them.
    """
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")) and tensor.dim() != 1:
            continue  # causal-mask buffers of older checkpoints, not weights
        if name == "lm_head.weight":
            continue
        key = name if name.startswith("transformer.") else f"transformer.{name}"
        out[key] = tensor.t().contiguous() if key.endswith(TRANSPOSED) else tensor
    head = state.get("lm_head.weight")
    wte = out.get("transformer.wte.weight")
    if head is not None and wte is not None and not torch.equal(head, wte):
        raise GptkitError("lm_head.weight differs from the token embedding; gptkit ties them")
    expected = GPT(config).state_dict()
    expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(out))
    unexpected = sorted(set(out) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise GptkitError(f"the weights do not fit a GPT-2 of this config.json: {what}")
    for key, tensor in out.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise GptkitError(
                f"weight {key} has shape {tuple(tensor.shape)}, config.json implies "
                f"{tuple(expected[key].shape)}"
            )
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def to_transformers(model: GPT, eot_id: int | None = None) -> GPT2LMHeadModel:
    """An HF `GPT2LMHeadModel` computing exactly what `model` computes (eval mode)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(**hf_config(model.config, eot_id)))
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model), strict=False)
    # lm_head.weight is tied to wte and filled through it
    if [k for k in missing if k != "lm_head.weight"] or unexpected:
        raise GptkitError(f"export left weights unmatched: {missing} {unexpected}")
    return hf.eval()


def from_transformers(hf_model: GPT2LMHeadModel) -> GPT:
    """A gptkit GPT with the weights of an HF `GPT2LMHeadModel`."""
    config = model_config_from_hf(hf_model.config.to_dict())
    model = GPT(config)
    model.load_state_dict(from_hf_state_dict(hf_model.state_dict(), config))
    return model.eval()


# --- folders: export and import -----------------------------------------------------------------
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# What a GPT-2 import needs from a hub repository (weights in safetensors when it has them).
HUB_FILES = ["config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt",
             "tokenizer_config.json", "chat_template.jinja"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def hf_tokenizer_config(tokenizer: Tokenizer, max_length: int,
                        chat_template: str | None = None) -> dict[str, Any]:
    """tokenizer_config.json for our tokenizer.json: AutoTokenizer then encodes as we do.

    No BOS/EOS is added and `<|endoftext|>` is special (it is an added token already); only
    EOT is named (`chat_template.special_tokens`). Unknown characters still map to `<unk>`.
    A chat model's template is its `chat_template`, for `apply_chat_template`.

    `model_input_names` is stated because transformers 4.x otherwise has a fast tokenizer
    return `token_type_ids` too, which GPT-2 adds as embeddings: `model(**tok(text))`,
    `generate` and `pipeline` would then compute other logits, with no error.
    """
    chat = {} if chat_template is None else {"chat_template": chat_template}
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "model_input_names": ["input_ids", "attention_mask"],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        **special_tokens(tokenizer),
        **chat,
    }


def hf_generation_config(block_size: int, eot_id: int | None) -> dict[str, Any]:
    """generation_config.json: the special tokens, and generation kept inside the context.

    `max_length` (prompt plus new tokens) is the context: without it transformers 4.x stops
    at 20 tokens, and 5.x's `pipeline("text-generation")` asks for 256 new tokens, past the
    position embeddings of a short-context model (an IndexError). A set `max_length` makes
    5.x's pipeline leave out its `max_new_tokens` default; an explicit `max_new_tokens`
    still wins, as the caller asked for it.
    """
    tokens = {} if eot_id is None else {"bos_token_id": eot_id, "eos_token_id": eot_id,
                                        "pad_token_id": eot_id}
    return {**tokens, "max_length": block_size}


def export_hf(
    run_dir: str | Path, out: str | Path, *, which: str = "best", overwrite: bool = False
) -> Path:
    """Write a run as a Hugging Face GPT-2 folder (`from_pretrained(out)` loads it).

    A classifier run becomes a `GPT2For{Sequence,Token}Classification` (`hf_classify`), its
    tokenizer padding on the right with `<|endoftext|>`, the model's `pad_token_id`, so
    `pipeline("text-classification" | "token-classification")` scores batches as gptkit does.
    """
    from gptkit.run import load_run

    run = load_run(run_dir, which=which)
    classifier = run.classifier
    if classifier is None:
        check_gpt2_architecture(run.model.config)  # before the folder is touched
        with new_folder(Path(out), overwrite=overwrite, marker="config.json",
                        what="Hugging Face model folder") as tmp:
            write_hf_folder(tmp, run.model, run.tokenizer, run.path, card=hub_card(run_dir))
        return Path(out)
    model = classifier.model
    check_gpt2_architecture(model.config)
    hf_classify.check_exportable(classifier.task, model.pooling)
    eot = run.tokenizer.eot_id
    config = hf_classify.classifier_config(hf_config(model.config, eot), classifier.task,
                                           classifier.labels, eot)
    state = hf_classify.to_hf_head(to_hf_state_dict(model), classifier.task)
    template = read_chat_template(run.path)
    with new_folder(Path(out), overwrite=overwrite, marker="config.json",
                    what="Hugging Face model folder") as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        _write_json(tmp / "config.json", config)
        write_hf_tokenizer(tmp, run.tokenizer, model.config.block_size,
                           None if template is None else template.source, padding_side="right")
        (tmp / CARD_FILE).write_text(
            hub_card(run_dir, hf_classify.PIPELINE_TAG[classifier.task]), encoding="utf-8")
    return Path(out)


def write_hf_folder(folder: Path, model: GPT, tokenizer: Tokenizer, run_dir: Path, *,
                    card: str, weights: bool = True) -> None:
    """The files of a Hugging Face GPT-2 folder (weights, configs, tokenizer, card) into
    `folder`; `run_dir` gives the chat template. Shared by the merged export, the base model
    written beside a peft adapter (`gptkit.interop.peft_adapter`) and the ONNX export, which
    writes its own graph instead of the weights (`weights=False`) and whose folder
    transformers' and optimum's loaders read the same way."""
    check_gpt2_architecture(model.config)
    eot = tokenizer.eot_id
    template = read_chat_template(run_dir)
    if weights:
        save_file(to_hf_state_dict(model), str(folder / "model.safetensors"),
                  metadata={"format": "pt"})
    _write_json(folder / "config.json", hf_config(model.config, eot))
    _write_json(folder / "generation_config.json",
                hf_generation_config(model.config.block_size, eot))
    write_hf_tokenizer(folder, tokenizer, model.config.block_size,
                       None if template is None else template.source)
    (folder / CARD_FILE).write_text(card, encoding="utf-8")


def write_hf_tokenizer(folder: Path, tokenizer: Tokenizer, max_length: int,
                       chat_template: str | None, padding_side: str | None = None) -> None:
    """tokenizer.json and its configs, so that `AutoTokenizer.from_pretrained(folder)` works;
    `padding_side` where the reader must pad on a given side (classifiers: right)."""
    tokenizer.save(folder / "tokenizer.json")
    config = hf_tokenizer_config(tokenizer, max_length, chat_template)
    if padding_side is not None:
        config["padding_side"] = padding_side
    _write_json(folder / "tokenizer_config.json", config)
    _write_json(folder / "special_tokens_map.json", special_tokens(tokenizer))


def hf_folder(source: str) -> Path:
    """`source` as a local folder: itself, or a hub id downloaded (needed files only)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not HUB_ID.match(source):
        raise GptkitError(
            f"{source} is neither a folder in Hugging Face layout (config.json, weights, "
            "tokenizer files) nor a hub id like gpt2 or openai-community/gpt2-medium"
        )
    fix = (f"download it where there is a network (e.g. `hf download {source}`) and pass "
           "the folder: gptkit import FOLDER --out RUN")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise GptkitError(
            f"{source!r} is not a local folder, and downloading it needs huggingface_hub: "
            f"pip install 'gptkit[hf]', or {fix}"
        ) from None
    offline = hub_offline()
    try:
        folder = Path(snapshot_download(source, allow_patterns=HUB_FILES, local_files_only=offline))
        if not (folder / "model.safetensors").is_file():
            folder = Path(snapshot_download(source, allow_patterns=["pytorch_model.bin"],
                                            local_files_only=offline))
    except Exception as exc:
        if offline:
            raise GptkitError(
                f"{source!r} is not a local folder and downloads are off (GPTKIT_OFFLINE or "
                f"HF_HUB_OFFLINE); {fix}"
            ) from exc
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GptkitError(
            f"cannot download {source!r} from the Hugging Face hub ({reason}); check the id "
            f"and the network, or {fix}"
        ) from exc
    return folder


def read_hf_weights(folder: Path) -> tuple[Path, dict[str, Tensor]]:
    """The weights file of an HF folder and its tensors (pickles only as weights_only)."""
    file = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if file is None:
        raise GptkitError(
            f"no weights in {folder}: expected {' or '.join(WEIGHT_FILES)}; download the "
            "model's weights file into that folder"
        )
    try:
        if file.suffix == ".safetensors":
            return file, load_file(str(file))
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, EOFError, ValueError,
            pickle.UnpicklingError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GptkitError(f"cannot read weights {file} ({reason}); is the file complete?") from exc
    if not isinstance(state, dict) or not all(isinstance(t, Tensor) for t in state.values()):
        raise GptkitError(f"{file} does not hold a state dict of tensors")
    return file, state


def import_hf(source: str, out: str | Path, *, overwrite: bool = False) -> Path:
    """Make a gptkit run directory from an HF GPT-2 folder or hub id.

    The run looks like a trained one (config.yaml, tokenizer.json, best/) without
    checkpoints, so `load_run`, eval, sample, info and `train.init_from` accept it. A chat
    model's template (tokenizer_config.json's `chat_template`) comes along. A
    `GPT2For{Sequence,Token}Classification` becomes a classifier run (labels.json, the head
    in best/) that `gptkit classify` uses.
    """
    out = Path(out)
    check_target(out.resolve(), overwrite=overwrite, marker=CONFIG_FILE,
                  what="gptkit run")  # before a download, which may be long
    folder = hf_folder(source)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise GptkitError(f"{config_file} not found; a Hugging Face model folder has one")
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
        config = model_config_from_hf(raw)
        task = hf_classify.task_of(raw)
    except (ValueError, TypeError, AttributeError) as exc:
        raise GptkitError(f"{config_file} is not a valid GPT-2 config ({exc})") from exc
    if not any((folder / n).is_file() for n in ("tokenizer.json", "vocab.json")):
        raise GptkitError(
            f"no tokenizer in {folder}: expected tokenizer.json, or vocab.json and merges.txt"
        )
    tokenizer = Tokenizer.from_gpt2_files(folder)
    assert config.vocab_size is not None
    if tokenizer.vocab_size > config.vocab_size:
        raise GptkitError(
            f"the tokenizer in {folder} has {tokenizer.vocab_size} tokens but the model's "
            f"embedding only {config.vocab_size} rows; use the model's own tokenizer files"
        )
    file, state = read_hf_weights(folder)
    head: dict[str, Tensor] = {}
    try:
        if task is not None:
            state, head = hf_classify.split_hf_head(state, task)
        weights = from_hf_state_dict(state, config)
    except GptkitError as exc:
        raise GptkitError(f"{file}: {exc}") from exc
    model: GPT | GPTClassifier = GPT(config)
    labels: list[str] = []
    if task is not None:
        labels = hf_classify.labels_from_hf(raw, head["score.weight"].size(0))
        model = GPTClassifier(config, len(labels), task)
        weights.pop("lm_head.weight")
        weights.update(head)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise GptkitError(f"{file}: {str(exc).splitlines()[0]}") from exc
    template = read_chat_template(folder)
    cfg = RunConfig(name=out.name, model=config, data=DataConfig(tokenizer="gpt2"),
                    classify=ClassifyConfig(task=task or "sequence"))
    info = {"step": 0, "val_loss": None, "tokens_seen": 0, "model": config.model_dump(),
            "imported_from": source}
    with new_folder(out, overwrite=overwrite, marker=CONFIG_FILE,
                               what="gptkit run") as tmp:
        save_config(cfg, RunDir(tmp).config_file)
        tokenizer.save(RunDir(tmp).tokenizer_file)
        if task is not None:
            _write_json(RunDir(tmp).labels_file, {"task": task, "labels": labels})
        if template is not None:
            write_chat_template(tmp, template)
        card = render_card(cfg, info)

        def write_card(folder: Path) -> None:
            (folder / CARD_FILE).write_text(card, encoding="utf-8")

        save_best(tmp, model, info, extra=write_card)
    return out
