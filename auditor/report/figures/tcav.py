"""TCAV figures: score bars per layer against the random-vs-random band, one panel per model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from auditor.report.figures.common import (
    _RC, BAND_GREY, GREY, OKABE_ITO, PAGE_WIDTH_IN, _chars_in, _line_in, _new_figure, _save, pixel_size,
    short_labels, wrap_hard,
)


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


