"""One of the `--jobs N` processes of a sweep: `python -m gptkit.sweep.worker SPEC WORKER
THREADS`, where SPEC is the sweep's JSON (`SweepSpec`), WORKER its index and THREADS the
torch threads it may use (its share of the cores)."""

from __future__ import annotations

import sys

from gptkit.errors import GptkitError


def main(argv: list[str]) -> int:
    import torch

    from gptkit.sweep.objective import SweepSpec
    from gptkit.sweep.study import optimize

    spec, worker, threads = SweepSpec.from_json(argv[0]), int(argv[1]), int(argv[2])
    torch.set_num_threads(threads)
    try:
        optimize(spec, worker)
    except GptkitError as exc:
        print(f"gptkit: error: worker {worker}: {' '.join(str(exc).split())}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
