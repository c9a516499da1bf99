"""Every named choice a setting or a command offers, declared once as a `Literal` type.

The config sections use these types as field annotations (so pydantic refuses anything
else), the command line takes its `choices=` from them, and the modules that act on a choice
(optimizers, schedules, classification heads, pruning) key their registries by them, which
tests/test_config.py checks. Adding a choice here is the one place it is named.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

# --- model (gptkit.model) ---------------------------------------------------------------
PosEmbedding = Literal["learned", "rope"]  # GPT-2's position table | rotary, no table
NormKind = Literal["layernorm", "rmsnorm"]
MlpKind = Literal["gelu", "relu2", "swiglu"]  # 4x wide | squared ReLU, 4x | gated, ~8/3x
# how a longer context's positions are made (gptkit.config.context): learned: tile the old
# table | resample it; rope: position interpolation | NTK-aware base scaling
ContextExtension = Literal["copy", "interpolate", "ntk"]

# --- data (gptkit.data, gptkit.tokenizers) ----------------------------------------------
TokenizerKind = Literal["char", "bpe", "gpt2"]
DataFormat = Literal["text", "sft"]  # language modelling on text | prompt/response records
SplitProtocol = Literal["manual", "auto", "published", "offline"]  # WikiText's splits
SplitBy = Literal["documents", "fraction"]  # how own text/JSONL files are cut into train/val

# --- training (gptkit.train) ------------------------------------------------------------
OptimizerName = Literal["adamw", "adam", "sgd", "rmsprop", "adagrad", "muon"]
# after warmup: fixed shapes to train.decay_steps | a cooldown at the end | reduce on a
# validation plateau (PyTorch's ReduceLROnPlateau) | every step_size steps | every step
ScheduleName = Literal["cosine", "linear", "constant", "wsd", "plateau", "step", "exponential"]
ThresholdMode = Literal["rel", "abs"]  # plateau: improvement relative to the best, or absolute
WeightDtype = Literal["fp32", "bf16"]  # what weights are stored or counted in
# inference: auto picks bf16 where it pays, else fp32
InferencePrecision = Literal["auto", WeightDtype]
Precision = Literal[InferencePrecision, "fp16"]  # training: fp16 adds a gradient scaler
Strategy = Literal["auto", "ddp", "fsdp", "none"]  # how processes share a model (torchrun)

# --- hyperparameter search (gptkit.sweep) -----------------------------------------------
# Optuna's TPE | random search | every point of a grid (no CMA-ES: it pickles its state into
# the study's storage, which gptkit never reads back)
SweepSampler = Literal["tpe", "random", "grid"]
# stop a trial whose validation loss is worse than the median of earlier trials at the same
# step | successive halving (Hyperband's building block) | never
SweepPruner = Literal["median", "halving", "none"]

# --- fine-tuning (gptkit.finetune) ------------------------------------------------------
ClassifyTask = Literal["sequence", "token"]  # text -> label | tokens -> tags (e.g. NER)
Pooling = Literal["last", "mean"]  # sequence: the last token's hidden state, or the mean
# inputs longer than model.block_size: keep the start | overlapping chunks (gptkit.finetune.chunks)
LongInputs = Literal["truncate", "chunk"]
ChunkAggregate = Literal["mean", "max"]  # sequence chunks' logits -> the document's
TruncationSide = Literal["right", "left"]  # SFT: cut the end (keep the start) | cut the start

# --- smaller models (gptkit.compress) ---------------------------------------------------
PruneMethod = Literal["magnitude", "heads", "mlp"]
Quantization = Literal["int8"]

# --- export (gptkit.interop) ------------------------------------------------------------
# Hugging Face GPT-2 folder | int8 gptkit run | ONNX decoder with past | GGUF file
ExportFormat = Literal["hf", "gptkit", "onnx", "gguf"]
GgufType = Literal["f32", "f16", "bf16", "q8_0"]  # GGUF weight types (llama.cpp's --outtype)


def names(choice: Any) -> tuple[str, ...]:
    """The values of a `Literal` choice, in declared order: `choices=` for argparse."""
    return tuple(get_args(choice))


def one_of(choice: Any) -> str:
    """The values as a sentence, 'a, b or c', for messages and --help."""
    values = names(choice)
    return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"
