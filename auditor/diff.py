"""What changed between two audits: checks whose status changed, findings that moved.

For CI on model updates (`auditor diff OLD/results.json NEW/results.json`) and for the report's "Changes since
the baseline" section (`auditor run --baseline OLD/results.json`). Works on results.json alone.
"""

from __future__ import annotations

from typing import Any

from auditor.methods import METHODS
from auditor.methods.descriptor import FindingKind
from auditor.results import AuditResult

# A score that moves by more than this is reported even when no verdict flipped.
SCORE_MOVE = 0.1


def _side(r: AuditResult) -> dict[str, Any]:
    return {
        "created": r.provenance.created,
        "verdict": r.verdict,
        "policy_sha256": r.provenance.policy_sha256,
        "models": {m.role: m.sha256 for m in r.provenance.models},
    }


def _kind(method: str, finding: dict[str, Any]) -> FindingKind | None:
    """The finding's kind in the method's descriptor; None for a method this version does not know."""
    return METHODS[method].kind_of(finding) if method in METHODS else None


def _key(method: str, finding: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    kind = _kind(method, finding)
    fields = kind.key if kind is not None else tuple(sorted(k for k, v in finding.items() if isinstance(v, str)))
    return tuple((f, str(finding.get(f))) for f in fields)


def _compare(method: str, old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], dict, dict]:
    """The changes between two findings of the same key, and the numbers that show them (the method's own
    comparison; an unknown method's findings compare on their boolean fields)."""
    kind = _kind(method, new)
    if kind is not None:
        changes, fields, score = kind.compare(old, new)
    else:
        flags = sorted(k for k, v in new.items() if isinstance(v, bool))
        changes = [f"{k}: {old.get(k)} -> {new.get(k)}" for k in flags if old.get(k) != new.get(k)]
        fields, score = tuple(flags), None
    if score is not None and isinstance(old.get(score), (int, float)) and isinstance(new.get(score), (int, float)):
        delta = float(new[score]) - float(old[score])
        if abs(delta) > SCORE_MOVE:
            changes.append(f"{score} moved by {delta:+.2f}")
    return changes, {f: old.get(f) for f in fields}, {f: new.get(f) for f in fields}


def diff_results(old: AuditResult, new: AuditResult) -> dict[str, Any]:
    """The baseline dict stored in results.json under `baseline` (see the report's baseline section)."""
    old_checks = {c.id: c for c in old.checks}
    new_checks = {c.id: c for c in new.checks}
    ids = list(new_checks) + [i for i in old_checks if i not in new_checks]
    checks, findings = [], []
    for cid in ids:
        o, n = old_checks.get(cid), new_checks.get(cid)
        method = (n or o).method
        checks.append(
            {
                "id": cid,
                "method": method,
                "old_status": o.status.value if o else None,
                "new_status": n.status.value if n else None,
                "changed": (o.status if o else None) != (n.status if n else None),
            }
        )
        if o is None or n is None or o.method != n.method:
            continue
        old_f = {_key(method, f): f for f in o.findings}
        new_f = {_key(method, f): f for f in n.findings}
        for key in list(new_f) + [k for k in old_f if k not in new_f]:
            of, nf = old_f.get(key), new_f.get(key)
            base = {"check": cid, "method": method, "key": dict(key)}
            if of is None:
                findings.append({**base, "change": "new finding", "old": None, "new": _compare(method, nf, nf)[2]})
            elif nf is None:
                findings.append({**base, "change": "finding removed", "old": _compare(method, of, of)[1], "new": None})
            else:
                changes, ov, nv = _compare(method, of, nf)
                if changes:
                    findings.append({**base, "change": "; ".join(changes), "old": ov, "new": nv})
    return {
        "old": _side(old),
        "new": _side(new),
        "verdict_changed": old.verdict != new.verdict,
        "checks": checks,
        "findings": findings,
    }


def regressions(diff: dict[str, Any]) -> list[dict[str, Any]]:
    """Checks that got worse: PASS/WARN/SKIPPED (or new) -> FAIL/ERROR."""
    bad = ("FAIL", "ERROR")
    return [c for c in diff["checks"] if c["new_status"] in bad and c["old_status"] not in bad]


def format_diff(diff: dict[str, Any]) -> str:
    """Plain text for the terminal / a CI log."""
    o, n = diff["old"], diff["new"]
    lines = [f"verdict: {o['verdict']} ({o['created']}) -> {n['verdict']} ({n['created']})"]
    for role in sorted(set(o["models"]) | set(n["models"])):
        if o["models"].get(role) != n["models"].get(role):
            lines.append(f"model {role}: {str(o['models'].get(role))[:12]} -> {str(n['models'].get(role))[:12]}")
    changed = [c for c in diff["checks"] if c["changed"]]
    lines.append(f"checks that changed status: {len(changed)}")
    lines += [f"  {c['id']} ({c['method']}): {c['old_status']} -> {c['new_status']}" for c in changed]
    lines.append(f"findings that moved: {len(diff['findings'])}")
    for f in diff["findings"]:
        key = ", ".join(f"{k}={v}" for k, v in f["key"].items())
        lines.append(f"  {f['check']}: {key}: {f['change']}")
    return "\n".join(lines)
