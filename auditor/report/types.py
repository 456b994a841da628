"""The types a render passes between its parts: sections, figures, figure jobs, the section context."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditor.report.figures.common import raster_path
from auditor.results import AuditResult, CheckResult


class RenderError(Exception):
    """The report could not be produced as a whole (e.g. a figure it refers to does not exist)."""


@dataclass(frozen=True)
class RenderedReport:
    """Paths of everything one render wrote (all inside ``out_dir``)."""

    out_dir: Path
    html: Path
    pdf: Path
    junit: Path
    summary: Path
    assets: tuple[Path, ...]
    # Seconds per phase of this render, for benchmarks: sections, figures (drawing them; with worker processes
    # this overlaps the PDF layout), html, pdf_layout, figures_wait (the finished layout waiting for figures),
    # pdf_write.
    timings: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FigureRef:
    """A figure as the template sees it: ``src`` relative to the out directory (``assets/...``)."""

    src: str
    caption: str
    alt: str


@dataclass(frozen=True)
class Section:
    """One check's section: ``block`` names the macro in report.html.j2 that draws ``data``."""

    block: str
    check: CheckResult
    anchor: str
    data: Mapping[str, Any]
    figures: tuple[FigureRef, ...] = ()


@dataclass(frozen=True)
class FigureJob:
    """One deferred figure: ``func(*args, **kwargs)`` writes it (plain, picklable values only).

    ``svg``: the figure is written to an ``.svg`` path (through figures.common._save, with its PNG raster); other figures
    (image grids) are PNG files only. ``raster``: the PNG file the PDF shows (None: no path among the arguments).
    ``size``: (width, height) in pixels of that PNG when known before drawing (see SectionContext.draw_sized):
    the PDF can then be laid out while the figure is still being drawn.
    """

    check_id: str
    func: Callable[..., Path]
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    svg: bool = False
    raster: Path | None = None
    size: tuple[int, int] | None = None


@dataclass(frozen=True)
class SectionContext:
    """What a section builder may use besides its check: the whole result (read only) and where figures go."""

    result: AuditResult
    assets_dir: Path  # where figures are written during this render (a staging folder)
    stem: str  # file-name stem unique to this check, e.g. "check-1-tcav-shortcut"
    roles: tuple[str, ...]  # model roles in the order of provenance.models
    model_names: Mapping[str, str] = field(default_factory=dict)
    # Where figure drawings go when they are deferred (render_report draws them all at once, in parallel);
    # None: draw each one at once.
    jobs: list[FigureJob] | None = None
    check_id: str = ""

    def draw(self, func: Callable[..., Path], *args: Any, **kwargs: Any) -> None:
        """Draw a figure with ``func(*args, **kwargs)`` (a function of auditor.report.figures): now, or as a job.

        A figure whose path (an argument) ends in ``.svg`` must be written through figures.common._save: a render may
        call ``func`` twice, once for the PNG raster and once for the SVG.
        """
        self.draw_sized(None, func, *args, **kwargs)

    def draw_sized(self, size: tuple[int, int] | None, func: Callable[..., Path], *args: Any, **kwargs: Any) -> None:
        """``draw``, for a figure whose PNG raster is known to be ``size`` = (width, height) pixels before it is
        drawn (e.g. figures.tcav.tcav_models_size): the render lays the PDF out while it is drawn, and checks the size.
        """
        if self.jobs is None:
            func(*args, **kwargs)
            return
        target = next((a for a in (*args, *kwargs.values()) if isinstance(a, Path) and a.suffix in (".svg", ".png")),
                      None)
        svg = target is not None and target.suffix == ".svg"
        raster = None if target is None else raster_path(target) if svg else target
        self.jobs.append(FigureJob(self.check_id, func, args, kwargs, svg=svg, raster=raster, size=size))

    def figure(self, name: str) -> tuple[Path, str]:
        """(path to write now, src for the HTML) of this check's figure ``name`` (e.g. ``tcav-0.svg``)."""
        filename = f"{self.stem}-{name}"
        return self.assets_dir / filename, f"assets/{filename}"



SectionBuilder = Callable[[CheckResult, SectionContext], Section]
