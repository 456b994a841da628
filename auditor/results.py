"""Frozen dataclasses of an audit's results and their JSON round trip.

results.json is the single source of truth for rendering: the report is drawn from it alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Any

SCHEMA_VERSION = "1.0"


class Status(str, Enum):
    PASS = "PASS"
    FAIL = "FAIL"
    WARN = "WARN"
    ERROR = "ERROR"
    SKIPPED = "SKIPPED"


SEVERITIES = ("critical", "major", "minor")


@dataclass(frozen=True)
class ModelInfo:
    role: str  # the key in the policy's `models:` (e.g. candidate, reference)
    name: str
    framework: str
    sha256: str
    path: str
    trust_pickle: bool = False
    device: str = "cpu"  # where it ran: "cpu" or "cuda" (`auditor run --device`)


@dataclass(frozen=True)
class ImageSetInfo:
    name: str  # e.g. "class:triangle", "concept:watermark", "random:3"
    fingerprint: str
    count: int


@dataclass(frozen=True)
class Provenance:
    tool_version: str
    created: str  # ISO 8601 UTC; SOURCE_DATE_EPOCH when set
    policy_sha256: str
    policy_path: str
    seed: int
    models: list[ModelInfo]
    image_sets: list[ImageSetInfo]
    libraries: dict[str, str]
    command: str = ""
    policy_text: str = ""  # the policy YAML as audited, embedded in the PDF as an attachment


@dataclass(frozen=True)
class CheckResult:
    id: str
    method: str
    status: Status
    severity: str
    summary: str
    requirement: str
    # Each a dict as results.json holds it, or a typed finding (a frozen dataclass of auditor/schemas, which
    # `to_dict` writes with the same keys); `typed_findings` gives the dataclasses either way.
    findings: list[Any]
    # Method-specific material the report draws from (settings, per-run scores, notes); JSON-safe values only.
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditResult:
    schema_version: str
    title: str
    verdict: str  # "PASS" | "FAIL"
    provenance: Provenance
    checks: list[CheckResult]
    # What changed against a baseline audit (`auditor run --baseline OLD/results.json`): auditor.diff's output.
    baseline: dict[str, Any] | None = None


def _json_findings(check: CheckResult) -> CheckResult:
    """The check with typed findings (frozen dataclasses of auditor/schemas) as results.json's dicts."""
    from auditor.schemas.common import finding_to_json

    if not any(is_dataclass(f) for f in check.findings):
        return check
    return replace(check, findings=[finding_to_json(f) if is_dataclass(f) else f for f in check.findings])


def to_dict(result: AuditResult) -> dict[str, Any]:
    d = asdict(replace(result, checks=[_json_findings(c) for c in result.checks]))
    for c in d["checks"]:
        c["status"] = Status(c["status"]).value
    return d


def typed_findings(check: CheckResult) -> list[Any]:
    """The check's findings as their method's frozen dataclasses (METHODS[method]'s finding kinds), whether the
    check holds dicts (read from results.json) or typed findings already.

    A row that is not an object, lacks a field or has one the dataclass does not know is a TypeError naming
    its index (the report turns it into one line naming the check)."""
    from auditor.methods import METHODS
    from auditor.schemas.common import finding_from_json

    method = METHODS[check.method]
    typed = []
    for i, f in enumerate(check.findings):
        if is_dataclass(f):
            typed.append(f)
            continue
        if not isinstance(f, dict):
            raise TypeError(f"findings[{i}] is not an object")
        try:
            typed.append(finding_from_json(method.kind_of(f).type, f))
        except TypeError as exc:
            raise TypeError(f"findings[{i}]: {exc}") from None
    return typed


def from_dict(d: dict[str, Any]) -> AuditResult:
    p = d["provenance"]
    prov = Provenance(
        tool_version=p["tool_version"],
        created=p["created"],
        policy_sha256=p["policy_sha256"],
        policy_path=p.get("policy_path", ""),
        seed=p["seed"],
        models=[ModelInfo(**m) for m in p["models"]],
        image_sets=[ImageSetInfo(**s) for s in p["image_sets"]],
        libraries=dict(p["libraries"]),
        command=p.get("command", ""),
        policy_text=p.get("policy_text", ""),
    )
    checks = [
        CheckResult(
            id=c["id"],
            method=c["method"],
            status=Status(c["status"]),
            severity=c["severity"],
            summary=c["summary"],
            requirement=c["requirement"],
            findings=list(c["findings"]),
            details=dict(c.get("details", {})),
        )
        for c in d["checks"]
    ]
    return AuditResult(
        schema_version=d["schema_version"],
        title=d.get("title", "Concept audit"),
        verdict=d["verdict"],
        provenance=prov,
        checks=checks,
        baseline=d.get("baseline"),
    )


def dumps(result: AuditResult) -> str:
    # Sorted keys and a fixed float repr keep results.json byte-stable across identical runs.
    return json.dumps(to_dict(result), indent=2, sort_keys=True, allow_nan=False) + "\n"


def write(result: AuditResult, path: Path) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(dumps(result), encoding="utf-8")
    tmp.replace(path)


def read(path: Path) -> AuditResult:
    """A results.json from disk; a missing, malformed or foreign file is a UserError naming it."""
    from auditor.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"results file not found: {path}")
    try:
        return from_dict(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: not an auditor results.json ({type(e).__name__}: {e})") from None
