"""ONNX export: ONNX Runtime runs model.onnx with gptkit's logits (within 1e-4) and, feeding
`present` back as `past`, gptkit's greedy tokens, alone and in a left-padded batch; bad
requests are one line.

Tiny random models only, everything under tmp_path, no network.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gptkit.cli import main
from gptkit.errors import GptkitError
from gptkit.generation.decoding import positions_of
from gptkit.generation.sampling import generate
from gptkit.interop.onnx import export_onnx, past_names, present_names
from gptkit.run import load_run
from gptkit.tokenizers import Tokenizer
from tests.generation_opts import opts
from tests.interop.test_hf import CORPUS, expect_error, make_run
from tests.test_cli import run_cli

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: pip install "
                          "'gptkit[onnx]'")

PROMPTS = ["ROMEO: speak", "All:\nSpeak, speak. You are"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny run (trained byte-level BPE, EOT never drawn) and its ONNX export via the CLI."""
    root = tmp_path_factory.mktemp("onnx")
    run = make_run(root / "run", Tokenizer.train_bpe([CORPUS], 300), never_ends=True)
    out = root / "onnx"
    main(["export", str(run), "--format", "onnx", "--out", str(out)])
    return run, out


def session(folder: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(folder / "model.onnx"), options,
                                providers=["CPUExecutionProvider"])


def empty_past(sess: ort.InferenceSession, batch: int) -> dict[str, np.ndarray]:
    """Pasts of 0 positions, shaped from the graph's own input declarations."""
    return {i.name: np.zeros((batch, i.shape[1], 0, i.shape[3]), np.float32)
            for i in sess.get_inputs() if i.name.startswith("past_key_values.")}


def ort_greedy(sess: ort.InferenceSession, rows: list[list[int]], pad: int,
               steps: int) -> np.ndarray:
    """Greedy decoding on ONNX Runtime: prompt once, then one token at a time with
    present -> past, the mask growing by one and positions counted from each row's start."""
    width = max(len(r) for r in rows)
    ids = np.array([[pad] * (width - len(r)) + r for r in rows], np.int64)
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], np.int64)
    past = empty_past(sess, len(rows))
    n_layer = len(past) // 2
    step_ids, new = ids, []
    for _ in range(steps):
        positions = positions_of(torch.from_numpy(mask)).numpy()[:, -step_ids.shape[1]:]
        logits, *present = sess.run(None, {"input_ids": step_ids, "attention_mask": mask,
                                           "position_ids": positions, **past})
        token = logits[:, -1].argmax(-1)
        new.append(token)
        past = dict(zip(past_names(n_layer), present, strict=True))
        step_ids = token[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((len(rows), 1), np.int64)], axis=1)
    return np.stack(new, axis=1)


def test_graph_has_optimums_names_and_dynamic_axes(exported):
    _, out = exported
    sess = session(out)
    inputs = {i.name: i for i in sess.get_inputs()}
    assert list(inputs) == ["input_ids", "attention_mask", "position_ids", *past_names(2)]
    assert [o.name for o in sess.get_outputs()] == ["logits", *present_names(2)]
    assert inputs["past_key_values.0.key"].shape == ["batch_size", 2, "past_sequence_length", 16]
    assert json.loads((out / "config.json").read_text())["model_type"] == "gpt2"
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= {
        p.name for p in out.iterdir()}


def test_full_prompt_logits_match_gptkit_within_1e_4(exported):
    run_dir, out = exported
    run = load_run(run_dir)
    sess = session(out)
    ids = torch.tensor([run.tokenizer.encode(PROMPTS[1])])
    want, _ = run.model(ids)
    got, *present = sess.run(None, {"input_ids": ids.numpy(),
                                    "attention_mask": np.ones_like(ids.numpy()),
                                    "position_ids": np.arange(ids.size(1))[None],
                                    **empty_past(sess, 1)})
    assert np.abs(got - want.detach().numpy()).max() < 1e-4
    assert present[0].shape == (1, 2, ids.size(1), 16)


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["batch1", "left-padded2"])
def test_decoding_with_past_gives_gptkits_greedy_tokens(exported, prompts):
    run_dir, out = exported
    run = load_run(run_dir)
    rows = [run.tokenizer.encode(p) for p in prompts]
    assert len({len(r) for r in rows}) == len(rows)  # the batch of two needs padding
    steps = 12
    want = generate(run.model, rows, opts(temperature=0.0, max_new_tokens=steps),
                    eot_id=run.tokenizer.eot_id)[:, -steps:]
    got = ort_greedy(session(out), rows, run.tokenizer.eot_id, steps)
    assert got.tolist() == want.tolist()


def test_matches_gptkit_sample_at_temperature_0(exported, capsys):
    run_dir, out = exported
    tok = load_run(run_dir).tokenizer
    code, printed, _ = run_cli(capsys, "sample", str(run_dir), "--prompt", PROMPTS[0],
                               "--temperature", "0", "--max-new-tokens", "10")
    assert code == 0
    prompt = tok.encode(PROMPTS[0])
    got = ort_greedy(session(out), [prompt], tok.eot_id, 10)[0].tolist()
    assert tok.decode(prompt + got) in printed


def test_bad_requests_are_one_line(exported, tmp_path, capsys):
    run_dir, out = exported
    expect_error(capsys, "export", str(run_dir), "--format", "onnx", "--quantize", "int8",
                 "--out", str(tmp_path / "q"), match="drop --quantize")
    expect_error(capsys, "export", str(run_dir), "--format", "onnx", "--out", str(out),
                 match="already exists; use --overwrite")
    expect_error(capsys, "export", str(run_dir), "--format", "tflite", "--out", str(out),
                 match="invalid choice")
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    expect_error(capsys, "export", str(run_dir), "--format", "onnx", "--overwrite", "--out",
                 str(other), match="not a ONNX model folder")


def test_missing_onnx_package_is_one_line(exported, tmp_path, capsys, monkeypatch):
    run_dir, _ = exported
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    expect_error(capsys, "export", str(run_dir), "--format", "onnx", "--out",
                 str(tmp_path / "o"), match="pip install 'gptkit[onnx]'")


@pytest.mark.parametrize(("option", "shown"), [("pos_embedding", "rope"), ("norm", "rmsnorm"),
                                               ("mlp", "swiglu")])
def test_architectures_beyond_gpt2_are_refused(option, shown, tmp_path):
    run = make_run(tmp_path / "run", Tokenizer.train_char([CORPUS]), **{option: shown})
    with pytest.raises(GptkitError, match=f"model.{option}={shown} to ONNX"):
        export_onnx(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_int8_run_is_refused(exported, tmp_path, capsys):
    run_dir, _ = exported
    assert run_cli(capsys, "export", str(run_dir), "--quantize", "int8", "--out",
                   str(tmp_path / "q"))[0] == 0
    expect_error(capsys, "export", str(tmp_path / "q"), "--format", "onnx", "--out",
                 str(tmp_path / "o"), match="int8 weights, which the ONNX export cannot hold")


def test_optimum_loads_the_export_and_decodes_greedily_as_gptkit(exported):
    """Where optimum-onnx is installed (it pins transformers < 4.58, so CI has none)."""
    pytest.importorskip("optimum.onnxruntime", reason="optimum-onnx is not installed")
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    run_dir, out = exported
    run = load_run(run_dir)
    model, tok = ORTModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    got = model.generate(**tok([PROMPTS[0]], return_tensors="pt"), do_sample=False,
                         max_new_tokens=10)
    want = generate(run.model, [run.tokenizer.encode(PROMPTS[0])],
                    opts(temperature=0.0, max_new_tokens=10), eot_id=run.tokenizer.eot_id)
    assert got.tolist() == want.tolist()
