"""What several benchmarks share: scoring a run on its whole val split, and writing results
as JSON that says when, where and how they were measured (docs/results.md is generated from
those files by benchmarks/make_results.py, so a figure cannot lose its date or its command)."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
# environment variables that change what a benchmark measures, recorded with its command
ENV_RECORDED = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def full_val_loss(run_dir: Path, which: str = "best") -> float:
    """Mean token loss of a run's model over its whole eval split (not training's subset)."""
    # imported here: serve_load's client imports this module for write_results, without torch
    from gptkit.data.prepare import prepare
    from gptkit.device import resolve_precision
    from gptkit.evaluate import score_tokens
    from gptkit.run import load_run

    run = load_run(run_dir, which=which)
    data = prepare(run.config.data, tokenizer=run.tokenizer)
    # scored as training and `gptkit eval` score (gptkit.device): the run's own precision
    precision = resolve_precision(run.config.train.precision, run.device)
    score = score_tokens(run.model, data.tokens(run.config.data.eval_split),
                         block_size=run.config.model.block_size, batch_size=64,
                         precision=precision)
    return score.nll / score.tokens


def made_by(run_dir: Path) -> str | None:
    """The command that trained a run a benchmark measures (from its environment.json), so
    figures of a run carry how the run was made; None for a run without that record."""
    try:
        argv = json.loads((Path(run_dir) / "environment.json").read_text())["argv"]
    except (OSError, ValueError, KeyError):
        return None
    return shlex.join(["gptkit", *argv[1:]])


def command_line(argv: list[str] | None = None) -> str:
    """The command that ran this benchmark, as a user would type it: `python -m
    benchmarks.NAME ARGS` (sys.argv holds the module's file path instead), prefixed with
    the recorded environment variables that were set."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]) if argv else Path("?")
    if script.suffix == ".py" and script.parent.name == "benchmarks":
        head = ["python", "-m", f"benchmarks.{script.stem}"]
    else:
        head = ["python", str(script)]
    env = [f"{k}={os.environ[k]}" for k in ENV_RECORDED if k in os.environ]
    return shlex.join([*env, *head, *argv[1:]])


def cpu_model() -> tuple[str, bool | None]:
    """The CPU's marketing name (Linux: /proc/cpuinfo; elsewhere what platform knows), and
    whether it multiplies bf16 matrices in hardware (AVX512-BF16 or AMX; None if unknown),
    which decides gptkit's default precision on it."""
    name, bf16 = "", None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and bf16 is None:
                bf16 = bool({"avx512_bf16", "amx_bf16"} & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return name or platform.processor() or platform.machine(), bf16


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, threads, torch, GPU, and how busy the machine
    was (load averages, this benchmark's own processes included) when the results were
    written. torch is only asked if the benchmark imported it (serve_load's client does not)."""
    cpu, bf16 = cpu_model()
    info: dict[str, Any] = {"cpu": cpu, "cpu_bf16": bf16, "cores": os.cpu_count(),
                            "python": platform.python_version(), "os": platform.platform()}
    try:
        info["torch"] = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        info["torch"] = None
    torch = sys.modules.get("torch")
    info["threads"] = torch.get_num_threads() if torch is not None else None
    gpu = None
    if torch is not None and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    info["gpu"] = gpu
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


def git_commit() -> str | None:
    """The commit the benchmark ran from, with `+dirty` when the tree had changes (other than
    results, which the benchmarks run before this one have just rewritten)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", ":!benchmarks/results", ":!docs/results.md"],
                               cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty.strip() else "")


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """date (UTC), machine, command and git commit of this benchmark run."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return {"date": now.isoformat(), "machine": machine(), "command": command_line(argv),
            "commit": git_commit()}


def write_results(path: Path, results: Any, default: Callable[[Any], Any] | None = None) -> None:
    """Write a benchmark's results to `path` (its --json) as indented JSON, creating the
    folder: `{"benchmark": name, "provenance": {date, machine, command, commit}, "results":
    ...}`, the benchmark's name being the file's. `default` converts what JSON cannot hold,
    as in json.dumps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"benchmark": path.stem, "provenance": provenance(), "results": results}
    path.write_text(json.dumps(document, indent=2, default=default) + "\n")


def mean_spread(values: list[float], signed: bool = False) -> str:
    """"mean ± sample standard deviation"; with one value (--seeds 1) there is no spread,
    and the text says so instead of failing (statistics.stdev needs two values)."""
    mean = f"{statistics.mean(values):+.3f}" if signed else f"{statistics.mean(values):.3f}"
    if len(values) < 2:
        return f"{mean} ± n/a (1 seed)"
    return f"{mean} ± {statistics.stdev(values):.3f}"
