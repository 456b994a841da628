"""What a method's `run(check, ctx)` gets: the policy, the loaded models, the image sets and the store."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from auditor import data
from auditor.activations import Store
from auditor.models.base import Model
from auditor.policy import Policy


@dataclass(frozen=True)
class ImageSets:
    classes: dict[str, data.ImageSet]
    concepts: dict[str, data.ImageSet]
    random_pool: data.ImageSet | None
    masks: dict[str, tuple] | None = None  # class -> mask paths aligned with the class set, where given
    own: tuple[data.ImageSet, ...] = ()  # files single checks read (their own folders, masks, artifact): provenance


@dataclass(frozen=True)
class Context:
    policy: Policy
    models: dict[str, Model]  # role -> model
    sets: ImageSets
    store: Store
    log: Callable[[str], None]

    @property
    def pre(self) -> data.Preprocessing:
        return self.store.pre


def derive_seed(seed: int, *parts: str) -> int:
    """A stable 31-bit seed per (policy seed, check, purpose): runs are reproducible and checks independent."""
    digest = hashlib.sha256(("\x1f".join([str(seed), *parts])).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def subsample(images: data.ImageSet, limit: int | None, seed: int, pre: data.Preprocessing) -> data.ImageSet:
    """A seeded subset of at most `limit` images (the set itself when it is small enough)."""
    if limit is None or len(images) <= limit:
        return images
    keep = sorted(np.random.default_rng(seed).choice(len(images), size=limit, replace=False))
    return data.image_set(images.name, [images.paths[i] for i in keep], pre)
