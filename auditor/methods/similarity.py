"""Cross-model layer similarity (METHODS.md): where each concept lives in the two models, and how alike their
layers are as whole representations.

1. Concepts (Mikriukov et al. 2023, methods/similarity_concepts.py): per labelled concept, model and layer, CAVs
   with their held-out accuracy and the concept maps of the concept's images; the similarity of two (model, layer)
   pairs for a concept is the correlation of their maps of the same images (concept_maps.map_similarity).
2. Depth: every layer's relative depth (weight layers up to it / all of them, methods/similarity_depth.py); per
   concept the relative depth where each model encodes it best (highest CAV accuracy, ties to the shallower
   layer) and the shift between the models.
3. CKA (Kornblith et al. 2019; debiased: Nguyen, Raghu, Kornblith 2021, methods/cka.py): linear and debiased CKA
   between every audited layer of one model and every audited layer of the other, on the same images, from n x n
   Gram matrices built a batch of images at a time (GramBuilder: memory n x n plus one batch, whatever the width).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from auditor import data
from auditor.context import Context, derive_seed, subsample
from auditor.errors import UserError
from auditor.labels import missing_columns, validate_labels
from auditor.methods import similarity_concepts as concepts_mod
from auditor.methods.cka import GramBuilder, cka_matrix
from auditor.methods.concept_maps import best_depth, map_similarity
from auditor.methods.concept_scores import MIN_CAV_ACCURACY
from auditor.methods.requirements import met_summary, requirement_line
from auditor.methods.similarity_depth import model_depths
from auditor.policy import Policy, check_layers
from auditor.results import CheckResult, Status
from auditor.schemas.common import checked_rows
from auditor.schemas.similarity import (
    CkaFinding, ConceptDepthFinding, MapFinding, SimilarityCheck, SimilarityRequirement,
)

# Images per Gram-matrix batch: 64 images of a 224-px ResNet layer (200,704 floats each) are 51 MB.
GRAM_BATCH = 64
# Fewest images that show (and that do not show) a concept: a CAV's stratified 2/3 : 1/3 split needs 3 a side.
MIN_CONCEPT_IMAGES = 3
DIGITS = 6


# ----------------------------------------------------------------------------------------------- validation


def _roles(check: SimilarityCheck, policy: Policy) -> list[str]:
    return list(check.models or policy.models)


def _validate_labels(check: SimilarityCheck, policy: Policy, pre: data.Preprocessing, where: str,
                     problems: list[str]) -> list[data.ImageSet]:
    path = policy.resolve(check.labels or "")
    labels, _ = validate_labels(path, f"{where}.labels", problems)
    if labels is None:
        return []
    problems.extend(missing_columns(labels, check.label_concepts, f"{where}.label_concepts", path))
    for j, c in enumerate(check.label_concepts):
        if c not in labels.concepts:
            continue
        yes = int(labels.column(c).sum())
        if min(yes, len(labels) - yes) < MIN_CONCEPT_IMAGES:
            problems.append(f"{where}.label_concepts[{j}]: {c!r} labels {yes} of {len(labels)} images 1; a CAV needs "
                            f"at least {MIN_CONCEPT_IMAGES} images labelled 1 and {MIN_CONCEPT_IMAGES} labelled 0")
    problems.extend(f"{where}.labels: {line}" for line in data.unreadable(list(labels.images)))
    return [data.image_set(f"{check.id}:labels", [path], pre), data.image_set(f"probe:{check.id}", labels.images, pre)]


def _pool_images(policy: Policy) -> int | None:
    """Images in data.random.folder; None without a pool or when the folder cannot be listed (the pipeline names
    it, and an empty one)."""
    if policy.data.random is None:
        return None
    try:
        return len(data.list_images(policy.resolve(policy.data.random.folder)))
    except UserError:
        return None


def _validate_folders(check: SimilarityCheck, policy: Policy, pre: data.Preprocessing, where: str,
                      problems: list[str]) -> list[data.ImageSet]:
    if policy.data.concepts is None:
        problems.append(f"{where}.concepts: concept folders need data.concepts (a folder of concept subfolders)")
    if policy.data.random is None:
        problems.append(f"{where}.concepts: concept folders need data.random (the non-concept images)")
    else:
        # Each CAV's non-concept side is drawn from the pool (fewer than set_size: both sides are cut to the smaller
        # size, as for a small concept folder); one image fails the CAV's stratified split mid-run. The same floor
        # as a concept folder's.
        n = _pool_images(policy)
        if n and n < MIN_CONCEPT_IMAGES:
            problems.append(f"{where}.concepts: data.random.folder ({policy.data.random.folder}) has {n} images; the "
                            f"non-concept side of a CAV needs at least {MIN_CONCEPT_IMAGES}: add images to it")
    if policy.data.concepts is None:
        return []
    root = policy.resolve(policy.data.concepts.folder)
    own = []
    for j, c in enumerate(check.concepts):
        try:
            images = data.folder_set(f"concept:{c}", root / c, pre)
        except UserError as e:
            problems.append(f"{where}.concepts[{j}]: {c!r}: {e}")
            continue
        bad = data.unreadable(images.paths)
        problems.extend(f"{where}.concepts[{j}]: {line}" for line in bad)
        if len(images) < MIN_CONCEPT_IMAGES:
            problems.append(f"{where}.concepts[{j}]: {root / c} has {len(images)} images; a concept needs at least "
                            f"{MIN_CONCEPT_IMAGES}")
        elif not bad:
            own.append(images)
    return own


def validate(
    check: SimilarityCheck, policy: Policy, pre: data.Preprocessing, where: str, problems: list[str], models: dict,
) -> list[data.ImageSet]:
    """Two models; the concept folders, labels and CKA images exist, decode and are enough. Returns the image sets
    only this check reads (for the provenance table). Unknown layers are the pipeline's (it checks every check's)."""
    roles = _roles(check, policy)
    if len(roles) != 2:
        problems.append(f"{where}: similarity compares two models; the policy has {len(roles)} "
                        f"({', '.join(roles)}): name two in the check's `models`")
    own: list[data.ImageSet] = []
    if check.concepts:
        own += _validate_folders(check, policy, pre, where, problems)
    if check.labels is not None:
        own += _validate_labels(check, policy, pre, where, problems)
    if check.images is not None:
        try:
            images = data.folder_set(f"{check.id}:images", policy.resolve(check.images.folder), pre)
        except UserError as e:
            problems.append(f"{where}.images: {e}")
        else:
            problems.extend(f"{where}.images: {line}" for line in data.unreadable(images.paths))
            if len(images) < 4:
                problems.append(f"{where}.images: {len(images)} images; CKA needs at least 4")
            own.append(images)
    elif check.labels is None and policy.data.random is None:
        problems.append(f"{where}: CKA needs images: `images`, `labels` or data.random")
    elif check.labels is None and 0 < (_pool_images(policy) or 0) < 4:
        problems.append(f"{where}: CKA takes its images from data.random.folder ({policy.data.random.folder}), which has "
                        f"{_pool_images(policy)}; CKA needs at least 4: add images to it or give the check `images`")
    return own


# ----------------------------------------------------------------------------------------------- CKA


def cka_images(check: SimilarityCheck, ctx: Context, seed: int) -> tuple[data.ImageSet, str]:
    """The images both models see for CKA, and where they come from in words."""
    if check.images is not None:
        full = data.folder_set(f"{check.id}:images", ctx.policy.resolve(check.images.folder), ctx.pre)
        what = check.images.folder
    elif check.labels is not None:
        labelled = concepts_mod.labels_set(check, ctx)
        assert labelled is not None
        full, what = labelled[0], f"the images of {check.labels}"
    else:
        assert ctx.sets.random_pool is not None
        full, what = ctx.sets.random_pool, "the random pool"
    return subsample(full, check.cka_images, derive_seed(seed, "cka-images"), ctx.pre), what


def layer_grams(acts: dict[str, np.ndarray], layers: list[str], scratch_dir: Path, tag: str) -> list[np.ndarray]:
    """The n x n Gram matrix of each layer, built a batch of images at a time."""
    scratch_dir.mkdir(parents=True, exist_ok=True)
    grams = []
    for i, layer in enumerate(layers):
        with GramBuilder(scratch_dir / f"gram-{os.getpid()}-{tag}-{i}.f32") as builder:
            a = acts[layer]
            for start in range(0, len(a), GRAM_BATCH):
                builder.add(np.asarray(a[start : start + GRAM_BATCH]))
            grams.append(builder.gram())
    return grams


def matched_layers(depths_a: dict[str, float], depths_b: dict[str, float]) -> dict[str, str]:
    """Each layer of model a -> the layer of model b nearest in relative depth (ties: the shallower)."""
    return {la: min(depths_b, key=lambda lb: (abs(depths_b[lb] - da), depths_b[lb])) for la, da in depths_a.items()}


def cka_rows(roles: list[str], layers: dict[str, list[str]], depths: dict[str, dict[str, float]],
             grams: dict[str, list[np.ndarray]]) -> list[dict]:
    a, b = roles
    lin, deb = cka_matrix(grams[a], grams[b])
    matched = matched_layers(depths[a], depths[b])
    return [
        {"kind": "cka", "model_a": a, "layer_a": la, "model_b": b, "layer_b": lb,
         "relative_depth_a": round(depths[a][la], DIGITS), "relative_depth_b": round(depths[b][lb], DIGITS),
         "cka": round(float(lin[i, j]), DIGITS), "cka_debiased": round(float(deb[i, j]), DIGITS),
         "matched": matched[la] == lb}
        for i, la in enumerate(layers[a]) for j, lb in enumerate(layers[b])
    ]


# ----------------------------------------------------------------------------------------------- concepts


def concept_rows(roles: list[str], layers: dict[str, list[str]], depths: dict[str, dict[str, float]],
                 encoded: dict[str, dict], names: list[str]) -> list[dict]:
    rows = []
    for c in names:
        for role in roles:
            accs = [encoded[role][c][layer].accuracy for layer in layers[role]]
            best = best_depth([depths[role][layer] for layer in layers[role]], accs)
            best_layer = next(la for la, acc in zip(layers[role], accs)
                              if depths[role][la] == best and acc == max(accs))
            for layer, acc in zip(layers[role], accs):
                rows.append({"kind": "concept", "concept": c, "model": role, "layer": layer,
                             "relative_depth": round(depths[role][layer], DIGITS), "cav_accuracy": round(acc, DIGITS),
                             "learned": acc >= MIN_CAV_ACCURACY, "best": layer == best_layer})
    return rows


def map_rows(roles: list[str], layers: dict[str, list[str]], encoded: dict[str, dict], names: list[str]) -> list[dict]:
    a, b = roles
    return [
        {"kind": "map", "concept": c, "model_a": a, "layer_a": la, "model_b": b, "layer_b": lb,
         "map_similarity": round(map_similarity(encoded[a][c][la].maps, encoded[b][c][lb].maps), DIGITS)}
        for c in names for la in layers[a] for lb in layers[b]
    ]


def depth_shifts(rows: list[dict], roles: list[str], names: list[str]) -> list[dict]:
    """Per concept: each model's best layer, its relative depth and accuracy, and the shift (b - a)."""
    out = []
    for c in names:
        best = {r: next(f for f in rows if f["concept"] == c and f["model"] == r and f["best"]) for r in roles}
        a, b = (best[r] for r in roles)
        out.append({
            "concept": c, "layer_a": a["layer"], "layer_b": b["layer"],
            "depth_a": a["relative_depth"], "depth_b": b["relative_depth"],
            "accuracy_a": a["cav_accuracy"], "accuracy_b": b["cav_accuracy"],
            "learned_a": a["learned"], "learned_b": b["learned"],
            "shift": round(b["relative_depth"] - a["relative_depth"], DIGITS),
        })
    return out


# ----------------------------------------------------------------------------------------------- requirements


def requirement_text(r: SimilarityRequirement) -> str:
    if r.max_depth_shift is not None:
        return f"{r.concept}: best relative depth shifts by at most {r.max_depth_shift:g} between the models"
    return f"{r.variant} CKA at matched relative depth >= {r.min_cka_at_matched_depth:g} for every layer"


def evaluate(r: SimilarityRequirement, roles: list[str], shifts: list[dict], ckas: list[dict]) -> tuple[bool, str]:
    if r.max_depth_shift is not None:
        s = next(x for x in shifts if x["concept"] == r.concept)
        unlearned = [role for role, ok in zip(roles, (s["learned_a"], s["learned_b"])) if not ok]
        if unlearned:
            return False, (f"{r.concept} is not learned at any audited layer of {' and '.join(unlearned)} "
                           f"(CAV accuracy < {MIN_CAV_ACCURACY:g}): its depths cannot be compared")
        met = abs(s["shift"]) <= r.max_depth_shift + 1e-9
        return met, (f"{r.concept}: best depth {s['depth_a']:.2f} in {roles[0]}, {s['depth_b']:.2f} in {roles[1]} "
                     f"(shift {s['shift']:+.2f}, at most {r.max_depth_shift:g})")
    key = "cka" if r.variant == "linear" else "cka_debiased"
    matched = [f for f in ckas if f["matched"]]
    low = min(matched, key=lambda f: f[key])
    met = all(f[key] >= r.min_cka_at_matched_depth for f in matched)
    return met, (f"lowest {r.variant} CKA at matched depth {low[key]:.2f} ({low['layer_a']} vs {low['layer_b']}; "
                 f"at least {r.min_cka_at_matched_depth:g})")


def _summary(reqs: list[dict], shifts: list[dict], ckas: list[dict], roles: list[str]) -> str:
    if reqs:
        return met_summary(reqs)
    words = [f"{s['concept']} {s['depth_a']:.2f} vs {s['depth_b']:.2f}" for s in shifts]
    matched = [f["cka"] for f in ckas if f["matched"]]
    return (f"best relative depth ({roles[0]} vs {roles[1]}): " + ", ".join(words)
            + f"; linear CKA at matched depth {min(matched):.2f}-{max(matched):.2f}")


# ----------------------------------------------------------------------------------------------- run


def run(check: SimilarityCheck, ctx: Context) -> CheckResult:
    seed = derive_seed(ctx.policy.seed, check.id)
    layers = check_layers(ctx.policy, check)
    roles = list(layers)
    counted = {role: model_depths(ctx.models[role]) for role in roles}
    depths = {role: {layer: counted[role].relative(layer) for layer in layers[role]} for role in roles}
    srcs = concepts_mod.sources(check, ctx, seed)
    names = [s.name for s in srcs]
    encoded = {}
    for role in roles:
        ctx.log(f"similarity {check.id}: {role}: {len(names)} concepts x {len(layers[role])} layers x {check.runs} CAVs")
        encoded[role] = concepts_mod.encode_all(check, ctx, role, layers[role], srcs, seed)
    images, images_from = cka_images(check, ctx, seed)
    grams = {}
    for role in roles:
        ctx.log(f"similarity {check.id}: {role}: Gram matrices of {len(images)} images")
        acts = ctx.store.acts(ctx.models[role], layers[role], images)
        grams[role] = layer_grams(acts, layers[role], ctx.store.cache_dir / "scratch", f"{check.id}-{role}")
    c_rows = concept_rows(roles, layers, depths, encoded, names)
    k_rows = cka_rows(roles, layers, depths, grams)
    m_rows = map_rows(roles, layers, encoded, names)
    shifts = depth_shifts(c_rows, roles, names)
    reqs = []
    for r in check.require:
        met, why = evaluate(r, roles, shifts, k_rows)
        reqs.append({"text": requirement_text(r), "model": "", "met": met, "why": why})
    nowhere = [s["concept"] for s in shifts if not s["learned_a"] and not s["learned_b"]]
    notes = [f"{c} is learned at no audited layer of either model (CAV accuracy < {MIN_CAV_ACCURACY:g})"
             for c in nowhere]
    status = Status.FAIL if any(not q["met"] for q in reqs) else Status.WARN if nowhere else Status.PASS
    details = {
        "settings": {
            "models": roles, "concepts": list(check.concepts), "label_concepts": list(check.label_concepts),
            "labels": check.labels, "origin": {s.name: s.origin for s in srcs}, "cav": check.cav,
            "runs": check.runs, "set_size": check.set_size, "map_images": check.map_images,
            "map_counts": {s.name: int(min(check.map_images, len(s.pos_rows))) for s in srcs},
            "cka_images": len(images), "cka_images_from": images_from, "min_cav_accuracy": MIN_CAV_ACCURACY,
        },
        "layers": layers,
        "depths": {r: {la: round(d, DIGITS) for la, d in depths[r].items()} for r in roles},
        "weight_layers": {r: counted[r].count for r in roles},
        "depth_shifts": shifts,
        "requirements": reqs,
        "notes": notes,
    }
    return CheckResult(
        id=check.id, method="similarity", status=status, severity=check.severity,
        summary=_summary(reqs, shifts, k_rows, roles), requirement=requirement_line(reqs),
        findings=checked_rows(ConceptDepthFinding, c_rows) + checked_rows(CkaFinding, k_rows)
        + checked_rows(MapFinding, m_rows),
        details=details,
    )
