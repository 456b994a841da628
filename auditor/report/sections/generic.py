"""The generic section: any method without a section of its own, and any ERROR or SKIPPED check."""

from __future__ import annotations

from collections.abc import Mapping

from auditor.report.format import fmt_value
from auditor.report.types import Section, SectionContext
from auditor.results import CheckResult


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
