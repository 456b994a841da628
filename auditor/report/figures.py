"""Report figures: plain data in, one reproducible SVG file (and its PNG raster, for the PDF) out.

Every function here is pure in the sense that matters for a signed report: it takes plain values and an output
path, writes exactly that file (plus the PNG raster next to it, see raster_path) and returns its path; the same
input gives the same bytes. Nothing reads
results.json and nothing imports pyplot, so no GUI backend or global figure state is ever involved.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import PIL.Image
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

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


@dataclass(frozen=True)
class AccuracyPanel:
    """CAV accuracies of one model: ``lines[concept][i]`` is the accuracy at ``layers[i]`` (None: not run)."""

    title: str
    layers: tuple[str, ...]
    lines: Mapping[str, Sequence[float | None]]


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
# SVG of a matplotlib figure, every glyph a path, about 100 times slower than it places a bitmap).
RASTER_DPI = 200


def raster_path(svg: Path) -> Path:
    """The PNG raster written next to the SVG figure ``svg`` (``x.svg`` -> ``x.png``)."""
    return Path(svg).with_suffix(".png")


def _save(fig: Figure, out: Path) -> Path:
    """Write ``fig`` as the SVG ``out`` and, for the PDF, as the PNG raster next to it; both reproducible.

    The figure is drawn twice in all: once by Agg at RASTER_DPI (which runs the constrained layout, gives the
    tight bounding box and is the PNG, cropped to that box) and once as SVG within the same box.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.set_dpi(RASTER_DPI)
    canvas = fig.canvas
    canvas.draw()
    bbox = fig.get_tightbbox(canvas.get_renderer()).padded(0.04)  # inches, what bbox_inches="tight" would use
    fig.set_layout_engine(None)  # keep the layout just computed: the SVG is drawn with the same one
    pixels = np.asarray(canvas.buffer_rgba())
    height = pixels.shape[0]
    x0, y0, x1, y1 = (int(round(v * RASTER_DPI)) for v in bbox.extents)
    crop = pixels[max(height - y1, 0): height - max(y0, 0), max(x0, 0): x1, :3]
    # No text chunks (Software, dates): the same figure gives the same PNG bytes.
    PIL.Image.fromarray(np.ascontiguousarray(crop), "RGB").save(
        raster_path(out), format="png", dpi=(RASTER_DPI, RASTER_DPI))
    # Metadata Date=None: no timestamp in the file, so re-rendering gives identical bytes.
    fig.savefig(out, format="svg", metadata={"Date": None}, bbox_inches=bbox)
    return out


def _new_figure(width: float, height: float) -> Figure:
    # Constrained layout keeps legends placed "outside" from overlapping rotated tick labels.
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def tcav_scores(
    bars: Sequence[TcavBar],
    groups: Sequence[str],
    layers: Sequence[str],
    out: Path,
    *,
    title: str,
) -> Path:
    """Grouped bar chart of TCAV scores: one group per (class, concept), one bar per layer in depth order.

    Error bars are the std over random runs; a grey band with a dashed line marks the random-vs-random mean
    ± std of that cell; a star marks a significant difference from random; hatched grey bars are cells whose
    CAV was not learned (their score, if any, is not evidence).

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
        n_groups, n_layers = max(len(groups), 1), max(len(layers), 1)
        fig = _new_figure(PAGE_WIDTH_IN, 2.9 + 0.16 * ((n_layers + 3) // 3))
        ax = fig.add_subplot(1, 1, 1)
        group_x = {g: i for i, g in enumerate(groups)}
        layer_i = {lay: i for i, lay in enumerate(layers)}
        width = 0.8 / n_layers
        for bar in bars:
            i = layer_i[bar.layer]
            x = group_x[bar.group] - 0.4 + width * (i + 0.5)
            color = OKABE_ITO[i % len(OKABE_ITO)]
            if bar.learned and bar.score is not None:
                ax.bar(x, bar.score, width * 0.92, color=color, edgecolor="black", linewidth=0.4, zorder=2)
            else:
                # A stub when there is no score: the cell exists but carries no evidence.
                height = bar.score if bar.score is not None else 0.06
                ax.bar(
                    x, height, width * 0.92, facecolor="white", edgecolor=GREY, hatch="////",
                    linewidth=0.5, zorder=2,
                )
                ax.text(x, height + 0.02, "not learned", rotation=90, ha="center", va="bottom",
                        fontsize=6.5, color=GREY, zorder=4)
            if bar.random_mean is not None:
                spread = bar.random_std or 0.0
                ax.add_patch(Rectangle(
                    (x - width / 2, bar.random_mean - spread), width, 2 * spread,
                    facecolor=GREY, alpha=0.35, linewidth=0, zorder=3,
                ))
                ax.plot([x - width / 2, x + width / 2], [bar.random_mean] * 2, color="#333333",
                        linestyle=(0, (2.5, 1.5)), linewidth=0.9, zorder=3)
            top = bar.score if bar.score is not None else 0.0
            if bar.learned and bar.score is not None and bar.std:
                ax.errorbar(x, bar.score, yerr=bar.std, fmt="none", ecolor="black", elinewidth=0.7,
                            capsize=1.8, capthick=0.7, zorder=4)
                top += bar.std
            if bar.significant and bar.learned:
                ax.plot([x], [min(top + 0.05, 1.09)], marker="*", markersize=6, color="black",
                        linestyle="none", zorder=5)
        ax.set_xlim(-0.55, n_groups - 0.45)
        ax.set_ylim(0.0, 1.14)
        ax.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0])
        ax.set_ylabel("TCAV score")
        ax.set_xticks(range(len(groups)))
        # About 4.3 pt per character at 7.5 pt; the axes take ~88 % of the figure width.
        chars = max(8, int(PAGE_WIDTH_IN * 72 * 0.88 / n_groups / 4.3))
        ax.set_xticklabels(["\n".join(wrap_hard(part, chars, 2) for part in g.split("\n")) for g in groups])
        ax.tick_params(axis="x", length=0)
        ax.grid(axis="y", color="#E5E5E5", linewidth=0.6, zorder=0)
        ax.set_axisbelow(True)
        ax.set_title(wrap_hard(title, 95, 2), loc="left")
        layer_labels = short_labels(layers, 30)
        handles: list[Any] = [
            Patch(facecolor=OKABE_ITO[i % len(OKABE_ITO)], edgecolor="black", linewidth=0.4)
            for i in range(len(layers))
        ]
        handles += [
            (Patch(facecolor=GREY, alpha=0.35, linewidth=0),
             Line2D([], [], color="#333333", linestyle=(0, (2.5, 1.5)), linewidth=0.9)),
            Patch(facecolor="white", edgecolor=GREY, hatch="////", linewidth=0.5),
            Line2D([], [], marker="*", linestyle="none", color="black", markersize=6),
        ]
        labels = layer_labels + ["random vs random (mean ± std)", "CAV not learned", "significant vs random"]
        fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False, handlelength=1.6,
                   columnspacing=1.4)
        return _save(fig, out)


def cav_accuracy(panels: Sequence[AccuracyPanel], out: Path, *, threshold: float = 0.6) -> Path:
    """Line chart of CAV accuracy by layer, one panel per model, one line per concept.

    A dashed line marks ``threshold`` (below it the CAV counts as not learned), a dotted one chance (0.5).

    Returns
    -------
    Path : ``out``.
    """
    with matplotlib.rc_context(_RC):
        n = max(len(panels), 1)
        fig = _new_figure(PAGE_WIDTH_IN, 2.3)
        axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
        concepts: list[str] = []
        for p in panels:
            concepts += [c for c in p.lines if c not in concepts]
        colour = {c: OKABE_ITO[(i + 3) % len(OKABE_ITO)] for i, c in enumerate(concepts)}
        markers = ("o", "s", "^", "D", "v", "P", "X", "*")
        for ax, panel in zip(axes, panels):
            xs = list(range(len(panel.layers)))
            for concept, accs in panel.lines.items():
                ci = concepts.index(concept)
                # A small sideways offset per concept keeps equal accuracies from hiding each other.
                dodge = 0.06 * (ci - (len(concepts) - 1) / 2)
                pts = [(x + dodge, a) for x, a in zip(xs, accs) if a is not None]
                if not pts:
                    continue
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colour[concept],
                        marker=markers[ci % len(markers)], markersize=4, linewidth=1.2, label=concept)
            ax.axhline(threshold, color="#333333", linestyle=(0, (3, 2)), linewidth=0.8)
            ax.axhline(0.5, color=GREY, linestyle=":", linewidth=0.8)
            ax.set_xticks(xs)
            ax.set_xticklabels(short_labels(panel.layers, 20), rotation=25, ha="right", rotation_mode="anchor")
            ax.set_xlim(-0.4, max(len(xs) - 0.6, 0.4))
            ax.set_ylim(0.4, 1.02)
            ax.set_title(wrap_hard(panel.title, 45, 2), loc="left")
            ax.grid(axis="y", color="#E5E5E5", linewidth=0.6)
            ax.set_axisbelow(True)
        axes[0].set_ylabel("CAV accuracy (held out)")
        handles = [Line2D([], [], color=colour[c], marker=markers[i % len(markers)], markersize=4,
                          linewidth=1.2) for i, c in enumerate(concepts)]
        handles += [Line2D([], [], color="#333333", linestyle=(0, (3, 2)), linewidth=0.8),
                    Line2D([], [], color=GREY, linestyle=":", linewidth=0.8)]
        labels = [shorten(c, 28) for c in concepts] + [f"learned threshold ({threshold:g})", "chance (0.5)"]
        fig.legend(handles, labels, loc="outside lower center", ncol=4, frameon=False)
        return _save(fig, out)


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
        n_classes, n_roles = max(len(classes), 1), max(len(roles), 1)
        height = min(1.25 + n_classes * (0.17 * n_roles + 0.13), 8.5)
        fig = _new_figure(PAGE_WIDTH_IN, height)
        ax = fig.add_subplot(1, 1, 1)
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
        for bar in bars:
            y = class_y[bar.cls] - 0.4 + step * (role_i[bar.model] + 0.5)
            if bar.auc is None:
                ax.text(0.51, y, "no AUC", ha="left", va="center", fontsize=value_size, color=GREY, zorder=4)
                continue
            auc = float(bar.auc)
            ax.barh(
                y, auc - 0.5, step * 0.86, left=0.5, color=colour[bar.model],
                edgecolor="black" if bar.reliant else "#555555", linewidth=1.6 if bar.reliant else 0.4, zorder=2,
            )
            # A short tick at the bar's end keeps an AUC of about 0.5 (a bar of no length) visible.
            ax.plot([auc, auc], [y - step * 0.43, y + step * 0.43], color="black" if bar.reliant else "#555555",
                    linewidth=1.6 if bar.reliant else 0.8, solid_capstyle="butt", zorder=3)
            right = auc >= 0.5
            ax.text(
                auc + (0.012 if right else -0.012), y, f"{auc:.2f}", ha="left" if right else "right", va="center",
                fontsize=value_size, fontweight="bold" if bar.reliant else "normal", zorder=4,
            )
        # Room for the value labels beyond 0 and 1; the axis itself spans 0..1.
        ax.set_xlim(-0.07, 1.07)
        ax.spines["bottom"].set_bounds(0.0, 1.0)
        ax.set_xticks([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
        ax.set_ylim(n_classes - 0.5, -0.5)
        ax.set_yticks(range(len(classes)))
        ax.set_yticklabels([wrap_hard(c, 22, 2) for c in classes])
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
        ax.set_title(wrap_hard(title, 95, 2), loc="left")
        band = f"AUC > {threshold:g}" + (f" or < {low:g}" if direction == "both" else "")
        handles: list[Any] = [Patch(facecolor=colour[r], edgecolor="#555555", linewidth=0.4) for r in roles]
        handles += [
            Patch(facecolor="white", edgecolor="black", linewidth=1.6),
            Patch(facecolor=BAND_COLOUR, linewidth=0),
            Line2D([], [], color="#333333", linestyle=(0, (3, 2)), linewidth=0.9),
        ]
        labels = [shorten(r, 28) for r in roles] + [
            "relies on the artifact", f"reliance band ({band})", "no effect (0.5)",
        ]
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(handles), 6), frameon=False,
                   handlelength=1.6, columnspacing=1.4)
        return _save(fig, out)
