"""RSVC's reported (not required) findings: the unique important concepts of a model no requirement covers.

A policy may require "no important concept of the reference missing from the candidate" and leave the candidate's
own unique important concepts unrequired: they are what a reviewer looks at, listed in the check's summary, and the
policy decides whether they fail (issue 13, item 3).
"""

from __future__ import annotations

from typing import Sequence

from auditor.schemas.rsvc import RsvcRequirement


def unique_important(findings: Sequence[dict], role: str) -> list[dict]:
    """The findings of `role`'s concepts that are unique and important, most important first."""
    mine = [f for f in findings if f["model"] == role and f["unique"] and f["important"]]
    return sorted(mine, key=lambda f: (-f["importance"], f["class"], f["concept"]))


def reported_text(findings: Sequence[dict], roles: Sequence[str], require: Sequence[RsvcRequirement]) -> str:
    """' | REPORTED <role>: ...' for every role whose unique important concepts no `max_unique_important`
    requirement covers ('' when every role is covered)."""
    covered = {role for r in require if r.max_unique_important is not None
               for role in (roles if r.model == "all" else [r.model])}
    parts = []
    for role in roles:
        if role in covered:
            continue
        rows = unique_important(findings, role)
        listed = ", ".join(f"{f['class']} #{f['concept']} (similarity {f['similarity']:.2f}, importance "
                           f"{f['importance']:.2f})" for f in rows)
        parts.append(f" | REPORTED {role}: " + (f"{len(rows)} unique important concept{'s' if len(rows) != 1 else ''}: "
                                                f"{listed}" if rows else "no unique important concept"))
    return "".join(parts)
