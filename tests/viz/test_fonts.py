"""Labels in scripts matplotlib's default font lacks (Chinese tokens, a run named in Japanese)
get an installed font that has them, or one warning saying which font package to install."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gptkit.viz.attention import AttentionMaps, attention_figure, plot_attention
from gptkit.viz.curves import figure_for_runs, read_metrics
from gptkit.viz.fonts import families_for
from tests.synthetic_runs import make_run

CJK = ["中", "文", "字", "符"]


def test_a_font_that_has_the_missing_glyphs_is_added_to_the_labels_fonts():
    # U+2312 (arc) is in DejaVu Sans Mono, which matplotlib ships, and not in DejaVu Sans
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert families_for(["ab\u2312"], ["No Such Font", "DejaVu Sans Mono"]) == [
            "DejaVu Sans", "DejaVu Sans Mono"]
        assert families_for(["plain ascii"]) == ["DejaVu Sans"]


def test_missing_glyphs_warn_once_naming_the_font_package(monkeypatch):
    with pytest.warns(UserWarning, match="fonts-noto-cjk") as caught:
        assert families_for(CJK, ["DejaVu Sans Mono"]) == ["DejaVu Sans"]
    assert len(caught) == 1 and "中文字符" in str(caught[0].message)


def cjk_maps() -> AttentionMaps:
    weights = np.tril(np.ones((1, 1, 4, 4), dtype=np.float32))
    return AttentionMaps(weights=weights / weights.sum(-1, keepdims=True), tokens=CJK,
                         ids=[1, 2, 3, 4], text="".join(CJK))


def test_chinese_token_labels_get_a_cjk_font_or_the_warning(tmp_path):
    """Whatever fonts this machine has: the labels carry a font with the glyphs, or the user
    is told once what to install (and not once per glyph by matplotlib)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure = attention_figure(cjk_maps(), 0, 0)
        plot_attention(cjk_maps(), 0, 0, tmp_path / "a.png")
    families = figure.axes[0].get_xticklabels()[0].get_fontfamily()
    ours = [w for w in caught if "fonts-noto-cjk" in str(w.message)]
    glyphs = [w for w in caught if "missing from font" in str(w.message)]
    assert len(families) > 1 or ours, (families, [str(w.message) for w in caught])
    assert not glyphs


def test_run_names_in_cjk_reach_the_legend_font(tmp_path):
    run = make_run(tmp_path / "a")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = figure_for_runs([read_metrics(run)], labels=["中文运行"])
    family = fig.axes[0].get_legend().get_texts()[0].get_fontfamily()
    assert len(family) > 1 or any("fonts-noto-cjk" in str(w.message) for w in caught)
