"""Similarity figures: CAV accuracy against relative depth (both models on one axis per concept), the concept-map
similarity matrices, and the CKA heat maps (linear and debiased).

Module-level functions of plain values (they may run in another process, see auditor.report.workers); each writes
one SVG through figures.common._save (with its PNG raster) and returns its path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from auditor.report.figures.common import (
    _RC, _save, GREY, LIGHT_GREY, PAGE_WIDTH_IN, MatrixPanel, matrix_axes, panel_grid, role_colours, wrap_hard,
)

PER_ROW = 3  # concept panels per row


@dataclass(frozen=True)
class DepthCurve:
    """One model's CAV accuracy at each audited layer, by relative depth (shallow first)."""

    role: str
    depths: tuple[float, ...]
    accuracies: tuple[float, ...]
    best: int  # index of the best layer


@dataclass(frozen=True)
class DepthPanel:
    concept: str
    curves: tuple[DepthCurve, ...]


def depth_curves(panels: Sequence[DepthPanel], out: Path, *, threshold: float) -> Path:
    """One axis per concept: CAV accuracy (0.4..1) against relative depth (0..1), a line per model, its best layer
    starred; chance (0.5) and the learned threshold drawn."""
    with matplotlib.rc_context(_RC):
        n = max(len(panels), 1)
        per_row = min(n, PER_ROW)
        lines = (n + per_row - 1) // per_row
        fig = Figure(figsize=(PAGE_WIDTH_IN, 0.4 + 1.9 * lines), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(lines, per_row, squeeze=False, sharey=True)
        roles = list(dict.fromkeys(c.role for p in panels for c in p.curves))
        colours = role_colours(roles)
        # Held-out accuracies below 0.4 happen by chance with small sets; the axis then reaches them.
        low = min([0.4] + [a - 0.05 for p in panels for c in p.curves for a in c.accuracies])
        for i, ax in enumerate(axes.flat):
            if i >= len(panels):
                ax.set_visible(False)
                continue
            p = panels[i]
            ax.axhline(0.5, color=LIGHT_GREY, lw=0.8)
            ax.axhline(threshold, color=GREY, lw=0.8, ls="--")
            for j, c in enumerate(p.curves):
                # Second model dashed with hollow markers: where the curves coincide both stay visible.
                ax.plot(c.depths, c.accuracies, marker="os"[j % 2], ms=3.5 + j, lw=1.2, color=colours[c.role],
                        ls=("-", "--")[j % 2], mfc=colours[c.role] if j % 2 == 0 else "none", label=c.role)
                ax.plot([c.depths[c.best]], [c.accuracies[c.best]], marker="*", ms=9, color=colours[c.role],
                        markeredgecolor="black", markeredgewidth=0.5, ls="none")
            ax.set_xlim(0, 1.02)
            ax.set_ylim(low, 1.02)
            ax.set_title(wrap_hard(p.concept, 28, 1), loc="left")
            ax.set_xlabel("relative depth")
            if i % per_row == 0:
                ax.set_ylabel("CAV accuracy (held out)")
        if roles:
            handles = [Line2D([], [], color=colours[r], marker="os"[k % 2], ls=("-", "--")[k % 2],
                                               mfc=colours[r] if k % 2 == 0 else "none", label=r)
                       for k, r in enumerate(roles)]
            handles.append(Line2D([], [], color=GREY, ls="--", label=f"learned ({threshold:g})"))
            handles.append(Line2D([], [], color="black", marker="*", ls="none", label="best layer"))
            fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
        return _save(fig, out)


def _dark_text(cmap: str, vmin: float, vmax: float) -> Callable[[float], bool]:
    """Which cell values get black text: the light part of the colour map (viridis: the top; PuOr: the middle)."""
    mid = (vmin + vmax) / 2
    if cmap == "viridis":
        return lambda v: v > mid + 0.1 * (vmax - vmin)
    return lambda v: abs(v - mid) < 0.35 * (vmax - vmin)


def matrices(panels: Sequence[MatrixPanel], out: Path, *, label: str, cmap: str = "viridis", vmin: float = 0.0,
             vmax: float = 1.0, per_row: int = PER_ROW) -> Path:
    """Heat maps of layer x layer matrices, values printed in the cells, one shared colour bar."""
    with matplotlib.rc_context(_RC):
        n = max(len(panels), 1)
        per_row = min(n, per_row)
        lines = (n + per_row - 1) // per_row
        n_rows = max([len(p.rows) for p in panels], default=1)
        n_cols = max([len(p.columns) for p in panels], default=1)
        width = min(PAGE_WIDTH_IN, per_row * (1.3 + 0.75 * n_cols) + 0.9)
        # Values in the cells where they fit ("-0.25" at 6.5 pt is 0.3 in wide); colours alone below that.
        cell = (width - 0.9) / per_row / n_cols - 1.3 / n_cols
        size = 6.5 if cell >= 0.45 else 5.5 if cell >= 0.36 else 0.0
        fig = Figure(figsize=(width, lines * (1.2 + 0.33 * n_rows) + 0.4), layout="constrained")
        FigureCanvasAgg(fig)
        axes, cells = panel_grid(fig, panels, lines, per_row)
        dark = _dark_text(cmap, vmin, vmax)
        image = None
        for _i, ax, p in cells:
            image = matrix_axes(ax, p, cmap, vmin, vmax, size, dark)
        if image is not None:
            fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label=label)
        return _save(fig, out)
