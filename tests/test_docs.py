"""What the README and docs/ tell users to run does run: every ```python block, and the README
commands that no other test runs (with tiny step counts added).

A Python block may be preceded by an HTML comment the tests read:
    <!-- snippet-test: needs examples runs/base runs/qa -->   made first, cheaply (NEEDS below)
    <!-- snippet-test: skip needs a GPU -->                   skipped with that reason
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"<!--\s*snippet-test:\s*(needs|skip)\b(.*?)-->")
FENCE = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
# a tiny character model with the context the fine-tuning examples need
BASE = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=128",
        "train.max_steps=5", "train.eval_interval=5", "train.eval_tokens=1024",
        "train.micro_batch_size=4", "log.plots=false", "log.sample_tokens=0"]


def python_snippets() -> list[tuple[str, str, str, str]]:
    """(id, code, marker kind, marker text) of each ```python block in the docs."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            before = text[: match.start()].rstrip().splitlines()[-1:]
            marker = MARKER.search(before[0]) if before else None
            line = text[: match.start()].count("\n") + 1
            found.append((f"{doc.relative_to(REPO)}:{line}", match.group(1),
                          marker.group(1) if marker else "", marker.group(2).strip()
                          if marker else ""))
    return found


def gptkit(cwd: Path, *argv: str) -> None:
    done = subprocess.run([sys.executable, "-m", "gptkit", *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=_env())
    assert done.returncode == 0, (argv, done.stderr[-3000:])


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO / "src"), str(REPO),
                                       os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _sets(settings: list[str]) -> list[str]:
    return [a for s in settings for a in ("--set", s)]


# how each prerequisite a snippet names is made (in the snippet's working folder)
NEEDS = {
    "examples": lambda cwd: gptkit(cwd, "examples"),
    "runs/base": lambda cwd: gptkit(cwd, "train", "--no-progress", "--out", "runs/base",
                                    *_sets(BASE)),
    "runs/qa": lambda cwd: gptkit(cwd, "finetune", "runs/base", "--data", "examples/qa.jsonl",
                                  "--out", "runs/qa", "--no-progress",
                                  *_sets(["train.max_steps=3", "train.eval_interval=3"])),
}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder where each prerequisite is made once, on first use, for every snippet."""
    return tmp_path_factory.mktemp("prerequisites")


@pytest.mark.parametrize("name,code,kind,detail", python_snippets(),
                         ids=[s[0] for s in python_snippets()])
def test_python_snippets_of_the_docs_run(name, code, kind, detail, tmp_path, made, data_dir):
    if kind == "skip":
        pytest.skip(detail)
    for need in detail.split() if kind == "needs" else []:
        assert need in NEEDS, f"{name}: the docs name an unknown prerequisite {need!r}"
        if not (made / need).exists():
            NEEDS[need](made)
        shutil.copytree(made / need, tmp_path / need)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=_env())
    assert done.returncode == 0, f"{name}:\n{code}\n{done.stderr[-3000:]}"


def test_the_docs_have_python_snippets():
    """The test above must not pass by finding none (e.g. after a change of fence style)."""
    names = [s[0] for s in python_snippets()]
    assert any(n.startswith("README.md") for n in names)
    assert any(n.startswith("docs/finetuning.md") for n in names)


def readme_command(containing: str) -> list[str]:
    """The README's one command line holding `containing`, as argv (its comment cut off)."""
    lines = [line for line in (REPO / "README.md").read_text().splitlines()
             if line.startswith("gptkit ") and containing in line]
    assert len(lines) == 1, lines
    return shlex.split(lines[0], comments=True)


def test_readme_hugging_face_fine_tuning_command(tmp_path, data_dir):
    """`gptkit train --recipe wikitext2 --init-from runs/gpt2 --set train.lr=3e-5`: a lower
    learning rate alone works (min_lr follows it as a ratio), into its own folder."""
    pytest.importorskip("transformers")
    from gptkit.tokenizers import Tokenizer
    from tests.interop.test_hf import hf_folder

    argv = readme_command("--init-from runs/gpt2")
    assert "--out" in argv  # not runs/wikitext2, which the Tour's wikitext2 run made
    out = Path(argv[argv.index("--out") + 1])
    assert out.parts[0] == "runs" and out.name not in ("wikitext2", "gpt2")
    bpe = Tokenizer.train_bpe(["The quick brown fox jumps over the lazy dog. " * 50], 300)
    hf_folder(tmp_path / "hf", bpe, n_positions=64)  # the recipe's eval.stride is 64
    gptkit(tmp_path, "import", "hf", "--out", "runs/gpt2")
    tiny = ["train.max_steps=2", "train.eval_interval=2", "train.eval_tokens=256",
            "train.warmup_steps=1", "train.micro_batch_size=2", "log.plots=false",
            "log.sample_tokens=0"]
    gptkit(tmp_path, *argv[1:], "--no-progress", *_sets(tiny))
    from gptkit.config import read_config

    saved = read_config(tmp_path / out / "config.yaml").train
    assert saved.lr == 3e-5 and saved.floor_lr == pytest.approx(3e-6)
    shutil.rmtree(tmp_path / "runs")


def shell_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of each `gptkit ...` command in the docs' ```bash blocks (continuation
    lines joined; `torchrun ... -m gptkit` counted as gptkit; lines with placeholders such as
    `[--checkpoint last]` or `...` left out)."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in re.finditer(r"^```bash\n(.*?)^```", text, re.M | re.S):
            line_no = text[: block.start()].count("\n") + 2
            for i, line in enumerate(block.group(1).replace("\\\n", " ").splitlines()):
                for part in line.split("&&"):
                    argv = shlex.split(part, comments=True)
                    if "-m" in argv and "gptkit" in argv[argv.index("-m"):]:
                        argv = argv[argv.index("-m") + 1:]
                    if not argv or argv[0] != "gptkit" or "..." in part or " [" in part:
                        continue
                    found.append((f"{doc.relative_to(REPO)}:{line_no + i}", argv[1:]))
    return found


def test_every_documented_gptkit_command_parses_and_its_settings_load():
    """Each command line of the docs is accepted by the parser, and a command's --recipe and
    --set settings load as a config (the check that would have caught `--set train.lr=3e-5`
    against the wikitext2 recipe's min_lr)."""
    from gptkit.cli import build_parser
    from gptkit.cli.options import config_from as _config_from

    commands = shell_commands()
    assert len(commands) > 40  # the Tour, Hugging Face, fine-tuning ...
    for where, argv in commands:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: gptkit {shlex.join(argv)} does not parse")
        if args.command in ("train", "prepare") or (args.command == "info" and not args.run):
            _config_from(args)  # raises GptkitError naming the bad setting
