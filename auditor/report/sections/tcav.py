"""The TCAV section: score bars per model against the random band, the findings grid, requirements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from auditor.report.cav_text import DEFAULT_MIN_CAV_ACCURACY, significance_note
from auditor.report.figures import tcav as tcav_figures
from auditor.report.format import fmt_num, fmt_p, fmt_pm, fmt_value, ordered, slug
from auditor.report.loading import need, requirements
from auditor.report.sections.generic import generic_section
from auditor.report.sections.null import null_figure
from auditor.report.types import FigureRef, Section, SectionContext
from auditor.results import CheckResult, typed_findings
from auditor.schemas.common import ABSENT
from auditor.schemas.tcav import ConceptFinding

TCAV_CLAIM = (
    "A significant TCAV score says the class logit is locally sensitive to the concept direction at that layer; "
    "it does not show that the model relies on the concept. Reliance is decided by causal probes (pasting the "
    "concept onto images), reported separately where available. "
)

# The appendix's method notes: how TCAV works, said once for the whole report.
NOTES_TITLE = "TCAV: testing with concept activation vectors"
NOTES_TEXT = (
    "For each model, layer and concept, a linear classifier (the concept activation vector, CAV) is trained to "
    "separate the activations of concept images from those of random images, once against each of several "
    "random sets. The TCAV score of a class is the fraction of its images whose class logit increases when the "
    "activations move a small step along the CAV (a directional derivative). By default (the exchangeability "
    "test) the concept is compared with pseudo-concepts: sets of random images put in the concept's place and "
    "scored exactly like it; its p-value is the share of pseudo-concepts whose statistic (the TCAV score, or "
    "the mean cosine of the class gradient with the CAV) is at least as far from no sensitivity. With the "
    "paper's test (welch), the concept's scores are compared by a two-sided Welch t-test with those of "
    "random-versus-random CAVs. The p-values of every tested cell of every TCAV check of the "
    "audit are adjusted together (Holm), so that running more tests does not make a false alarm more likely. "
    "A concept whose CAVs do not separate it from random images (held-out accuracy below the threshold) is "
    "reported as not learned at that layer and is not tested there."
)


def _given(value: object) -> object:
    """A finding field results.json has only under some settings, as None when this one lacks it."""
    return None if value is ABSENT else value


def _other_statistic(f: ConceptFinding) -> str | None:
    """Under the exchangeability test, the statistic that did not decide and its raw p, as the cell prints it."""
    if f.test != "exchangeable" or not f.learned:
        return None
    if f.statistic == "cosine":
        return f"score {fmt_num(f.score)} (p {fmt_p(_given(f.score_p_value))})"
    return f"cosine {fmt_num(f.cosine, 3)} (p {fmt_p(_given(f.cosine_p_value))})"


_SPACE_WORDS = {
    "pooled": "spatially pooled activations (one CAV per layer applied at every position)",
    "flatten": "flattened activations (position-specific)",
}


def _group_label(pair: tuple[str, str]) -> str:
    return f"{pair[1]}\nclass {pair[0]}"


def _draw_scores(rows: Sequence[ConceptFinding], roles: Sequence[str], layers: Mapping[str, Sequence[str]],
                 pairs: Sequence[tuple[str, str]], ctx: SectionContext) -> tuple[Path, str]:
    """Draw the TCAV figure (a panel of score bars per model); (path, src) of it."""
    panels = []
    for role in roles:
        name = ctx.model_names.get(role, "")
        panels.append(tcav_figures.TcavPanel(
            title=f"{role}: {name}" if name else role,
            bars=tuple(
                tcav_figures.TcavBar(
                    group=_group_label((r.cls, r.concept)), layer=r.layer, score=r.score, std=r.score_std,
                    random_mean=r.random_score_mean, random_std=r.random_score_std, significant=r.significant,
                    learned=r.learned,
                )
                for r in rows if r.model == role
            ),
            layers=tuple(layers[role]),
        ))
    path, src = ctx.figure("tcav.svg")
    groups = [_group_label(p) for p in pairs]
    ctx.draw_sized(tcav_figures.tcav_models_size(panels, groups), tcav_figures.tcav_models, panels, groups, path)
    return path, src


def tcav_section(check: CheckResult, ctx: SectionContext) -> Section:
    """TCAV: one figure of score bars (a panel per model) against the random band, a findings grid, requirements.

    The grid has one block per model: a row per (class, concept), a column per layer (at most
    TCAV_GRID_COLUMNS, else the block repeats with the next layers), every cell with the score ± std, the raw
    and Holm-adjusted p-values and the verdict; then the random-vs-random score of each class and the CAV accuracy
    of each concept per layer. Every number of every finding is printed once, in far fewer table cells than a row
    per finding (table cells are what WeasyPrint spends its time on in a 100-check report).
    """
    where = f"check {check.id!r} (tcav)"
    details = check.details
    settings = need(details, "settings", f"{where}: details")
    for key in ("cav", "space", "random_sets", "set_size", "alpha", "test"):
        need(settings, key, f"{where}: details.settings")
    threshold = float(settings.get("min_cav_accuracy", DEFAULT_MIN_CAV_ACCURACY))
    rows = typed_findings(check)
    if not rows:
        return generic_section(check, ctx)

    roles = ordered(ctx.roles, [r.model for r in rows])
    declared_layers = details.get("layers") or {}
    layers = {
        role: ordered([str(x) for x in declared_layers.get(role, [])], [r.layer for r in rows if r.model == role])
        for role in roles
    }
    pairs = list(dict.fromkeys((r.cls, r.concept) for r in rows))
    classes = list(dict.fromkeys(r.cls for r in rows))
    concepts = list(dict.fromkeys(r.concept for r in rows))

    path, src = _draw_scores(rows, roles, layers, pairs, ctx)
    models_words = "each model" if len(roles) > 1 else f"the {roles[0]} model"
    figs = (FigureRef(
        src=src,
        alt="TCAV scores by concept and layer, one panel per model",
        caption=(
            f"TCAV scores of {models_words}, one bar per layer (numbered shallow to deep above each panel). "
            "What to look at: a starred bar far from the grey random-vs-random box behind it (dashed line: its "
            "mean) is a significant sensitivity of the class logit to the concept at that layer (above: the logit "
            "rises along the concept; below: less than chance). Hatched stubs are layers where the concept was "
            f"not learned (CAV accuracy < {threshold:g}): no evidence either way. Error bars: std over "
            f"{fmt_value(settings['random_sets'])} random sets. The numbers are in the table below."
        ),
    ),)
    null = null_figure(details, rows, ctx, concepts)
    if null is not None:
        figs += (FigureRef(src=null[0], alt=null[1], caption=null[2]),)

    reqs = requirements(details, where)
    # The settings (learner, space, set sizes, test, α) are stated in "What was tested and why"; no table repeats them.
    grid, shared_random, shared_accuracy = _tcav_grid(rows, roles, layers, pairs, classes, concepts)
    return Section(
        block="tcav",
        check=check,
        anchor=ctx.stem,
        figures=figs,
        data={
            "classes": classes,
            "concepts": concepts,
            "layers": [(role, layers[role]) for role in roles],
            "settings": settings,
            "space_words": _SPACE_WORDS.get(str(settings["space"]), f"{settings['space']} activations"),
            "threshold": f"{threshold:g}",
            "grid": grid,
            "grid_columns": max((len(block["layers"]) for block in grid), default=1),
            "shared_random": shared_random,
            "shared_accuracy": shared_accuracy,
            "requirements": reqs,
            "notes": [str(n) for n in details.get("notes") or []],
            "limits": TCAV_CLAIM + significance_note(settings),
        },
    )


# Layer columns per block of the TCAV findings grid: four keep a cell's two lines (score, p-values) unbroken on A4.
TCAV_GRID_COLUMNS = 4
_TCAV_MARKS = {"sensitive": "★ sensitive", "significant-low": "★ below random"}


def _tcav_cell(r: ConceptFinding | None, random_in_cell: bool, accuracy_in_cell: bool) -> dict[str, Any]:
    """One finding as a grid cell: ``lines`` (printed one under the other) and a css class for its verdict."""
    if r is None:
        return {"lines": ["not computed"], "cls": "v-none"}
    if r.learned and r.score is not None:
        head = fmt_pm(r.score, r.score_std)
        if r.significant:
            head += " " + _TCAV_MARKS.get(r.verdict, f"★ {r.verdict}")
        lines = [head, f"p {fmt_p(r.p_value)} · adj. {fmt_p(r.p_adjusted)}"]
        other = _other_statistic(r)
        if other is not None:  # exchangeable: the statistic that did not decide, with its raw p
            lines.append(other)
    else:
        # Not learned: the CAV accuracy that says so is in the accuracy row (or the cell's last line).
        lines = [r.verdict if r.verdict == "not learned" else f"{r.verdict}: no score"]
    if random_in_cell:
        lines.append(f"random {fmt_pm(r.random_score_mean, r.random_score_std)}")
    if accuracy_in_cell:
        lines.append(f"CAV acc. {fmt_num(r.cav_accuracy)}")
    return {"lines": lines, "cls": f"v-{slug(r.verdict)}"}


def _tcav_grid(
    rows: Sequence[ConceptFinding], roles: Sequence[str], layers: Mapping[str, Sequence[str]],
    pairs: Sequence[tuple[str, str]], classes: Sequence[str], concepts: Sequence[str],
) -> tuple[list[dict[str, Any]], bool, bool]:
    """The findings grid of a TCAV section: blocks of (model, up to TCAV_GRID_COLUMNS layers).

    Returns (blocks, shared_random, shared_accuracy). The random-vs-random score depends on (model, layer, class)
    and the CAV accuracy on (model, layer, concept) — TCAV trains both once and reuses them — so each gets its own
    row. Should a results file disagree (different values across the repeats), the values go into every cell.
    """
    cell = {(r.model, r.layer, r.cls, r.concept): r for r in rows}
    pair_set = set(pairs)
    # The values seen for each (model, layer, class) and (model, layer, concept), and the first row that has them;
    # a row without the numbers (None) does not contradict the others.
    random_values: dict[tuple[str, str, str], set[tuple[Any, Any]]] = {}
    accuracy_values: dict[tuple[str, str, str], set[Any]] = {}
    random_of: dict[tuple[str, str, str], ConceptFinding] = {}
    accuracy_of: dict[tuple[str, str, str], ConceptFinding] = {}
    for r in rows:
        if r.random_score_mean is not None or r.random_score_std is not None:
            random_values.setdefault((r.model, r.layer, r.cls), set()).add((r.random_score_mean, r.random_score_std))
            random_of.setdefault((r.model, r.layer, r.cls), r)
        if r.cav_accuracy is not None:
            accuracy_values.setdefault((r.model, r.layer, r.concept), set()).add(r.cav_accuracy)
            accuracy_of.setdefault((r.model, r.layer, r.concept), r)
    shared_random = all(len(v) == 1 for v in random_values.values())
    shared_accuracy = all(len(v) == 1 for v in accuracy_values.values())
    blocks = []
    for role in roles:
        for start in range(0, max(len(layers[role]), 1), TCAV_GRID_COLUMNS):
            chunk = list(layers[role][start:start + TCAV_GRID_COLUMNS])
            grid_rows: list[dict[str, Any]] = []
            for cls in classes:
                for concept in concepts:
                    if (cls, concept) not in pair_set:
                        continue
                    grid_rows.append({
                        "kind": "finding", "class": cls, "concept": concept,
                        "first": not grid_rows or grid_rows[-1]["class"] != cls,
                        "cells": [_tcav_cell(cell.get((role, layer, cls, concept)), not shared_random,
                                             not shared_accuracy) for layer in chunk],
                    })
            if shared_random:
                cells = []
                for layer in chunk:
                    lines = []
                    for cls in classes:
                        r = random_of.get((role, layer, cls))
                        lines.append(f"{cls} {fmt_pm(r.random_score_mean, r.random_score_std) if r else '—'}")
                    cells.append({"lines": lines, "cls": ""})
                grid_rows.append({"kind": "random", "class": "", "concept": "", "first": True, "cells": cells})
            if shared_accuracy:
                # One row, a line per concept: as readable as a row per concept, with a third of the table cells.
                cells = []
                for layer in chunk:
                    lines = []
                    for concept in concepts:
                        r = accuracy_of.get((role, layer, concept))
                        value = "—" if r is None else fmt_num(r.cav_accuracy) + ("" if r.learned else " not learned")
                        lines.append(f"{concept} {value}")
                    cells.append({"lines": lines, "cls": ""})
                grid_rows.append({"kind": "accuracy", "class": "", "concept": "", "first": True, "cells": cells})
            blocks.append({"role": role, "first_layer": start + 1, "layers": chunk,
                           "more": start > 0, "rows": grid_rows})
    return blocks, shared_random, shared_accuracy
