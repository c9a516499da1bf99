"""What the README and docs/ tell users to run does run: every ```python block, every cheap
`gptkit` command of a ```bash block (with tiny step counts added, in one shared folder of tiny
runs), and every other documented command line at least parses, so a page cannot keep a
command or a flag that no longer exists.

A Python block may be preceded by an HTML comment the tests read:
    <!-- snippet-test: needs examples runs/base runs/qa -->   made first, cheaply (NEEDS below)
    <!-- snippet-test: skip needs a GPU -->                   skipped with that reason
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
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
def test_python_snippets_of_the_docs_run(name, code, kind, detail, tmp_path, made, data_dir,
                                        request):
    if kind == "skip":
        pytest.skip(detail)
    for need in detail.split() if kind == "needs" else []:
        if need == "server":  # `gptkit serve runs/chat`, where the page says localhost:8000
            code = code.replace("http://localhost:8000", request.getfixturevalue("doc_server"))
            continue
        assert need in NEEDS, f"{name}: the docs name an unknown prerequisite {need!r}"
        if not (made / need).exists():
            NEEDS[need](made)
        shutil.copytree(made / need, tmp_path / need)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=_env())
    assert done.returncode == 0, f"{name}:\n{code}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def doc_server(made: Path) -> Iterator[str]:
    """`gptkit serve runs/chat` (a tiny run with gptkit's chat template) on a free loopback
    port, for the pages' curl and OpenAI SDK examples: its base URL."""
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from gptkit.chat_template import default_chat_template, write_chat_template

    if not (made / "runs/base").exists():
        NEEDS["runs/base"](made)
    folder = made / "served"
    shutil.copytree(made / "runs/base", folder / "runs/chat")
    write_chat_template(folder / "runs/chat", default_chat_template())
    process = subprocess.Popen(
        [sys.executable, "-m", "gptkit", "serve", "runs/chat", "--port", "0", "--log-level",
         "warning"], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env=_env())
    try:
        assert process.stdout is not None
        first = process.stdout.readline()  # "serving chat (generate) on http://127.0.0.1:N: ..."
        assert " on http://127.0.0.1:" in first, first
        url = first.split(" on ", 1)[1].split(": ", 1)[0]
        for _ in range(600):
            done = subprocess.run(["curl", "-sf", url + "/health"], capture_output=True)
            if done.returncode == 0:
                break
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def bash_lines() -> list[tuple[str, str]]:
    """(where, line) of each line of the docs' ```bash blocks, continuation lines joined."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in re.finditer(r"^```bash\n(.*?)^```", text, re.M | re.S):
            line_no = text[: block.start()].count("\n") + 2
            for i, line in enumerate(block.group(1).replace("\\\n", " ").splitlines()):
                found.append((f"{doc.relative_to(REPO)}:{line_no + i}", line))
    return found


def curl_commands() -> list[tuple[str, str]]:
    """(where, command) of each `curl` line of the docs' ```bash blocks."""
    return [(where, line) for where, line in bash_lines() if line.startswith("curl ")]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_documented_serving_curl_examples_run(data_dir, doc_server):
    """Every documented `curl` call of the API, against a served chat run: a JSON answer (or
    a stream of JSON events ending in [DONE]) that is not an error."""
    chat = [c for c in curl_commands() if "/v1/chat/completions" in c[1]]
    assert any("README.md" in w for w, _ in chat) and any("serving.md" in w for w, _ in chat)
    host = doc_server.removeprefix("http://")
    for where, command in curl_commands():
        if "/v1/classify" in command:
            continue  # needs a finetune-classify run (tests/serve covers the endpoint)
        done = subprocess.run(["bash", "-c", command.replace("localhost:8000", host)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (where, done.stderr)
        if '"stream": true' in command:
            events = [line[len("data: "):] for line in done.stdout.splitlines() if line]
            assert events[-1] == "[DONE]", (where, done.stdout[-500:])
            bodies = [json.loads(e) for e in events[:-1]]
        else:
            bodies = [json.loads(done.stdout)]
        assert all("error" not in b for b in bodies), (where, done.stdout[-500:])


def test_the_docs_have_python_snippets():
    """The test above must not pass by finding none (e.g. after a change of fence style)."""
    names = [s[0] for s in python_snippets()]
    assert any(n.startswith("docs/python-api.md") for n in names)
    assert any(n.startswith("docs/finetuning.md") for n in names)


def doc_command(containing: str) -> list[str]:
    """The docs' one command line holding `containing`, as argv (its comment cut off)."""
    lines = {line for doc in DOCS for line in doc.read_text().splitlines()
             if line.startswith("gptkit ") and containing in line}
    assert len(lines) == 1, lines
    return shlex.split(lines.pop(), comments=True)


def test_docs_hugging_face_fine_tuning_command(tmp_path, data_dir):
    """`gptkit train --recipe wikitext2 --init-from runs/gpt2 --set train.lr=3e-5`: a lower
    learning rate alone works (min_lr follows it as a ratio), into its own folder."""
    pytest.importorskip("transformers")
    from gptkit.tokenizers import Tokenizer
    from tests.interop.test_hf import hf_folder

    argv = doc_command("--init-from runs/gpt2")
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


ANSI_C = re.compile(r"\$'((?:[^'\\]|\\.)*)'")  # bash's $'...\n...' quoting, which shlex lacks
OPTIONAL = re.compile(r"\s\[([^\]]*)\]")          # `[--set data.packing=true]`: optional part


def _argv(text: str) -> list[str]:
    text = ANSI_C.sub(lambda m: shlex.quote(m.group(1).encode().decode("unicode_escape")), text)
    return shlex.split(text, comments=True)


def shell_commands() -> list[tuple[str, list[str], bool]]:
    """(where, argv, under torchrun) of each `gptkit ...` command in the docs' ```bash blocks:
    continuation lines joined, `&&` chains split, `torchrun ... -m gptkit` counted as gptkit,
    an optional `[...]` part giving the command without it and with it, and lines holding a
    placeholder (`...`, `RUN`) left out."""
    found = []
    for where, line in bash_lines():
        for part in line.split("&&"):
            code = part.split(" #")[0]
            for variant in sorted({OPTIONAL.sub("", code), OPTIONAL.sub(r" \1", code)}):
                argv = _argv(variant)
                torchrun = bool(argv) and argv[0] == "torchrun"
                if "-m" in argv and "gptkit" in argv[argv.index("-m"):]:
                    argv = argv[argv.index("-m") + 1:]
                if not argv or argv[0] != "gptkit" or "..." in variant:
                    continue
                found.append((where, argv[1:], torchrun))
    return found


def test_every_documented_gptkit_command_parses_and_its_settings_load():
    """Each command line of the docs is accepted by the parser, and a command's --recipe and
    --set settings load as a config (the check that would have caught `--set train.lr=3e-5`
    against the wikitext2 recipe's min_lr)."""
    from gptkit.cli import build_parser
    from gptkit.cli.options import config_from as _config_from

    commands = shell_commands()
    assert len(commands) > 60  # the Tour, every page's commands
    for where, argv, _ in commands:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: gptkit {shlex.join(argv)} does not parse")
        if args.command in ("train", "prepare") or (args.command == "info" and not args.run):
            _config_from(args)  # raises GptkitError naming the bad setting


def test_every_gptkit_command_is_documented():
    """Each command of `gptkit --help` appears in at least one documented command line."""
    import argparse

    from gptkit.cli import build_parser

    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    documented = {argv[0] for _, argv, _ in shell_commands()}
    assert set(actions[0].choices) - documented == set()


# --- running the cheap ones -------------------------------------------------------------
# Commands run in process (gptkit.cli.main), in the order the pages show them, in one folder
# holding a tiny character-level run under the names the pages use. Training commands get
# tiny step counts and run in a folder of their own (so `gptkit train` twice never meets an
# existing run); the rest share the folder, so `prune ... --out runs/sc-heads25` then `eval
# runs/sc-heads25` reads what the first made.
ALIASES = ("shakespeare-char", "base", "a", "b", "big")  # names the pages give any trained run
CHEAP_RECIPES = {None, "shakespeare-char", "shakespeare-char-fast", "shakespeare-char-student",
                 "sft", "sft-lora", "sentiment", "ner", "valley", "valley-chat"}
# recipes whose data needs the recipe's own context (the valley dialogues: up to 306 tokens)
OWN_CONTEXT = {"valley", "valley-chat"}
NEVER_RUN = {"serve": "blocks, serving forever (tests/serve runs it)",
             "import": "reads the Hugging Face hub (tests/interop runs it on a folder)",
             "prepare": "tokenises a whole corpus (tests/data runs it)"}
# tiny step counts for each training command (each refuses the settings it would not read)
TINY = ["train.max_steps=2", "train.eval_interval=2", "train.warmup_steps=1"]
LOGS = ["train.checkpoint_interval=2", "log.plots=false", "log.tensorboard=false"]
TINY_STEPS = {"train": [*TINY, *LOGS, "train.eval_tokens=256", "log.sample_tokens=0"],
              "distill": [*TINY, *LOGS, "train.eval_tokens=256", "log.sample_tokens=0"],
              "finetune": [*TINY, *LOGS, "log.sample_tokens=0"],
              "finetune-classify": TINY,
              "sweep": [*TINY, *LOGS, "train.eval_tokens=256", "log.sample_tokens=0"]}
# what an interactive command reads on stdin
STDIN = {"chat": "Hello!\n/settings\n"}
# appended where the command has the flag, to keep generation short
SHORT = {"sample": ["--max-new-tokens", "8"], "chat": ["--max-new-tokens", "8"],
         "eval-generate": ["--limit", "4", "--max-new-tokens", "8"],
         "sweep": ["--trials", "2"]}


def _why_not_run(argv: list[str], torchrun: bool, folder: Path) -> str | None:
    """None when the command is cheap and what it reads exists, else why it only parses."""
    from gptkit.cli import build_parser

    if torchrun:
        return "torchrun (tests/train/test_sharded.py runs it)"
    if argv[0] in NEVER_RUN:
        return NEVER_RUN[argv[0]]
    args = build_parser().parse_args(argv)
    if argv[0] in TINY_STEPS and getattr(args, "recipe", None) not in CHEAP_RECIPES:
        return f"the {args.recipe} recipe is too big for a test"
    written = {getattr(args, "out", None), getattr(args, "predictions", None)}
    for arg in argv[1:]:
        key, _, value = arg.rpartition("=")
        if key and key not in ("data.source", "train.init_from", "distill.teacher"):
            continue
        if ("/" in value or value.endswith((".jsonl", ".csv"))) and not value.startswith("-") \
                and value not in written and not (folder / value).exists():
            return f"it reads {value}, which the pages make with a command too big for a test"
    return None


def _run(argv: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch, where: str,
         capsys: pytest.CaptureFixture[str]) -> None:
    from gptkit.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr("sys.stdin", io.StringIO(STDIN.get(argv[0], "")))
    try:
        main(argv)
    except SystemExit as exc:
        if exc.code:
            pytest.fail(f"{where}: gptkit {shlex.join(argv)} exited with {exc.code}: "
                        f"{capsys.readouterr().err[-2000:]}")


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding one tiny trained run (with checkpoints) under every name in ALIASES."""
    folder = tmp_path_factory.mktemp("documented")
    # a context of 512 characters holds the example chats, which a char tokenizer spells out
    gptkit(folder, "train", "--no-progress", "--out", "runs/shakespeare-char",
           *_sets([*BASE, "model.block_size=512", "train.checkpoint_interval=5"]))
    for name in ALIASES[1:]:
        shutil.copytree(folder / "runs/shakespeare-char", folder / "runs" / name)
    return folder


@pytest.mark.slow
def test_the_cheap_documented_commands_run(tiny_runs, tmp_path, monkeypatch, data_dir, capsys):
    ran, parsed = [], []
    seen: set[tuple[str, ...]] = set()
    for where, argv, torchrun in shell_commands():
        if tuple(argv) in seen:
            continue
        seen.add(tuple(argv))
        started = time.perf_counter()
        why = _why_not_run(argv, torchrun, tiny_runs)
        if why:
            parsed.append(f"{where}: {why}")
            continue
        if argv[0] in TINY_STEPS:
            model = [] if "--init-from" in argv or argv[0] == "finetune" else BASE[:4]
            if "--recipe" in argv and argv[argv.index("--recipe") + 1] in OWN_CONTEXT:
                model = model[:3]
            tiny = TINY_STEPS[argv[0]]
            if any(a.startswith("train.epochs=") for a in argv):  # a tiny budget of its own
                tiny = [s for s in tiny if s.split("=")[0] not in ("train.max_steps",
                                                                   "train.eval_interval")]
            argv = [*argv, *SHORT.get(argv[0], []), "--no-progress", *_sets([*model, *tiny])]
            out = argv[argv.index("--out") + 1] if "--out" in argv else None
            if out and not (tiny_runs / out).exists():  # made here, for the commands after it
                _run(argv, tiny_runs, monkeypatch, where, capsys)
            else:  # into a folder of its own (`gptkit train` would meet runs/shakespeare-char)
                own = tmp_path / f"train-{len(ran)}"
                (own / "runs").mkdir(parents=True)
                for name in os.listdir(tiny_runs / "runs"):
                    (own / "runs" / name).symlink_to(tiny_runs / "runs" / name)
                if (tiny_runs / "examples").exists():
                    (own / "examples").symlink_to(tiny_runs / "examples")
                argv = ([*argv[:argv.index("--out") + 1], "new-run",
                         *argv[argv.index("--out") + 2:]] if out else [*argv, "--out", "new-run"])
                _run(argv, own, monkeypatch, where, capsys)
        else:
            _run([*argv, *SHORT.get(argv[0], [])], tiny_runs, monkeypatch, where, capsys)
        ran.append(f"{where} ({time.perf_counter() - started:.1f} s)")
        capsys.readouterr()  # keep the report short
    with capsys.disabled():
        print(f"\nran {len(ran)} documented commands:", *ran, "parsed only:", *parsed,
              sep="\n  ")
    assert len(ran) >= 25, (ran, parsed)


# --- the pages themselves --------------------------------------------------------------


def test_every_docs_page_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert "results.md" in pages
    assert [p for p in pages if f"](docs/{p})" not in readme] == []


def test_the_pages_link_to_pages_and_pictures_that_exist():
    """Relative links of README.md and docs/*.md, with their #anchors (GitHub's heading ids)."""
    def anchors(path: Path) -> set[str]:
        text = path.read_text(encoding="utf-8")
        heads = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S),
                           re.M)
        return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}

    broken = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)|src=\"([^\"]+)\"", text):
            link = target[0] or target[1]
            if re.match(r"[a-z]+:", link):
                continue
            file, _, anchor = link.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            if not path.exists() or (anchor and path.suffix == ".md"
                                     and anchor not in anchors(path)):
                broken.append(f"{doc.relative_to(REPO)}: {link}")
    assert broken == []


def test_results_page_is_generated_from_the_committed_result_files():
    """docs/results.md is exactly what benchmarks/make_results.py writes from
    benchmarks/results/*.json: no figure typed by hand, none left from an older run."""
    from benchmarks.make_results import OUT, render

    assert OUT.read_text(encoding="utf-8") == render(), (
        "docs/results.md is out of date: run python -m benchmarks.make_results")


def test_every_figure_says_when_where_and_how_it_was_measured():
    import json

    from benchmarks.common import RESULTS

    files = sorted(RESULTS.glob("*.json"))
    assert files, "no benchmark results committed"
    for path in files:
        made = json.loads(path.read_text())["provenance"]
        assert made["date"] and made["commit"], path
        assert made["machine"]["cpu"] and made["machine"]["cores"] and made["machine"]["torch"]
        assert re.search(r"(^| )python -m benchmarks\.\w+", made["command"]), path
    page = (REPO / "docs" / "results.md").read_text(encoding="utf-8")
    sections = page.split("\n## ")[1:]
    assert len(sections) == len(files)
    for section in sections:
        for field in ("**date**", "**machine**", "**command**", "**commit**"):
            assert f"\n- {field} " in section, (section.splitlines()[0], field)


def test_results_without_provenance_are_refused(tmp_path):
    import json

    from benchmarks.make_results import render

    (tmp_path / "old.json").write_text(json.dumps({"tokens_per_s": 1.0}))
    with pytest.raises(SystemExit, match="old.json: no date, machine, command recorded"):
        render(tmp_path)
