"""Operations on whole runs that write a new run folder: an int8 export (`gptkit export
--quantize int8`) and a pruned copy (`gptkit prune`).

They sit above the loader (`gptkit.run`) and the model-level compression
(`gptkit.compress`), which know nothing of them. The new folder takes over the run's
config, tokenizer and records, and gets its own best/ (weights, best/config.json saying
what was done, a model card); it is built aside and renamed into place at the end.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptkit.compress import (
    PRUNE_METHODS,
    PRUNERS,
    check_amount,
    prune_model,
    save_int8,
)
from gptkit.errors import GptkitError
from gptkit.files import check_target, new_folder
from gptkit.model_card import CARD_FILE, run_card
from gptkit.run import Run, load_run
from gptkit.rundir import (
    BEST_INFO_FILE,
    CONFIG_FILE,
    INT8,
    MODEL_FILE,
    PRUNED_KEY,
    QUANTIZATION_KEY,
    RECORD_FILES,
    RunDir,
)
from gptkit.weights import save_weights


def _check_out(run_dir: Path, out: Path, overwrite: bool) -> None:
    """Before any work: `out` is a new folder, or a run to replace with `overwrite`."""

    if out.resolve() == run_dir.resolve():
        raise GptkitError(f"--out {out} is the run itself; write the result to a new folder")
    check_target(out.resolve(), overwrite=overwrite, marker=CONFIG_FILE, what="gptkit run")


def _write_run(run: Run, out: Path, *, overwrite: bool, write_best: Callable[[Path], None]
               ) -> Path:
    """A new run folder: config, tokenizer, data and environment records of `run`, and
    `best/` from `write_best`; built aside and renamed into place at the end, replacing an
    existing run only with `overwrite`."""

    with new_folder(out, overwrite=overwrite, marker=CONFIG_FILE, what="gptkit run") as tmp:
        for name in RECORD_FILES:
            if (run.path / name).is_file():
                shutil.copy2(run.path / name, tmp / name)
        best = RunDir(tmp).best
        best.mkdir()
        write_best(best)
    return out


def _card(run: Run, note: str) -> str:
    card = run_card(run.path).rstrip("\n")
    heading = "" if "\n## Compression\n" in card else "## Compression\n\n"  # pruned twice
    return (f"{card}\n\n{heading}{note} The results above, if any, were measured before; "
            "`gptkit eval RUN` scores this model.\n")


def _info(run: Run) -> dict[str, Any]:
    info = run.best() if run.weights == RunDir(run.path).best_weights else None
    return dict(info or {"step": None, "weights_from": str(run.weights)})


def export_int8(
    run_dir: str | Path, out: str | Path, *, which: str = "best", overwrite: bool = False
) -> Path:
    """Write a run with int8 weights: a run folder that `load_run` opens as an int8 model."""
    run_dir, out = Path(run_dir), Path(out)
    _check_out(run_dir, out, overwrite)
    run = load_run(run_dir, which=which, quantize=INT8)
    info = {**_info(run), QUANTIZATION_KEY: INT8,
            "quantization_details": "torch.ao dynamic int8: per-channel symmetric int8 weights "
            "of every linear layer, activations quantized per batch; CPU only",
            "quantized_from": str(run.weights)}

    def write_best(best: Path) -> None:
        save_int8(run.model, best / MODEL_FILE)
        (best / BEST_INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
        (best / CARD_FILE).write_text(_card(run, (
            f"Quantized to int8 from `{run.weights}` with `gptkit export --quantize int8` "
            "(dynamic int8 linear layers, CPU only; a Hugging Face export needs the fp32 run)."
        )), encoding="utf-8")

    return _write_run(run, out, overwrite=overwrite, write_best=write_best)


def prune_run(
    run_dir: str | Path, out: str | Path, *, method: str, amount: float, which: str = "best",
    overwrite: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Prune a run's model and write it as a new run; returns the folder and its sparsity."""
    if method not in PRUNERS:
        raise GptkitError(f"--method must be one of {', '.join(PRUNE_METHODS)}, got {method!r}")
    check_amount(amount, "--amount")
    run_dir, out = Path(run_dir), Path(out)
    _check_out(run_dir, out, overwrite)
    if RunDir(run_dir).quantization:
        raise GptkitError(f"{run_dir} holds int8 weights; prune the fp32 run it came from")
    run = load_run(run_dir, which=which)
    report = prune_model(run.model, method, amount)
    unit = {"magnitude": "", "heads": (f", {report['heads']['zero']} of "
                                       f"{report['heads']['of']} attention heads"),
            "mlp": (f", {report['mlp_channels']['zero']} of {report['mlp_channels']['of']} "
                    "MLP channels")}[method]
    summary = {"method": method, "amount": amount, "from": str(run.weights),
               "sparsity_blocks": report["blocks"], "sparsity_model": report["model"],
               "heads": report["heads"], "mlp_channels": report["mlp_channels"]}
    info = {**_info(run), PRUNED_KEY: summary}

    def write_best(best: Path) -> None:
        save_weights(run.model, best / MODEL_FILE)
        (best / BEST_INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")
        (best / CARD_FILE).write_text(_card(run, (
            f"Pruned from `{run.weights}` with `gptkit prune --method {method} --amount "
            f"{amount:g}`: {100 * report['blocks']:.1f}% of the transformer blocks' linear "
            f"weights are zero{unit} ({100 * report['model']:.1f}% of all parameters)."
        )), encoding="utf-8")

    return _write_run(run, out, overwrite=overwrite, write_best=write_best), report
