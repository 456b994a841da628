"""RSVC figures: similarity-vs-importance scatter with named quadrants, concept galleries and collages (PNG image
grids), real-vs-predicted scatters, and the layerwise mean-max similarity heat map.

Module-level functions of plain values (they may run in another process, see auditor.report.workers); each writes
one file (SVG plots also get their PNG raster through figures.common._save) and returns its path.
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
from matplotlib.patches import Patch, Rectangle

from auditor.report.figures.common import (
    _RC, _save, GREY, LIGHT_GREY, PAGE_WIDTH_IN, MatrixPanel, decode_png, grid_shape, matrix_axes, panel_grid,
    role_colours, save_png_only, shorten, wrap_hard,
)

# The quadrant a reviewer looks for first: a concept one model relies on and the other does not represent.
UNIQUE_IMPORTANT_FILL = "#F6D5C6"
COLLAGE_COLOURS = {"top": "#0072B2", "over": "#D55E00", "under": "#009E73"}


@dataclass(frozen=True)
class ConceptPoint:
    """One concept of one model: its similarity in the other model, its self baseline and its importance."""

    concept: int
    similarity: float
    self_similarity: float
    importance: float
    unique: bool
    important: bool


@dataclass(frozen=True)
class ScatterPanel:
    title: str
    role: str
    points: tuple[ConceptPoint, ...]


def quadrant(unique: bool, important: bool) -> str:
    """The quadrant's name as the report prints it."""
    return ("unique" if unique else "shared") + " & " + ("important" if important else "not important")


def similarity_importance(panels: Sequence[ScatterPanel], out: Path, *, tau_sim: float, tau_imp: float) -> Path:
    """One panel per direction: x = similarity of the model's concept in the other model (held-out Pearson),
    y = normalised importance; a hollow grey marker at the concept's self similarity (what the model itself
    reaches), joined to the point. Dashed lines at tau_sim and tau_imp cut the four named quadrants; the
    unique-and-important one is shaded."""
    with matplotlib.rc_context(_RC):
        n = max(len(panels), 1)
        fig = Figure(figsize=(PAGE_WIDTH_IN, 3.05), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, n, sharey=True, squeeze=False)[0]
        colours = role_colours([p.role for p in panels])
        xmin = min([-0.1] + [min(pt.similarity, pt.self_similarity) - 0.05 for p in panels for pt in p.points])
        for ax, panel in zip(axes, panels):
            ax.add_patch(Rectangle((xmin, tau_imp), tau_sim - xmin, 1.12 - tau_imp, facecolor=UNIQUE_IMPORTANT_FILL,
                                   linewidth=0, zorder=0))
            ax.axvline(tau_sim, color="#333333", linestyle=(0, (3, 2)), linewidth=0.8, zorder=1)
            ax.axhline(tau_imp, color="#333333", linestyle=(0, (3, 2)), linewidth=0.8, zorder=1)
            ax.axhline(0.0, color=LIGHT_GREY, linewidth=0.6, zorder=1)
            for text, x, y, ha, va in (
                ("unique &\nimportant", xmin + 0.01, 1.1, "left", "top"),
                ("shared &\nimportant", 1.04, 1.1, "right", "top"),
                ("unique &\nnot important", xmin + 0.01, -1.1, "left", "bottom"),
                ("shared &\nnot important", 1.04, -1.1, "right", "bottom"),
            ):
                ax.text(x, y, text, ha=ha, va=va, fontsize=6.5, color="#555555", zorder=2)
            for pt in panel.points:
                ax.plot([pt.similarity, pt.self_similarity], [pt.importance] * 2, color=LIGHT_GREY, linewidth=0.8,
                        zorder=2)
                ax.plot([pt.self_similarity], [pt.importance], marker="o", markersize=4.2, markerfacecolor="white",
                        markeredgecolor=GREY, markeredgewidth=0.8, linestyle="none", zorder=3)
                flagged = pt.unique and pt.important
                ax.plot([pt.similarity], [pt.importance], marker="o", markersize=6.5 if flagged else 5,
                        color=colours[panel.role], markeredgecolor="black", markeredgewidth=1.4 if flagged else 0.4,
                        linestyle="none", zorder=4)
                ax.annotate(f"#{pt.concept}", (pt.similarity, pt.importance), xytext=(3, 3), textcoords="offset points",
                            fontsize=6.5, fontweight="bold" if flagged else "normal", zorder=5)
            ax.set_xlim(xmin, 1.05)
            ax.set_ylim(-1.12, 1.12)
            ax.set_xlabel("similarity in the other model (held-out Pearson)")
            ax.set_title(wrap_hard(panel.title, 48, 2), loc="left")
            ax.grid(color="#EEEEEE", linewidth=0.5, zorder=0)
            ax.set_axisbelow(True)
        axes[0].set_ylabel("importance (normalised IG of −CE)")
        handles = [Line2D([], [], marker="o", color=colours[p.role], markeredgecolor="black", markeredgewidth=0.4,
                          linestyle="none", markersize=5) for p in panels]
        labels = [f"{shorten(p.role, 20)}'s concepts" for p in panels]
        handles += [
            Line2D([], [], marker="o", markerfacecolor="white", markeredgecolor=GREY, linestyle="none", markersize=4.2),
            Patch(facecolor=UNIQUE_IMPORTANT_FILL, linewidth=0),
            Line2D([], [], color="#333333", linestyle=(0, (3, 2)), linewidth=0.8),
        ]
        labels += ["self similarity (ceiling)", "unique & important", f"τ_sim = {tau_sim:g}, τ_imp = {tau_imp:g}"]
        fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False, columnspacing=1.2,
                   handlelength=1.4)
        return _save(fig, out)


# ------------------------------------------------------------------------------------------------ image grids



def tile(pngs: Sequence[str], columns: int, rows: int, scale: int = 4, gap: int = 2) -> np.ndarray:
    """Patches (base64 PNGs, any sizes) as one RGB grid image: each patch enlarged `scale` times (nearest, so a
    pixel stays a pixel), white gaps; empty cells stay light grey."""
    cells = [decode_png(p) for p in pngs[: columns * rows]]
    h = max([c.shape[0] for c in cells], default=8) * scale
    w = max([c.shape[1] for c in cells], default=8) * scale
    grid = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), 255, np.uint8)
    for i in range(columns * rows):
        r, c = divmod(i, columns)
        y, x = r * (h + gap), c * (w + gap)
        if i < len(cells):
            big = np.kron(cells[i], np.ones((scale, scale, 1), np.uint8))
            grid[y : y + big.shape[0], x : x + big.shape[1]] = big
        else:
            grid[y : y + h, x : x + w] = 235
    return grid


@dataclass(frozen=True)
class GalleryRow:
    """One concept in a gallery: its label and its top patches (base64 PNG), best first."""

    label: str
    pngs: tuple[str, ...]
    flagged: bool  # unique and important


def concept_gallery(columns: Sequence[tuple[str, Sequence[GalleryRow]]], out: Path, *, per_row: int) -> Path:
    """Concepts side by side per model: each row a concept, its `per_row` top evaluation patches (one per image)."""
    with matplotlib.rc_context(_RC):
        n_rows = max([len(rows) for _, rows in columns], default=1)
        fig = Figure(figsize=(PAGE_WIDTH_IN, 0.2 + 0.47 * n_rows), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(n_rows, len(columns), squeeze=False)
        for c, (title, rows) in enumerate(columns):
            for r in range(n_rows):
                ax = axes[r][c]
                ax.set_xticks([])
                ax.set_yticks([])
                for side in ax.spines.values():
                    side.set_visible(False)
                if r >= len(rows):
                    ax.set_visible(False)
                    continue
                row = rows[r]
                ax.imshow(tile(row.pngs, per_row, 1, scale=2, gap=1), interpolation="nearest")
                ax.set_ylabel(row.label, rotation=0, ha="right", va="center", fontsize=6.5,
                              fontweight="bold" if row.flagged else "normal",
                              color="#9B1C13" if row.flagged else "black")
                if r == 0:
                    ax.set_title(wrap_hard(title, 42, 2), loc="left", fontsize=8)
        return save_png_only(fig, out)


def concept_detail(
    top: Sequence[str], over: Sequence[str], under: Sequence[str], real: Sequence[float],
    predicted: Sequence[float], marks: dict[str, Sequence[tuple[float, float]]], out: Path, *, title: str,
    similarity: float, other: str,
) -> Path:
    """The RSVC figure of one concept: the concept (top 9 patches), patches the other model over-predicts and
    under-predicts (3 x 3 each), and real vs predicted coefficients on all evaluation patches with y = x."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(PAGE_WIDTH_IN, 2.15), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1, 1, 1, 1.25]})
        for ax, pngs, name, key in (
            (axes[0], top, "concept: top patches", "top"),
            (axes[1], over, f"over-predicted by {shorten(other, 14)}", "over"),
            (axes[2], under, f"under-predicted by {shorten(other, 14)}", "under"),
        ):
            ax.imshow(tile(pngs, 3, 3, scale=3, gap=2), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_edgecolor(COLLAGE_COLOURS[key])
                side.set_linewidth(1.6)
                side.set_visible(True)
            ax.set_title(wrap_hard(name, 22, 2), fontsize=7, color=COLLAGE_COLOURS[key])
        ax = axes[3]
        r = np.asarray(real, float)
        p = np.asarray(predicted, float)
        ax.scatter(r, p, s=3, color=LIGHT_GREY, linewidths=0, zorder=2, rasterized=True)
        for key, pts in marks.items():
            if pts:
                xs, ys = zip(*pts)
                ax.scatter(xs, ys, s=12, color=COLLAGE_COLOURS[key], edgecolors="black", linewidths=0.3, zorder=3)
        lo = float(min(r.min(initial=0.0), p.min(initial=0.0)))
        hi = float(max(r.max(initial=1.0), p.max(initial=1.0)))
        ax.plot([lo, hi], [lo, hi], color="#333333", linestyle=(0, (3, 2)), linewidth=0.8, zorder=1)
        ax.set_xlabel("real coefficient", fontsize=7)
        ax.set_ylabel(f"predicted from {shorten(other, 14)}", fontsize=7)
        ax.tick_params(labelsize=6.5)
        ax.set_title(f"r = {similarity:.2f} (held out)", fontsize=7)
        fig.suptitle(wrap_hard(title, 100, 2), x=0.0, ha="left", fontsize=8.5)
        return save_png_only(fig, out)


# ------------------------------------------------------------------------------------------------ layerwise


def layerwise_heatmap(panels: Sequence[MatrixPanel], out: Path) -> Path:
    """Mean-max concept similarity between every layer of one model (rows, shallow at the top) and every layer of
    the other (columns), one panel per class; values printed in the cells; viridis 0..1."""
    with matplotlib.rc_context(_RC):
        lines, per_row = grid_shape(len(panels))
        n_rows = max([len(p.rows) for p in panels], default=1)
        n_cols = max([len(p.columns) for p in panels], default=1)
        width = min(PAGE_WIDTH_IN, per_row * (1.2 + 0.75 * n_cols) + 0.9)
        fig = Figure(figsize=(width, lines * (1.1 + 0.33 * n_rows) + 0.4), layout="constrained")
        FigureCanvasAgg(fig)
        axes, cells = panel_grid(fig, panels, lines, per_row)
        image = None
        for _i, ax, p in cells:
            image = matrix_axes(ax, p, "viridis", 0.0, 1.0, 6.5, lambda v: v > 0.55)
        if image is not None:
            fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="mean-max similarity")
        return _save(fig, out)

