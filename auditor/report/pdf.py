"""The PDF: the HTML it is laid out from (PNG rasters for the SVG figures), the asset checks, WeasyPrint."""

from __future__ import annotations

import logging
import time
import re
from collections.abc import Callable, Collection, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from auditor.report.figures.common import raster_path
from auditor.report.format import parse_created
from auditor.report.types import RenderError
from auditor.results import AuditResult

_SRC = re.compile(r'\bsrc="([^"]*)"')


def undo_weasyprint_truncated_images() -> None:
    """WeasyPrint sets PIL's process-wide ImageFile.LOAD_TRUNCATED_IMAGES = True when imported (weasyprint/images.py):
    afterwards PIL pads a truncated image with grey instead of refusing it, so an image the audit reads in the same
    process (a second audit, a test) would be analysed half blank and `validate` would pass it. Found by
    test_bad_inputs' truncated-PNG case, which passed with exit 0 after a test had rendered a report. Our figures are
    whole files, so WeasyPrint does not need the setting."""
    from PIL import ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False


def check_assets(html: str, roots: Sequence[Path], pending: Collection[Path] = ()) -> None:
    """Every image the HTML refers to must exist: a missing figure is an error, never a blank space.

    ``pending``: files (``assets/x.png``) still being drawn; they are checked when the drawing ends.
    """
    for src in _SRC.findall(html):
        if src.startswith("data:"):
            continue
        if urlsplit(src).scheme or src.startswith("/") or ".." in Path(src).parts:
            raise RenderError(f"report.html refers to {src!r}: only files under assets/ may be used")
        if not any((root / src).is_file() for root in roots) and Path(src) not in pending:
            raise RenderError(f"report.html refers to {src!r}, which does not exist")


# ---------------------------------------------------------------------------------------------------------------
# PDF

_IMG_SRC = re.compile(r'(<img\b[^>]*?\bsrc=")(assets/[^"]+\.svg)(")')
_PDF_IMG = re.compile(r'<img\b[^>]*?\bsrc="([^"]+)"')


# The base URL the PDF's HTML is laid out against. WeasyPrint names an embedded bitmap by the md5 of its URL: a URL
# under the real output directory would put that directory into the PDF bytes. Under this fixed root the URLs, and
# so the bytes, depend only on the report; the fetcher serves the files from the staging folder or out_dir.
PDF_BASE_URL = "file:///concept-auditor-report/"


def pdf_html(html: str, stage: Path, pending: Collection[Path] = ()) -> str:
    """The HTML the PDF is laid out from: figures of this render as their PNG rasters instead of SVG.

    Each figure of this render is written as SVG (what report.html shows) and as a PNG next to it; the PDF
    embeds the PNG (WeasyPrint draws matplotlib's SVG glyph by glyph, which made PDF writing take minutes).
    The rasters are referred to by file (``assets/x.png``), not inlined as data: URLs, which made the HTML
    WeasyPrint parses 15 times larger. Images the HTML refers to that this render did not draw (written by the
    audit itself) stay as they are. ``pending``: rasters (``assets/x.png``) still being drawn, swapped in too.
    """

    def swap(m: re.Match[str]) -> str:
        png = raster_path(Path(m.group(2)))
        if not ((stage / png).is_file() or png in pending):
            return m.group(0)
        return m.group(1) + png.as_posix() + m.group(3)

    return _IMG_SRC.sub(swap, html)


class _ErrorLines(logging.Handler):
    """Collects the messages of ERROR records (WeasyPrint's "Failed to load image at ...")."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def write_pdf(
    html: str, target: Path, out_dir: Path, stage: Path, attachment: bytes, result: AuditResult,
    *, wait_for: Callable[[Path], bool] | None = None, before_write: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Lay out ``html`` and write the PDF/A-3b to ``target``; returns the seconds of the phases.

    ``wait_for(relative)``: called for every file of the report first; blocks until a figure still being drawn is
    complete and returns True, or returns False at once for any other file. ``before_write``: runs between layout and writing
    (the figures laid out from placeholders must be complete before WeasyPrint reads their pixels).
    """
    # Imported here: WeasyPrint loads Pango at import, and nothing else in the package needs it.
    from weasyprint import HTML, Attachment
    from weasyprint.urls import FatalURLFetchingError, URLFetcher
    undo_weasyprint_truncated_images()

    class LocalFetcher(URLFetcher):
        """Files under PDF_BASE_URL only: from the staging folder (this render), else out_dir; a missing one stops
        the render (a figure still being drawn is waited for)."""

        def __init__(self) -> None:
            super().__init__(allowed_protocols={"file", "data"}, fail_on_errors=True)

        def fetch(self, url: str, headers: Any = None) -> Any:
            if url.startswith("file:"):
                if not url.startswith(PDF_BASE_URL):
                    raise FileNotFoundError(f"not a file of the report: {url}")
                relative = Path(url2pathname(urlsplit(url).path)).relative_to(
                    url2pathname(urlsplit(PDF_BASE_URL).path))
                # A figure still being drawn is waited for first: its file may exist half-written meanwhile, and
                # out_dir may hold the same name from an earlier render (a stale figure, or a truncated read,
                # made the page count differ from one render of the same results to the next).
                if wait_for is not None and wait_for(relative):
                    return super().fetch((stage.resolve() / relative).as_uri(), headers)
                for root in (stage.resolve(), out_dir.resolve()):
                    path = (root / relative).resolve()
                    if path.is_relative_to(root) and path.is_file():
                        return super().fetch(path.as_uri(), headers)
                raise FileNotFoundError(f"no such file: {relative}")
            return super().fetch(url, headers)

    created = parse_created(result.provenance.created) or datetime(1970, 1, 1, tzinfo=timezone.utc)
    fetcher = LocalFetcher()
    # Explicit dates (the audit's, never the render's) keep the PDF bytes reproducible.
    attachments = [Attachment(
        string=attachment, name="results.json", url_fetcher=fetcher,
        description="The audit results this report was rendered from",
        created=created, modified=created, relationship="Source",
    )]
    if result.provenance.policy_text:
        attachments.append(Attachment(
            string=result.provenance.policy_text.encode("utf-8"), name="policy.yaml", url_fetcher=fetcher,
            description="The audit policy as audited", created=created, modified=created, relationship="Source",
        ))
    options = {"pdf_variant": "pdf/a-3b", "attachments": attachments}
    # WeasyPrint leaves out an image it cannot read, with an error log line: here that is an error, not a blank
    # space (a reviewer would sign a report with a figure missing under its caption).
    unreadable = _ErrorLines()
    weasy_log = logging.getLogger("weasyprint")
    weasy_log.addHandler(unreadable)
    try:
        # render() then write_pdf() is what HTML.write_pdf does in one call; two calls let the phases be timed.
        start = time.perf_counter()
        document = HTML(string=html, base_url=PDF_BASE_URL, url_fetcher=fetcher).render(**options)
        laid_out = time.perf_counter()
        if before_write is not None:
            before_write()
        ready = time.perf_counter()
        document.write_pdf(target, **options)
    except FatalURLFetchingError as exc:
        raise RenderError(f"PDF rendering stopped: {exc} ({exc.__cause__})") from None
    finally:
        weasy_log.removeHandler(unreadable)
    if unreadable.lines:
        raise RenderError(f"the PDF would lack what the report shows: {unreadable.lines[0]}")
    shown = set(_PDF_IMG.findall(html))
    embedded = target.read_bytes().count(b"/Subtype /Image")
    if embedded < len(shown):
        raise RenderError(f"the PDF holds {embedded} images of the {len(shown)} the report shows")
    return {"pdf_layout": laid_out - start, "figures_wait": ready - laid_out,
            "pdf_write": time.perf_counter() - ready}


# ---------------------------------------------------------------------------------------------------------------
