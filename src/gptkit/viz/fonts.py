"""Fonts for labels in any script (a Chinese prompt's tokens, a run named in Japanese).

matplotlib's default font, DejaVu Sans, has no CJK glyphs: such labels came out as empty
boxes. `families_for(texts)` gives the font list for those labels (matplotlib falls back
along it glyph by glyph): the default font, then the first installed font that has the
missing characters. It is passed to the artists of one figure, never set globally. When no
installed font has them, one warning names the package to install.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from functools import lru_cache

# fonts with wide CJK (and more) coverage, in order of preference, as fontconfig names them
FALLBACK_FONTS = (
    "Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK TC", "Noto Sans CJK KR",
    "Source Han Sans SC", "Source Han Sans", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
    "Droid Sans Fallback", "AR PL UMing CN", "Microsoft YaHei", "SimHei", "PingFang SC",
    "Hiragino Sans GB", "Arial Unicode MS", "Noto Sans",
)
INSTALL_HINT = ("install a font that has them, e.g. fonts-noto-cjk (Debian/Ubuntu: apt install "
                "fonts-noto-cjk; Fedora: google-noto-sans-cjk-fonts), then delete "
                "matplotlib's font cache (~/.cache/matplotlib)")


@lru_cache(maxsize=32)
def _charmap(family: str) -> frozenset[int] | None:
    """The code points a font family draws, or None when no such font is installed."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    try:
        path = font_manager.findfont(font_manager.FontProperties(family=family),
                                     fallback_to_default=False)
    except ValueError:
        return None
    return frozenset(FT2Font(path).get_charmap())


def _installed(family: str) -> bool:
    from matplotlib import font_manager

    return any(f.name == family for f in font_manager.fontManager.ttflist)


def families_for(texts: Iterable[str], candidates: Iterable[str] = FALLBACK_FONTS) -> list[str]:
    """The font family list that draws every visible character of `texts`."""
    from matplotlib import rcParams

    default = list(rcParams["font.sans-serif"])[:1] or ["DejaVu Sans"]
    base = _charmap(default[0]) or frozenset()
    missing = list(dict.fromkeys(c for text in texts for c in text  # in order of appearance
                                 if c.isprintable() and not c.isspace() and ord(c) not in base))
    if not missing:
        return default
    families = list(default)
    for family in candidates:
        if not _installed(family):
            continue
        chars = _charmap(family)
        if chars is None or not any(ord(c) in chars for c in missing):
            continue
        families.append(family)
        missing = [c for c in missing if ord(c) not in chars]
        if not missing:
            return families
    shown = "".join(missing[:10]) + ("..." if len(missing) > 10 else "")
    warnings.warn(f"no installed font has the characters {shown!r}; they show as empty boxes: "
                  f"{INSTALL_HINT}", UserWarning, stacklevel=2)
    return families
