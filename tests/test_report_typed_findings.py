"""Report sections read their check's findings as the methods' typed dataclasses (results.typed_findings), never
as dicts: by the code's shape (AST), by building every sample section from dataclasses, and by the one-line error a
malformed finding gives."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from auditor import results
from auditor.report.loading import ResultsError
from auditor.report.sections import SECTIONS, build_section

ROOT = Path(__file__).resolve().parents[1]
SECTION_DIR = ROOT / "auditor" / "report" / "sections"
SAMPLE = ROOT / "sample_reports" / "results.json"
# generic.py draws any method's findings (a method without a section of its own, or a crashed check) as a table of
# whatever keys they have: the one section that reads findings as dicts, on purpose.
UNTYPED = {"generic.py"}


def _findings_reads(tree: ast.AST) -> tuple[list[int], list[int]]:
    """(lines that read an attribute `.findings`, lines that call typed_findings). typed_findings takes the check
    itself, so a section that reads `.findings` at all reads the raw rows."""
    raw = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "findings"]
    typed = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "id", getattr(n.func, "attr", None)) == "typed_findings"]
    return raw, typed


def test_sections_read_findings_only_through_typed_findings() -> None:
    modules = {p.name: p for p in sorted(SECTION_DIR.glob("*.py")) if p.name != "__init__.py"}
    assert {"tcav.py", "sacv.py", "rsvc.py", "invert.py", "artifact_probe.py"} <= set(modules)
    for name, path in modules.items():
        if name in UNTYPED:
            continue
        raw, typed = _findings_reads(ast.parse(path.read_text(encoding="utf-8")))
        assert not raw, f"{name} reads check.findings (the raw rows) at lines {raw}: use results.typed_findings"
    for method, spec in SECTIONS.items():
        path = Path(spec.build.__code__.co_filename)
        raw, typed = _findings_reads(ast.parse(path.read_text(encoding="utf-8")))
        assert typed, f"the {method} section ({path.name}) never calls typed_findings"


def test_the_ast_walk_sees_a_raw_read() -> None:
    raw, typed = _findings_reads(ast.parse("rows = [f['model'] for f in check.findings]\nt = typed_findings(check)"))
    assert raw == [1] and typed == [2]


def _sections(result: results.AuditResult, tmp_path: Path) -> list[tuple[object, object, list]]:
    out = []
    for i, check in enumerate(result.checks):
        jobs: list = []
        s = build_section(i, check, result, tmp_path, jobs)
        out.append((s.data, s.figures, [(j.func, j.args, j.kwargs, j.svg, j.raster, j.size) for j in jobs]))
    return out


def test_every_sample_section_builds_the_same_from_typed_findings(tmp_path: Path) -> None:
    """A run holds typed findings in memory, results.json dicts: both give the same section, figure for figure.
    A section that indexed a finding by key (f["model"], f.get(...)) would fail on the dataclass."""
    sample = results.read(SAMPLE)
    assert {c.method for c in sample.checks} >= {"tcav", "sacv", "rsvc", "invert", "artifact_probe"}
    typed = dataclasses.replace(sample, checks=[dataclasses.replace(c, findings=results.typed_findings(c))
                                                for c in sample.checks])
    assert all(dataclasses.is_dataclass(f) for c in typed.checks for f in c.findings)
    from_dicts, from_typed = _sections(sample, tmp_path), _sections(typed, tmp_path)
    for check, a, b in zip(sample.checks, from_dicts, from_typed):
        assert a[2], f"{check.id}: no figure jobs (the section fell back to the generic table?)"
        assert a == b, check.id


def _one_check(method: str) -> tuple[results.AuditResult, results.CheckResult]:
    sample = results.read(SAMPLE)
    check = next(c for c in sample.checks if c.method == method)
    return sample, check


@pytest.mark.parametrize("method", ["tcav", "sacv", "rsvc", "invert", "artifact_probe"])
def test_a_malformed_finding_is_one_line_naming_the_check(method: str, tmp_path: Path) -> None:
    sample, check = _one_check(method)
    first = dict(check.findings[0])
    del first["model"]
    cases = {
        r"findings\[0\].*missing.*'model'": [first] + check.findings[1:],
        r"findings\[1\] is not an object": check.findings[:1] + ["oops"] + check.findings[2:],
        r"findings\[0\].*unexpected keyword argument 'colour'": [{**check.findings[0], "colour": 1}],
    }
    for pattern, findings in cases.items():
        bad = dataclasses.replace(check, findings=findings)
        with pytest.raises(ResultsError, match=rf"^check {check.id!r} \({method}\): malformed .*{pattern}") as info:
            build_section(0, bad, sample, tmp_path, [])
        assert "\n" not in str(info.value)
