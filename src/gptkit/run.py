"""Open a run folder for inference: the one loader the CLI, the server, the Python API
(`gptkit.load_run`) and the benchmarks use, for every kind of run.

A language-model run (plain, LoRA, pruned, int8, with one-file or sharded checkpoints)
gives `Run.model`; a classifier run (`gptkit finetune-classify`) gives `Run.classifier`.
Which weights, the device and the precision follow `gptkit.rundir` and `gptkit.device`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptkit import compress
from gptkit.config import RunConfig
from gptkit.device import inference_dtype, resolve_device, resolve_precision
from gptkit.errors import GptkitError
from gptkit.finetune.classifier import Classifier
from gptkit.model import GPT
from gptkit.rundir import RunDir
from gptkit.tokenizers import Tokenizer
from gptkit.train import checkpoint


@dataclass
class Run:
    """A loaded run: its config, tokenizer, where its weights came from, and its model."""

    path: Path
    config: RunConfig
    tokenizer: Tokenizer
    weights: Path  # the file (or sharded folder) the weights came from
    device: torch.device
    lm: GPT | None = None  # a language-model run's model
    classifier: Classifier | None = None  # a classifier run's

    @property
    def model(self) -> GPT:
        """The language model; a classifier run has none (use `classifier`)."""
        if self.lm is None:
            raise GptkitError(
                f"{self.path} is a classifier run (gptkit finetune-classify); use `gptkit "
                f"classify {self.path} --text ...`, or Run.classifier in Python"
            )
        return self.lm

    def best(self) -> dict[str, Any] | None:
        """best/config.json: step, losses and metrics of the best weights (None if absent)."""
        return RunDir(self.path).best_info()


def load_run(
    path: str | Path, *, which: str = "best", device: str | torch.device = "cpu",
    precision: str = "fp32", quantize: str | None = None,
) -> Run:
    """The run's model in eval mode, from `best/` (default) or its newest valid checkpoint.

    `which`: as `RunDir.weights` chooses (best falls back to the newest checkpoint, last to
    best/ in a run without checkpoints). `device`: a device, or "auto" (`gptkit.device`;
    an int8 model always runs on the CPU, which auto then means). `quantize="int8"` returns
    the model with int8 linear layers (`gptkit.compress`); a run written by `gptkit export
    --quantize int8` always loads that way. `precision` casts a language model's weights
    for generation (`gptkit.device.inference_dtype`: "fp32" keeps them, "auto" follows the
    policy table); scoring keeps fp32 weights and autocasts instead (`gptkit eval`), as a
    classifier run does at `precision`.
    """
    rundir = RunDir(path).check()
    compress.check_quantize(quantize)
    config = rundir.config()
    tokenizer = Tokenizer.load(rundir.tokenizer_file)
    vocab = config.model.vocab_size
    if vocab is not None and tokenizer.vocab_size > vocab:
        raise GptkitError(
            f"the tokenizer in {rundir.path} has {tokenizer.vocab_size} tokens but the model "
            f"only {vocab}; restore the run's own tokenizer.json"
        )
    weights = rundir.weights(which)
    if rundir.is_classifier:
        if quantize:
            raise GptkitError("--quantize applies to language models; a classifier run is used "
                              "as it is")
        target = resolve_device(str(device))
        classifier = _load_classifier(rundir, config, tokenizer, weights, target)
        # scored like `gptkit eval`: fp32 weights under autocast ("auto": the table's)
        classifier.precision = resolve_precision(precision, target)
        return Run(rundir.path, config, tokenizer, weights, classifier.device,
                   classifier=classifier)
    stored = rundir.quantization if weights == rundir.best_weights else None
    target = resolve_device(str(device), int8=bool(quantize or stored))
    model = GPT.from_config(config.model, tokenizer.vocab_size)
    if stored:
        model = compress.load_int8(model, weights)
        return Run(rundir.path, config, tokenizer, weights, target, lm=model)
    model = _load_weights(rundir, config, model, weights)
    model.to(target).eval()
    if quantize:
        model = compress.quantize_int8(model)
    elif dtype := inference_dtype(precision, target, model.num_params()):
        model.to(dtype)
    return Run(rundir.path, config, tokenizer, weights, target, lm=model)


def _load_weights(rundir: RunDir, config: RunConfig, model: GPT, weights: Path) -> GPT:
    """best/ weights, or a checkpoint's (one-file or sharded; a LoRA run's checkpoints hold
    the adapters beside the frozen weights and are merged here, as best/ is)."""
    lora = config.finetune.lora_r > 0 and rundir.is_checkpoint(weights)
    target: torch.nn.Module = model
    if lora:
        from gptkit.finetune.lora import add_lora

        target = add_lora(model, config.finetune)
    try:
        if rundir.is_checkpoint(weights):
            checkpoint.load_checkpoint(weights.parent, target)
        else:
            from gptkit.weights import load_weights

            load_weights(target, weights)
    except GptkitError:
        raise
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        raise GptkitError(
            f"weights in {weights} do not fit the model in {rundir.config_file}: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    if lora:
        merged: GPT = target.merge_and_unload()  # type: ignore[operator]
        return merged
    return model


def _load_classifier(rundir: RunDir, config: RunConfig, tokenizer: Tokenizer, weights: Path,
                     device: torch.device) -> Classifier:
    """A classifier run's backbone and head (`gptkit.finetune.heads.GPTClassifier`)."""
    from gptkit.finetune.heads import GPTClassifier
    from gptkit.weights import load_weights

    try:
        info = json.loads(rundir.labels_file.read_text(encoding="utf-8"))
        labels, task = list(info["labels"]), str(info["task"])
    except (ValueError, KeyError, TypeError) as exc:
        raise GptkitError(f"{rundir.labels_file} is damaged ({exc}); train the classifier "
                          "again") from exc
    if config.model.vocab_size is None:
        config = config.updated(model={"vocab_size": tokenizer.vocab_size})
    model = GPTClassifier(config.model, len(labels), task, config.classify.pooling)
    if rundir.is_checkpoint(weights):
        checkpoint.load_checkpoint(weights.parent, model)
    else:
        load_weights(model, weights)
    model.to(device).eval()
    metrics = json.loads(rundir.eval_file.read_text()) if rundir.eval_file.is_file() else None
    return Classifier(rundir.path, config, tokenizer, model, labels, metrics)
