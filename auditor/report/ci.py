"""CI outputs: junit.xml (one testcase per check) and summary.md (a job summary table)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from auditor.report.format import clip, fmt_date
from auditor.report.html import verdict_summary
from auditor.results import AuditResult, Status

_STATUS_ICON = {
    Status.PASS: "✅", Status.FAIL: "❌", Status.WARN: "⚠️", Status.ERROR: "⛔", Status.SKIPPED: "⏭️",
}


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
    verdict = verdict_summary(result)
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
