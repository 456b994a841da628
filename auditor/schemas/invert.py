"""The `invert` check: INVERT neuron labels and spurious-correlation checks (METHODS.md, INVERT)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from auditor.schemas.artifact_probe import ProbeFinding
from auditor.schemas.artifact_probe import compare as compare_probe  # its probe findings compare as the probe's
from auditor.schemas.common import ArtifactSpec, FolderSpec, Severity, Strict, compare_flags


class InvertRequirement(Strict):
    model: str = "candidate"  # a role, or "all"
    max_flagged_units: int | None = Field(default=None, ge=0)  # units explained by a forbidden concept
    max_reliant_classes: int | None = Field(default=None, ge=0)  # classes whose logit the pasted artifact moves

    @model_validator(mode="after")
    def _says_something(self) -> "InvertRequirement":
        if self.max_flagged_units is None and self.max_reliant_classes is None:
            raise ValueError("a requirement needs `max_flagged_units` or `max_reliant_classes`")
        return self


class InvertCheck(Strict):
    id: str
    method: Literal["invert"]
    severity: Severity = "major"
    description: str = ""
    labels: str  # CSV: image path (relative to the CSV's folder), then one 0/1 column per concept
    forbidden: list[str] = []  # spurious concepts (columns of the CSV) that must not explain a unit
    classes: list[str] = []  # logits the artifact probe tests; default every class
    models: list[str] | None = None
    layers: dict[str, list[str]] | None = None  # default: the policy's `layers`
    reduce: Literal["mean", "max"] = "mean"  # one scalar per unit and image (spatial mean or max)
    formula_length: int = Field(default=3, ge=1, le=5)  # L
    beam: int = Field(default=3, ge=1, le=20)  # B
    # Fraction of the search images a formula must hold for; None: max(0.005, 30 / search images).
    min_fraction: float | None = Field(default=None, gt=0, lt=1)
    max_fraction: float = Field(default=0.5, gt=0, le=1)
    limit_search: int | None = Field(default=None, ge=1)  # candidate literals per unit (by 2|AUC - 0.5|)
    tau: float = Field(default=0.85, gt=0.5, lt=1)  # held-out AUC at or above which a forbidden unit is flagged
    alpha: float = Field(default=0.05, gt=0, lt=1)
    top_images: int = Field(default=8, ge=1, le=16)  # top-activating probe images shown per flagged unit
    artifact: ArtifactSpec | None = None  # the logit-level probe; pasted onto `artifact_images` (default classes)
    artifact_images: FolderSpec | None = None
    images_per_class: int | None = Field(default=100, ge=1)
    threshold: float = Field(default=0.7, gt=0.5, lt=1)
    direction: Literal["raise", "both"] = "raise"
    require: list[InvertRequirement] = []

    @model_validator(mode="after")
    def _consistent(self) -> "InvertCheck":
        if self.min_fraction is not None and self.min_fraction > self.max_fraction:
            raise ValueError(f"min_fraction ({self.min_fraction:g}) is above max_fraction ({self.max_fraction:g})")
        for j, r in enumerate(self.require):
            if r.max_flagged_units is not None and not self.forbidden:
                raise ValueError(f"require[{j}].max_flagged_units needs `forbidden` (the concepts no unit may follow)")
            if r.max_reliant_classes is not None and self.artifact is None:
                raise ValueError(f"require[{j}].max_reliant_classes needs `artifact` (the image the probe pastes)")
        if self.artifact_images is not None and self.artifact is None:
            raise ValueError("artifact_images is set but `artifact` is not (nothing to paste)")
        if len(set(self.forbidden)) != len(self.forbidden):
            raise ValueError("forbidden lists a concept twice")
        return self


@dataclass(frozen=True)
class UnitFinding:
    """One unit of an audited layer and the formula over the probe labels that explains it best."""

    model: str
    layer: str
    unit: int
    formula: str | None
    length: int
    auc: float | None  # held-out
    search_auc: float | None
    support: int
    fraction: float | None
    search_support: int
    p_value: float
    p_adjusted: float | None
    direction: str | None
    forbidden: list[str]  # forbidden concepts in the formula (positive literals)
    suppressed_by: list[str]  # forbidden concepts negated in the formula
    flagged: bool
    kind: str = "unit"


@dataclass(frozen=True)
class InvertProbeFinding(ProbeFinding):
    """The check's logit-level artifact probe, one (model, class)."""

    kind: str = "probe"


def compare_unit(old: dict, new: dict) -> tuple[list[str], tuple[str, ...], str | None]:
    changes = compare_flags(old, new, "flagged", "became flagged", "no longer flagged")
    if old.get("forbidden") != new.get("forbidden"):
        changes.append(f"forbidden concepts in its formula: {old.get('forbidden')} -> {new.get('forbidden')}")
    return changes, ("formula", "auc", "p_adjusted", "flagged"), "auc"
