"""What every method's requirements share: the MET / NOT MET summary and the requirement line of a result."""

from __future__ import annotations


def met_summary(reqs: list[dict]) -> str:
    """'MET why | NOT MET why ...' of evaluated requirements ({"met", "why", ...}); '' when there are none."""
    return " | ".join(("MET " if q["met"] else "NOT MET ") + q["why"] for q in reqs)


def requirement_line(reqs: list[dict]) -> str:
    """The result's `requirement`: the requirements' texts, or 'none (informational)'."""
    return "; ".join(q["text"] for q in reqs) or "none (informational)"
