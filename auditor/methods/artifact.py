"""Causal artifact probe (Mark-My-Words style; METHODS.md, INVERT section, item 4).

Every clean image is shown twice: once with the artifact pasted and once with a neutral patch — the image's own
mean colour on exactly the artifact's footprint, at the same seeded position — so that occlusion alone cannot
look like reliance. For each class logit, AUC(artifact vs neutral) from average ranks: above the threshold
(default 0.7) the artifact raises the class, and the class *relies* on the artifact; with `direction: both` an
AUC below 1 - threshold (suppression) counts too. This, not TCAV, decides a forbidden-concept requirement.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from auditor import data, memory
from auditor.context import Context, derive_seed, subsample
from auditor.errors import UserError
from auditor.methods import stats
from auditor.policy import Policy
from auditor.schemas.artifact_probe import ArtifactProbeCheck, ProbeFinding
from auditor.schemas.common import ArtifactSpec, checked_rows
from auditor.methods.requirements import met_summary, requirement_line
from auditor.results import CheckResult, Status


@dataclass(frozen=True)
class Pairs:
    artifact: np.ndarray  # (n, 3, H, W) normalised
    neutral: np.ndarray  # (n, 3, H, W) normalised
    sources: tuple[str, ...]  # the clean images' file names


def load_artifact(path: Path) -> np.ndarray:
    """The artifact as (h, w, 4) float32 RGBA in [0, 1] (opaque where the file has no alpha)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{path}: the artifact is not a readable image ({type(e).__name__})") from e


def fit_artifact(artifact: np.ndarray, width: int, spec: ArtifactSpec) -> np.ndarray:
    """Resize the artifact to `spec.scale` of the image width (native pixels when scale is None)."""
    if spec.scale is None:
        return artifact
    w = max(1, round(spec.scale * width))
    h = max(1, round(artifact.shape[0] * w / artifact.shape[1]))
    im = Image.fromarray((artifact * 255).round().astype(np.uint8), "RGBA").resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.float32) / 255.0


def position(spec: ArtifactSpec, image_hw: tuple[int, int], patch_hw: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner (row, col) of the patch: a fixed corner with a margin, or seeded uniform."""
    (H, W), (h, w) = image_hw, patch_hw
    if h > H or w > W:
        # `validate` (fit_problem) reports this before anything runs; reaching it is a bug, not the user's mistake.
        raise ValueError(f"the artifact ({w}x{h} px) is larger than the images ({W}x{H} px)")
    if spec.position == "random":
        return int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    m = round(spec.margin * min(H, W))
    row = m if spec.position.startswith("top") else H - h - m
    col = m if spec.position.endswith("left") else W - w - m
    return max(0, min(row, H - h)), max(0, min(col, W - w))


def paste_pair(rgb: np.ndarray, patch: np.ndarray, at: tuple[int, int], opacity: float) -> tuple[np.ndarray, np.ndarray]:
    """(artifact version, neutral version) of one (H, W, 3) uint8 image.

    Both cover exactly the same pixels with the same alpha; the neutral one paints the image's mean colour.
    """
    img = rgb.astype(np.float32) / 255.0
    r, c = at
    h, w = patch.shape[:2]
    alpha = patch[..., 3:4] * opacity
    region = img[r : r + h, c : c + w]
    mean = img.reshape(-1, 3).mean(axis=0)
    with_artifact, with_neutral = img.copy(), img.copy()
    with_artifact[r : r + h, c : c + w] = (1 - alpha) * region + alpha * patch[..., :3]
    with_neutral[r : r + h, c : c + w] = (1 - alpha) * region + alpha * mean
    to_u8 = lambda a: (np.clip(a, 0, 1) * 255).round().astype(np.uint8)  # noqa: E731
    return to_u8(with_artifact), to_u8(with_neutral)


def make_pairs(images: list[Path], spec: ArtifactSpec, artifact_path: Path, pre: data.Preprocessing, seed: int) -> Pairs:
    return next(pair_chunks(images, spec, artifact_path, pre, seed, max(1, len(images))))


def pair_chunks(
    images: list[Path], spec: ArtifactSpec, artifact_path: Path, pre: data.Preprocessing, seed: int, size: int
) -> Iterator[Pairs]:
    """`make_pairs` a chunk of `size` images at a time (one seeded draw of positions over all of them, in order,
    so the chunks together are `make_pairs` of the whole list)."""
    patch = fit_artifact(load_artifact(artifact_path), pre.size[1], spec)
    rng = np.random.default_rng(seed)
    for start in range(0, max(1, len(images)), size):
        art, neu = [], []
        chunk = images[start : start + size]
        for path in chunk:
            rgb = data.read_rgb(path, pre.size)
            at = position(spec, rgb.shape[:2], patch.shape[:2], rng)
            a, n = paste_pair(rgb, patch, at, spec.opacity)
            art.append(data.normalise(a, pre))
            neu.append(data.normalise(n, pre))
        empty = np.zeros((0, 3, *pre.size), np.float32)
        yield Pairs(np.stack(art) if art else empty, np.stack(neu) if neu else empty, tuple(p.name for p in chunk))


def fit_problem(spec: ArtifactSpec, path: Path, pre: data.Preprocessing) -> str | None:
    """Why the artifact cannot be pasted onto the model's images (it is larger than they are), or None. An
    unreadable artifact is None here: the pipeline names it."""
    try:
        patch = fit_artifact(load_artifact(path), pre.size[1], spec)
    except UserError:
        return None
    (h, w), (H, W) = patch.shape[:2], pre.size
    if h > H or w > W:
        return f"the artifact ({w}x{h} px) is larger than the images ({W}x{H} px); lower artifact.scale"
    return None


def validate(check, policy: Policy, pre: data.Preprocessing, where: str, problems: list[str],
             models: dict) -> list[data.ImageSet]:
    """The artifact fits the images it is pasted onto (VALIDATORS of artifact_probe and INVERT's probe)."""
    if getattr(check, "artifact", None) is not None:
        why = fit_problem(check.artifact, policy.resolve(check.artifact.image), pre)
        if why is not None:
            problems.append(f"{where}.artifact: {why}")
    return []


@dataclass(frozen=True)
class ProbeSpec:
    """What the logit-level probe needs (an artifact_probe check, or INVERT's own probe)."""

    id: str
    artifact: ArtifactSpec
    images: object | None  # a FolderSpec of clean images, or None: every class folder of data.classes
    classes: list[str]
    models: list[str] | None
    images_per_class: int | None
    threshold: float
    direction: str


def _clean_images(spec: ProbeSpec, ctx: Context, seed: int) -> list[Path]:
    if spec.images is not None:
        folder = data.folder_set("probe-images", ctx.policy.resolve(spec.images.folder), ctx.pre)
        return list(subsample(folder, spec.images_per_class, seed, ctx.pre).paths)
    paths: list[Path] = []
    for k in ctx.policy.data.classes.names:
        s = subsample(ctx.sets.classes[k], spec.images_per_class, derive_seed(seed, "class", k), ctx.pre)
        paths.extend(s.paths)
    return paths


def reliant(auc: float, threshold: float, direction: str) -> bool:
    return auc > threshold or (direction == "both" and auc < 1 - threshold)


def probe_findings(spec: ProbeSpec, ctx: Context) -> list[dict]:
    """The probe's findings, one per (model, class): the computation artifact_probe checks and INVERT share (the
    seeds derive from `spec.id`, so INVERT's probe uses the images an artifact_probe check of its id would)."""
    seed = derive_seed(ctx.policy.seed, spec.id)
    artifact_path = ctx.policy.resolve(spec.artifact.image)
    images = _clean_images(spec, ctx, seed)
    names = ctx.policy.data.classes.names
    classes = spec.classes or list(names)
    roles = spec.models or list(ctx.models)
    # Pasted a chunk at a time, every model run on each chunk: the pairs of a whole class set at 224 px were
    # 1.2 MB an image (issue 18); only the logits are kept.
    side = 3 * ctx.pre.size[0] * ctx.pre.size[1] * 4
    size = memory.images_per_chunk(2 * side * (1 + memory.FORWARD_WORK), ctx.store.chunk_bytes)
    ctx.log(f"artifact probe {spec.id}: {', '.join(roles)} on {len(images)} image pairs")
    logits: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {role: [] for role in roles}
    for pairs in pair_chunks(images, spec.artifact, artifact_path, ctx.pre, derive_seed(seed, "positions"), size):
        for role in roles:
            logits[role].append((ctx.models[role].predict(pairs.artifact), ctx.models[role].predict(pairs.neutral)))
    findings = []
    for role in roles:
        la = np.concatenate([a for a, _n in logits[role]])
        ln = np.concatenate([n for _a, n in logits[role]])
        idx = [names.index(k) for k in classes]
        auc = stats.rank_auc(la[:, idx], ln[:, idx])
        flips = (la.argmax(1) != ln.argmax(1)).mean()
        for j, k in enumerate(classes):
            to_k = float(((la.argmax(1) == idx[j]) & (ln.argmax(1) != idx[j])).mean())
            findings.append(
                {
                    "model": role,
                    "class": k,
                    "artifact": spec.artifact.image,
                    "auc": round(float(auc[j]), 6),
                    "reliant": reliant(float(auc[j]), spec.threshold, spec.direction),
                    "effect": "raises" if auc[j] > 0.5 else ("suppresses" if auc[j] < 0.5 else "none"),
                    "mean_logit_shift": round(float((la[:, idx[j]] - ln[:, idx[j]]).mean()), 6),
                    "flipped_to_class": round(to_k, 6),
                    "prediction_changed": round(float(flips), 6),
                    "n_pairs": len(images),
                }
            )
    return findings


def run(check: ArtifactProbeCheck, ctx: Context) -> CheckResult:
    spec = ProbeSpec(id=check.id, artifact=check.artifact, images=check.images, classes=list(check.classes),
                     models=check.models, images_per_class=check.images_per_class, threshold=check.threshold,
                     direction=check.direction)
    findings = probe_findings(spec, ctx)
    roles = check.models or list(ctx.models)
    n_pairs = findings[0]["n_pairs"] if findings else 0
    reqs = []
    for r in check.require:
        who = roles if r.model == "all" else [r.model]
        for role in who:
            bad = [f for f in findings if f["model"] == role and f["reliant"]]
            reqs.append(
                {
                    "text": f"{role}: at most {r.max_reliant_classes} classes may rely on the artifact "
                    f"(AUC > {check.threshold:g}{' or < ' + format(1 - check.threshold, 'g') if check.direction == 'both' else ''})",
                    "model": role,
                    "met": len(bad) <= r.max_reliant_classes,
                    "why": f"{role}: "
                    + (", ".join(f"{f['class']} ({f['effect']}, AUC {f['auc']:.2f})" for f in bad) or "no class")
                    + (" relies on the artifact" if len(bad) <= 1 else " rely on the artifact"),
                }
            )
    status = Status.FAIL if any(not q["met"] for q in reqs) else Status.PASS
    reliant_rows = [f for f in findings if f["reliant"]]
    summary = met_summary(reqs) or (
        f"{len(reliant_rows)} (model, class) pairs rely on the artifact"
    )
    return CheckResult(
        id=check.id,
        method="artifact_probe",
        status=status,
        severity=check.severity,
        summary=summary,
        requirement=requirement_line(reqs),
        findings=checked_rows(ProbeFinding, findings),
        details={
            "settings": {
                "artifact": check.artifact.model_dump(),
                "threshold": check.threshold,
                "direction": check.direction,
                "n_pairs": n_pairs,
                "test": "AUC of each class logit, artifact vs neutral patch (average ranks, ties count half)",
            },
            "requirements": reqs,
            "notes": [],
        },
    )
