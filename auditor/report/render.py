"""Render an audit report from results.json alone: HTML -> PDF (WeasyPrint), junit.xml, summary.md, SVG figures.

The report never recomputes anything: every number on the page is read from results.json (which is also
embedded in the PDF). Re-rendering the same file gives the same HTML and SVG bytes: the date printed is the
audit's `provenance.created`, never the time of rendering.

Check sections are dispatched on `check.method` through SECTIONS (a dict literal): adding a method to the report
means one section builder here and one macro in templates/report.html.j2.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import jinja2
import PIL.Image
from markupsafe import Markup

from auditor import __version__, results
from auditor.errors import UserError
from auditor.report import figures
from auditor.report.section_invert import invert_section
from auditor.report.section_null import null_figure
from auditor.report.section_rsvc import rsvc_section
from auditor.results import AuditResult, CheckResult, Status

TEMPLATE = "report.html.j2"
STYLESHEET = "report.css"

# Measured on the demo (benchmarks/stability.py, README): another seed and 200-image sets changed 8 of 16 verdicts.
STABILITY_NOTE = (
    "Verdicts depend on the random sets: where the random-vs-random scores sit near 0 and 1 (a tall grey box: "
    "the class gradients point one way, so every direction scores about 0 or 1), the random mean the concept "
    "is tested against is estimated from few effective samples, and a rerun with other random sets or set "
    "sizes can change the verdict. Read such cells with the causal probe."
)
# The exchangeability test's own limits (docs/significance.md): what its null is, and what it does not cover.
EXCHANGEABLE_NOTE = (
    "Significance here means the concept images differ from random images of the pool as the class logit's "
    "sensitivity sees them (pseudo-concepts drawn from the pool, scored alike): a pool unlike the images the "
    "model meets, or one that contains the concept, changes what \u201crandom\u201d means. The smallest p is "
    "1/(M+1); a capped M can make significance unattainable (a note says so)."
)
TCAV_CLAIM = (
    "A significant TCAV score says the class logit is locally sensitive to the concept direction at that layer; "
    "it does not show that the model relies on the concept. Reliance is decided by causal probes (pasting the "
    "concept onto images), reported separately where available. "
)


def significance_note(settings: Mapping[str, Any]) -> str:
    """The limits of the check's test: the exchangeability test's, or Welch's dependence on the random sets."""
    return EXCHANGEABLE_NOTE if settings.get("test_name") == "exchangeable" else STABILITY_NOTE
PROBE_LIMITS_NOTE = (
    "The probe measures what pasting the artifact does to each class logit, against a neutral patch on the same "
    "pixels. It depends on where and how the artifact is pasted: an artifact the model learned at one position "
    "may have no effect elsewhere. It says nothing about concepts that cannot be pasted."
)
# The appendix's method notes: how each method works, said once for the whole report (its sections say what each
# check tested). A method without an entry here is listed with its sections' limits only.
METHOD_NOTES: dict[str, tuple[str, str]] = {
    "tcav": (
        "TCAV: testing with concept activation vectors",
        "For each model, layer and concept, a linear classifier (the concept activation vector, CAV) is trained to "
        "separate the activations of concept images from those of random images, once against each of several "
        "random sets. The TCAV score of a class is the fraction of its images whose class logit increases when the "
        "activations move a small step along the CAV (a directional derivative). By default (the exchangeability "
        "test) the concept is compared with pseudo-concepts: sets of random images put in the concept's place and "
        "scored exactly like it; its p-value is the share of pseudo-concepts whose statistic (the TCAV score, or "
        "the mean cosine of the class gradient with the CAV) is at least as far from no sensitivity. With the "
        "paper's test (welch), the concept's scores are compared by a two-sided Welch t-test with those of "
        "random-versus-random CAVs. The p-values of every tested cell of every TCAV check of the "
        "audit are adjusted together (Holm), so that running more tests does not make a false alarm more likely. "
        "A concept whose CAVs do not separate it from random images (held-out accuracy below the threshold) is "
        "reported as not learned at that layer and is not tested there.",
    ),
    "artifact_probe": (
        "Artifact probe",
        "Each clean image is shown to each model twice: once with the artifact pasted on it, once with a neutral "
        "patch (the image's own mean colour) over exactly the same pixels. For each class logit, the AUC is the "
        "probability that the logit is higher with the artifact than with the neutral patch, over all pairs "
        "(0.5: no effect; ties count half). A class relies on the artifact when its AUC is beyond the policy's "
        "threshold; the mean logit shift and the share of predictions flipped to the class say how large the "
        "effect is.",
    ),
}

# METHODS.md, TCAV step 4: mean held-out CAV accuracy below this means "not learned at this layer".
DEFAULT_MIN_CAV_ACCURACY = 0.6

_STATUS_ICON = {
    Status.PASS: "✅", Status.FAIL: "❌", Status.WARN: "⚠️", Status.ERROR: "⛔", Status.SKIPPED: "⏭️",
}


class ResultsError(UserError):
    """results.json is missing, not JSON, or lacks what the report needs (exit code 2)."""


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

    ``svg``: the figure is written to an ``.svg`` path (through figures._save, with its PNG raster); other figures
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

        A figure whose path (an argument) ends in ``.svg`` must be written through figures._save: a render may
        call ``func`` twice, once for the PNG raster and once for the SVG.
        """
        self.draw_sized(None, func, *args, **kwargs)

    def draw_sized(self, size: tuple[int, int] | None, func: Callable[..., Path], *args: Any, **kwargs: Any) -> None:
        """``draw``, for a figure whose PNG raster is known to be ``size`` = (width, height) pixels before it is
        drawn (e.g. figures.tcav_models_size): the render lays the PDF out while it is drawn, and checks the size.
        """
        if self.jobs is None:
            func(*args, **kwargs)
            return
        target = next((a for a in (*args, *kwargs.values()) if isinstance(a, Path) and a.suffix in (".svg", ".png")),
                      None)
        svg = target is not None and target.suffix == ".svg"
        raster = None if target is None else figures.raster_path(target) if svg else target
        self.jobs.append(FigureJob(self.check_id, func, args, kwargs, svg=svg, raster=raster, size=size))

    def figure(self, name: str) -> tuple[Path, str]:
        """(path to write now, src for the HTML) of this check's figure ``name`` (e.g. ``tcav-0.svg``)."""
        filename = f"{self.stem}-{name}"
        return self.assets_dir / filename, f"assets/{filename}"


# ---------------------------------------------------------------------------------------------------------------
# Formatting


def fmt_num(value: Any, digits: int = 2) -> str:
    """A number with ``digits`` decimals; None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.{digits}f}"


def fmt_pm(value: Any, spread: Any, digits: int = 2) -> str:
    """``value ± spread``; just the value when the spread is unknown."""
    if value is None:
        return "—"
    if spread is None:
        return fmt_num(value, digits)
    return f"{fmt_num(value, digits)} ± {fmt_num(spread, digits)}"


def fmt_p(p: Any) -> str:
    """A p-value in 3 significant digits; scientific below 0.001."""
    if p is None:
        return "—"
    p = float(p)
    if p == 0.0:
        return "0"
    if p < 1e-3:
        mantissa, exponent = f"{p:.2e}".split("e")
        return f"{mantissa}e{int(exponent)}"  # 3.20e-6, not 3.20e-06: narrower columns, same value
    return f"{p:.3g}"


def fmt_value(value: Any) -> str:
    """Any JSON value for a generic table cell."""
    if value is None or isinstance(value, int):  # bool is an int: "yes"/"no"
        return fmt_num(value)
    if isinstance(value, float):
        if value == 0.0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.3g}"
        return f"{value:.2e}"
    if isinstance(value, str):
        return value
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 400 else text[:400] + " … (full value in results.json)"


def fmt_share(value: Any) -> str:
    """A share in [0, 1] as a percentage with one decimal (``57.5 %``); None as an em dash."""
    if value is None:
        return "—"
    return f"{100 * float(value):.1f} %"


def break_at_underscores(text: Any) -> Markup:
    """``text`` escaped, with a line-break opportunity after every underscore (``artifact_<wbr>probe``)."""
    return Markup("_<wbr>").join(Markup.escape(str(text)).split("_"))


def _parse_created(created: str) -> datetime | None:
    try:
        dt = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    # results.py documents `created` as UTC; a naive stamp is read as such.
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def fmt_date(created: str) -> str:
    """The audit's date for print (``2025-11-23 13:21 UTC``); the raw text when it is not ISO 8601."""
    dt = _parse_created(created)
    return dt.strftime("%Y-%m-%d %H:%M UTC") if dt else created


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "x"


# ---------------------------------------------------------------------------------------------------------------
# Reading results.json


def load_results(path: Path) -> tuple[bytes, AuditResult]:
    """Read and validate results.json; returns its bytes (embedded in the PDF) and the parsed result.

    Raises
    ------
    ResultsError : the file is missing, not JSON, of another schema major version, or lacks a required key
        (the message names the key path, e.g. ``checks[1].status``).
    """
    path = Path(path)
    try:
        raw_bytes = path.read_bytes()
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read results file ({exc.strerror or exc})") from None
    try:
        raw = json.loads(raw_bytes.decode("utf-8"))
    except UnicodeDecodeError:
        raise ResultsError(f"{path}: not a UTF-8 text file") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(raw, dict):
        raise ResultsError(f"{path}: expected a JSON object at the top level")
    version = raw.get("schema_version")
    if isinstance(version, str) and version.split(".")[0] != results.SCHEMA_VERSION.split(".")[0]:
        raise ResultsError(
            f"{path}: schema_version {version} is not supported by this renderer "
            f"(it reads {results.SCHEMA_VERSION.split('.')[0]}.x); re-run the audit with this tool version"
        )
    try:
        result = results.from_dict(raw)
    except KeyError as exc:
        where = _locate_missing(raw, str(exc.args[0]))
        raise ResultsError(f"{path}: missing required key {where}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise ResultsError(f"{path}: malformed results ({exc})") from None
    return raw_bytes, result


def _locate_missing(raw: Mapping[str, Any], key: str) -> str:
    """The key path of the first object that should hold ``key`` but does not (by the dataclass fields)."""
    places: list[tuple[str, Any, type]] = [("", raw, results.AuditResult)]
    prov = raw.get("provenance")
    if isinstance(prov, dict):
        places.append(("provenance.", prov, results.Provenance))
        for name, cls in (("models", results.ModelInfo), ("image_sets", results.ImageSetInfo)):
            for i, item in enumerate(prov.get(name) or []):
                places.append((f"provenance.{name}[{i}].", item, cls))
    for i, check in enumerate(raw.get("checks") or []):
        label = f"checks[{i}]" + (f" (id {check['id']!r})" if isinstance(check, dict) and "id" in check else "")
        places.append((label + ".", check, results.CheckResult))
    for prefix, obj, cls in places:
        if isinstance(obj, dict) and key not in obj and key in {f.name for f in fields(cls)}:
            return f"'{prefix}{key}'"
    return f"'{key}'"


def _need(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, Mapping):
        raise ResultsError(f"{where} is not an object")
    if key not in mapping:
        raise ResultsError(f"{where} is missing the key {key!r}")
    return mapping[key]


# ---------------------------------------------------------------------------------------------------------------
# Check sections


def generic_section(check: CheckResult, ctx: SectionContext) -> Section:
    """Any method without its own section (and any ERROR/SKIPPED check): status, texts, all findings' keys."""
    columns: list[str] = []
    for finding in check.findings:
        if isinstance(finding, Mapping):
            columns += [k for k in finding if k not in columns]
    if all(isinstance(f, Mapping) for f in check.findings):
        rows = [[fmt_value(f.get(c)) for c in columns] for f in check.findings]
    else:
        columns, rows = ["finding"], [[fmt_value(f)] for f in check.findings]
    details = [(str(k), fmt_value(v)) for k, v in sorted(check.details.items())]
    return Section(
        block="generic",
        check=check,
        anchor=ctx.stem,
        data={"columns": columns, "rows": rows, "details": details},
    )


def _requirements(details: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """details.requirements as the template's requirements table wants them (``why`` may be empty)."""
    return [
        {
            "text": str(_need(req, "text", f"{where}: details.requirements[{i}]")),
            "model": str(req.get("model", "")),
            "met": bool(_need(req, "met", f"{where}: details.requirements[{i}]")),
            "why": str(req.get("why") or ""),
        }
        for i, req in enumerate(details.get("requirements") or [])
    ]


@dataclass(frozen=True)
class _TcavRow:
    model: str
    layer: str
    cls: str
    concept: str
    score: float | None
    score_std: float | None
    p_value: float | None
    p_adjusted: float | None
    significant: bool
    cav_accuracy: float | None
    learned: bool
    random_mean: float | None
    random_std: float | None
    verdict: str
    other: str | None = None  # exchangeable: the other statistic and its raw p, as the cell prints it


def _other_statistic(finding: Any) -> str | None:
    if finding.get("test") != "exchangeable" or not finding.get("learned"):
        return None
    if finding.get("statistic") == "cosine":
        return f"score {fmt_num(finding.get('score'))} (p {fmt_p(finding.get('score_p_value'))})"
    return f"cosine {fmt_num(finding.get('cosine'), 3)} (p {fmt_p(finding.get('cosine_p_value'))})"


def _tcav_row(finding: Any, where: str) -> _TcavRow:
    for key in ("model", "layer", "class", "concept", "significant", "learned", "verdict"):
        _need(finding, key, where)
    return _TcavRow(
        model=str(finding["model"]),
        layer=str(finding["layer"]),
        cls=str(finding["class"]),
        concept=str(finding["concept"]),
        score=finding.get("score"),
        score_std=finding.get("score_std"),
        p_value=finding.get("p_value"),
        p_adjusted=finding.get("p_adjusted"),
        significant=bool(finding["significant"]),
        cav_accuracy=finding.get("cav_accuracy"),
        learned=bool(finding["learned"]),
        random_mean=finding.get("random_score_mean"),
        random_std=finding.get("random_score_std"),
        verdict=str(finding["verdict"]),
        other=_other_statistic(finding),
    )


def _ordered(first: Sequence[str], seen: Sequence[str]) -> list[str]:
    out = [x for x in first if x in seen]
    return out + [x for x in dict.fromkeys(seen) if x not in out]


_SPACE_WORDS = {
    "pooled": "spatially pooled activations (one CAV per layer applied at every position)",
    "flatten": "flattened activations (position-specific)",
}


def tcav_section(check: CheckResult, ctx: SectionContext) -> Section:
    """TCAV: one figure of score bars (a panel per model) against the random band, a findings grid, requirements.

    The grid has one block per model: a row per (class, concept), a column per layer (at most
    TCAV_GRID_COLUMNS, else the block repeats with the next layers), every cell with the score ± std, the raw
    and Holm-adjusted p-values and the verdict; then the random-vs-random score of each class and the CAV accuracy
    of each concept per layer. Every number of every finding is printed once, in far fewer table cells than a row
    per finding (table cells are what WeasyPrint spends its time on in a 100-check report).
    """
    where = f"check {check.id!r} (tcav)"
    details = check.details
    settings = _need(details, "settings", f"{where}: details")
    for key in ("cav", "space", "random_sets", "set_size", "alpha", "test"):
        _need(settings, key, f"{where}: details.settings")
    threshold = float(settings.get("min_cav_accuracy", DEFAULT_MIN_CAV_ACCURACY))
    rows = [_tcav_row(f, f"{where}: findings[{i}]") for i, f in enumerate(check.findings)]
    if not rows:
        return generic_section(check, ctx)

    roles = _ordered(ctx.roles, [r.model for r in rows])
    declared_layers = details.get("layers") or {}
    layers = {
        role: _ordered([str(x) for x in declared_layers.get(role, [])], [r.layer for r in rows if r.model == role])
        for role in roles
    }
    pairs = list(dict.fromkeys((r.cls, r.concept) for r in rows))
    classes = list(dict.fromkeys(r.cls for r in rows))
    concepts = list(dict.fromkeys(r.concept for r in rows))

    def group_label(pair: tuple[str, str]) -> str:
        return f"{pair[1]}\nclass {pair[0]}"

    panels = []
    for role in roles:
        name = ctx.model_names.get(role, "")
        panels.append(figures.TcavPanel(
            title=f"{role}: {name}" if name else role,
            bars=tuple(
                figures.TcavBar(
                    group=group_label((r.cls, r.concept)), layer=r.layer, score=r.score, std=r.score_std,
                    random_mean=r.random_mean, random_std=r.random_std, significant=r.significant,
                    learned=r.learned,
                )
                for r in rows if r.model == role
            ),
            layers=tuple(layers[role]),
        ))
    path, src = ctx.figure("tcav.svg")
    groups = [group_label(p) for p in pairs]
    ctx.draw_sized(figures.tcav_models_size(panels, groups), figures.tcav_models, panels, groups, path)
    models_words = "each model" if len(roles) > 1 else f"the {roles[0]} model"
    figs = (FigureRef(
        src=src,
        alt="TCAV scores by concept and layer, one panel per model",
        caption=(
            f"TCAV scores of {models_words}, one bar per layer (numbered shallow to deep above each panel). "
            "What to look at: a starred bar far from the grey random-vs-random box behind it (dashed line: its "
            "mean) is a significant sensitivity of the class logit to the concept at that layer (above: the logit "
            "rises along the concept; below: less than chance). Hatched stubs are layers where the concept was "
            f"not learned (CAV accuracy < {threshold:g}): no evidence either way. Error bars: std over "
            f"{fmt_value(settings['random_sets'])} random sets. The numbers are in the table below."
        ),
    ),)
    null = null_figure(details, check.findings, ctx, concepts)
    if null is not None:
        figs += (FigureRef(src=null[0], alt=null[1], caption=null[2]),)

    requirements = _requirements(details, where)
    # The settings (learner, space, set sizes, test, α) are stated in "What was tested and why"; no table repeats them.
    grid, shared_random, shared_accuracy = _tcav_grid(rows, roles, layers, pairs, classes, concepts)
    return Section(
        block="tcav",
        check=check,
        anchor=ctx.stem,
        figures=figs,
        data={
            "classes": classes,
            "concepts": concepts,
            "layers": [(role, layers[role]) for role in roles],
            "settings": settings,
            "space_words": _SPACE_WORDS.get(str(settings["space"]), f"{settings['space']} activations"),
            "threshold": f"{threshold:g}",
            "grid": grid,
            "grid_columns": max((len(block["layers"]) for block in grid), default=1),
            "shared_random": shared_random,
            "shared_accuracy": shared_accuracy,
            "requirements": requirements,
            "notes": [str(n) for n in details.get("notes") or []],
            "limits": TCAV_CLAIM + significance_note(settings),
        },
    )


# Layer columns per block of the TCAV findings grid: four keep a cell's two lines (score, p-values) unbroken on A4.
TCAV_GRID_COLUMNS = 4
_TCAV_MARKS = {"sensitive": "★ sensitive", "significant-low": "★ below random"}


def _tcav_cell(r: _TcavRow | None, random_in_cell: bool, accuracy_in_cell: bool) -> dict[str, Any]:
    """One finding as a grid cell: ``lines`` (printed one under the other) and a css class for its verdict."""
    if r is None:
        return {"lines": ["not computed"], "cls": "v-none"}
    if r.learned and r.score is not None:
        head = fmt_pm(r.score, r.score_std)
        if r.significant:
            head += " " + _TCAV_MARKS.get(r.verdict, f"★ {r.verdict}")
        lines = [head, f"p {fmt_p(r.p_value)} · adj. {fmt_p(r.p_adjusted)}"]
        if r.other is not None:  # exchangeable: the statistic that did not decide, with its raw p
            lines.append(r.other)
    else:
        # Not learned: the CAV accuracy that says so is in the accuracy row (or the cell's last line).
        lines = [r.verdict if r.verdict == "not learned" else f"{r.verdict}: no score"]
    if random_in_cell:
        lines.append(f"random {fmt_pm(r.random_mean, r.random_std)}")
    if accuracy_in_cell:
        lines.append(f"CAV acc. {fmt_num(r.cav_accuracy)}")
    return {"lines": lines, "cls": f"v-{_slug(r.verdict)}"}


def _tcav_grid(
    rows: Sequence[_TcavRow], roles: Sequence[str], layers: Mapping[str, Sequence[str]],
    pairs: Sequence[tuple[str, str]], classes: Sequence[str], concepts: Sequence[str],
) -> tuple[list[dict[str, Any]], bool, bool]:
    """The findings grid of a TCAV section: blocks of (model, up to TCAV_GRID_COLUMNS layers).

    Returns (blocks, shared_random, shared_accuracy). The random-vs-random score depends on (model, layer, class)
    and the CAV accuracy on (model, layer, concept) — TCAV trains both once and reuses them — so each gets its own
    row. Should a results file disagree (different values across the repeats), the values go into every cell.
    """
    cell = {(r.model, r.layer, r.cls, r.concept): r for r in rows}
    pair_set = set(pairs)
    # The values seen for each (model, layer, class) and (model, layer, concept), and the first row that has them;
    # a row without the numbers (None) does not contradict the others.
    random_values: dict[tuple[str, str, str], set[tuple[Any, Any]]] = {}
    accuracy_values: dict[tuple[str, str, str], set[Any]] = {}
    random_of: dict[tuple[str, str, str], _TcavRow] = {}
    accuracy_of: dict[tuple[str, str, str], _TcavRow] = {}
    for r in rows:
        if r.random_mean is not None or r.random_std is not None:
            random_values.setdefault((r.model, r.layer, r.cls), set()).add((r.random_mean, r.random_std))
            random_of.setdefault((r.model, r.layer, r.cls), r)
        if r.cav_accuracy is not None:
            accuracy_values.setdefault((r.model, r.layer, r.concept), set()).add(r.cav_accuracy)
            accuracy_of.setdefault((r.model, r.layer, r.concept), r)
    shared_random = all(len(v) == 1 for v in random_values.values())
    shared_accuracy = all(len(v) == 1 for v in accuracy_values.values())
    blocks = []
    for role in roles:
        for start in range(0, max(len(layers[role]), 1), TCAV_GRID_COLUMNS):
            chunk = list(layers[role][start:start + TCAV_GRID_COLUMNS])
            grid_rows: list[dict[str, Any]] = []
            for cls in classes:
                for concept in concepts:
                    if (cls, concept) not in pair_set:
                        continue
                    grid_rows.append({
                        "kind": "finding", "class": cls, "concept": concept,
                        "first": not grid_rows or grid_rows[-1]["class"] != cls,
                        "cells": [_tcav_cell(cell.get((role, layer, cls, concept)), not shared_random,
                                             not shared_accuracy) for layer in chunk],
                    })
            if shared_random:
                cells = []
                for layer in chunk:
                    lines = []
                    for cls in classes:
                        r = random_of.get((role, layer, cls))
                        lines.append(f"{cls} {fmt_pm(r.random_mean, r.random_std) if r else '—'}")
                    cells.append({"lines": lines, "cls": ""})
                grid_rows.append({"kind": "random", "class": "", "concept": "", "first": True, "cells": cells})
            if shared_accuracy:
                # One row, a line per concept: as readable as a row per concept, with a third of the table cells.
                cells = []
                for layer in chunk:
                    lines = []
                    for concept in concepts:
                        r = accuracy_of.get((role, layer, concept))
                        value = "—" if r is None else fmt_num(r.cav_accuracy) + ("" if r.learned else " not learned")
                        lines.append(f"{concept} {value}")
                    cells.append({"lines": lines, "cls": ""})
                grid_rows.append({"kind": "accuracy", "class": "", "concept": "", "first": True, "cells": cells})
            blocks.append({"role": role, "first_layer": start + 1, "layers": chunk,
                           "more": start > 0, "rows": grid_rows})
    return blocks, shared_random, shared_accuracy


@dataclass(frozen=True)
class _ProbeRow:
    model: str
    cls: str
    auc: float | None
    reliant: bool
    effect: str
    shift: float | None
    flipped_to: float | None
    changed: float | None
    n_pairs: Any


def _probe_row(finding: Any, where: str) -> _ProbeRow:
    for key in ("model", "class", "auc", "reliant"):
        _need(finding, key, where)
    auc = finding["auc"]
    return _ProbeRow(
        model=str(finding["model"]),
        cls=str(finding["class"]),
        auc=None if auc is None else float(auc),
        reliant=bool(finding["reliant"]),
        effect=str(finding.get("effect") or "—"),
        shift=finding.get("mean_logit_shift"),
        flipped_to=finding.get("flipped_to_class"),
        changed=finding.get("prediction_changed"),
        n_pairs=finding.get("n_pairs"),
    )


_CORNERS = {"top-left", "top-right", "bottom-left", "bottom-right"}
MAX_PROBE_FIGURE_CLASSES = 30


def _placement_words(artifact: Mapping[str, Any]) -> str:
    """How the artifact was pasted, in words: where, how large, how opaque."""
    pos = str(artifact.get("position", ""))
    if pos == "random":
        where = "at a random position in each image (seeded)"
    elif pos in _CORNERS:
        where = f"in the {pos} corner"
        margin = artifact.get("margin")
        if isinstance(margin, (int, float)) and not isinstance(margin, bool):
            where += f", {100 * margin:g} % of the image side from the edges" if margin else ", at the edges"
    else:
        where = f"at position {pos}" if pos else "at the configured position"
    scale = artifact.get("scale")
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        size = f"scaled to {100 * scale:g} % of the image width"
    else:
        size = "at its native pixel size"
    opacity = artifact.get("opacity")
    if isinstance(opacity, (int, float)) and not isinstance(opacity, bool) and opacity < 1:
        alpha = f"at opacity {opacity:g}"
    else:
        alpha = "fully opaque"
    return f"{where}, {size}, {alpha}"


def artifact_probe_section(check: CheckResult, ctx: SectionContext) -> Section:
    """Artifact probe: AUC bars per class and model against the reliance band, requirements, findings table."""
    where = f"check {check.id!r} (artifact_probe)"
    details = check.details
    settings = _need(details, "settings", f"{where}: details")
    for key in ("artifact", "threshold", "direction"):
        _need(settings, key, f"{where}: details.settings")
    artifact = _need(settings, "artifact", f"{where}: details.settings")
    image = str(_need(artifact, "image", f"{where}: details.settings.artifact"))
    threshold = float(settings["threshold"])
    direction = str(settings["direction"])
    rows = [_probe_row(f, f"{where}: findings[{i}]") for i, f in enumerate(check.findings)]
    if not rows:
        return generic_section(check, ctx)

    roles = _ordered(ctx.roles, [r.model for r in rows])
    classes = list(dict.fromkeys(r.cls for r in rows))
    band = f"above {threshold:g}" + (f" or below {1 - threshold:g}" if direction == "both" else "")

    # Many classes (an ImageNet model tests 1000) would not fit one figure: it shows the classes the artifact
    # moves most (reliant ones first), in their original order; the table lists every class.
    shown = classes
    if len(classes) > MAX_PROBE_FIGURE_CLASSES:
        def strength(cls: str) -> tuple[bool, float]:
            mine = [r for r in rows if r.cls == cls]
            return (any(r.reliant for r in mine), max((abs(r.auc - 0.5) for r in mine if r.auc is not None),
                                                      default=0.0))
        keep = set(sorted(classes, key=strength, reverse=True)[:MAX_PROBE_FIGURE_CLASSES])
        shown = [c for c in classes if c in keep]
    path, src = ctx.figure("probe-auc.svg")
    title = f"Artifact {figures.shorten(image, 80)}"
    ctx.draw_sized(
        figures.artifact_auc_size(shown, roles, threshold=threshold, direction=direction, title=title),
        figures.artifact_auc,
        [figures.AucBar(model=r.model, cls=r.cls, auc=r.auc, reliant=r.reliant) for r in rows if r.cls in shown],
        shown, roles, path, threshold=threshold, direction=direction, title=title,
    )
    subset = (
        f" The figure shows the {len(shown)} of {len(classes)} classes the artifact moves most (every reliant "
        "class first); the table lists all of them."
        if len(shown) < len(classes) else ""
    )
    fig = FigureRef(
        src=src,
        alt="AUC of each class logit, artifact versus neutral patch, per model",
        caption=(
            "AUC of each class logit, artifact versus neutral patch, one bar per model drawn from 0.5. "
            f"What to look at: bars that end in a shaded band (AUC {band}) are classes whose logit moves with "
            "the artifact; those classes rely on it (heavy outline, bold value). "
            + ("To the left the artifact lowers the logit, to the right it raises it. " if direction == "both"
               else "Only raising counts as reliance here (direction: raise); bars to the left show the artifact "
                    "lowering the logit. ")
            + "An AUC of 0.5 means the artifact does nothing beyond what a neutral patch of the same shape does."
            + subset
        ),
    )

    # A row per class, a column group per model: the reviewer reads the candidate and the reference side by side,
    # and the table has a third of the cells of a row per (model, class).
    common_pairs = {r.n_pairs for r in rows}
    by_key = {(r.model, r.cls): r for r in rows}
    table = []
    for cls in classes:
        cells = []
        for role in roles:
            r = by_key.get((role, cls))
            if r is None:
                cells.append({"auc": ["not computed"], "reliant": False, "shift": "—", "flipped_to": "—"})
                continue
            auc = [fmt_num(r.auc)]
            if r.reliant:
                auc.append(f"reliant · {r.effect}")
            if len(common_pairs) > 1:
                auc.append(f"{fmt_value(r.n_pairs)} pairs")
            cells.append({"auc": auc, "reliant": r.reliant, "shift": fmt_num(r.shift),
                          "flipped_to": fmt_share(r.flipped_to)})
        table.append({"class": cls, "cells": cells})
    changed = []
    for role in roles:
        shares = [r.changed for r in rows if r.model == role and r.changed is not None]
        if shares:
            changed.append((role, fmt_share(shares[0])))
    n_pairs = settings.get("n_pairs")
    if n_pairs is None:
        n_pairs = next((r.n_pairs for r in rows if r.n_pairs is not None), None)

    return Section(
        block="artifact_probe",
        check=check,
        anchor=ctx.stem,
        figures=(fig,),
        data={
            "artifact": image,
            "placement": _placement_words(artifact),
            "n_pairs": fmt_value(n_pairs),
            "threshold": f"{threshold:g}",
            "low": f"{1 - threshold:g}",
            "direction": direction,
            "test": str(settings.get("test") or ""),
            "classes": classes,
            "roles": roles,
            "table": table,
            "changed": changed,
            "requirements": _requirements(details, where),
            # The audit's standard note restates the method, which "What was tested and why" already explains.
            "notes": [str(n) for n in details.get("notes") or []],
            "limits": PROBE_LIMITS_NOTE,
        },
    )


SectionBuilder = Callable[[CheckResult, SectionContext], Section]

# Method name -> section builder; methods not listed get the generic section.
# Imported here, not at the top: section_sacv imports this module's helpers, all defined above this line.
from auditor.report.section_sacv import sacv_section  # noqa: E402

SECTIONS: dict[str, SectionBuilder] = {
    "tcav": tcav_section,
    "sacv": sacv_section,
    "artifact_probe": artifact_probe_section,
    "invert": invert_section,
    "rsvc": rsvc_section,
}


def build_section(
    index: int, check: CheckResult, result: AuditResult, assets_dir: Path, jobs: list[FigureJob] | None = None,
) -> Section:
    """The section of ``check`` (the ``index``-th check), its figures written under ``assets_dir``.

    With ``jobs`` given, the figures are not drawn here but appended to it (see draw_figures).
    """
    ctx = SectionContext(
        jobs=jobs,
        check_id=check.id,
        result=result,
        assets_dir=assets_dir,
        stem=f"check-{index + 1}-{_slug(check.id)}",
        roles=tuple(m.role for m in result.provenance.models),
        model_names={m.role: m.name for m in result.provenance.models},
    )
    # A check that crashed or was skipped has no method material to draw: its summary says why.
    if check.status in (Status.ERROR, Status.SKIPPED):
        return generic_section(check, ctx)
    builder = SECTIONS.get(check.method, generic_section)
    try:
        return builder(check, ctx)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultsError(
            f"check {check.id!r} ({check.method}): malformed findings or details ({type(exc).__name__}: {exc})"
        ) from exc


# Below this many figures the drawing stays in this process (starting workers costs about a second).
PARALLEL_MIN_FIGURES = 12
FIGURE_WORKERS = 2
# While this process lays out the PDF, the figure workers run at a lower priority: WeasyPrint keeps a core to
# itself (its layout is the longest single chain of work), the workers share what is left and get both cores
# once the layout is done. A mild step, so that on a busy machine they are not starved.
WORKER_NICE = 5


def _run_job(job: FigureJob) -> None:
    try:
        job.func(*job.args, **job.kwargs)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultsError(
            f"check {job.check_id!r}: malformed findings or details ({type(exc).__name__}: {exc})"
        ) from exc
    if job.size is not None and job.raster is not None and job.raster.is_file():
        with PIL.Image.open(job.raster) as image:  # reads the header only
            if image.size != tuple(job.size):
                # The PDF was laid out for the announced size: a different one would print distorted.
                raise RenderError(f"figure {job.raster.name} of check {job.check_id!r} is {image.size[0]}x"
                                  f"{image.size[1]} pixels, not the {job.size[0]}x{job.size[1]} announced")


def _workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(FIGURE_WORKERS, cores))


# A worker is a fresh interpreter (not multiprocessing: "spawn" would re-run the caller's main script, "fork"
# would copy WeasyPrint's GLib threads). It lowers its priority by its second argument, reads sys.path and then
# its jobs as pickles from the file named by its first argument, draws them (marking each one done, see
# FigureWorker.drew) and writes back one pickle on stdout: None, or the error that stopped it.
_WORKER = (
    "import os, pickle, sys; f = open(sys.argv[1], 'rb'); sys.path[:] = pickle.load(f); "
    "nice = int(sys.argv[2]); nice and hasattr(os, 'nice') and os.nice(nice); "
    "from auditor.report.render import _worker_main; _worker_main(f)"
)


def _worker_main(source: Any) -> None:
    jobs = pickle.load(source)
    # An empty file done/<k> says job k is drawn (its files complete): the render may be waiting for it.
    done = Path(source.name).parent / "done"
    source.close()
    error: ResultsError | RenderError | None = None
    try:
        for k, job in enumerate(jobs):
            _run_job(job)
            (done / str(k)).touch()
    except (ResultsError, RenderError) as exc:
        error = exc
    pickle.dump(error, sys.stdout.buffer)
    sys.stdout.buffer.flush()


class FigureWorker:
    """A worker process drawing figure jobs (see _WORKER), started at once; ``wait`` joins it.

    ``nice``: how much lower the worker's scheduling priority is (0: the same as this process).
    """

    def __init__(self, jobs: Sequence[FigureJob], nice: int = 0) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="auditor-figures-")
        folder = Path(self._tmp.name)
        self._done = folder / "done"
        self._done.mkdir()
        self.jobs = tuple(jobs)
        # Jobs go through a file, not a pipe: the caller never waits for the worker to start reading.
        job_file = folder / "jobs.pickle"
        with job_file.open("wb") as f:
            pickle.dump(list(sys.path), f)
            pickle.dump(list(jobs), f)
        # Its output goes to files too: a pipe nobody reads while WeasyPrint works could fill up and stall it.
        self._out = (folder / "out.pickle").open("w+b")
        self._err = (folder / "err.txt").open("w+b")
        self._proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(job_file), str(int(nice))],
                                      stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err)

    def drew(self, k: int) -> bool:
        """Whether job ``k`` (of ``jobs``) is drawn."""
        return (self._done / str(k)).exists()

    def finished(self) -> bool:
        """Whether the worker process has ended (done, stopped by an error, or crashed)."""
        return self._proc.poll() is not None

    def wait(self) -> None:
        """Wait for the worker; raises the ResultsError that stopped it, or RenderError when it crashed."""
        try:
            code = self._proc.wait()
            self._out.seek(0)
            out = self._out.read()
            self._err.seek(0)
            err = self._err.read()
        finally:
            self._close()
        if code != 0 or not out:
            raise RenderError(f"a figure worker failed (exit code {code}): {err.decode('utf-8', 'replace')[-2000:]}")
        error = pickle.loads(out)
        if error is not None:
            raise error

    def cancel(self) -> None:
        """Stop the worker (the render failed elsewhere) and remove its files."""
        try:
            self._proc.kill()
            self._proc.wait()
        finally:
            self._close()

    def _close(self) -> None:
        self._out.close()
        self._err.close()
        self._tmp.cleanup()


def draw_figures(jobs: Sequence[FigureJob]) -> None:
    """Draw deferred figures: shared with worker processes when there are many, else all here.

    Every job writes its own files and a figure's bytes depend only on its inputs, so which process draws it
    (and in what order) does not change any output byte.
    """
    workers = _workers()
    if workers < 2 or len(jobs) < PARALLEL_MIN_FIGURES:
        for job in jobs:
            _run_job(job)
        return
    # Job k goes to process k % workers; this process (index 0) draws its share while the others run.
    started = [FigureWorker(jobs[w::workers]) for w in range(1, workers)]
    try:
        for job in jobs[0::workers]:
            _run_job(job)
    except BaseException:
        for worker in started:
            worker.cancel()
        raise
    for i, worker in enumerate(started):
        try:
            worker.wait()
        except BaseException:
            for rest in started[i + 1:]:
                rest.cancel()
            raise


def placeholder_png(size: tuple[int, int]) -> bytes:
    """A PNG of ``size`` = (width, height), 8-bit RGB, that has a header and no pixels.

    It stands in for a figure still being drawn while WeasyPrint lays out the PDF: the layout needs only the
    image's size, and WeasyPrint reads an image file's pixels only when it writes the PDF, by which time the
    figure has replaced the file. Were the placeholder ever written into a PDF, decoding it would fail: it can
    never end up in a report as a blank figure.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    width, height = size
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) \
        + chunk(b"IEND", b"")


class FigureDrawing:
    """All figure jobs drawn by worker processes while this process lays out the PDF (see render_report).

    A figure whose raster size is announced (FigureJob.size) gets a placeholder_png until it is drawn; the PDF
    waits (wait_for) only for the other figures, which the workers draw first. ``join`` (before the PDF is
    written) waits for every figure and raises the error of a worker that failed.
    """

    def __init__(self, jobs: Sequence[FigureJob], stage: Path, workers: int) -> None:
        self._stage = stage
        for job in jobs:
            if job.size is not None and job.raster is not None:
                job.raster.write_bytes(placeholder_png(job.size))
        order = [job for job in jobs if job.size is None] + [job for job in jobs if job.size is not None]
        self._started = time.perf_counter()
        self._workers: list[FigureWorker] = []
        try:
            for w in range(min(workers, len(order))):
                self._workers.append(FigureWorker(order[w::workers], nice=WORKER_NICE))
        except BaseException:
            self.cancel()
            raise
        self._where = {job.raster.relative_to(stage): (worker, k) for worker in self._workers
                       for k, job in enumerate(worker.jobs) if job.raster is not None and job.size is None}
        # Rasters (relative to the stage, ``assets/x.png``) that do not exist until drawn.
        self.pending = frozenset(self._where)
        self.seconds: float | None = None  # from the start until every figure was drawn (set by join)
        self._joined = False

    def wait_for(self, relative: Path) -> bool:
        """Block until the pending raster ``relative`` is drawn (True); False when it is not one of them."""
        hit = self._where.get(Path(relative))
        if hit is None:
            return False
        worker, k = hit
        while not worker.drew(k):
            if worker.finished():
                self.join()  # raises the error that stopped the worker; without one, every job was drawn
                return True
            time.sleep(0.02)
        return True

    def join(self) -> None:
        """Wait until every figure is drawn; raises the first worker's error (and stops the others)."""
        if self._joined:
            return
        self._joined = True
        for i, worker in enumerate(self._workers):
            try:
                worker.wait()
            except BaseException:
                for rest in self._workers[i + 1:]:
                    rest.cancel()
                raise
        self.seconds = time.perf_counter() - self._started

    def cancel(self) -> None:
        """Stop every worker (the render failed elsewhere)."""
        if self._joined:
            return
        self._joined = True
        for worker in self._workers:
            worker.cancel()


# ---------------------------------------------------------------------------------------------------------------
# HTML


def _environment() -> jinja2.Environment:
    package = files("auditor.templates")
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: package.joinpath(name).read_text(encoding="utf-8")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(num=fmt_num, pval=fmt_p, value=fmt_value, slug=_slug, wbr=break_at_underscores, clip=clip)
    return env


# Free text (a title, a description) longer than this is cut where it repeats (running headers, the summary, CI
# outputs) and shown whole once: a 200,000-character title on every page made WeasyPrint lay out for minutes.
CLIP = 160


def clip(text: str, limit: int = CLIP) -> str:
    """`text` on one line, at most `limit` characters (cut with an ellipsis)."""
    one = " ".join(str(text).split())
    return one if len(one) <= limit else one[: limit - 1].rstrip() + "…"


def _verdict_summary(result: AuditResult) -> dict[str, Any]:
    counts = {s: sum(1 for c in result.checks if c.status is s) for s in Status}
    n = len(result.checks)
    parts = []
    if counts[Status.FAIL]:
        failed = [c for c in result.checks if c.status is Status.FAIL]
        parts.append(f"{counts[Status.FAIL]} of {n} checks failed")
        by_sev = [s for s in results.SEVERITIES if any(c.severity == s for c in failed)]
        if by_sev:
            parts[-1] += " (" + ", ".join(f"{sum(c.severity == s for c in failed)} {s}" for s in by_sev) + ")"
    if counts[Status.ERROR]:
        parts.append(f"{counts[Status.ERROR]} could not be computed")
    if counts[Status.WARN]:
        parts.append(f"{counts[Status.WARN]} with warnings")
    if counts[Status.SKIPPED]:
        parts.append(f"{counts[Status.SKIPPED]} skipped")
    if not parts:
        parts.append(f"all {n} checks met their requirements")
    verdict = result.verdict.upper()
    return {
        "word": verdict,
        "class": {"PASS": "pass", "FAIL": "fail"}.get(verdict, "other"),
        "text": "; ".join(parts),
        "counts": {s.value: counts[s] for s in Status},
    }


def _status_word(value: Any) -> dict[str, str] | None:
    """A check status from the baseline comparison as a badge (word + css class); None when absent."""
    if value is None:
        return None
    word = str(value).upper()
    known = {s.value for s in Status}
    return {"word": word, "class": word.lower() if word in known else "skipped"}


# results.json sorts its keys: a finding's identity and numbers are printed in this reading order instead.
_KEY_ORDER = ("model", "layer", "class", "concept", "artifact")
_VALUE_ORDER = ("score", "auc", "p_value", "p_adjusted", "significant", "reliant")
_VALUE_LABELS = {"p_value": "p", "p_adjusted": "p adj.", "mean_logit_shift": "shift"}


def _in_order(mapping: Mapping[str, Any], order: Sequence[str]) -> list[tuple[str, Any]]:
    rank = {k: i for i, k in enumerate(order)}
    return sorted(mapping.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def _compact(values: Any) -> str:
    """A finding's compared numbers in one short line (``score 0.90 · p adj. 0.01 · significant yes``)."""
    if values is None:
        return "—"
    if not isinstance(values, Mapping):
        return fmt_value(values)
    parts = []
    for k, v in _in_order(values, _VALUE_ORDER):
        shown = fmt_p(v) if k.startswith("p_") and isinstance(v, (int, float)) and not isinstance(v, bool) \
            else fmt_value(v)
        parts.append(f"{_VALUE_LABELS.get(k, k)} {shown}")
    return " · ".join(parts) or "—"


def baseline_view(result: AuditResult) -> dict[str, Any] | None:
    """What the "Changes since the baseline" section shows, from ``result.baseline`` (auditor.diff's output).

    Returns None when the audit was not compared with a baseline.

    Raises
    ------
    ResultsError : the baseline object lacks a key the section needs.
    """
    base = result.baseline
    if base is None:
        return None
    where = "results.json: baseline"
    old, new = _need(base, "old", where), _need(base, "new", where)
    sides = {}
    for label, side in (("old", old), ("new", new)):
        sides[label] = {
            "date": fmt_date(str(_need(side, "created", f"{where}.{label}"))),
            "verdict": str(_need(side, "verdict", f"{where}.{label}")).upper(),
            "policy": str(side.get("policy_sha256") or ""),
            "models": dict(_need(side, "models", f"{where}.{label}") or {}),
        }
    for side in sides.values():
        side["class"] = {"PASS": "pass", "FAIL": "fail"}.get(side["verdict"], "other")
    roles = list(dict.fromkeys([m.role for m in result.provenance.models]
                               + list(sides["old"]["models"]) + list(sides["new"]["models"])))
    models = []
    for role in roles:
        a, b = sides["old"]["models"].get(role), sides["new"]["models"].get(role)
        if a is None and b is None:
            continue
        state = "unchanged" if a == b else "new" if a is None else "removed" if b is None else "changed"
        models.append({"role": role, "state": state, "old": str(a or "")[:12], "new": str(b or "")[:12]})
    checks = []
    for i, c in enumerate(_need(base, "checks", where) or []):
        w = f"{where}.checks[{i}]"
        if not _need(c, "changed", w):
            continue
        checks.append({
            "id": str(_need(c, "id", w)), "method": str(c.get("method") or ""),
            "old": _status_word(c.get("old_status")), "new": _status_word(c.get("new_status")),
        })
    findings = []
    for i, f in enumerate(_need(base, "findings", where) or []):
        w = f"{where}.findings[{i}]"
        key = _need(f, "key", w) or {}
        findings.append({
            "check": str(_need(f, "check", w)), "method": str(f.get("method") or ""),
            "key": ([(str(k), fmt_value(v)) for k, v in _in_order(key, _KEY_ORDER)] if isinstance(key, Mapping)
                    else [("", fmt_value(key))]),
            "change": str(_need(f, "change", w)),
            "old": _compact(f.get("old")), "new": _compact(f.get("new")),
        })
    return {
        "old": sides["old"], "new": sides["new"],
        "verdict_changed": bool(base.get("verdict_changed", sides["old"]["verdict"] != sides["new"]["verdict"])),
        "policy_changed": bool(sides["old"]["policy"] and sides["new"]["policy"]
                               and sides["old"]["policy"] != sides["new"]["policy"]),
        "models": models,
        "models_changed": [m for m in models if m["state"] != "unchanged"],
        "checks": checks,
        "findings": findings,
    }


def method_notes(sections: Sequence[Section]) -> list[dict[str, Any]]:
    """The appendix's method notes: one entry per method of the report, in order of first appearance.

    Each entry: ``method``, ``title``, ``text`` (METHOD_NOTES, may be empty), ``limits`` (the sections' limits
    note) and ``sections`` (the section numbers that used it). ERROR and SKIPPED checks ran no method: not listed.
    """
    notes: dict[str, dict[str, Any]] = {}
    for number, s in enumerate(sections, start=1):
        if s.check.status in (Status.ERROR, Status.SKIPPED) or s.block == "generic":
            continue
        method = s.check.method
        if method not in notes:
            title, text = METHOD_NOTES.get(method, (method, ""))
            notes[method] = {"method": method, "title": title, "text": text,
                             "limits": str(s.data.get("limits") or ""), "sections": []}
        notes[method]["sections"].append(number)
    return list(notes.values())


def render_html(result: AuditResult, sections: Sequence[Section]) -> str:
    """The report as one HTML document (CSS inlined; figures referenced as ``assets/...``)."""
    env = _environment()
    css = files("auditor.templates").joinpath(STYLESHEET).read_text(encoding="utf-8")
    created = _parse_created(result.provenance.created)
    return env.get_template(TEMPLATE).render(
        result=result,
        prov=result.provenance,
        sections=sections,
        methods=method_notes(sections),
        verdict=_verdict_summary(result),
        baseline=baseline_view(result),
        date=fmt_date(result.provenance.created),
        created_w3c=created.strftime("%Y-%m-%dT%H:%M:%SZ") if created else None,
        css=Markup(css),  # our own stylesheet, shipped with the package
        renderer_version=__version__,
        Status=Status,
    )


_SRC = re.compile(r'\bsrc="([^"]*)"')


def _check_assets(html: str, roots: Sequence[Path], pending: Collection[Path] = ()) -> None:
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
        png = figures.raster_path(Path(m.group(2)))
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


def _write_pdf(
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

    created = _parse_created(result.provenance.created) or datetime(1970, 1, 1, tzinfo=timezone.utc)
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
# junit.xml and summary.md

_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(text: str) -> str:
    return _XML_ILLEGAL.sub("\ufffd", text)


def junit_xml(result: AuditResult) -> bytes:
    """JUnit XML: one testcase per check (classname = method, name = check id)."""
    count = {s: sum(1 for c in result.checks if c.status is s) for s in Status}
    totals = {
        "tests": str(len(result.checks)), "failures": str(count[Status.FAIL]),
        "errors": str(count[Status.ERROR]), "skipped": str(count[Status.SKIPPED]),
    }
    root = ET.Element("testsuites", {"name": _xml_text(clip(result.title)), **totals})
    suite = ET.SubElement(root, "testsuite", {"name": _xml_text(clip(result.title)), **totals})
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("verdict", result.verdict), ("created", result.provenance.created),
        ("policy_sha256", result.provenance.policy_sha256), ("tool_version", result.provenance.tool_version),
    ):
        ET.SubElement(props, "property", name=name, value=_xml_text(str(value)))
    for check in result.checks:
        case = ET.SubElement(suite, "testcase", classname=_xml_text(check.method), name=_xml_text(check.id))
        body = _xml_text(f"{check.summary}\nRequirement: {check.requirement}\nSeverity: {check.severity}")
        summary = _xml_text(check.summary)
        if check.status is Status.FAIL:
            ET.SubElement(case, "failure", message=summary, type=_xml_text(check.severity)).text = body
        elif check.status is Status.ERROR:
            ET.SubElement(case, "error", message=summary, type="ERROR").text = body
        elif check.status is Status.SKIPPED:
            ET.SubElement(case, "skipped", message=summary)
        elif check.status is Status.WARN:
            ET.SubElement(case, "system-out").text = _xml_text(f"WARN: {check.summary}")
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _md(text: str) -> str:
    """Text for a markdown table cell: no HTML, no table breaks, no accidental emphasis or links."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    # "_" stays: GitHub does not emphasise inside words, and check ids are full of underscores.
    text = re.sub(r"([\\`*\[\]|])", r"\\\1", text)
    return " ".join(text.split())


def summary_markdown(result: AuditResult) -> str:
    """summary.md for a CI job summary: the verdict line and one table row per check."""
    verdict = _verdict_summary(result)
    prov = result.provenance
    icon = _STATUS_ICON[Status.PASS] if verdict["word"] == "PASS" else _STATUS_ICON[Status.FAIL]
    lines = [
        f"## {_md(clip(result.title))}",
        "",
        f"{icon} **Verdict: {_md(verdict['word'])}** — {_md(verdict['text'])}.",
        "",
        f"Audit of {fmt_date(prov.created)} · concept-auditor {_md(prov.tool_version)} · "
        f"policy sha256 `{prov.policy_sha256}`",
        "",
        "| Check | Method | Severity | Status | Summary |",
        "|---|---|---|---|---|",
    ]
    for c in result.checks:
        lines.append(
            f"| {_md(c.id)} | {_md(c.method)} | {_md(c.severity)} | {_STATUS_ICON[c.status]} {c.status.value} "
            f"| {_md(c.summary)} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# The entry point


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
        drawing: FigureDrawing | None = None
        if _workers() >= 2 and len(jobs) >= PARALLEL_MIN_FIGURES:
            # Worker processes draw the figures while this process lays out the PDF (WeasyPrint uses one core).
            drawing = FigureDrawing(jobs, stage, _workers())
        else:
            draw_figures(jobs)
            timings["figures"] = time.perf_counter() - clock
        clock = time.perf_counter()
        try:
            html = render_html(result, sections)
            timings["html"] = time.perf_counter() - clock
            pending = drawing.pending if drawing is not None else frozenset()
            for_pdf = pdf_html(html, stage, pending)
            # Figures written by the audit itself (e.g. image collages) already live in out_dir/assets.
            _check_assets(for_pdf, [stage, out_dir], pending)
            (stage / "report.html").write_text(html, encoding="utf-8")
            timings.update(_write_pdf(
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
        _check_assets(html, [stage, out_dir])
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
