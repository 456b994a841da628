"""Render an audit report from results.json alone: HTML -> PDF (WeasyPrint), junit.xml, summary.md, SVG figures.

The report never recomputes anything: every number on the page is read from results.json (which is also
embedded in the PDF). Re-rendering the same file gives the same HTML and SVG bytes: the date printed is the
audit's `provenance.created`, never the time of rendering.

Check sections are built by auditor.report.sections (SECTIONS: one entry per method), drawn by
auditor.report.workers, and written by html, pdf and ci; this module only assembles the document.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from auditor.report import workers
from auditor.report.ci import junit_xml, summary_markdown
from auditor.report.html import render_html
from auditor.report.loading import ResultsError, load_results
from auditor.report.pdf import check_assets, pdf_html, write_pdf
from auditor.report.sections import SECTIONS, build_section
from auditor.report.types import FigureJob, RenderedReport, RenderError

# Re-exported: callers (cli.py, tests, benchmarks) import these from here.
__all__ = ["SECTIONS", "RenderError", "RenderedReport", "ResultsError", "build_section", "junit_xml",
           "load_results", "pdf_html", "render_html", "render_report", "summary_markdown"]


def render_report(results_path: Path, out_dir: Path) -> RenderedReport:
    """Render the report of ``results_path`` into ``out_dir``.

    Writes ``assets/*.svg`` (with a ``.png`` raster of each, which the PDF embeds), ``report.html``,
    ``report.pdf`` (PDF/A-3b with results.json and, when recorded, the policy YAML attached), ``junit.xml`` and
    ``summary.md``. Everything is produced in a staging folder first and moved into place only when all of it
    succeeded, so a failure never leaves a half-written report behind. ``timings`` of the result says how long
    each phase took.

    Raises
    ------
    ResultsError : results.json is missing, malformed, or lacks a key the report needs.
    RenderError : the report refers to a file that does not exist, or WeasyPrint could not load one.
    """
    results_path, out_dir = Path(results_path), Path(out_dir)
    raw, result = load_results(results_path)
    timings: dict[str, float] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".render-", dir=out_dir))
    try:
        staged_assets = stage / "assets"
        staged_assets.mkdir()
        jobs: list[FigureJob] = []
        clock = time.perf_counter()
        sections = [build_section(i, c, result, staged_assets, jobs) for i, c in enumerate(result.checks)]
        timings["sections"], clock = time.perf_counter() - clock, time.perf_counter()
        drawing: workers.FigureDrawing | None = None
        if workers.worker_count() >= 2 and len(jobs) >= workers.PARALLEL_MIN_FIGURES:
            # Worker processes draw the figures while this process lays out the PDF (WeasyPrint uses one core).
            drawing = workers.FigureDrawing(jobs, stage, workers.worker_count())
        else:
            workers.draw_figures(jobs)
            timings["figures"] = time.perf_counter() - clock
        clock = time.perf_counter()
        try:
            html = render_html(result, sections)
            timings["html"] = time.perf_counter() - clock
            pending = drawing.pending if drawing is not None else frozenset()
            for_pdf = pdf_html(html, stage, pending)
            # Figures written by the audit itself (e.g. image collages) already live in out_dir/assets.
            check_assets(for_pdf, [stage, out_dir], pending)
            (stage / "report.html").write_text(html, encoding="utf-8")
            timings.update(write_pdf(
                for_pdf, stage / "report.pdf", out_dir, stage, raw, result,
                wait_for=None if drawing is None else drawing.wait_for,
                before_write=None if drawing is None else drawing.join,
            ))
        except BaseException:
            if drawing is not None:
                drawing.cancel()
            raise
        if drawing is not None:
            drawing.join()
            timings["figures"] = drawing.seconds
        check_assets(html, [stage, out_dir])
        (stage / "junit.xml").write_bytes(junit_xml(result))
        (stage / "summary.md").write_text(summary_markdown(result), encoding="utf-8")

        assets_dir = out_dir / "assets"
        assets_dir.mkdir(exist_ok=True)
        assets = []
        for item in sorted(staged_assets.iterdir()):
            os.replace(item, assets_dir / item.name)
            assets.append(assets_dir / item.name)
        # The PDF goes last: its presence says the whole render went through.
        for name in ("report.html", "junit.xml", "summary.md", "report.pdf"):
            os.replace(stage / name, out_dir / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return RenderedReport(
        out_dir=out_dir,
        html=out_dir / "report.html",
        pdf=out_dir / "report.pdf",
        junit=out_dir / "junit.xml",
        summary=out_dir / "summary.md",
        assets=tuple(assets),
        timings=timings,
    )
