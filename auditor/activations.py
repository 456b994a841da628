"""The activation store: extract once, reuse everywhere, cache on disk by content key.

A key is (model sha256, layer, image-set fingerprint, preprocessing): two models with the same layer names
never see each other's arrays, and a changed file, model or preprocessing is a new key, never a stale hit.
Arrays live in memory while the audit runs and as .npy files (memory-mapped on read) under the cache dir, each
with a sha256 of its file beside it (`<key>.sha256`): a file whose header survives but whose data was damaged
(a zeroed block, a bad disk) fails the digest and is recomputed, never served.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from auditor import data
from auditor.errors import require_finite
from auditor.models.base import Model, has_layer_grads


@dataclass
class StoreStats:
    extracted: int = 0  # (model, layer, set) arrays computed by a forward pass
    from_disk: int = 0
    from_memory: int = 0
    forward_passes: int = 0  # set-level passes (one pass serves every layer requested with it)
    gradients: int = 0  # (model, layer, set, target) gradient arrays computed by a pass (full maps or pooled)
    backward_passes: int = 0  # set-level gradient passes (with `layer_grads`, one serves every layer)
    gradients_from_disk: int = 0
    log: list[str] = field(default_factory=list)


def _digest_path(path: Path) -> Path:
    return path.with_suffix(".sha256")


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _damaged(path: Path) -> str | None:
    """Why the cached array at `path` must not be served, or None when its digest matches."""
    try:
        expected = _digest_path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return "has no readable digest"
    try:
        actual = _file_digest(path)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    return None if actual == expected else "does not match its digest"


def _key(*parts: str) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def pooled_basis(shape: tuple[int, ...]) -> np.ndarray:
    """Directions e_c spread over every position: (C, *shape), so that the directional derivative along
    basis c is sum over (h, w) of d logit / d a[c, h, w]. For a dense layer it is the identity."""
    c = shape[0]
    basis = np.zeros((c, *shape), np.float32)
    basis[np.arange(c), np.arange(c)] = 1.0
    return basis


class Store:
    """Memory -> disk cache -> extract, for activations and logit gradients (full maps and pooled)."""

    def __init__(self, cache_dir: Path, pre: data.Preprocessing, log: Callable[[str], None] = lambda _m: None) -> None:
        self.cache_dir = Path(cache_dir)
        self.pre = pre
        self.stats = StoreStats()
        self._log = log
        self._mem: dict[str, np.ndarray] = {}
        self._images: dict[str, np.ndarray] = {}

    def images(self, images: data.ImageSet) -> np.ndarray:
        """Decoded images of a set, (n, 3, H, W); decoded once per audit."""
        if images.fingerprint not in self._images:
            self._images[images.fingerprint] = data.load(images, self.pre)
        return self._images[images.fingerprint]

    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.npy"

    def _get(self, key: str) -> np.ndarray | None:
        if key in self._mem:
            self.stats.from_memory += 1
            return self._mem[key]
        path = self._path(key)
        if path.is_file():
            reason = _damaged(path)
            if reason == "has no readable digest":  # written before digests existed, or its digest was lost
                self._log(f"cache file {path} has no digest; recomputing it")
                return None
            if reason is not None:
                # Always said, even with --quiet: the cache was not what this run wrote, and a silent recompute
                # would hide a failing disk.
                print(f"warning: cache file {path} {reason}; recomputing it", file=sys.stderr)
                return None
            try:
                arr = np.load(path, mmap_mode="r")
            except (ValueError, OSError):
                return None  # unreadable despite its digest (e.g. removed meanwhile): recompute and overwrite
            self._mem[key] = arr
            return arr
        return None

    def _put(self, key: str, arr: np.ndarray, what: str = "") -> np.ndarray:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if what:  # found where they first appear, so the check's ERROR names the model and layer
            require_finite(arr, what)
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a run killed mid-write never leaves a file that looks complete. The digest goes in
        # first, so that an array file never exists without the digest it must match.
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, arr)
        digest_tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.sha256")
        digest_tmp.write_text(_file_digest(tmp), encoding="ascii")
        digest_tmp.replace(_digest_path(path))
        tmp.replace(path)
        self._mem[key] = arr
        return arr

    def acts(self, model: Model, layers: Sequence[str], images: data.ImageSet) -> dict[str, np.ndarray]:
        """{layer: (n, *layer_shape)} for every requested layer; the missing ones in one forward pass."""
        return self.derived_acts(model, layers, images.name, images.fingerprint, lambda: self.images(images))

    def derived_acts(
        self, model: Model, layers: Sequence[str], name: str, fingerprint: str, inputs: Callable[[], np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Like `acts`, for inputs made in memory (RSVC patches, pasted probe images): `fingerprint` must
        identify their content (e.g. the source set's fingerprint plus every parameter that made them);
        `inputs()` is called only when some layer is missing from memory and disk."""
        keys = {layer: _key("acts", model.sha256, layer, fingerprint, self.pre.key()) for layer in layers}
        out, missing = self._cached(keys, "from_disk")
        if missing:
            x = inputs()
            self._log(f"extract {model.name} [{', '.join(missing)}] on {name} ({len(x)} images)")
            fresh = model.activations(x, missing)
            self.stats.forward_passes += 1
            for layer in missing:
                out[layer] = self._put(keys[layer], fresh[layer], f"model {model.name}, layer {layer}, activations of {name}")
                self.stats.extracted += 1
        return out

    def _grad_key(self, kind: str, model: Model, layer: str, images: data.ImageSet, target: int) -> str:
        return _key(kind, model.sha256, layer, images.fingerprint, self.pre.key(), str(target))

    def _cached(self, keys: dict[str, str], disk_counter: str) -> tuple[dict[str, np.ndarray], list[str]]:
        """The arrays of `keys` ({layer: key}) found in memory or on disk, and the layers missing; disk hits are
        counted in `self.stats.<disk_counter>`."""
        found: dict[str, np.ndarray] = {}
        missing = []
        for layer, key in keys.items():
            in_mem = key in self._mem
            arr = self._get(key)
            if arr is None:
                missing.append(layer)
            else:
                found[layer] = arr
                if not in_mem:
                    setattr(self.stats, disk_counter, getattr(self.stats, disk_counter) + 1)
        return found, missing

    def grad_maps(
        self, model: Model, layers: Sequence[str], images: data.ImageSet, target: int
    ) -> dict[str, np.ndarray]:
        """d logit[target] / d a at every position: {layer: (n, *layer_shape)}, cached like activations.

        Models with `layer_grads` (torch) compute every missing layer in one forward + one backward pass per
        batch, and the activations of that pass are cached as `acts` would cache them (ask for the gradients
        first to save the set's own forward pass). Others go through the head one layer at a time (`head.grad`:
        for ONNX, finite differences along every element of the layer, 2 x size passes; prefer `pooled_grads`
        or `head.directional` there)."""
        layers = list(dict.fromkeys(layers))
        keys = {layer: self._grad_key("grad", model, layer, images, target) for layer in layers}
        out, missing = self._cached(keys, "gradients_from_disk")
        if missing:
            x = self.images(images)
            self._log(f"gradients {model.name} [{', '.join(missing)}] on {images.name} for class {target}")
            if has_layer_grads(model):
                acts, fresh = model.layer_acts_and_grads(x, missing, target)
                self.stats.backward_passes += 1
                # The pass computed the activations too: cached under the key `derived_acts` reads, so that
                # asking for them next costs no forward pass of their own.
                for layer in missing:
                    acts_key = _key("acts", model.sha256, layer, images.fingerprint, self.pre.key())
                    if acts_key not in self._mem and not self._path(acts_key).is_file():
                        self._put(acts_key, acts[layer], f"model {model.name}, layer {layer}, activations of {images.name}")
                        self.stats.extracted += 1
            else:
                acts = self.acts(model, missing, images)
                fresh = {}
                for layer in missing:
                    fresh[layer] = model.head(layer).grad(np.asarray(acts[layer]), x, target)
                    self.stats.backward_passes += 1
            for layer in missing:
                out[layer] = self._put(
                    keys[layer], fresh[layer], f"model {model.name}, layer {layer}, gradients of class {target} on {images.name}"
                )
                self.stats.gradients += 1
        return {layer: out[layer] for layer in layers}

    def pooled_grads_many(
        self, model: Model, layers: Sequence[str], images: data.ImageSet, target: int
    ) -> dict[str, np.ndarray]:
        """d logit[target] / d a summed over positions, {layer: (n, C)}: computed once per (model, layer, set,
        target) and reused for every CAV of every concept and random set (all scores are one matrix product).

        Models with `layer_grads` get every missing layer from one pass (`grad_maps`, whose full maps stay
        cached too); others take one head pass per layer along the C pooled directions."""
        layers = list(dict.fromkeys(layers))
        keys = {layer: self._grad_key("pooled-grad", model, layer, images, target) for layer in layers}
        out, missing = self._cached(keys, "gradients_from_disk")
        if missing and has_layer_grads(model):
            maps = self.grad_maps(model, missing, images, target)
            for layer in missing:
                g = np.asarray(maps[layer])
                # The same sum the pooled basis gives, in float64 like the head's contraction.
                out[layer] = self._put(
                    keys[layer], g.reshape(len(g), g.shape[1], -1).sum(axis=2, dtype=np.float64),
                    f"model {model.name}, layer {layer}, gradients of class {target} on {images.name}",
                )
        elif missing:
            acts = self.acts(model, missing, images)
            for layer in missing:
                a = np.asarray(acts[layer])
                self._log(f"gradients {model.name} {layer} on {images.name} for class {target}")
                grads = model.head(layer).directional(a, self.images(images), pooled_basis(a.shape[1:]), target)
                self.stats.backward_passes += 1
                self.stats.gradients += 1
                out[layer] = self._put(
                    keys[layer], grads, f"model {model.name}, layer {layer}, gradients of class {target} on {images.name}"
                )
        return {layer: out[layer] for layer in layers}

    def pooled_grads(self, model: Model, layer: str, images: data.ImageSet, target: int) -> np.ndarray:
        """`pooled_grads_many` for one layer: (n, C)."""
        return self.pooled_grads_many(model, [layer], images, target)[layer]
