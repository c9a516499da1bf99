"""Attention maps: real causal weights, readable pictures, `gptkit viz attention`, errors."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from gptkit.config import ModelConfig
from gptkit.errors import GptkitError
from gptkit.model import GPT
from gptkit.run import load_run
from gptkit.viz.attention import (
    AttentionMaps,
    attention_figure,
    attention_maps,
    pick,
    plot_attention,
    token_label,
)
from tests.test_cli import expect_error, run_cli

PROMPT = "ROMEO:\nWhat say you?"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def maps(tiny_run: Path) -> AttentionMaps:
    run = load_run(tiny_run)
    return attention_maps(run.model, run.tokenizer, PROMPT)


def pixels(path: Path) -> tuple[int, int]:
    """(height, width) of a PNG, after checking that it is one."""
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    return image.shape[0], image.shape[1]


def test_attention_arrays_are_causal_and_rows_sum_to_one(maps):
    tokens = len(PROMPT)  # a character model: one token per character
    assert maps.weights.shape == (2, 2, tokens, tokens) and maps.weights.dtype == np.float32
    np.testing.assert_allclose(maps.weights.sum(-1), 1.0, atol=1e-5)
    future = np.triu(np.ones((tokens, tokens), dtype=bool), k=1)
    assert (maps.weights[..., future] == 0).all() and (maps.weights[..., ~future] > 0).all()
    assert maps.tokens[:7] == ["R", "O", "M", "E", "O", ":", "\\n"]
    assert maps.tokens[11] == "␣" and len(maps.tokens) == len(maps.ids) == tokens


def test_attention_maps_are_the_weights_that_produce_the_output(tiny_run, maps):
    """Layer 0's weights times its values, projected, give the fused attention's output."""
    run = load_run(tiny_run)
    model = run.model
    idx = torch.tensor([maps.ids])
    with torch.no_grad():
        h = model.transformer.h[0].ln_1(model.transformer.wte(idx)
                                        + model.transformer.wpe(torch.arange(idx.size(1))))
        attn = model.transformer.h[0].attn
        _, _, v = attn.c_attn(h).split(32, dim=2)
        v = v.view(1, -1, 2, 16).transpose(1, 2)
        y = (torch.from_numpy(maps.weights[0])[None] @ v).transpose(1, 2).reshape(1, -1, 32)
        torch.testing.assert_close(attn.c_proj(y), attn(h), atol=1e-5, rtol=0)


def test_attention_maps_leave_the_model_in_its_mode():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=8, block_size=8, vocab_size=128,
                            dropout=0.5)).train()

    class Chars:
        def encode(self, text: str) -> list[int]:
            return [ord(c) for c in text]

        def decode(self, ids: list[int]) -> str:
            return "".join(chr(i) for i in ids)

    found = attention_maps(model, Chars(), "a b")  # type: ignore[arg-type]
    assert model.training  # evaluated without dropout, then put back
    np.testing.assert_allclose(found.weights.sum(-1), 1.0, atol=1e-6)
    assert found.tokens == ["a", "␣", "b"]
    with pytest.raises(GptkitError, match="9 tokens long but the model sees at most 8"):
        attention_maps(model, Chars(), "abcdefghi")
    with pytest.raises(GptkitError, match="empty"):
        attention_maps(model, Chars(), "")


def test_token_labels_make_whitespace_visible():
    assert token_label(" the") == "␣the"
    assert token_label("\n\n") == "\\n\\n"
    assert token_label("\t") == "\\t"
    assert token_label("\x00") == "\\x00"
    assert token_label("") == "∅"


def test_pick_chooses_one_index_or_all():
    assert pick("all", 3, "layer") == [0, 1, 2]
    assert pick("2", 3, "layer") == [2] and pick(0, 3, "head") == [0]
    with pytest.raises(GptkitError, match=r"layer 3 is out of range: .* 3 layers \(0-2\)"):
        pick(3, 3, "layer")
    with pytest.raises(GptkitError, match="--head must be a head number or 'all'"):
        pick("first", 4, "--head")
    with pytest.raises(GptkitError, match="out of range"):
        pick(-1, 4, "head")


def test_single_map_and_grids_are_pngs_of_the_figure_size(maps, tmp_path):
    single = plot_attention(maps, 1, 0, tmp_path / "single.png")
    grid = plot_attention(maps, "all", "all", tmp_path / "grid.png")
    heads = plot_attention(maps, 0, "all", tmp_path / "heads.png")
    for path, figure in ((single, attention_figure(maps, 1, 0)),
                         (grid, attention_figure(maps, "all", "all"))):
        width, height = figure.get_size_inches() * 110
        assert pixels(path) == (round(height), round(width))
    single_h, single_w = pixels(single)
    grid_h, grid_w = pixels(grid)
    assert grid_h * grid_w > single_h * single_w  # four maps take more room than one
    assert pixels(heads)[1] > 0
    figure = attention_figure(maps, 1, 0)
    ax = figure.axes[0]
    assert ax.get_title() == "layer 1, head 0"
    assert [t.get_text() for t in ax.get_xticklabels()] == maps.tokens
    assert [t.get_text() for t in ax.get_yticklabels()] == maps.tokens
    assert len(figure.axes) == 2  # the map and its colorbar
    titles = [ax.get_title() for ax in attention_figure(maps, "all", 1).axes]
    assert "layer 0" in titles and "layer 1" in titles


def test_long_prompts_thin_the_labels_and_grids_drop_them():
    weights = np.tril(np.ones((1, 2, 100, 100), dtype=np.float32))
    weights /= weights.sum(-1, keepdims=True)
    many = AttentionMaps(weights=weights, tokens=[f"t{i}" for i in range(100)],
                         ids=list(range(100)), text="")
    ax = attention_figure(many, 0, 0).axes[0]
    assert len(ax.get_xticklabels()) == 50  # every other token
    grid = attention_figure(many, 0, "all")
    assert all(not ax.get_xticklabels() for ax in grid.axes[:2])


def test_plot_attention_keeps_an_existing_file(maps, tmp_path):
    out = tmp_path / "map.png"
    out.write_bytes(b"mine")
    with pytest.raises(GptkitError, match="already exists"):
        plot_attention(maps, 0, 0, out)
    assert out.read_bytes() == b"mine"
    plot_attention(maps, 0, 0, out, overwrite=True)
    assert pixels(out)[0] > 100
    with pytest.raises(GptkitError, match=r"\.png, \.svg or \.pdf"):
        plot_attention(maps, 0, 0, tmp_path / "map.txt")
    with pytest.raises(GptkitError, match="folder does not exist"):
        plot_attention(maps, 0, 0, tmp_path / "missing" / "map.png")


# --- gptkit viz attention -----------------------------------------------------------------


def test_cli_writes_a_single_map_and_a_grid(tiny_run, tmp_path, capsys):
    single, grid = tmp_path / "single.png", tmp_path / "grid.png"
    code, out, err = run_cli(capsys, "viz", "attention", str(tiny_run), "--prompt", PROMPT,
                             "--layer", "1", "--head", "0", "--out", str(single))
    assert code == 0, err
    assert str(single) in out and "20 tokens" in out
    code, _, err = run_cli(capsys, "viz", "attention", str(tiny_run), "--prompt", PROMPT,
                           "--out", str(grid))  # default: every layer and head
    assert code == 0, err
    assert pixels(grid)[0] * pixels(grid)[1] > pixels(single)[0] * pixels(single)[1]


def test_cli_json_holds_the_drawn_weights(tiny_run, tmp_path, capsys):
    code, out, err = run_cli(capsys, "viz", "attention", str(tiny_run), "--prompt", "ROMEO:",
                             "--layer", "all", "--head", "1", "--out",
                             str(tmp_path / "a.png"), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["tokens"] == ["R", "O", "M", "E", "O", ":"]
    assert result["layers"] == [0, 1] and result["heads"] == [1]
    weights = np.array(result["weights"])
    assert weights.shape == tuple(result["shape"]) == (2, 1, 6, 6)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    assert (weights[..., np.triu(np.ones((6, 6), dtype=bool), k=1)] == 0).all()


def test_cli_errors(tiny_run, tmp_path, capsys):
    out = str(tmp_path / "map.png")
    base = ("viz", "attention", str(tiny_run), "--out", out)
    expect_error(capsys, *base, "--prompt", "hi", "--layer", "7",
                 match="--layer 7 is out of range: the model has 2 layers (0-1) or 'all'")
    expect_error(capsys, *base, "--prompt", "hi", "--head", "2",
                 match="--head 2 is out of range: the model has 2 heads (0-1)")
    expect_error(capsys, *base, "--prompt", "hi", "--head", "x", match="head number or 'all'")
    expect_error(capsys, *base, "--prompt", "", match="prompt is empty")
    expect_error(capsys, *base, "--prompt", "a" * 40,
                 match="40 tokens long but the model sees at most 32")
    assert not Path(out).exists()
    Path(out).write_bytes(b"mine")
    expect_error(capsys, *base, "--prompt", "hi", match="already exists")
    assert Path(out).read_bytes() == b"mine"
    code, _, err = run_cli(capsys, *base, "--prompt", "hi", "--overwrite")
    assert code == 0, err
    assert pixels(Path(out))[0] > 100
    code, _, err = run_cli(capsys, "viz", "attention", str(tiny_run), "--out", out)
    assert code == 2 and "--prompt" in err  # argparse: the prompt is required
