"""INVERT figures: every unit's held-out AUC at a glance, a flagged unit's activations with vs without its formula,
and its top-activating probe images. Plain values in, one reproducible file out (see auditor.report.figures).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.lines import Line2D

from auditor.report.figures.common import (
    _RC,
    GREY,
    LIGHT_GREY,
    PAGE_WIDTH_IN,
    RASTER_DPI,
    _new_figure,
    _save,
    decode_png,
    grid_shape,
    panel_grid,
    short_labels,
    wrap_hard,
    written_whole,
)

FLAG_COLOUR = "#D55E00"  # vermillion: flagged (a forbidden concept explains the unit)
FORBIDDEN_COLOUR = "#E69F00"  # orange: a forbidden concept in the formula, below the flag bar
WITH_COLOUR = "#0072B2"  # blue: images where the formula holds
WITHOUT_COLOUR = "#7F7F7F"  # grey: the rest


@dataclass(frozen=True)
class UnitDot:
    """One unit in the overview: its row (model, layer), held-out AUC, and what its formula uses."""

    model: str
    layer: str
    auc: float | None
    forbidden: bool  # the best formula uses a forbidden concept
    flagged: bool


def unit_overview(dots: Sequence[UnitDot], rows: Sequence[tuple[str, str]], out: Path, *, tau: float) -> Path:
    """One row per (model, layer); one dot per unit at the held-out AUC of its best formula.

    Flagged units are large vermillion diamonds, units whose formula uses a forbidden concept without reaching
    the flag bar are orange rings, all others small grey dots; a dashed line marks tau.
    """
    with matplotlib.rc_context(_RC):
        n = max(len(rows), 1)
        fig = _new_figure(PAGE_WIDTH_IN, min(1.2 + 0.42 * n, 8.0))
        ax = fig.add_subplot(1, 1, 1)
        row_y = {r: i for i, r in enumerate(rows)}
        jitter = np.random.default_rng(0)  # fixed: the same figure for the same input
        for kind in ("plain", "forbidden", "flagged"):  # flagged on top
            xs, ys = [], []
            for d in dots:
                if d.auc is None or (d.model, d.layer) not in row_y:
                    continue
                k = "flagged" if d.flagged else "forbidden" if d.forbidden else "plain"
                if k == kind:
                    xs.append(d.auc)
                    ys.append(row_y[(d.model, d.layer)] + jitter.uniform(-0.22, 0.22))
            if kind == "plain":
                ax.scatter(xs, ys, s=9, color=GREY, alpha=0.6, linewidths=0, zorder=2)
            elif kind == "forbidden":
                ax.scatter(xs, ys, s=26, facecolors="none", edgecolors=FORBIDDEN_COLOUR, linewidths=1.1, zorder=3)
            else:
                ax.scatter(xs, ys, s=34, marker="D", color=FLAG_COLOUR, edgecolors="black", linewidths=0.5, zorder=4)
        ax.axvline(tau, color="#333333", linestyle=(0, (3, 2)), linewidth=0.9, zorder=1)
        ax.axvline(0.5, color=LIGHT_GREY, linewidth=0.7, zorder=1)
        ax.set_xlim(0.0, 1.02)
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_yticks(range(len(rows)))
        layer_names = short_labels([layer for _m, layer in rows], 28)
        ax.set_yticklabels([f"{m}\n{lab}" for (m, _l), lab in zip(rows, layer_names)])
        ax.tick_params(axis="y", length=0)
        for i in range(1, len(rows)):
            ax.axhline(i - 0.5, color="#D5D5D5", linewidth=0.5, zorder=0)
        ax.grid(axis="x", color="#E5E5E5", linewidth=0.6, zorder=0)
        ax.set_axisbelow(True)
        ax.set_xlabel("held-out AUC of the unit's best formula")
        handles = [
            Line2D([], [], marker="D", linestyle="none", color=FLAG_COLOUR, markeredgecolor="black", markersize=5.5),
            Line2D([], [], marker="o", linestyle="none", markerfacecolor="none", markeredgecolor=FORBIDDEN_COLOUR,
                   markersize=5.5),
            Line2D([], [], marker="o", linestyle="none", color=GREY, alpha=0.6, markersize=3.5),
            Line2D([], [], color="#333333", linestyle=(0, (3, 2)), linewidth=0.9),
        ]
        labels = ["flagged unit", "forbidden concept, below the bar", "other unit", f"tau = {tau:g}"]
        fig.legend(handles, labels, loc="outside lower center", ncol=4, frameon=False, handlelength=1.4)
        return _save(fig, out)


@dataclass(frozen=True)
class DistPanel:
    """Held-out activation counts of one unit over shared bins, with and without its formula."""

    title: str
    edges: tuple[float, ...]
    with_formula: tuple[int, ...]
    without_formula: tuple[int, ...]
    auc: float | None


def unit_distributions(panels: Sequence[DistPanel], out: Path, *, title: str) -> Path:
    """Small multiples: per unit, the share of held-out images per activation bin, with vs without the formula.

    Shares (not counts) so that the smaller group is visible; well separated distributions are a real AUC.
    """
    with matplotlib.rc_context(_RC):
        rows, cols = grid_shape(len(panels))
        fig = _new_figure(PAGE_WIDTH_IN, 0.5 + 1.75 * rows)
        for i, ax, p in panel_grid(fig, panels, rows, cols)[1]:
            edges = np.asarray(p.edges, float)
            for counts, colour in ((p.without_formula, WITHOUT_COLOUR), (p.with_formula, WITH_COLOUR)):
                c = np.asarray(counts, float)
                share = c / c.sum() if c.sum() else c
                ax.stairs(share, edges, fill=True, color=colour, alpha=0.35, linewidth=0)
                ax.stairs(share, edges, color=colour, linewidth=1.1)
            ax.set_title(wrap_hard(p.title, 34, 3), loc="left", fontsize=7)
            if p.auc is not None:
                ax.text(0.98, 0.95, f"AUC {p.auc:.2f}", transform=ax.transAxes, ha="right", va="top", fontsize=7)
            ax.set_yticks([])
            ax.spines["left"].set_visible(False)
            ax.tick_params(axis="x", labelsize=6.5)
            if i >= len(panels) - cols:  # the bottom panel of each column
                ax.set_xlabel("activation (held-out images)", fontsize=7)
        handles = [Line2D([], [], color=c, linewidth=1.6) for c in (WITH_COLOUR, WITHOUT_COLOUR)]
        fig.legend(handles, ["formula holds", "formula does not hold"], loc="outside lower center", ncol=2,
                   frameon=False)
        fig.suptitle(wrap_hard(title, 95, 2), x=0.01, ha="left", fontsize=9)
        return _save(fig, out)


@dataclass(frozen=True)
class TopRow:
    """One unit's top images: base64 PNG thumbnails, their activations, whether the formula holds for each."""

    label: str
    images: tuple[str, ...]
    activations: tuple[float, ...]
    holds: tuple[bool, ...]



def top_images(rows: Sequence[TopRow], out: Path) -> Path:
    """PNG grid: one row per unit (label on the left), its top-activating probe images left to right; a blue
    frame marks images where the unit's formula holds, a grey one those where it does not."""
    with matplotlib.rc_context(_RC):
        n_rows = max(len(rows), 1)
        n_cols = max((len(r.images) for r in rows), default=1)
        label_w = 1.7
        cell = min(0.62, (PAGE_WIDTH_IN - label_w) / max(n_cols, 1))
        fig = _new_figure(label_w + cell * n_cols, 0.15 + (cell + 0.2) * n_rows)
        fig.set_layout_engine(None)
        width, height = fig.get_size_inches()
        for r, row in enumerate(rows):
            top = 1 - (0.08 + r * (cell + 0.2)) / height
            fig.text(0.01, top - cell / 2 / height, wrap_hard(row.label, 34, 4), ha="left", va="center", fontsize=6.5)
            for c, (png, act, holds) in enumerate(zip(row.images, row.activations, row.holds)):
                left = (label_w + c * cell) / width
                ax = fig.add_axes((left, top - cell / height, cell * 0.92 / width, cell * 0.92 / height))
                ax.imshow(decode_png(png), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                colour = WITH_COLOUR if holds else WITHOUT_COLOUR
                for spine in ax.spines.values():
                    spine.set_visible(True)
                    spine.set_color(colour)
                    spine.set_linewidth(2.0 if holds else 0.8)
                ax.set_xlabel(f"{act:.3g}", fontsize=5.5, labelpad=1)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        # PNG only (an image grid); no Software/date text chunks, so the same input gives the same bytes.
        with written_whole(out) as partial:
            fig.savefig(partial, format="png", dpi=RASTER_DPI, metadata={"Software": None})
        return out

