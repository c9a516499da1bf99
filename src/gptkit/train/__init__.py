"""Training: the one loop (trainer) and what each kind of run optimises (objectives/), its
settled settings (resolve), checkpoints, evaluation, distributed set-up, optimizers, schedules.

The package is also the function `gptkit.train(cfg, run_dir, ...)` (docs/python-api.md,
`from gptkit import train`). Python binds `gptkit.train` to this package whenever it is first
imported (by `load_run`, say), which shadows any function of that name in `gptkit`; so the
package itself is made callable, and `train(cfg, "runs/x")` means the same whichever was
imported first.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gptkit.config import RunConfig
    from gptkit.train.trainer import TrainResult


class _CallablePackage(types.ModuleType):
    def __call__(
        self,
        cfg: RunConfig,
        run_dir: str | Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        data_dir: str | Path | None = None,
        progress: bool = True,
    ) -> TrainResult:
        """Train (or resume) the run described by `cfg` into `run_dir`
        (`gptkit.train.trainer.train`)."""
        from gptkit.train.trainer import train

        return train(cfg, run_dir, resume=resume, overwrite=overwrite, data_dir=data_dir,
                     progress=progress)


sys.modules[__name__].__class__ = _CallablePackage
