"""lm-evaluation-harness, a real third-party client, against `gptkit serve`.

The tasks in tests/lmeval/tasks (local JSON lines: 20 multiple-choice items and 5
generate-until items) are evaluated three ways on one tiny character-level model:
`--model hf` on its Hugging Face export, `--model local-completions` on the real server
(token-id prompts, `echo` + `logprobs` for log-likelihoods), and `--model
local-chat-completions` (the run's chat template, applied by the server). The API must
score exactly as transformers does. No network: the tasks, the model and every cache lie
under tmp_path or in this folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gptkit.chat_template import default_chat_template, write_chat_template
from gptkit.cli import main
from tests.conftest import TINY
from tests.serve.conftest import serve_cli

for _module in ("lm_eval", "transformers", "fastapi", "uvicorn", "httpx"):
    if importlib.util.find_spec(_module) is None:
        pytest.skip(f"{_module} is not installed: pip install -e '.[hf,serve,dev,lmeval]' "
                    "(.ci/run runs these tests in a step of their own)", allow_module_level=True)

TASKS = Path(__file__).parent / "tasks"
MC, GEN = "gptkit_tiny_mc", "gptkit_tiny_gen"
BLOCK = 64  # the model's context window: every task prompt and answer fits in it


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A tiny chat-templated run, its export, and `gptkit serve` on it (fp32, loopback)."""
    from gptkit.config import load_config
    from gptkit.train.trainer import train

    data = Path(os.environ["GPTKIT_DATA_DIR"])
    if not (data / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip(f"reference data not found in {data}; set GPTKIT_DATA_DIR")
    root = tmp_path_factory.mktemp("lmeval")
    run_dir = root / "lmeval-tiny"
    train(load_config("shakespeare-char", [*TINY, f"model.block_size={BLOCK}"]), run_dir,
          progress=False)
    write_chat_template(run_dir, default_chat_template())
    export = root / "export"
    main(["export", str(run_dir), "--format", "hf", "--out", str(export)])
    with pytest.MonkeyPatch.context() as env:
        # lm-eval reads its tasks' data through `datasets`: offline, with caches in tmp_path,
        # and the tasks' relative data_files found from their folder
        for name, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                            "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(root / "hf"),
                            "HF_DATASETS_CACHE": str(root / "datasets")}.items():
            env.setenv(name, value)
        env.chdir(TASKS)
        with serve_cli(run_dir, root / "serve.txt", "--precision", "fp32") as url:
            import httpx

            model_id = httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
            yield {"export": export, "url": url, "model": model_id}


def evaluate(model: str, model_args: dict[str, Any], tasks: list[str],
             **options: Any) -> dict[str, Any]:
    """lm_eval.simple_evaluate with the samples logged, one request at a time."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(
        model=model, model_args=model_args, tasks=tasks, batch_size=1, log_samples=True,
        task_manager=TaskManager(include_path=str(TASKS)), random_seed=0, numpy_random_seed=0,
        torch_random_seed=0, fewshot_random_seed=0, **options)


def by_doc(results: dict[str, Any], task: str) -> dict[int, dict[str, Any]]:
    return {sample["doc_id"]: sample for sample in results["samples"][task]}


@pytest.fixture(scope="module")
def hf_results(served: dict[str, Any]) -> dict[str, Any]:
    return evaluate("hf", {"pretrained": str(served["export"]), "dtype": "float32",
                           "device": "cpu"}, [MC, GEN])


def completions(served: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    """`--model local-completions` on the server: token-id prompts, its export's tokenizer."""
    return evaluate("local-completions", {
        "model": served["model"], "base_url": served["url"] + "/v1/completions",
        "tokenizer_backend": "huggingface", "tokenizer": str(served["export"]),
        "tokenized_requests": True, "max_length": BLOCK, "max_retries": 1}, tasks)


def test_local_completions_scores_multiple_choice_as_transformers_does(served, hf_results):
    api_results = completions(served, [MC])
    hf, api = by_doc(hf_results, MC), by_doc(api_results, MC)
    assert sorted(hf) == sorted(api) == list(range(20))
    greedy = 0
    for doc_id, sample in hf.items():
        # one (log-likelihood, is_greedy) per choice
        ours = [resp[0] for resp in api[doc_id]["resps"]]
        theirs = [resp[0] for resp in sample["resps"]]
        assert len(ours) == len(theirs) == 3
        for (ll_api, greedy_api), (ll_hf, greedy_hf) in zip(ours, theirs, strict=True):
            assert ll_api == pytest.approx(ll_hf, abs=1e-4), (doc_id, sample["arguments"])
            assert greedy_api == greedy_hf, (doc_id, sample["arguments"])
            greedy += bool(greedy_hf)
        assert api[doc_id]["acc"] == sample["acc"]
    # the task holds choices this model continues with greedily (a space after "A:"): the
    # flag is compared where it is true, not only where it is false
    assert greedy > 0
    for metric in ("acc,none", "acc_norm,none"):
        assert api_results["results"][MC][metric] == hf_results["results"][MC][metric]


def test_local_completions_generates_as_transformers_does(served, hf_results):
    api_results = completions(served, [GEN])
    hf, api = by_doc(hf_results, GEN), by_doc(api_results, GEN)
    assert sorted(hf) == sorted(api) == list(range(5))
    answers = {doc_id: api[doc_id]["resps"][0][0] for doc_id in api}
    assert answers == {doc_id: hf[doc_id]["resps"][0][0] for doc_id in hf}
    assert any(answers.values()), answers  # greedy answers, not empty ones


def test_local_chat_completions_runs_a_generate_until_task(served):
    import httpx

    results = evaluate("local-chat-completions", {
        "model": served["model"], "base_url": served["url"] + "/v1/chat/completions",
        "max_retries": 1}, [GEN], apply_chat_template=True)
    samples = by_doc(results, GEN)
    assert sorted(samples) == list(range(5))
    assert "exact_match,none" in results["results"][GEN]
    for sample in samples.values():
        # what lm-eval sent (the question as the user's message), asked again directly: the
        # answer it recorded is the server's
        # arguments: [(chat, generation settings)]; chat: (the messages as JSON,)
        messages = json.loads(sample["arguments"][0][0][0])
        assert messages[-1] == {"role": "user", "content": sample["doc"]["question"]}
        reply = httpx.post(served["url"] + "/v1/chat/completions", timeout=60, json={
            "model": served["model"], "messages": messages, "max_tokens": 12,
            "temperature": 0, "stop": ["\n"]}).json()
        assert sample["resps"][0][0] == reply["choices"][0]["message"]["content"]
