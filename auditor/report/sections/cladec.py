"""The ClaDec section: reconstruction grids per layer depth (both models side by side, the same images), the
retention bars, the numbers table, what was tested, the limits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from auditor.report.figures import cladec as cladec_figures
from auditor.report.format import fmt_num, fmt_share, ordered
from auditor.report.loading import need, requirements
from auditor.report.types import FigureRef, Section, SectionContext
from auditor.results import CheckResult, typed_findings

LIMITS = (
    "A decoder shows what can be decoded from the layer: a lower bound on what the layer holds. A detail missing "
    "from a reconstruction may still be in the layer, in a form this decoder, trained this long on these images, "
    "did not learn to draw; a detail present is certainly there. The reference auto-encoder shows what a network "
    "of the same shape keeps when it is trained to keep everything, so the difference between the two is what "
    "the classifier's training chose to drop. Retention is measured on images with the artifact pasted, which may "
    "differ from where and how it appears in the wild; fidelity numbers are measured on the training images."
)

NOTES_TITLE = "ClaDec (decoding a layer back to an image)"
NOTES_TEXT = (
    "ClaDec (Schneider & Vlachos 2022) trains a decoder to reconstruct the input image from one frozen layer's "
    "activations, with the loss (1 − α) MSE + α cross-entropy of the frozen classifier on the reconstruction; "
    "what survives in the reconstruction is what the layer keeps. A reference auto-encoder (the classifier's "
    "architecture up to the same layer, freshly initialised, with the same decoder, trained on MSE alone) shows "
    "what that shape can keep. Artifact retention: the artifact pasted and a neutral patch on the same pixels, "
    "mean |difference of the two reconstructions| inside the artifact's box divided by the mean |difference of the "
    "two inputs| there (0: dropped, 1: kept whole). ONNX models train with α = 0 and have no reference "
    "auto-encoder unless a torch twin of the same network is given."
)

DECODER_NAMES = {"cladec": "ClaDec", "reference_ae": "reference AE"}


def _row_labels(pasted: Sequence[Any]) -> list[str]:
    out, n_clean, n_art = [], 0, 0
    for p in pasted:
        if p:
            n_art += 1
            out.append(f"artifact {n_art}")
        else:
            n_clean += 1
            out.append(f"image {n_clean}")
    return out


def _grids(check: CheckResult, ctx: SectionContext, roles: list[str], layers: Mapping[str, Sequence[str]],
           where: str) -> list[FigureRef]:
    """One grid per layer depth (the i-th layer of each model's list): original | per model AE, ClaDec."""
    grid = need(check.details, "grid", f"{where}: details")
    originals = [str(p) for p in need(grid, "originals", f"{where}: details.grid")]
    recon = need(grid, "recon", f"{where}: details.grid")
    labels = _row_labels(grid.get("pasted") or [False] * len(originals))
    figures = []
    for depth in range(max((len(v) for v in layers.values()), default=0)):
        at = [(role, layers[role][depth]) for role in roles if depth < len(layers[role])]
        columns = [cladec_figures.GridColumn("original", tuple(originals))]
        for role, layer in at:
            cell = need(need(recon, role, f"{where}: details.grid.recon"), layer, f"{where}: details.grid.recon.{role}")
            ae = cell.get("reference_ae")
            columns.append(cladec_figures.GridColumn(f"{role}\nreference AE",
                                                     tuple(ae) if ae else (None,) * len(originals)))
            columns.append(cladec_figures.GridColumn(f"{role}\nClaDec", tuple(need(cell, "cladec", where))))
        path, src = ctx.figure(f"cladec-grid-{depth + 1}.png")
        title = cladec_figures.grid_title(depth, at)
        ctx.draw(cladec_figures.reconstruction_grid, columns, labels, path, title=title)
        figures.append(FigureRef(
            src=src, alt=f"Reconstructions at layer depth {depth + 1}",
            caption=(f"{title}. Each row is one image: the original, then per model what its reference auto-encoder "
                     "and its ClaDec decoder reconstruct from that layer. What to look at: a detail (the pasted "
                     "artifact, a colour, a texture) present in the reference AE but gone in the ClaDec column is "
                     "something the classifier's layer dropped; present in ClaDec, the layer keeps it. Grey: no "
                     "reference auto-encoder for that model."),
        ))
    return figures


def _retention_figure(check: CheckResult, ctx: SectionContext, roles: list[str]) -> FigureRef | None:
    bars = [cladec_figures.RetentionBar(f.model, f.layer, f.decoder, f.retention) for f in typed_findings(check)]
    if all(b.retention is None for b in bars):
        return None
    bound = (check.details.get("settings") or {}).get("max_retention")
    path, src = ctx.figure("cladec-retention.svg")
    ctx.draw(cladec_figures.retention_bars, bars, roles, path, bound=bound)
    return FigureRef(
        src=src, alt="Artifact retention per model, layer and decoder",
        caption=("Artifact retention per model and layer: solid bars the ClaDec decoder, hatched bars the reference "
                 "auto-encoder. What to look at: a ClaDec bar near the hatched one means the classifier keeps the "
                 "artifact as much as a network trained to keep everything; near 0, the layer drops it."),
    )


def _table(check: CheckResult, roles: list[str]) -> list[dict[str, str]]:
    rows = sorted(typed_findings(check), key=lambda f: roles.index(f.model) if f.model in roles else len(roles))
    return [{"model": f.model, "layer": f.layer, "decoder": DECODER_NAMES.get(f.decoder, f.decoder),
             "mse": fmt_num(f.mse, 4), "top1": fmt_share(f.top1_agreement),
             "retention": fmt_num(f.retention)} for f in rows]


def _models(details: Mapping[str, Any], roles: list[str]) -> list[dict[str, str]]:
    out = []
    for role in roles:
        m = (details.get("models") or {}).get(role) or {}
        alpha = m.get("alpha")
        how = (f"α = {alpha:g}" if alpha is not None else "α unknown") + (
            f", classification term and reference AE through the torch twin {m['twin']}" if m.get("twin") else "")
        out.append({"role": role, "framework": str(m.get("framework", "")), "how": how,
                    "unavailable": str(m.get("reference_ae") or "")})
    return out


def cladec_section(check: CheckResult, ctx: SectionContext) -> Section:
    where = f"check {check.id!r} (cladec)"
    details = check.details
    settings = need(details, "settings", f"{where}: details")
    layers = need(details, "layers", f"{where}: details")
    roles = ordered(ctx.roles, list(layers))
    figures = _grids(check, ctx, roles, layers, where)
    retention = _retention_figure(check, ctx, roles)
    artifact = settings.get("artifact") or {}
    return Section(
        block="cladec", check=check, anchor=ctx.stem,
        figures=tuple(figures) + ((retention,) if retention else ()),
        data={
            "roles": roles,
            "layers": [{"role": r, "layers": ", ".join(layers[r])} for r in roles],
            "models": _models(details, roles),
            "n_images": settings.get("training_images"), "images": settings.get("images"),
            "epochs": settings.get("epochs"), "alpha": settings.get("alpha"),
            "artifact": artifact.get("image"), "n_pairs": settings.get("n_pairs"),
            "table": _table(check, roles),
            "requirements": requirements(details, where),
            "notes": [str(n) for n in details.get("notes") or []],
            "limits": LIMITS,
        },
    )
