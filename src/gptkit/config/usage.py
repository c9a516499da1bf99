"""Which kinds of run read which setting, so that a setting that would do nothing is an error.

One table (USED_BY) declares, for every field of every config section, the kinds of run that
read it; `check_used` refuses a setting moved from its default in a run that does not read it,
and tests/test_config.py checks that every field is declared, so a new setting must say where
it applies (issue 17: `data.augment` was silently ignored by pre-training).
"""

from __future__ import annotations

from gptkit.config.run import SECTIONS, RunConfig, field_names
from gptkit.config.sections import (
    ClassifyConfig,
    DistConfig,
    DistillConfig,
    FinetuneConfig,
    LogConfig,
    ModelConfig,
)
from gptkit.errors import GptkitError
from gptkit.generation.config import GenerationConfig

# The kinds of run, for USED_BY: pre-training or continued pre-training on text (gptkit
# train), supervised fine-tuning (data.format=sft: gptkit finetune), classification
# (gptkit finetune-classify) and distillation (distill.teacher set, with train or finetune).
RUN_KINDS = ("train", "finetune", "classify", "distill")
_LM = ("train", "finetune")
_ALL = ("train", "finetune", "classify")
_TRAIN_LOOP = {f"train.{k}": _ALL for k in (
    "max_steps", "epochs", "micro_batch_size", "optimizer", "lr", "min_lr", "min_lr_ratio",
    "schedule", "warmup_steps", "decay_steps", "cooldown_fraction", "plateau_factor",
    "plateau_patience", "plateau_threshold", "plateau_threshold_mode", "plateau_cooldown",
    "step_size", "step_gamma", "exp_gamma", "weight_decay", "beta1", "beta2", "eps",
    "momentum", "grad_clip", "precision", "device", "seed", "eval_interval", "log_interval",
    "init_from")}
# Every setting, and the kinds of run that read it (sample.* and eval.* are saved with a
# language model for gptkit sample, serve and eval). A setting moved from its default in a
# run that does not read it is an error (check_used); tests/test_config.py checks
# that every field is listed here, so a new setting must say where it applies.
USED_BY: dict[str, tuple[str, ...]] = {
    **{f"model.{f}": _ALL for f in field_names(ModelConfig)},
    "data.source": _ALL, "data.tokenizer": _ALL, "data.vocab_size": _ALL,
    "data.tokenizer_path": _ALL, "data.val_fraction": _ALL,
    "data.train_split": ("train",), "data.eval_split": _LM, "data.test_split": ("train",),
    "data.protocol": ("train",), "data.split_by": ("train",), "data.text_field": ("train",),
    "data.shard_tokens": ("train",), "data.workers": ("train",),
    "data.format": ("finetune",), "data.packing": ("finetune",),
    "data.augment": ("finetune", "classify"),
    "data.hf_config": _ALL, "data.hf_data_files": _ALL, "data.hf_streaming": _ALL,
    **_TRAIN_LOOP,
    # every kind trains in the one loop (gptkit.train.trainer); batch_tokens counts windows
    **{f"train.{k}": _ALL for k in ("compile", "checkpoint_interval", "keep_checkpoints",
                                    "early_stopping_patience", "activation_checkpointing")},
    "train.batch_tokens": _LM,
    "train.eval_tokens": ("train",),
    # random windows of text only: fine-tuning and classification examples are not windows
    "train.seq_warmup_steps": ("train",), "train.seq_warmup_start": ("train",),
    **{f"dist.{f}": _ALL for f in field_names(DistConfig)},
    "eval.stride": ("train",), "eval.batch_size": _ALL,
    **{f"sample.{f}": _LM for f in field_names(GenerationConfig)},
    **{f"finetune.{f}": _LM for f in field_names(FinetuneConfig)},
    "finetune.truncation_side": ("finetune",),
    **{f"distill.{f}": ("distill",) for f in field_names(DistillConfig)},
    **{f"classify.{f}": ("classify",) for f in field_names(ClassifyConfig)},
    **{f"log.{f}": _ALL for f in field_names(LogConfig)},
    "log.sample_tokens": _LM,
}
KIND_NAMES = {
    "train": "pre-training on text (gptkit train)",
    "finetune": "supervised fine-tuning (data.format=sft, gptkit finetune)",
    "classify": "classification (gptkit finetune-classify)",
    "distill": "distillation (distill.teacher, gptkit distill)",
}


def _when(cfg: RunConfig) -> dict[str, tuple[bool, str]]:
    """Settings read only under another setting: key -> (is it read?, what makes it read)."""
    t, f, c, g = cfg.train, cfg.finetune, cfg.classify, cfg.log
    lora = (f.lora_r > 0, "finetune.lora_r > 0")
    return {
        "finetune.lora_alpha": lora, "finetune.lora_dropout": lora,
        "finetune.lora_targets": lora,
        "train.cooldown_fraction": (t.schedule == "wsd", "train.schedule=wsd"),
        "train.decay_steps": (t.schedule in ("cosine", "linear", "wsd"),
                              "train.schedule cosine, linear or wsd"),
        **{f"train.plateau_{k}": (t.schedule == "plateau", "train.schedule=plateau") for k in (
            "factor", "patience", "threshold", "threshold_mode", "cooldown")},
        "train.seq_warmup_start": (t.seq_warmup_steps > 0, "train.seq_warmup_steps > 0"),
        "train.step_size": (t.schedule == "step", "train.schedule=step"),
        "train.step_gamma": (t.schedule == "step", "train.schedule=step"),
        "train.exp_gamma": (t.schedule == "exponential", "train.schedule=exponential"),
        "train.momentum": (t.optimizer in ("sgd", "rmsprop", "muon"),
                           "train.optimizer sgd, rmsprop or muon"),
        **{f"data.hf_{k}": (cfg.data.source.startswith("hf:"), "data.source hf:NAME")
           for k in ("config", "data_files", "streaming")},
        "classify.pooling": (c.task == "sequence", "classify.task=sequence"),
        "classify.text_field": (c.task == "sequence", "classify.task=sequence"),
        "classify.label_field": (c.task == "sequence", "classify.task=sequence"),
        "classify.tokens_field": (c.task == "token", "classify.task=token"),
        "classify.tags_field": (c.task == "token", "classify.task=token"),
        "classify.chunk_stride": (c.long_inputs == "chunk", "classify.long_inputs=chunk"),
        "classify.chunk_aggregate": (c.long_inputs == "chunk" and c.task == "sequence",
                                     "classify.long_inputs=chunk and classify.task=sequence"),
        "log.wandb_project": (g.wandb, "log.wandb=true"),
        "model.rope_base": (cfg.model.pos_embedding == "rope", "model.pos_embedding=rope"),
        "model.rope_scale": (cfg.model.pos_embedding == "rope", "model.pos_embedding=rope"),
        "model.context_extension": (t.init_from is not None,
                                    "train.init_from and a larger model.block_size"),
    }


def run_kinds(cfg: RunConfig, *, classify: bool = False) -> set[str]:
    """The kinds (RUN_KINDS) of the run `cfg` describes; `classify` for finetune-classify."""
    if classify:
        return {"classify"}
    kinds = {"finetune" if cfg.data.format == "sft" else "train"}
    return kinds | ({"distill"} if cfg.distill.teacher else set())


def check_used(cfg: RunConfig, kinds: set[str]) -> None:
    """Refuse a setting moved from its default that this run would not read (one line)."""
    when = _when(cfg)
    for section, cls in SECTIONS.items():
        default = cls()
        for name in field_names(cls):
            key, value = f"{section}.{name}", getattr(getattr(cfg, section), name)
            if value == getattr(default, name):
                continue
            where = USED_BY[key]
            if not kinds & set(where):
                kind = " and ".join(KIND_NAMES[k] for k in sorted(kinds))
                raise GptkitError(
                    f"{key}={value} does nothing in {kind}; it applies to "
                    f"{', '.join(KIND_NAMES[k] for k in where)}: drop it")
            read, condition = when.get(key, (True, ""))
            if not read:
                raise GptkitError(f"{key}={value} does nothing here; it applies with "
                                  f"{condition}: drop it, or set that")
