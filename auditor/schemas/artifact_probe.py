"""The `artifact_probe` check: does pasting an artifact move class logits (METHODS.md, INVERT item 4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from auditor.schemas.common import ArtifactSpec, FolderSpec, Strict as _Strict, compare_flags


class ProbeRequirement(_Strict):
    model: str = "candidate"  # a role, or "all"
    max_reliant_classes: int = Field(default=0, ge=0)


class ArtifactProbeCheck(_Strict):
    """Causal probe: paste the artifact (and, as a control, a neutral patch of the image's mean colour at the
    same place) onto clean images and ask whether class logits move. Decides forbidden-concept requirements."""

    id: str
    method: Literal["artifact_probe"]
    severity: Literal["critical", "major", "minor"] = "major"
    description: str = ""
    artifact: ArtifactSpec
    images: FolderSpec | None = None  # clean images to paste onto; default: every class folder of data.classes
    classes: list[str] = []  # logits to test; default every class
    models: list[str] | None = None
    images_per_class: int | None = Field(default=100, ge=1)  # cap per class folder (seeded subsample)
    threshold: float = Field(default=0.7, gt=0.5, lt=1)  # AUC above it: the artifact raises the class logit
    direction: Literal["raise", "both"] = "raise"  # both: AUC below 1 - threshold (suppression) also counts
    require: list[ProbeRequirement] = []


@dataclass(frozen=True)
class ProbeFinding:
    """One (model, class) of the probe: AUC of the class logit, artifact vs neutral patch."""

    model: str
    cls: str  # "class" in results.json
    artifact: str  # the artifact image as the policy names it
    auc: float
    reliant: bool
    effect: str  # "raises" | "suppresses" | "none"
    mean_logit_shift: float
    flipped_to_class: float
    prediction_changed: float
    n_pairs: int


def compare(old: dict, new: dict) -> tuple[list[str], tuple[str, ...], str | None]:
    return compare_flags(old, new, "reliant", "became reliant", "no longer reliant"), ("auc", "reliant"), "auc"
