"""The training loop: one readable `Trainer.fit` for every kind of run.

Order within the loop (LESSONS.md #9): decide whether this is the last step; evaluate and
checkpoint first, so step 0 and the last step are covered; then the micro-steps of one
optimizer step, gradients synchronised only on the last one; then unscale, clip, step, zero.
Parallelism (DDP, FSDP), precision (autocast) and compilation wrap the model; checkpoints
always hold the unwrapped model's weights.

What differs between kinds of run is an objective (`gptkit.train.objectives`): language
modelling, supervised fine-tuning, distillation, sequence and token classification. The
other concerns are components: the run's settings are settled once (`resolve`), checkpoints
are `checkpointing`, best-keeping and early stopping `evaluation`, records `metrics`.
"""

from __future__ import annotations

import gc
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from gptkit.config import RunConfig, save_config
from gptkit.config.usage import check_used
from gptkit.data.prepare import cache_dir
from gptkit.device import autocast, resolve_compile, resolve_precision
from gptkit.errors import GptkitError
from gptkit.finetune import freeze, lora
from gptkit.rundir import EPOCHS_FILE, RunDir
from gptkit.train import checkpoint, distributed
from gptkit.train.build import build_model
from gptkit.train.checkpoint import BEST_DIR, CHECKPOINTS_DIR
from gptkit.train.checkpointing import Checkpointer
from gptkit.train.environment import environment_info
from gptkit.train.epochs import Budget, settle_epochs
from gptkit.train.evaluation import Selection, diverged, not_finite
from gptkit.train.metrics import LOG_OUTPUTS, PEAK_FLOPS_FILE, MetricsLogger, peak_flops
from gptkit.train.objectives import Objective, Setup, objective_for
from gptkit.train.resolve import (
    accumulation_steps,
    check_run_dir,
    check_same_shape,
    clear_run_dir,
    settle_run,
)
from gptkit.train.schedule import Schedule


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    tokens_seen: int
    best_val_loss: float | None  # the held-out loss of the best evaluation
    last_eval: dict[str, Any] = field(default_factory=dict)
    stopped_early: bool = False
    interrupted: bool = False
    wall_time_s: float = 0.0
    tokens_per_s: float = 0.0


class EvalCallback(Protocol):
    """Called after each evaluation with the step, its held-out loss and the logged record;
    a returned reason (text) ends the run there, as early stopping does (checkpoint saved,
    `TrainResult.stopped_early`). How a hyperparameter search prunes a trial (gptkit.sweep)."""

    def __call__(self, step: int, val_loss: float, record: dict[str, Any]) -> str | None: ...


class Trainer:
    """Owns one run: its settled settings, model, optimizer, objective and the loop."""

    cfg: RunConfig  # settled (`_resolve`, `settle_epochs`): saved as config.yaml

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        data_dir: str | Path | None = None,
        progress: bool = True,
        objective: Objective | None = None,
        on_eval: EvalCallback | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.on_eval = on_eval
        self.resume = resume
        self.progress = progress
        self.objective = objective_for(cfg) if objective is None else objective
        self.env = distributed.setup(cfg.train.device, cfg.dist.timeout_s)
        try:
            self._setup(cfg, overwrite, data_dir)
        except BaseException:
            distributed.teardown(self.env)
            raise

    # --- set-up ---------------------------------------------------------------------------
    def _setup(self, given: RunConfig, overwrite: bool, data_dir: str | Path | None) -> None:
        env, objective = self.env, self.objective
        check_used(given, objective.kinds(given))  # a setting this run would not read: error
        if env.is_main:
            check_run_dir(self.run_dir, resume=self.resume, overwrite=overwrite)
            checkpoint.remove_leftovers(self.run_dir)  # of a crashed attempt at this run
        distributed.barrier(env)
        if self.resume and not checkpoint.list_checkpoints(self.run_dir):
            self._say(f"{self.run_dir} has no checkpoint yet (stopped before its first): "
                      "training it from step 0")
            self.resume = False
        if self.resume:
            check_same_shape(RunDir(self.run_dir).config(), given)
        self.accum = accumulation_steps(given, env.world_size)
        setup = Setup(env, self.run_dir, data_dir, self.resume, self.progress)
        cfg, self.tokenizer, init = settle_run(given, objective, setup)
        objective.attach(cfg, self.tokenizer, env)
        if cfg.finetune.unfreeze_every and env.world_size > 1:
            raise GptkitError(
                "finetune.unfreeze_every (gradual unfreezing) runs on one process only: DDP "
                "needs the trainable parameters fixed; use finetune.freeze_layers instead"
            )
        self.precision = resolve_precision(cfg.train.precision, env.device)
        self.compiled = resolve_compile(cfg.train.compile, env.device)
        built = build_model(cfg, env, self.objective, init, self.precision)
        self.model, self.optimizer, self.scaler = built.model, built.optimizer, built.scaler
        self.strategy, self.learnable = built.strategy, built.learnable
        self.flops_per_token = built.flops_per_token
        self.loader = objective.batches(cfg, env, self.accum)
        # train.epochs and intervals in epochs become steps (saved so in config.yaml)
        self.cfg, self.epochs = settle_epochs(cfg, self.loader)
        self.budget = Budget.of(self.cfg.train)
        for line in self.epochs.get("lines", []):
            self._say(line)
        self.step_tokens = 0  # input tokens of the last step, all processes
        self.step = 0
        self.tokens_seen = 0
        self.elapsed_before = 0.0  # training seconds of earlier attempts (a resumed run)
        self.selection = Selection()
        self.schedule = Schedule(self.cfg.train)  # settled; plateau's state is checkpointed
        self.checkpoints = Checkpointer(self.run_dir, env, self.strategy,
                                        cfg.train.keep_checkpoints)
        if self.resume:
            self._restore()
            freeze.apply_freezing(self.model, cfg.finetune, cfg.model.n_layer, self.step,
                                  learnable=self.learnable)
        elif env.is_main:
            clear_run_dir(self.run_dir, (CHECKPOINTS_DIR, BEST_DIR, EPOCHS_FILE, *LOG_OUTPUTS,
                                         *objective.outputs))
        self._start_records()
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

    def _start_records(self) -> None:
        """config.yaml, tokenizer.json, data.json, environment.json and the objective's own
        files (rank 0), and the metrics logger."""
        env, cfg = self.env, self.cfg
        self.peak_flops, peak_source = peak_flops(env.device, self.precision,
                                                  cache_dir(None) / PEAK_FLOPS_FILE)
        self.logger: MetricsLogger | None = None
        self.environment: dict[str, Any] = {}
        if not env.is_main:
            return
        run = RunDir(self.run_dir)
        save_config(cfg, run.config_file)
        self.tokenizer.save(run.tokenizer_file)
        run.data_file.write_text(json.dumps(self.objective.data_meta(), indent=2))
        if self.epochs:
            (self.run_dir / EPOCHS_FILE).write_text(json.dumps(self.epochs, indent=2))
        for name, text in self.objective.run_files().items():
            (self.run_dir / name).write_text(text, encoding="utf-8")
        self.environment = environment_info(
            env, self.precision, self.compiled, (self.peak_flops, peak_source))
        self.environment["strategy"] = self.strategy
        run.environment_file.write_text(json.dumps(self.environment, indent=2))
        self.logger = MetricsLogger(
            self.run_dir, cfg, resume_step=self.step if self.resume else None)

    def _restore(self) -> None:
        path, state = self.checkpoints.restore(self.model, self.optimizer)
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.selection.load_state_dict(state)
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(state["loader"])
        self.schedule.load_state_dict(state.get("schedule", {}))  # older checkpoints lack it
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
        """metrics.jsonl and the dashboards get the record's numbers (not its tables)."""
        if self.logger is not None:
            self.logger.log({k: v for k, v in record.items() if not isinstance(v, (dict, list))})

    def _elapsed(self) -> float:
        """Training seconds of this run, earlier attempts of a resumed run included."""
        return self.elapsed_before + time.perf_counter() - self.started

    def _sample(self, val_loss: float) -> None:
        """samples.txt and TensorBoard get a continuation of sample.prompt at each evaluation."""
        tokens = self.cfg.log.sample_tokens
        # a sharded model computes only with every rank: all sample, rank 0 writes
        if not (self.objective.samples and tokens) or (
                self.logger is None and self.strategy != "fsdp"):
            return
        if not math.isfinite(val_loss):  # a diverged model has no distribution to sample
            if self.logger is not None:
                self.logger.sample(self.step, "(no sample: the model has diverged)", val_loss)
            return
        text = self.objective.sample(self.model, self.cfg, self.tokenizer, self.precision,
                                     self.env)
        if self.logger is not None:
            self.logger.sample(self.step, text, val_loss)

    def evaluate(self) -> dict[str, Any]:
        """The objective's held-out numbers for the current weights, as a record."""
        scores = self.objective.evaluate(self.model, self.cfg, self.precision, self.env)
        return {"step": self.step, "kind": "eval", "tokens": self.tokens_seen, **scores}

    def _save_best(self, record: dict[str, Any]) -> None:
        """best/ holds a plain model and the objective's files (a model card); a LoRA run's
        GPT is merged, its adapter in best/adapter/."""
        loss = record[self.objective.loss_key]
        info = {"step": self.step, "val_loss": loss, "tokens_seen": self.tokens_seen,
                "model": self.cfg.model.model_dump(),
                "metrics": {k: v for k, v in record.items() if k not in ("step", "kind", "tokens")
                            and not isinstance(v, (dict, list))},
                "elapsed_s": round(self._elapsed(), 1)}
        files = self.objective.best_files(self.cfg, record, info, self.environment) \
            if self.env.is_main else {}
        merge = lora.is_lora(self.model)

        def extra(folder: Path) -> None:
            for name, text in files.items():
                (folder / name).write_text(text, encoding="utf-8")
            if merge:
                lora.save_adapter(self.model, folder / lora.ADAPTER_DIR)

        self.checkpoints.save_best(self.model, info, extra,
                                   to_save=lora.merged_copy if merge else None)

    def _save_checkpoint(self) -> None:
        state: dict[str, Any] = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            **self.selection.state_dict(),
            "elapsed_s": self._elapsed(),
            "loader": self.loader.state_dict(),
            "schedule": self.schedule.state_dict(),
        }
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        self.checkpoints.save(self.step, self.model, self.optimizer, state)

    def _train_step(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg, env = self.cfg, self.env
        lr = self.schedule.lr(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        if cfg.finetune.unfreeze_every and self.step % cfg.finetune.unfreeze_every == 0:
            freeze.apply_freezing(self.model, cfg.finetune, cfg.model.n_layer, self.step,
                                  learnable=self.learnable)
        batches = self.loader.step_batches(self.step)
        # each micro-batch's mean is weighted by its share of the step's targets, so the
        # step's loss is the mean over all of them even when masking makes counts differ
        counts = [self.objective.targets(batch[1]) for batch in batches]
        step_targets = max(sum(counts), 1)
        self.step_tokens = sum(batch[0].numel() for batch in batches) * env.world_size
        total = torch.zeros((), device=env.device)
        for i, (x, y, *more) in enumerate(batches):
            x = x.to(env.device, non_blocking=True)
            y = y.to(env.device, non_blocking=True)
            extra = {k: v.to(env.device) for k, v in more[0].items()} if more else {}
            with distributed.no_sync(self.train_model, sync=i == len(batches) - 1):
                with autocast(env.device, self.precision):
                    loss = self.objective.loss(self.train_model, x, y, extra)
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
        bad = not_finite(record, keys)
        if bad is not None:
            self._log(record)
            raise diverged(record, bad, self.checkpoints.saved_step, self.cfg.train.lr,
                           f"gptkit {self.objective.command} --resume --out {self.run_dir}")

    # --- the loop -----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train to train.max_steps (or an early stop, or Ctrl-C), evaluating and saving."""
        with distributed.peer_failures(self.env, self.cfg.dist.timeout_s):
            return self._fit()

    def _fit(self) -> TrainResult:
        cfg, env, objective, budget = self.cfg, self.env, self.objective, self.budget
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
            total=budget.max_steps, initial=self.step, unit="step", dynamic_ncols=True,
            disable=not (self.progress and env.is_main),
        )
        start_step = self.step
        if self.resume and self.step >= budget.max_steps:
            self._say(f"run already reached train.max_steps={budget.max_steps} (at step "
                      f"{self.step}); raise it with --set train.max_steps="
                      f"{max(2 * self.step, 1)} to train further")
        started = self.started = time.perf_counter()
        start_tokens = self.tokens_seen
        window_start, window_tokens = started, 0
        loss: torch.Tensor | None = None  # the last step's, on the device
        checked_step = -1  # the last step whose loss was read and found finite
        try:
            while True:
                last = self.step >= budget.max_steps or interrupted or stop_early
                resumed_here = self.resume and self.step == start_step
                if (self.step % budget.eval_interval == 0 or last) and not resumed_here:
                    last_eval = self.evaluate()
                    self._stop_if_diverged(last_eval, objective.finite_keys)
                    loss_now = last_eval[objective.loss_key]
                    improved = self.selection.update(objective.score(last_eval), loss_now)
                    if improved:
                        self._save_best(last_eval)
                    self._log(last_eval)
                    self._sample(loss_now)
                    self._say(f"step {self.step}: {objective.describe(last_eval)}"
                              + (" *best" if improved else ""))
                    if (reduced := self.schedule.observe(self.step, loss_now)) is not None:
                        self._say(f"plateau: learning rate reduced to {reduced:.3g}")
                    patience = cfg.train.early_stopping_patience
                    if self.selection.out_of_patience(patience) and not last:
                        stop_early = True
                        self._say(f"early stopping: no improvement in {patience} evaluations")
                        last = True
                    reason = self.on_eval(self.step, loss_now, last_eval) if self.on_eval else None
                    if reason and not last:
                        stop_early = last = True
                        self._say(f"stopped: {reason}")
                saving_step = self.step % budget.checkpoint_interval == 0 and self.step > 0
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
                if self.step % budget.log_interval == 0 or self.step == budget.max_steps:
                    now = time.perf_counter()
                    tok_s = window_tokens / max(now - window_start, 1e-9)
                    window_start, window_tokens = now, 0
                    # model FLOPs utilisation: model FLOPs done / what the devices can do
                    mfu = tok_s * self.flops_per_token / (self.peak_flops * env.world_size)
                    mean_loss = self._step_loss(loss)
                    record = {
                        "step": self.step, "kind": "train", "tokens": self.tokens_seen,
                        "loss": mean_loss, "lr": self.schedule.lr(self.step - 1),
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
            if env.is_main:  # before the processes part: every one may read what it wrote
                checkpoint.remove_leftovers(self.run_dir)
                objective.finish(self.run_dir)
            distributed.barrier(env)
        finally:
            bar.close()
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
            if self.logger is not None:
                self.logger.close()
            self._release_ddp()
            distributed.teardown(env)
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
            best_val_loss=self.selection.best_loss,
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
    on_eval: EvalCallback | None = None,
) -> TrainResult:
    """Train (or resume) the run described by `cfg` into `run_dir`; `on_eval` may end it
    after an evaluation (`EvalCallback`)."""
    trainer = Trainer(
        cfg, Path(run_dir), resume=resume, overwrite=overwrite, data_dir=data_dir,
        progress=progress, on_eval=on_eval,
    )
    return trainer.fit()
