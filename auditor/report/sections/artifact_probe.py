"""The artifact probe section: AUC bars per class and model against the reliance band, requirements, table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from auditor.report.figures import artifact_probe as probe_figures
from auditor.report.figures.common import shorten
from auditor.report.format import fmt_num, fmt_share, fmt_value, ordered, placement_words
from auditor.report.loading import need, requirements
from auditor.report.sections.generic import generic_section
from auditor.report.types import FigureRef, Section, SectionContext
from auditor.results import CheckResult, typed_findings
from auditor.schemas.artifact_probe import ProbeFinding

PROBE_LIMITS_NOTE = (
    "The probe measures what pasting the artifact does to each class logit, against a neutral patch on the same "
    "pixels. It depends on where and how the artifact is pasted: an artifact the model learned at one position "
    "may have no effect elsewhere. It says nothing about concepts that cannot be pasted."
)

# The appendix's method notes: how the probe works, said once for the whole report.
NOTES_TITLE = "Artifact probe"
NOTES_TEXT = (
    "Each clean image is shown to each model twice: once with the artifact pasted on it, once with a neutral "
    "patch (the image's own mean colour) over exactly the same pixels. For each class logit, the AUC is the "
    "probability that the logit is higher with the artifact than with the neutral patch, over all pairs "
    "(0.5: no effect; ties count half). A class relies on the artifact when its AUC is beyond the policy's "
    "threshold; the mean logit shift and the share of predictions flipped to the class say how large the "
    "effect is."
)


def _auc(r: ProbeFinding) -> float | None:
    return None if r.auc is None else float(r.auc)


MAX_PROBE_FIGURE_CLASSES = 30


def _probe_table(rows: Sequence[ProbeFinding], classes: Sequence[str], roles: Sequence[str]) -> list[dict[str, Any]]:
    """The findings table of the probe section: a row per class, a cell per model."""
    # A row per class, a column group per model: the reviewer reads the candidate and the reference side by side,
    # and the table has a third of the cells of a row per (model, class).
    common_pairs = {r.n_pairs for r in rows}
    by_key = {(r.model, r.cls): r for r in rows}
    table = []
    for cls in classes:
        cells = []
        for role in roles:
            r = by_key.get((role, cls))
            if r is None:
                cells.append({"auc": ["not computed"], "reliant": False, "shift": "—", "flipped_to": "—"})
                continue
            auc = [fmt_num(_auc(r))]
            if r.reliant:
                auc.append(f"reliant · {r.effect or '—'}")
            if len(common_pairs) > 1:
                auc.append(f"{fmt_value(r.n_pairs)} pairs")
            cells.append({"auc": auc, "reliant": bool(r.reliant), "shift": fmt_num(r.mean_logit_shift),
                          "flipped_to": fmt_share(r.flipped_to_class)})
        table.append({"class": cls, "cells": cells})
    return table


def _figure_classes(rows: Sequence[ProbeFinding], classes: Sequence[str]) -> list[str]:
    """The classes the figure shows: all, or the MAX_PROBE_FIGURE_CLASSES the artifact moves most."""
    shown = list(classes)
    if len(classes) > MAX_PROBE_FIGURE_CLASSES:
        def strength(cls: str) -> tuple[bool, float]:
            mine = [r for r in rows if r.cls == cls]
            return (any(r.reliant for r in mine), max((abs(float(r.auc) - 0.5) for r in mine if r.auc is not None),
                                                      default=0.0))
        keep = set(sorted(classes, key=strength, reverse=True)[:MAX_PROBE_FIGURE_CLASSES])
        shown = [c for c in classes if c in keep]
    return shown


def _changed(rows: Sequence[ProbeFinding], roles: Sequence[str]) -> list[tuple[str, str]]:
    """(model, share of predictions the artifact changed) for the models that report it."""
    changed = []
    for role in roles:
        shares = [r.prediction_changed for r in rows if r.model == role and r.prediction_changed is not None]
        if shares:
            changed.append((role, fmt_share(shares[0])))
    return changed


def artifact_probe_section(check: CheckResult, ctx: SectionContext) -> Section:
    """Artifact probe: AUC bars per class and model against the reliance band, requirements, findings table."""
    where = f"check {check.id!r} (artifact_probe)"
    details = check.details
    settings = need(details, "settings", f"{where}: details")
    for key in ("artifact", "threshold", "direction"):
        need(settings, key, f"{where}: details.settings")
    artifact = need(settings, "artifact", f"{where}: details.settings")
    image = str(need(artifact, "image", f"{where}: details.settings.artifact"))
    threshold = float(settings["threshold"])
    direction = str(settings["direction"])
    rows = typed_findings(check)
    if not rows:
        return generic_section(check, ctx)

    roles = ordered(ctx.roles, [str(r.model) for r in rows])
    classes = list(dict.fromkeys(str(r.cls) for r in rows))
    band = f"above {threshold:g}" + (f" or below {1 - threshold:g}" if direction == "both" else "")

    # Many classes (an ImageNet model tests 1000) would not fit one figure: it shows the classes the artifact
    # moves most (reliant ones first), in their original order; the table lists every class.
    shown = _figure_classes(rows, classes)
    path, src = ctx.figure("probe-auc.svg")
    title = f"Artifact {shorten(image, 80)}"
    ctx.draw_sized(
        probe_figures.artifact_auc_size(shown, roles, threshold=threshold, direction=direction, title=title),
        probe_figures.artifact_auc,
        [probe_figures.AucBar(model=str(r.model), cls=str(r.cls), auc=_auc(r), reliant=bool(r.reliant))
         for r in rows if r.cls in shown],
        shown, roles, path, threshold=threshold, direction=direction, title=title,
    )
    subset = (
        f" The figure shows the {len(shown)} of {len(classes)} classes the artifact moves most (every reliant "
        "class first); the table lists all of them."
        if len(shown) < len(classes) else ""
    )
    fig = FigureRef(
        src=src,
        alt="AUC of each class logit, artifact versus neutral patch, per model",
        caption=(
            "AUC of each class logit, artifact versus neutral patch, one bar per model drawn from 0.5. "
            f"What to look at: bars that end in a shaded band (AUC {band}) are classes whose logit moves with "
            "the artifact; those classes rely on it (heavy outline, bold value). "
            + ("To the left the artifact lowers the logit, to the right it raises it. " if direction == "both"
               else "Only raising counts as reliance here (direction: raise); bars to the left show the artifact "
                    "lowering the logit. ")
            + "An AUC of 0.5 means the artifact does nothing beyond what a neutral patch of the same shape does."
            + subset
        ),
    )

    table = _probe_table(rows, classes, roles)
    changed = _changed(rows, roles)
    n_pairs = settings.get("n_pairs")
    if n_pairs is None:
        n_pairs = next((r.n_pairs for r in rows if r.n_pairs is not None), None)

    return Section(
        block="artifact_probe",
        check=check,
        anchor=ctx.stem,
        figures=(fig,),
        data={
            "artifact": image,
            "placement": placement_words(artifact),
            "n_pairs": fmt_value(n_pairs),
            "threshold": f"{threshold:g}",
            "low": f"{1 - threshold:g}",
            "direction": direction,
            "test": str(settings.get("test") or ""),
            "classes": classes,
            "roles": roles,
            "table": table,
            "changed": changed,
            "requirements": requirements(details, where),
            # The audit's standard note restates the method, which "What was tested and why" already explains.
            "notes": [str(n) for n in details.get("notes") or []],
            "limits": PROBE_LIMITS_NOTE,
        },
    )
