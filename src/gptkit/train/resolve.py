"""What a run is, settled once before it trains: its directory, its starting run, its settings.

The settings a user gives leave some things open: `data.protocol: auto`, a vocabulary size
of null (the tokenizer's), a tokenizer that comes from the run named by `train.init_from` or
from the distillation teacher. The trainer settles them once into a new `RunConfig`
(`resolved_config`), saves that as config.yaml, and never changes it afterwards; the
caller's config is not touched.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from gptkit.config import (
    SHAPE_KEYS,
    DataConfig,
    RunConfig,
    apply_overrides,
    build_config,
    read_config,
)
from gptkit.config.context import resized_model_config
from gptkit.errors import GptkitError
from gptkit.run import Run, load_run
from gptkit.rundir import CONFIG_FILE, LABELS_FILE, RunDir
from gptkit.tokenizers import Tokenizer

if TYPE_CHECKING:
    from gptkit.train.objectives import Objective, Setup


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Never touch a user's directory by accident (DESIGN.md, "A run directory")."""
    if run_dir.exists() and not run_dir.is_dir():
        raise GptkitError(f"--out {run_dir} is a file, not a run directory; choose another --out")
    if resume and overwrite:
        raise GptkitError("--resume and --overwrite contradict each other; pick one")
    exists = run_dir.exists() and any(run_dir.iterdir())
    if resume:
        if not (run_dir / CONFIG_FILE).is_file():
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
    if exists and overwrite and not (run_dir / CONFIG_FILE).is_file():
        raise GptkitError(
            f"refusing to overwrite {run_dir}: it is not a gptkit run (no config.yaml); "
            "choose another --out"
        )


def clear_run_dir(run_dir: Path, names: tuple[str, ...]) -> None:
    """An empty run directory, or one whose earlier run's outputs `names` are gone
    (--overwrite: a new run must not inherit the old one's checkpoints or logs)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def resume_config(run_dir: Path, overrides: list[str]) -> RunConfig:
    """The settings a resumed run continues with: its saved config.yaml, `--set` on top."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise GptkitError(
            f"cannot resume: {run_dir} is not a gptkit run (no config.yaml); "
            "drop --resume to start a new run, or point --out at the run"
        )
    saved = read_config(run_dir / CONFIG_FILE)
    return build_config(apply_overrides(saved.model_dump(), overrides))


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


def load_init_run(cfg: RunConfig, run_dir: Path) -> Run:
    """The run named by train.init_from, whose weights, shape and tokenizer this run takes."""
    path = Path(str(cfg.train.init_from))
    if not (path / CONFIG_FILE).is_file():
        raise GptkitError(
            f"train.init_from: {path} is not a gptkit run (no config.yaml); import one "
            f"(gptkit import gpt2 --out {path}) or train one first"
        )
    if path.resolve() == run_dir.resolve():
        raise GptkitError(f"train.init_from ({path}) must be another run than --out")
    if (path / LABELS_FILE).is_file():
        raise GptkitError(
            f"train.init_from: {path} is a classifier run; start from the language-model run "
            f"its backbone came from (train.init_from in {path / CONFIG_FILE})"
        )
    if RunDir(path).quantization:
        raise GptkitError(
            f"train.init_from: {path} holds int8 weights (an inference export), which "
            "cannot be trained; start from the run it was exported from"
        )
    init = load_run(path)
    # a cropped or extended context changes block_size and RoPE's settings, as recipes did
    expected = resized_model_config(init.model.config, cfg.model.block_size,
                                    cfg.model.context_extension, f"train.init_from={path}")
    for key in SHAPE_KEYS:
        mine, theirs = getattr(cfg.model, key), getattr(expected, key)
        if key == "vocab_size" and mine is None:
            continue  # null: the starting run's
        if mine != theirs:
            raise GptkitError(
                f"model.{key}={mine} does not match train.init_from={path} ({key}={theirs}); "
                "a run started from another keeps its shape: drop that setting"
            )
    return init


def donor_data(data: DataConfig, donor_dir: Path) -> DataConfig:
    """`data` with the tokenizer settings of the run whose tokenizer this run takes (the
    starting run, or the teacher), so that this run's config.yaml tells the truth."""
    donor = read_config(Path(donor_dir) / CONFIG_FILE).data
    settings = {key: getattr(donor, key) for key in ("tokenizer", "vocab_size", "tokenizer_path")}
    return data.updated(**settings)


def model_vocab_size(cfg: RunConfig, tokenizer: Tokenizer, init: Run | None) -> int:
    """The embedding table's rows: the starting run's, else model.vocab_size, else the
    tokenizer's; never fewer than the tokenizer has ids."""
    if init is not None:
        return init.model.config.vocab_size  # type: ignore[return-value]
    vocab = cfg.model.vocab_size
    if vocab is not None and vocab < tokenizer.vocab_size:
        raise GptkitError(
            f"model.vocab_size ({vocab}) is smaller than the tokenizer's vocabulary "
            f"({tokenizer.vocab_size}); set model.vocab_size={tokenizer.vocab_size} or null"
        )
    return tokenizer.vocab_size if vocab is None else vocab


def resolved_config(cfg: RunConfig, *, data: DataConfig | None = None,
                    vocab_size: int | None = None) -> RunConfig:
    """A new config: `cfg` with the data settings and vocabulary size this run settled on.

    The one place a run's settings are rewritten; `cfg` itself is left as it was. (With
    settings are frozen: this builds a validated copy.)"""
    model = cfg.model if vocab_size is None else cfg.model.updated(vocab_size=vocab_size)
    return cfg.updated(data=cfg.data if data is None else data, model=model)


def settle_run(given: RunConfig, objective: Objective, setup: Setup
               ) -> tuple[RunConfig, Tokenizer, Run | None]:
    """Settle a run's settings once: the data protocol, where the tokenizer comes from (the
    run's own on resume, the starting run's, a teacher's, or trained on the data), and the
    vocabulary size. The settled config, its tokenizer, and the starting run (init_from)."""
    data = objective.data_config(given, setup)
    init = load_init_run(given, setup.run_dir) if given.train.init_from and not setup.resume \
        else None
    tokenizer: Tokenizer | None = None
    donor = objective.tokenizer_donor(given)
    if setup.resume:
        tokenizer = Tokenizer.load(RunDir(setup.run_dir).tokenizer_file)
    elif init is not None:
        tokenizer, data = init.tokenizer, donor_data(data, init.path)
    elif donor is not None:
        tokenizer, data = Tokenizer.load(RunDir(donor).tokenizer_file), donor_data(data, donor)
    with_data = resolved_config(given, data=data)
    tokenizer = objective.prepare(with_data, tokenizer, setup)
    return resolved_config(with_data, vocab_size=model_vocab_size(with_data, tokenizer, init)), \
        tokenizer, init
