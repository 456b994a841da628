"""RSVC (Kondapaneni, Mac Aodha, Perona, ICLR 2025): which concepts two models share, and which one has alone.

Per class of the check and per model's concept layer (METHODS.md, RSVC):

1. images that either model predicts as the class, split (seeded) into extraction and evaluation images; each cut
   into patches resized to the input size; one row per patch = the layer's spatial mean (through the store);
2. K concepts per model by NMF on its extraction patches; coefficients on the evaluation patches by NNLS with the
   concepts fixed;
3. similarity of model 1's concept j = held-out Pearson between its coefficients and their Lasso prediction from
   model 2's activations (5-fold over images, standardised with training-fold statistics); both directions and
   the self baselines (a model predicting its own concepts) as ceilings;
4. importance = integrated gradients of -CE (log p of the class) w.r.t. the coefficients through the model's head,
   the reconstruction u W placed at every position of the layer; torch by autograd, ONNX by finite differences;
5. a concept is unique when its similarity < tau_sim and important when its normalised importance > tau_imp.

Every layer the check lists also gets concepts of its own; their coefficients give the layerwise mean-max
similarity matrix (details["layerwise"]).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from auditor import data, memory, threads
from auditor.context import Context, derive_seed
from auditor.errors import CheckError
from auditor.methods import rsvc_core as core
from auditor.methods import rsvc_labels
from auditor.methods.rsvc_grad import GradStats, concept_gradient, head_agreement, needs_images  # noqa: F401
from auditor.methods.rsvc_reported import reported_text
from auditor.models.base import Model
from auditor.policy import check_layers
from auditor.methods.requirements import met_summary, requirement_line
from auditor.results import CheckResult, Status
from auditor.schemas.common import checked_rows
from auditor.schemas.rsvc import RsvcCheck, RsvcFinding, RsvcRequirement
from auditor.methods.rsvc_images import (  # noqa: F401  (Pool, Split, split_images: rsvc's public names)
    Clock, Pool, _pool, images_root, layer_where, negative_beyond_rounding, negative_message, split_images,
)

COLLAGE = 9  # patches per collage (3 x 3)
GALLERY = 6  # top patches per concept in the concept gallery
SCATTER_DIGITS = 4


# ------------------------------------------------------------------------------------------------ patches


@dataclass
class PatchSet:
    """Patches of one image set (image-major: patch r is crop r % P of image r // P), shared by both models.

    Models see them a chunk at a time through the store (`rows`: only the chunk's images are decoded and cut);
    the whole set is made only for a head that reads the images (`patches`). At the defaults (100 images, 16 crops
    of 224 px each) the whole set is 960 MB (issue 18)."""

    images: data.ImageSet
    grid: core.PatchGrid
    size: tuple[int, int]
    pre: data.Preprocessing
    clock: Clock
    _patches: np.ndarray | None = None

    @property
    def fingerprint(self) -> str:
        # The source images' content fingerprint and every parameter that shapes the patches.
        spec = [self.images.fingerprint, "rsvc-patches-v1", [list(b) for b in self.grid.boxes], list(self.size),
                "bilinear"]
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.images) * len(self.grid)

    def rows(self, s: slice) -> np.ndarray:
        """Patches `s` (a slice of the image-major order), from the images they come from."""
        if self._patches is not None:
            return self._patches[s]
        t = time.perf_counter()
        start, stop, _ = s.indices(len(self))
        p = len(self.grid)
        first = start // p
        images = data.load(self.images, self.pre, slice(first, -(-stop // p)))
        out = core.cut_patches(images, self.grid, self.size)[start - first * p : stop - first * p]
        self.clock.add("patches", t)
        return out

    def patches(self) -> np.ndarray:
        if self._patches is None:
            self._patches = self.rows(slice(None))
        return self._patches


@dataclass(frozen=True)
class TimedModel:
    """A model whose forward passes (`activations`) are timed: the cost floor the check reports. Everything else
    the store reads from it (`sha256`, `name`) is the model's own, so cache keys are unchanged."""

    model: Model
    clock: Clock

    @property
    def sha256(self) -> str:
        return self.model.sha256

    @property
    def name(self) -> str:
        return self.model.name

    def activations(self, x: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]:
        t = time.perf_counter()
        out = self.model.activations(x, layers)
        self.clock.add("forward", t)
        return out


def _means(
    ctx: Context, check: RsvcCheck, role: str, layers: list[str], ps: PatchSet, clock: Clock, shapes: dict
) -> dict[str, np.ndarray]:
    """{layer: (n_patches, C)} spatial means of every layer, all layers in one pass through the store."""
    t = time.perf_counter()
    acts = ctx.store.made_acts(TimedModel(ctx.models[role], clock), layers, f"rsvc patches of {ps.images.name}",
                               ps.fingerprint, len(ps), ps.rows)
    clock.add("store", t)
    out = {}
    for layer in layers:
        a = np.asarray(acts[layer])
        shapes[(role, layer)] = tuple(a.shape[1:])
        means, low, high = [], 0.0, 0.0
        for _, block in memory.row_blocks(a):  # a block of patches at a time: the layer's map is on disk
            low, high = min(low, float(block.min(initial=0.0))), max(high, float(np.abs(block).max(initial=0.0)))
            means.append(core.spatial_mean(block))
        # `validate` tests the sign on a few whole images; a patch can still find a negative value.
        if negative_beyond_rounding(low, high):
            raise CheckError(negative_message(layer_where(check, ctx.policy, role), layer, role, low))
        out[layer] = np.maximum(np.concatenate(means), 0.0)
    return out


# ------------------------------------------------------------------------------------------------ thumbnails


def _thumb(rgb: np.ndarray, box: tuple[int, int, int, int]) -> str:
    t, l, h, w = box
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb[t : t + h, l : l + w])).save(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class Thumbs:
    """Patch thumbnails (PNG, base64) of the evaluation images, decoded once per image."""

    paths: tuple[Path, ...]
    labels: tuple[str, ...]
    grid: core.PatchGrid
    size: tuple[int, int]
    _rgb: dict[int, np.ndarray] = field(default_factory=dict)

    def patch(self, row: int, value: float, predicted: float | None = None) -> dict:
        img, p = divmod(int(row), len(self.grid))
        if img not in self._rgb:
            self._rgb[img] = data.read_rgb(self.paths[img], self.size)
        box = self.grid.boxes[p]
        out = {"image": self.labels[img], "box": list(box), "value": round(float(value), 6),
               "png": _thumb(self._rgb[img], box)}
        if predicted is not None:
            out["predicted"] = round(float(predicted), 6)
        return out


# ------------------------------------------------------------------------------------------------ one class


@dataclass(frozen=True)
class ModelConcepts:
    """One model's concepts at one layer for one class."""

    concepts: core.Concepts  # fitted on the extraction patches
    U_eval: np.ndarray  # (n_eval_patches, K) NNLS coefficients, W fixed
    eval_error: float  # ||A - U W|| / ||A|| on the evaluation patches


def _fit(A_ext: np.ndarray, A_eval: np.ndarray, k: int, seed: int, clock: Clock) -> ModelConcepts:
    t = time.perf_counter()
    c = core.nmf_concepts(A_ext, k, seed)
    clock.add("nmf", t)
    t = time.perf_counter()
    U = core.nnls_coefficients(A_eval, c.W)
    clock.add("nnls", t)
    return ModelConcepts(concepts=c, U_eval=U, eval_error=core.reconstruction_error(A_eval, U, c.W))


def _round(x: float) -> float:
    return round(float(x), 6)


def _fit_layers(
    check: RsvcCheck, cls: str, roles: list[str], layers: dict[str, list[str]], A_ext: dict, A_ev: dict, seed: int,
    clock: Clock, notes: list[str],
) -> dict[tuple[str, str], ModelConcepts]:
    """The NMF concepts of every (model, layer) of one class, with a note where NMF stopped early or found fewer."""
    fitted = {
        (r, layer): _fit(A_ext[r][layer], A_ev[r][layer], check.concepts, derive_seed(seed, "nmf", cls, r, layer), clock)
        for r in roles for layer in layers[r]
    }
    stopped = [f"{r} {layer}" for (r, layer), f in fitted.items() if not f.concepts.converged]
    if stopped:
        notes.append(f"class {cls}: NMF reached its iteration limit ({core.NMF_MAX_ITER}) before its tolerance for "
                     f"{len(stopped)} of {len(fitted)} layers ({', '.join(stopped)}); those concepts are used as they stand")
    for (r, layer), f in fitted.items():
        if f.concepts.W.shape[0] < check.concepts:
            notes.append(f"class {cls}, {r} {layer}: only {f.concepts.W.shape[0]} concepts (fewer patches or channels than K)")
    return fitted


def _importance(
    check: RsvcCheck, ctx: Context, cls: str, roles: list[str], concept_layer: dict[str, str], fitted: dict,
    U: dict[str, np.ndarray], shapes: dict, A_ev: dict, ev: PatchSet, target: int, notes: list[str],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, dict]]:
    """(normalised importance, raw integrated gradients, head agreement) of each model's concepts of one class."""
    importance: dict[str, np.ndarray] = {}
    raw: dict[str, np.ndarray] = {}
    model_info: dict[str, dict] = {}
    for r in roles:
        layer = concept_layer[r]
        W = fitted[(r, layer)].concepts.W
        scale = float(np.median(np.linalg.norm(U[r] @ W, axis=1)))
        stats = GradStats()
        # The patches themselves only for a head that reads the images (a skip path around the concept layer).
        patches_ev = ev.patches() if needs_images(ctx.models[r].head(layer)) else None
        grad = concept_gradient(ctx.models[r], layer, W, shapes[(r, layer)], patches_ev, target, scale, stats)
        ig = core.integrated_gradients(U[r], grad, check.ig_steps).mean(axis=0)
        peak = float(np.abs(ig).max(initial=0.0))
        raw[r] = ig
        importance[r] = ig / peak if peak > 0 else np.zeros_like(ig)
        full = ctx.store.made_acts(ctx.models[r], [layer], "", ev.fingerprint, len(ev), ev.rows)[layer]
        model_info[r] = {"head": head_agreement(ctx.models[r], layer, np.asarray(full), A_ev[r][layer], patches_ev, target),
                         "head_rows": stats.head_rows}
    return importance, raw, model_info


def _model_concepts(
    check: RsvcCheck, cls: str, r: str, other: str, concept_layer: dict[str, str], f: ModelConcepts, cv: dict,
    importance: dict, raw: dict, U: dict, model_info: dict, thumbs: Thumbs, image_of_row: np.ndarray,
) -> tuple[list[dict], dict]:
    """(findings, the model's detail: gallery, collages, errors) of model r's concepts of one class."""
    layer = concept_layer[r]
    sim = cv[(other, r)].similarity
    self_sim = cv[(r, r)].similarity
    pred = cv[(other, r)].predicted
    findings, concepts = [], []
    for j in range(f.concepts.W.shape[0]):
        unique = bool(sim[j] < check.tau_sim)
        important = bool(importance[r][j] > check.tau_imp)
        findings.append({
            "model": r, "other": other, "layer": layer, "other_layer": concept_layer[other], "class": cls,
            "concept": j, "similarity": _round(sim[j]), "self_similarity": _round(self_sim[j]),
            "importance": _round(importance[r][j]), "importance_raw": _round(raw[r][j]),
            "unique": unique, "important": important,
        })
        top = core.one_per_image(np.argsort(-U[r][:, j], kind="stable"), image_of_row, GALLERY)
        entry = {"concept": j, "top": [thumbs.patch(row, U[r][row, j]) for row in top]}
        if unique:
            col = core.collage_rows(U[r][:, j], pred[:, j], image_of_row, COLLAGE)
            entry["collages"] = {
                "top": [thumbs.patch(row, U[r][row, j], pred[row, j]) for row in col.top],
                "over": [thumbs.patch(row, U[r][row, j], pred[row, j]) for row in col.over],
                "under": [thumbs.patch(row, U[r][row, j], pred[row, j]) for row in col.under],
                "real": [round(float(v), SCATTER_DIGITS) for v in U[r][:, j]],
                "predicted": [round(float(v), SCATTER_DIGITS) for v in pred[:, j]],
            }
        concepts.append(entry)
    detail = {
        "other": other, "layer": layer,
        "concepts": concepts,
        "nmf_error_extraction": _round(f.concepts.relative_error),
        "nnls_error_evaluation": _round(f.eval_error),
        "mean_similarity": _round(sim.mean()),
        "mean_self_similarity": _round(self_sim.mean()),
        "head_top1_agreement": _round(model_info[r]["head"]["top1_agreement"]),
        "head_mean_abs_logp_diff": _round(model_info[r]["head"]["mean_abs_logp_diff"]),
    }
    return findings, detail


def _layerwise(fitted: dict, layers: dict[str, list[str]], r1: str, r2: str) -> dict:
    """Every listed layer of model 1 against every listed layer of model 2: mean max correlation of concepts."""
    matrix = [[_round(core.mean_max_similarity(core.pearson_matrix(fitted[(r1, a)].U_eval, fitted[(r2, b)].U_eval)))
               for b in layers[r2]] for a in layers[r1]]
    return {"rows": {"model": r1, "layers": list(layers[r1])}, "columns": {"model": r2, "layers": list(layers[r2])},
            "mmcs": matrix}


def _class_result(
    check: RsvcCheck, ctx: Context, cls: str, roles: list[str], layers: dict[str, list[str]], pool: Pool,
    seed: int, clock: Clock, notes: list[str],
) -> tuple[list[dict], dict, dict | None]:
    """(findings, details of the class, layerwise matrix or None) for one class."""
    names = ctx.policy.data.classes.names
    target = names.index(cls)
    r1, r2 = roles
    chosen = np.flatnonzero((pool.predicted[r1] == target) | (pool.predicted[r2] == target))
    split = split_images(chosen, check.extraction_images, check.evaluation_images, derive_seed(seed, "split", cls))
    info: dict = {"candidates": int(split.candidates), "extraction_images": int(len(split.extraction)),
                  "evaluation_images": int(len(split.evaluation)), "skipped": None}
    if split.note:
        notes.append(f"class {cls}: {split.note}")
    grid = core.patch_grid(ctx.pre.size, check.patch, check.stride)
    n_ext_patches = len(split.extraction) * len(grid)
    if len(split.evaluation) < check.folds or len(split.extraction) < 1 or n_ext_patches < check.concepts:
        info["skipped"] = (
            f"too few images: {split.candidates} predicted as {cls} by either model; RSVC needs at least "
            f"{check.folds} evaluation images (one per fold) and {check.concepts} extraction patches"
        )
        return [], info, None

    def image_set(rows: np.ndarray, part: str) -> data.ImageSet:
        return data.image_set(f"rsvc:{check.id}:{cls}:{part}", [pool.paths[i] for i in rows], ctx.pre)

    ext = PatchSet(image_set(split.extraction, "extraction"), grid, ctx.pre.size, ctx.pre, clock)
    ev = PatchSet(image_set(split.evaluation, "evaluation"), grid, ctx.pre.size, ctx.pre, clock)
    shapes: dict = {}
    A_ext = {r: _means(ctx, check, r, layers[r], ext, clock, shapes) for r in roles}
    A_ev = {r: _means(ctx, check, r, layers[r], ev, clock, shapes) for r in roles}
    fitted = _fit_layers(check, cls, roles, layers, A_ext, A_ev, seed, clock, notes)

    # Regression on the concept layers, both directions and the self baselines.
    n_img = len(split.evaluation)
    image_of_row = np.repeat(np.arange(n_img), len(grid))
    fold_of_row = core.image_folds(n_img, check.folds, derive_seed(seed, "folds", cls))[image_of_row]
    concept_layer = {r: layers[r][-1] for r in roles}
    X = {r: A_ev[r][concept_layer[r]] for r in roles}
    U = {r: fitted[(r, concept_layer[r])].U_eval for r in roles}
    t = time.perf_counter()
    cv = {
        (src, dst): core.cross_validated_similarity(X[src], U[dst], fold_of_row, check.lasso_alpha)
        for dst in roles for src in roles
    }
    clock.add("regression", t)
    if not all(v.converged for v in cv.values()):
        notes.append(f"class {cls}: some Lasso fits stopped at their iteration limit")

    # Importance through each model's head.
    t = time.perf_counter()
    importance, raw, model_info = _importance(check, ctx, cls, roles, concept_layer, fitted, U, shapes, A_ev, ev,
                                              target, notes)
    clock.add("importance", t)

    # Findings, collages and the concept gallery.
    t = time.perf_counter()
    thumbs = Thumbs(tuple(pool.paths[i] for i in split.evaluation), tuple(pool.labels[i] for i in split.evaluation),
                    grid, ctx.pre.size)
    findings = []
    models_detail = {}
    for r in roles:
        other = r2 if r == r1 else r1
        rows, models_detail[r] = _model_concepts(check, cls, r, other, concept_layer, fitted[(r, concept_layer[r])], cv,
                                                 importance, raw, U, model_info, thumbs, image_of_row)
        findings += rows
    info["models"] = models_detail
    clock.add("collages", t)
    # Which images, in row order (evaluation patch row r is patch r % P of image r // P).
    info["extraction"] = [pool.labels[i] for i in split.extraction]
    info["evaluation"] = [pool.labels[i] for i in split.evaluation]
    info["patches_per_image"] = len(grid)
    info["evaluation_patches"] = int(len(image_of_row))

    # Layerwise: every listed layer of model 1 against every listed layer of model 2.
    t = time.perf_counter()
    layerwise = _layerwise(fitted, layers, r1, r2)
    clock.add("layerwise", t)
    return findings, info, layerwise


# ------------------------------------------------------------------------------------------------ verdict


def requirement_text(r: RsvcRequirement, roles: list[str], tau_sim: float, tau_imp: float) -> str:
    who = " and ".join(roles) if r.model == "all" else r.model
    parts = []
    if r.max_unique_important is not None:
        parts.append(
            f"at most {r.max_unique_important} important concept{'s' if r.max_unique_important != 1 else ''} of "
            f"{who} (importance > {tau_imp:g}) missing from the other model (similarity < {tau_sim:g})"
        )
    if r.min_mean_similarity is not None:
        parts.append(f"mean similarity of {who}'s concepts in the other model >= {r.min_mean_similarity:g} in every class")
    return "; ".join(parts)


def evaluate(r: RsvcRequirement, findings: list[dict], roles: list[str], classes: list[str]) -> tuple[bool, str]:
    who = roles if r.model == "all" else [r.model]
    met, why = True, []
    for role in who:
        mine = [f for f in findings if f["model"] == role]
        if r.max_unique_important is not None:
            bad = [f for f in mine if f["unique"] and f["important"]]
            ok = len(bad) <= r.max_unique_important
            met = met and ok
            listed = ", ".join(
                f"{f['class']} #{f['concept']} (similarity {f['similarity']:.2f}, importance {f['importance']:.2f})"
                for f in bad
            )
            why.append(f"{role}: " + (f"{len(bad)} unique important concept{'s' if len(bad) != 1 else ''}: {listed}"
                                      if bad else "no unique important concept"))
        if r.min_mean_similarity is not None:
            means = {k: float(np.mean([f["similarity"] for f in mine if f["class"] == k]))
                     for k in classes if any(f["class"] == k for f in mine)}
            low = {k: m for k, m in means.items() if m < r.min_mean_similarity}
            met = met and not low and bool(means)
            why.append(f"{role}: mean similarity " + ", ".join(f"{k} {m:.2f}" for k, m in means.items())
                       if means else f"{role}: no class was evaluated")
    return met, "; ".join(why)


@threads.small_model_threads
def run(check: RsvcCheck, ctx: Context) -> CheckResult:
    clock = Clock()
    start = time.perf_counter()
    seed = derive_seed(ctx.policy.seed, check.id)
    roles = list(check.models or ctx.models)
    assert len(roles) == 2 and roles[0] != roles[1], "validate refuses anything but two different models"
    layers = check_layers(ctx.policy, check)
    ctx.log(f"rsvc {check.id}: {len(check.classes)} classes, concept layers "
            + ", ".join(f"{r} {layers[r][-1]}" for r in roles))
    pool = _pool(check, ctx, roles, clock)
    notes: list[str] = []
    findings: list[dict] = []
    classes: dict[str, dict] = {}
    layerwise: dict[str, dict] = {}
    for cls in check.classes:
        rows, info, lw = _class_result(check, ctx, cls, roles, layers, pool, seed, clock, notes)
        findings += rows
        classes[cls] = info
        if lw is not None:
            layerwise[cls] = lw
    skipped = {k: v["skipped"] for k, v in classes.items() if v["skipped"]}
    for k, why in skipped.items():
        notes.append(f"class {k} not evaluated: {why}")
    reqs = []
    for r in check.require:
        met, why = evaluate(r, findings, roles, check.classes)
        reqs.append({"text": requirement_text(r, roles, check.tau_sim, check.tau_imp), "model": r.model,
                     "met": met, "why": why})
    if any(not q["met"] for q in reqs):
        status = Status.FAIL
    elif skipped:
        status = Status.WARN
    else:
        status = Status.PASS
    ui = [f for f in findings if f["unique"] and f["important"]]
    summary = met_summary(reqs) or (
        f"{len(ui)} unique important concept{'s' if len(ui) != 1 else ''} over {len(classes) - len(skipped)} classes"
    )
    summary += reported_text(findings, roles, check.require) if check.require else ""
    if skipped:
        summary += f" ({len(skipped)} class{'es' if len(skipped) != 1 else ''} not evaluated: too few images)"
    total = time.perf_counter() - start
    forward = clock.seconds.get("forward", 0.0)
    # "store" was timed around whole store calls: what is left of it is cache reads and writes.
    clock.seconds["store"] = clock.seconds.get("store", 0.0) - clock.seconds.get("patches", 0.0) - (
        forward - clock.seconds.get("pool", 0.0))
    ctx.log(f"rsvc {check.id}: {total:.1f} s, forward passes {forward:.1f} s ({100 * forward / max(total, 1e-9):.0f} %, "
            f"{clock.seconds.get('pool', 0.0):.1f} s of them predicting the image pool); "
            + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(clock.seconds.items()) if k not in ("forward", "pool")))
    grid = core.patch_grid(ctx.pre.size, check.patch, check.stride)
    details = {
        "settings": {
            "concepts": check.concepts, "extraction_images": check.extraction_images,
            "evaluation_images": check.evaluation_images, "patch": check.patch, "stride": check.stride,
            "crop_px": list(grid.crop), "stride_px": list(grid.stride), "patches_per_image": len(grid),
            "lasso_alpha": check.lasso_alpha, "folds": check.folds, "ig_steps": check.ig_steps,
            "tau_sim": check.tau_sim, "tau_imp": check.tau_imp,
            "images": check.images.folder if check.images is not None else ctx.policy.data.classes.folder,
            "image_folders": list(pool.folders), "pool_images": len(pool.paths),
            "models": roles,
            "classes": list(check.classes),  # the check's order (results.json sorts the keys of "classes")
        },
        "layers": layers,
        "concept_layers": {r: layers[r][-1] for r in roles},
        "classes": classes,
        "layerwise": layerwise,
        "requirements": reqs,
        "notes": notes,
    }
    details["labelled"] = rsvc_labels.summarise(ctx.policy, images_root(check, ctx.policy), classes, findings)
    return CheckResult(
        id=check.id, method="rsvc", status=status, severity=check.severity, summary=summary,
        requirement=requirement_line(reqs),
        findings=checked_rows(RsvcFinding, findings), details=details,
    )
