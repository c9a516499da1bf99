"""`gptkit sweep`: hyperparameter search with Optuna over any `--set` keys (gptkit.sweep)."""

from __future__ import annotations

import argparse
from typing import Any

from gptkit.cli import options
from gptkit.config.choices import SweepPruner, SweepSampler, names


def register(commands: Any) -> None:
    p = commands.add_parser(
        "sweep", help="search hyperparameters with Optuna (each trial a run)",
        description="Train --trials runs of a recipe, each with settings drawn from a search "
        "space (a YAML file mapping --set keys to ranges or choices, or a shipped space: "
        "optimizer), pruning bad trials at their evaluations, and keep the lowest validation "
        "loss. Writes DIR/trial-NNNN run folders, DIR/study.db, DIR/sweep.json, DIR/best.yaml "
        "(a recipe) and PNGs. Running the same command again continues the study.",
    )
    options.add_recipe(p)
    p.add_argument("--space", required=True, metavar="SPACE",
                   help="search space: a .yaml file or a shipped space's name (optimizer)")
    p.add_argument("--trials", type=int, required=True, metavar="N",
                   help="trials to finish (complete or pruned), counting earlier runs of the study")
    p.add_argument("--out", metavar="DIR", help="sweep folder (default: sweeps/<recipe name>)")
    p.add_argument("--sampler", choices=names(SweepSampler), default="tpe",
                   help="tpe (default), random, or grid (every point; ranges need a step)")
    p.add_argument("--pruner", choices=names(SweepPruner), default="median",
                   help="stop bad trials early: median (default), halving (successive "
                   "halving) or none")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage URL, e.g. postgresql://host/db shared by several "
                   "machines (default: sqlite:///DIR/study.db)")
    p.add_argument("--study-name", metavar="NAME", help="study name (default: DIR's name)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="worker processes on this machine, each with its share of the cores "
                   "(default 1)")
    p.add_argument("--seed", type=int, metavar="S", help="sampler seed (trials keep the "
                   "recipe's train.seed)")
    options.add_no_progress(p, "trials' evaluation lines are still printed")
    p.set_defaults(handler=sweep)


def sweep(args: argparse.Namespace) -> None:
    from gptkit.cli.options import DEFAULT_RECIPE
    from gptkit.sweep import run_sweep

    run_sweep(args.recipe or DEFAULT_RECIPE, args.space, args.trials, out=args.out,
              overrides=args.overrides, sampler=args.sampler, pruner=args.pruner,
              storage=args.storage, study_name=args.study_name, jobs=args.jobs, seed=args.seed,
              data_dir=args.data_dir, progress=not args.no_progress)
