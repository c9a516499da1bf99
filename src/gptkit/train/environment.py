"""environment.json: what a run directory needs to explain itself later (LESSONS.md #7)."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from gptkit.train.distributed import DistEnv


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
    """The versions, machine, processes and precision of a run, and its command line."""
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
