"""The figure TCAV and SACV sections share under the exchangeability test: the pseudo-concepts' null per
(model, layer, class) with each concept's statistic marked (figures/null.py draws it). No import of render.py:
the section context is passed in, so the section modules can use it without an import cycle."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from auditor.report.figures import null as figures_null
from auditor.report.figures.common import shorten
from auditor.schemas.tcav import ConceptFinding

STATISTIC_LABELS = {"score": "TCAV score (pseudo-concepts)", "cosine": "cosine sensitivity (pseudo-concepts)"}
CENTRES = {"score": 0.5, "cosine": 0.0}


def null_panels(details: Mapping[str, Any], findings: Sequence[ConceptFinding],
                statistic: str) -> list[figures_null.NullPanel]:
    """One panel per entry of details["null"], with the tested cells of that (model, layer, class) marked."""
    key = "scores" if statistic == "score" else "cosines"
    layers = details.get("layers") or {}
    relative = {f"{a} vs {b}" for a, b in (details.get("settings") or {}).get("relative") or []}
    panels = []
    for n in details.get("null") or []:
        role, layer, cls = str(n["model"]), str(n["layer"]), str(n["class"])
        kind = str(n.get("kind", "concept"))
        order = list(layers.get(role, []))
        # The layer by its number in the findings grid (the grid gives full names; long ones collide in a panel title).
        number = f"layer {order.index(layer) + 1}" if layer in order else shorten(layer, 16)
        marks = tuple(
            figures_null.Mark(str(f.concept), float(value), f.p_value, bool(f.significant))
            for f in findings
            if f.model == role and f.layer == layer and f.cls == cls and f.tested
            and (value := f.score if statistic == "score" else f.cosine) is not None
            and (f.concept in relative) == (kind == "relative")
        )
        panels.append(figures_null.NullPanel(
            title=f"{role} · {number} · {cls}" + (" · pairs" if kind == "relative" else ""), values=tuple(float(v) for v in n[key]),
            centre=CENTRES[statistic], marks=marks,
        ))
    return panels


def null_figure(details: Mapping[str, Any], findings: Sequence[ConceptFinding], ctx: Any,
                concepts: Sequence[str]) -> tuple[str, str, str] | None:
    """Draw the check's null figure through the section context; (src, alt, caption), or None without a null."""
    settings = details.get("settings") or {}
    if not details.get("null"):
        return None
    statistic = str(settings.get("statistic", "score"))
    panels = null_panels(details, findings, statistic)
    drawn = {m.concept for p in panels for m in p.marks}
    # Colours follow the check's concept order; the key lists only the concepts drawn somewhere.
    path, src = ctx.figure("null.svg")
    ctx.draw_sized(figures_null.null_size(panels), figures_null.null_distributions, panels, list(concepts),
                   STATISTIC_LABELS[statistic], path, sorted(drawn, key=list(concepts).index))
    m = settings.get("pseudo_concepts")
    caption = (
        f"Why each cell is or is not significant: the grey histogram is the {STATISTIC_LABELS[statistic]} of {m} "
        "pseudo-concepts (random-pool images in the concept's place, scored exactly like it), the dotted black line "
        "the centre (no sensitivity). A concept's value is its coloured line (solid: significant after Holm; "
        "dashed: not), mirrored as a thin dotted line on the other side: its raw p is the share of pseudo-concepts "
        "at least as far from the centre, beyond either line. Concepts not learned at a layer are not drawn."
    )
    return src, "Null distributions of the exchangeability test, one panel per model, layer and class", caption
