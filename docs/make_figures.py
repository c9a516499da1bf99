"""Draw the README's pictures from real runs: `python docs/make_figures.py` (about 4 minutes on
a 2-core CPU). Trains the default recipe twice (LR 1e-3 and 3e-3) into runs/figures/, then
writes docs/images/{loss.png, attention.png, attention-grid.png}. Reads the data root as
`gptkit train` does (--data-dir, else $GPTKIT_DATA_DIR, else ~/.cache/gptkit/data)."""

from __future__ import annotations

import argparse
from pathlib import Path

from gptkit.config import load_config
from gptkit.run import load_run
from gptkit.train.trainer import train
from gptkit.viz.attention import attention_maps, plot_attention
from gptkit.viz.curves import plot_runs

PROMPT = "ROMEO:\nWhat say you?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, default=Path("runs/figures"))
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--data-dir")
    parser.add_argument("--layer", type=int, default=1, help="layer of the single map")
    parser.add_argument("--head", type=int, default=0, help="head of the single map")
    args = parser.parse_args()
    runs = {"lr 1e-3 (default)": args.runs / "lr1e-3", "lr 3e-3": args.runs / "lr3e-3"}
    for (label, run), lr in zip(runs.items(), ("1e-3", "3e-3"), strict=True):
        if not (run / "best" / "model.safetensors").is_file():
            print(f"training {label} into {run}")
            train(load_config("shakespeare-char", [f"train.lr={lr}"]), run,
                  data_dir=args.data_dir, overwrite=True)
    written = [
        plot_runs(list(runs.values()), args.out / "loss.png", labels=list(runs),
                  overwrite=True),
    ]
    base = load_run(next(iter(runs.values())))
    maps = attention_maps(base.model, base.tokenizer, PROMPT)
    written.append(plot_attention(maps, args.layer, args.head, args.out / "attention.png",
                                  overwrite=True))
    written.append(plot_attention(maps, "all", "all", args.out / "attention-grid.png",
                                  overwrite=True))
    for path in written:
        print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
