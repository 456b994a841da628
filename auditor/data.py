"""Image sets: folders of images, decoded with PIL, resized and normalised as the policy says.

Every set has a content fingerprint: sha256 over the preprocessing and, per image, its name and file bytes.
The activation store keys on it, so a changed file, added image or new preprocessing is never served stale.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from auditor.errors import UserError

# Files that may sit in an image folder without being images (labels, notes); everything else must decode.
_NOT_IMAGES = {".csv", ".json", ".txt", ".md", ".yaml", ".yml"}


@dataclass(frozen=True)
class Preprocessing:
    size: tuple[int, int]  # (H, W)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: str = "RGB"  # or "BGR"

    def key(self) -> str:
        return json.dumps(
            {"size": list(self.size), "mean": list(self.mean), "std": list(self.std), "order": self.channel_order},
            sort_keys=True,
        )


@dataclass(frozen=True)
class ImageSet:
    name: str  # e.g. "class:triangle", "concept:watermark", "random:3"
    paths: tuple[Path, ...]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.paths)


_file_hashes: dict[tuple[Path, float, int], str] = {}


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (path, st.st_mtime, st.st_size)
    if key not in _file_hashes:
        _file_hashes[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _file_hashes[key]


def fingerprint(paths: Sequence[Path], pre: Preprocessing) -> str:
    h = hashlib.sha256(pre.key().encode())
    for p in paths:
        h.update(p.name.encode())
        h.update(_file_sha256(p).encode())
    return h.hexdigest()


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name (hidden files and label/notes files skipped)."""
    if not folder.is_dir():
        raise UserError(f"image folder not found: {folder}")
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in _NOT_IMAGES
    )


def subfolders(folder: Path) -> list[str]:
    if not folder.is_dir():
        raise UserError(f"folder not found: {folder}")
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_set(name: str, paths: Sequence[Path], pre: Preprocessing) -> ImageSet:
    paths = tuple(paths)
    return ImageSet(name=name, paths=paths, fingerprint=fingerprint(paths, pre))


def folder_set(name: str, folder: Path, pre: Preprocessing) -> ImageSet:
    paths = list_images(folder)
    if not paths:
        raise UserError(f"{folder}: no images in the folder of {name}")
    return image_set(name, paths, pre)


# 16- and 32-bit integer modes PIL opens (16-bit PNG and TIFF are "I;16*", older PIL and TIFF give "I").
_WIDE_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(im: Image.Image, path: Path) -> Image.Image:
    """An opened image in any PIL mode -> 8-bit RGB, scaled by the image's own bit depth.

    PIL's own `convert("RGB")` clips 16-bit and float values to 0..255 instead of scaling them, so a 16-bit PNG
    came out almost white. Integer modes wider than 8 bits are taken as 16-bit samples (0..65535 -> 0..255; PIL
    reads a 16-bit file as "I;16" or "I"); a 32-bit "I" image with values outside 0..65535 has no bit depth to
    scale by and is refused. Float ("F") images are in 0..1 when no value is above 1, else 0..255; others are
    refused. Alpha is dropped (as torchvision's loaders do): the model sees the colour channels."""
    if im.mode in _WIDE_INT_MODES:
        arr = np.asarray(im).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise UserError(
                f"{path}: {im.mode} image with values {arr.min()}..{arr.max()} outside 0..65535 (no bit depth to "
                "scale by); save it as an 8- or 16-bit image"
            )
        gray = np.round(arr * (255.0 / 65535.0)).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise UserError(f"{path}: float image holds NaN or infinite values")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < 0 or hi > 255:
            raise UserError(f"{path}: float image with values {lo:g}..{hi:g}, outside 0..1 and 0..255")
        scale = 255.0 if hi <= 1.0 else 1.0
        return Image.fromarray(np.round(arr * scale).astype(np.uint8), "L").convert("RGB")
    if im.mode == "RGB":
        return im
    return im.convert("RGB")


def read_rgb(path: Path, size: tuple[int, int]) -> np.ndarray:
    """One image file -> (H, W, 3) uint8 RGB at `size` (bilinear resize), any PIL mode (see `to_rgb`)."""
    try:
        with Image.open(path) as im:
            im.load()
            rgb = to_rgb(im, path)
            if rgb.size != (size[1], size[0]):
                rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8).copy()
    except UserError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"{path}: not a readable image ({type(e).__name__}: {detail})") from e


def unreadable(paths: Sequence[Path]) -> list[str]:
    """One line per file PIL cannot decode (checked before anything runs: a user's broken file is exit 2)."""
    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
                if im.mode in _WIDE_INT_MODES or im.mode == "F":
                    to_rgb(im, p)  # the value-range checks of the wide modes
                elif im.size[0] < 1 or im.size[1] < 1:
                    raise ValueError("empty image")
        except UserError as e:
            out.append(str(e))
        except Exception as e:  # PIL raises many types for broken files; each is the user's file
            out.append(f"{p}: not a readable image ({type(e).__name__})")
    return out


def normalise(rgb: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, scaled to [0, 1], channel order and mean/std applied."""
    arr = rgb.astype(np.float32) / 255.0
    if pre.channel_order == "BGR":
        arr = arr[..., ::-1]
    arr = (arr - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)


def decode(path: Path, pre: Preprocessing) -> np.ndarray:
    """One image file -> (3, H, W) float32, resized (bilinear) and normalised."""
    return normalise(read_rgb(path, pre.size), pre)


def load(images: ImageSet, pre: Preprocessing, rows: slice = slice(None)) -> np.ndarray:
    """The images of a set (or the `rows` of it: the store decodes a set a chunk at a time) -> (n, 3, H, W)
    float32."""
    paths = images.paths[rows]
    out = np.empty((len(paths), 3, *pre.size), np.float32)
    for i, p in enumerate(paths):
        out[i] = decode(p, pre)
    return out


def draw_disjoint(pool: ImageSet, count: int, size: int, seed: int, pre: Preprocessing, prefix: str) -> list[ImageSet]:
    """`count` disjoint seeded subsets of `size` images each, drawn without replacement from `pool`."""
    if count * size > len(pool):
        raise UserError(
            f"random pool has {len(pool)} images; {count} disjoint sets of {size} need {count * size} "
            "(add images to the pool, or lower random_sets / set_size)"
        )
    order = np.random.default_rng(seed).permutation(len(pool))
    return [
        image_set(f"{prefix}:{i}", [pool.paths[j] for j in sorted(order[i * size : (i + 1) * size])], pre)
        for i in range(count)
    ]
