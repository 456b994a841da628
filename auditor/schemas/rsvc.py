"""The `rsvc` check: concepts the two models share and those one of them has alone (METHODS.md, RSVC)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from auditor.schemas.common import FolderSpec, Severity, Strict, compare_flags


class RsvcRequirement(Strict):
    """A requirement on one model's concepts as the other model predicts them (every class of the check)."""

    model: str = "reference"  # whose concepts: "reference" = the reference's concepts looked for in the other
    # At most this many concepts of `model` that are important (importance > tau_imp) and unique to it
    # (similarity < tau_sim in the other model), summed over the check's classes.
    max_unique_important: int | None = Field(default=None, ge=0)
    # In every class, the mean similarity of `model`'s concepts in the other model is at least this.
    min_mean_similarity: float | None = Field(default=None, ge=-1, le=1)

    @model_validator(mode="after")
    def _says_something(self) -> "RsvcRequirement":
        if self.max_unique_important is None and self.min_mean_similarity is None:
            raise ValueError("a requirement needs `max_unique_important` or `min_mean_similarity`")
        return self


class RsvcCheck(Strict):
    id: str
    method: Literal["rsvc"]
    severity: Severity = "major"
    description: str = ""
    classes: list[str] = Field(min_length=1)
    models: list[str] | None = Field(default=None, min_length=2, max_length=2)  # default: the policy's two models
    # Per model the layers compared: the last one is the concept layer; all of them feed the layerwise heat map.
    layers: dict[str, list[str]] | None = None
    # A folder of class subfolders (named as data.classes.names) to draw the images from; default data.classes.
    # Every subfolder is a candidate: an image enters class c when either model predicts c for it.
    images: FolderSpec | None = None
    concepts: int = Field(default=10, ge=2, le=100)  # K of the NMF
    extraction_images: int = Field(default=100, ge=2)
    evaluation_images: int = Field(default=100, ge=2)
    patch: float = Field(default=64 / 224, gt=0, le=1)  # crop side / image side
    stride: float = Field(default=0.8, gt=0, le=1)  # stride / crop side
    lasso_alpha: float = Field(default=0.1, gt=0)
    folds: int = Field(default=5, ge=2, le=20)  # cross-validation over the evaluation images
    ig_steps: int = Field(default=30, ge=2, le=500)  # integrated-gradient intervals (trapezoid rule)
    tau_sim: float = Field(default=0.3, ge=-1, le=1)
    tau_imp: float = Field(default=0.3, ge=0, le=1)
    require: list[RsvcRequirement] = []


@dataclass(frozen=True)
class RsvcFinding:
    """One concept of `model` (an NMF factor of its concept layer) as the `other` model predicts it."""

    model: str
    other: str
    layer: str
    other_layer: str
    cls: str  # "class" in results.json
    concept: int  # the NMF factor's index: comparable between audits while the model's file is unchanged
    similarity: float | None
    self_similarity: float | None
    importance: float | None
    importance_raw: float | None
    unique: bool
    important: bool


def compare(old: dict, new: dict) -> tuple[list[str], tuple[str, ...], str | None]:
    old_ui = {"ui": bool(old.get("unique")) and bool(old.get("important"))}
    new_ui = {"ui": bool(new.get("unique")) and bool(new.get("important"))}
    changes = compare_flags(old_ui, new_ui, "ui", "became unique and important", "no longer unique and important")
    return changes, ("similarity", "importance", "unique", "important"), "similarity"
