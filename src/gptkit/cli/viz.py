"""`gptkit viz attention`: pictures of what a run's model does."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gptkit.cli import options


def register(commands: Any) -> None:
    p = commands.add_parser(
        "viz", help="pictures of what a model does (viz attention: attention maps)",
        description="Draw what a run's model does on an input. `gptkit viz attention RUN "
        "--prompt TEXT --out FILE.png` draws its attention weights.",
    )
    views = p.add_subparsers(dest="view", metavar="VIEW", required=True)
    p = views.add_parser(
        "attention", help="heat maps of a run's attention weights on a prompt",
        description="Run the model once on --prompt and draw its real attention weights (the "
        "ones that produce the attention output) as heat maps: one row per query token, one "
        "column per key token, both labelled with the decoded tokens (space shown as ␣, "
        "newline as \\n). Cells hidden by the causal mask are hatched grey. One map for "
        "--layer L --head H; a grid when either is 'all' (the default: every layer and head, "
        "one row per layer). From Python: gptkit.viz.attention.attention_maps.",
    )
    options.add_run(p)
    p.add_argument("--prompt", required=True, metavar="TEXT",
                   help="text to look at, at most block_size tokens (write a newline as "
                   "$'...\\n...' in bash: \\n is not interpreted)")
    p.add_argument("--layer", default="all", metavar="L",
                   help="layer from 0, or all for a grid of every layer (default: all)")
    p.add_argument("--head", default="all", metavar="H",
                   help="head from 0, or all for a grid of every head (default: all)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="picture to write (.png, .svg or .pdf)")
    options.add_overwrite(p, "an existing --out file")
    options.add_inference(p)
    p.add_argument("--json", action="store_true",
                   help="print the tokens and the drawn weights [layer][head][query][key] as "
                   "JSON")
    p.set_defaults(handler=viz)


def viz(args: argparse.Namespace) -> None:
    """`gptkit viz attention`; further views (VIEW) would be dispatched here."""
    from gptkit.viz.attention import attention_maps, pick, plot_attention

    run = options.load_for_inference(args)
    layers = pick(args.layer, run.config.model.n_layer, "--layer")
    heads = pick(args.head, run.config.model.n_head, "--head")
    maps = attention_maps(run.model, run.tokenizer, args.prompt)
    out = plot_attention(maps, args.layer, args.head, args.out, overwrite=args.overwrite)
    if args.json:
        shown = maps.weights[layers][:, heads]
        print(json.dumps({
            "run": str(run.path), "out": str(out), "prompt": args.prompt,
            "tokens": maps.tokens, "ids": maps.ids, "layers": layers, "heads": heads,
            "shape": list(shown.shape), "weights": shown.astype(float).round(6).tolist(),
        }, ensure_ascii=False))
        return
    print(f"wrote {out}: attention of {len(maps.tokens)} tokens, layer {args.layer}, "
          f"head {args.head}")
