"""What the RSVC section leads with (issue 13, item 4): the unique and important concepts, most important first,
each with its figure (top patches, over- and under-predicted patches, real against predicted) and, where a labels
CSV covers its patches' images, the labelled concepts that best match it (details["labelled"], written by
auditor/methods/rsvc_labels.py). Data only: section_rsvc.py draws the figures and hands them over by key.
"""

from __future__ import annotations

from typing import Any, Mapping

from auditor.results import CheckResult


def _matches(labelled: Mapping[str, Any], role: str, cls: str, concept: int) -> tuple[str, int, int]:
    """(text of the best-matching labels, covered patches, top patches) of one concept."""
    entry = next((c for c in labelled.get("concepts") or [] if c["model"] == role and c["class"] == cls
                  and int(c["concept"]) == concept), None)
    if entry is None:
        return "", 0, 0
    text = ", ".join(f"{m['label']} ({100 * float(m['share']):.0f}% of the top patches, {100 * float(m['base']):.0f}% "
                     "of the class's evaluation images)" for m in entry.get("matches") or [])
    return text, int(entry.get("covered") or 0), int(entry.get("top") or 0)


def lead(check: CheckResult, figures: Mapping[tuple[str, str, int], Any]) -> dict[str, Any]:
    """{"concepts": [...], "sources": [...]}: one item per unique important concept, most important first;
    `figures` maps (model, class, concept) to the concept's detail FigureRef."""
    labelled = check.details.get("labelled") or {}
    rows = sorted((f for f in check.findings if f["unique"] and f["important"]),
                  key=lambda f: (-float(f["importance"]), str(f["class"]), int(f["concept"])))
    items = []
    for f in rows:
        role, cls, j = str(f["model"]), str(f["class"]), int(f["concept"])
        text, covered, top = _matches(labelled, role, cls, j)
        items.append({
            "title": f"{role} concept #{j}, class {cls}",
            "model": role, "other": str(f["other"]), "class": cls, "concept": j,
            "similarity": f"{float(f['similarity']):.2f}", "importance": f"{float(f['importance']):.2f}",
            "figure": figures.get((role, cls, j)),
            "labels": text,
            "coverage": (f"{covered} of its {top} top patches come from labelled images" if covered
                         else "no labels cover the images of its top patches"),
        })
    return {"concepts": items, "sources": [str(s) for s in labelled.get("sources") or []]}
