"""ClaDec figures: reconstruction grids (original | reference AE | ClaDec, both models side by side, one figure per
layer depth) and the retention bars per model, layer and decoder."""

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

from auditor.report.figures.common import (
    _RC, GREY, PAGE_WIDTH_IN, _save, decode_png, role_colours, save_png_only, short_labels, shorten,
)

# Grey for a cell with no image (e.g. an ONNX model without a torch twin has no reference auto-encoder).
_EMPTY = 235
# Each 64 px image is drawn at 2x (nearest): large enough to see a 6 px watermark, two grids to a page.
_SCALE = 2


@dataclass(frozen=True)
class GridColumn:
    """One column of a grid: its heading and one base64 PNG per row (None: not available, drawn grey)."""

    title: str
    pngs: tuple[str | None, ...]


def _cell(png: str | None, hw: tuple[int, int]) -> np.ndarray:
    if png is None:
        return np.full((*hw, 3), _EMPTY, np.uint8)
    return decode_png(png)


def reconstruction_grid(columns: Sequence[GridColumn], row_labels: Sequence[str], out: Path, *, title: str) -> Path:
    """Rows are images, columns are original and each (model, decoder); every cell drawn pixel for pixel."""
    first = next((p for c in columns for p in c.pngs if p is not None), None)
    hw = decode_png(first).shape[:2] if first is not None else (8, 8)
    n_rows, n_cols = len(row_labels), len(columns)
    with matplotlib.rc_context(_RC):
        side = min(PAGE_WIDTH_IN / (n_cols + 0.6), 0.8)
        fig = Figure(figsize=(PAGE_WIDTH_IN, 0.45 + side * n_rows), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(n_rows, n_cols, squeeze=False)
        for c, col in enumerate(columns):
            for r in range(n_rows):
                ax = axes[r][c]
                img = _cell(col.pngs[r] if r < len(col.pngs) else None, hw)
                ax.imshow(np.kron(img, np.ones((_SCALE, _SCALE, 1), np.uint8)), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if r == 0:
                    ax.set_title(col.title, fontsize=6.5)
                if c == 0:
                    ax.set_ylabel(row_labels[r], fontsize=6.5, rotation=0, ha="right", va="center")
        fig.suptitle(title, x=0.0, ha="left", fontsize=8.5)
        return save_png_only(fig, out)


@dataclass(frozen=True)
class RetentionBar:
    model: str
    layer: str
    decoder: str  # "cladec" | "reference_ae"
    retention: float | None


def retention_bars(bars: Sequence[RetentionBar], roles: Sequence[str], out: Path, *, bound: float | None) -> Path:
    """Horizontal bars, one row per (model, layer), ClaDec solid and the reference auto-encoder hatched beside it;
    0: the layer drops the artifact, 1: it keeps it whole; the requirement's bound as a dashed line."""
    keys = list(dict.fromkeys((b.model, b.layer) for b in bars))
    labels = {}
    for role in dict.fromkeys(m for m, _ in keys):  # the model's name whole, its layers told apart
        mine = [layer for m, layer in keys if m == role]
        labels.update({(role, layer): f"{shorten(role, 14)}: {short}" for layer, short in zip(mine, short_labels(mine, 30))})
    colours = role_colours(roles)
    by = {(b.model, b.layer, b.decoder): b.retention for b in bars}
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(PAGE_WIDTH_IN, 0.7 + 0.36 * len(keys)), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        top = 1.0
        for i, key in enumerate(reversed(keys)):
            for dy, decoder, hatch in ((0.17, "cladec", None), (-0.17, "reference_ae", "////")):
                v = by.get((*key, decoder))
                if v is None:
                    ax.text(0.01, i + dy, "not measured" if (*key, decoder) in by else "no reference AE",
                            va="center", fontsize=6.5, color=GREY)
                    continue
                top = max(top, v)
                ax.barh(i + dy, v, height=0.32, color=colours[key[0]] if hatch is None else "white",
                        edgecolor=colours[key[0]], hatch=hatch, linewidth=0.8)
                ax.text(v + 0.01, i + dy, f"{v:.2f}", va="center", fontsize=6.5)
        ax.set_yticks(range(len(keys)), [labels[k] for k in reversed(keys)])
        ax.set_xlim(0, top * 1.12)
        ax.axvline(1.0, color=GREY, linewidth=0.6, linestyle=":")
        if bound is not None:
            ax.axvline(bound, color="#9B1C13", linewidth=0.9, linestyle=(0, (3, 2)))
        ax.set_xlabel("artifact retention (0: the layer drops the artifact, 1: it keeps it whole)")
        handles = [Patch(facecolor=GREY, edgecolor=GREY), Patch(facecolor="white", edgecolor=GREY, hatch="////")]
        names = ["ClaDec decoder", "reference auto-encoder"]
        if bound is not None:
            handles.append(Line2D([], [], color="#9B1C13", linestyle=(0, (3, 2))))
            names.append(f"required at most {bound:g}")
        fig.legend(handles, names, loc="outside lower center", ncol=len(names), frameon=False)
        return _save(fig, out)


def grid_title(depth: int, layers: Sequence[tuple[str, str]]) -> str:
    return f"Layer depth {depth + 1}: " + ", ".join(f"{role} {shorten(layer, 34)}" for role, layer in layers)
