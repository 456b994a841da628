"""The `cladec` check: what a layer keeps of the image, decoded back to pixels (METHODS.md, ClaDec)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from auditor.schemas.common import ArtifactSpec, FolderSpec, Severity, Strict


class TorchTwin(Strict):
    """A torch version of an ONNX model (the same network and weights): ClaDec's classification term needs
    gradients through the classifier and the reference auto-encoder needs its architecture, which ONNX does not
    give. The check compares the twin's logits with the ONNX model's before anything runs."""

    path: str  # TorchScript (.pt), torch.export (.pt2)
    layers: list[str] = Field(min_length=1)  # the twin's names of the check's layers of this model, in order


class CladecRequirement(Strict):
    """Artifact retention of the ClaDec decoder at the model's last listed layer (needs `artifact`):
    `max_retention`: retention <= the bound; `max_retention_vs: <role>`: retention <= that model's retention at
    its last listed layer + `margin`."""

    model: str = "candidate"  # a role, or "all"
    max_retention: float | None = Field(default=None, ge=0)
    max_retention_vs: str | None = None  # another role
    margin: float = Field(default=0.0, ge=0)  # with max_retention_vs

    @model_validator(mode="after")
    def _one_bound(self) -> "CladecRequirement":
        if (self.max_retention is None) == (self.max_retention_vs is None):
            raise ValueError("a requirement needs exactly one of `max_retention` and `max_retention_vs`")
        if self.max_retention_vs is not None and self.max_retention_vs == self.model:
            raise ValueError("max_retention_vs must name another model than `model`")
        if self.max_retention_vs is not None and self.model == "all":
            raise ValueError("max_retention_vs compares one model with another: `model` cannot be 'all'")
        if self.max_retention is not None and "margin" in self.model_fields_set:
            raise ValueError("`margin` goes with max_retention_vs only")
        return self


class CladecCheck(Strict):
    """ClaDec: a decoder trained on a frozen layer's activations reconstructs the image; contrasted with a
    reference auto-encoder of the same shape trained to keep everything."""

    id: str
    method: Literal["cladec"]
    severity: Severity = "major"
    description: str = ""
    models: list[str] | None = None
    layers: dict[str, list[str]] | None = None  # default: the policy's `layers`; requirements read the last
    images: FolderSpec | None = None  # training images, one subfolder per class; default data.classes
    images_per_class: int = Field(default=60, ge=1)  # seeded subsample per class folder
    torch_twins: dict[str, TorchTwin] = {}  # per ONNX model role; without one: alpha 0, no reference AE
    alpha: float = Field(default=0.001, ge=0, lt=1)  # weight of the classification term
    epochs: int = Field(default=8, ge=1)
    batch_size: int = Field(default=32, ge=1)
    grid_images: int = Field(default=6, ge=1, le=12)  # images in the report's grids (half with the artifact)
    artifact: ArtifactSpec | None = None  # retention: pasted vs a neutral patch, as artifact_probe pastes it
    artifact_images: FolderSpec | None = None  # clean images to paste onto (class subfolders); default data.classes
    pairs_per_class: int = Field(default=15, ge=1)
    require: list[CladecRequirement] = []

    @model_validator(mode="after")
    def _consistent(self) -> "CladecCheck":
        for j, r in enumerate(self.require):
            if self.artifact is None:
                raise ValueError(f"require[{j}] bounds artifact retention: it needs `artifact`")
        if self.artifact_images is not None and self.artifact is None:
            raise ValueError("artifact_images is set but `artifact` is not (nothing to paste)")
        return self


@dataclass(frozen=True)
class CladecFinding:
    """One (model, layer, decoder): reconstruction fidelity and artifact retention."""

    model: str
    layer: str
    decoder: str  # "cladec" | "reference_ae"
    mse: float  # reconstruction MSE in [0, 1] image space, on the training images
    top1_agreement: float | None  # classifier's top-1 on reconstructions == on originals (None: reference AE)
    retention: float | None  # artifact retention (None: no artifact)


def compare(old: dict, new: dict) -> tuple[list[str], tuple[str, ...], str | None]:
    changes = []
    a, b = old.get("retention"), new.get("retention")
    if a is not None and b is not None and abs(b - a) >= 0.1:
        changes.append(f"retention {a:.2f} -> {b:.2f}")
    return changes, ("mse", "top1_agreement", "retention"), "retention"
