"""Make docs/images/arena.png from a small real arena round:
`python docs/make_arena_figure.py [--battles 120]`.

1. Trains one small character model on Tiny Shakespeare for 600 steps (checkpoints every
   100, all kept) into runs/arena/char (skipped if it is there; under a minute on one CPU
   thread).
2. Serves its best weights (step 600) against its checkpoints of steps 100, 200 and 400:
   `gptkit serve runs/arena/char --compare runs/arena/char/checkpoints/step-000100 ...
   --votes runs/arena/votes`, a fresh votes folder each time.
3. An automatic judge fights the battles through the same API as the Compare tab: a battle
   on a character's name as prompt, both answers (120 tokens, the run's sampling settings),
   and a vote for the answer with more real words (the share of its words that occur in
   the training text); a tie within 0.03 of each other, both bad when neither reaches 0.3.
4. `gptkit arena runs/arena/votes --out docs/images/arena.png` prints and draws the ranking.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

RUN = Path("runs/arena/char")
VOTES = Path("runs/arena/votes")
STEPS = (100, 200, 400)
PROMPTS = ["ROMEO:", "JULIET:", "KING HENRY:", "First Citizen:", "MENENIUS:", "GLOUCESTER:",
           "DUKE VINCENTIO:", "LADY CAPULET:"]
TRAIN = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64",
         "train.micro_batch_size=16", "train.max_steps=600", "train.warmup_steps=20",
         "train.lr=3e-3", "train.eval_interval=100", "train.eval_tokens=4096",
         "train.checkpoint_interval=100", "train.keep_checkpoints=10", "log.plots=false",
         "log.sample_tokens=0"]
WORD = re.compile(r"[A-Za-z']+")


def gptkit(*argv: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "gptkit", *argv], env=env, text=True,
                            **kwargs)  # type: ignore[call-overload]


def score(text: str, known: set[str]) -> float:
    """The share of the answer's words that are words of the training text."""
    words = WORD.findall(text)
    return sum(w.lower() in known for w in words) / len(words) if words else 0.0


def judge(a: str, b: str, known: set[str]) -> str:
    sa, sb = score(a, known), score(b, known)
    if max(sa, sb) < 0.3:
        return "both_bad"
    if abs(sa - sb) < 0.03:
        return "tie"
    return "a" if sa > sb else "b"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--battles", type=int, default=120)
    parser.add_argument("--out", type=Path, default=Path("docs/images/arena.png"))
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("GPTKIT_DATA_DIR", "data")))
    args = parser.parse_args()
    if not (RUN / "best").is_dir():
        sets = [a for s in TRAIN for a in ("--set", s)]
        assert gptkit("train", "--recipe", "shakespeare-char", "--out", str(RUN),
                      "--overwrite", "--no-progress", *sets).wait() == 0
    known = {w.lower() for w in WORD.findall(
        (args.data_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8"))}
    shutil.rmtree(VOTES, ignore_errors=True)
    compare = [a for s in STEPS for a in ("--compare", str(RUN / f"checkpoints/step-{s:06d}"))]
    server = gptkit("serve", str(RUN), *compare, "--votes", str(VOTES), "--port", "0",
                    "--log-level", "warning", stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split(" on ", 1)[1].split(": ", 1)[0]
        with httpx.Client(base_url=url, timeout=120) as client:
            for _ in range(60):
                if client.get("/health").json().get("ready"):
                    break
                subprocess.run(["sleep", "0.5"], check=True)
            for i in range(args.battles):
                battle = client.post("/v1/arena/battles",
                                     json={"prompt": PROMPTS[i % len(PROMPTS)]}).json()
                answers = [client.post(f"/v1/arena/battles/{battle['id']}/answers/{side}",
                                       json={"max_tokens": 120, "stream": False}).json()
                           ["choices"][0]["text"] for side in ("a", "b")]
                winner = judge(*answers, known)
                client.post(f"/v1/arena/battles/{battle['id']}/vote",
                            json={"winner": winner}).raise_for_status()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert gptkit("arena", str(VOTES), "--out", str(args.out)).wait() == 0


if __name__ == "__main__":
    main()
