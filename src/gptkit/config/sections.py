"""The sections of a run's settings (all but `data:` and `sample:`), each check beside its field.

A field's type says what it may hold (its choices are the `Literal`s of `choices.py`), the
`Annotated` rules after it say which values make sense, and a section's `model_validator`
holds the checks that read two of its fields. Checks across sections live on `RunConfig`.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from gptkit.config.choices import (
    ChunkAggregate,
    ClassifyTask,
    ContextExtension,
    LongInputs,
    MlpKind,
    NormKind,
    OptimizerName,
    Pooling,
    PosEmbedding,
    Precision,
    ScheduleName,
    Strategy,
    ThresholdMode,
    TruncationSide,
)
from gptkit.config.fields import (
    Bool,
    Float,
    Int,
    Nullable,
    Settings,
    StepsOrEpochs,
    Str,
    StrList,
    above,
    at_least,
    none_words,
    rule,
    within,
)
from gptkit.errors import GptkitError, check_all

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
# What fixes the shapes of a model's tensors and what they compute (resume and init_from
# must keep them; init_from may change block_size, gptkit.config.context).
SHAPE_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias", "pos_embedding",
              "norm", "qk_norm", "mlp", "tie_embeddings", "rope_base", "rope_scale")
Positive = at_least(1)
NotNegative = at_least(0)
RunDir = rule(lambda v: v.strip() != "", "must name a run directory, or be null")


class ModelConfig(Settings):
    """GPT-2 architecture hyper-parameters."""

    section = "model"
    preset: Nullable[Str] = None
    n_layer: Annotated[Int, Positive] = 4
    n_head: Annotated[Int, Positive] = 4
    n_embd: Int = 128
    block_size: Annotated[Int, Positive] = 64
    # None: the tokenizer's vocabulary size. A larger value pads the embedding table
    # (e.g. 50304 for GPU-friendly shapes); padded ids are never produced by the tokenizer.
    vocab_size: Annotated[Nullable[Int], at_least(1, " or null")] = None
    dropout: Annotated[Float, within(0, 1, "[)")] = 0.0
    bias: Bool = True
    # Options beyond GPT-2 (gptkit.model); the defaults are GPT-2 exactly, and only GPT-2
    # exports to Hugging Face.
    pos_embedding: PosEmbedding = "learned"
    norm: NormKind = "layernorm"
    qk_norm: Bool = False  # RMSNorm of each head's queries and keys before attention
    mlp: MlpKind = "gelu"
    tie_embeddings: Bool = True  # false: the output layer (lm_head) has its own matrix
    # RoPE's angle base, and a factor on positions (< 1 after position interpolation); a
    # context extended from train.init_from sets them (gptkit.config.context)
    rope_base: Annotated[Float, above(0)] = 10_000.0
    rope_scale: Annotated[Float, within(0, 1, "(]")] = 1.0
    # how block_size was extended from train.init_from's; null: the position kind's default
    context_extension: Nullable[ContextExtension] = None

    @model_validator(mode="before")
    @classmethod
    def _fill_preset(cls, values: Any) -> Any:
        """model.preset fills the shape keys the recipe does not set itself."""
        preset = values.get("preset") if isinstance(values, dict) else None
        if isinstance(preset, str) and preset.strip().lower() in ("null", "none", "auto", "~"):
            preset = None
        if preset is None:
            return values
        if preset not in MODEL_PRESETS:
            raise GptkitError(
                f"unknown model.preset {preset!r}; choose one of: {', '.join(MODEL_PRESETS)}")
        return {**MODEL_PRESETS[preset], **values}

    @model_validator(mode="after")
    def _shape(self) -> ModelConfig:
        head_dim = self.n_embd // self.n_head
        check_all([
            (self.n_embd >= 1 and self.n_embd % self.n_head == 0,
             f"model.n_embd ({self.n_embd}) must be a positive multiple of model.n_head "
             f"({self.n_head})"),
            (self.pos_embedding != "rope" or head_dim % 2 == 0,
             "model.pos_embedding=rope rotates pairs of channels and needs an even head size; "
             f"model.n_embd / model.n_head is {head_dim}: change either"),
        ])
        return self

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict: peft before 0.18 reads a model's `config` only through this."""
        return self.model_dump()


class TrainConfig(Settings):
    """Optimisation, schedule, precision and bookkeeping of a training run."""

    section = "train"
    # The length of the run: max_steps optimizer steps, or `epochs` passes over the training
    # split, which the trainer turns into max_steps once it has read the data
    # (gptkit.train.epochs). Exactly one is set: a recipe that gives epochs and no max_steps
    # leaves max_steps null; over a recipe's max_steps, --set train.max_steps=null too.
    max_steps: Annotated[Nullable[Int], at_least(0, " or null")] = 2000
    epochs: Annotated[Nullable[Float], above(0, " or null")] = None
    micro_batch_size: Annotated[Int, Positive] = 12  # sequences per forward pass on one process
    # Tokens per optimizer step over all processes; None means one micro-batch per process.
    # Gradient accumulation = batch_tokens / (micro_batch_size * block_size * world_size).
    batch_tokens: Annotated[Nullable[Int], at_least(1, " or null")] = None
    # Sequence-length warmup (pre-training only; 0 steps: off): training windows grow linearly
    # from seq_warmup_start tokens to model.block_size over the first seq_warmup_steps steps,
    # in multiples of 8 (gptkit.data.loader.window_length). Sequences per step stay the same,
    # as in DeepSpeed's seqlen curriculum, so early steps hold fewer tokens. Evaluation
    # always uses model.block_size.
    seq_warmup_steps: Annotated[Int, NotNegative] = 0
    seq_warmup_start: Annotated[Int, Positive] = 8
    # muon: Muon for the blocks' weight matrices, AdamW for the rest, one learning rate
    # (gptkit.train.optim.MuonAdamW)
    optimizer: OptimizerName = "adamw"
    lr: Annotated[Float, above(0)] = 1e-3
    # Where the decay ends, as a fraction of lr (so lowering lr lowers it too), or as an
    # absolute rate (min_lr; what runs before min_lr_ratio existed saved). Set at most one;
    # neither means min_lr_ratio 0.1.
    min_lr_ratio: Annotated[Nullable[Float], within(0, 1)] = None
    min_lr: Nullable[Float] = None
    schedule: ScheduleName = "cosine"  # wsd: warmup-stable-decay (constant, then a cooldown)
    warmup_steps: Annotated[Int, NotNegative] = 100
    # steps until min_lr is reached; None means max_steps
    decay_steps: Annotated[Nullable[Int], at_least(1, " or null")] = None
    # wsd: the share of those steps spent decaying to min_lr
    cooldown_fraction: Annotated[Float, within(0, 1)] = 0.2
    # plateau (PyTorch's ReduceLROnPlateau, counted in evaluations of the validation loss):
    # lr x factor after more than `patience` evaluations without an improvement beyond
    # `threshold` (relative to the best, or absolute), then `cooldown` evaluations ignored
    plateau_factor: Annotated[Float, within(0, 1, "()")] = 0.1
    plateau_patience: Annotated[Int, NotNegative] = 10
    plateau_threshold: Annotated[Float, NotNegative] = 1e-4
    plateau_threshold_mode: ThresholdMode = "rel"
    plateau_cooldown: Annotated[Int, NotNegative] = 0
    # step: lr x step_gamma every step_size steps (StepLR); exponential: lr x exp_gamma each
    # step (ExponentialLR); both from the end of warmup, never below the floor
    step_size: Annotated[Int, Positive] = 1000
    step_gamma: Annotated[Float, within(0, 1, "(]")] = 0.1
    exp_gamma: Annotated[Float, within(0, 1, "(]")] = 0.999
    weight_decay: Annotated[Float, NotNegative] = 0.1
    beta1: Annotated[Float, within(0, 1, "[)")] = 0.9
    beta2: Annotated[Float, within(0, 1, "[)")] = 0.99
    eps: Annotated[Float, above(0)] = 1e-8
    # sgd, rmsprop, and muon's matrices (PyTorch's Muon default: 0.95)
    momentum: Annotated[Float, NotNegative] = 0.9
    grad_clip: Annotated[Float, NotNegative] = 1.0  # max gradient norm; 0 turns clipping off
    precision: Precision = "auto"
    compile: Nullable[Bool] = None  # None: compile on CUDA only
    device: Str = "auto"  # auto | cpu | cuda | cuda:N | mps
    seed: Annotated[Int, rule(lambda v: 0 <= v < 2**32, "must be in [0, 2**32 - 1], the seeds "
                              "numpy accepts (got {got})")] = 1337
    # the intervals are optimizer steps, or epochs written "0.5 epochs" (turned into steps
    # as train.epochs is)
    eval_interval: StepsOrEpochs = 250
    # cap on validation tokens per evaluation; None: whole split
    eval_tokens: Annotated[Nullable[Int], at_least(1, " or null")] = None
    log_interval: StepsOrEpochs = 10
    checkpoint_interval: StepsOrEpochs = 500
    keep_checkpoints: Annotated[Int, Positive] = 2
    # evaluations without improvement before stopping; 0: off
    early_stopping_patience: Annotated[Int, NotNegative] = 0
    # Recompute each block's activations in the backward pass instead of keeping them: less
    # memory (one block's activations instead of all), about a third more compute.
    activation_checkpointing: Bool = False
    # A run directory whose best weights, model shape and tokenizer a new run starts from
    # (fine-tuning, continued pre-training); optimizer and schedule start fresh.
    init_from: Annotated[Nullable[Str], RunDir] = None

    @model_validator(mode="before")
    @classmethod
    def _epochs_budget(cls, values: Any) -> Any:
        """train.epochs given where max_steps is not: max_steps is not the default 2000."""
        if isinstance(values, dict) and "max_steps" not in values and \
                none_words(values.get("epochs")) is not None:
            return {**values, "max_steps": None}
        return values

    @model_validator(mode="after")
    def _floor(self) -> TrainConfig:
        check_all([
            (self.max_steps is None or self.epochs is None,
             f"train.epochs={self.epochs:g} and train.max_steps={self.max_steps} both set the "
             "length of the run; keep one (--set train.max_steps=null trains by epochs)"
             if self.epochs is not None else ""),
            (self.max_steps is not None or self.epochs is not None,
             "train.max_steps and train.epochs are both null; set one, the length of the run"),
            (self.min_lr is None or self.min_lr_ratio is None,
             "train.min_lr and train.min_lr_ratio both set where the decay ends; keep one "
             "(min_lr_ratio scales with train.lr; --set train.min_lr=null drops min_lr)"),
            (self.min_lr is None or 0 <= self.min_lr <= self.lr,
             f"train.min_lr must be in [0, train.lr] (got {self.min_lr}); or set "
             "train.min_lr_ratio instead, a fraction of train.lr"),
        ])
        return self

    @property
    def steps(self) -> int:
        """max_steps, which the trainer settles from train.epochs when that is given."""
        if self.max_steps is None:
            raise GptkitError("train.epochs is not yet turned into steps: the trainer does it "
                              "once it has read the data (gptkit.train.epochs)")
        return self.max_steps

    @property
    def floor_lr(self) -> float:
        """The learning rate the decay ends at: train.min_lr, else lr x train.min_lr_ratio."""
        if self.min_lr is not None:
            return self.min_lr
        return self.lr * (0.1 if self.min_lr_ratio is None else self.min_lr_ratio)


class DistConfig(Settings):
    """How several processes (torchrun) share the work; ignored in a single process."""

    section = "dist"
    # ddp: every process holds the whole model; fsdp: weights, gradients and optimizer state
    # sharded over processes per block (FSDP2); none: one process only; auto: fsdp for
    # models of at least fsdp_min_params parameters, else ddp
    strategy: Strategy = "auto"
    fsdp_min_params: Annotated[Int, NotNegative] = 500_000_000
    # fsdp on CUDA: keep the sharded weights, gradients and optimizer state in host memory
    cpu_offload: Bool = False
    timeout_s: Annotated[Float, above(0)] = 600.0  # a collective waiting longer ends the job

    @model_validator(mode="after")
    def _offload(self) -> DistConfig:
        if self.cpu_offload and self.strategy != "fsdp":
            raise GptkitError("dist.cpu_offload is an FSDP option; add --set dist.strategy=fsdp")
        return self


class FinetuneConfig(Settings):
    """Which parameters learn and how fast, when adapting a model (gptkit.finetune)."""

    section = "finetune"
    # token and position embeddings (and so the tied LM head)
    freeze_embeddings: Bool = False
    freeze_layers: Int = 0  # the lowest N transformer blocks (checked on RunConfig)
    # gradual unfreezing: one more frozen block (top first) per K steps
    unfreeze_every: Annotated[Int, at_least(0, ", 0 = off")] = 0
    # block i learns at lr * decay ** (n_layer - i); 1 = off
    layer_lr_decay: Annotated[Float, within(0, 1, "(]", ", 1 = off")] = 1.0
    lora_r: Annotated[Int, at_least(0, ", 0 = off")] = 0  # LoRA rank (peft); 0: full fine-tuning
    lora_alpha: Annotated[Float, above(0)] = 16.0
    lora_dropout: Annotated[Float, within(0, 1, "[)")] = 0.0
    lora_targets: StrList = Field(default_factory=lambda: ["c_attn", "c_proj", "c_fc"])
    # SFT examples longer than model.block_size + 1 tokens: right cuts the end (keeps the
    # start, as before), left cuts the start (keeps the end: the last turns of a chat), as
    # Hugging Face tokenizers' truncation_side; the data summary counts what was cut
    truncation_side: TruncationSide = "right"

    @model_validator(mode="after")
    def _targets(self) -> FinetuneConfig:
        if self.lora_r and not self.lora_targets:
            raise GptkitError("finetune.lora_targets must name at least one layer, e.g. [c_attn]")
        return self


class DistillConfig(Settings):
    """Knowledge distillation from a teacher run sharing the student's tokenizer."""

    section = "distill"
    teacher: Annotated[Nullable[Str], RunDir] = None  # the teacher's run; None: no distillation
    # loss = alpha * KL * T^2 + (1 - alpha) * cross-entropy
    alpha: Annotated[Float, within(0, 1)] = 0.5
    temperature: Annotated[Float, above(0)] = 2.0


class ClassifyConfig(Settings):
    """`gptkit finetune-classify`: a head on the GPT for sequence or token classification."""

    section = "classify"
    task: ClassifyTask = "sequence"
    pooling: Pooling = "last"  # sequence: the last token's hidden state, or the mean
    text_field: Str = "text"
    label_field: Str = "label"
    tokens_field: Str = "tokens"
    tags_field: Str = "tags"
    # texts longer than model.block_size: truncate keeps the start; chunk splits them into
    # windows of block_size tokens overlapping by chunk_stride (null: block_size // 4), as
    # Hugging Face tokenizers' stride. Training: every chunk is an example with its
    # document's label (sequence) or its words' tags (token). Evaluation and prediction:
    # a document's label from its chunks' logits by chunk_aggregate; a word's tag from the
    # chunk where it has the most context (gptkit.finetune.chunks)
    long_inputs: LongInputs = "truncate"
    chunk_stride: Annotated[Nullable[Int], at_least(0, " or null")] = None
    chunk_aggregate: ChunkAggregate = "mean"


class EvalConfig(Settings):
    """How `gptkit eval` scores a split."""

    section = "eval"
    # None: non-overlapping windows of block_size tokens (at most block_size: RunConfig)
    stride: Annotated[Nullable[Int], Positive] = None
    batch_size: Annotated[Int, Positive] = 16  # windows per forward pass


class LogConfig(Settings):
    """What a run records besides metrics.jsonl (always written)."""

    section = "log"
    tensorboard: Bool = True  # event files in runs/X/tb/
    # Weights & Biases (pip install -e ".[wandb]"); WANDB_MODE is respected
    wandb: Bool = False
    wandb_project: Annotated[Str, rule(lambda v: v.strip() != "", "must not be empty")] = "gptkit"
    # tokens sampled from sample.prompt at each evaluation; 0 = off
    sample_tokens: Annotated[Int, at_least(0, ", 0 = off")] = 200
    plots: Bool = True  # loss curves in runs/X/plots/ at the end of training
