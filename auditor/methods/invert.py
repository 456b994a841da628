"""INVERT (Bykov et al., NeurIPS 2023) and the spurious-correlation checks built on it — METHODS.md, INVERT.

Every unit of the audited layers (one scalar per probe image: spatial mean, or max) is explained by the
compositional formula over the probe set's concept labels whose AUC is highest (beam search on a seeded half of
the probe set); that formula's AUC and Mann-Whitney p are then measured on the other half, and Holm-corrected
across every unit of the check. A unit is *flagged* when its best formula uses a forbidden concept (watermark,
text, border...) with held-out AUC >= tau and adjusted p <= alpha. The logit-level probe (pasting the artifact vs
a neutral patch, auditor.methods.artifact) says whether a class *relies* on the artifact.

Flagged units are evidence that the model represents the spurious concept; the pasted probe is what shows the
output depends on it.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from auditor import data, memory
from auditor.context import Context, derive_seed
from auditor.labels import ProbeLabels, load_labels, missing_columns, summarise, validate_labels
from auditor.methods import artifact, stats
from auditor.methods.invert_search import (
    SearchSettings,
    UnitExplanation,
    default_min_fraction,
    evaluate,
    explain,
    split_halves,
)
from auditor.policy import Policy, check_layers
from auditor.methods.requirements import met_summary, requirement_line
from auditor.results import CheckResult, Status
from auditor.schemas.common import checked_rows
from auditor.schemas.invert import InvertCheck, InvertProbeFinding, InvertRequirement, UnitFinding

# Units listed as findings besides the flagged ones: held-out AUC above this (the rest go to the appendix table).
REPORT_AUC = 0.75
# Fewer labelled images cannot be split into a search and an evaluation half worth the name.
MIN_IMAGES = 20
# Flagged units per model with figure material (distribution, top images) in results.json; the table lists all.
EVIDENCE_UNITS = 6
HIST_BINS = 24
THUMBNAIL_SIDE = 64


# ---------------------------------------------------------------------------------------------------------------
# Validation during `prepare` (VALIDATORS["invert"])


def validate(
    check: InvertCheck, policy: Policy, pre: data.Preprocessing, where: str, problems: list[str], models: dict,
) -> list[data.ImageSet]:
    """Append one line per problem of the check's labels CSV, its forbidden concepts and the images it names.
    Returns the labels file and the probe images, for the provenance table."""
    artifact.validate(check, policy, pre, where, problems, models)  # the pasted artifact fits the images
    path = policy.resolve(check.labels)
    labels, found = validate_labels(path, f"{where}.labels", problems)
    if labels is None:
        return []
    problems.extend(missing_columns(labels, check.forbidden, f"{where}.forbidden", path))
    if not found and len(labels) < MIN_IMAGES:
        problems.append(f"{where}.labels: {path} lists {len(labels)} images; INVERT needs at least {MIN_IMAGES} "
                        "(half to search formulas, half to test them)")
    elif not found:
        n_search = math.ceil(len(labels) / 2)
        lo = default_min_fraction(n_search) if check.min_fraction is None else check.min_fraction
        if lo > check.max_fraction:
            problems.append(
                f"{where}: a formula must hold for at least {lo:.3g} of the {n_search} search images "
                f"(min_fraction{' default: 30 images' if check.min_fraction is None else ''}) and at most "
                f"max_fraction = {check.max_fraction:g}: no formula can; add probe images or lower min_fraction"
            )
    unreadable = []
    for row, image in zip(labels.rows, labels.images):
        try:
            with Image.open(image) as im:
                im.load()
        except Exception as e:  # PIL raises many types for broken files; each is the user's file
            unreadable.append(
                f"{where}.labels: {path}: row {row}: {image} is not a readable image ({type(e).__name__})"
            )
    problems.extend(summarise(unreadable))
    if found or unreadable:
        return []
    return [data.image_set(f"{check.id}:labels", [path], pre), data.image_set(f"{check.id}:probe", labels.images, pre)]


# ---------------------------------------------------------------------------------------------------------------
# Activations -> one scalar per unit


def reduce_units(acts: np.ndarray, how: str) -> np.ndarray:
    """(n, C, ...) activations -> (n, C) float64: the mean (or max) over every position of each unit.

    A block of images at a time (memory.row_blocks): the store may hand a memory-mapped array larger than memory,
    and a block of 256 images as float64 was 411 MB at a 1024 x 14 x 14 layer (issue 18).
    """
    if acts.ndim == 2:
        return np.asarray(acts, np.float64)
    out = np.empty(acts.shape[:2], np.float64)
    axes = tuple(range(2, acts.ndim))
    for start, block in memory.row_blocks(acts):
        block = block.astype(np.float64)
        out[start : start + len(block)] = block.mean(axis=axes) if how == "mean" else block.max(axis=axes)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Evidence for the report


def thumbnail(path: Path, pre: data.Preprocessing) -> str:
    """The image as the model saw it (resized), at most THUMBNAIL_SIDE px, as base64 PNG: the report draws
    from results.json alone, so the probe images need not exist when it is re-rendered."""
    rgb = data.read_rgb(path, pre.size)
    im = Image.fromarray(rgb, "RGB")
    if max(im.size) > THUMBNAIL_SIDE:
        scale = THUMBNAIL_SIDE / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def histogram(values: np.ndarray, mask: np.ndarray) -> dict:
    """Counts of a unit's held-out activations with and without the formula, over shared bins."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, HIST_BINS + 1)
    return {
        "edges": [round(float(e), 6) for e in edges],
        "with": [int(c) for c in np.histogram(values[mask], edges)[0]],
        "without": [int(c) for c in np.histogram(values[~mask], edges)[0]],
    }


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def evidence(
    acts: np.ndarray, unit: int, row: dict, labels: ProbeLabels, eval_rows: np.ndarray, mask_all: np.ndarray,
    top: int, pre: data.Preprocessing,
) -> dict:
    """Figure material of one unit: held-out distributions with vs without its formula, its top probe images."""
    x = acts[:, unit]
    order = np.argsort(-x, kind="stable")[:top]
    root = labels.source.parent
    return {
        "model": row["model"], "layer": row["layer"], "unit": row["unit"], "formula": row["formula"],
        "auc": row["auc"], "support": row["support"], "p_adjusted": row["p_adjusted"], "flagged": row["flagged"],
        "histogram": histogram(x[eval_rows], mask_all[eval_rows]),
        "top_images": [
            {
                "image": _relative(labels.images[i], root),
                "activation": round(float(x[i]), 6),
                "holds": bool(mask_all[i]),
                "png": thumbnail(labels.images[i], pre),
            }
            for i in order
        ],
    }


# ---------------------------------------------------------------------------------------------------------------
# The check


def _round(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(float(x), digits)


def _unit_row(
    role: str, layer: str, unit: int, e: UnitExplanation, names: tuple[str, ...], forbidden: list[str]
) -> dict:
    f = e.formula
    # Only a positive literal says the unit follows a forbidden concept; `NOT watermark` says the unit fires on
    # images without it (suppression), which is listed apart and fails no requirement.
    lits = [] if f is None else f.literals()
    used = sorted({names[c] for c, neg in lits if not neg} & set(forbidden))
    suppressed = sorted({names[c] for c, neg in lits if neg} & set(forbidden))
    return {
        "kind": "unit",
        "model": role,
        "layer": layer,
        "unit": int(unit),
        "formula": None if f is None else f.text,
        "length": 0 if f is None else f.length,
        "auc": _round(e.auc),
        "search_auc": _round(e.search_auc),
        "support": e.support,
        "fraction": _round(e.fraction),
        "search_support": e.search_support,
        "p_value": float(e.p_value),
        "p_adjusted": None,
        "direction": None if e.auc is None else (
            "higher with the formula" if e.auc >= 0.5 else "lower with the formula"
        ),
        "forbidden": used,
        "suppressed_by": suppressed,
        "flagged": False,
    }


def _probe(check: InvertCheck, ctx: Context, roles: list[str]) -> list[dict]:
    """The logit-level probe of auditor.methods.artifact, on the same clean images an artifact_probe check with
    this id would use."""
    assert check.artifact is not None
    spec = artifact.ProbeSpec(
        id=check.id, artifact=check.artifact, images=check.artifact_images, classes=list(check.classes),
        models=roles, images_per_class=check.images_per_class, threshold=check.threshold, direction=check.direction,
    )
    return [{"kind": "probe", **f} for f in artifact.probe_findings(spec, ctx)]


def _requirement(
    r: InvertRequirement, check: InvertCheck, roles: list[str], units: list[dict], probe: list[dict]
) -> list[dict]:
    """One requirement row per model it names (flagged units and reliant classes are counted per model)."""
    out = []
    who = roles if r.model == "all" else [r.model]
    for role in who:
        if r.max_flagged_units is not None:
            # The strongest few by held-out AUC name the problem; the section's table lists every one.
            bad = sorted((u for u in units if u["model"] == role and u["flagged"]), key=lambda u: -u["auc"])
            shown = ", ".join(f"{u['layer']} #{u['unit']} ({u['formula']}, AUC {u['auc']:.2f})" for u in bad[:3])
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            out.append({
                "text": f"{role}: at most {r.max_flagged_units} units explained by {', '.join(check.forbidden)} "
                        f"(held-out AUC >= {check.tau:g}, Holm-adjusted p <= {check.alpha:g})",
                "model": role,
                "met": len(bad) <= r.max_flagged_units,
                "why": f"{role}: {len(bad)} flagged unit{'s' if len(bad) != 1 else ''}"
                + (f": {shown}{more}" if bad else ""),
            })
        if r.max_reliant_classes is not None:
            bad = [f for f in probe if f["model"] == role and f["reliant"]]
            band = f"AUC > {check.threshold:g}"
            if check.direction == "both":
                band += f" or < {1 - check.threshold:g}"
            out.append({
                "text": f"{role}: at most {r.max_reliant_classes} classes may rely on the pasted artifact ({band})",
                "model": role,
                "met": len(bad) <= r.max_reliant_classes,
                "why": f"{role}: "
                + (", ".join(f"{f['class']} ({f['effect']}, AUC {f['auc']:.2f})" for f in bad) or "no class")
                + (" relies on the artifact" if len(bad) <= 1 else " rely on the artifact"),
            })
    return out


@dataclass(frozen=True)
class Explained:
    """Every unit of the check explained: its rows (p_adjusted and flags still unset), the reduced activations and
    the explanations per (model, layer)."""

    units: list[dict]
    reduced: dict[tuple[str, str], np.ndarray]
    explanations: dict[tuple[str, str], list[UnitExplanation]]


def _explain_units(check: InvertCheck, ctx: Context, labels: ProbeLabels, layers_by_model: dict[str, list[str]],
                   search_rows: np.ndarray, eval_rows: np.ndarray, settings: SearchSettings) -> Explained:
    probe_set = data.image_set(f"probe:{check.id}", labels.images, ctx.pre)
    names = labels.concepts
    out = Explained([], {}, {})
    for role, layers in layers_by_model.items():
        acts = ctx.store.acts(ctx.models[role], layers, probe_set)  # every layer in one forward pass
        for layer in layers:
            a = reduce_units(acts[layer], check.reduce)
            ctx.log(f"invert {check.id}: {role} {layer}: {a.shape[1]} units x {len(names)} concepts x {len(labels)} "
                    "images")
            explained = explain(a, labels.matrix, names, search_rows, eval_rows, settings)
            out.units.extend(_unit_row(role, layer, u, e, names, check.forbidden) for u, e in enumerate(explained))
            out.reduced[(role, layer)] = a
            out.explanations[(role, layer)] = explained
    return out


def _flag(units: list[dict], check: InvertCheck) -> None:
    """Holm over every unit of the check (each unit's best formula is one test on the held-out half), then the
    flags, in place."""
    adjusted = stats.holm(np.array([u["p_value"] for u in units]))
    for u, p in zip(units, adjusted):
        u["p_adjusted"] = float(p)
        u["flagged"] = bool(
            u["forbidden"] and u["auc"] is not None and u["auc"] >= check.tau and p <= check.alpha
        )


def _evidence(check: InvertCheck, ctx: Context, roles: list[str], ex: Explained, labels: ProbeLabels,
              eval_rows: np.ndarray) -> list[dict]:
    """Figure material for the flagged units (best first), a few per model."""
    evid = []
    for role in roles:
        flagged = sorted((u for u in ex.units if u["model"] == role and u["flagged"]), key=lambda u: -u["auc"])
        for u in flagged[:EVIDENCE_UNITS]:
            formula = ex.explanations[(role, u["layer"])][u["unit"]].formula
            mask = evaluate(formula, labels.matrix)  # over the whole probe set
            evid.append(evidence(ex.reduced[(role, u["layer"])], u["unit"], u, labels, eval_rows, mask,
                                 check.top_images, ctx.pre))
    return evid


def _suppressed_note(check: InvertCheck, units: list[dict]) -> list[str]:
    """Units a forbidden concept *suppresses* (it appears negated in their formula): listed apart, never flagged."""
    suppressed = [
        u for u in units
        if u["suppressed_by"] and not u["flagged"] and u["auc"] is not None and u["auc"] >= check.tau
        and u["p_adjusted"] <= check.alpha
    ]
    if not suppressed:
        return []
    shown = ", ".join(f"{u['model']} {u['layer']} #{u['unit']} ({u['formula']})" for u in suppressed[:5])
    more = f" and {len(suppressed) - 5} more" if len(suppressed) > 5 else ""
    return [f"Suppressed by a forbidden concept (it appears negated in the formula: the unit fires on images without "
            f"it; not flagged, no requirement counts them): {shown}{more}."]


def _forbidden_notes(check: InvertCheck, labels: ProbeLabels, search_rows: np.ndarray, lo: float,
                     hi: float) -> tuple[list[str], list[str]]:
    """(forbidden concepts no unit can follow, notes on them and on those only a combination can enter)."""
    weak, notes = [], []
    names, n = labels.concepts, len(labels)
    search_labels = labels.matrix[search_rows]
    for c in check.forbidden:
        count = int(search_labels[:, names.index(c)].sum())
        total = int(labels.column(c).sum())
        if total == 0 or total == n:
            weak.append(c)
            notes.append(f"The forbidden concept {c} is {'absent from' if total == 0 else 'present in'} every probe "
                         "image: no unit can be explained by it, so the unit check cannot see it.")
        elif not (lo <= count / len(search_rows) <= hi) and not (lo <= 1 - count / len(search_rows) <= hi):
            notes.append(f"The forbidden concept {c} holds for {count} of {len(search_rows)} search images, outside "
                         f"the fraction bounds [{lo:.3g}, {hi:.3g}]: it can enter a formula only combined with "
                         "another concept.")
    return weak, notes


def _summary(reqs: list[dict], units: list[dict], probe: list[dict], roles: list[str]) -> str:
    if reqs:
        return met_summary(reqs)
    flagged_all = [u for u in units if u["flagged"]]
    per = ", ".join(f"{r}: {sum(1 for u in flagged_all if u['model'] == r)}" for r in roles)
    summary = f"flagged units ({per})"
    if probe:
        reliant = [f"{f['model']}/{f['class']}" for f in probe if f["reliant"]]
        summary += "; reliant classes: " + (", ".join(reliant) or "none")
    return summary


APPENDIX_COLUMNS = ["model", "layer", "unit", "formula", "length", "auc", "search_auc", "support", "p_adjusted",
                    "flagged"]


def _settings(check: InvertCheck, labels: ProbeLabels, search_rows: np.ndarray, eval_rows: np.ndarray, lo: float,
              hi: float, family: int, probe: list[dict]) -> dict:
    return {
        "labels": check.labels,
        "concepts": list(labels.concepts),
        "forbidden": list(check.forbidden),
        "n_images": len(labels),
        "n_search": int(len(search_rows)),
        "n_eval": int(len(eval_rows)),
        "reduce": check.reduce,
        "formula_length": check.formula_length,
        "beam": check.beam,
        "min_fraction": lo,
        "min_fraction_default": check.min_fraction is None,
        "max_fraction": hi,
        "limit_search": check.limit_search,
        "tau": check.tau,
        "alpha": check.alpha,
        "report_auc": REPORT_AUC,
        "test": "two-sided Mann-Whitney U (normal approximation, tie and continuity correction) of the unit's "
                f"activations with vs without its formula on the held-out half, Holm-adjusted over {family} "
                "units (every unit of the check)",
        "family_size": family,
        "artifact": None if check.artifact is None else check.artifact.model_dump(),
        "threshold": check.threshold,
        "direction": check.direction,
        "n_pairs": probe[0]["n_pairs"] if probe else None,
    }


def run(check: InvertCheck, ctx: Context) -> CheckResult:
    seed = derive_seed(ctx.policy.seed, check.id)
    labels = load_labels(ctx.policy.resolve(check.labels))
    search_rows, eval_rows = split_halves(len(labels), derive_seed(seed, "split"))
    settings = SearchSettings(
        length=check.formula_length, beam=check.beam, min_fraction=check.min_fraction,
        max_fraction=check.max_fraction, limit_search=check.limit_search,
    )
    lo, hi = settings.bounds(len(search_rows))
    layers_by_model = check_layers(ctx.policy, check)
    roles = list(layers_by_model)
    ex = _explain_units(check, ctx, labels, layers_by_model, search_rows, eval_rows, settings)
    units = ex.units
    _flag(units, check)
    evid = _evidence(check, ctx, roles, ex, labels, eval_rows)
    probe = _probe(check, ctx, roles) if check.artifact is not None else []
    reqs = [q for r in check.require for q in _requirement(r, check, roles, units, probe)]
    weak, forbidden_notes = _forbidden_notes(check, labels, search_rows, lo, hi)
    notes = _suppressed_note(check, units) + forbidden_notes
    if any(not q["met"] for q in reqs):
        status = Status.FAIL
    elif weak:
        status = Status.WARN
    else:
        status = Status.PASS
    listed = [u for u in units if u["flagged"] or (u["auc"] is not None and u["auc"] > REPORT_AUC)]
    findings = checked_rows(UnitFinding, listed) + checked_rows(InvertProbeFinding, probe)
    details = {
        "settings": _settings(check, labels, search_rows, eval_rows, lo, hi, len(units), probe),
        "layers": layers_by_model,
        "units": {"columns": list(APPENDIX_COLUMNS), "rows": [[u[c] for c in APPENDIX_COLUMNS] for u in units]},
        "evidence": evid,
        "requirements": reqs,
        "notes": notes,
    }
    return CheckResult(
        id=check.id, method="invert", status=status, severity=check.severity,
        summary=_summary(reqs, units, probe, roles), requirement=requirement_line(reqs), findings=findings,
        details=details,
    )
