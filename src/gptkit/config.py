"""Typed run configuration: dataclasses, YAML recipes and dotted command-line overrides.

A run is described by one `RunConfig`. It starts from a recipe (a YAML file shipped in
`gptkit/recipes/` or given by path), gets `--set section.key=value` overrides applied with
type checks, and is saved resolved into the run directory as `config.yaml`.
"""

from __future__ import annotations

import dataclasses
import decimal
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union

import yaml

from gptkit.errors import GptkitError, check_all
from gptkit.generation.config import GenerationConfig

# Shapes users ask for by name. A preset fills in the model fields a recipe does not set.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # nanoGPT's CPU recipe for Tiny Shakespeare (char level)
    "nanogpt-cpu": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64},
    # nanoGPT's GPU recipe for Tiny Shakespeare (char level)
    "nanogpt-gpu": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256},
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50257},
    "gpt2-medium": {
        "n_layer": 24, "n_head": 16, "n_embd": 1024, "block_size": 1024, "vocab_size": 50257,
    },
    "gpt2-large": {
        "n_layer": 36, "n_head": 20, "n_embd": 1280, "block_size": 1024, "vocab_size": 50257,
    },
    "gpt2-xl": {
        "n_layer": 48, "n_head": 25, "n_embd": 1600, "block_size": 1024, "vocab_size": 50257,
    },
}


@dataclass
class ModelConfig:
    """GPT-2 architecture hyper-parameters."""

    preset: str | None = None
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    # None: the tokenizer's vocabulary size. A larger value pads the embedding table
    # (e.g. 50304 for GPU-friendly shapes); padded ids are never produced by the tokenizer.
    vocab_size: int | None = None
    dropout: float = 0.0
    bias: bool = True
    # Options beyond GPT-2 (model.py); the defaults are GPT-2 exactly, and only GPT-2 exports
    # to Hugging Face.
    pos_embedding: str = "learned"  # learned (GPT-2's position table) | rope (rotary, no table)
    norm: str = "layernorm"  # layernorm | rmsnorm
    qk_norm: bool = False  # RMSNorm of each head's queries and keys before attention
    mlp: str = "gelu"  # gelu (4x wide) | relu2 (squared ReLU, 4x) | swiglu (gated, ~8/3x)
    tie_embeddings: bool = True  # false: the output layer (lm_head) has its own matrix

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict: peft before 0.18 reads a model's `config` only through this."""
        return dataclasses.asdict(self)


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes token ids."""

    # tinyshakespeare | wikitext2 | wikitext2-raw | a text file, folder, glob or .jsonl file
    source: str = "tinyshakespeare"
    tokenizer: str = "char"  # char | bpe | gpt2
    vocab_size: int = 8192  # size of a trained BPE vocabulary (tokenizer: bpe)
    tokenizer_path: str | None = None  # gpt2: tokenizer.json, or folder with vocab.json+merges.txt
    train_split: str = "train"
    # evaluated during training: picks best/ and stops early, so it is not the split to report
    eval_split: str = "val"
    # what `gptkit eval` reports by default; never eval_split (None: no separate test split)
    test_split: str | None = None
    # WikiText only; the three splits above follow from it. published: train/valid/test;
    # offline (no train split): train on valid's articles but the last val_fraction
    # (valid-head), select on those (valid-tail), report test; auto: published when the train
    # split is in the data root or downloads, else offline. manual: the splits as given.
    protocol: str = "manual"
    # held-out share for text/JSONL sources that have no splits (and for protocol offline)
    val_fraction: float = 0.1
    # how a text/JSONL source is cut into train/val: documents (the last documents whole: a
    # text file or a JSONL record is one document) | fraction (the last val_fraction of
    # every document's characters)
    split_by: str = "documents"
    text_field: str = "text"  # JSONL: the field holding each document's text
    # prepared token files are shards of at most this many ids (2**28: 512 MiB of uint16), so
    # no file or write holds the whole corpus; an existing cache keeps the size it was made with
    shard_tokens: int = 1 << 28
    workers: int = 1  # processes that tokenise when preparing data (0: one per CPU core)
    # text: language modelling on the whole text. sft: JSONL of {"prompt", "response"} or
    # {"messages": [...]} records, loss on responses only (gptkit.finetune.sft)
    format: str = "text"
    packing: bool = False  # sft: pack examples into full windows instead of padding each one
    # augmentations of training examples (sft, classification), e.g. [word_swap=0.1];
    # see gptkit.finetune.augment
    augment: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    """Optimisation, schedule, precision and bookkeeping of a training run."""

    max_steps: int = 2000
    micro_batch_size: int = 12  # sequences per forward pass on one process
    # Tokens per optimizer step over all processes; None means one micro-batch per process.
    # Gradient accumulation = batch_tokens / (micro_batch_size * block_size * world_size).
    batch_tokens: int | None = None
    # adamw | adam | sgd | rmsprop | adagrad | muon (Muon for the blocks' weight matrices,
    # AdamW for the rest, one learning rate: gptkit.train.optim.MuonAdamW)
    optimizer: str = "adamw"
    lr: float = 1e-3
    # Where the decay ends, as a fraction of lr (so lowering lr lowers it too), or as an
    # absolute rate (min_lr; what runs before min_lr_ratio existed saved). Set at most one;
    # neither means min_lr_ratio 0.1.
    min_lr_ratio: float | None = None
    min_lr: float | None = None
    # cosine | linear | constant | wsd (warmup-stable-decay: constant, then a linear cooldown)
    schedule: str = "cosine"
    warmup_steps: int = 100
    decay_steps: int | None = None  # steps until min_lr is reached; None means max_steps
    cooldown_fraction: float = 0.2  # wsd: the share of those steps spent decaying to min_lr
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.9  # sgd, rmsprop, and muon's matrices (PyTorch's Muon default: 0.95)
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool | None = None  # None: compile on CUDA only
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    seed: int = 1337
    eval_interval: int = 250
    eval_tokens: int | None = None  # cap on validation tokens per evaluation; None: whole split
    log_interval: int = 10
    checkpoint_interval: int = 500
    keep_checkpoints: int = 2
    early_stopping_patience: int = 0  # evaluations without improvement before stopping; 0: off
    # Recompute each block's activations in the backward pass instead of keeping them: less
    # memory (one block's activations instead of all), about a third more compute.
    activation_checkpointing: bool = False
    # A run directory whose best weights, model shape and tokenizer a new run starts from
    # (fine-tuning, continued pre-training); optimizer and schedule start fresh.
    init_from: str | None = None

    @property
    def floor_lr(self) -> float:
        """The learning rate the decay ends at: train.min_lr, else lr x train.min_lr_ratio."""
        if self.min_lr is not None:
            return self.min_lr
        return self.lr * (0.1 if self.min_lr_ratio is None else self.min_lr_ratio)


@dataclass
class DistConfig:
    """How several processes (torchrun) share the work; ignored in a single process."""

    # ddp: every process holds the whole model; fsdp: weights, gradients and optimizer state
    # sharded over processes per block (FSDP2); none: one process only; auto: fsdp for
    # models of at least fsdp_min_params parameters, else ddp
    strategy: str = "auto"
    fsdp_min_params: int = 500_000_000
    # fsdp on CUDA: keep the sharded weights, gradients and optimizer state in host memory
    cpu_offload: bool = False
    timeout_s: float = 600.0  # a collective waiting longer than this ends the job


@dataclass
class FinetuneConfig:
    """Which parameters learn and how fast, when adapting a model (gptkit.finetune)."""

    freeze_embeddings: bool = False  # token and position embeddings (and so the tied LM head)
    freeze_layers: int = 0  # the lowest N transformer blocks
    unfreeze_every: int = 0  # gradual unfreezing: one more frozen block (top first) per K steps
    layer_lr_decay: float = 1.0  # block i learns at lr * decay ** (n_layer - i); 1 = off
    lora_r: int = 0  # LoRA rank (through peft); 0 = full fine-tuning
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"])


@dataclass
class DistillConfig:
    """Knowledge distillation from a teacher run sharing the student's tokenizer."""

    teacher: str | None = None  # the teacher's run directory; None: no distillation
    alpha: float = 0.5  # loss = alpha * KL * T^2 + (1 - alpha) * cross-entropy
    temperature: float = 2.0


@dataclass
class ClassifyConfig:
    """`gptkit finetune-classify`: a head on the GPT for sequence or token classification."""

    task: str = "sequence"  # sequence (text -> label) | token (tokens -> tags, e.g. NER)
    pooling: str = "last"  # sequence: last token's hidden state, or mean over tokens
    text_field: str = "text"
    label_field: str = "label"
    tokens_field: str = "tokens"
    tags_field: str = "tags"


@dataclass
class EvalConfig:
    """How `gptkit eval` scores a split."""

    stride: int | None = None  # None: non-overlapping windows of block_size tokens
    batch_size: int = 16  # windows per forward pass


@dataclass
class LogConfig:
    """What a run records besides metrics.jsonl (always written)."""

    tensorboard: bool = True  # event files in runs/X/tb/
    wandb: bool = False  # Weights & Biases (pip install -e ".[wandb]"); WANDB_MODE is respected
    wandb_project: str = "gptkit"
    sample_tokens: int = 200  # tokens sampled from sample.prompt at each evaluation; 0 = off
    plots: bool = True  # loss curves in runs/X/plots/ at the end of training


@dataclass
class RunConfig:
    name: str = "shakespeare-char"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sample: GenerationConfig = field(default_factory=GenerationConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "sample": self.sample.model_dump()}

    def validate(self) -> RunConfig:
        """Reject settings that cannot work, naming the key and the fix."""
        m, d, t, e = self.model, self.data, self.train, self.eval
        f, k, c, g, p = self.finetune, self.distill, self.classify, self.log, self.dist
        checks: list[tuple[bool, str]] = [
            (m.n_layer >= 1, f"model.n_layer must be >= 1 (got {m.n_layer})"),
            (m.n_head >= 1, f"model.n_head must be >= 1 (got {m.n_head})"),
            (
                m.n_embd >= 1 and m.n_embd % max(m.n_head, 1) == 0,
                f"model.n_embd ({m.n_embd}) must be a positive multiple of model.n_head "
                f"({m.n_head})",
            ),
            (m.block_size >= 1, f"model.block_size must be >= 1 (got {m.block_size})"),
            (
                m.vocab_size is None or m.vocab_size >= 1,
                f"model.vocab_size must be >= 1 or null (got {m.vocab_size})",
            ),
            (0.0 <= m.dropout < 1.0, f"model.dropout must be in [0, 1) (got {m.dropout})"),
            (d.tokenizer in ("char", "bpe", "gpt2"),
             f"data.tokenizer must be char, bpe or gpt2 (got {d.tokenizer!r})"),
            (d.vocab_size >= 260, f"data.vocab_size must be >= 260 (got {d.vocab_size})"),
            (0.0 < d.val_fraction < 1.0,
             f"data.val_fraction must be in (0, 1) (got {d.val_fraction})"),
            (d.shard_tokens >= 1, f"data.shard_tokens must be >= 1 (got {d.shard_tokens})"),
            (d.workers >= 0,
             f"data.workers must be >= 0 (0: one per CPU core; got {d.workers})"),
            (d.split_by in ("documents", "fraction"),
             f"data.split_by must be documents or fraction (got {d.split_by!r})"),
            (t.max_steps >= 0, f"train.max_steps must be >= 0 (got {t.max_steps})"),
            (t.micro_batch_size >= 1,
             f"train.micro_batch_size must be >= 1 (got {t.micro_batch_size})"),
            (t.batch_tokens is None or t.batch_tokens >= 1,
             f"train.batch_tokens must be >= 1 or null (got {t.batch_tokens})"),
            (t.optimizer in ("adamw", "adam", "sgd", "rmsprop", "adagrad", "muon"),
             f"train.optimizer must be adamw, adam, sgd, rmsprop, adagrad or muon "
             f"(got {t.optimizer!r})"),
            (t.optimizer != "muon" or f.lora_r == 0,
             "train.optimizer=muon does not train LoRA adapters (finetune.lora_r > 0): Muon is "
             "for full hidden weight matrices; use train.optimizer=adamw"),
            (t.lr > 0, f"train.lr must be > 0 (got {t.lr})"),
            (t.min_lr is None or t.min_lr_ratio is None,
             "train.min_lr and train.min_lr_ratio both set where the decay ends; keep one "
             "(min_lr_ratio scales with train.lr; --set train.min_lr=null drops min_lr)"),
            (t.min_lr_ratio is None or 0 <= t.min_lr_ratio <= 1,
             f"train.min_lr_ratio must be in [0, 1] (got {t.min_lr_ratio})"),
            (t.min_lr is None or 0 <= t.min_lr <= t.lr,
             f"train.min_lr must be in [0, train.lr] (got {t.min_lr}); or set "
             "train.min_lr_ratio instead, a fraction of train.lr"),
            (t.schedule in ("cosine", "linear", "constant", "wsd"),
             f"train.schedule must be cosine, linear, constant or wsd (got {t.schedule!r})"),
            (0 <= t.cooldown_fraction <= 1,
             f"train.cooldown_fraction must be in [0, 1] (got {t.cooldown_fraction})"),
            (t.warmup_steps >= 0, f"train.warmup_steps must be >= 0 (got {t.warmup_steps})"),
            (t.decay_steps is None or t.decay_steps >= 1,
             f"train.decay_steps must be >= 1 or null (got {t.decay_steps})"),
            (t.weight_decay >= 0, f"train.weight_decay must be >= 0 (got {t.weight_decay})"),
            (0 <= t.beta1 < 1 and 0 <= t.beta2 < 1,
             f"train.beta1 and train.beta2 must be in [0, 1) (got {t.beta1}, {t.beta2})"),
            (t.eps > 0, f"train.eps must be > 0 (got {t.eps})"),
            (t.momentum >= 0, f"train.momentum must be >= 0 (got {t.momentum})"),
            (t.grad_clip >= 0, f"train.grad_clip must be >= 0 (got {t.grad_clip})"),
            (t.precision in ("auto", "fp32", "bf16", "fp16"),
             f"train.precision must be auto, fp32, bf16 or fp16 (got {t.precision!r})"),
            (t.eval_interval >= 1, f"train.eval_interval must be >= 1 (got {t.eval_interval})"),
            (t.eval_tokens is None or t.eval_tokens >= 1,
             f"train.eval_tokens must be >= 1 or null (got {t.eval_tokens})"),
            (t.log_interval >= 1, f"train.log_interval must be >= 1 (got {t.log_interval})"),
            (t.checkpoint_interval >= 1,
             f"train.checkpoint_interval must be >= 1 (got {t.checkpoint_interval})"),
            (t.keep_checkpoints >= 1,
             f"train.keep_checkpoints must be >= 1 (got {t.keep_checkpoints})"),
            (0 <= t.seed < 2**32,
             f"train.seed must be in [0, 2**32 - 1], the seeds numpy accepts (got {t.seed})"),
            (t.early_stopping_patience >= 0,
             f"train.early_stopping_patience must be >= 0 (got {t.early_stopping_patience})"),
            (t.init_from is None or t.init_from.strip() != "",
             "train.init_from must name a run directory, or be null"),
            (p.strategy in ("auto", "ddp", "fsdp", "none"),
             f"dist.strategy must be auto, ddp, fsdp or none (got {p.strategy!r})"),
            (p.fsdp_min_params >= 0,
             f"dist.fsdp_min_params must be >= 0 (got {p.fsdp_min_params})"),
            (p.timeout_s > 0, f"dist.timeout_s must be > 0 (got {p.timeout_s})"),
            (not p.cpu_offload or p.strategy == "fsdp",
             "dist.cpu_offload is an FSDP option; add --set dist.strategy=fsdp"),
            (e.stride is None or e.stride >= 1, f"eval.stride must be >= 1 (got {e.stride})"),
            (e.stride is None or e.stride <= m.block_size,
             f"eval.stride ({e.stride}) must not exceed model.block_size ({m.block_size})"),
            (e.batch_size >= 1, f"eval.batch_size must be >= 1 (got {e.batch_size})"),
            (d.format in ("text", "sft"), f"data.format must be text or sft (got {d.format!r})"),
            (all(isinstance(a, str) and a for a in d.augment),
             f"data.augment must be a list of non-empty strings (got {d.augment!r})"),
            (0 <= f.freeze_layers <= m.n_layer,
             f"finetune.freeze_layers must be in [0, model.n_layer={m.n_layer}] "
             f"(got {f.freeze_layers})"),
            (f.unfreeze_every >= 0,
             f"finetune.unfreeze_every must be >= 0, 0 = off (got {f.unfreeze_every})"),
            (0 < f.layer_lr_decay <= 1,
             f"finetune.layer_lr_decay must be in (0, 1], 1 = off (got {f.layer_lr_decay})"),
            (f.lora_r >= 0, f"finetune.lora_r must be >= 0, 0 = off (got {f.lora_r})"),
            (f.lora_alpha > 0, f"finetune.lora_alpha must be > 0 (got {f.lora_alpha})"),
            (0 <= f.lora_dropout < 1,
             f"finetune.lora_dropout must be in [0, 1) (got {f.lora_dropout})"),
            (f.lora_r == 0 or bool(f.lora_targets),
             "finetune.lora_targets must name at least one layer, e.g. [c_attn]"),
            (k.teacher is None or k.teacher.strip() != "",
             "distill.teacher must name a run directory, or be null"),
            (0 <= k.alpha <= 1, f"distill.alpha must be in [0, 1] (got {k.alpha})"),
            (k.temperature > 0, f"distill.temperature must be > 0 (got {k.temperature})"),
            (c.task in ("sequence", "token"),
             f"classify.task must be sequence or token (got {c.task!r})"),
            (c.pooling in ("last", "mean"),
             f"classify.pooling must be last or mean (got {c.pooling!r})"),
            (g.sample_tokens >= 0,
             f"log.sample_tokens must be >= 0, 0 = off (got {g.sample_tokens})"),
            (g.wandb_project.strip() != "", "log.wandb_project must not be empty"),
        ]
        checks += model_option_checks(m)
        checks += split_checks(d)
        check_all(checks)
        return self


# data.protocol -> (train_split, eval_split, test_split); data/sources.py reads the splits
SPLIT_PROTOCOLS = {
    "published": ("train", "valid", "test"),
    "offline": ("valid-head", "valid-tail", "test"),
}


def _split_parts(split: str) -> set[str]:
    """The pieces of text a split name covers, so overlapping names can be told apart."""
    split = "valid" if split == "val" else split
    return {"valid-head", "valid-tail"} if split == "valid" else {split}


def split_checks(d: DataConfig) -> list[tuple[bool, str]]:
    """The split trained on, the one selected on and the one reported never share text."""
    names = {"data.train_split": d.train_split, "data.eval_split": d.eval_split,
             "data.test_split": d.test_split}
    checks = [
        (d.protocol in ("manual", "auto", *SPLIT_PROTOCOLS),
         f"data.protocol must be manual, auto, published or offline (got {d.protocol!r})"),
        (d.protocol == "manual" or d.source in ("wikitext2", "wikitext2-raw"),
         f"data.protocol={d.protocol} applies to WikiText sources (wikitext2, wikitext2-raw); "
         "for other data add --set data.protocol=manual (and set data.train_split, "
         "data.eval_split, data.test_split where its splits have other names)"),
    ]
    wikitext = d.source in ("wikitext2", "wikitext2-raw")
    named = wikitext or d.source == "tinyshakespeare"
    checks += [
        (d.split_by == "documents" or not named,
         f"data.split_by applies to your own text/JSONL files; {d.source} has fixed splits"),
        (d.val_fraction == DataConfig.val_fraction or d.source != "tinyshakespeare",
         "data.val_fraction does nothing for tinyshakespeare (nanoGPT's fixed 90/10 cut); it "
         "applies to your own files and to WikiText's data.protocol=offline"),
        (d.val_fraction == DataConfig.val_fraction or not wikitext
         or d.protocol in ("offline", "auto"),
         f"data.val_fraction does nothing for {d.source} with data.protocol={d.protocol}; it "
         "sets the share of valid held out by data.protocol=offline (or auto)"),
    ]
    defaults = (DataConfig.train_split, DataConfig.eval_split, None)
    chosen = SPLIT_PROTOCOLS.get(d.protocol, defaults)
    for (key, value), default, mine in zip(names.items(), defaults, chosen, strict=True):
        checks.append((
            d.protocol == "manual" or value in (default, mine),
            f"{key}={value} contradicts data.protocol={d.protocol}, which chooses the splits; "
            f"drop {key}, or set data.protocol=manual",
        ))
    pairs = [("data.train_split", "data.eval_split"), ("data.train_split", "data.test_split"),
             ("data.eval_split", "data.test_split")]
    for a, b in pairs:
        first, second = names[a], names[b]
        checks.append((
            first is None or second is None or not _split_parts(first) & _split_parts(second),
            f"{a} ({first}) and {b} ({second}) share text: a model must not be trained on, "
            "or select its best checkpoint by, the split it is judged on; choose another "
            f"{b}" + (" (e.g. data.protocol=offline holds out part of valid)"
                      if d.source in ("wikitext2", "wikitext2-raw") else ""),
        ))
    return checks


def model_option_checks(m: ModelConfig) -> list[tuple[bool, str]]:
    """Checks on the architecture options beyond GPT-2, shared by the config and `GPT`."""
    head_dim = m.n_embd // max(m.n_head, 1)
    return [
        (m.pos_embedding in ("learned", "rope"),
         f"model.pos_embedding must be learned or rope (got {m.pos_embedding!r})"),
        (m.pos_embedding != "rope" or head_dim % 2 == 0,
         f"model.pos_embedding=rope rotates pairs of channels and needs an even head size; "
         f"model.n_embd / model.n_head is {head_dim}: change either"),
        (m.norm in ("layernorm", "rmsnorm"),
         f"model.norm must be layernorm or rmsnorm (got {m.norm!r})"),
        (m.mlp in ("gelu", "relu2", "swiglu"),
         f"model.mlp must be gelu, relu2 or swiglu (got {m.mlp!r})"),
    ]


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "dist": DistConfig,
    "eval": EvalConfig,
    "sample": GenerationConfig,
    "finetune": FinetuneConfig,
    "distill": DistillConfig,
    "classify": ClassifyConfig,
    "log": LogConfig,
}
TOP_LEVEL = ("name",)


def field_names(cls: type) -> list[str]:
    """The setting names of a section (a dataclass, or the pydantic `GenerationConfig`)."""
    if cls is GenerationConfig:
        return list(GenerationConfig.model_fields)
    return [f.name for f in dataclasses.fields(cls)]


def recipe_names() -> list[str]:
    """Names of the recipes shipped with gptkit."""
    folder = resources.files("gptkit") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(recipe: str) -> dict[str, Any]:
    """A shipped recipe by name, or a YAML file by path, as a raw nested dict."""
    path = Path(recipe)
    if recipe.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise GptkitError(f"recipe file {recipe!r} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise GptkitError(f"recipe {recipe!r} is not UTF-8 text (byte {exc.start}); save "
                              "it as UTF-8") from None
    else:
        resource = resources.files("gptkit") / "recipes" / f"{recipe}.yaml"
        if not resource.is_file():
            names = ", ".join(recipe_names())
            raise GptkitError(f"unknown recipe {recipe!r}; choose one of: {names}, or a .yaml path")
        text = resource.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise GptkitError(f"recipe {recipe!r} is not valid YAML: {exc}".replace("\n", " ")) from exc
    if not isinstance(raw, dict):
        raise GptkitError(
            f"recipe {recipe!r} must be a mapping of sections, got {type(raw).__name__}"
        )
    return raw


def _suggest(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_key(section: str | None, key: str) -> None:
    if not isinstance(key, str):  # e.g. `1: 2` in a YAML file
        where = f" in section {section!r}" if section else ""
        raise GptkitError(f"setting names must be text; {key!r}{where} is not")
    if section is None:
        valid = list(SECTIONS) + list(TOP_LEVEL)
        if key not in valid:
            raise GptkitError(
                f"unknown setting {key!r}{_suggest(key, valid)}; "
                f"sections are: {', '.join(valid)}"
            )
        return
    names = field_names(SECTIONS[section])
    if key not in names:
        raise GptkitError(
            f"unknown setting '{section}.{key}'{_suggest(key, names)}; "
            f"valid keys in {section!r}: {', '.join(names)}"
        )


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings to a raw recipe dict (values stay strings here)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            raise GptkitError(f"--set needs key=value, got {item!r} (e.g. --set train.lr=3e-4)")
        dotted, value = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) == 1:
            _check_key(None, parts[0])
            if parts[0] in SECTIONS:
                raise GptkitError(f"--set {dotted} names a section; set one key, e.g. {dotted}.KEY")
            out[parts[0]] = value
            continue
        if len(parts) != 2:
            raise GptkitError(f"--set key {dotted!r} must look like section.key (e.g. train.lr)")
        section, key = parts
        _check_key(None, section)
        if section not in SECTIONS:
            raise GptkitError(f"{section!r} is not a section; sections are: {', '.join(SECTIONS)}")
        _check_key(section, key)
        out.setdefault(section, {})
        if not isinstance(out[section], dict):
            raise GptkitError(f"recipe section {section!r} must be a mapping")
        out[section][key] = value
    return out


def _coerce(where: str, value: Any, annotation: Any) -> Any:
    """Convert a YAML or command-line value to the field's type, or explain why not."""
    origin = typing.get_origin(annotation)
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        args = typing.get_args(annotation)
        inner = [a for a in args if a is not type(None)]
        if type(None) in args and (value is None or (
            isinstance(value, str) and value.strip().lower() in ("null", "none", "auto", "~")
        )):
            return None
        for kind in inner[:-1]:  # e.g. bool | str: a boolean if it reads as one, else text
            try:
                return _coerce(where, value, kind)
            except GptkitError:
                pass
        return _coerce(where, value, inner[-1])
    if origin is list:  # a YAML list, or on the command line [a, b] or one bare item
        items = value
        if isinstance(value, str) and value.startswith("["):
            try:
                items = yaml.safe_load(value)
            except yaml.YAMLError:
                raise GptkitError(f"{where} must be a list like [a, b], got {value!r}") from None
        if not isinstance(items, list):
            items = [value]
        return [_coerce(f"{where}[{i}]", item, typing.get_args(annotation)[0])
                for i, item in enumerate(items)]
    text = value.strip() if isinstance(value, str) else value
    try:
        if annotation is bool:
            if isinstance(text, bool):
                return text
            if isinstance(text, str) and text.lower() in ("true", "yes", "on", "1"):
                return True
            if isinstance(text, str) and text.lower() in ("false", "no", "off", "0"):
                return False
            raise ValueError
        if annotation is int:
            if isinstance(text, bool):
                raise ValueError
            if isinstance(text, float):
                if not text.is_integer():
                    raise ValueError
                return int(text)
            if isinstance(text, str):
                return _exact_int(text)
            return int(text)
        if annotation is float:
            if isinstance(text, bool):
                raise ValueError
            number = float(text)
            if not math.isfinite(number):
                raise GptkitError(f"{where} must be a finite number, got {value!r}")
            return number
        if annotation is str:
            if isinstance(text, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        kind = getattr(annotation, "__name__", str(annotation))
        raise GptkitError(f"{where} must be {kind}, got {value!r}") from None
    raise GptkitError(f"{where}: unsupported type {annotation}")


def _exact_int(text: str) -> int:
    """An integer written as text, kept exact: "9007199254740993" stays itself (a float would
    round it), and "1e6" or "1_000" are whole numbers too. ValueError when it is not one."""
    try:
        number = decimal.Decimal(text.replace("_", ""))
    except decimal.InvalidOperation:
        raise ValueError(text) from None
    # a finite whole number, and not so large that int() would build a huge one
    if not number.is_finite() or number != number.to_integral_value() or number.adjusted() > 100:
        raise ValueError(text)
    return int(number)


def _build_section(name: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    for key in values:
        _check_key(name, key)
    if name == "model":
        preset = values.get("preset")
        if preset is not None:
            if preset not in MODEL_PRESETS:
                raise GptkitError(
                    f"unknown model.preset {preset!r}; choose one of: {', '.join(MODEL_PRESETS)}"
                )
            values = {**MODEL_PRESETS[preset], **values}
    kwargs = {k: _coerce(f"{name}.{k}", v, hints[k]) for k, v in values.items()}
    if cls is GenerationConfig:
        return GenerationConfig.parse(kwargs, prefix=f"{name}.")
    return cls(**kwargs)


def build_config(raw: dict[str, Any]) -> RunConfig:
    """Type-check a raw nested dict and turn it into a validated RunConfig."""
    sections: dict[str, Any] = {}
    for key, value in raw.items():
        _check_key(None, key)
        if key in SECTIONS:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise GptkitError(f"section {key!r} must be a mapping, got {value!r}")
            sections[key] = _build_section(key, SECTIONS[key], value)
    name = _coerce("name", raw.get("name", RunConfig.name), str)
    return RunConfig(name=name, **sections).validate()


def load_config(recipe: str = "shakespeare-char", overrides: list[str] | None = None) -> RunConfig:
    """Recipe plus overrides, type-checked and validated."""
    return build_config(inherit_init_model(load_recipe(recipe), overrides or []))


# What fixes the shapes of a model's tensors (resume and init_from must keep them).
SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias", "pos_embedding",
              "norm", "qk_norm", "mlp", "tie_embeddings")


def inherit_init_model(recipe: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Recipe plus overrides; with `train.init_from`, the model and tokenizer are that run's.

    A run started from another keeps its shape: only `model.dropout` may change. Model keys
    of a recipe that does not itself name `init_from` are about a fresh model and give way;
    shape keys set next to `init_from` (in that recipe, or by --set) must agree with the run.
    Without the run's config.yaml nothing changes here (the trainer reports the missing run).
    """
    raw = apply_overrides(recipe, overrides)
    train = raw.get("train")
    hint = typing.get_type_hints(TrainConfig)["init_from"]
    init_from = _coerce("train.init_from", train.get("init_from"), hint) if isinstance(
        train, dict) else None
    if not init_from or not (Path(init_from) / "config.yaml").is_file():
        return raw
    base = read_config(Path(init_from) / "config.yaml")
    explicit: dict[str, Any] = {}
    recipe_train, recipe_model = recipe.get("train"), recipe.get("model")
    if isinstance(recipe_train, dict) and recipe_train.get("init_from") is not None and isinstance(
            recipe_model, dict):
        explicit.update(recipe_model)
    model_sets = [o for o in overrides if o.split("=", 1)[0].strip().startswith("model.")]
    explicit.update(apply_overrides({}, model_sets).get("model", {}))
    given = _build_section("model", ModelConfig, explicit)
    keys = set(explicit) | set(MODEL_PRESETS.get(given.preset or "", {}))
    for key in SHAPE_KEYS:
        mine, theirs = getattr(given, key), getattr(base.model, key)
        if key in keys and mine != theirs and not (key == "vocab_size" and mine is None):
            raise GptkitError(
                f"model.{key}={mine} conflicts with train.init_from={init_from}, whose model has "
                f"{key}={theirs}; a run started from another keeps its shape (only "
                "model.dropout may change): drop that setting"
            )
    model = {**dataclasses.asdict(base.model), "preset": None}
    if "dropout" in explicit:
        model["dropout"] = given.dropout
    tokenizer = {k: getattr(base.data, k) for k in ("tokenizer", "vocab_size", "tokenizer_path")}
    return {**raw, "model": model, "data": {**(raw.get("data") or {}), **tokenizer}}


def save_config(config: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")


def read_raw_config(path: Path) -> dict[str, Any]:
    """The settings saved in a run's config.yaml as a nested dict, not yet type-checked; a
    damaged file (not YAML, not text, not a mapping, unreadable) is a GptkitError naming it."""
    if not path.is_file():
        raise GptkitError(f"{path} not found: is {path.parent} a gptkit run directory?")
    fix = "restore it from a copy of the run (gptkit train writes it)"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise GptkitError(f"{path} is damaged: not UTF-8 text (byte {exc.start}); {fix}") from None
    except OSError as exc:
        raise GptkitError(f"cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise GptkitError(f"{path} is damaged: not valid YAML ({problem}{where}); {fix}"
                          ) from None
    if not isinstance(raw, dict):
        raise GptkitError(f"{path} is damaged: it must be a mapping of settings, not "
                          f"{type(raw).__name__}; {fix}")
    return raw


def read_config(path: Path) -> RunConfig:
    """The resolved config saved in a run directory; errors name the file."""
    raw = read_raw_config(path)
    try:
        return build_config(raw)
    except GptkitError as exc:
        raise GptkitError(f"{path}: {exc}") from None
