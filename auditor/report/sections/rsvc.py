"""The RSVC section of the report (block "rsvc", templates/sections/rsvc.html.j2), from results.json alone.

Registered in auditor.report.sections.SECTIONS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from auditor.report.figures import rsvc as figures_rsvc
from auditor.report.format import fmt_num, fmt_value, ordered, slug
from auditor.report.loading import need, requirements
from auditor.report.sections.generic import generic_section
from auditor.report.types import FigureRef, Section, SectionContext
from auditor.results import CheckResult, typed_findings
from auditor.schemas.rsvc import RsvcFinding

# The appendix's method notes: how RSVC works, said once for the whole report.
NOTES_TITLE = "RSVC: concepts two models share"
NOTES_TEXT = (
    "For each class, the images that either model predicts as the class are split into extraction and "
    "evaluation images and cut into patches, each resized to the model's input size; a patch's activation at a "
    "model's concept layer is the layer's spatial mean. Each model's activations on the extraction patches are "
    "factorised into K non-negative concepts (NMF), and every concept's coefficients on the evaluation patches "
    "are computed with the concepts fixed (non-negative least squares). A concept of one model is shared when a "
    "Lasso regression from the other model's activations, cross-validated over images, predicts its "
    "coefficients on held-out images (Pearson r at least the similarity threshold), and unique otherwise; each "
    "model predicting its own concepts gives the ceiling (self similarity), and both directions are measured. A "
    "concept is important when its importance for the class (integrated gradients of the class's "
    "log-probability through the rest of the network with respect to the concept's coefficients, from a zero "
    "baseline, averaged over patches and divided by the model's largest) exceeds the importance threshold. The "
    "layerwise comparison extracts concepts at every listed layer and compares each pair of layers by the "
    "mean-max correlation of their concepts."
)

RSVC_LIMITS_NOTE = (
    "RSVC compares what two models represent, not what they rely on: a concept is shared when the other model's "
    "activations linearly predict its coefficients on held-out images, which any salient visual pattern can be, "
    "whether or not the other model uses it. Importance is measured on concept reconstructions placed at every "
    "position of the layer and fed through the rest of the network; it is exact when the head starts with global "
    "average pooling, an approximation otherwise (the section reports how well the head's output on such "
    "position-constant activations matches its output on the real ones). Concepts are NMF factors of patch "
    "activations: small or scale-specific patterns can be lost when patches are enlarged to the input size, and "
    "with few images per class similarities are noisy (compare them with the self baselines)."
)


def _marks(collages: Mapping[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """(real, predicted) of the patches in each collage, to highlight them on the scatter."""
    return {
        key: [(float(p["value"]), float(p["predicted"])) for p in collages.get(key) or [] if "predicted" in p]
        for key in ("top", "over", "under")
    }


def _scatter(ci: int, cls: str, rows: Sequence[RsvcFinding], present: Sequence[str], models: Mapping[str, Any],
             entry: dict[str, Any], tau_sim: float, tau_imp: float, ctx: SectionContext) -> FigureRef:
    """The similarity-vs-importance scatter of a class (a panel per model); adds each model's numbers to entry."""
    panels = []
    for role in present:
        mine = sorted((f for f in rows if f.model == role), key=lambda f: f.concept)
        other = str(mine[0].other)
        panels.append(figures_rsvc.ScatterPanel(
            title=f"{role}'s concepts, looked for in {other}", role=role,
            points=tuple(figures_rsvc.ConceptPoint(
                concept=int(f.concept), similarity=float(f.similarity),
                self_similarity=float(f.self_similarity), importance=float(f.importance),
                unique=bool(f.unique), important=bool(f.important)) for f in mine),
        ))
        m = models.get(role) or {}
        entry["models"].append({
            "role": role, "layer": str(mine[0].layer), "other": other,
            "mean_similarity": fmt_num(m.get("mean_similarity")),
            "mean_self_similarity": fmt_num(m.get("mean_self_similarity")),
            "nnls_error": fmt_num(m.get("nnls_error_evaluation")),
            "head_top1": fmt_num(m.get("head_top1_agreement")),
            "head_logp": fmt_num(m.get("head_mean_abs_logp_diff"), 3),
            "unique_important": sum(1 for f in mine if f.unique and f.important),
        })
    path, src = ctx.figure(f"rsvc-{ci}-{slug(cls, 20)}-scatter.svg")
    ctx.draw(figures_rsvc.similarity_importance, panels, path, tau_sim=tau_sim, tau_imp=tau_imp)
    scatter = FigureRef(
        src=src, alt=f"Similarity versus importance of every concept of class {cls}, per model",
        caption=(
            f"Class {cls}: each point is one model's concept; x is how well the other model's activations "
            "predict its coefficients on held-out images (Pearson), y its importance for the class (integrated "
            "gradients of −CE through the head, divided by the model's largest). What to look at: points in the "
            f"shaded corner (similarity < {tau_sim:g}, importance > {tau_imp:g}) are concepts the model relies "
            "on that the other model does not represent (outlined). The hollow marker on the same line is the "
            "concept's self similarity, the most a prediction reaches on these images: a point far left of its "
            "own marker is poorly predicted by the other model even where the method itself works well."
        ),
    )
    return scatter


def _gallery(ci: int, cls: str, rows: Sequence[RsvcFinding], present: Sequence[str], models: Mapping[str, Any],
             concept_layers: Mapping[str, Any], ctx: SectionContext) -> FigureRef:
    """The concept gallery of a class: every concept's top patches, a column per model."""
    columns = []
    for role in present:
        found = {(f.concept): f for f in rows if f.model == role}
        gallery_rows = []
        for c in (models.get(role) or {}).get("concepts") or []:
            j = int(c["concept"])
            f = found.get(j)
            if f is None:
                continue
            gallery_rows.append(figures_rsvc.GalleryRow(
                label=f"#{j}  sim {float(f.similarity):.2f}\nimp {float(f.importance):+.2f}",
                pngs=tuple(str(p["png"]) for p in c.get("top") or []),
                flagged=bool(f.unique and f.important),
            ))
        columns.append((f"{role} ({figures_rsvc.shorten(str(concept_layers.get(role, '')), 28)})", gallery_rows))
    per_row = max([len(r.pngs) for _, rows_ in columns for r in rows_], default=1)
    path, src = ctx.figure(f"rsvc-{ci}-{slug(cls, 20)}-gallery.png")
    ctx.draw(figures_rsvc.concept_gallery, columns, path, per_row=per_row)
    gallery = FigureRef(
        src=src, alt=f"Top evaluation patches of every concept of class {cls}, per model",
        caption=(
            f"Class {cls}: what each concept is. Every row shows a concept's {per_row} evaluation patches with "
            "the largest coefficient (at most one per image), with its similarity (sim) in the other model and "
            "its importance (imp). Red labels: unique and important concepts, shown in full below."
        ),
    )
    return gallery


def _details(ci: int, cls: str, rows: Sequence[RsvcFinding], present: Sequence[str], models: Mapping[str, Any],
             ctx: SectionContext) -> list[tuple[tuple[str, str, int], FigureRef]]:
    """The detail figure of every unique and important concept of a class, keyed by (model, class, concept)."""
    out: list[tuple[tuple[str, str, int], FigureRef]] = []
    for role in present:
        for c in (models.get(role) or {}).get("concepts") or []:
            j = int(c["concept"])
            f = next((x for x in rows if x.model == role and int(x.concept) == j), None)
            col = c.get("collages")
            if f is None or not (f.unique and f.important) or not col:
                continue
            other = str(f.other)
            path, src = ctx.figure(f"rsvc-{ci}-{slug(cls, 20)}-{slug(role, 12)}-{j}.png")
            ctx.draw(
                figures_rsvc.concept_detail,
                [str(p["png"]) for p in col.get("top") or []], [str(p["png"]) for p in col.get("over") or []],
                [str(p["png"]) for p in col.get("under") or []],
                [float(v) for v in col.get("real") or []], [float(v) for v in col.get("predicted") or []],
                _marks(col), path,
                title=(f"{role} concept #{j}, class {cls}: similarity {float(f.similarity):.2f} in {other} "
                       f"(self {float(f.self_similarity):.2f}), importance {float(f.importance):.2f}"),
                similarity=float(f.similarity), other=other,
            )
            fig = FigureRef(
                src=src, alt=f"Collages and real-versus-predicted scatter of {role} concept {j}, class {cls}",
                caption=(
                    f"{role} concept #{j} of class {cls}, unique to {role} and important for it. Left: its top "
                    f"patches (what the concept is). Then patches {other} over-predicts (predicted coefficient "
                    "far above the real one) and under-predicts (far below; taken among patches weaker than the "
                    "top ones). Right: real against predicted coefficient on every held-out patch, y = x dashed, "
                    "the collages' patches coloured. What to look at: whether the top patches show one "
                    f"recognisable thing, and what {other} confuses it with."
                ),
            )
            out.append(((role, cls, j), fig))
    return out


def _table(rows: Sequence[RsvcFinding], present: Sequence[str]) -> list[dict[str, Any]]:
    """The concept table of a class, by model and concept."""
    table: list[dict[str, Any]] = []
    role_i = {r: i for i, r in enumerate(present)}
    for f in sorted(rows, key=lambda f: (role_i.get(f.model, 99), int(f.concept))):
        flagged = bool(f.unique and f.important)
        table.append({
            "model": f.model, "concept": f"#{f.concept}", "similarity": fmt_num(f.similarity),
            "self": fmt_num(f.self_similarity), "importance": fmt_num(f.importance),
            "quadrant": figures_rsvc.quadrant(bool(f.unique), bool(f.important)),
            "flagged": flagged, "new_model": False,
        })
    for i, row in enumerate(table):
        row["new_model"] = i > 0 and table[i - 1]["model"] != row["model"]
    return table


def _layerwise(layerwise: Mapping[str, Any], order: Sequence[str], ctx: SectionContext) -> FigureRef | None:
    """The layerwise heat map (mean-max concept similarity between layers), or None without one."""
    lw_panels = [
        figures_rsvc.MatrixPanel(
            title=f"class {cls}", row_model=str(lw["rows"]["model"]), rows=tuple(str(x) for x in lw["rows"]["layers"]),
            col_model=str(lw["columns"]["model"]), columns=tuple(str(x) for x in lw["columns"]["layers"]),
            values=tuple(tuple(float(v) for v in row) for row in lw["mmcs"]),
        )
        for cls in ordered(order, list(layerwise)) for lw in [layerwise[cls]]
    ]
    layerwise_fig = None
    if lw_panels:
        path, src = ctx.figure("rsvc-layerwise.svg")
        ctx.draw(figures_rsvc.layerwise_heatmap, lw_panels, path)
        layerwise_fig = FigureRef(
            src=src, alt="Mean-max concept similarity between the layers of the two models, per class",
            caption=(
                "Layerwise comparison: every listed layer gets concepts of its own; a cell is the mean-max similarity "
                "MMCS = ½ [mean over row concepts of the best Pearson correlation with a column concept + the same "
                "the other way] on the evaluation patches. What to look at: where each layer of one model finds its "
                "closest counterpart in the other (bright cells), and whether depth corresponds."
            ),
        )
    return layerwise_fig


def _settings_rows(settings: Mapping[str, Any], tau_sim: float, tau_imp: float) -> list[tuple[str, str]]:
    """The settings table of the section."""
    crop = settings["crop_px"]
    settings_rows = [
        ("Concepts per model and class (NMF K)", fmt_value(settings["concepts"])),
        ("Images", f"{fmt_value(settings.get('extraction_images'))} for concept extraction, "
                   f"{fmt_value(settings.get('evaluation_images'))} for evaluation (asked, per class)"),
        ("Image folder", fmt_value(settings["images"])),
        ("Patches", f"{crop[0]}×{crop[1]} px crops ({fmt_value(settings['patch'])} of the side), stride "
                    f"{fmt_value(settings['stride'])} × crop, {fmt_value(settings['patches_per_image'])} per image, "
                    "each resized to the input size (bilinear)"),
        ("Regression", f"Lasso (α = {fmt_value(settings['lasso_alpha'])}), {fmt_value(settings['folds'])}-fold over "
                       "images, z-scored with training-fold statistics"),
        ("Importance", f"integrated gradients of −CE, zero baseline, {fmt_value(settings['ig_steps'])} intervals "
                       "(trapezoid), mean over evaluation patches, divided by the model's largest |importance|"),
        ("Thresholds", f"unique: similarity < {tau_sim:g}; important: importance > {tau_imp:g}"),
    ]
    return settings_rows


# What the section leads with (issue 13, item 4): the unique and important concepts, most important first, each
# with its detail figure and, where a labels CSV covers its patches' images, the labelled concepts that best match
# it (details["labelled"], written by auditor/methods/rsvc_labels.py).


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
    rows = sorted((f for f in typed_findings(check) if f.unique and f.important),
                  key=lambda f: (-float(f.importance), str(f.cls), int(f.concept)))
    items = []
    for f in rows:
        role, cls, j = str(f.model), str(f.cls), int(f.concept)
        text, covered, top = _matches(labelled, role, cls, j)
        items.append({
            "title": f"{role} concept #{j}, class {cls}",
            "model": role, "other": str(f.other), "class": cls, "concept": j,
            "similarity": f"{float(f.similarity):.2f}", "importance": f"{float(f.importance):.2f}",
            "figure": figures.get((role, cls, j)),
            "labels": text,
            "coverage": (f"{covered} of its {top} top patches come from labelled images" if covered
                         else "no labels cover the images of its top patches"),
        })
    return {"concepts": items, "sources": [str(s) for s in labelled.get("sources") or []]}


def rsvc_section(check: CheckResult, ctx: SectionContext) -> Section:
    """RSVC: per class the similarity-vs-importance scatter, the concept gallery, the RSVC figure of every unique
    and important concept, the concept table; the layerwise heat map; requirements, settings, notes."""
    where = f"check {check.id!r} (rsvc)"
    details = check.details
    settings = need(details, "settings", f"{where}: details")
    for key in ("concepts", "tau_sim", "tau_imp", "lasso_alpha", "folds", "ig_steps", "patch", "stride",
                "crop_px", "patches_per_image", "images"):
        need(settings, key, f"{where}: details.settings")
    classes_detail = need(details, "classes", f"{where}: details")
    findings = typed_findings(check)
    if not findings and not classes_detail:
        return generic_section(check, ctx)
    tau_sim, tau_imp = float(settings["tau_sim"]), float(settings["tau_imp"])
    roles = ordered(ctx.roles, [str(f.model) for f in findings] + list(settings.get("models") or []))
    concept_layers = details.get("concept_layers") or {}
    figs: list[FigureRef] = []
    detail_refs: dict[tuple[str, str, int], FigureRef] = {}  # what the section leads with (lead)
    classes = []
    order = ordered([str(k) for k in settings.get("classes") or []], list(classes_detail))
    for ci, cls in enumerate(order):
        info = classes_detail[cls]
        rows = [f for f in findings if f.cls == cls]
        entry: dict[str, Any] = {
            "name": cls, "skipped": info.get("skipped"), "candidates": fmt_value(info.get("candidates")),
            "extraction": fmt_value(info.get("extraction_images")), "evaluation": fmt_value(info.get("evaluation_images")),
            "patches": fmt_value(info.get("evaluation_patches")), "figures": [], "details": [], "table": [],
            "models": [],
        }
        classes.append(entry)
        if info.get("skipped") or not rows:
            continue
        models = info.get("models") or {}
        present = [r for r in roles if any(f.model == r for f in rows)]
        scatter = _scatter(ci, cls, rows, present, models, entry, tau_sim, tau_imp, ctx)
        entry["figures"].append(scatter)
        figs.append(scatter)

        gallery = _gallery(ci, cls, rows, present, models, concept_layers, ctx)
        entry["figures"].append(gallery)
        figs.append(gallery)

        for key, fig in _details(ci, cls, rows, present, models, ctx):
            entry["details"].append(fig)
            detail_refs[key] = fig
            figs.append(fig)

        entry["table"] = _table(rows, present)

    layerwise_fig = _layerwise(details.get("layerwise") or {}, order, ctx)
    if layerwise_fig is not None:
        figs.append(layerwise_fig)

    settings_rows = _settings_rows(settings, tau_sim, tau_imp)
    return Section(
        block="rsvc",
        check=check,
        anchor=ctx.stem,
        figures=tuple(figs),
        data={
            "roles": roles,
            "concept_layers": [(r, str(concept_layers.get(r, ""))) for r in roles],
            "layers": [(r, [str(x) for x in (details.get("layers") or {}).get(r, [])]) for r in roles],
            "classes": classes,
            "layerwise": layerwise_fig,
            "settings_rows": settings_rows,
            "tau_sim": f"{tau_sim:g}",
            "tau_imp": f"{tau_imp:g}",
            "k": fmt_value(settings["concepts"]),
            "requirements": requirements(details, where),
            "notes": [str(n) for n in details.get("notes") or []],
            "limits": RSVC_LIMITS_NOTE,
            "lead": lead(check, detail_refs),
        },
    )
