"""The concept side of the similarity check (Mikriukov et al. 2023): where each labelled concept is encoded.

Per concept, model and layer: `runs` CAVs on spatially pooled activations (auditor.methods.cav, TCAV's own CAV
training: concept images against non-concept images, both cut to `set_size`, a seeded 2/3 : 1/3 split, the held-out
accuracy recorded), their mean direction, and that direction applied as a 1x1 convolution to the concept images'
activations: the concept map (auditor.methods.concept_maps). The images, draws and splits depend on the check, the
concept and the run only, so both models see the same ones.

A concept comes from a folder under data.concepts (its images against the random pool, as TCAV) or from a column of
a labels CSV (the images labelled 1 against those labelled 0, as INVERT reads the probe set).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from auditor import data
from auditor.context import Context, derive_seed, subsample
from auditor.labels import load_labels
from auditor.methods.cav import features, train_cav
from auditor.methods.concept_maps import concept_map
from auditor.schemas.similarity import SimilarityCheck


@dataclass(frozen=True)
class ConceptSource:
    """Where a concept's images are: rows of one image set that show it, rows of one that do not."""

    name: str
    origin: str  # "folder" | "labels"
    positives: data.ImageSet
    pos_rows: np.ndarray
    negatives: data.ImageSet
    neg_rows: np.ndarray


@dataclass(frozen=True)
class Encoded:
    """One concept at one layer of one model."""

    accuracy: float  # mean held-out accuracy over the runs
    vector: np.ndarray  # (C,) unit mean direction of the runs' CAVs
    maps: np.ndarray  # (m, H, W) concept maps of the map images (H = W = 1 for a dense layer)


def labels_set(check: SimilarityCheck, ctx: Context) -> tuple[data.ImageSet, dict[str, np.ndarray]] | None:
    """The probe set of the check's labels and each label concept's 0/1 column (None without labels)."""
    if check.labels is None:
        return None
    labels = load_labels(ctx.policy.resolve(check.labels))
    images = data.image_set(f"probe:{check.id}", labels.images, ctx.pre)
    return images, {c: labels.column(c) for c in check.label_concepts}


def sources(check: SimilarityCheck, ctx: Context, seed: int) -> list[ConceptSource]:
    """Every concept of the check, folder concepts first (the check's order)."""
    out = []
    if check.concepts:
        assert ctx.sets.random_pool is not None and ctx.policy.data.concepts is not None  # validate saw to it
        # One draw of non-concept images from the pool serves every folder concept: enough for `runs` disjoint sets.
        pool = subsample(ctx.sets.random_pool, check.runs * check.set_size, derive_seed(seed, "negatives"), ctx.pre)
        root = ctx.policy.resolve(ctx.policy.data.concepts.folder)
        for c in check.concepts:
            images = ctx.sets.concepts.get(c) or data.folder_set(f"concept:{c}", root / c, ctx.pre)
            out.append(ConceptSource(c, "folder", images, np.arange(len(images)), pool, np.arange(len(pool))))
    labelled = labels_set(check, ctx)
    if labelled is not None:
        images, columns = labelled
        for c in check.label_concepts:
            column = columns[c]
            out.append(ConceptSource(c, "labels", images, np.flatnonzero(column), images, np.flatnonzero(~column)))
    return out


def _draw(rows: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.permutation(rows)[: min(size, len(rows))])


def map_rows(src: ConceptSource, count: int, seed: int) -> np.ndarray:
    """The concept images whose maps are compared: the same for both models."""
    return _draw(src.pos_rows, count, np.random.default_rng(derive_seed(seed, "maps", src.name)))


def encode(
    src: ConceptSource, pos_acts: np.ndarray, neg_acts: np.ndarray, check: SimilarityCheck, seed: int,
) -> Encoded:
    """The CAVs of one concept at one layer (pos_acts, neg_acts: the layer's activations of the two sets)."""
    pos_feats = features(np.asarray(pos_acts), "pooled")
    neg_feats = features(np.asarray(neg_acts), "pooled")
    vectors, accuracies = [], []
    for r in range(check.runs):
        run_seed = derive_seed(seed, "cav", src.name, str(r))
        rng = np.random.default_rng(run_seed)
        pos = _draw(src.pos_rows, check.set_size, rng)
        neg = _draw(src.neg_rows, check.set_size, rng)
        cav = train_cav(pos_feats[pos], neg_feats[neg], check.cav, run_seed)
        vectors.append(cav.vector.astype(np.float64))
        accuracies.append(cav.accuracy)
    mean = np.mean(vectors, axis=0)
    mean = mean / max(float(np.linalg.norm(mean)), 1e-12)
    rows = map_rows(src, check.map_images, seed)
    return Encoded(accuracy=float(np.mean(accuracies)), vector=mean,
                   maps=concept_map(np.asarray(pos_acts)[rows], mean))


def encode_all(
    check: SimilarityCheck, ctx: Context, role: str, layers: list[str], srcs: list[ConceptSource], seed: int,
) -> dict[str, dict[str, Encoded]]:
    """{concept: {layer: Encoded}} of one model; each image set's activations in one forward pass (the store)."""
    model = ctx.models[role]
    acts: dict[str, dict[str, np.ndarray]] = {}

    def of(images: data.ImageSet) -> dict[str, np.ndarray]:
        if images.fingerprint not in acts:
            acts[images.fingerprint] = ctx.store.acts(model, layers, images)
        return acts[images.fingerprint]

    out: dict[str, dict[str, Encoded]] = {}
    for src in srcs:
        pos, neg = of(src.positives), of(src.negatives)
        out[src.name] = {layer: encode(src, pos[layer], neg[layer], check, seed) for layer in layers}
    return out
