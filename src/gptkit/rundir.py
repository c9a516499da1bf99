"""The layout of a run folder, owned in one place: what each file is called, what kind of run
the folder holds, and which weights file `which=best|last` means.

    config.yaml       the resolved RunConfig          tokenizer.json   the tokenizer
    tokenizer_config.json  the chat template (`chat_template`, as Hugging Face keeps it) of a
                      chat model: chat fine-tuning runs, imported chat models
    metrics.jsonl     train and eval records          samples.txt, tb/, plots/  logs
    data.json         statistics of the data          environment.json  where it trained
    epochs.json       how train.epochs and intervals given in epochs became steps
    best/             model.safetensors + config.json (+ README.md, adapter/): best weights
    checkpoints/      step-N/ (model.safetensors, optimizer.pt | sharded/), state.json
    labels.json       a classifier run (gptkit finetune-classify): {"task", "labels"}
    eval.json         a classifier run's held-out metrics
    model.safetensors a classifier run's weights (runs written before issue 18)

The names inside checkpoints and best/ belong to their writer, `gptkit.train.checkpoint`;
everything else is spelled here. `RunDir` answers questions about a folder without loading
a model; `gptkit.run.load_run` opens it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gptkit.config import RunConfig, read_config
from gptkit.config.choices import Quantization, names
from gptkit.config.files import CONFIG_FILE
from gptkit.errors import GptkitError
from gptkit.train import checkpoint
from gptkit.train.checkpoint import BEST_DIR, BEST_INFO_FILE, CHECKPOINTS_DIR, MODEL_FILE

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
LABELS_FILE = "labels.json"
EVAL_FILE = "eval.json"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.txt"
TB_DIR = "tb"
PLOTS_DIR = "plots"
DATA_FILE = "data.json"
ENVIRONMENT_FILE = "environment.json"
EPOCHS_FILE = "epochs.json"
# what a copy of a run (export --quantize, prune) takes over from the run it came from
RECORD_FILES = (CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, DATA_FILE, ENVIRONMENT_FILE)

INT8: Quantization = "int8"
QUANTIZATIONS = names(Quantization)
QUANTIZATION_KEY = "quantization"  # in best/config.json of a quantized run
PRUNED_KEY = "pruned"  # in best/config.json of a pruned run

Which = Literal["best", "last"]
Kind = Literal["language model", "classifier"]


def read_json(path: Path) -> Any:
    """A run's JSON record, None when absent; GptkitError when it is damaged."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GptkitError(f"{path} is damaged ({type(exc).__name__}: {exc}); restore it from "
                          "a copy of the run") from None


@dataclass(frozen=True)
class RunDir:
    """A run folder: its paths, its kind and its weights, without loading a model."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    # --- paths --------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def tokenizer_file(self) -> Path:
        return self.path / TOKENIZER_FILE

    @property
    def tokenizer_config_file(self) -> Path:
        return self.path / TOKENIZER_CONFIG_FILE

    @property
    def labels_file(self) -> Path:
        return self.path / LABELS_FILE

    @property
    def eval_file(self) -> Path:
        return self.path / EVAL_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def data_file(self) -> Path:
        return self.path / DATA_FILE

    @property
    def environment_file(self) -> Path:
        return self.path / ENVIRONMENT_FILE

    @property
    def epochs_file(self) -> Path:
        return self.path / EPOCHS_FILE

    @property
    def plots(self) -> Path:
        return self.path / PLOTS_DIR

    @property
    def best(self) -> Path:
        return self.path / BEST_DIR

    @property
    def best_weights(self) -> Path:
        return self.best / MODEL_FILE

    @property
    def best_info_file(self) -> Path:
        return self.best / BEST_INFO_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    # --- what it is ---------------------------------------------------------------------------
    def is_run(self) -> bool:
        """Whether the folder holds a gptkit run (its config.yaml)."""
        return self.config_file.is_file()

    @property
    def is_classifier(self) -> bool:
        return self.labels_file.is_file()

    @property
    def kind(self) -> Kind:
        return "classifier" if self.is_classifier else "language model"

    def check(self) -> RunDir:
        """This folder, if it is a whole run; else one GptkitError saying what is missing."""
        if not self.path.is_dir():
            raise GptkitError(f"run directory {self.path} does not exist; train one with "
                              "`gptkit train`")
        for file in (self.config_file, self.tokenizer_file):
            if not file.is_file():
                raise GptkitError(f"{file} is missing; {self.path} is not a whole gptkit run "
                                  "(train one with `gptkit train`, or restore the file)")
        return self

    def config(self) -> RunConfig:
        return read_config(self.config_file)

    def best_info(self) -> dict[str, Any] | None:
        """best/config.json: the step, losses and metrics of the best weights."""
        info = read_json(self.best_info_file)
        return info if isinstance(info, dict) else None

    def tokenizer_config(self) -> dict[str, Any] | None:
        """tokenizer_config.json: the chat template (`gptkit.chat_template`), or None."""
        config = read_json(self.tokenizer_config_file)
        return config if isinstance(config, dict) else None

    def write_tokenizer_config(self, config: dict[str, Any]) -> None:
        self.tokenizer_config_file.write_text(
            json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def data(self) -> dict[str, Any] | None:
        """data.json: token, word and byte counts of the data the run was trained on."""
        return read_json(self.data_file)

    def environment(self) -> dict[str, Any] | None:
        return read_json(self.environment_file)

    def epochs(self) -> dict[str, Any] | None:
        """epochs.json: how settings given in epochs were turned into steps (None: none were)."""
        record = read_json(self.epochs_file)
        return record if isinstance(record, dict) else None

    @property
    def quantization(self) -> str | None:
        """"int8" when best/ holds an int8 export (gptkit export --quantize int8), else None."""
        try:
            info = self.best_info()
        except GptkitError:
            return None
        value = None if info is None else info.get(QUANTIZATION_KEY)
        if value is not None and value not in QUANTIZATIONS:
            raise GptkitError(f"{self.best_info_file} names the quantization {value!r}, which "
                              f"this gptkit cannot load (it knows {', '.join(QUANTIZATIONS)}); "
                              "update gptkit")
        return value

    @property
    def pruned(self) -> dict[str, Any] | None:
        """How best/ was pruned (gptkit prune), or None."""
        info = self.best_info()
        return None if info is None else info.get(PRUNED_KEY)

    def traits(self) -> list[str]:
        """What the run is, in words: its kind, then LoRA, int8, pruned, sharded checkpoints."""
        cfg = self.config()
        found: list[str] = [self.kind]
        if cfg.finetune.lora_r > 0:
            found.append("LoRA")
        if self.quantization:
            found.append(self.quantization)
        if self.pruned:
            found.append("pruned")
        latest = checkpoint.list_checkpoints(self.path)
        if latest and checkpoint.is_sharded(latest[-1]):
            found.append("sharded checkpoints")
        return found

    # --- which weights ------------------------------------------------------------------------
    def weights(self, which: str = "best") -> Path:
        """The weights `which` means: best/ (or a classifier run's own file), falling back to
        the newest valid checkpoint when there is none; `last` the newest valid checkpoint,
        falling back to best/ in a run without checkpoints (an imported one). A sharded
        checkpoint's weights are its `sharded/` folder. `step-N`: that checkpoint's weights
        (verified against its checksums), as `gptkit serve --compare RUN/checkpoints/step-N`
        names one."""
        if which.startswith("step-"):
            return self.checkpoint_weights(which)
        if which not in ("best", "last"):
            raise GptkitError(f"checkpoint choice must be best or last, got {which!r}")
        best = self.best_weights
        if self.is_classifier and not best.is_file():
            best = self.path / MODEL_FILE  # where classifier runs kept their weights
        has_checkpoints = bool(checkpoint.list_checkpoints(self.path))
        if best.is_file() and (which == "best" or not has_checkpoints):
            return best
        if not has_checkpoints and self.is_classifier:
            raise GptkitError(f"{best} is missing; train the classifier again")
        ckpt, _ = checkpoint.latest_valid_checkpoint(self.path)
        return ckpt / (checkpoint.SHARDED_DIR if checkpoint.is_sharded(ckpt) else MODEL_FILE)

    def checkpoint_weights(self, name: str) -> Path:
        """The weights of the checkpoint `name` (step-N), once it verifies."""
        ckpt = self.checkpoints / name
        if not ckpt.is_dir():
            steps = ", ".join(p.name for p in checkpoint.list_checkpoints(self.path)) or "none"
            raise GptkitError(f"{ckpt} does not exist; the run's checkpoints: {steps}")
        if problem := checkpoint.verify_checkpoint(ckpt):
            raise GptkitError(f"checkpoint {ckpt} is damaged ({problem}); name another")
        return ckpt / (checkpoint.SHARDED_DIR if checkpoint.is_sharded(ckpt) else MODEL_FILE)

    def is_checkpoint(self, weights: Path) -> bool:
        """Whether `weights` (from `weights()`) are a training checkpoint's."""
        return weights.parent.parent == self.checkpoints
