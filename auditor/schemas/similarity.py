"""The `similarity` check: where each concept lives in the two models (concept similarity at relative depth,
Mikriukov et al. 2023) and how alike their layers are as whole representations (linear and debiased CKA)
(METHODS.md, cross-model layer similarity)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from auditor.schemas.common import FolderSpec, Severity, Strict, compare_flags


class SimilarityRequirement(Strict):
    """`{concept: circle, max_depth_shift: 0.25}`: the concept's best relative depth differs by at most this much
    between the two models; `{min_cka_at_matched_depth: 0.5}`: every layer of the first model has CKA at least this
    with the layer of the second model nearest in relative depth."""

    concept: str | None = None
    max_depth_shift: float | None = Field(default=None, ge=0, le=1)
    min_cka_at_matched_depth: float | None = Field(default=None, ge=-1, le=1)
    variant: Literal["linear", "debiased"] = "linear"  # which CKA `min_cka_at_matched_depth` reads

    @model_validator(mode="after")
    def _one_kind(self) -> "SimilarityRequirement":
        if (self.max_depth_shift is None) == (self.min_cka_at_matched_depth is None):
            raise ValueError("a requirement needs exactly one of `max_depth_shift` (with `concept`) and "
                             "`min_cka_at_matched_depth`")
        if self.max_depth_shift is not None and self.concept is None:
            raise ValueError("`max_depth_shift` needs `concept` (whose best depth is compared)")
        if self.min_cka_at_matched_depth is not None and self.concept is not None:
            raise ValueError("`min_cka_at_matched_depth` is about whole layers: it takes no `concept`")
        return self


class SimilarityCheck(Strict):
    id: str
    method: Literal["similarity"]
    severity: Severity = "major"
    description: str = ""
    models: list[str] | None = Field(default=None, min_length=2, max_length=2)  # default: the policy's two models
    layers: dict[str, list[str]] | None = None  # per model, default the policy's `layers`
    # Labelled concepts, from two sources: folders under data.concepts (each against the random pool, as TCAV),
    # and columns of a probe-set labels CSV (images labelled 1 against those labelled 0, as INVERT reads it).
    concepts: list[str] = []
    labels: str | None = None  # CSV: image path (relative to the CSV's folder), then one 0/1 column per concept
    label_concepts: list[str] = []  # columns of `labels`
    # The images both models see for CKA: a folder; default the labels' images, else the random pool.
    images: FolderSpec | None = None
    cka_images: int = Field(default=500, ge=4)  # at most this many (a seeded subsample)
    map_images: int = Field(default=50, ge=2)  # images of the concept (positives) whose concept maps are compared
    cav: Literal["logistic", "sgd", "mean"] = "logistic"
    runs: int = Field(default=5, ge=1, le=50)  # CAVs per (model, layer, concept), each on its own draw and split
    set_size: int = Field(default=50, ge=6)  # concept (and non-concept) images per CAV
    require: list[SimilarityRequirement] = []

    @model_validator(mode="after")
    def _consistent(self) -> "SimilarityCheck":
        if not self.concepts and not self.label_concepts:
            raise ValueError("needs `concepts` (folders under data.concepts) or `label_concepts` (columns of `labels`)")
        if self.label_concepts and self.labels is None:
            raise ValueError("`label_concepts` needs `labels` (the CSV whose columns they are)")
        if self.labels is not None and not self.label_concepts:
            raise ValueError("`labels` is set but `label_concepts` is not (which columns are concepts?)")
        names = list(self.concepts) + list(self.label_concepts)
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"concept {twice[0]!r} is named twice (in `concepts` and/or `label_concepts`)")
        for j, r in enumerate(self.require):
            if r.concept is not None and r.concept not in names:
                raise ValueError(f"require[{j}].concept: {r.concept!r} is not one of the check's concepts "
                                 f"({', '.join(names)})")
        return self

    @property
    def all_concepts(self) -> list[str]:
        """Folder concepts, then label concepts: the order of the findings and figures."""
        return list(self.concepts) + list(self.label_concepts)


@dataclass(frozen=True)
class ConceptDepthFinding:
    """One concept's CAV at one layer of one model: how well the layer separates it, and how deep the layer is."""

    concept: str
    model: str
    layer: str
    relative_depth: float
    cav_accuracy: float  # held-out accuracy, mean over the runs
    learned: bool  # cav_accuracy >= the learned threshold (0.6, as TCAV)
    best: bool  # the model's best layer for the concept (highest accuracy, ties to the shallower)
    kind: str = "concept"


@dataclass(frozen=True)
class CkaFinding:
    """Linear CKA and debiased CKA between a layer of one model and a layer of the other, on the same images."""

    model_a: str
    layer_a: str
    model_b: str
    layer_b: str
    relative_depth_a: float
    relative_depth_b: float
    cka: float
    cka_debiased: float
    matched: bool  # layer_b is the layer of model_b nearest in relative depth to layer_a
    kind: str = "cka"


@dataclass(frozen=True)
class MapFinding:
    """How alike two (model, layer) pairs map a concept over the same images (correlation of concept maps)."""

    concept: str
    model_a: str
    layer_a: str
    model_b: str
    layer_b: str
    map_similarity: float
    kind: str = "map"


CONCEPT_KEY = ("kind", "concept", "model", "layer")
CKA_KEY = ("kind", "model_a", "layer_a", "model_b", "layer_b")
MAP_KEY = ("kind", "concept", "model_a", "layer_a", "model_b", "layer_b")


def compare_concept(old: dict, new: dict) -> tuple[list[str], tuple[str, ...], str | None]:
    changes = compare_flags(old, new, "learned", "concept now learned", "concept no longer learned")
    changes += compare_flags(old, new, "best", "became the best layer", "no longer the best layer")
    return changes, ("cav_accuracy", "learned", "best"), "cav_accuracy"


def compare_cka(old: dict, new: dict) -> tuple[list[str], tuple[str, ...], str | None]:
    return compare_flags(old, new, "matched", "now matched in depth", "no longer matched in depth"), (
        "cka", "cka_debiased"), "cka_debiased"


def compare_map(old: dict, new: dict) -> tuple[list[str], tuple[str, ...], str | None]:
    return [], ("map_similarity",), "map_similarity"
