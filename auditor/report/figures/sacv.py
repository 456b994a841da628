"""SACV figures: where a concept acts, as contribution maps over the class images (PNG image grids)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from auditor.report.figures.common import PAGE_WIDTH_IN, decode_png, wrap_hard, written_whole

# Diverging and colour-blind safe: orange = the concept raises the class logit there, purple = lowers it.
CMAP = "PuOr_r"
DPI = 150


@dataclass(frozen=True)
class MapRow:
    """One (model, layer) row: the mean contribution map and the top class images with their maps."""

    label: str
    mean_map: tuple[tuple[float, ...], ...]  # (H, W) mean of M * [R > 0] over the map images
    images: tuple[str, ...]  # base64 PNG thumbnails
    maps: tuple[tuple[tuple[float, ...], ...], ...]  # per image (H, W)
    share: str  # e.g. "on object 46%" (or "")



def contribution_grid(rows: Sequence[MapRow], out: Path, *, title: str) -> Path:
    """A grid: one row per (model, layer); first column the mean contribution map, then the top class images
    with their contribution overlaid (upsampled to the image, transparent where the concept is absent).

    The colour scale is symmetric around 0 and shared along a row (maps of one layer are comparable with each
    other, not with another layer's, whose units differ).
    """
    n_cols = 1 + max((len(r.images) for r in rows), default=0)
    n_rows = max(len(rows), 1)
    cell = min(PAGE_WIDTH_IN / (n_cols + 0.6), 1.25)
    with matplotlib.rc_context({"font.size": 7, "font.family": "DejaVu Sans", "svg.hashsalt": "auditor"}):
        fig = Figure(figsize=(cell * (n_cols + 0.6), cell * n_rows + 0.55), dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(n_rows, n_cols, squeeze=False)
        for i, row in enumerate(rows):
            mean = np.asarray(row.mean_map, np.float64)
            maps = [np.asarray(m, np.float64) for m in row.maps]
            lim = max([float(np.abs(mean).max())] + [float(np.abs(m).max()) for m in maps] + [1e-12])
            norm = TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim)
            ax = axes[i][0]
            ax.imshow(mean, cmap=CMAP, norm=norm, interpolation="nearest")
            ax.set_ylabel(wrap_hard(row.label, 18, 3), fontsize=6.5)
            if i == 0:
                ax.set_title("mean map", fontsize=7)
            if row.share:
                ax.set_xlabel(row.share, fontsize=6.5)
            for j in range(1, n_cols):
                ax = axes[i][j]
                if j - 1 >= len(row.images):
                    ax.axis("off")
                    continue
                img = decode_png(row.images[j - 1])
                h, w = img.shape[:2]
                m = maps[j - 1]
                ax.imshow(img, extent=(0, w, h, 0), interpolation="bilinear")
                shown = np.ma.masked_where(m == 0, m)
                ax.imshow(shown, cmap=CMAP, norm=norm, alpha=0.75, extent=(0, w, h, 0), interpolation="nearest")
                if i == 0:
                    ax.set_title(f"top {j}", fontsize=7)
            for ax in axes[i]:
                ax.set_xticks([])
                ax.set_yticks([])
        fig.suptitle(wrap_hard(title, 100, 2), fontsize=8, x=0.01, ha="left")
        out.parent.mkdir(parents=True, exist_ok=True)
        with written_whole(out) as partial:
            fig.savefig(partial, format="png", dpi=DPI, metadata={"Software": None})
    return out
