"""A method is one entry of auditor.methods.METHODS: a toy method registered by that entry alone (its schema, run
and finding defined here) is accepted by the policy, run by the pipeline, written to results.json, read back as
typed findings and compared by `diff`, with no other file touched."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pytest
from pydantic import Field
from pypdf import PdfReader

from auditor import diff, pipeline, results
from auditor.methods import METHODS, Lazy, Method, Reads
from auditor.methods.descriptor import FindingKind
from auditor.policy import PolicyError, parse_policy
from auditor.results import CheckResult, Status
from auditor.schemas.common import Strict, checked_rows, compare_flags


class ToyCheck(Strict):
    id: str
    method: Literal["toy"]
    severity: Literal["critical", "major", "minor"] = "major"
    description: str = ""
    classes: list[str] = Field(min_length=1)
    models: list[str] | None = None
    high: float = 0.0  # a class whose mean logit is above this is "high"


@dataclass(frozen=True)
class ToyFinding:
    model: str
    cls: str
    mean_logit: float
    high: bool


def toy_run(check: ToyCheck, ctx) -> CheckResult:
    names = ctx.policy.data.classes.names
    rows = []
    for role in check.models or list(ctx.models):
        for k in check.classes:
            logits = ctx.models[role].predict(ctx.store.images(ctx.sets.classes[k]))[:, names.index(k)]
            mean = round(float(np.mean(logits)), 6)
            rows.append({"model": role, "class": k, "mean_logit": mean, "high": mean > check.high})
    return CheckResult(id=check.id, method="toy", status=Status.PASS, severity=check.severity, summary="toy",
                       requirement="none (informational)", findings=checked_rows(ToyFinding, rows))


def toy_compare(old: dict, new: dict):
    return compare_flags(old, new, "high", "became high", "no longer high"), ("mean_logit", "high"), "mean_logit"


TOY = Method(schema=ToyCheck, run=Lazy(__name__, "toy_run"), reads=Reads(classes=True),
             findings={"": FindingKind(ToyFinding, ("model", "class"), toy_compare)}, family=None)


def _text(tiny_world, high: float) -> str:
    return tiny_world.policy_text(extra_check=f"  - {{id: toy-1, method: toy, classes: [a, b], high: {high}}}\n")


def test_a_method_unknown_to_the_registry_is_refused(tiny_world):
    with pytest.raises(PolicyError, match=r"checks\[1\]: unknown method 'toy' \(supported: tcav, "):
        parse_policy(_text(tiny_world, 0.0), "p.yaml", tiny_world.root)


def test_a_registered_toy_method_runs_end_to_end(tiny_world, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "toy", TOY)
    policy = parse_policy(_text(tiny_world, -1e9), "p.yaml", tiny_world.root)
    with pytest.raises(PolicyError, match=r"checks\[1\]\.high: Input should be a valid number"):
        parse_policy(_text(tiny_world, "many"), "p.yaml", tiny_world.root)  # its own schema validates its keys
    policy = policy.model_copy(update={"checks": policy.checks[1:]})  # the toy check alone: no TCAV to wait for
    old = pipeline.run_audit(policy, tmp_path / "cache", lambda _m: None).result
    (check,) = old.checks
    assert check.method == "toy" and len(check.findings) == 4
    written = json.loads(results.dumps(old))["checks"][0]["findings"]
    assert {tuple(sorted(f)) for f in written} == {("class", "high", "mean_logit", "model")}
    back = results.from_dict(json.loads(results.dumps(old))).checks[0]
    typed = results.typed_findings(back)
    assert all(isinstance(f, ToyFinding) and f.high for f in typed)
    assert [dataclasses.asdict(f)["cls"] for f in typed] == ["a", "b", "a", "b"]

    # `diff` keys toy findings by (model, class) and compares them with the toy's own function.
    higher = policy.model_copy(update={"checks": [policy.checks[0].model_copy(update={"high": 1e9})]})
    new = pipeline.run_audit(higher, tmp_path / "cache", lambda _m: None).result
    d = diff.diff_results(results.from_dict(json.loads(results.dumps(old))), new)
    assert [f["change"] for f in d["findings"]] == ["no longer high"] * 4
    assert d["findings"][0]["key"] == {"model": "candidate", "class": "a"}


def test_the_committed_sample_findings_round_trip_through_their_dataclasses():
    """Every finding of the shipped sample results.json (every method) rebuilds as its method's dataclass and
    writes back to exactly the same dict: the dataclasses cover today's keys, no more, no fewer."""
    from pathlib import Path

    from auditor.schemas.common import finding_to_json

    sample = results.read(Path(__file__).resolve().parents[1] / "sample_reports" / "results.json")
    assert {c.method for c in sample.checks} == set(METHODS)
    for check in sample.checks:
        typed = results.typed_findings(check)
        assert typed and all(dataclasses.is_dataclass(f) for f in typed)
        assert [finding_to_json(f) for f in typed] == check.findings, check.id
        assert json.loads(results.dumps(dataclasses.replace(sample, checks=[dataclasses.replace(check, findings=typed)])))[
            "checks"][0]["findings"] == check.findings


def toy_section(check, ctx):
    """The toy's report section: its own table of typed findings, drawn with the generic block's template."""
    from auditor.report.types import Section

    typed = results.typed_findings(check)
    rows = [[f.model, f.cls, f"toy mean logit {f.mean_logit:.3f}", "HIGH" if f.high else "low"] for f in typed]
    return Section(block="generic", check=check, anchor=ctx.stem,
                   data={"columns": ["model", "class", "toy statistic", "toy verdict"], "rows": rows, "details": []})


def test_a_toy_method_and_its_section_reach_validate_run_pdf_junit_and_diff(tiny_world, tmp_path, monkeypatch):
    """The must-show of 'one method, one place': one METHODS entry and one SECTIONS entry, no other file, and the
    method is in `auditor validate`, `auditor run`, results.json, the PDF (its section and its method note),
    junit.xml and `auditor diff`, all through the CLI a user runs."""
    import xml.etree.ElementTree as ET

    from click.testing import CliRunner

    from auditor import cli
    from auditor.report.sections import SECTIONS, SectionSpec

    monkeypatch.setitem(METHODS, "toy", TOY)
    monkeypatch.setitem(SECTIONS, "toy", SectionSpec(toy_section, "Toy: mean class logit", "A toy note text."))
    runner = CliRunner()
    outs = {}
    for high in (-1e9, 1e9):
        policy = tiny_world.root / f"toy-policy-{high > 0}.yaml"  # beside the tiny world its folders name
        policy.write_text(_text(tiny_world, high).split("checks:\n")[0]
                          + f"checks:\n  - {{id: toy-1, method: toy, classes: [a, b], high: {high}}}\n")
        assert runner.invoke(cli.main, ["validate", str(policy)]).exit_code == 0
        out = tmp_path / f"out-{high > 0}"
        res = runner.invoke(cli.main, ["run", str(policy), "--out", str(out), "--cache-dir", str(tmp_path / "c"),
                                       "--quiet"])
        assert res.exit_code == 0, res.output
        outs[high > 0] = out
    out = outs[False]
    check = json.loads((out / "results.json").read_text())["checks"][0]
    assert check["method"] == "toy" and len(check["findings"]) == 4
    text = "\n".join(page.extract_text() or "" for page in PdfReader(out / "report.pdf").pages)
    assert "toy mean logit" in text and "HIGH" in text and "Toy: mean class logit" in text and "A toy note text." in text
    cases = ET.parse(out / "junit.xml").getroot().iter("testcase")
    assert [c.get("name") for c in cases if "toy-1" in (c.get("name") or "")]
    res = runner.invoke(cli.main, ["diff", str(out / "results.json"), str(outs[True] / "results.json")])
    assert res.exit_code == 0 and res.output.count("no longer high") == 4, res.output
