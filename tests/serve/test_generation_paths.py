"""The command line and the server pass one GenerationConfig whole: a completion request and
the equivalent `gptkit sample` flags build the same settings and, at a fixed seed, the same
text."""

from __future__ import annotations

from tests.serve.conftest import require_serve

require_serve()

import pytest

from gptkit.cli import build_parser
from gptkit.cli.sample import settings_from_flags
from gptkit.errors import GptkitError
from gptkit.generation.text import sample_text
from gptkit.serve.engine import Engine
from gptkit.serve.jobs import Finish, Job
from gptkit.serve.schemas import CompletionRequest

PROMPT = "ROMEO:"
FLAGS = ["--max-new-tokens", "24", "--temperature", "0.9", "--top-k", "0", "--top-p", "0.95",
         "--stop", "\n\n", "--num-samples", "3", "--seed", "7"]
REQUEST = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0.9, "top_k": 0, "top_p": 0.95,
           "stop": "\n\n", "n": 3, "seed": 7}


def cli_settings(run, *flags):
    args = build_parser().parse_args(["sample", str(run.path), "--prompt", PROMPT, *flags])
    return settings_from_flags(args, run.config.sample, [PROMPT])


def test_a_request_and_the_same_flags_build_the_same_settings(run):
    from_cli = cli_settings(run, *FLAGS)
    from_api = CompletionRequest(**REQUEST).generation_config(run.config.sample, 24)
    assert from_cli.model_dump(exclude={"prompt"}) == from_api.model_dump(exclude={"prompt"})
    assert (from_api.top_k, from_api.num_samples, from_api.stop) == (None, 3, ["\n\n"])
    # omitted settings: the run's sample section for both
    default_cli = cli_settings(run, "--max-new-tokens", "24")
    default_api = CompletionRequest(prompt=PROMPT, max_tokens=24).generation_config(
        run.config.sample, 24)
    assert (default_cli.temperature, default_cli.top_k, default_cli.top_p) == (
        default_api.temperature, default_api.top_k, default_api.top_p)


def test_a_request_and_the_same_flags_give_the_same_text(run, client):
    settings = cli_settings(run, *FLAGS)
    texts = sample_text(run.model, run.tokenizer, PROMPT, settings)
    body = client.post("/v1/completions", json=REQUEST).json()
    assert [PROMPT + c["text"] for c in body["choices"]] == texts
    # the engine reads the job's settings whole
    events: list = []
    engine = Engine(run)
    engine.run_batch([Job(prompts=[run.tokenizer.encode(PROMPT)], settings=settings,
                          stream=False, emit=events.append)])
    finished = sorted((e for e in events if isinstance(e, Finish)), key=lambda e: e.index)
    assert [PROMPT + e.text for e in finished] == texts


def test_bad_flags_are_named_as_flags(run):
    with pytest.raises(GptkitError, match="^--num-samples \\(3\\) must be <= --num-beams"):
        cli_settings(run, "--num-beams", "2", "--num-samples", "3")
