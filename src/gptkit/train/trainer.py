"""The training loop: one readable `Trainer.fit` over an unchanged GPT.

Order within the loop (LESSONS.md #9): decide whether this is the last step; evaluate and
checkpoint first, so step 0 and the last step are covered; then the micro-steps of one
optimizer step, gradients synchronised only on the last one; then unscale, clip, step, zero.
Parallelism (DDP), precision (autocast) and compilation wrap the model; checkpoints always
hold the unwrapped model's weights.
"""

from __future__ import annotations

import gc
import json
import math
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from gptkit.compress import stored_quantization
from gptkit.config import SHAPE_KEYS, RunConfig, read_config, save_config
from gptkit.config_usage import check_used, run_kinds
from gptkit.data.loader import RandomWindows
from gptkit.data.prepare import PreparedData, cache_dir, prepare
from gptkit.data.sources import is_wikitext, resolve_protocol
from gptkit.errors import GptkitError
from gptkit.evaluate import score_tokens, summarize
from gptkit.finetune import freeze, lora, sft
from gptkit.finetune.distill import distillation_loss, load_teacher
from gptkit.generation.text import sample_text
from gptkit.model import GPT
from gptkit.model_card import CARD_FILE
from gptkit.model_card import render as render_card
from gptkit.run import Run, load_run
from gptkit.tokenizers import Tokenizer, build_tokenizer, unknown_warning
from gptkit.train import checkpoint, distributed, sharded
from gptkit.train.distributed import DistEnv
from gptkit.train.metrics import LOG_OUTPUTS, PEAK_FLOPS_FILE, MetricsLogger, peak_flops
from gptkit.train.optim import build_optimizer
from gptkit.train.schedule import lr_at


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    tokens_seen: int
    best_val_loss: float | None
    last_eval: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False
    interrupted: bool = False
    wall_time_s: float = 0.0
    tokens_per_s: float = 0.0


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Never touch a user's directory by accident (DESIGN.md, "A run directory")."""
    if run_dir.exists() and not run_dir.is_dir():
        raise GptkitError(f"--out {run_dir} is a file, not a run directory; choose another --out")
    if resume and overwrite:
        raise GptkitError("--resume and --overwrite contradict each other; pick one")
    exists = run_dir.exists() and any(run_dir.iterdir())
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise GptkitError(
                f"cannot resume: {run_dir} is not a gptkit run (no config.yaml); "
                "drop --resume to start a new run"
            )
        return
    if exists and not overwrite:
        raise GptkitError(
            f"run directory {run_dir} already exists; use --resume to continue it, "
            "--overwrite to replace it, or --out to choose another directory"
        )
    if exists and overwrite and not (run_dir / "config.yaml").is_file():
        raise GptkitError(
            f"refusing to overwrite {run_dir}: it is not a gptkit run (no config.yaml); "
            "choose another --out"
        )


def accumulation_steps(cfg: RunConfig, world_size: int) -> int:
    """Gradient accumulation derived from the total batch in tokens (LESSONS.md #6)."""
    per_pass = cfg.train.micro_batch_size * cfg.model.block_size * world_size
    total = cfg.train.batch_tokens
    if total is None:
        return 1
    if total % per_pass:
        raise GptkitError(
            f"train.batch_tokens ({total}) must be a multiple of micro_batch_size x block_size "
            f"x processes = {cfg.train.micro_batch_size} x {cfg.model.block_size} x "
            f"{world_size} = {per_pass}; e.g. --set "
            f"train.batch_tokens={per_pass * max(1, round(total / per_pass))}"
        )
    return total // per_pass



def check_same_shape(saved: RunConfig, cfg: RunConfig) -> None:
    """A resumed run keeps its model's shape: the checkpoint's tensors are that shape."""
    for key in SHAPE_KEYS:
        old, new = getattr(saved.model, key), getattr(cfg.model, key)
        if key == "vocab_size" and new is None:
            continue
        if old != new:
            raise GptkitError(
                f"cannot resume with model.{key}={new}: the run's checkpoints were trained with "
                f"model.{key}={old}; drop that --set, or start a new run with --out"
            )


def build_model(cfg: RunConfig, tokenizer: Tokenizer) -> GPT:
    """A fresh GPT sized for the tokenizer; errors when the vocabulary does not fit."""
    vocab = cfg.model.vocab_size
    if vocab is not None and vocab < tokenizer.vocab_size:
        raise GptkitError(
            f"model.vocab_size ({vocab}) is smaller than the tokenizer's vocabulary "
            f"({tokenizer.vocab_size}); set model.vocab_size={tokenizer.vocab_size} or null"
        )
    return GPT.from_config(cfg.model, tokenizer.vocab_size)


def cpu_name() -> str:
    """The processor's marketing name where the OS tells it (Linux), else its architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info(
    env: DistEnv, precision: str, compiled: bool, peak: tuple[float, str] | None = None
) -> dict[str, Any]:
    """What a run directory needs to explain itself later (LESSONS.md #7)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    from gptkit import __version__

    return {
        "argv": sys.argv,
        "gptkit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(env.device),
        "device_name": torch.cuda.get_device_name(env.device) if env.device.type == "cuda" else
        cpu_name(),
        "threads": torch.get_num_threads(),
        "world_size": env.world_size,
        "precision": precision,
        "compile": compiled,
        "git_commit": commit or None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "peak_flops": None if peak is None else peak[0],  # what MFU divides by, per process
        "peak_flops_source": None if peak is None else peak[1],
    }


class Trainer:
    """Owns one run: data, model, optimizer, the loop, evaluation and checkpoints."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        data_dir: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.progress = progress
        self.env = distributed.setup(cfg.train.device, cfg.dist.timeout_s)
        try:
            self._setup(overwrite, data_dir)
        except BaseException:
            distributed.teardown(self.env)
            raise

    # --- set-up ---------------------------------------------------------------------------
    def _setup(self, overwrite: bool, data_dir: str | Path | None) -> None:
        cfg, env = self.cfg, self.env
        check_used(cfg, run_kinds(cfg))  # a setting this run would not read is an error
        if env.is_main:
            check_run_dir(self.run_dir, resume=self.resume, overwrite=overwrite)
            checkpoint.remove_leftovers(self.run_dir)  # of a crashed attempt at this run
        distributed.barrier(env)
        if self.resume and not checkpoint.list_checkpoints(self.run_dir):
            self._say(f"{self.run_dir} has no checkpoint yet (stopped before its first): "
                      "training it from step 0")
            self.resume = False
        if self.resume:
            check_same_shape(read_config(self.run_dir / "config.yaml"), cfg)
        # data.protocol auto becomes published or offline here, and is saved so with the run
        cfg.data, protocol = resolve_protocol(cfg.data, data_dir)
        if protocol:
            self._say(protocol)
        init = self._init_run() if cfg.train.init_from and not self.resume else None
        self.accum = accumulation_steps(cfg, env.world_size)
        tokenizer = None if init is None else init.tokenizer
        if cfg.distill.teacher and tokenizer is None and not self.resume:
            tokenizer = self._teacher_tokenizer()
        self.data: PreparedData | None = None
        if cfg.data.format == "sft":
            self.tokenizer = self._prepare_sft(data_dir, tokenizer)
        else:
            self.data = self._prepare_data(data_dir, tokenizer)
            self.tokenizer = self.data.tokenizer
        self.teacher = None if not cfg.distill.teacher else load_teacher(
            cfg.distill.teacher, self.tokenizer, env.device, cfg.model.block_size)
        if cfg.finetune.unfreeze_every and env.world_size > 1:
            raise GptkitError(
                "finetune.unfreeze_every (gradual unfreezing) runs on one process only: DDP "
                "needs the trainable parameters fixed; use finetune.freeze_layers instead"
            )
        self.precision = distributed.resolve_precision(cfg.train.precision, env.device)
        self.compiled = distributed.resolve_compile(cfg.train.compile, env.device)

        random.seed(cfg.train.seed)
        np.random.seed(cfg.train.seed)
        torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
        gpt = build_model(cfg, self.tokenizer)
        if init is not None:  # only at step 0: a resumed run continues from its checkpoint
            gpt.load_state_dict(init.model.state_dict())
        cfg.model.vocab_size = gpt.config.vocab_size
        gpt.transformer.activation_checkpointing = cfg.train.activation_checkpointing
        torch.manual_seed(cfg.train.seed + env.rank)  # different dropout masks per rank
        ft, n_layer = cfg.finetune, cfg.model.n_layer
        self.strategy = distributed.resolve_strategy(
            cfg.dist.strategy, env.world_size, gpt.num_params(), cfg.dist.fsdp_min_params)
        if self.strategy == "fsdp":
            if ft.lora_r:
                raise GptkitError(
                    "LoRA (finetune.lora_r) runs with dist.strategy=ddp: its trainable "
                    "adapters are small, and the frozen weights gain little from sharding"
                )
            # sharding moves one block at a time to the device, never a whole copy; it comes
            # before the optimizer and freezing see the parameters, since it replaces them
            distributed.shard_fsdp(gpt, list(gpt.transformer.h), env, self.precision,
                                   cfg.dist.cpu_offload)
        else:
            gpt.to(env.device)
        self.model: torch.nn.Module = lora.add_lora(gpt, ft) if ft.lora_r else gpt
        self.learnable = freeze.ever_learnable(self.model, ft, n_layer)
        freeze.apply_freezing(self.model, ft, n_layer, freeze.step_when_all_unfrozen(ft),
                              learnable=self.learnable)
        scale = None if ft.layer_lr_decay == 1 else (
            lambda name: freeze.lr_scale(name, ft, n_layer))
        self.optimizer = build_optimizer(self.model, cfg.train, env.device.type, scale)
        freeze.apply_freezing(self.model, ft, n_layer, 0, learnable=self.learnable)
        self.scaler = torch.amp.GradScaler(
            env.device.type, enabled=self.precision == "fp16" and env.device.type == "cuda"
        )
        self.loader: RandomWindows | sft.SFTBatches
        if self.data is None:
            self.loader = sft.SFTBatches(
                self.sft_train, self.sft_records, self.tokenizer,
                block_size=cfg.model.block_size, micro_batch_size=cfg.train.micro_batch_size,
                accum_steps=self.accum, seed=cfg.train.seed, rank=env.rank,
                world_size=env.world_size, packing=cfg.data.packing, augment=cfg.data.augment,
            )
        else:
            self.loader = RandomWindows(
                self.data.tokens(cfg.data.train_split),
                block_size=cfg.model.block_size,
                micro_batch_size=cfg.train.micro_batch_size,
                accum_steps=self.accum,
                seed=cfg.train.seed,
                rank=env.rank,
                world_size=env.world_size,
            )
        self.step_tokens = 0  # input tokens of the last step, all processes
        self.step = 0
        self.tokens_seen = 0
        self.elapsed_before = 0.0  # training seconds of earlier attempts (a resumed run)
        self.flops_per_token = gpt.flops_per_token(training=True)
        self.best_val_loss: float | None = None
        self.bad_evals = 0
        self.saved_step: int | None = None  # the newest checkpoint: where a diverged run resumes
        if self.resume:
            self._restore()
            freeze.apply_freezing(self.model, ft, n_layer, self.step, learnable=self.learnable)
        elif env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for stale in ("checkpoints", "best", *LOG_OUTPUTS):
                path = self.run_dir / stale
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        self.peak_flops, peak_source = peak_flops(env.device, self.precision,
                                                  cache_dir(None) / PEAK_FLOPS_FILE)
        self.logger: MetricsLogger | None = None
        self.environment: dict[str, Any] = {}
        if env.is_main:
            save_config(cfg, self.run_dir / "config.yaml")
            self.tokenizer.save(self.run_dir / "tokenizer.json")
            meta = self.data.meta if self.data is not None else self.sft_meta
            (self.run_dir / "data.json").write_text(json.dumps(meta, indent=2))
            self.environment = environment_info(
                env, self.precision, self.compiled, (self.peak_flops, peak_source))
            self.environment["strategy"] = self.strategy
            (self.run_dir / "environment.json").write_text(json.dumps(self.environment, indent=2))
            self.logger = MetricsLogger(
                self.run_dir, cfg, resume_step=self.step if self.resume else None)
        if env.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        trainable, total = freeze.count_parameters(self.model)
        self._say(f"trainable parameters: {trainable:,} of {total:,} "
                  f"({100 * trainable / max(total, 1):.2f}%)")
        if env.enabled:
            self._say(f"{self.strategy} over {env.world_size} processes")
        compiled: torch.nn.Module = torch.compile(self.model) if self.compiled else self.model  # type: ignore[assignment]
        self.train_model = (distributed.wrap_ddp(compiled, env) if self.strategy == "ddp"
                            else compiled)

    def _init_run(self) -> Run:
        """The run named by train.init_from, whose shape this run's model must have."""
        path, model = Path(str(self.cfg.train.init_from)), self.cfg.model
        if not (path / "config.yaml").is_file():
            raise GptkitError(
                f"train.init_from: {path} is not a gptkit run (no config.yaml); import one "
                f"(gptkit import gpt2 --out {path}) or train one first"
            )
        if path.resolve() == self.run_dir.resolve():
            raise GptkitError(f"train.init_from ({path}) must be another run than --out")
        if stored_quantization(path):
            raise GptkitError(
                f"train.init_from: {path} holds int8 weights (an inference export), which "
                "cannot be trained; start from the run it was exported from"
            )
        init = load_run(path)
        if model.vocab_size is None:
            model.vocab_size = init.model.config.vocab_size
        for key in SHAPE_KEYS:
            mine, theirs = getattr(model, key), getattr(init.model.config, key)
            if mine != theirs:
                raise GptkitError(
                    f"model.{key}={mine} does not match train.init_from={path} ({key}={theirs}); "
                    "a run started from another keeps its shape: drop that setting"
                )
        return init

    def _teacher_tokenizer(self) -> Tokenizer:
        """A distilled student reads the teacher's tokenizer (and records its settings)."""
        path = Path(str(self.cfg.distill.teacher))
        teacher = read_config(path / "config.yaml")
        for key in ("tokenizer", "vocab_size", "tokenizer_path"):
            setattr(self.cfg.data, key, getattr(teacher.data, key))
        return Tokenizer.load(path / "tokenizer.json")

    def _prepare_sft(self, data_dir: str | Path | None, tokenizer: Tokenizer | None) -> Tokenizer:
        """Prompt/response or chat records of data.source, split and encoded (small: in memory)."""
        cfg = self.cfg
        if self.resume:
            tokenizer = Tokenizer.load(self.run_dir / "tokenizer.json")
        self.sft_records = sft.load_split(cfg.data, "train")
        val_records = sft.load_split(cfg.data, cfg.data.eval_split)
        if tokenizer is None:
            tokenizer = build_tokenizer(
                cfg.data, sft.training_texts(self.sft_records), data_dir=data_dir)
        block = cfg.model.block_size
        self.sft_train = sft.encode_records(self.sft_records, tokenizer, block)
        self.sft_val = sft.encode_records(val_records, tokenizer, block)
        for split, records in (("train", self.sft_records), (cfg.data.eval_split, val_records)):
            warning = unknown_warning(tokenizer.unknown_characters(sft.training_texts(records)),
                                      f"{cfg.data.source} [{split}]")
            if warning and self.env.is_main:
                print(f"gptkit: {warning}", file=sys.stderr)
        self.sft_meta = {
            "format": "sft", "source": cfg.data.source, "tokenizer_kind": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size, "eot_id": tokenizer.eot_id,
            "splits": {
                name: {"examples": len(examples),
                       "tokens": int(sum(len(e.ids) for e in examples)),
                       "response_tokens": int(sum(e.learnt[1:].sum() for e in examples))}
                for name, examples in (("train", self.sft_train), ("val", self.sft_val))
            },
        }
        return tokenizer

    def _prepare_data(
        self, data_dir: str | Path | None, tokenizer: Tokenizer | None = None
    ) -> PreparedData:
        """Rank 0 tokenises (and trains the tokenizer); the others then read its cache.

        `tokenizer` (train.init_from's) is used as is; a resumed run reads its own.
        """
        cfg, env = self.cfg, self.env
        if self.resume:
            tokenizer = Tokenizer.load(self.run_dir / "tokenizer.json")
        data = None
        if env.is_main:
            data = prepare(cfg.data, data_dir=data_dir, tokenizer=tokenizer, progress=self.progress)
        distributed.barrier(env)
        if data is None:
            data = prepare(cfg.data, data_dir=data_dir, tokenizer=tokenizer)
        for split in (cfg.data.train_split, cfg.data.eval_split):
            n = data.split_meta(split)["tokens"]
            if n < cfg.model.block_size + 1:
                raise GptkitError(
                    f"split {split!r} has {n} tokens, fewer than model.block_size + 1 = "
                    f"{cfg.model.block_size + 1}; use more text or a smaller model.block_size"
                )
        return data

    def _restore(self) -> None:
        path, warnings = checkpoint.latest_valid_checkpoint(
            self.run_dir, checkpoint.resume_state_problem)
        for warning in warnings:
            if self.env.is_main:
                tqdm.write(f"warning: {warning}", file=sys.stderr)
        state = checkpoint.load_checkpoint(path, self.model, self.optimizer)
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.best_val_loss = state.get("best_val_loss")
        self.bad_evals = int(state.get("bad_evals", 0))
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(state["loader"])
        rng = state["rng"]
        checkpoint.set_rng_state(rng[self.env.rank] if self.env.rank < len(rng) else rng[0])
        self.saved_step = self.step
        self._say(f"resumed from {path} at step {self.step}")

    # --- helpers ----------------------------------------------------------------------------
    def _release_ddp(self) -> None:
        """Free the DDP wrapper and its gradient reducer while the process group still exists.

        Freed later (when the trainer goes, or by the garbage collector at exit), the
        reducer's destructor ran after `destroy_process_group` and could wait for a gloo
        worker thread that itself waited for the GIL the main thread held: rank 1 of a
        finished run then never exited (3 launches in 10). Dropping the last reference and
        collecting its reference cycles here makes the order fixed."""
        if self.train_model is not self.model and self.strategy == "ddp":
            self.train_model = self.model
            gc.collect()

    def _say(self, message: str) -> None:
        """A line for the user (rank 0), also under --no-progress, which drops only the bar."""
        if self.env.is_main:
            tqdm.write(message)

    def _log(self, record: dict[str, Any]) -> None:
        if self.logger is not None:
            self.logger.log(record)

    def _elapsed(self) -> float:
        """Training seconds of this run, earlier attempts of a resumed run included."""
        return self.elapsed_before + time.perf_counter() - self.started

    def _sample(self, val_loss: float) -> None:
        """samples.txt and TensorBoard get a continuation of sample.prompt at each evaluation;
        the same seed every time, so the texts show what the model learnt in between."""
        tokens = self.cfg.log.sample_tokens
        # a sharded model computes only with every rank: all sample, rank 0 writes
        if not tokens or (self.logger is None and self.strategy != "fsdp"):
            return
        if not math.isfinite(val_loss):  # a diverged model has no distribution to sample
            if self.logger is not None:
                self.logger.sample(self.step, "(no sample: the model has diverged)", val_loss)
            return
        gpt = self.model.get_base_model() if lora.is_lora(self.model) else self.model  # type: ignore[operator]
        assert isinstance(gpt, GPT)
        settings = self.cfg.sample.replace(max_new_tokens=tokens, num_samples=1, num_beams=1)
        with distributed.autocast(self.env.device, self.precision):
            text = sample_text(gpt, self.tokenizer, self.cfg.sample.prompt, settings)[0]
        if self.logger is not None:
            self.logger.sample(self.step, text, val_loss)

    def _evaluate_sft(self) -> dict[str, Any]:
        """Loss and next-token accuracy on the responses of the held-out examples; train loss
        on as many training examples (not augmented)."""
        cfg, env = self.cfg, self.env
        common: dict[str, Any] = dict(
            batch_size=max(cfg.eval.batch_size, cfg.train.micro_batch_size),
            pad_id=int(self.tokenizer.eot_id or 0), device=env.device, precision=self.precision,
        )
        val = sft.response_loss(self.model, self.sft_val, **common)
        train = sft.response_loss(self.model, self.sft_train[: len(self.sft_val)], **common)
        loss = val["nll"] / max(val["tokens"], 1)
        return {
            "step": self.step, "kind": "eval", "tokens": self.tokens_seen,
            "train_loss": train["nll"] / max(train["tokens"], 1),
            "val_loss": loss, "val_perplexity": math.exp(min(loss, 700)),
            "val_tokens": int(val["tokens"]),
            "val_token_accuracy": val["correct"] / max(val["tokens"], 1),
        }

    def evaluate(self) -> dict[str, Any]:
        """Validation loss on a fixed set of windows (the same every time) and train loss."""
        cfg, data = self.cfg, self.data
        if data is None:
            return self._evaluate_sft()
        block = cfg.model.block_size
        cap = None if cfg.train.eval_tokens is None else math.ceil(cfg.train.eval_tokens / block)
        special = [] if self.tokenizer.eot_id is None else [self.tokenizer.eot_id]
        common: dict[str, Any] = dict(
            block_size=block, batch_size=max(cfg.eval.batch_size, cfg.train.micro_batch_size),
            device=self.env.device, precision=self.precision, special_ids=special, env=self.env,
        )
        val_tokens = data.tokens(cfg.data.eval_split)
        val = score_tokens(self.model, val_tokens, max_windows=cap, **common)
        val_windows = math.ceil((min(len(val_tokens), (cap or 10**18) * block) - 1) / block)
        train = score_tokens(
            self.model, data.tokens(cfg.data.train_split), max_windows=val_windows, **common
        )
        full = cap is None or cap * block >= len(val_tokens) - 1
        split_meta = data.split_meta(cfg.data.eval_split)
        result = summarize(
            val,
            split=cfg.data.eval_split,
            block_size=block,
            stride=block,
            n_bytes=split_meta["bytes"] if full else None,
            n_words=split_meta["words"] if full and is_wikitext(cfg.data.source) else None,
        )
        record = {
            "step": self.step,
            "kind": "eval",
            "tokens": self.tokens_seen,
            "train_loss": train.nll / max(train.tokens, 1),
            "val_loss": result.loss,
            "val_perplexity": result.perplexity,
            "val_tokens": result.tokens,
        }
        if result.bits_per_byte is not None:
            record["val_bits_per_byte"] = result.bits_per_byte
        if result.word_perplexity is not None:
            record["val_word_perplexity"] = result.word_perplexity
        return record

    def _save_best(self, record: dict[str, Any]) -> None:
        """best/ holds a plain GPT and its model card; a LoRA run's GPT is merged, its
        adapter in best/adapter/. A sharded model is gathered by every rank, written by rank 0."""
        state = sharded.full_state_dict(self.model) if self.strategy == "fsdp" else None
        if not self.env.is_main:
            return
        info = {"step": self.step, "val_loss": self.best_val_loss,
                "tokens_seen": self.tokens_seen, "model": asdict(self.cfg.model),
                "metrics": {k: v for k, v in record.items() if k.startswith(("val_", "train_"))},
                "elapsed_s": round(self._elapsed(), 1)}
        meta = self.data.meta if self.data is not None else self.sft_meta
        card = render_card(self.cfg, info, meta, self.environment)
        merge = lora.is_lora(self.model)

        def extra(folder: Path) -> None:
            (folder / CARD_FILE).write_text(card, encoding="utf-8")
            if merge:
                lora.save_adapter(self.model, folder / lora.ADAPTER_DIR)

        model = lora.merged_copy(self.model) if merge else self.model
        checkpoint.save_best(self.run_dir, model, info, extra=extra, state=state)

    def _save_checkpoint(self) -> None:
        rngs = distributed.all_gather_objects(checkpoint.rng_state(), self.env)
        state: dict[str, Any] = {}
        if self.env.is_main:
            state = {
                "step": self.step,
                "tokens_seen": self.tokens_seen,
                "best_val_loss": self.best_val_loss,
                "bad_evals": self.bad_evals,
                "elapsed_s": self._elapsed(),
                "loader": self.loader.state_dict(),
                "rng": rngs,
                "world_size": self.env.world_size,
            }
            if self.scaler.is_enabled():
                state["scaler"] = self.scaler.state_dict()
        if self.strategy == "fsdp":  # every rank writes its shards
            sharded.save_sharded_checkpoint(
                self.run_dir, self.step, self.model, self.optimizer, state,
                keep=self.cfg.train.keep_checkpoints, env=self.env,
            )
        elif self.env.is_main:
            checkpoint.save_checkpoint(
                self.run_dir, self.step, self.model, self.optimizer, state,
                keep=self.cfg.train.keep_checkpoints,
            )
        distributed.barrier(self.env)
        self.saved_step = self.step

    def _loss(self, x: torch.Tensor, y: torch.Tensor, extra: dict[str, torch.Tensor]
              ) -> torch.Tensor:
        """Mean loss over the targets of one micro-batch (distilled when there is a teacher).

        `extra`: more model arguments (packed SFT rows: positions and attention mask)."""
        logits, loss = self.train_model(x, y, **extra)
        if self.teacher is None:
            return loss
        with torch.no_grad():
            teacher_logits, _ = self.teacher(x, **extra)
        d = self.cfg.distill
        return distillation_loss(logits, teacher_logits, y, alpha=d.alpha,
                                 temperature=d.temperature, vocab_size=self.tokenizer.vocab_size)

    def _train_step(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg, env = self.cfg, self.env
        lr = lr_at(self.step, cfg.train)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        if cfg.finetune.unfreeze_every and self.step % cfg.finetune.unfreeze_every == 0:
            freeze.apply_freezing(self.model, cfg.finetune, cfg.model.n_layer, self.step,
                                  learnable=self.learnable)
        batches = self.loader.step_batches(self.step)
        # each micro-batch's mean is weighted by its share of the step's targets, so the
        # step's loss is the mean over all of them even when masking makes counts differ
        counts = [int((batch[1] != sft.IGNORE).sum()) for batch in batches]
        step_targets = max(sum(counts), 1)
        self.step_tokens = sum(batch[0].numel() for batch in batches) * env.world_size
        total = torch.zeros((), device=env.device)
        for i, (x, y, *more) in enumerate(batches):
            x = x.to(env.device, non_blocking=True)
            y = y.to(env.device, non_blocking=True)
            extra = {k: v.to(env.device) for k, v in more[0].items()} if more else {}
            with distributed.no_sync(self.train_model, sync=i == len(batches) - 1):
                with distributed.autocast(env.device, self.precision):
                    loss = self._loss(x, y, extra)
                loss = loss * (counts[i] / step_targets)
                self.scaler.scale(loss).backward()
            total += loss.detach()
        grad_norm = None
        if cfg.train.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = distributed.full_tensor(torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.grad is not None], cfg.train.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total, grad_norm

    def _step_loss(self, loss: torch.Tensor) -> float:
        """The step's loss over every process's batch, not only this one's (a collective)."""
        return distributed.all_reduce_sum([loss.item()], self.env)[0] / self.env.world_size

    def _stop_if_diverged(self, record: dict[str, Any], keys: tuple[str, ...]) -> None:
        """End the run once a loss is NaN or infinite: every later step would be wasted and
        every later checkpoint broken. Losses are read only at log steps, evaluations and
        checkpoints (no extra sync per step), so the divergence happened at or before this step.
        The record is logged first (metrics.jsonl writes null for the number)."""
        bad = [key for key in keys if not math.isfinite(record[key])]
        if not bad:
            return
        self._log(record)
        if self.saved_step is None:
            advice = "no checkpoint was saved before it: start again with a lower train.lr"
        else:
            advice = (f"the last checkpoint before it is step {self.saved_step}; resume from it "
                      f"with a lower learning rate (now {self.cfg.train.lr:g}): gptkit train "
                      f"--resume --out {self.run_dir} --set train.lr=...")
        raise GptkitError(
            f"training stopped: the {bad[0].replace('_', ' ')} became {record[bad[0]]} at or "
            f"before step {self.step}; {advice} (a gradient clip, train.grad_clip, helps too)"
        )

    # --- the loop -----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train to train.max_steps (or an early stop, or Ctrl-C), evaluating and saving."""
        with distributed.peer_failures(self.env, self.cfg.dist.timeout_s):
            return self._fit()

    def _fit(self) -> TrainResult:
        cfg, env = self.cfg, self.env
        interrupted = False
        stop_early = False
        last_eval: dict[str, Any] = {}

        def on_sigint(signum: int, frame: Any) -> None:
            nonlocal interrupted
            if interrupted:  # a second Ctrl-C stops at once
                raise KeyboardInterrupt
            interrupted = True

        previous_handler = None
        if not env.enabled:
            previous_handler = signal.signal(signal.SIGINT, on_sigint)
        bar = tqdm(
            total=cfg.train.max_steps, initial=self.step, unit="step", dynamic_ncols=True,
            disable=not (self.progress and env.is_main),
        )
        start_step = self.step
        if self.resume and self.step >= cfg.train.max_steps:
            self._say(f"run already reached train.max_steps={cfg.train.max_steps} (at step "
                      f"{self.step}); raise it with --set train.max_steps="
                      f"{max(2 * self.step, 1)} to train further")
        started = self.started = time.perf_counter()
        start_tokens = self.tokens_seen
        window_start, window_tokens = started, 0
        loss: torch.Tensor | None = None  # the last step's, on the device
        checked_step = -1  # the last step whose loss was read and found finite
        try:
            while True:
                last = self.step >= cfg.train.max_steps or interrupted or stop_early
                resumed_here = self.resume and self.step == start_step
                if (self.step % cfg.train.eval_interval == 0 or last) and not resumed_here:
                    last_eval = self.evaluate()
                    self._stop_if_diverged(last_eval, ("val_loss", "train_loss"))
                    best = self.best_val_loss
                    improved = best is None or last_eval["val_loss"] < best
                    if improved:
                        self.best_val_loss = last_eval["val_loss"]
                        self.bad_evals = 0
                        self._save_best(last_eval)
                    else:
                        self.bad_evals += 1
                    self._log(last_eval)
                    self._sample(last_eval["val_loss"])
                    self._say(
                        f"step {self.step}: train loss {last_eval['train_loss']:.4f}, "
                        f"val loss {last_eval['val_loss']:.4f} "
                        f"(ppl {last_eval['val_perplexity']:.2f})" + (" *best" if improved else "")
                    )
                    patience = cfg.train.early_stopping_patience
                    if patience and self.bad_evals >= patience and not last:
                        stop_early = True
                        self._say(f"early stopping: no improvement in {patience} evaluations")
                        last = True
                saving_step = self.step % cfg.train.checkpoint_interval == 0 and self.step > 0
                if (saving_step or last) and not resumed_here:
                    if loss is not None and checked_step != self.step:
                        self._stop_if_diverged({"step": self.step, "kind": "train",
                                                "loss": self._step_loss(loss)}, ("loss",))
                    self._save_checkpoint()
                if last:
                    break
                loss, grad_norm = self._train_step()
                self.step += 1
                self.tokens_seen += self.step_tokens
                window_tokens += self.step_tokens
                bar.update(1)
                if self.step % cfg.train.log_interval == 0 or self.step == cfg.train.max_steps:
                    now = time.perf_counter()
                    tok_s = window_tokens / max(now - window_start, 1e-9)
                    window_start, window_tokens = now, 0
                    # model FLOPs utilisation: model FLOPs done / what the devices can do
                    mfu = tok_s * self.flops_per_token / (self.peak_flops * env.world_size)
                    mean_loss = self._step_loss(loss)
                    record = {
                        "step": self.step, "kind": "train", "tokens": self.tokens_seen,
                        "loss": mean_loss, "lr": lr_at(self.step - 1, cfg.train),
                        "tokens_per_s": tok_s, "elapsed_s": self._elapsed(), "mfu": mfu,
                    }
                    if grad_norm is not None:
                        record["grad_norm"] = grad_norm.item()
                    self._stop_if_diverged(record, ("loss",))
                    checked_step = self.step
                    self._log(record)
                    bar.set_postfix_str(
                        f"loss {record['loss']:.4f} lr {record['lr']:.2e} {tok_s:,.0f} tok/s "
                        f"MFU {100 * mfu:.0f}%"
                    )
        finally:
            bar.close()
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
            if self.logger is not None:
                self.logger.close()
            self._release_ddp()
            distributed.teardown(env)
        if env.is_main:
            checkpoint.remove_leftovers(self.run_dir)
        if self.logger is not None and cfg.log.plots:
            from gptkit.viz.curves import write_run_plots

            write_run_plots(self.run_dir)
        wall = time.perf_counter() - started
        if interrupted:
            self._say(f"interrupted: saved step {self.step}; continue with --resume")
        return TrainResult(
            run_dir=self.run_dir,
            step=self.step,
            tokens_seen=self.tokens_seen,
            best_val_loss=self.best_val_loss,
            last_eval=last_eval,
            stopped_early=stop_early,
            interrupted=interrupted,
            wall_time_s=wall,
            tokens_per_s=(self.tokens_seen - start_tokens) / max(wall, 1e-9),
        )


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or resume) the run described by `cfg` into `run_dir`."""
    trainer = Trainer(
        cfg, Path(run_dir), resume=resume, overwrite=overwrite, data_dir=data_dir, progress=progress
    )
    return trainer.fit()
