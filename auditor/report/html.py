"""The report as HTML: the jinja environment, the verdict summary, the baseline view, the method notes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.resources import files
from typing import Any

import jinja2
from markupsafe import Markup

from auditor import __version__, results
from auditor.report.format import break_at_underscores, clip, fmt_date, fmt_num, fmt_p, fmt_value, parse_created, slug
from auditor.report.loading import need
from auditor.report.sections import SECTIONS
from auditor.report.types import Section
from auditor.results import AuditResult, Status

TEMPLATE = "report.html.j2"
STYLESHEET = "report.css"


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
    env.filters.update(num=fmt_num, pval=fmt_p, value=fmt_value, slug=slug, wbr=break_at_underscores, clip=clip)
    return env




def verdict_summary(result: AuditResult) -> dict[str, Any]:
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
    old, new = need(base, "old", where), need(base, "new", where)
    sides = {}
    for label, side in (("old", old), ("new", new)):
        sides[label] = {
            "date": fmt_date(str(need(side, "created", f"{where}.{label}"))),
            "verdict": str(need(side, "verdict", f"{where}.{label}")).upper(),
            "policy": str(side.get("policy_sha256") or ""),
            "models": dict(need(side, "models", f"{where}.{label}") or {}),
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
    for i, c in enumerate(need(base, "checks", where) or []):
        w = f"{where}.checks[{i}]"
        if not need(c, "changed", w):
            continue
        checks.append({
            "id": str(need(c, "id", w)), "method": str(c.get("method") or ""),
            "old": _status_word(c.get("old_status")), "new": _status_word(c.get("new_status")),
        })
    findings = []
    for i, f in enumerate(need(base, "findings", where) or []):
        w = f"{where}.findings[{i}]"
        key = need(f, "key", w) or {}
        findings.append({
            "check": str(need(f, "check", w)), "method": str(f.get("method") or ""),
            "key": ([(str(k), fmt_value(v)) for k, v in _in_order(key, _KEY_ORDER)] if isinstance(key, Mapping)
                    else [("", fmt_value(key))]),
            "change": str(need(f, "change", w)),
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

    Each entry: ``method``, ``title``, ``text`` (its SECTIONS entry, may be empty), ``limits`` (the sections' limits
    note) and ``sections`` (the section numbers that used it). ERROR and SKIPPED checks ran no method: not listed.
    """
    notes: dict[str, dict[str, Any]] = {}
    for number, s in enumerate(sections, start=1):
        spec = SECTIONS.get(s.check.method)
        # A method without a section of its own has no notes to give (its section is the generic table).
        if s.check.status in (Status.ERROR, Status.SKIPPED) or spec is None:
            continue
        method = s.check.method
        if method not in notes:
            title, text = spec.title, spec.text
            notes[method] = {"method": method, "title": title, "text": text,
                             "limits": str(s.data.get("limits") or ""), "sections": []}
        notes[method]["sections"].append(number)
    return list(notes.values())


def render_html(result: AuditResult, sections: Sequence[Section]) -> str:
    """The report as one HTML document (CSS inlined; figures referenced as ``assets/...``)."""
    env = _environment()
    css = files("auditor.templates").joinpath(STYLESHEET).read_text(encoding="utf-8")
    created = parse_created(result.provenance.created)
    return env.get_template(TEMPLATE).render(
        result=result,
        prov=result.provenance,
        sections=sections,
        methods=method_notes(sections),
        verdict=verdict_summary(result),
        baseline=baseline_view(result),
        date=fmt_date(result.provenance.created),
        created_w3c=created.strftime("%Y-%m-%dT%H:%M:%SZ") if created else None,
        css=Markup(css),  # our own stylesheet, shipped with the package
        renderer_version=__version__,
        Status=Status,
    )
