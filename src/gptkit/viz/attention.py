"""Attention maps: which earlier tokens each token of a prompt looks at, per layer and head.

`attention_maps` runs a model on a prompt and keeps its real attention weights
(`gptkit.viz.capture.attention_weights`: the very weights that produce the attention output, not a
re-derivation). `attention_figure` draws them as heat maps, the prompt's tokens on both axes
(queries down the side, keys along the bottom), with the cells that the causal mask hides
hatched grey so that they cannot be mistaken for weights near zero; `plot_attention` writes
that figure to a file. matplotlib is used through its object API only (no pyplot state, no
display needed).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from gptkit.errors import GptkitError
from gptkit.model import GPT
from gptkit.tokenizers import Tokenizer
from gptkit.viz.capture import attention_weights
from gptkit.viz.fonts import families_for

CMAP = "viridis"  # perceptually uniform; its darkest end stays distinct from the grey mask
MASK_FACE = "#e4e4e4"
MASK_HATCH = "#b0b0b0"
LABEL_CHARS = 10  # longer token labels are cut with an ellipsis
GRID_LABEL_MIN_PT = 7.0  # grid panels show token labels only if a cell is at least this tall


@dataclass
class AttentionMaps:
    """A prompt's attention weights and one readable label per token.

    `weights[layer, head, query, key]` (float32, shape (n_layer, n_head, T, T)) is how much
    the query token attends to the key token; each row sums to one and keys after the query
    are exactly 0 (the causal mask).
    """

    weights: np.ndarray
    tokens: list[str]
    ids: list[int]
    text: str

    @property
    def n_layer(self) -> int:
        return int(self.weights.shape[0])

    @property
    def n_head(self) -> int:
        return int(self.weights.shape[1])


def token_label(piece: str) -> str:
    """A token's text made visible: spaces as '␣', newlines as '\\n', control characters escaped.

    Whitespace tokens would otherwise be blank tick labels.
    """
    if piece == "":
        return "∅"
    out = []
    for ch in piece:
        if ch == " ":
            out.append("␣")
        elif ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif not ch.isprintable():
            out.append(ascii(ch)[1:-1])
        else:
            out.append(ch)
    return "".join(out)


def attention_maps(model: GPT, tokenizer: Tokenizer, text: str) -> AttentionMaps:
    """Run `model` on `text` once and keep every layer's and head's attention weights.

    The model is evaluated in eval mode (no attention dropout), whatever mode it was in.
    """
    if not text:
        raise GptkitError("the prompt is empty; give a text whose attention to show, "
                          "e.g. --prompt 'ROMEO:'")
    ids = tokenizer.encode(text)
    if not ids:
        raise GptkitError(f"the prompt {text!r} encodes to no tokens; give some other text")
    block = model.config.block_size
    if len(ids) > block:
        raise GptkitError(
            f"the prompt is {len(ids)} tokens long but the model sees at most {block} "
            f"(model.block_size); shorten it to {block} tokens or fewer"
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            weights = attention_weights(model, torch.tensor([ids], device=device))
    finally:
        model.train(was_training)
    return AttentionMaps(
        weights=weights[:, 0].float().cpu().numpy(),
        tokens=[token_label(tokenizer.decode([i])) for i in ids],
        ids=list(ids),
        text=text,
    )


def pick(value: int | str, count: int, what: str) -> list[int]:
    """The indices `value` chooses among `count` layers or heads: one of them, or "all".

    `what` names the choice in the error ("layer", or "--layer" for the command line).
    """
    noun = what.lstrip("-")
    if value == "all":
        return list(range(count))
    try:
        index = int(value)
    except (TypeError, ValueError):
        raise GptkitError(f"{what} must be a {noun} number or 'all', got {value!r}") from None
    if not 0 <= index < count:
        raise GptkitError(
            f"{what} {value} is out of range: the model has {count} {noun}s "
            f"(0-{count - 1}) or 'all'"
        )
    return [index]


def _short(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"


def _draw(ax: Axes, weights: np.ndarray, cmap: Colormap) -> AxesImage:
    """One heat map on `ax`: visible weights in colour, the causal mask hatched grey below."""
    tokens = weights.shape[0]
    hidden = np.triu(np.ones_like(weights, dtype=bool), k=1)
    # masked cells are transparent and let the hatched rectangle underneath show through
    ax.add_patch(Rectangle((-0.5, -0.5), tokens, tokens, facecolor=MASK_FACE,
                           edgecolor=MASK_HATCH, hatch="////", linewidth=0, zorder=0))
    image = ax.imshow(np.ma.masked_array(weights, hidden), cmap=cmap, vmin=0.0, vmax=1.0,
                      interpolation="nearest", zorder=1)
    ax.set_xlim(-0.5, tokens - 0.5)
    ax.set_ylim(tokens - 0.5, -0.5)
    return image


def _label(ax: Axes, tokens: list[str], fontsize: float, x: bool, y: bool,
           families: list[str]) -> None:
    """Token labels on the axes asked for (every k-th one if too many); no ticks elsewhere.

    Unlabelled axes get no ticks at all: 64 tick objects per axis in a 12 x 12 grid of
    panels would take most of the drawing time.
    """
    step = max(1, math.ceil(len(tokens) / 64))
    ticks = list(range(0, len(tokens), step))
    names = [_short(tokens[i]) for i in ticks]
    upright = max(len(name) for name in names) <= 2  # single characters read best upright
    if x:
        ax.set_xticks(ticks, names, rotation=0 if upright else 90, fontsize=fontsize,
                      fontfamily=families)
    else:
        ax.set_xticks([])
    if y:
        ax.set_yticks(ticks, names, fontsize=fontsize, fontfamily=families)
    else:
        ax.set_yticks([])
    ax.tick_params(length=2, pad=1)


def _cmap() -> Colormap:
    from matplotlib import colormaps

    return colormaps[CMAP].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))


def attention_figure(maps: AttentionMaps, layer: int | str, head: int | str) -> Figure:
    """A figure of one map ("layer L, head H") or a grid when `layer` and/or `head` is "all".

    A layer with "all" heads is a grid of its heads, "all" layers with one head a grid of the
    layers, and both "all" a grid with one row per layer and one column per head.
    """
    layers = pick(layer, maps.n_layer, "layer")
    heads = pick(head, maps.n_head, "head")
    if len(layers) == 1 and len(heads) == 1:
        return _single(maps, layers[0], heads[0])
    return _grid(maps, layers, heads, both=len(layers) > 1 and len(heads) > 1)


def _single(maps: AttentionMaps, layer: int, head: int) -> Figure:
    tokens = len(maps.tokens)
    cell = min(0.3, max(0.16, 6.0 / tokens))  # inches per token
    fontsize = min(11.0, max(6.0, cell * 72 * 0.62))
    side = tokens * cell
    fig = Figure(figsize=(side + 2.6, side + 1.9), layout="constrained")
    ax = fig.add_subplot()
    image = _draw(ax, maps.weights[layer, head], _cmap())
    _label(ax, maps.tokens, fontsize, x=True, y=True, families=families_for(maps.tokens))
    ax.set_title(f"layer {layer}, head {head}", fontsize=12)
    ax.set_xlabel("key (attended to)", fontsize=10)
    ax.set_ylabel("query (attending)", fontsize=10)
    colorbar = fig.colorbar(image, ax=ax, shrink=min(1.0, 4.0 / max(side, 1e-9) + 0.4),
                            pad=0.02)
    colorbar.set_label("attention weight", fontsize=10)
    return fig


def _grid(maps: AttentionMaps, layers: list[int], heads: list[int], both: bool) -> Figure:
    panels = [(lay, h) for lay in layers for h in heads]
    if both:
        rows, cols = len(layers), len(heads)
    else:
        cols = math.ceil(math.sqrt(len(panels)))
        rows = math.ceil(len(panels) / cols)
    tokens = len(maps.tokens)
    panel = min(max(2.0, tokens * 0.16), 3.5, 26.0 / max(rows, cols))  # inches
    cell_pt = panel / tokens * 72
    labelled = cell_pt >= GRID_LABEL_MIN_PT
    fontsize = min(9.0, cell_pt * 0.8)
    labels = 0.9 if labelled else 0.0  # room for the token labels, left and bottom
    # "compressed" packs fixed-aspect panels without the gaps "constrained" leaves
    fig = Figure(figsize=(cols * (panel + 0.12) + labels + 1.9,
                          rows * (panel + 0.3) + labels + 0.7),
                 layout="compressed")
    axes = fig.subplots(rows, cols, squeeze=False)
    cmap = _cmap()
    image = None
    families = families_for(maps.tokens) if labelled else []
    for index, ax in enumerate(axes.flat):
        if index >= len(panels):
            ax.set_axis_off()
            continue
        lay, h = panels[index]
        row, col = divmod(index, cols)
        image = _draw(ax, maps.weights[lay, h], cmap)
        last_row = row == rows - 1 or index + cols >= len(panels)
        _label(ax, maps.tokens, fontsize, x=labelled and last_row, y=labelled and col == 0,
               families=families)
        if both:
            if row == 0:
                ax.set_title(f"head {h}", fontsize=10)
            if col == 0:
                ax.set_ylabel(f"layer {lay}", fontsize=10, fontweight="bold")
        else:
            ax.set_title(f"layer {lay}" if len(layers) > 1 else f"head {h}", fontsize=10)
    if both:
        title = "all layers and heads"
    elif len(layers) > 1:
        title = f"head {heads[0]}, all layers"
    else:
        title = f"layer {layers[0]}, all heads"
    fig.suptitle(f"attention: {title}", fontsize=12)
    fig.supxlabel("key (attended to)", fontsize=10)
    fig.supylabel("query (attending)", fontsize=10)
    assert image is not None
    colorbar = fig.colorbar(image, ax=axes, shrink=min(0.8, 3.0 / rows + 0.3), pad=0.02)
    colorbar.set_label("attention weight", fontsize=10)
    return fig


def plot_attention(
    maps: AttentionMaps, layer: int | str, head: int | str, out: str | Path,
    *, overwrite: bool = False,
) -> Path:
    """Write `attention_figure(maps, layer, head)` to `out` (.png, or .svg/.pdf) and return it.

    An existing file is kept unless `overwrite`: nothing a user had is replaced silently.
    """
    path = Path(out)
    formats = FigureCanvasAgg.get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in formats:
        raise GptkitError(f"cannot tell the picture format of {path} from its name; end it "
                          "in .png, .svg or .pdf")
    if path.exists() and not overwrite:
        raise GptkitError(f"{path} already exists; choose another file or pass --overwrite "
                          "(overwrite=True) to replace it")
    if not path.resolve().parent.is_dir():
        raise GptkitError(f"{path}: its folder does not exist; create it first")
    fig = attention_figure(maps, layer, head)  # warns once if a label's font is missing
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Glyph .* missing from font")  # one per glyph
        FigureCanvasAgg(fig).print_figure(path, dpi=110)
    return path
