"""The `sacv` check: spatially aware CAVs (METHODS.md, SACV) — where in the image a concept acts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from auditor.schemas.tcav import ConceptFinding
from auditor.schemas.tcav import compare as compare  # SACV findings compare as TCAV's

from auditor.schemas.common import DEFAULT_STATISTIC, ConceptRequirement, FolderSpec, Severity, Strict


class SacvCheck(Strict):
    id: str
    method: Literal["sacv"]
    severity: Severity = "major"
    description: str = ""
    classes: list[str] = Field(min_length=1)
    concepts: list[str] = Field(min_length=1)
    models: list[str] | None = None  # default: every model of the policy
    layers: dict[str, list[str]] | None = None  # default: the policy's `layers` (conv layers: C x H x W)
    random_sets: int = Field(default=10, ge=2, le=100)
    set_size: int = Field(default=50, ge=10)
    # Class images: one subfolder per class (default data.classes), capped per class by a seeded subsample.
    images: FolderSpec | None = None
    # Object masks for them (masks/<class>/<same file name>); default data.masks when `images` is the default.
    masks: FolderSpec | None = None
    # Where each concept image shows its concept (concept_masks/<concept>/<same file name>): only those positions
    # are concept samples. Without them every position of a concept image is (the paper's choice), which fails
    # for a concept that covers a small part of its images.
    concept_masks: FolderSpec | None = None
    class_images: int | None = Field(default=None, ge=1)
    # Class images whose full contribution maps are computed (the maps, the inside-mask share and the overlays
    # come from these; the spatial TCAV score uses every class image). ONNX maps cost 2 x positions head rows
    # per image.
    map_images: int = Field(default=20, ge=1, le=200)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    top_images: int = Field(default=4, ge=1, le=16)  # class images with map overlays in the report
    # Significance as TCAV's (METHODS.md): `exchangeable` (default; mean per-position CAVs for the concept and the
    # pseudo-concepts alike) or `welch` (the paper's, logistic per-position CAVs).
    test: Literal["exchangeable", "welch"] = "exchangeable"
    statistic: Literal["score", "cosine"] = DEFAULT_STATISTIC
    max_pseudo: int = Field(default=2000, ge=19)
    require: list[ConceptRequirement] = []


@dataclass(frozen=True)
class SacvFinding(ConceptFinding):
    """A TCAV-like cell of the spatial score, with the share of its contribution inside the object masks."""

    inside_mask_share: float | None = None
