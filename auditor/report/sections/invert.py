"""The INVERT section of the report (block "invert", templates/sections/invert.html.j2), from results.json alone.

Registered in auditor.report.sections.SECTIONS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from auditor.report.figures import artifact_probe as probe_figures
from auditor.report.figures import invert as figures_invert
from auditor.report.figures.common import shorten
from auditor.report.format import fmt_num, fmt_p, fmt_share, fmt_value, ordered, placement_words, slug
from auditor.report.loading import ResultsError, need, requirements
from auditor.report.sections.generic import generic_section
from auditor.report.types import FigureRef, Section, SectionContext
from auditor.results import CheckResult, typed_findings
from auditor.schemas.invert import InvertProbeFinding, UnitFinding

# The appendix's method notes: how INVERT works, said once for the whole report.
NOTES_TITLE = "INVERT: units explained by concept formulas"
NOTES_TEXT = (
    "Each unit of an audited layer is reduced to one value per probe image (its spatial mean or maximum). INVERT "
    "labels the unit with the logical formula over the probe set's concept labels that best separates the "
    "images where the unit is high from the rest: a formula's score is the AUC of the unit's value between the "
    "images where the formula holds and the images where it does not. Formulas combine up to L concepts with AND, "
    "OR and NOT and must hold for a share of the images within set bounds; a beam search of width B finds the "
    "best one on a seeded half of the probe set. Its AUC and a Mann-Whitney test are then measured on the other "
    "half, which the search never saw, and the p-values of every unit of the check are adjusted together (Holm). "
    "A unit is flagged when its best formula uses a forbidden concept with a held-out AUC at or above the check's "
    "tau and an adjusted p-value at or below its alpha. When the check names an artifact, a logit-level probe follows: each "
    "clean image is shown once with the artifact pasted and once with a neutral patch of its own mean colour on "
    "the same pixels, and a class relies on the artifact when the AUC of its logit, artifact versus neutral, is "
    "beyond the threshold."
)

INVERT_LIMITS_NOTE = (
    "INVERT describes what a unit responds to on the probe set, in terms of the concepts labelled there: a unit "
    "can only be explained by a labelled concept, and a label correlated with another in the probe set (a "
    "watermark that only ever appears on one class) makes the two indistinguishable. A flagged unit shows the "
    "model represents the spurious concept, not that its output depends on it; the logit-level probe (pasting the "
    "artifact against a neutral patch) is the causal test, and it depends on where and how the artifact is pasted."
)
# The appendix lists every unit up to this many rows (flagged and best-explained first when there are more);
# results.json holds all of them.
MAX_APPENDIX_ROWS = 600
APPENDIX_COLUMNS = ("model", "layer", "unit", "formula", "length", "auc", "search_auc", "support", "p_adjusted",
                    "flagged")


def _appendix(units: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    columns = list(need(units, "columns", where))
    missing = [c for c in APPENDIX_COLUMNS if c not in columns]
    if missing:
        raise ResultsError(f"{where}.columns lacks {', '.join(missing)}")
    rows = []
    for i, r in enumerate(need(units, "rows", where)):
        if not isinstance(r, list) or len(r) != len(columns):
            raise ResultsError(f"{where}.rows[{i}] does not match the columns")
        rows.append(dict(zip(columns, r)))
    return rows


def _overview(units: Sequence[Mapping[str, Any]], roles: Sequence[str], layers: Mapping[str, Sequence[str]],
              forbidden_units: set[Any], settings: Mapping[str, Any], ctx: SectionContext) -> FigureRef:
    """Every unit at a glance: its best formula's held-out AUC, per model and layer."""
    rows = [(role, layer) for role in roles for layer in layers[role]]
    path, src = ctx.figure("invert-units.svg")
    ctx.draw(
        figures_invert.unit_overview,
        [figures_invert.UnitDot(model=str(u["model"]), layer=str(u["layer"]),
                                auc=None if u["auc"] is None else float(u["auc"]),
                                forbidden=(u["model"], u["layer"], u["unit"]) in forbidden_units,
                                flagged=bool(u["flagged"])) for u in units],
        rows, path, tau=float(settings["tau"]),
    )
    overview = FigureRef(
        src=src, alt="Held-out AUC of every unit's best formula, per model and layer",
        caption=(
            "Every unit of the audited layers at the held-out AUC of its best formula (one row per model and layer; "
            "vertical position within a row is jitter). What to look at: vermillion diamonds right of the dashed "
            f"line (tau = {float(settings['tau']):g}) are units explained by a forbidden concept "
            f"({', '.join(settings['forbidden']) or 'none set'}) "
            "with a significant held-out AUC — the flagged units. Orange rings use a forbidden concept but stay "
            "below the bar (or are not significant). Grey dots are explained by other concepts; near 0.5 means no "
            "labelled concept explains the unit."
        ),
    )
    return overview


def _probe(probe: Sequence[InvertProbeFinding], roles: Sequence[str], settings: Mapping[str, Any],
           ctx: SectionContext) -> tuple[FigureRef | None, list[dict[str, Any]]]:
    """The logit-level probe INVERT ran: its figure and table (None and [] without a probe)."""
    probe_fig = None
    probe_table: list[dict[str, Any]] = []
    artifact = settings.get("artifact")
    if probe and isinstance(artifact, Mapping):
        threshold = float(settings.get("threshold", 0.7))
        direction = str(settings.get("direction", "raise"))
        classes = list(dict.fromkeys(str(f.cls) for f in probe))
        probe_roles = ordered(roles, [str(f.model) for f in probe])
        path, src = ctx.figure("invert-probe.svg")
        ctx.draw(
            probe_figures.artifact_auc,
            [probe_figures.AucBar(model=str(f.model), cls=str(f.cls),
                                  auc=None if f.auc is None else float(f.auc), reliant=bool(f.reliant))
             for f in probe],
            classes, probe_roles, path, threshold=threshold, direction=direction,
            title=f"Artifact {shorten(str(artifact.get('image', '')), 80)}",
        )
        band = f"above {threshold:g}" + (f" or below {1 - threshold:g}" if direction == "both" else "")
        probe_fig = FigureRef(
            src=src, alt="AUC of each class logit, artifact versus neutral patch, per model",
            caption=(
                "The logit-level probe: AUC of each class logit, artifact versus a neutral patch of the image's mean "
                f"colour on the same pixels, one bar per model drawn from 0.5. What to look at: bars ending in a "
                f"shaded band (AUC {band}) are classes relying on the artifact (heavy outline). 0.5: the artifact "
                "does nothing a neutral patch does not."
            ),
        )
        probe_table = [
            {"model": str(f.model), "class": str(f.cls), "auc": fmt_num(f.auc),
             "effect": str(f.effect or "—"), "reliant": "yes" if f.reliant else "no",
             "is_reliant": bool(f.reliant), "shift": fmt_num(f.mean_logit_shift),
             "flipped_to": fmt_share(f.flipped_to_class), "new_model": False}
            for f in sorted(probe, key=lambda f: (probe_roles.index(str(f.model)), classes.index(str(f.cls))))
        ]
        for i, row in enumerate(probe_table):
            row["new_model"] = i > 0 and probe_table[i - 1]["model"] != row["model"]
    return probe_fig, probe_table


def _flagged(role: str, unit_findings: Sequence[UnitFinding], units: Sequence[Mapping[str, Any]],
             evidence: Sequence[Mapping[str, Any]], layers: Mapping[str, Sequence[str]], where: str,
             ctx: SectionContext) -> tuple[dict[str, Any], list[FigureRef]]:
    """One model's flagged units: their table, and the figures of their evidence (distributions, top images)."""
    depth = {layer: i for i, layer in enumerate(layers[role])}
    flagged = sorted((f for f in unit_findings if f.model == role and f.flagged),
                     key=lambda f: (-(f.auc or 0.0), depth.get(f.layer, 0), f.unit))
    table = [
        {"layer": str(f.layer), "unit": fmt_value(f.unit), "formula": str(f.formula),
         "auc": fmt_num(f.auc), "support": fmt_value(f.support),
         "fraction": fmt_share(f.fraction), "p_adj": fmt_p(f.p_adjusted)}
        for f in flagged
    ]
    mine = [e for e in evidence if e.get("model") == role]
    dist_fig = images_fig = None
    if mine:
        panels = []
        tops = []
        for j, e in enumerate(mine):
            w = f"{where}: details.evidence ({role}, {j})"
            hist = need(e, "histogram", w)
            label = (f"{shorten(str(need(e, 'layer', w)), 26)} #{need(e, 'unit', w)}: "
                     f"{need(e, 'formula', w)}")
            panels.append(figures_invert.DistPanel(
                title=label, edges=tuple(float(x) for x in need(hist, "edges", w)),
                with_formula=tuple(int(x) for x in need(hist, "with", w)),
                without_formula=tuple(int(x) for x in need(hist, "without", w)),
                auc=None if e.get("auc") is None else float(e["auc"]),
            ))
            top = list(need(e, "top_images", w))
            tops.append(figures_invert.TopRow(
                label=label, images=tuple(str(need(t, "png", w)) for t in top),
                activations=tuple(float(need(t, "activation", w)) for t in top),
                holds=tuple(bool(need(t, "holds", w)) for t in top),
            ))
        tag = slug(role, 20)
        path, src = ctx.figure(f"invert-dist-{tag}.svg")
        ctx.draw(figures_invert.unit_distributions, panels, path, title=f"{role}: flagged units")
        more = (f" The {len(mine)} flagged units with the highest AUC are shown; the table lists all "
                f"{len(flagged)}." if len(mine) < len(flagged) else "")
        dist_fig = FigureRef(
            src=src, alt=f"Activation distributions of the flagged units of the {role} model",
            caption=(
                f"Flagged units of the {role} model: share of the held-out images per activation value, where "
                "the unit's formula holds (blue) and where it does not (grey). What to look at: the further "
                "apart the two, the more the unit's activation tells the forbidden concept apart — the AUC in "
                "the corner summarises it." + more
            ),
        )
        path, src = ctx.figure(f"invert-top-{tag}.png")
        ctx.draw(figures_invert.top_images, tops, path)
        images_fig = FigureRef(
            src=src, alt=f"Top-activating probe images of the flagged units of the {role} model",
            caption=(
                f"Top-activating probe images of the same units ({role}), highest first, activation under each. "
                "What to look at: what the images have in common. A heavy blue frame marks images where the "
                "unit's formula holds, a thin grey one images where it does not." + more
            ),
        )
    entry = {"role": role, "table": table, "count": len(flagged),
             "total": sum(1 for u in units if u["model"] == role),
             "dist_fig": dist_fig, "images_fig": images_fig}
    return entry, [f for f in (dist_fig, images_fig) if f is not None]


def _appendix_groups(units: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the units the appendix lists, those units grouped per (model, layer))."""
    rows_all = units
    if len(units) > MAX_APPENDIX_ROWS:
        keep = sorted(range(len(units)), key=lambda i: (not units[i]["flagged"], -(units[i]["auc"] or 0.0)))
        keep_set = set(keep[:MAX_APPENDIX_ROWS])
        rows_all = [u for i, u in enumerate(units) if i in keep_set]
    appendix: list[dict[str, Any]] = []  # one group per (model, layer), rows in unit order
    for u in rows_all:
        if not appendix or (appendix[-1]["model"], appendix[-1]["layer"]) != (str(u["model"]), str(u["layer"])):
            appendix.append({"model": str(u["model"]), "layer": str(u["layer"]), "rows": []})
        appendix[-1]["rows"].append({
            "unit": fmt_value(u["unit"]), "formula": "—" if u["formula"] is None else str(u["formula"]),
            "length": fmt_value(u["length"]), "auc": fmt_num(u["auc"]), "search_auc": fmt_num(u["search_auc"]),
            "support": fmt_value(u["support"]), "p_adj": fmt_p(u["p_adjusted"]), "flagged": bool(u["flagged"]),
        })
    return rows_all, appendix


def _settings_rows(settings: Mapping[str, Any], probe: bool) -> list[tuple[str, str]]:
    """The settings table of the section."""
    min_fraction = float(settings["min_fraction"])
    settings_rows = [
        ("Probe set", f"{fmt_value(settings['n_images'])} images, {len(settings['concepts'])} concepts"
                      + (f" ({settings['labels']})" if settings.get("labels") else "")),
        ("Search / evaluation half",
         f"{fmt_value(settings['n_search'])} / {fmt_value(settings['n_eval'])} images (seeded split)"),
        ("Unit value per image", "spatial mean" if settings["reduce"] == "mean" else "spatial maximum"),
        ("Formula length L, beam B", f"{fmt_value(settings['formula_length'])}, {fmt_value(settings['beam'])}"),
        ("Fraction bounds", f"{min_fraction:.3g} ≤ T ≤ {float(settings['max_fraction']):.3g}"
                            + (" (min: max(0.005, 30 / search images))" if settings.get("min_fraction_default")
                               else "")),
        ("Candidate literals", "all" if settings.get("limit_search") is None
         else f"top {fmt_value(settings['limit_search'])} by 2|AUC − 0.5|"),
        ("Flag bar", f"held-out AUC ≥ {float(settings['tau']):g} and Holm-adjusted p ≤ {float(settings['alpha']):g}"),
        ("Test", str(settings["test"])),
    ]
    artifact = settings.get("artifact")
    if probe and isinstance(artifact, Mapping):
        settings_rows.append(("Artifact", f"{artifact.get('image')}, pasted {placement_words(artifact)}"))
        if settings.get("n_pairs") is not None:
            settings_rows.append(("Probe pairs", fmt_value(settings["n_pairs"])))
    return settings_rows


def _layers(layers_declared: Mapping[str, Any], units: Sequence[Mapping[str, Any]],
            roles: Sequence[str]) -> dict[str, list[str]]:
    """Each model's layers: the declared order first, then any other layer the units name."""
    return {
        role: ordered([str(x) for x in layers_declared.get(role, [])],
                      [str(u["layer"]) for u in units if u["model"] == role])
        for role in roles
    }


def invert_section(check: CheckResult, ctx: SectionContext) -> Section:
    """INVERT: unit overview, flagged units with their evidence, the logit probe, requirements, appendix table."""
    where = f"check {check.id!r} (invert)"
    details = check.details
    findings = typed_findings(check)
    if not details and not findings:  # nothing was computed (e.g. a check with no units): say so plainly
        return generic_section(check, ctx)
    settings = need(details, "settings", f"{where}: details")
    for key in ("concepts", "forbidden", "n_images", "n_search", "n_eval", "reduce", "formula_length", "beam",
                "min_fraction", "max_fraction", "tau", "alpha", "test", "family_size"):
        need(settings, key, f"{where}: details.settings")
    units = _appendix(need(details, "units", f"{where}: details"), f"{where}: details.units")
    if not units:
        return generic_section(check, ctx)
    roles = ordered(ctx.roles, [str(u["model"]) for u in units])
    layers = _layers(details.get("layers") or {}, units, roles)
    unit_findings = [f for f in findings if isinstance(f, UnitFinding)]
    probe = [f for f in findings if isinstance(f, InvertProbeFinding)]
    forbidden_units = {(f.model, f.layer, f.unit) for f in unit_findings if f.forbidden}

    figs: list[FigureRef] = []
    # 1. Every unit at a glance.
    overview = _overview(units, roles, layers, forbidden_units, settings, ctx)
    figs.append(overview)

    # 2. The logit probe.
    artifact = settings.get("artifact")
    probe_fig, probe_table = _probe(probe, roles, settings, ctx)
    if probe_fig is not None:
        figs.append(probe_fig)

    # 3. Flagged units per model, with their evidence figures.
    evidence = [e for e in details.get("evidence") or [] if isinstance(e, Mapping)]
    per_model = []
    for role in roles:
        entry, role_figs = _flagged(role, unit_findings, units, evidence, layers, where, ctx)
        figs += role_figs
        per_model.append(entry)

    # 4. Appendix: the best explanation of every unit.
    rows_all, appendix = _appendix_groups(units)

    settings_rows = _settings_rows(settings, bool(probe))

    return Section(
        block="invert",
        check=check,
        anchor=ctx.stem,
        figures=tuple(figs),
        data={
            "concepts": [str(c) for c in settings["concepts"]],
            "forbidden": [str(c) for c in settings["forbidden"]],
            "layers": [(role, layers[role]) for role in roles],
            "n_images": fmt_value(settings["n_images"]),
            "n_search": fmt_value(settings["n_search"]),
            "n_eval": fmt_value(settings["n_eval"]),
            "reduce": "spatial mean" if settings["reduce"] == "mean" else "spatial maximum",
            "length": fmt_value(settings["formula_length"]),
            "beam": fmt_value(settings["beam"]),
            "tau": f"{float(settings['tau']):g}",
            "alpha": f"{float(settings['alpha']):g}",
            "family": fmt_value(settings["family_size"]),
            "overview": overview,
            "probe_fig": probe_fig,
            "probe": probe_table,
            "artifact": str(artifact.get("image")) if isinstance(artifact, Mapping) else None,
            "placement": placement_words(artifact) if isinstance(artifact, Mapping) else "",
            "threshold": f"{float(settings.get('threshold', 0.7)):g}",
            "low": f"{1 - float(settings.get('threshold', 0.7)):g}",
            "direction": str(settings.get("direction", "raise")),
            "models": per_model,
            "appendix": appendix,
            "appendix_total": len(units),
            "appendix_shown": len(rows_all),
            "settings_rows": settings_rows,
            "requirements": requirements(details, where),
            "notes": [str(n) for n in details.get("notes") or []],
            "limits": INVERT_LIMITS_NOTE,
        },
    )
