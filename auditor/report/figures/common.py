"""Report figures: plain data in, one reproducible SVG file (and its PNG raster, for the PDF) out.

Every function here is pure in the sense that matters for a signed report: it takes plain values and an output
path, writes exactly that file (plus the PNG raster next to it, see raster_path) and returns its path; the same
input gives the same bytes. Nothing reads
results.json and nothing imports pyplot, so no GUI backend or global figure state is ever involved.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import PIL.Image
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

T = TypeVar("T")

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
    # out the PDF from a placeholder in its place meanwhile (workers.FigureDrawing).
    png = raster_path(out)
    with written_whole(png) as partial:
        PIL.Image.fromarray(np.ascontiguousarray(crop_px), "RGB").save(
            partial, format="png", dpi=(RASTER_DPI, RASTER_DPI), compress_level=1)
    # Metadata Date=None: no timestamp in the file, so re-rendering gives identical bytes.
    fig.savefig(out, format="svg", metadata={"Date": None}, bbox_inches=bbox)
    return out


def decode_png(png_b64: str) -> np.ndarray:
    """A base64 PNG (as results.json holds images) as an RGB uint8 array."""
    with PIL.Image.open(io.BytesIO(base64.b64decode(png_b64))) as im:
        return np.asarray(im.convert("RGB"))


def save_png_only(fig: Figure, out: Path) -> Path:
    """An image-grid figure as a PNG only (no SVG: photos gain nothing from vectors), reproducible bytes."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.set_dpi(RASTER_DPI)
    fig.canvas.draw()
    bbox = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.04)
    pixels = np.asarray(fig.canvas.buffer_rgba())
    height = pixels.shape[0]
    x0, y0, x1, y1 = (int(round(v * RASTER_DPI)) for v in bbox.extents)
    crop = pixels[max(height - y1, 0): height - max(y0, 0), max(x0, 0): x1, :3]
    with written_whole(out) as partial:
        PIL.Image.fromarray(np.ascontiguousarray(crop), "RGB").save(partial, format="png",
                                                                    dpi=(RASTER_DPI, RASTER_DPI))
    return out


def _new_figure(width: float, height: float) -> Figure:
    # Constrained layout keeps legends placed "outside" from overlapping rotated tick labels.
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


@dataclass(frozen=True)
class MatrixPanel:
    """A layer x layer matrix: rows = layers of one model (shallow at the top), columns = layers of the other."""

    title: str
    row_model: str
    rows: tuple[str, ...]
    col_model: str
    columns: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]
    marked: tuple[tuple[int, int], ...] = ()  # (row, column) cells outlined (matched relative depth)


def matrix_axes(ax: Any, p: MatrixPanel, cmap: str, vmin: float, vmax: float, size: float,
                dark: Callable[[float], bool]) -> Any:
    """One layer x layer heat map on `ax`: values printed at `size` pt (none at 0), black where `dark(value)`,
    the marked cells outlined, layer names on the axes. Returns the image (for a shared colour bar)."""
    m = np.asarray(p.values, float)
    image = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for (y, x), v in np.ndenumerate(m if size > 0 else np.zeros((0, 0))):
        ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=size, color="black" if dark(v) else "white")
    for y, x in p.marked:
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="black", lw=1.6))
    ax.set_xticks(range(len(p.columns)))
    ax.set_xticklabels(short_labels(p.columns, 16), rotation=30, ha="right", rotation_mode="anchor", fontsize=6.5)
    ax.set_yticks(range(len(p.rows)))
    ax.set_yticklabels(short_labels(p.rows, 18), fontsize=6.5)
    ax.set_xlabel(shorten(p.col_model, 20), fontsize=7)
    ax.set_ylabel(shorten(p.row_model, 20), fontsize=7)
    ax.set_title(wrap_hard(p.title, 30, 1), loc="left", fontsize=8)
    return image


def grid_shape(count: int, per_row: int = 3) -> tuple[int, int]:
    """(rows, columns) of a grid of ``count`` small multiples, at most ``per_row`` a row (one cell for none)."""
    n = max(count, 1)
    cols = min(per_row, n)
    return (n + cols - 1) // cols, cols


def panel_grid(fig: Figure, panels: Sequence[T], rows: int, cols: int) -> tuple[Any, list[tuple[int, Any, T]]]:
    """A ``rows`` x ``cols`` grid of axes on ``fig`` for ``panels`` in reading order: (the axes array, the
    (index, axes, panel) of each panel); the cells past the last panel are hidden."""
    axes = fig.subplots(rows, cols, squeeze=False)
    cells = []
    for i, ax in enumerate(axes.flat):
        if i < len(panels):
            cells.append((i, ax, panels[i]))
        else:
            ax.set_visible(False)
    return axes, cells


def _line_in(size: float, lines: int = 1) -> float:
    return lines * 1.22 * size / 72


def _chars_in(size: float, chars: int) -> float:
    return chars * 0.62 * size / 72


def pixel_size(width_in: float, height_in: float) -> tuple[int, int]:
    """(width, height) in pixels of the PNG raster of an uncropped figure of that size (as Agg sizes its canvas)."""
    return int(width_in * RASTER_DPI), int(height_in * RASTER_DPI)


# Model colours of the figures that put models side by side (the TCAV figures draw one panel per model and
# colour by layer, so roles have no colour there). Blue and orange stay apart in greyscale (dark vs light).
ROLE_COLOURS = {"candidate": "#0072B2", "reference": "#E69F00"}
_OTHER_ROLE_COLOURS = ("#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000")
BAND_COLOUR = "#F2D6CC"  # light vermillion: "the class relies on the artifact"


def role_colours(roles: Sequence[str]) -> dict[str, str]:
    """A colour per model role: candidate blue and reference orange wherever they appear, others in order."""
    spare = iter(_OTHER_ROLE_COLOURS)
    return {r: ROLE_COLOURS.get(r) or next(spare, GREY) for r in roles}
