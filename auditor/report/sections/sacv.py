"""The SACV section: spatial TCAV scores against the random band, and where the concept acts (maps)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from auditor.report.cav_text import DEFAULT_MIN_CAV_ACCURACY, significance_note
from auditor.report.figures import sacv as figures_sacv
from auditor.report.figures import tcav as tcav_figures
from auditor.report.figures.common import shorten
from auditor.report.format import fmt_num, fmt_p, fmt_pm, fmt_share, fmt_value, ordered, slug
from auditor.report.loading import need, requirements
from auditor.report.sections.generic import generic_section
from auditor.report.sections.null import null_figure
from auditor.report.types import FigureRef, Section, SectionContext
from auditor.results import CheckResult, typed_findings
from auditor.schemas.sacv import SacvFinding

# The appendix's method notes: how SACV works, said once for the whole report.
NOTES_TITLE = "SACV: spatially aware concept activation vectors"
NOTES_TEXT = (
    "SACV trains the concept activation vector (CAV) on single positions of a convolutional layer: positions of "
    "concept images (only where a concept mask, when given, shows the concept) against positions of random "
    "images. On a class image, the concept is present at the positions the CAV classifies as concept; there, the "
    "contribution is the derivative of the class logit along the CAV at that position. The spatial TCAV score of "
    "a class is the fraction of its images whose contributions, summed over the positions where the concept is "
    "present, are positive. As in TCAV it is computed against each of several random sets and tested either "
    "against pseudo-concepts (sets of random images put in the concept's place, every position a concept sample, "
    "scored exactly like it) or, with the paper's test (welch), against random-versus-random scores; the "
    "p-values of the check's cells are adjusted together (Holm). A concept whose per-position CAVs do not reach "
    "the accuracy threshold is reported as not learned at that layer. The contribution maps, averaged over class "
    "images and overlaid on the images the model scores highest, show where the concept acts; with object masks, "
    "the share of a map's absolute contribution inside the object says whether it acts on the object."
)

SACV_LIMITS_NOTE = (
    "Like TCAV, a significant spatial score says the class logit is locally sensitive to the concept direction "
    "where the concept is present; it does not show reliance (decided by causal probes). The maps are "
    "first-order: they show where moving the activation along the concept would change the logit, at the "
    "layer's resolution (a coarse layer smears a small concept over a whole cell). The concept positions are "
    "learned from the concept images: without concept masks every position of a concept image counts as the "
    "concept, which fails for small concepts. "
)


def _label(model: str, layer: str) -> str:
    return f"{model}\n{shorten(layer, 28)}"


def _group(cls: str, concept: str) -> str:
    return f"{concept}\nclass {cls}"


def _score_figures(rows: Sequence[SacvFinding], roles: Sequence[str], layers: Mapping[str, Sequence[str]],
                   settings: Mapping[str, Any], threshold: float, ctx: SectionContext) -> list[FigureRef]:
    """One figure of spatial TCAV score bars per model."""
    figs: list[FigureRef] = []
    for ri, role in enumerate(roles):
        mine = [f for f in rows if f.model == role]
        bars = [
            tcav_figures.TcavBar(
                group=_group(str(f.cls), str(f.concept)), layer=str(f.layer), score=f.score,
                std=f.score_std, random_mean=f.random_score_mean, random_std=f.random_score_std,
                significant=bool(f.significant), learned=bool(f.learned),
            )
            for f in mine
        ]
        present = list(dict.fromkeys((str(f.cls), str(f.concept)) for f in mine))
        path, src = ctx.figure(f"sacv-{ri}-{slug(role, 20)}.svg")
        name = ctx.model_names.get(role, "")
        ctx.draw(tcav_figures.tcav_scores, bars, [_group(*p) for p in present], layers[role], path,
                 title=f"{role}: {name} (spatial TCAV score)" if name else f"{role} (spatial TCAV score)")
        figs.append(FigureRef(
            src=src, alt=f"Spatial TCAV scores of the {role} model by concept and layer",
            caption=(
                f"Spatial TCAV scores of the {role} model (the axis reads “TCAV score”: here, the fraction of class "
                "images whose logit rises along the concept summed over the positions where the concept is "
                "present), one bar per layer. What to look at: a starred bar outside the grey random-vs-random "
                f"band is significant; hatched bars are layers where the concept was not learned (per-position "
                f"CAV accuracy < {threshold:g}). Error bars: std over {fmt_value(settings['random_sets'])} random sets."
            ),
        ))
    return figs


def _map_figures(rows: Sequence[SacvFinding], roles: Sequence[str], layers: Mapping[str, Sequence[str]],
                 pairs: Sequence[tuple[str, str]], details: Mapping[str, Any], settings: Mapping[str, Any],
                 ctx: SectionContext) -> list[FigureRef]:
    """A grid of contribution maps per (class, concept): a row per model and layer."""
    figs: list[FigureRef] = []
    maps = details.get("maps") or []
    thumbs = {(t.get("model"), t.get("class")): list(t.get("images_png") or []) for t in details.get("thumbnails") or []}
    for pi, (cls, concept) in enumerate(pairs):
        grid_rows = []
        for role in roles:
            for layer in layers[role]:
                entry = next((m for m in maps if m.get("model") == role and m.get("layer") == layer
                              and m.get("class") == cls and m.get("concept") == concept), None)
                if entry is None:
                    continue
                share = next((f.inside_mask_share for f in rows if f.model == role
                              and f.layer == layer and f.cls == cls and f.concept == concept), None)
                overlays = entry.get("overlays") or []
                grid_rows.append(figures_sacv.MapRow(
                    label=_label(role, layer),
                    mean_map=tuple(tuple(float(v) for v in r) for r in entry["mean_contribution"]),
                    images=tuple(str(thumbs[(role, cls)][int(o["image"])]) for o in overlays),
                    maps=tuple(tuple(tuple(float(v) for v in r) for r in o["contribution"]) for o in overlays),
                    share="" if share is None else f"on object {fmt_share(share)}",
                ))
        if not grid_rows:
            continue
        path, src = ctx.figure(f"sacv-maps-{pi}.png")
        ctx.draw(figures_sacv.contribution_grid, grid_rows, path,
                 title=f"Where {concept} acts on the logit of class {cls}")
        figs.append(FigureRef(
            src=src, alt=f"Contribution maps of {concept} for class {cls}",
            caption=(
                f"Where the concept {concept} acts on the logit of class {cls}: one row per model and layer. First "
                f"column: the contribution map averaged over {fmt_value(settings['map_images'])} class images; then "
                "the class images the model scores highest, with their map overlaid. Orange: moving the activation "
                "toward the concept raises the logit there; purple: lowers it; no colour: the concept is not "
                "present there. Colours are scaled per row. What to look at: where the colour sits (on the object, "
                "or somewhere it should not matter, like a corner) and how it differs between the models."
                + (" “on object” is the share of the map's absolute contribution inside the object masks."
                   if settings.get("masks") else "")
            ),
        ))
    return figs


def _table(rows: Sequence[SacvFinding], roles: Sequence[str], layers: Mapping[str, Sequence[str]],
           pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """The findings table: by model, (class, concept) and layer."""
    role_i = {role: i for i, role in enumerate(roles)}
    pair_i = {p: i for i, p in enumerate(pairs)}
    layer_i = {(role, lay): i for role in roles for i, lay in enumerate(layers[role])}
    table: list[dict[str, Any]] = [
        {
            "model": str(f.model), "layer": str(f.layer), "class": str(f.cls), "concept": str(f.concept),
            "score": fmt_pm(f.score, f.score_std),
            "random": fmt_pm(f.random_score_mean, f.random_score_std),
            "p_adj": fmt_p(f.p_adjusted), "cav_acc": fmt_num(f.cav_accuracy),
            "cosine": fmt_num(f.cosine, 3), "p_raw": fmt_p(f.p_value),
            "inside": fmt_share(f.inside_mask_share), "verdict": str(f.verdict),
            "verdict_class": slug(str(f.verdict)), "new_model": False,
        }
        for f in sorted(rows, key=lambda f: (role_i[f.model], pair_i[(f.cls, f.concept)],
                                             layer_i[(f.model, f.layer)]))
    ]
    for i, row in enumerate(table):
        row["new_model"] = i > 0 and table[i - 1]["model"] != row["model"]
    return table


def sacv_section(check: CheckResult, ctx: SectionContext) -> Section:
    """SACV: score bars per model and layer, contribution-map grids per (class, concept), table, requirements."""
    where = f"check {check.id!r} (sacv)"
    details = check.details
    settings = need(details, "settings", f"{where}: details")
    for key in ("random_sets", "set_size", "alpha", "test", "map_images"):
        need(settings, key, f"{where}: details.settings")
    threshold = float(settings.get("min_cav_accuracy", DEFAULT_MIN_CAV_ACCURACY))
    rows = typed_findings(check)
    if not rows:
        return generic_section(check, ctx)

    roles = ordered(ctx.roles, [str(f.model) for f in rows])
    declared = details.get("layers") or {}
    layers = {
        role: ordered([str(x) for x in declared.get(role, [])], [str(f.layer) for f in rows if f.model == role])
        for role in roles
    }
    pairs = list(dict.fromkeys((str(f.cls), str(f.concept)) for f in rows))

    figs = _score_figures(rows, roles, layers, settings, threshold, ctx)

    null = null_figure(details, rows, ctx, list(dict.fromkeys(str(p[1]) for p in pairs)))
    if null is not None:
        figs.append(FigureRef(src=null[0], alt=null[1], caption=null[2]))

    figs += _map_figures(rows, roles, layers, pairs, details, settings, ctx)

    table = _table(rows, roles, layers, pairs)

    return Section(
        block="sacv",
        check=check,
        anchor=ctx.stem,
        figures=tuple(figs),
        data={
            "classes": list(dict.fromkeys(p[0] for p in pairs)),
            "concepts": list(dict.fromkeys(p[1] for p in pairs)),
            "settings_rows": [
                ("Random sets", fmt_value(settings["random_sets"])),
                ("Images per set", fmt_value(settings["set_size"])),
                ("Class images with maps", fmt_value(settings["map_images"])),
                ("Concept masks", "yes" if settings.get("concept_masks") else "no (every position of a concept image)"),
                ("Significance level α", fmt_value(settings["alpha"])),
                ("CAVs", "difference of means (FastCAV), for the concept and the pseudo-concepts alike"
                 if settings.get("cav") == "mean" else "logistic regression per position"),
                ("Test", fmt_value(settings["test"])),
                ("Family size (Holm)", fmt_value(settings.get("family_size"))),
            ] + ([("Pseudo-concepts", f"{fmt_value(settings.get('pseudo_concepts'))} (from "
                   f"{fmt_value(settings.get('spare_images'))} spare random images)"),
                  ("Deciding statistic", str(settings.get("statistic")))]
                 if settings.get("test_name") == "exchangeable" else []),
            "exchangeable": settings.get("test_name") == "exchangeable",
            "threshold": f"{threshold:g}",
            "masks": bool(settings.get("masks")),
            "table": table,
            "requirements": requirements(details, where),
            "notes": [str(n) for n in details.get("notes") or []],
            "limits": SACV_LIMITS_NOTE + significance_note(settings),
        },
    )
