"""Per-position concept numerics of SACV (methods/sacv.py runs the check): one row per spatial position, the
per-position CAVs (logistic, as the paper; mean, for the exchangeability test), relevance and contribution maps,
the spatial score and its cosine. Plain arrays in, plain arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from auditor import memory
from auditor.methods.cav import Cav, fit_cav
from auditor.models.base import Model

# Concept runs' CAVs scored per batch of ONNX directions (n images x k CAVs x C x H x W floats each).
DIRECTION_BYTES = 256 * 2**20
# Positions per side a CAV is trained (and tested) on, a seeded subsample: 50 images of a 32 x 32 layer give
# 51,200 rows, and 20 of ~300 logistic fits on them took 2 minutes; a direction in C <= 512 dimensions is
# well determined by a few thousand rows.
MAX_POSITIONS = 4096


def position_rows(acts: np.ndarray) -> np.ndarray:
    """(n, C, H, W) -> (n * H * W, C): one row per spatial position.

    METHODS.md fix: the reference reshapes (C, HW) to (HW, C), which scrambles channels and positions; the
    right operation is a transpose, A.reshape(C, -1).T per image.
    """
    n, c = acts.shape[:2]
    return np.asarray(acts).reshape(n, c, -1).transpose(0, 2, 1).reshape(-1, c)


def concept_positions(fractions: np.ndarray) -> np.ndarray:
    """Which positions of each concept image show the concept, from the concept mask's cover of each cell
    (n, H, W): cells at least half covered, or, in an image where none is, its most covered cell."""
    keep = fractions >= 0.5
    flat = fractions.reshape(len(fractions), -1)
    best = flat.argmax(axis=1)
    none = ~keep.reshape(len(keep), -1).any(axis=1) & (flat.max(axis=1) > 0)
    keep.reshape(len(keep), -1)[np.flatnonzero(none), best[none]] = True
    return keep


def spatial_cav(concept: np.ndarray, random: np.ndarray, seed: int, where: np.ndarray | None = None) -> Cav:
    """Per-position logistic CAV from concept and random activations (n, C, H, W).

    `where` (n_concept, H, W) bool: the positions of the concept images that show the concept (from concept
    masks); without it every position of a concept image is a concept sample, as in the paper. A concept
    that covers a small part of its images (a watermark) needs the masks: otherwise nearly all of its
    "concept" positions are plain background and the CAV learns nothing.

    The held-out split is by image (a third of each set), never by position: positions of one image are
    strongly correlated and a split by position would report a flattering accuracy. Both sides are cut to
    the same number of positions (seeded), so the accuracy is a balanced one (0.5 = chance).
    """
    concept = np.asarray(concept)
    random = np.asarray(random)
    n = min(len(concept), len(random))
    n_test = max(1, n // 3)
    rng = np.random.default_rng(seed)
    pc, pr = rng.permutation(len(concept))[:n], rng.permutation(len(random))[:n]
    mask = np.ones(concept.shape[:1] + concept.shape[2:], bool) if where is None else np.asarray(where, bool)

    def rows(idx_c: np.ndarray, idx_r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows_c = position_rows(concept[idx_c])[mask[idx_c].reshape(-1)]
        rows_r = position_rows(random[idx_r])
        m = min(len(rows_c), len(rows_r), MAX_POSITIONS)
        rows_c = rows_c[np.sort(rng.permutation(len(rows_c))[:m])]
        rows_r = rows_r[np.sort(rng.permutation(len(rows_r))[:m])]
        return np.concatenate([rows_c, rows_r]), np.concatenate([np.ones(m, int), np.zeros(m, int)])

    x_tr, y_tr = rows(np.sort(pc[n_test:]), np.sort(pr[n_test:]))
    x_te, y_te = rows(np.sort(pc[:n_test]), np.sort(pr[:n_test]))
    return fit_cav(x_tr, y_tr, x_te, y_te, "logistic", seed)


@dataclass(frozen=True)
class PositionSums:
    """Per image: the sum of the activation rows of the positions that count for its side, and their number."""

    sums: np.ndarray  # (n, C) float64
    counts: np.ndarray  # (n,)


def position_sums(acts: np.ndarray, where: np.ndarray | None = None,
                  rows: np.ndarray | None = None) -> PositionSums:
    """(n, C, H, W) activations (or their `rows`), `where` (one (H, W) per image taken) positions that count
    (default: all) -> PositionSums.

    float64 a block of images at a time (memory.row_blocks): a whole float64 copy of a (n, C, H, W) memory map was
    the largest array of a check (issue 18); each image's sum is the same either way."""
    n = len(acts) if rows is None else len(rows)
    mask = np.ones((n, *acts.shape[2:]), bool) if where is None else np.asarray(where, bool)
    sums = np.empty((n, acts.shape[1]), np.float64)
    for start, block in memory.row_blocks(acts, rows):
        part = slice(start, start + len(block))
        sums[part] = np.einsum("nchw,nhw->nc", block.astype(np.float64), mask[part].astype(np.float64))
    return PositionSums(sums, mask.reshape(n, -1).sum(axis=1).astype(np.float64))


def image_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train, test) images of the concept side and of the random side of one run, by image as `spatial_cav`
    splits them (a third of each side held out); the exchangeability test shares it among all sets of a run."""
    n_test = max(1, n // 3)
    rng = np.random.default_rng(seed)
    pc, pr = rng.permutation(n), rng.permutation(n)
    return np.sort(pc[n_test:]), np.sort(pc[:n_test]), np.sort(pr[n_test:]), np.sort(pr[:n_test])


def mean_spatial_cavs(sides: Iterable[PositionSums], random: PositionSums) -> tuple[np.ndarray, np.ndarray]:
    """Mean (FastCAV) per-position CAVs of K concept-side sets against one random set, on the given images:
    v = mean concept position - mean random position, offset at the midpoint, unit norm. (K, C), (K,).

    `sides` may be a generator: each side is reduced to its mean as it comes, so the K sides' rows are never held
    together (the exchangeability test's ~1,000 pseudo-concepts, issue 18)."""
    mu0 = random.sums.sum(axis=0) / max(random.counts.sum(), 1)
    mu1 = np.stack([s.sums.sum(axis=0) / max(s.counts.sum(), 1) for s in sides])
    v = mu1 - mu0
    offsets = -np.einsum("kc,kc->k", v, (mu1 + mu0) / 2)
    norms = np.linalg.norm(v, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    return v / safe[:, None], offsets / safe


def subset_sums(p: PositionSums, rows: np.ndarray) -> PositionSums:
    return PositionSums(p.sums[rows], p.counts[rows])


def relevant_positions(acts: np.ndarray, rows: np.ndarray, where: np.ndarray | None, v: np.ndarray,
                       offset: float) -> tuple[int, int]:
    """(positions with R > 0, positions counted) over the images `rows` of acts (n, C, H, W), a block at a time;
    `where` (len(rows), H, W) marks the positions that count (None: all)."""
    hits = total = 0
    for start, block in memory.row_blocks(acts, rows):
        positive = relevance_maps(block, v[None], np.array([offset]))[:, 0] > 0
        mask = np.ones(positive.shape, bool) if where is None else np.asarray(where[start : start + len(block)], bool)
        hits += int(positive[mask].sum())
        total += int(mask.sum())
    return hits, total


def balanced_accuracy(concept: np.ndarray, concept_rows: np.ndarray, where: np.ndarray | None, random: np.ndarray,
                      random_rows: np.ndarray, v: np.ndarray, offset: float) -> float:
    """Held-out accuracy of a per-position CAV on the images `concept_rows` of `concept` and `random_rows` of
    `random`: the mean of the share of concept positions (`where`, one (H, W) per concept row) it calls concept
    and the share of random positions it calls random (0.5 = chance)."""
    hits, counted = relevant_positions(concept, concept_rows, where, v, offset)
    fired, random_positions = relevant_positions(random, random_rows, None, v, offset)
    tpr = hits / counted if counted else 0.0
    return (tpr + (random_positions - fired) / random_positions) / 2


def relevance_maps(acts: np.ndarray, cavs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """R for every image and CAV: acts (n, C, H, W), cavs (k, C), offsets (k,) -> (n, k, H, W)."""
    r = np.einsum("nchw,kc->nkhw", np.asarray(acts, np.float32), cavs.astype(np.float32), optimize=True)
    return r + np.asarray(offsets, np.float32)[None, :, None, None]


def spatial_sums(
    model: Model, layer: str, acts: np.ndarray, x: np.ndarray, grads: np.ndarray | None, cavs: np.ndarray,
    offsets: np.ndarray, target: int,
) -> np.ndarray:
    """S(x) = sum over {R > 0} of M, for every image and CAV: (n, k) float64.

    With `grads` (the full gradient maps, torch): an einsum. Without (ONNX): one finite-difference directional
    derivative per (image, CAV) along v masked to that image's positive-relevance positions.
    """
    positive = relevance_maps(acts, cavs, offsets) > 0  # (n, k, H, W)
    if grads is not None:
        contribution = np.einsum("nchw,kc->nkhw", np.asarray(grads, np.float32), cavs.astype(np.float32))
        return (contribution * positive).sum(axis=(2, 3), dtype=np.float64)
    head = model.head(layer)
    n, c, h, w = acts.shape
    per_cav = n * c * h * w * 4
    chunk = max(1, DIRECTION_BYTES // per_cav)
    out = []
    for start in range(0, len(cavs), chunk):
        v = cavs[start : start + chunk].astype(np.float32)
        dirs = v[None, :, :, None, None] * positive[:, start : start + chunk, None, :, :]
        out.append(head.directional_per_image(np.asarray(acts), x, dirs, target).astype(np.float64))
    return np.concatenate(out, axis=1)


def contribution_maps(
    model: Model, layer: str, acts: np.ndarray, x: np.ndarray, grads: np.ndarray | None, cav: np.ndarray,
    target: int, present: np.ndarray,
) -> np.ndarray:
    """M * [R > 0] of one CAV on every image: (n, H, W), zero where the concept is absent (`present` False).

    ONNX: the directions "v at position p" are the same for every image, so they go through the head's
    ordinary batched `directional`, for the positions where the concept is present on some image only.
    """
    if grads is not None:
        return np.einsum("nchw,c->nhw", np.asarray(grads, np.float32), cav.astype(np.float32)) * present
    n, c, h, w = acts.shape
    out = np.zeros((n, h * w), np.float32)
    where = np.flatnonzero(present.reshape(n, -1).any(axis=0))
    if len(where):
        basis = np.zeros((len(where), c, h * w), np.float32)
        basis[np.arange(len(where)), :, where] = cav.astype(np.float32)
        m = model.head(layer).directional(np.asarray(acts), x, basis.reshape(len(where), c, h, w), target)
        out[:, where] = np.asarray(m, np.float32)
    return out.reshape(n, h, w) * present


def spatial_stats(acts: np.ndarray, grads: np.ndarray, cavs: np.ndarray, offsets: np.ndarray,
                  chunk: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Both statistics of every CAV from the full gradient maps: (spatial score (k,), mean cosine (k,)).

    The cosine of image x is that of its gradient map g (all positions) with the direction the score uses, v at
    the positions where R > 0: S(x) / (|g| sqrt(#{R > 0})) for a unit v; 0 when no position is relevant.

    A block of images at a time (memory.row_blocks), CAVs `chunk` at a time within it: the per-image sums are all
    that is kept, so the memory held does not grow with the class set (issue 18: the whole set at once added
    0.5 GiB at 4x the images of benchmarks/real_scale.py)."""
    n, k = len(acts), len(cavs)
    sums, positives, gnorm = np.zeros((n, k)), np.zeros((n, k)), np.empty(n)
    for (start, a), (_, g) in zip(memory.row_blocks(acts), memory.row_blocks(grads)):
        rows = slice(start, start + len(a))
        a, g = a.astype(np.float32, copy=False), g.astype(np.float32, copy=False)
        gnorm[rows] = np.linalg.norm(g.reshape(len(g), -1).astype(np.float64), axis=1)
        for first in range(0, k, chunk):
            part = slice(first, first + chunk)
            positive = relevance_maps(a, cavs[part], offsets[part]) > 0
            contribution = np.einsum("nchw,kc->nkhw", g, cavs[part].astype(np.float32), optimize=True)
            sums[rows, part] = (contribution * positive).sum(axis=(2, 3), dtype=np.float64)
            positives[rows, part] = positive.sum(axis=(2, 3))
    denom = gnorm[:, None] * np.sqrt(positives)
    cosine = np.divide(sums, denom, out=np.zeros_like(sums), where=denom > 0).mean(axis=0)
    return (sums > 0).mean(axis=0), cosine


def spatial_scores(sums: np.ndarray) -> np.ndarray:
    """Fraction of images with S > 0, per CAV: (n, k) -> (k,)."""
    return (sums > 0).mean(axis=0)
