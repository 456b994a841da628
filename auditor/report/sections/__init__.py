"""Check sections, one module per method (peers): SECTIONS says which builds the section of each method.

Adding a method to the report: its module here, its figures under auditor/report/figures/, its template
templates/sections/<block>.html.j2, and ONE entry in SECTIONS. A method without an entry gets the generic section.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from auditor.report.format import slug
from auditor.report.loading import ResultsError
from auditor.report.sections import artifact_probe, cladec, invert, rsvc, sacv, similarity, tcav
from auditor.report.sections.generic import generic_section
from auditor.report.types import FigureJob, Section, SectionBuilder, SectionContext
from auditor.results import AuditResult, CheckResult, Status


@dataclass(frozen=True)
class SectionSpec:
    """A method's section: its builder, and its entry in the appendix's method notes (how the method works, said
    once; the limits are each section's own, in its data)."""

    build: SectionBuilder
    title: str
    text: str = ""


# Method name -> its section; methods not listed get the generic section.
SECTIONS: dict[str, SectionSpec] = {
    "tcav": SectionSpec(tcav.tcav_section, tcav.NOTES_TITLE, tcav.NOTES_TEXT),
    "sacv": SectionSpec(sacv.sacv_section, sacv.NOTES_TITLE, sacv.NOTES_TEXT),
    "artifact_probe": SectionSpec(artifact_probe.artifact_probe_section, artifact_probe.NOTES_TITLE, artifact_probe.NOTES_TEXT),
    "invert": SectionSpec(invert.invert_section, invert.NOTES_TITLE, invert.NOTES_TEXT),
    "rsvc": SectionSpec(rsvc.rsvc_section, rsvc.NOTES_TITLE, rsvc.NOTES_TEXT),
    "similarity": SectionSpec(similarity.similarity_section, similarity.NOTES_TITLE, similarity.NOTES_TEXT),
    "cladec": SectionSpec(cladec.cladec_section, cladec.NOTES_TITLE, cladec.NOTES_TEXT),
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
        stem=f"check-{index + 1}-{slug(check.id)}",
        roles=tuple(m.role for m in result.provenance.models),
        model_names={m.role: m.name for m in result.provenance.models},
    )
    # A check that crashed or was skipped has no method material to draw: its summary says why.
    if check.status in (Status.ERROR, Status.SKIPPED):
        return generic_section(check, ctx)
    spec = SECTIONS.get(check.method)
    builder = spec.build if spec is not None else generic_section
    try:
        return builder(check, ctx)
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultsError(
            f"check {check.id!r} ({check.method}): malformed findings or details ({type(exc).__name__}: {exc})"
        ) from exc

