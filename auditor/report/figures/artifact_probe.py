"""Artifact probe figure: AUC bars per class and model against the reliance band."""

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
    _RC, BAND_COLOUR, GREY, PAGE_WIDTH_IN, _chars_in, _line_in, _save, pixel_size, role_colours,
    shorten, wrap_hard,
)


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


def _draw_auc_bars(ax: Any, bars: Sequence[AucBar], class_y: dict[str, int], role_i: dict[str, int], step: float,
                   colour: dict[str, str], value_size: float) -> None:
    """The bars of artifact_auc, from 0.5 to each AUC, with their values and end ticks."""
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
        _draw_auc_bars(ax, bars, class_y, role_i, step, colour, value_size)
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
