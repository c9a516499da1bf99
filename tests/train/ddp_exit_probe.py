"""Run under torchrun by test_distributed.py: `gptkit train` in this process, recording how
many DistributedDataParallel wrappers are still alive when the process group is destroyed
(the DDP reducer must be gone by then, or its destructor can deadlock with a gloo thread)."""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from gptkit import cli


def main() -> None:
    report = Path(sys.argv[1]) / f"rank-{os.environ['RANK']}.json"
    destroy = dist.destroy_process_group
    seen: list[int] = []

    def checked_destroy(*args: object, **kwargs: object) -> None:
        gc.collect()
        seen.append(sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects()))
        destroy(*args, **kwargs)

    dist.destroy_process_group = checked_destroy  # type: ignore[assignment]
    cli.main(sys.argv[2:])
    report.write_text(json.dumps({"ddp_alive_at_destroy": seen}))


if __name__ == "__main__":
    main()
