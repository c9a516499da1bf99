"""The pictures of a finished sweep, drawn by `optuna.visualization.matplotlib` as PNGs.

Parameter importances use PED-ANOVA, which needs only numpy (fANOVA, Optuna's default, and
mean decrease impurity need scikit-learn) and is in Optuna 4.0 as in later releases. A plot
that needs more finished trials than the study has is skipped with the reason. Optuna marks
these functions experimental; its ExperimentalWarning is silenced for these calls only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

HISTORY, IMPORTANCES, PARALLEL = "history.png", "importances.png", "parallel.png"


def draw_plots(study: optuna.Study, out: Path) -> tuple[list[Path], list[str]]:
    """(PNGs written into `out`, reasons for those skipped)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no window, also without a display
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as oplt

    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    params = {k for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              for k in t.params}

    def importances() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            evaluator = PedAnovaImportanceEvaluator()
        return oplt.plot_param_importances(study, evaluator=evaluator)

    plans: list[tuple[str, int, Callable[[], Any]]] = [
        (HISTORY, 1, lambda: oplt.plot_optimization_history(study)),
        # PED-ANOVA compares the best trials with the rest: more than two are needed
        (IMPORTANCES, 3, importances),
        (PARALLEL, 2, lambda: oplt.plot_parallel_coordinate(study)),
    ]
    written, skipped = [], []
    for name, needed, plot in plans:
        if complete < needed:
            skipped.append(f"{name}: needs {needed} complete trials, the study has {complete}")
            continue
        if name == IMPORTANCES and len(params) < 2:
            skipped.append(f"{name}: one parameter has all the importance")
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = plot()
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        figure.savefig(out / name, dpi=100)
        matplotlib.pyplot.close(figure)
        written.append(out / name)
    return written, skipped
