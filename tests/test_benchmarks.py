"""Helpers of the benchmarks that can be checked without running them (they train for minutes)."""

from __future__ import annotations

import pytest

from benchmarks.augment_classify import summarize
from benchmarks.common import mean_spread


def test_mean_spread_of_one_value_says_there_is_none():
    assert mean_spread([0.9, 0.8, 1.0]) == "0.900 ± 0.100"
    assert mean_spread([0.02, -0.04], signed=True) == "-0.010 ± 0.042"
    assert mean_spread([0.9]) == "0.900 ± n/a (1 seed)"


@pytest.mark.parametrize("seeds", [1, 3])
def test_augment_classify_summary_with_any_number_of_seeds(seeds):
    """`python -m benchmarks.augment_classify --seeds 1` crashed on the spread of one value."""
    scores = {name: [{"accuracy": 0.9 + 0.01 * i + 0.02 * s, "macro_f1": 0.8} for s in
                     range(seeds)] for i, name in enumerate(["none", "word_delete+word_swap",
                                                              "token_noise+token_dropout",
                                                              "all four"])}
    summary, lines = summarize(scores)
    assert len(lines) == 4 and summary["all four"]["seeds_better_than_none"] == seeds
    assert summary["all four"]["mean_accuracy_difference_vs_none"] == pytest.approx(0.03)
    assert ("n/a (1 seed)" in lines[0]) == (seeds == 1)


def test_results_say_when_where_and_how_they_were_measured(tmp_path, monkeypatch):
    """Every benchmark's JSON carries its date, machine, exact command and commit, which
    docs/results.md prints beside each figure."""
    import json
    import sys

    from benchmarks.common import REPO, write_results

    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / "compress.py"), "--run", "r x"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    write_results(tmp_path / "compress.json", {"x": 1.5})
    saved = json.loads((tmp_path / "compress.json").read_text())
    assert saved["benchmark"] == "compress" and saved["results"] == {"x": 1.5}
    made = saved["provenance"]
    assert made["command"] == "OMP_NUM_THREADS=1 python -m benchmarks.compress --run 'r x'"
    assert made["date"].startswith("20") and made["date"].endswith("+00:00")
    assert made["machine"]["cpu"] and made["machine"]["cores"] >= 1
    assert made["machine"]["torch"] and "gpu" in made["machine"]
    assert made["commit"] is None or len(made["commit"].split("+")[0]) == 40


def test_a_measured_run_carries_the_command_that_trained_it(tmp_path):
    import json

    from benchmarks.common import made_by

    (tmp_path / "environment.json").write_text(json.dumps(
        {"argv": ["/x/gptkit/__main__.py", "train", "--set", "train.max_steps=500"]}))
    assert made_by(tmp_path) == "gptkit train --set train.max_steps=500"
    assert made_by(tmp_path / "missing") is None


def test_decode_runtimes_measures_every_runtime_on_the_same_weights(tmp_path):
    """benchmarks.decode_runtimes at a tiny size: every side decodes, ONNX Runtime's greedy
    ids equal gptkit fp32's (same weights, same argmax), and docs/results.md's renderer
    prints a row per side and batch."""
    pytest.importorskip("llama_cpp", reason="llama.cpp is not installed (pip install "
                        "llama-cpp-python)")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install "
                        "'gptkit[onnx]'")
    from benchmarks.decode_runtimes import bench_shape
    from benchmarks.make_results import render_decode_runtimes

    tiny = {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "vocab_size": None}
    shape = bench_shape(tiny, batches=[1, 2], new_tokens=4, rounds=1, threads=1,
                        folder=tmp_path)
    sides = {"gptkit_fp32", "llama.cpp_f32", "llama.cpp_f16", "llama.cpp_q8_0", "onnxruntime"}
    assert shape["new_tokens"] == 4
    for batch in (1, 2):
        entry = shape[f"batch_{batch}"]
        assert sides <= set(entry["tokens_per_s"])
        assert all(v > 0 for v in entry["tokens_per_s"].values())
        assert entry["same_tokens_as_gptkit_fp32"]["onnxruntime"] == 1.0
        # llama.cpp returns one token per row and step, in the rows' order
        assert 0.0 <= entry["same_tokens_as_gptkit_fp32"]["llama.cpp_f16"] <= 1.0
    lines = render_decode_runtimes({"threads": 1, "rounds": 1, "prompt_tokens": 8,
                                    "shapes": {"tiny": shape}})
    assert sum("| tiny" in line for line in lines) == 2 * len(shape["batch_1"]["tokens_per_s"])


def test_profile_of_one_decode_step_ranks_ops_by_self_time():
    import numpy as np

    from benchmarks.decode_runtimes import profile_step
    from gptkit.config import ModelConfig
    from gptkit.model import GPT

    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=50,
                            dropout=0.0)).eval()
    profile = profile_step(model, np.zeros((2, 4), np.int64), top=5)
    shares = [op["share"] for op in profile["top_ops"]]
    assert len(shares) == 5 and shares == sorted(shares, reverse=True)
    assert profile["step_ms"] > 0 and sum(shares) <= 1.0 + 1e-9
    assert any(op["op"] == "aten::mm" or op["op"] == "aten::addmm" for op in profile["top_ops"])


def test_decode_step_compares_two_trees_on_the_same_weights():
    """benchmarks.decode_step at a tiny size: each side is a worker process of its own; two
    workers of the same tree (one at bf16) decode the same weights, and docs/results.md's
    renderer prints a row per side and batch."""
    from benchmarks.common import REPO
    from benchmarks.decode_step import Side, bench
    from benchmarks.make_results import render_decode_step

    tiny = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "vocab_size": 23}
    sides = {"before": Side(REPO / "src", "fp32", 1), "after": Side(REPO / "src", "fp32", 1),
             "after_bf16": Side(REPO / "src", "bf16", 1)}
    try:
        shape = bench(sides, tiny, batches=[1, 2], new_tokens=4, rounds=2, prompt=10)
    finally:
        for side in sides.values():
            side.close()
    assert shape["new_tokens"] == 4
    for batch in (1, 2):
        entry = shape[f"batch_{batch}"]
        assert set(entry["tokens_per_s"]) == set(sides)
        assert entry["same_ids_as_before"]["after"] == 1.0  # same tree, same weights
        assert 0.0 <= entry["same_ids_as_before"]["after_bf16"] <= 1.0
        assert entry["ratio_over_before"]["before"] == 1.0
    lines = render_decode_step({"threads": 1, "rounds": 2, "prompt_tokens": 8,
                                "sides": list(sides), "baseline_src": "", "shapes":
                                {"tiny": shape}})
    assert sum("| tiny" in line for line in lines) == 2 * len(sides)


def test_speculative_benchmark_checks_tokens_and_reports_acceptance(capsys):
    import torch

    from benchmarks.speculative import bench_speculative, report
    from gptkit.config import ModelConfig
    from gptkit.model import GPT

    models = []
    for seed, layers in ((0, 2), (1, 1)):
        torch.manual_seed(seed)
        models.append(GPT(ModelConfig(n_layer=layers, n_head=2, n_embd=16, block_size=32,
                                      vocab_size=20)).eval())
    main, draft = models
    results = bench_speculative(main, draft, [1, 2, 3], new_tokens=40, draft_tokens=[2, 3],
                                repeats=2, temperature=0.8)
    assert results["new_tokens"] == 29  # kept within the context: no side slides
    assert results["same_tokens"] == {"k=2": True, "k=3": True}
    assert set(results["tokens_per_s"]) == {"plain", "k=2", "k=3", "plain@0.8", "k=2@0.8",
                                            "k=3@0.8"}
    assert all(0 <= a <= 1 for a in results["acceptance"].values())
    assert all(t >= 1 for t in results["tokens_per_pass"].values())
    report(results)
    assert "k=3:" in capsys.readouterr().out
    from benchmarks.make_results import render_speculative

    rows = [line for line in render_speculative(results) if line.startswith("| k=")]
    assert len(rows) == 4 and sum("True" in row for row in rows) == 2
    same = bench_speculative(main, main, [1, 2, 3], new_tokens=10, draft_tokens=[4], repeats=1)
    assert same["acceptance"] == {"k=4": 1.0}


def test_serve_speculative_benchmark_checks_texts_and_reports_acceptance(tiny_run):
    from benchmarks.make_results import render_serve_speculative
    from benchmarks.serve_speculative import bench
    from gptkit.generation.speculative import Speculative
    from gptkit.run import load_run

    run = load_run(tiny_run)
    results = bench(run, Speculative(run.model, 2), [1, 2], new_tokens=6, repeats=1)
    assert set(results) == {"batch=1", "batch=2"}
    for r in results.values():  # a draft equal to the model: every token kept
        assert r["same_texts"] is True and r["acceptance"] == 1.0
        assert set(r["tokens_per_s"]) == {"plain", "draft"} and r["ratio"] > 0
    lines = render_serve_speculative({**results, "new_tokens": 6, "draft_tokens": 2})
    rows = [line for line in lines if line.startswith("| batch=")]
    assert len(rows) == 2 and all("True" in row and "100%" in row for row in rows)


def test_ideal_steps_count_static_and_continuous_scheduling_by_hand():
    from benchmarks.serve_mixed import ideal_steps

    # two clients, two rows: static runs [4, 1] (4 steps), then [1, 1], then [1]: 6 steps;
    # continuous refills the short row's place at once: [4, 1] -> [3, 1] -> [2, 1] -> [1, 1]
    assert ideal_steps([4, 1, 1, 1, 1], 2, 2) == {"static": 6, "continuous": 4}
    assert ideal_steps([3, 3, 3], 1, 4) == {"static": 9, "continuous": 9}  # nothing to share


def test_log_uniform_lengths_give_each_doubling_of_max_tokens_a_fifth_of_the_requests():
    import random

    from benchmarks.serve_mixed import new_tokens

    rng = random.Random(0)
    for lengths, top_share in (("log-uniform", 0.2), ("uniform", 129 / 249)):
        draws = [new_tokens(rng, lengths) for _ in range(5000)]
        assert min(draws) >= 8 and max(draws) <= 256
        octaves = [sum(8 * 2**i <= n < 8 * 2 ** (i + 1) for n in draws) / 5000 for i in range(4)]
        top = sum(n >= 128 for n in draws) / 5000
        assert abs(top - top_share) < 0.03, (lengths, top)
        if lengths == "log-uniform":
            assert all(abs(share - 0.2) < 0.03 for share in octaves), octaves


def test_pool_attention_times_both_sides_on_the_same_step():
    from benchmarks.make_results import render_pool_attention
    from benchmarks.pool_attention import bench

    tiny = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 32, "vocab_size": 23}
    r = bench(tiny, rows=3, rounds=2)
    assert set(r["ms_per_step"]) == {"one call", "chosen"} and r["ms_per_step"]["chosen"] > 0
    assert r["row_by_row"] is False  # 2 heads of 8: a call per row never pays
    assert r["max_logit_difference"] == 0.0  # the same call on both sides
    lines = render_pool_attention({"threads": 1, "rounds": 2,
                                   "shapes": {"tiny": {"shape": tiny, "by_rows": {"3": r}}}})
    assert sum(line.startswith("| tiny | 3 |") for line in lines) == 1


def test_serving_renderers_show_every_level_and_both_sides():
    from benchmarks.make_results import render_serve_chat, render_serve_mixed

    side = {"requests_per_s": 2.0, "ttft_p99_s": 0.5, "failed": 0}
    level = {"static": side, "continuous": {**side, "requests_per_s": 3.0},
             "ratios": {"requests_per_s": 1.5, "tokens_per_s": 1.4},
             "ideal_steps": {"static": 6, "continuous": 4, "ratio": 1.5}, "same_text": 4}
    mixed = render_serve_mixed({"requests": 4, "prompt_chars": [1, 200], "max_tokens": [8, 256],
                                "batch_size": 16, "rounds": 2, "threads": 1, "run": "x",
                                "levels": {"8": level, "32": level}})
    assert sum(line.startswith(("| 8 ", "| 32 ")) for line in mixed) == 2
    assert any(line.startswith("| 8 | 2.000 | 3.000 | 1.50x | 1.40x | 1.50x |") for line in mixed)
    chat = {"prompt_tokens_computed": 10, "prompt_tokens_reused": 0, "ttft_p50_s": 0.1,
            "ttft_p99_s": 0.2, "wall_s": 1.0, "failed": 0, "requests": 4}
    lines = render_serve_chat({"conversations": 2, "turns": 2, "reply_tokens": 4,
                               "batch_size": 16, "rounds": 2, "run": "x", "same_text": 4,
                               "cache off": chat, "cache on": {**chat,
                                                              "prompt_tokens_reused": 7}})
    assert "| prompt tokens reused | 0 | 7 |" in lines
    assert not any("draft" in line for line in lines)
    chat |= {"draft_tokens": 8, "accepted_tokens": 6}
    drafted = render_serve_chat({"conversations": 2, "turns": 2, "reply_tokens": 4,
                                 "batch_size": 16, "rounds": 2, "run": "x", "same_text": 4,
                                 "draft": "runs/d", "draft_tokens_per_step": 4,
                                 "cache off": chat, "cache on": chat})
    assert "| draft tokens accepted | 6 | 6 |" in drafted
    assert "with the draft d (4 tokens a step)" in drafted[0]
