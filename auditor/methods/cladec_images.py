"""ClaDec's images: the training set (class subfolders, labels from the folder), the paired artifact images that
retention is measured on, the seeded grid images the report shows, and their PNG encoding for results.json."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from auditor import data
from auditor.context import Context, derive_seed, subsample
from auditor.methods.cladec_core import from_model
from auditor.methods.cladec_measure import retention_pairs
from auditor.policy import Policy
from auditor.schemas.cladec import CladecCheck


@dataclass(frozen=True)
class Training:
    """The images every decoder of the check is trained on, the same for every model and layer."""

    images: data.ImageSet
    labels: np.ndarray  # (n,) logit index of each image's class folder


@dataclass(frozen=True)
class Paired:
    """Artifact-pasted and neutral versions of the same clean images (artifact_probe's pairs), with the boxes."""

    artifact: np.ndarray  # (n, 3, H, W) normalised, as the models take them
    neutral: np.ndarray
    boxes: np.ndarray  # (n, 4) row, col, height, width
    fingerprint: str  # identifies the pairs' content (source images + artifact spec + seed)


@dataclass(frozen=True)
class Grid:
    """The images of the report's grids: rows of `training` (indices into the training set) then rows of the
    pairs' artifact versions (indices into the pairs)."""

    training: tuple[int, ...]
    pasted: tuple[int, ...]


def class_folders(root: Path, names: tuple[str, ...] | list[str]) -> list[str]:
    """The classes (in logit order) with a subfolder under `root`."""
    return [k for k in names if (root / k).is_dir()]


def images_root(check: CladecCheck, policy: Policy) -> Path:
    return policy.resolve(check.images.folder if check.images is not None else policy.data.classes.folder)


def paste_root(check: CladecCheck, policy: Policy) -> Path:
    return policy.resolve(
        check.artifact_images.folder if check.artifact_images is not None else policy.data.classes.folder
    )


def _per_class(root: Path, names: tuple[str, ...], per_class: int, seed: int, pre: data.Preprocessing, what: str) -> tuple[list[Path], list[str]]:
    paths: list[Path] = []
    classes: list[str] = []
    for k in class_folders(root, names):
        s = subsample(data.folder_set(f"{what}:{k}", root / k, pre), per_class, derive_seed(seed, what, k), pre)
        paths.extend(s.paths)
        classes.extend([k] * len(s.paths))
    return paths, classes


def training(check: CladecCheck, ctx: Context, seed: int) -> Training:
    names = ctx.policy.data.classes.names
    paths, classes = _per_class(images_root(check, ctx.policy), names, check.images_per_class, seed, ctx.pre, "train")
    labels = np.asarray([names.index(k) for k in classes], dtype=np.int64)
    return Training(data.image_set(f"cladec-train:{check.id}", paths, ctx.pre), labels)


def pairs(check: CladecCheck, ctx: Context, seed: int) -> Paired | None:
    """The retention pairs: `pairs_per_class` clean images per class folder, pasted as the probe pastes them."""
    if check.artifact is None:
        return None
    names = ctx.policy.data.classes.names
    paths, _ = _per_class(paste_root(check, ctx.policy), names, check.pairs_per_class, seed, ctx.pre, "pairs")
    artifact_path = ctx.policy.resolve(check.artifact.image)
    position_seed = derive_seed(seed, "positions")
    made, boxes = retention_pairs(paths, check.artifact, artifact_path, ctx.pre, position_seed)
    source = data.image_set("pairs", paths + [artifact_path], ctx.pre)
    spec = json.dumps(check.artifact.model_dump(), sort_keys=True)
    return Paired(made.artifact, made.neutral, boxes, f"{source.fingerprint}:{spec}:{position_seed}")


def grid(n_training: int, n_pairs: int, count: int, seed: int) -> Grid:
    """Seeded grid rows: half of them pasted images when there are pairs, the rest training images."""
    rng = np.random.default_rng(seed)
    n_pasted = min(count // 2, n_pairs) if n_pairs else 0
    n_train = min(count - n_pasted, n_training)
    train = sorted(rng.choice(n_training, size=n_train, replace=False).tolist())
    pasted = sorted(rng.choice(n_pairs, size=n_pasted, replace=False).tolist()) if n_pasted else []
    return Grid(tuple(int(i) for i in train), tuple(int(i) for i in pasted))


def grid_inputs(x_train: np.ndarray, paired: Paired | None, g: Grid) -> np.ndarray:
    """The grid's images, normalised (n, 3, H, W): training rows, then pasted rows."""
    rows = [x_train[list(g.training)]]
    if paired is not None and g.pasted:
        rows.append(paired.artifact[list(g.pasted)])
    return np.concatenate(rows)


def png_b64(image01: np.ndarray) -> str:
    """A (3, H, W) [0, 1] image as base64 PNG (results.json carries the grids: the report draws from it alone)."""
    rgb = (np.clip(image01.transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def pngs(images01: np.ndarray) -> list[str]:
    return [png_b64(im) for im in images01]


def originals01(x: np.ndarray, pre: data.Preprocessing) -> np.ndarray:
    return from_model(x, pre)
