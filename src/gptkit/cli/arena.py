"""`gptkit arena`: rank the models of a blind comparison from its votes."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gptkit.arena.ranking import DEFAULT_PRIOR
from gptkit.cli import options


def register(commands: Any) -> None:
    p = commands.add_parser(
        "arena", help="rank models from the votes of a blind comparison (gptkit serve "
        "--compare)",
        description="Read the votes that gptkit serve RUN --compare RUN2 --votes FOLDER "
        "stored and report each model's battles, wins, ties and losses, its win rate over "
        "the decided battles with a Wilson 95%% interval, and a Bradley-Terry ranking "
        "(maximum likelihood, Hunter's MM iteration; a tie or a both-bad vote counts half a "
        "win for each side), as a table, JSON (--json) and a picture (--out).",
    )
    p.add_argument("results", nargs="+", metavar="RESULTS",
                   help="votes folder (gptkit serve --votes); several are pooled")
    p.add_argument("--out", metavar="FILE", help="also draw the ranking (.png, .svg, .pdf)")
    p.add_argument("--prior", type=float, default=DEFAULT_PRIOR, metavar="N",
                   help="virtual ties between every two models, which keep the ranking "
                   "finite for a model with no win (default 1; 0 = the plain maximum "
                   "likelihood)")
    options.add_json(p, "the ranking")
    p.set_defaults(handler=arena)


def arena(args: argparse.Namespace) -> None:
    from gptkit.arena.report import as_json, draw, report, table

    records = report(args.results, args.prior)
    if args.out:
        draw(records, args.out)
    if args.json:
        print(json.dumps(as_json(records, args.prior), indent=2))
    else:
        print(table(records))
        print("rating: Bradley-Terry strength on the Elo scale (mean 1000); win rate: of the "
              "decided battles (ties left out), Wilson 95% interval")
        if args.out:
            print(f"wrote {args.out}")
