"""A run's settings on disk: config.yaml written resolved, read back as a RunConfig.

A config.yaml written by any earlier gptkit loads: every field it holds is still a setting
(tests/fixtures/config-v0.yaml is one from before issue 18), and one saved before
`train.min_lr_ratio` existed keeps its absolute `train.min_lr`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gptkit.config.run import RunConfig, build_config
from gptkit.errors import GptkitError

CONFIG_FILE = "config.yaml"  # a run's resolved settings (gptkit.rundir owns the other names)


def save_config(config: RunConfig, path: Path) -> None:
    """`config` as YAML, in field order: the file a run directory holds."""
    path.write_text(yaml.safe_dump(config.model_dump(), sort_keys=False), encoding="utf-8")


def read_raw_config(path: Path) -> dict[str, Any]:
    """The settings saved in a run's config.yaml as a nested dict, not yet type-checked; a
    damaged file (not YAML, not text, not a mapping, unreadable) is a GptkitError naming it."""
    if not path.is_file():
        raise GptkitError(f"{path} not found: is {path.parent} a gptkit run directory?")
    fix = "restore it from a copy of the run (gptkit train writes it)"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise GptkitError(f"{path} is damaged: not UTF-8 text (byte {exc.start}); {fix}") from None
    except OSError as exc:
        raise GptkitError(f"cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise GptkitError(f"{path} is damaged: not valid YAML ({problem}{where}); {fix}"
                          ) from None
    if not isinstance(raw, dict):
        raise GptkitError(f"{path} is damaged: it must be a mapping of settings, not "
                          f"{type(raw).__name__}; {fix}")
    return raw


def read_config(path: Path) -> RunConfig:
    """The resolved config saved in a run directory; errors name the file."""
    raw = read_raw_config(path)
    try:
        return build_config(raw)
    except GptkitError as exc:
        raise GptkitError(f"{path}: {exc}") from None
