"""The exchangeability test's null, drawn: per (model, layer, class), the pseudo-concepts' statistic as a
histogram, the centre it is measured from, and each concept's value marked with its p-value — so a reviewer sees
why a cell is or is not significant (a concept far out in the tail of its pseudo-concepts is; one inside is not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from auditor.report.figures.common import _RC, GREY, LIGHT_GREY, OKABE_ITO, PAGE_WIDTH_IN, _save, pixel_size

COLUMNS = 3
PANEL_H_IN = 1.55
TITLE_H_IN = 0.42
KEY_H_IN = 0.3


@dataclass(frozen=True)
class Mark:
    concept: str
    value: float
    p: float | None
    significant: bool


@dataclass(frozen=True)
class NullPanel:
    title: str  # e.g. "candidate · layer 2 · triangle"
    values: tuple[float, ...]  # the pseudo-concepts' statistic
    centre: float  # 0.5 for the TCAV score, 0 for the cosine
    marks: tuple[Mark, ...]  # the concepts of the cell


def _height(n: int) -> float:
    rows = -(-n // COLUMNS)
    return rows * (PANEL_H_IN + TITLE_H_IN) + KEY_H_IN


def null_size(panels: Sequence[NullPanel]) -> tuple[int, int]:
    """Pixel size of the PNG raster `null_distributions` writes, known before it is drawn."""
    return pixel_size(PAGE_WIDTH_IN, _height(len(panels)))


def null_distributions(panels: Sequence[NullPanel], concepts: Sequence[str], statistic: str, out: Path,
                       keyed: Sequence[str] | None = None) -> Path:
    """One small histogram per panel, laid out by hand (3 per row) on a canvas of known size.

    Parameters
    ----------
    panels : one per (model, layer, class), in report order.
    concepts : every concept of the check, in order: concept i has colour i in every panel.
    statistic : axis label (e.g. "TCAV score").
    out : the SVG path to write.
    keyed : the concepts the key lists (default all).
    """
    height = _height(len(panels))
    colours = {c: OKABE_ITO[i % len(OKABE_ITO)] for i, c in enumerate(concepts)}
    with matplotlib.rc_context({**_RC, "font.size": 7.0, "axes.titlesize": 7.5, "xtick.labelsize": 6.5,
                                "ytick.labelsize": 6.5, "axes.labelsize": 7.0}):
        fig = Figure(figsize=(PAGE_WIDTH_IN, height))
        FigureCanvasAgg(fig)
        width = PAGE_WIDTH_IN / COLUMNS
        for i, p in enumerate(panels):
            row, col = divmod(i, COLUMNS)
            top = row * (PANEL_H_IN + TITLE_H_IN) + TITLE_H_IN
            ax = fig.add_axes(((col * width + 0.32) / PAGE_WIDTH_IN, 1 - (top + PANEL_H_IN - 0.28) / height,
                               (width - 0.45) / PAGE_WIDTH_IN, (PANEL_H_IN - 0.36) / height))
            values = np.asarray(p.values, np.float64)
            everything = np.concatenate([values, [m.value for m in p.marks], [p.centre]])
            lo, hi = float(everything.min()), float(everything.max())
            pad = 0.05 * (hi - lo) if hi > lo else 0.05
            ax.hist(values, bins=30, range=(lo - pad, hi + pad), color=LIGHT_GREY, edgecolor=GREY, linewidth=0.3)
            ax.axvline(p.centre, color="black", linestyle=":", linewidth=0.8)
            for m in p.marks:
                style = "-" if m.significant else "--"
                ax.axvline(m.value, color=colours.get(m.concept, "black"), linestyle=style, linewidth=1.4)
                # Two-sided: the pseudo-concepts at least as far from the centre on the other side count too.
                ax.axvline(2 * p.centre - m.value, color=colours.get(m.concept, "black"), linestyle=":",
                           linewidth=0.6, alpha=0.7)
            ax.set_xlim(min(lo, 2 * p.centre - hi) - pad, max(hi, 2 * p.centre - lo) + pad)
            ps = "; ".join(f"{m.concept} p {m.p:.2g}" if m.p is not None else f"{m.concept} —" for m in p.marks)
            ax.set_title(f"{p.title}\n{ps}", loc="left", pad=3, fontsize=6.5)
            ax.set_yticks([])
            ax.set_xlabel(statistic, labelpad=1)
        keyed = list(concepts if keyed is None else keyed)
        handles: list = [Line2D([], [], color=colours[c], linewidth=1.4) for c in keyed]
        handles += [Line2D([], [], color="black", linestyle=":", linewidth=0.8),
                    Patch(facecolor=LIGHT_GREY, edgecolor=GREY, linewidth=0.3)]
        labels = [*keyed, "centre (no sensitivity)", "pseudo-concepts"]
        fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(labels), 6),
                   frameon=False, handlelength=1.6, columnspacing=1.2, borderaxespad=0.1)
        return _save(fig, out, crop=False)
