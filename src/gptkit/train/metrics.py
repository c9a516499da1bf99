"""Where a run's numbers go: metrics.jsonl always, TensorBoard and Weights & Biases on request.

Only the main process logs. A record is a flat dict with `step` and `kind` ("train" or
"eval"); its other numbers become the scalars `<kind>/<key>` in TensorBoard and W&B, so
`train/loss`, `train/lr`, `train/mfu`, `eval/val_loss`, `eval/val_perplexity` ... A
resumed run first drops what an interrupted attempt logged after its checkpoint, in every
sink (TensorBoard's `purge_step`, W&B's resumed run id).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import time
import uuid
from pathlib import Path
from typing import Any

import torch
import yaml

from gptkit.config import RunConfig
from gptkit.errors import GptkitError
from gptkit.rundir import METRICS_FILE, PLOTS_DIR, SAMPLES_FILE, TB_DIR

WANDB_ID_FILE = "wandb-id.txt"
# every file or folder the loggers write; a new run (--overwrite) starts without them
LOG_OUTPUTS = (METRICS_FILE, SAMPLES_FILE, TB_DIR, WANDB_ID_FILE, "wandb", PLOTS_DIR)

_SAMPLE_HEADER = re.compile(r"^=== step (\d+) ", re.MULTILINE)


class MetricsLogger:
    """Writes each record to metrics.jsonl and to the dashboards the config asks for."""

    def __init__(self, run_dir: Path, cfg: RunConfig, *, resume_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        if resume_step is not None:
            truncate_metrics(self.run_dir / METRICS_FILE, resume_step)
            truncate_samples(self.run_dir / SAMPLES_FILE, resume_step)
        self.wandb = _start_wandb(self.run_dir, cfg, resume_step is not None) if cfg.log.wandb \
            else None
        self.tb: Any = None
        if cfg.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.run_dir / TB_DIR), purge_step=resume_step)
            if resume_step is None:
                config = yaml.safe_dump(cfg.model_dump(), sort_keys=False)
                self.tb.add_text("config", "```yaml\n" + config + "```", 0)

    def log(self, record: dict[str, Any]) -> None:
        with (self.run_dir / METRICS_FILE).open("a", encoding="utf-8") as f:
            f.write(json_line(record) + "\n")
        step, kind = record["step"], record.get("kind", "train")
        scalars = {
            f"{kind}/{key}": float(value) for key, value in record.items()
            if key not in ("step", "kind") and isinstance(value, (int, float))
        }
        if self.tb is not None:
            for tag, value in scalars.items():
                self.tb.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def sample(self, step: int, text: str, val_loss: float | None = None) -> None:
        """The fixed-prompt sample of one evaluation: samples.txt and a text panel."""
        header = f"=== step {step} " + ("" if val_loss is None else f"(val loss {val_loss:.4f}) ")
        with (self.run_dir / SAMPLES_FILE).open("a", encoding="utf-8") as f:
            f.write(header + "===\n" + text + "\n\n")
        if self.tb is not None:
            # four leading spaces: TensorBoard's markdown shows the text as written
            self.tb.add_text("samples", "\n".join("    " + line for line in text.split("\n")),
                             step)
        if self.wandb is not None:
            self.wandb.log({"samples": text}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def json_line(record: dict[str, Any]) -> str:
    """A record as strict JSON: a NaN or infinite number (a diverged loss, an fp16 step's
    overflowing gradient norm) is written as null, since JSON has no such numbers."""
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v
             for k, v in record.items()}
    return json.dumps(clean, allow_nan=False)


def _start_wandb(run_dir: Path, cfg: RunConfig, resume: bool) -> Any:
    """A W&B run named after ours; a resumed gptkit run continues the same W&B run.

    WANDB_MODE and the other WANDB_* variables are wandb's own and respected; with
    GPTKIT_OFFLINE=1 it logs offline (sync later with `wandb sync`).
    """
    try:
        import wandb
    except ImportError as exc:
        raise GptkitError(
            "log.wandb=true needs the wandb package: pip install -e \".[wandb]\" (or pip install "
            "wandb), or drop log.wandb"
        ) from exc
    id_file = run_dir / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if resume and id_file.is_file() else uuid.uuid4().hex[:8]
    id_file.write_text(run_id + "\n")
    offline = os.environ.get("GPTKIT_OFFLINE", "").lower() in ("1", "true", "yes")
    return wandb.init(
        project=cfg.log.wandb_project, name=cfg.name, id=run_id, resume="allow",
        dir=str(run_dir), config=cfg.model_dump(), mode="offline" if offline else None,
    )


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records an interrupted attempt logged after the checkpoint we resume from."""
    if not path.exists():
        return
    kept = [
        line for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= step
    ]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def truncate_samples(path: Path, step: int) -> None:
    """Drop samples.txt sections of steps after `step` (the same rule as the metrics)."""
    if not path.exists():
        return
    text = path.read_text(encoding="utf-8")
    for match in _SAMPLE_HEADER.finditer(text):
        if int(match.group(1)) > step:
            path.write_text(text[: match.start()], encoding="utf-8")
            return


# --- model FLOPs utilisation ----------------------------------------------------------------
# dense bf16/fp16 tensor-core peaks from the datasheets, by a part of the device name
_DATASHEET_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))
PEAK_FLOPS_FILE = "peak-flops.json"  # in the cache folder: measured peaks, per machine


def peak_flops(device: torch.device, precision: str,
               cache: Path | None = None) -> tuple[float, str]:
    """FLOP/s that MFU divides by, and where the figure comes from.

    Datasheet peaks for the GPUs in the table under bf16/fp16; elsewhere (CPUs, other GPUs,
    fp32) the best dense matmul rate measured on this machine in the training precision,
    so that MFU says how much of what this machine can actually multiply the model uses.
    Measured anew at each start, a shared CPU's peak moved with its load (a review saw 82-93%
    for the same run), so the measurement (best of 5) is made once per machine, device,
    dtype, thread count and torch version and kept in `cache` (a JSON file; delete it to
    measure again): runs of one machine then divide by the same figure.
    """
    half = precision in ("bf16", "fp16")
    if device.type == "cuda" and half:
        name = torch.cuda.get_device_name(device)
        for part, tflops in _DATASHEET_TFLOPS:
            if part in name:
                return tflops * 1e12, f"{part} datasheet ({precision})"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    source = f"measured {dtype} matmul"
    if cache is None:
        return measured_matmul_flops(device, dtype, repeats=5), source
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    key = (f"{platform.node()} {name} {dtype} threads={torch.get_num_threads()} "
           f"torch={torch.__version__}")
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    entry = known.get(key)
    if not (isinstance(entry, dict) and isinstance(entry.get("flops"), (int, float))
            and entry["flops"] > 0):
        entry = {"flops": measured_matmul_flops(device, dtype, repeats=5),
                 "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        known[key] = entry
        try:  # atomic: the ranks of a run may write at once
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial = cache.with_name(f".{cache.name}.{os.getpid()}")
            partial.write_text(json.dumps(known, indent=2), encoding="utf-8")
            os.replace(partial, cache)
        except OSError:
            pass  # a read-only cache: measured every start, as before
    return float(entry["flops"]), f"{source} on {entry['measured']} (cached in {cache})"


def measured_matmul_flops(device: torch.device, dtype: torch.dtype, repeats: int = 3) -> float:
    """Best of a few square matmuls (1024 on CPU, 4096 on GPUs): 2 n^3 FLOPs each."""
    n = 4096 if device.type == "cuda" else 1024
    own = torch.Generator(device=device).manual_seed(0)  # training's random streams untouched
    a = torch.rand(n, n, device=device, generator=own).to(dtype)
    b = torch.rand(n, n, device=device, generator=own).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
