"""The activation store: extract once, reuse everywhere, cache on disk by content key.

A key is (model sha256, layer, image-set fingerprint, preprocessing): two models with the same layer names
never see each other's arrays, and a changed file, model or preprocessing is a new key, never a stale hit.
Arrays live as .npy files under the cache dir, each with a sha256 of its file beside it (`<key>.sha256`): a file
whose header survives but whose data was damaged (a zeroed block, a bad disk) fails the digest and is recomputed,
never served. They are served memory-mapped, never copied into memory whole.

Bounded memory (issue 18): a model runs on chunks of a set's images, sized against the run's budget
(auditor.memory), and each chunk's outputs are appended to the array's file as they come, so a set's activations
are never whole in memory; images are decoded a chunk at a time for it. The pipeline calls `release()` between
checks: the memory maps and decoded images a check used are let go (a page of a mapped file that was read counts
in the process's resident set while the map lives). A chunk's size never enters a key.
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

from auditor import data, memory
from auditor.errors import NonFiniteError
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


def _bad_images(chunk: np.ndarray) -> int:
    """Images of a chunk (first axis) with a NaN or infinite value."""
    ok = np.isfinite(chunk)
    if ok.all():
        return 0
    return int((~ok).reshape(len(chunk), -1).any(axis=1).sum()) if chunk.ndim else 1


class _NpyWriter:
    """One cache array written a chunk of images at a time: the .npy header (the whole array's shape, known from
    the first chunk), then the rows in order, then its digest and the atomic rename. The file is what np.save
    writes for the whole array. Plain writes rather than a writable memory map: the dirty pages of a map count
    in the process's resident set until it is closed."""

    def __init__(self, path: Path, n: int, what: str) -> None:
        self.path, self.n, self.what = path, n, what
        self.tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        self.rows = 0
        self.bad = 0
        self._file = None

    def add(self, chunk: np.ndarray) -> None:
        chunk = np.ascontiguousarray(chunk, dtype=np.float32)
        if self.what:  # found where they first appear, so the check's ERROR names the model and layer
            self.bad += _bad_images(chunk)
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish() or abort()
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                      "shape": (self.n, *chunk.shape[1:])}
            np.lib.format.write_array_header_1_0(self._file, header)
        self._file.write(memoryview(chunk).cast("B"))
        self.rows += len(chunk)

    def finish(self) -> np.ndarray:
        if self.bad:
            self.abort()
            raise NonFiniteError(f"{self.what}: NaN or infinite values for {self.bad} of {self.n} images")
        if self.rows != self.n or self._file is None:
            self.abort()
            raise RuntimeError(f"{self.path.name}: {self.rows} rows written of {self.n}")
        self._file.close()
        # The digest goes in first, so that an array file never exists without the digest it must match.
        digest_tmp = self.path.with_name(f"{self.path.stem}.{os.getpid()}.tmp.sha256")
        digest_tmp.write_text(_file_digest(self.tmp), encoding="ascii")
        digest_tmp.replace(_digest_path(self.path))
        self.tmp.replace(self.path)
        return _open(self.path)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
        self.tmp.unlink(missing_ok=True)


def _open(path: Path) -> np.ndarray:
    """A cached array, memory-mapped (an empty one, which cannot be mapped, read)."""
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:
        arr = np.load(path)
        if arr.size:
            raise
        return arr


def _pooled(maps: np.ndarray, rows: slice) -> np.ndarray:
    """Gradient maps of `rows` summed over positions in float64, (m, C); their pages then leave the resident set."""
    g = np.asarray(maps[rows])
    out = g.reshape(len(g), maps.shape[1], -1).sum(axis=2, dtype=np.float64)
    memory.forget(maps)
    return out


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
    """Memory -> disk cache -> extract, for activations and logit gradients (full maps and pooled).

    `max_memory` (bytes; default `memory.default_budget()`) sizes the chunks models run on."""

    def __init__(
        self, cache_dir: Path, pre: data.Preprocessing, log: Callable[[str], None] = lambda _m: None,
        max_memory: int | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.pre = pre
        self.stats = StoreStats()
        self._log = log
        self.max_memory = max_memory if max_memory is not None else memory.default_budget()
        self.chunk_bytes = memory.chunk_bytes(self.max_memory)
        self._mem: dict[str, np.ndarray] = {}  # memory maps served since the last release()
        self._verified: set[str] = set()  # keys whose file this run wrote or checked against its digest
        self._images: dict[str, np.ndarray] = {}

    def release(self) -> None:
        """Let go of the memory maps and decoded images served so far (the pipeline calls it between checks);
        the files stay, and are served again without a second digest check."""
        self._mem.clear()
        self._images.clear()

    def images(self, images: data.ImageSet) -> np.ndarray:
        """Decoded images of a set, (n, 3, H, W); decoded once until the next `release()`."""
        if images.fingerprint not in self._images:
            self._images[images.fingerprint] = data.load(images, self.pre)
        return self._images[images.fingerprint]

    def _rows(self, images: data.ImageSet) -> Callable[[slice], np.ndarray]:
        """The decoded images of `rows` of a set: from the decoded set when a method asked for it whole, else
        decoded for the chunk alone."""
        def rows(s: slice) -> np.ndarray:
            whole = self._images.get(images.fingerprint)
            return whole[s] if whole is not None else data.load(images, self.pre, s)
        return rows

    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.npy"

    def _get(self, key: str) -> np.ndarray | None:
        if key in self._mem:
            self.stats.from_memory += 1
            return self._mem[key]
        path = self._path(key)
        if key in self._verified and path.is_file():
            try:
                self._mem[key] = _open(path)
                self.stats.from_memory += 1
                return self._mem[key]
            except (ValueError, OSError):
                self._verified.discard(key)
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
                arr = _open(path)
            except (ValueError, OSError):
                return None  # unreadable despite its digest (e.g. removed meanwhile): recompute and overwrite
            self._mem[key] = arr
            self._verified.add(key)
            return arr
        return None

    def _writer(self, key: str, n: int, what: str) -> _NpyWriter:
        return _NpyWriter(self._path(key), n, what)

    def _finish(self, key: str, writer: _NpyWriter) -> np.ndarray:
        arr = writer.finish()
        self._mem[key] = arr
        self._verified.add(key)
        return arr

    def _work(self, grads: bool) -> int:
        """The model's working memory per image of this store's input size (memory.GRAD_WORK / FORWARD_WORK)."""
        return 3 * self.pre.size[0] * self.pre.size[1] * 4 * (memory.GRAD_WORK if grads else memory.FORWARD_WORK)

    def _stream(
        self, n: int, run: Callable[[slice], dict[str, np.ndarray]], writers: dict[str, _NpyWriter], work: int
    ) -> None:
        """`run(rows)` on chunks of the n images in order, each output appended to writers[name]. The first
        chunk is sized by the model's working memory alone, the next ones by that plus the first chunk's output
        bytes per image; the outputs of a chunk are let go before the next one runs."""
        size = memory.images_per_chunk(work, self.chunk_bytes)
        start = 0
        try:
            while True:
                rows = slice(start, min(n, start + size))
                out = run(rows)
                for name, w in writers.items():
                    w.add(out[name])
                if start == 0 and rows.stop > 0:
                    per_image = sum(v.nbytes for v in out.values()) // rows.stop
                    size = memory.images_per_chunk(per_image + work, self.chunk_bytes)
                del out
                start = rows.stop
                if start >= n:
                    return
        except BaseException:
            for w in writers.values():
                w.abort()
            raise

    def acts(self, model: Model, layers: Sequence[str], images: data.ImageSet) -> dict[str, np.ndarray]:
        """{layer: (n, *layer_shape)} for every requested layer; the missing ones in one forward pass."""
        return self._acts(model, layers, images.name, images.fingerprint, lambda: len(images), self._rows(images))

    def derived_acts(
        self, model: Model, layers: Sequence[str], name: str, fingerprint: str, inputs: Callable[[], np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Like `acts`, for inputs made in memory (RSVC patches, pasted probe images): `fingerprint` must
        identify their content (e.g. the source set's fingerprint plus every parameter that made them);
        `inputs()` is called only when some layer is missing from memory and disk."""
        made: list[np.ndarray] = []

        def made_inputs() -> np.ndarray:
            if not made:
                made.append(inputs())
            return made[0]

        return self._acts(model, layers, name, fingerprint, lambda: len(made_inputs()), lambda s: made_inputs()[s])

    def made_acts(
        self, model: Model, layers: Sequence[str], name: str, fingerprint: str, count: int,
        rows: Callable[[slice], np.ndarray],
    ) -> dict[str, np.ndarray]:
        """Like `derived_acts`, for `count` inputs made a chunk at a time: `rows(s)` makes inputs `s` (RSVC's
        patches: only a chunk's images are decoded and cut, issue 18)."""
        return self._acts(model, layers, name, fingerprint, lambda: count, rows)

    def _acts(
        self, model: Model, layers: Sequence[str], name: str, fingerprint: str, count: Callable[[], int],
        rows: Callable[[slice], np.ndarray],
    ) -> dict[str, np.ndarray]:
        keys = {layer: _key("acts", model.sha256, layer, fingerprint, self.pre.key()) for layer in layers}
        out, missing = self._cached(keys, "from_disk")
        if missing:
            n = count()
            self._log(f"extract {model.name} [{', '.join(missing)}] on {name} ({n} images)")
            writers = {
                layer: self._writer(keys[layer], n, f"model {model.name}, layer {layer}, activations of {name}")
                for layer in missing
            }
            self._stream(n, lambda s: model.activations(rows(s), missing), writers, self._work(grads=False))
            self.stats.forward_passes += 1
            for layer in missing:
                out[layer] = self._finish(keys[layer], writers[layer])
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
            in_mem = key in self._mem or key in self._verified
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
            self._log(f"gradients {model.name} [{', '.join(missing)}] on {images.name} for class {target}")
            if has_layer_grads(model):
                fresh = self._grads_and_acts(model, missing, images, target)
            else:
                fresh = self._head_grads(model, missing, images, target)
            for layer in missing:
                out[layer] = fresh[layer]
                self.stats.gradients += 1
        return {layer: out[layer] for layer in layers}

    def _grad_writer(self, model: Model, layer: str, images: data.ImageSet, target: int) -> _NpyWriter:
        return self._writer(self._grad_key("grad", model, layer, images, target), len(images),
                            f"model {model.name}, layer {layer}, gradients of class {target} on {images.name}")

    def _grads_and_acts(
        self, model: Model, layers: list[str], images: data.ImageSet, target: int
    ) -> dict[str, np.ndarray]:
        """Gradient maps of `layers` from one forward + backward pass per chunk; the activations of that pass
        are cached under the key `acts` reads, so that asking for them next costs no forward pass of their own."""
        writers = {f"g:{layer}": self._grad_writer(model, layer, images, target) for layer in layers}
        acts_keys = {layer: _key("acts", model.sha256, layer, images.fingerprint, self.pre.key()) for layer in layers}
        new_acts = [l for l in layers if acts_keys[l] not in self._verified and not self._path(acts_keys[l]).is_file()]
        for layer in new_acts:
            writers[f"a:{layer}"] = self._writer(
                acts_keys[layer], len(images), f"model {model.name}, layer {layer}, activations of {images.name}")
        rows = self._rows(images)

        def run(s: slice) -> dict[str, np.ndarray]:
            acts, grads = model.layer_acts_and_grads(rows(s), layers, target)
            return {**{f"g:{k}": v for k, v in grads.items()}, **{f"a:{k}": acts[k] for k in new_acts}}

        self._stream(len(images), run, writers, self._work(grads=True))
        self.stats.backward_passes += 1
        for layer in new_acts:
            self._finish(acts_keys[layer], writers[f"a:{layer}"])
            self.stats.extracted += 1
        return {layer: self._finish(self._grad_key("grad", model, layer, images, target), writers[f"g:{layer}"])
                for layer in layers}

    def _head_grads(
        self, model: Model, layers: list[str], images: data.ImageSet, target: int
    ) -> dict[str, np.ndarray]:
        """Gradient maps through the head of each layer (models without `layer_grads`), a chunk at a time."""
        acts = self.acts(model, layers, images)
        rows = self._rows(images)
        out = {}
        for layer in layers:
            writer = {layer: self._grad_writer(model, layer, images, target)}
            head = model.head(layer)
            self._stream(len(images), lambda s: {layer: head.grad(np.asarray(acts[layer][s]), rows(s), target)},
                         writer, self._work(grads=True))
            self.stats.backward_passes += 1
            out[layer] = self._finish(self._grad_key("grad", model, layer, images, target), writer[layer])
        return out

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
        what = f"model {model.name}, layer {{}}, gradients of class {target} on {images.name}"
        if missing and has_layer_grads(model):
            maps = self.grad_maps(model, missing, images, target)
            for layer in missing:
                g = maps[layer]
                writer = {layer: self._writer(keys[layer], len(g), what.format(layer))}
                # The same sum the pooled basis gives, in float64 like the head's contraction; image by image, so
                # a chunk's sums are those of the whole map.
                self._stream(len(g), lambda s: {layer: _pooled(g, s)}, writer, int(np.prod(g.shape[1:])) * 4)
                out[layer] = self._finish(keys[layer], writer[layer])
        elif missing:
            acts = self.acts(model, missing, images)
            rows = self._rows(images)
            for layer in missing:
                a = acts[layer]
                self._log(f"gradients {model.name} {layer} on {images.name} for class {target}")
                basis = pooled_basis(a.shape[1:])
                head = model.head(layer)
                writer = {layer: self._writer(keys[layer], len(a), what.format(layer))}
                self._stream(len(a), lambda s: {layer: head.directional(np.asarray(a[s]), rows(s), basis, target)},
                             writer, self._work(grads=True))
                self.stats.backward_passes += 1
                self.stats.gradients += 1
                out[layer] = self._finish(keys[layer], writer[layer])
        return {layer: out[layer] for layer in layers}

    def pooled_grads(self, model: Model, layer: str, images: data.ImageSet, target: int) -> np.ndarray:
        """`pooled_grads_many` for one layer: (n, C)."""
        return self.pooled_grads_many(model, [layer], images, target)[layer]
