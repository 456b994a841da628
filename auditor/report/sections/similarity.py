"""The similarity section: where each concept is encoded in the two models (CAV accuracy against relative depth,
concept-map similarity), the depth shifts, and the CKA heat maps between their layers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from auditor.report.figures import similarity as figures
from auditor.report.format import fmt_num, fmt_value
from auditor.report.loading import need, requirements
from auditor.report.sections.generic import generic_section
from auditor.report.types import FigureRef, Section, SectionContext
from auditor.results import CheckResult, typed_findings

MAPS_PER_FIGURE = 6

NOTES_TITLE = "Layer similarity: concepts at relative depth (Mikriukov et al. 2023), and CKA"
NOTES_TEXT = (
    "For each labelled concept, a concept activation vector (CAV) is trained at every audited layer of each model "
    "on spatially pooled activations (concept images against non-concept images, several seeded draws, the "
    "accuracy measured on held-out images). The layer where its accuracy is highest is where the model encodes "
    "the concept best; layers are placed at their relative depth (weight layers up to the layer / all weight "
    "layers of the model), so networks of different depth line up, and the two models' best depths are compared. "
    "The CAV applied at every position (a 1x1 projection) gives a concept map of each image; two (model, layer) "
    "pairs encode a concept alike when their maps of the same images correlate (maps resized to a common size). "
    "Linear CKA (Kornblith et al. 2019) and its debiased variant (Nguyen, Raghu, Kornblith 2021) compare whole "
    "layers on the same images from their n x n Gram matrices."
)
LIMITS = (
    "CKA is dominated by the high-variance directions of a layer: two layers can score high while differing in "
    "low-variance directions a classifier relies on, and low while sharing them; linear CKA is also biased upwards "
    "for wide layers and few images (the debiased variant is not). Concept maps and CAVs need labelled concepts: "
    "a concept nobody labelled is never looked for, and a concept whose images differ from the non-concept images "
    "in something else too (colour with shape, say) is measured with that confound. A high CAV accuracy says a "
    "layer separates the concept linearly, not that the model uses it; relative depth counts weight layers, so a "
    "residual network's skips and a wide layer's capacity are not reflected in it."
)


def _kinds(rows: Sequence[Any]) -> dict[str, list[Any]]:
    """The typed findings by kind (ConceptDepthFinding, CkaFinding, MapFinding)."""
    out: dict[str, list[Any]] = {"concept": [], "cka": [], "map": []}
    for f in rows:
        out.setdefault(f.kind, []).append(f)
    return out


def _depth_figure(concepts: Sequence[Any], names: Sequence[str], roles: Sequence[str],
                  threshold: float, ctx: SectionContext) -> FigureRef:
    panels = []
    for c in names:
        curves = []
        for role in roles:
            mine = sorted((f for f in concepts if f.concept == c and f.model == role),
                          key=lambda f: float(f.relative_depth))
            if mine:
                curves.append(figures.DepthCurve(
                    role=role, depths=tuple(float(f.relative_depth) for f in mine),
                    accuracies=tuple(float(f.cav_accuracy) for f in mine),
                    best=next(i for i, f in enumerate(mine) if f.best)))
        panels.append(figures.DepthPanel(concept=c, curves=tuple(curves)))
    path, src = ctx.figure("similarity-depth.svg")
    ctx.draw(figures.depth_curves, panels, path, threshold=threshold)
    return FigureRef(
        src=src, alt="CAV accuracy against relative depth per concept, both models",
        caption=("Where each concept is encoded: held-out CAV accuracy at each audited layer, placed at the layer's "
                 "relative depth (0: input, 1: logits), one line per model; the star marks the model's best layer "
                 "(ties: the shallower). What to look at: a concept one model separates (above the dashed line) "
                 "and the other does not, and stars far apart in depth. Grey line: chance."),
    )


def _matrix_panels(rows: Sequence[Any], roles: Sequence[str], layers: Mapping[str, Sequence[str]],
                   key: str, title: str, marked: bool = False) -> figures.MatrixPanel:
    a, b = roles
    values = {(f.layer_a, f.layer_b): float(getattr(f, key)) for f in rows}
    return figures.MatrixPanel(
        title=title, row_model=a, rows=tuple(layers[a]), col_model=b, columns=tuple(layers[b]),
        values=tuple(tuple(values.get((la, lb), float("nan")) for lb in layers[b]) for la in layers[a]),
        marked=tuple((i, j) for i, la in enumerate(layers[a]) for j, lb in enumerate(layers[b])
                     if marked and any(f.layer_a == la and f.layer_b == lb and f.matched for f in rows)),
    )


def _matrix_figures(kinds: Mapping[str, list], names: Sequence[str], roles: Sequence[str],
                    layers: Mapping[str, Sequence[str]], settings: Mapping[str, Any],
                    ctx: SectionContext) -> list[FigureRef]:
    figs = []
    panels = [_matrix_panels([f for f in kinds["map"] if f.concept == c], roles, layers, "map_similarity", c)
              for c in names if any(f.concept == c for f in kinds["map"])]
    for k in range(0, len(panels), MAPS_PER_FIGURE):  # two panels a row, a page at most per figure
        path, src = ctx.figure(f"similarity-maps-{k // MAPS_PER_FIGURE}.svg")
        ctx.draw(figures.matrices, panels[k : k + MAPS_PER_FIGURE], path, label="concept-map correlation",
                 cmap="PuOr", vmin=-1.0, vmax=1.0, per_row=2)
        figs.append(FigureRef(
            src=src, alt="Concept-map similarity between the layers of the two models, per concept",
            caption=("Concept-map similarity, one matrix per concept: the correlation of the two layers' maps of the "
                     f"concept over the same concept images (up to {fmt_value(settings.get('map_images'))} per "
                     "concept), rows the layers of the first model, columns those of the second. What to look at: "
                     "a high value where both layers encode the concept (previous figure) means they place it alike "
                     "in the image; a concept one model does not encode gives a map of noise."),
        ))
    if kinds["cka"]:
        panels = [_matrix_panels(kinds["cka"], roles, layers, "cka", "linear CKA", True),
                  _matrix_panels(kinds["cka"], roles, layers, "cka_debiased", "debiased CKA", True)]
        path, src = ctx.figure("similarity-cka.svg")
        ctx.draw(figures.matrices, panels, path, label="CKA", per_row=2)
        figs.append(FigureRef(
            src=src, alt="Linear and debiased CKA between the layers of the two models",
            caption=(f"CKA between every audited layer of the two models on the same "
                     f"{fmt_value(settings.get('cka_images'))} images ({settings.get('cka_images_from')}); left "
                     "linear CKA, right its debiased variant (about 0 for unrelated layers, where linear CKA is "
                     "biased upwards). Outlined: the layer of the second model nearest in relative depth to each "
                     "layer of the first. What to look at: low values on the outlined cells (the models organise "
                     "that depth differently)."),
        ))
    return figs


def _shift_table(details: Mapping[str, Any], origin: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {"concept": str(s["concept"]), "origin": str(origin.get(s["concept"], "")),
         "layer_a": str(s["layer_a"]), "depth_a": fmt_num(s["depth_a"]), "acc_a": fmt_num(s["accuracy_a"]),
         "layer_b": str(s["layer_b"]), "depth_b": fmt_num(s["depth_b"]), "acc_b": fmt_num(s["accuracy_b"]),
         "learned_a": bool(s["learned_a"]), "learned_b": bool(s["learned_b"]),
         "shift": f"{float(s['shift']):+.2f}" if s["learned_a"] and s["learned_b"] else "—"}
        for s in details.get("depth_shifts") or []
    ]


def similarity_section(check: CheckResult, ctx: SectionContext) -> Section:
    """Depth curves, map-similarity matrices and CKA heat maps, the depth-shift table, requirements."""
    where = f"check {check.id!r} (similarity)"
    details = check.details
    settings = need(details, "settings", f"{where}: details")
    roles = [str(r) for r in need(settings, "models", f"{where}: details.settings")]
    layers = need(details, "layers", f"{where}: details")
    rows = typed_findings(check)
    if not rows or len(roles) != 2:
        return generic_section(check, ctx)
    kinds = _kinds(rows)
    names = [str(s["concept"]) for s in details.get("depth_shifts") or []]
    threshold = float(settings.get("min_cav_accuracy", 0.6))
    figs = [_depth_figure(kinds["concept"], names, roles, threshold, ctx)]
    figs += _matrix_figures(kinds, names, roles, layers, settings, ctx)
    matched = [{"layer_a": str(f.layer_a), "depth_a": fmt_num(f.relative_depth_a), "layer_b": str(f.layer_b),
                "depth_b": fmt_num(f.relative_depth_b), "cka": fmt_num(f.cka),
                "cka_debiased": fmt_num(f.cka_debiased)} for f in kinds["cka"] if f.matched]
    counts = details.get("weight_layers") or {}
    return Section(
        block="similarity", check=check, anchor=ctx.stem, figures=tuple(figs),
        data={
            "roles": roles,
            "concepts": names,
            "shifts": _shift_table(details, settings.get("origin") or {}),
            "matched": matched,
            "threshold": f"{threshold:g}",
            "settings_rows": [
                ("Concepts from folders (against the random pool)", ", ".join(settings.get("concepts") or []) or "—"),
                ("Concepts from labels", ", ".join(settings.get("label_concepts") or []) or "—"),
                ("CAVs", f"{fmt_value(settings.get('runs'))} per concept and layer, {settings.get('cav')}, "
                         f"{fmt_value(settings.get('set_size'))} images a side, pooled over space"),
                ("Concept images with maps", f"up to {fmt_value(settings.get('map_images'))} per concept"),
                ("CKA images", f"{fmt_value(settings.get('cka_images'))} ({settings.get('cka_images_from')})"),
                ("Weight layers (relative depth = index / count)",
                 ", ".join(f"{r}: {fmt_value(counts.get(r))}" for r in roles)),
            ],
            "requirements": requirements(details, where),
            "notes": [str(n) for n in details.get("notes") or []],
            "limits": LIMITS,
        },
    )
