"""Report figures: plain data in, one reproducible SVG file (and its PNG raster, for the PDF) out.

Every function here is pure in the sense that matters for a signed report: it takes plain values and an output
path, writes exactly that file (plus the PNG raster next to it, see raster_path) and returns its path; the same
input gives the same bytes. Nothing reads
results.json and nothing imports pyplot, so no GUI backend or global figure state is ever involved.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import PIL.Image
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

# Okabe & Ito (2008): distinguishable under the common colour-vision deficiencies and in greyscale print.
OKABE_ITO = (
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#009E73",  # bluish green
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#F0E442",  # yellow (last: weak contrast on white)
    "#000000",  # black
)
GREY = "#7F7F7F"
LIGHT_GREY = "#BDBDBD"
# The random-vs-random band of TCAV charts: light enough that a bar in front of it keeps its colour.
BAND_GREY = "#D9D9D9"

# Width of the report's text column (A4 minus margins), so figures print at 1:1 and 8 pt stays 8 pt.
PAGE_WIDTH_IN = 6.7

_RC: dict[str, Any] = {
    # Reproducible SVG: fixed id salt, glyphs as paths (no dependence on the viewer's fonts), no date stamp.
    "svg.hashsalt": "concept-auditor",
    "svg.fonttype": "path",
    "svg.image_inline": True,
    "font.family": "DejaVu Sans",
    "font.size": 8.0,
    "axes.titlesize": 9.0,
    "axes.labelsize": 8.0,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    # Names come from users ($ in a concept name must not switch to mathtext).
    "text.parse_math": False,
    "text.usetex": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "hatch.linewidth": 0.6,
}


@dataclass(frozen=True)
class TcavBar:
    """One bar of a TCAV chart: one (group, layer) cell.

    ``score`` is the mean TCAV score in [0, 1] over the random runs (None when the CAV was not learned and no
    score exists), ``std`` its spread; ``random_mean``/``random_std`` describe the random-vs-random scores.
    """

    group: str
    layer: str
    score: float | None
    std: float | None
    random_mean: float | None
    random_std: float | None
    significant: bool
    learned: bool


def shorten(name: str, limit: int = 30) -> str:
    """Shorten one long name for a figure label, keeping its end (where tensor names usually differ).

    Tables in the report always carry the full name; figures only need to tell names apart.
    """
    if len(name) <= limit:
        return name
    tail = name[-(limit - 1) :]
    cut = next((i for i, ch in enumerate(tail) if ch in _SEPARATORS and 0 < i < len(tail) // 2), 0)
    return "…" + tail[cut:]


_SEPARATORS = "/.:"


def short_labels(names: Sequence[str], limit: int = 30) -> list[str]:
    """Labels for a set of names that stay apart: drop the shared head (and tail) at separators, then shorten.

    ``/features/features.3/Relu_output_0`` and ``/features/features.8/Relu_output_0`` become
    ``…features.3/Relu_output_0`` and ``…features.8/Relu_output_0`` (or ``…features.3/…`` when that is still
    longer than ``limit``).
    """
    names = list(names)
    if all(len(n) <= limit for n in names) or len(set(names)) < 2:
        return [shorten(n, limit) for n in names]
    head = os.path.commonprefix(names)
    # Path-like names split best at "/"; dotted module names at ".".
    cut = (head.rfind("/") if "/" in head else max(head.rfind(sep) for sep in _SEPARATORS)) + 1
    labels = [("…" if cut else "") + n[cut:] for n in names]
    if any(len(label) > limit for label in labels):
        rest = [n[cut:] for n in names]
        tail = os.path.commonprefix([r[::-1] for r in rest])[::-1]
        starts = [i for i in (tail.find(sep) for sep in _SEPARATORS) if i >= 0]
        if starts and len(tail) - min(starts) > 1:
            drop = len(tail) - min(starts)
            trimmed = [r[: len(r) - drop] for r in rest]
            if all(trimmed) and len(set(trimmed)) == len(set(rest)):
                labels = [("…" if cut else "") + t + tail[min(starts)] + "…" for t in trimmed]
    return [label if len(label) <= limit else shorten(label, limit) for label in labels]


def wrap_hard(text: str, width: int = 20, max_lines: int = 3) -> str:
    """Break ``text`` into lines of at most ``width`` characters, at spaces when possible, else anywhere."""
    lines: list[str] = []
    rest = text
    while rest and len(lines) < max_lines:
        if len(rest) <= width:
            lines.append(rest)
            rest = ""
            break
        cut = rest.rfind(" ", 1, width + 1)
        cut = cut if cut > 0 else width
        lines.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        lines[-1] = lines[-1][: max(width - 1, 1)] + "…"
    return "\n".join(lines)


# Resolution of the PNG raster written next to every SVG figure (the PDF embeds the raster: WeasyPrint draws an
# SVG of a matplotlib figure, every glyph a path, about 100 times slower than it places a bitmap). Figures print
# at 1:1 (PAGE_WIDTH_IN), so this is their resolution on paper: 150 dpi keeps 7 pt labels sharp at print size,
# and WeasyPrint decodes and recompresses every raster (at 200 dpi that was a fifth of writing a 100-check PDF).
RASTER_DPI = 150


def raster_path(svg: Path) -> Path:
    """The PNG raster written next to the SVG figure ``svg`` (``x.svg`` -> ``x.png``)."""
    return Path(svg).with_suffix(".png")


@contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """Yield a temporary name next to ``path``; renamed to ``path`` when the block ends without an error, so a
    reader never sees the file half-written (a render lays the PDF out while workers draw its figures)."""
    partial = path.with_name(path.name + ".part")
    yield partial
    os.replace(partial, path)


def _save(fig: Figure, out: Path, *, crop: bool = True) -> Path:
    """Write ``fig`` as the SVG ``out`` and, for the PDF, as the PNG raster next to it; both reproducible.

    The layout (the layout engine, then with ``crop`` the tight bounding box) is computed once for the Agg canvas
    at RASTER_DPI and frozen; the PNG is the Agg drawing cropped to that box, the SVG is drawn within the same box.
    ``crop=False``: both are the whole canvas (a figure laid out by hand to fill it, whose size is then known
    before it is drawn; computing the tight box is also a sizeable part of drawing a chart).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.set_dpi(RASTER_DPI)
    canvas = fig.canvas
    canvas.draw()  # runs the layout engine, then draws
    bbox = fig.get_tightbbox(canvas.get_renderer()).padded(0.04) if crop else None  # inches, as "tight" would
    fig.set_layout_engine(None)  # keep the layout just computed: the SVG is drawn with the same one
    pixels = np.asarray(canvas.buffer_rgba())
    height = pixels.shape[0]
    if bbox is None:
        crop_px = pixels[:, :, :3]
    else:
        x0, y0, x1, y1 = (int(round(v * RASTER_DPI)) for v in bbox.extents)
        crop_px = pixels[max(height - y1, 0): height - max(y0, 0), max(x0, 0): x1, :3]
    # No text chunks (Software, dates): the same figure gives the same PNG bytes. Fast compression: WeasyPrint
    # decodes and recompresses the raster for the PDF anyway. Written whole or not at all: a render may be laying
    # out the PDF from a placeholder in its place meanwhile (render.FigureDrawing).
    png = raster_path(out)
    with written_whole(png) as partial:
        PIL.Image.fromarray(np.ascontiguousarray(crop_px), "RGB").save(
            partial, format="png", dpi=(RASTER_DPI, RASTER_DPI), compress_level=1)
    # Metadata Date=None: no timestamp in the file, so re-rendering gives identical bytes.
    fig.savefig(out, format="svg", metadata={"Date": None}, bbox_inches=bbox)
    return out


def _new_figure(width: float, height: float) -> Figure:
    # Constrained layout keeps legends placed "outside" from overlapping rotated tick labels.
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


@dataclass(frozen=True)
class TcavPanel:
    """One model's panel of a TCAV figure: its bars and its layers in depth order (one colour each)."""

    title: str
    bars: tuple[TcavBar, ...]
    layers: tuple[str, ...]


# Share of a (group, layer) slot the bar takes: the random-vs-random band behind it spans the whole slot, so it
# shows on both sides of the bar and the bar keeps its legend colour.
_BAR_SHARE = 0.62


def _tcav_axes(ax: Any, bars: Sequence[TcavBar], groups: Sequence[str], layers: Sequence[str], *, title: str,
               group_labels: bool = True, labels: Sequence[str] | None = None) -> None:
    """Draw one model's TCAV bars on ``ax``: one artist per layer and kind (not one per bar), so it stays fast.

    Layer ``i`` (in depth order) gets colour OKABE_ITO[i]; ``group_labels`` False leaves the x axis unlabelled
    (a panel above another one with the same groups).
    """
    n_groups, n_layers = max(len(groups), 1), max(len(layers), 1)
    group_x = {g: i for i, g in enumerate(groups)}
    layer_i = {lay: i for i, lay in enumerate(layers)}
    slot = 0.8 / n_layers
    width = slot * _BAR_SHARE
    xs = {id(b): group_x[b.group] - 0.4 + slot * (layer_i[b.layer] + 0.5) for b in bars}

    banded = [b for b in bars if b.random_mean is not None]
    if banded:
        lows = [b.random_mean - (b.random_std or 0.0) for b in banded]
        highs = [b.random_mean + (b.random_std or 0.0) for b in banded]
        ax.bar([xs[id(b)] for b in banded], [h - lo for lo, h in zip(lows, highs)], slot * 0.96, bottom=lows,
               color=BAND_GREY, linewidth=0, zorder=1)
        segments = [[(xs[id(b)] - slot / 2, b.random_mean), (xs[id(b)] + slot / 2, b.random_mean)] for b in banded]
        ax.add_collection(LineCollection(segments, colors="#333333", linestyles=[(0, (2.5, 1.5))], linewidths=0.9,
                                         zorder=4))
    for i, layer in enumerate(layers):
        mine = [b for b in bars if b.layer == layer and b.learned and b.score is not None]
        if not mine:
            continue
        x = [xs[id(b)] for b in mine]
        ax.bar(x, [b.score for b in mine], width, color=OKABE_ITO[i % len(OKABE_ITO)], edgecolor="black",
               linewidth=0.4, zorder=2)
        spread = [b for b in mine if b.std]
        if spread:
            # A TCAV score is a fraction: the whiskers stop at 0 and 1 instead of running into the title.
            low = [min(float(b.std), float(b.score)) for b in spread]
            high = [min(float(b.std), 1.0 - float(b.score)) for b in spread]
            ax.errorbar([xs[id(b)] for b in spread], [b.score for b in spread], yerr=[low, high], fmt="none",
                        ecolor="black", elinewidth=0.7, capsize=1.8, capthick=0.7, zorder=5)
    stubs = [b for b in bars if not (b.learned and b.score is not None)]
    if stubs:
        # A stub when there is no score: the cell exists but carries no evidence.
        heights = [b.score if b.score is not None else 0.06 for b in stubs]
        ax.bar([xs[id(b)] for b in stubs], heights, width, facecolor="white", edgecolor=GREY, hatch="////",
               linewidth=0.5, zorder=2)
        for b, h in zip(stubs, heights):
            # Above a stub; inside a bar that has a score (the label must not run into the title).
            ax.text(xs[id(b)], h + 0.02 if b.score is None else 0.02, "not learned", rotation=90, ha="center",
                    va="bottom", fontsize=6.5, color="#555555" if b.score is not None else GREY, zorder=4)
    starred = [b for b in bars if b.significant and b.learned and b.score is not None]
    if starred:
        tops = [min(float(b.score) + min(float(b.std or 0.0), 1.0 - float(b.score)) + 0.05, 1.09) for b in starred]
        ax.plot([xs[id(b)] for b in starred], tops, marker="*", markersize=6, color="black", linestyle="none",
                zorder=6)
    ax.set_xlim(-0.55, n_groups - 0.45)
    ax.set_ylim(0.0, 1.12)
    # Gridlines every 0.25, labels every 0.5: fewer texts to lay out, the same reading.
    ax.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0], ["0", "", "0.5", "", "1"])
    ax.set_ylabel("TCAV score")
    ax.set_xticks(range(len(groups)))
    if group_labels:
        if labels is None:
            # About 4.3 pt per character at 7.5 pt; the axes take ~88 % of the figure width.
            chars = max(8, int(PAGE_WIDTH_IN * 72 * 0.88 / n_groups / 4.3))
            labels = ["\n".join(wrap_hard(part, chars, 2) for part in g.split("\n")) for g in groups]
        ax.set_xticklabels(labels)
    else:
        ax.tick_params(axis="x", labelbottom=False)
    ax.tick_params(axis="x", length=0)
    ax.grid(axis="y", color="#E5E5E5", linewidth=0.6, zorder=0)
    ax.set_axisbelow(True)
    ax.set_title(title, loc="left", pad=4)


def _tcav_key() -> tuple[list[Any], list[str]]:
    """Legend entries every TCAV chart shares (the random band, not learned, significance)."""
    handles: list[Any] = [
        (Patch(facecolor=BAND_GREY, linewidth=0),
         Line2D([], [], color="#333333", linestyle=(0, (2.5, 1.5)), linewidth=0.9)),
        Patch(facecolor="white", edgecolor=GREY, hatch="////", linewidth=0.5),
        Line2D([], [], marker="*", linestyle="none", color="black", markersize=6),
    ]
    return handles, list(_TCAV_KEY_LABELS)


def tcav_scores(
    bars: Sequence[TcavBar],
    groups: Sequence[str],
    layers: Sequence[str],
    out: Path,
    *,
    title: str,
) -> Path:
    """Grouped bar chart of TCAV scores: one group per (class, concept), one bar per layer in depth order.

    Error bars are the std over random runs (cut at 0 and 1); a grey box behind each bar with a dashed line
    marks the random-vs-random mean ± std of that cell; a star marks a significant difference from random;
    hatched grey bars are cells whose CAV was not learned (their score, if any, is not evidence).

    Parameters
    ----------
    bars : cells to draw; ``bar.group`` must be in ``groups`` and ``bar.layer`` in ``layers``.
    groups : x-axis groups, left to right; a newline separates parts of a label (each part is wrapped to
        the width a group gets, at most two lines).
    layers : layer names in depth order; one colour each.
    out : path of the SVG file to write.
    title : panel title (the model).

    Returns
    -------
    Path : ``out``.
    """
    with matplotlib.rc_context(_RC):
        n_layers = max(len(layers), 1)
        fig = _new_figure(PAGE_WIDTH_IN, 2.9 + 0.16 * ((n_layers + 3) // 3))
        ax = fig.add_subplot(1, 1, 1)
        _tcav_axes(ax, bars, groups, layers, title=wrap_hard(title, 95, 2))
        handles: list[Any] = [
            Patch(facecolor=OKABE_ITO[i % len(OKABE_ITO)], edgecolor="black", linewidth=0.4)
            for i in range(len(layers))
        ]
        key_handles, key_labels = _tcav_key()
        fig.legend(handles + key_handles, short_labels(layers, 30) + key_labels, loc="outside lower center",
                   ncol=3, frameon=False, handlelength=1.6, columnspacing=1.4)
        return _save(fig, out)


# Text metrics for laying figures out by hand (inches): a line of text at size s is about 1.22 s pt high and a
# character of DejaVu Sans about 0.6 s pt wide on average (digits 0.64); generous, so nothing is clipped.
def _line_in(size: float, lines: int = 1) -> float:
    return lines * 1.22 * size / 72


def _chars_in(size: float, chars: int) -> float:
    return chars * 0.62 * size / 72


def pixel_size(width_in: float, height_in: float) -> tuple[int, int]:
    """(width, height) in pixels of the PNG raster of an uncropped figure of that size (as Agg sizes its canvas)."""
    return int(width_in * RASTER_DPI), int(height_in * RASTER_DPI)


@dataclass(frozen=True)
class _TcavLayout:
    """Where everything of a tcav_models figure goes (inches, top to bottom); its texts, wrapped."""

    titles: tuple[str, ...]
    labels: tuple[str, ...]
    layer_names: tuple[str, ...]
    title_h: tuple[float, ...]
    axes_h: float
    gap: float
    top: float
    left: float
    right: float
    height: float


def _tcav_layout(panels: Sequence[TcavPanel], groups: Sequence[str]) -> _TcavLayout:
    tick, title_size = _RC["xtick.labelsize"], _RC["axes.titlesize"]
    # About 80 characters of the 9 pt title fit the axes' width; a no-break space keeps each number with its
    # layer name when the title wraps.
    titles = tuple(
        wrap_hard(f"{p.title} — layers "
                  + " · ".join(f"{k + 1}\u00a0{label}" for k, label in enumerate(short_labels(p.layers, 28))), 80, 2)
        for p in panels
    )
    chars = max(8, int(PAGE_WIDTH_IN * 72 * 0.88 / max(len(groups), 1) / 4.3))
    labels = tuple("\n".join(wrap_hard(part, chars, 2) for part in g.split("\n")) for g in groups)
    depth = max((len(p.layers) for p in panels), default=0)
    names = tuple(f"layer {i + 1}" + (" (shallowest)" if i == 0 and depth > 1 else " (deepest)" if i == depth - 1
                                      and depth > 1 else "") for i in range(depth))
    legend_rows = -(-(len(names) + len(_TCAV_KEY_LABELS)) // _TCAV_LEGEND_COLUMNS)
    axes_h, gap, top = 1.55, 0.1, 0.05
    title_h = tuple(_line_in(title_size, t.count("\n") + 1) + 0.07 for t in titles)
    xlabels_h = _line_in(tick, max((lab.count("\n") + 1 for lab in labels), default=1)) + 0.1
    legend_h = legend_rows * 1.75 * tick / 72 + 0.1
    height = top + sum(title_h) + len(panels) * axes_h + (len(panels) - 1) * gap + xlabels_h + legend_h
    # Left: the y tick labels ("0.5") and the axis label; right: a little air after the last group.
    left = _chars_in(tick, 3) + _line_in(_RC["axes.labelsize"]) + 0.22
    return _TcavLayout(titles, labels, names, title_h, axes_h, gap, top, left, 0.08, height)


_TCAV_KEY_LABELS = ("random vs random (mean ± std)", "CAV not learned", "significant vs random")
_TCAV_LEGEND_COLUMNS = 3  # the longest key label is about 30 characters: three columns fit the width


def tcav_models_size(panels: Sequence[TcavPanel], groups: Sequence[str]) -> tuple[int, int]:
    """Pixel size of the PNG raster tcav_models(panels, groups, ...) writes, known before it is drawn."""
    return pixel_size(PAGE_WIDTH_IN, _tcav_layout(panels, groups).height)


def tcav_models(panels: Sequence[TcavPanel], groups: Sequence[str], out: Path) -> Path:
    """TCAV scores of several models in one figure: one panel per model, stacked, on the same groups.

    Each panel is the chart of ``tcav_scores``; its title names the model's layers, numbered shallow to deep.
    Layer ``i`` has the same colour in every panel (models name their layers differently, so the colours say
    depth, and one legend below the last panel serves all). The groups are labelled under the last panel only.
    Laid out by hand on a canvas of known size (tcav_models_size): no layout engine, no cropping.

    Parameters
    ----------
    panels : one per model, top to bottom; every ``bar.group`` must be in ``groups``.
    groups : x-axis groups, left to right, shared by all panels (a model without a group leaves it empty).
    out : path of the SVG file to write.

    Returns
    -------
    Path : ``out``.
    """
    with matplotlib.rc_context(_RC):
        lay = _tcav_layout(panels, groups)
        fig = Figure(figsize=(PAGE_WIDTH_IN, lay.height))
        FigureCanvasAgg(fig)
        y = lay.top
        for i, panel in enumerate(panels):
            y += lay.title_h[i]
            ax = fig.add_axes((lay.left / PAGE_WIDTH_IN, 1 - (y + lay.axes_h) / lay.height,
                               1 - (lay.left + lay.right) / PAGE_WIDTH_IN, lay.axes_h / lay.height))
            _tcav_axes(ax, panel.bars, groups, panel.layers, title=lay.titles[i], labels=lay.labels,
                       group_labels=i == len(panels) - 1)
            y += lay.axes_h + lay.gap
        handles: list[Any] = [Patch(facecolor=OKABE_ITO[i % len(OKABE_ITO)], edgecolor="black", linewidth=0.4)
                              for i in range(len(lay.layer_names))]
        key_handles, key_labels = _tcav_key()
        fig.legend(handles + key_handles, [*lay.layer_names, *key_labels], loc="lower center",
                   bbox_to_anchor=(0.5, 0.0), ncol=_TCAV_LEGEND_COLUMNS, frameon=False, handlelength=1.6,
                   columnspacing=1.4, borderaxespad=0.2)
        return _save(fig, out, crop=False)


# Model colours of the figures that put models side by side (the TCAV figures draw one panel per model and
# colour by layer, so roles have no colour there). Blue and orange stay apart in greyscale (dark vs light).
ROLE_COLOURS = {"candidate": "#0072B2", "reference": "#E69F00"}
_OTHER_ROLE_COLOURS = ("#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000")
BAND_COLOUR = "#F2D6CC"  # light vermillion: "the class relies on the artifact"


def role_colours(roles: Sequence[str]) -> dict[str, str]:
    """A colour per model role: candidate blue and reference orange wherever they appear, others in order."""
    spare = iter(_OTHER_ROLE_COLOURS)
    return {r: ROLE_COLOURS.get(r) or next(spare, GREY) for r in roles}


@dataclass(frozen=True)
class AucBar:
    """One bar of the artifact-probe chart: AUC (artifact vs neutral patch) of one class logit in one model."""

    model: str
    cls: str
    auc: float | None
    reliant: bool


@dataclass(frozen=True)
class _AucLayout:
    """Where everything of an artifact_auc figure goes (inches); its texts, wrapped."""

    title: str
    class_labels: tuple[str, ...]
    legend_labels: tuple[str, ...]
    legend_columns: int
    top: float
    axes_h: float
    left: float
    right: float
    height: float


def _auc_layout(classes: Sequence[str], roles: Sequence[str], *, threshold: float, direction: str,
                title: str) -> _AucLayout:
    n_classes, n_roles = max(len(classes), 1), max(len(roles), 1)
    tick = _RC["ytick.labelsize"]
    class_labels = tuple(wrap_hard(c, 22, 2) for c in classes)
    widest = max((len(line) for label in class_labels for line in label.split("\n")), default=1)
    left, right = _chars_in(tick, widest) + 0.14, 0.1
    # The title starts over the axes: wrapped to the width left of them.
    title_chars = int((PAGE_WIDTH_IN - left - right) * 72 / (0.6 * _RC["axes.titlesize"]))
    title_text = wrap_hard(title, title_chars, 2)
    band = f"AUC > {threshold:g}" + (f" or < {1.0 - threshold:g}" if direction == "both" else "")
    legend_labels = (*(shorten(r, 28) for r in roles), "relies on the artifact", f"reliance band ({band})",
                     "no effect (0.5)")
    # One legend row when it fits the width (a handle and its gap are about 0.45 in), else three columns.
    one_row = sum(_chars_in(_RC["legend.fontsize"], len(s)) + 0.45 for s in legend_labels) < PAGE_WIDTH_IN - 0.2
    ncol = len(legend_labels) if one_row else 3
    legend_rows = -(-len(legend_labels) // ncol)
    # Top to bottom: title, the bars, tick labels, the two direction notes and the axis label, the legend.
    top = 0.05 + _line_in(_RC["axes.titlesize"], title_text.count("\n") + 1) + 0.07
    axes_h = min(n_classes * (0.12 * n_roles + 0.1), 8.5 - top - 1.0)
    below = 0.06 + _line_in(tick) + 0.06 + _line_in(7) + 0.04 + _line_in(_RC["axes.labelsize"]) + 0.04
    legend_h = legend_rows * 1.75 * _RC["legend.fontsize"] / 72 + 0.08
    return _AucLayout(title_text, class_labels, legend_labels, ncol, top, axes_h, left, right,
                      top + axes_h + below + legend_h)


def artifact_auc_size(classes: Sequence[str], roles: Sequence[str], *, threshold: float, direction: str,
                      title: str) -> tuple[int, int]:
    """Pixel size of the PNG raster artifact_auc(..., classes, roles, ...) writes, known before it is drawn."""
    return pixel_size(PAGE_WIDTH_IN, _auc_layout(classes, roles, threshold=threshold, direction=direction,
                                                 title=title).height)


def artifact_auc(
    bars: Sequence[AucBar],
    classes: Sequence[str],
    roles: Sequence[str],
    out: Path,
    *,
    threshold: float,
    direction: str,
    title: str,
) -> Path:
    """Horizontal bars of AUC per class, one bar per model, drawn from 0.5 (no effect) to the AUC.

    Shaded bands mark reliance (AUC > ``threshold``; with ``direction == "both"`` also AUC < 1 - threshold);
    reliant bars get a heavy black edge and a bold value. The x axis spans 0..1.

    Parameters
    ----------
    bars : cells to draw; ``bar.cls`` must be in ``classes`` and ``bar.model`` in ``roles``.
    classes : classes top to bottom.
    roles : models, in the order of their bars within a class (top to bottom) and of the legend.
    out : path of the SVG file to write.
    threshold : the reliance threshold (> 0.5).
    direction : "raise" or "both".
    title : panel title.

    Returns
    -------
    Path : ``out``.
    """
    with matplotlib.rc_context(_RC):
        lay = _auc_layout(classes, roles, threshold=threshold, direction=direction, title=title)
        n_classes, n_roles = max(len(classes), 1), max(len(roles), 1)
        title_text, class_labels, legend_labels, height = lay.title, lay.class_labels, lay.legend_labels, lay.height
        fig = Figure(figsize=(PAGE_WIDTH_IN, height))
        FigureCanvasAgg(fig)
        ax = fig.add_axes((lay.left / PAGE_WIDTH_IN, 1 - (lay.top + lay.axes_h) / height,
                           1 - (lay.left + lay.right) / PAGE_WIDTH_IN, lay.axes_h / height))
        colour = role_colours(roles)
        class_y = {c: i for i, c in enumerate(classes)}
        role_i = {r: i for i, r in enumerate(roles)}
        step = 0.8 / n_roles
        low = 1.0 - threshold
        ax.axvspan(threshold, 1.0, facecolor=BAND_COLOUR, linewidth=0, zorder=0)
        if direction == "both":
            ax.axvspan(0.0, low, facecolor=BAND_COLOUR, linewidth=0, zorder=0)
        ax.axvline(0.5, color="#333333", linestyle=(0, (3, 2)), linewidth=0.9, zorder=3)
        value_size = 6.5 if n_classes * n_roles <= 24 else 5.5
        drawn = []
        for bar in bars:
            y = class_y[bar.cls] - 0.4 + step * (role_i[bar.model] + 0.5)
            if bar.auc is None:
                ax.text(0.51, y, "no AUC", ha="left", va="center", fontsize=value_size, color=GREY, zorder=4)
                continue
            auc = float(bar.auc)
            drawn.append((bar, y, auc))
            right = auc >= 0.5
            ax.text(
                auc + (0.012 if right else -0.012), y, f"{auc:.2f}", ha="left" if right else "right", va="center",
                fontsize=value_size, fontweight="bold" if bar.reliant else "normal", zorder=4,
            )
        if drawn:
            # All bars in one call and all end ticks in one collection (one artist per bar is slow to draw).
            edges = ["black" if b.reliant else "#555555" for b, _, _ in drawn]
            ax.barh([y for _, y, _ in drawn], [a - 0.5 for _, _, a in drawn], step * 0.86, left=0.5,
                    color=[colour[b.model] for b, _, _ in drawn], edgecolor=edges,
                    linewidth=[1.6 if b.reliant else 0.4 for b, _, _ in drawn], zorder=2)
            # A short tick at the bar's end keeps an AUC of about 0.5 (a bar of no length) visible.
            ax.add_collection(LineCollection(
                [[(a, y - step * 0.43), (a, y + step * 0.43)] for _, y, a in drawn], colors=edges,
                linewidths=[1.6 if b.reliant else 0.8 for b, _, _ in drawn], capstyle="butt", zorder=3))
        # Room for the value labels beyond 0 and 1; the axis itself spans 0..1.
        ax.set_xlim(-0.07, 1.07)
        ax.spines["bottom"].set_bounds(0.0, 1.0)
        # Ticks where the reading changes: the ends, no effect (0.5) and the reliance threshold(s).
        ax.set_xticks(sorted({0.0, 0.5, 1.0, threshold} | ({low} if direction == "both" else set())))
        ax.set_ylim(n_classes - 0.5, -0.5)
        ax.set_yticks(range(len(classes)))
        ax.set_yticklabels(class_labels)
        ax.tick_params(axis="y", length=0)
        ax.spines["left"].set_visible(False)
        ax.grid(axis="x", color="#E5E5E5", linewidth=0.6, zorder=0)
        for i in range(1, len(classes)):
            ax.axhline(i - 0.5, color="#D5D5D5", linewidth=0.5, zorder=1)
        ax.set_axisbelow(True)
        # Which way is which: a row under the tick labels, the axis label below it.
        ax.set_xlabel("AUC of the class logit, artifact vs neutral patch", labelpad=13)
        ax.annotate("← the artifact lowers the logit", (0.0, 0.0), xycoords=("data", "axes fraction"),
                    xytext=(0, -15), textcoords="offset points", ha="left", va="top", fontsize=7, color="#555555")
        ax.annotate("the artifact raises the logit →", (1.0, 0.0), xycoords=("data", "axes fraction"),
                    xytext=(0, -15), textcoords="offset points", ha="right", va="top", fontsize=7, color="#555555")
        ax.set_title(title_text, loc="left", pad=4)
        handles: list[Any] = [Patch(facecolor=colour[r], edgecolor="#555555", linewidth=0.4) for r in roles]
        handles += [
            Patch(facecolor="white", edgecolor="black", linewidth=1.6),
            Patch(facecolor=BAND_COLOUR, linewidth=0),
            Line2D([], [], color="#333333", linestyle=(0, (3, 2)), linewidth=0.9),
        ]
        fig.legend(handles, legend_labels, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=lay.legend_columns,
                   frameon=False, handlelength=1.6, columnspacing=1.4, borderaxespad=0.2)
        return _save(fig, out, crop=False)
