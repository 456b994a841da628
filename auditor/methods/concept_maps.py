"""Concept maps (Mikriukov et al. 2023): where in an image a layer encodes a concept, comparable across models.

A concept's CAV at a conv layer has one weight per channel (trained on spatially pooled activations), so it can be
applied as a 1x1 convolution: the projection of every position's channel vector on the CAV is a map of the
concept over the image. Two (model, layer) pairs encode a concept alike when their maps of the same images agree:
their similarity is the Pearson correlation of the maps, both upsampled to a common size, over all images and
positions. A dense layer's map is a single value per image (a 1x1 map), which upsampling spreads over the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def concept_map(acts: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """(n, C, H, W) or (n, D) activations projected on a CAV of C (or D) weights -> (n, H, W) maps (float64)."""
    v = np.asarray(vector, dtype=np.float64)
    if acts.ndim == 4:
        if acts.shape[1] != v.shape[0]:
            raise ValueError(f"a CAV of {v.shape[0]} weights cannot project {acts.shape[1]} channels")
        return np.einsum("nchw,c->nhw", acts, v, dtype=np.float64)
    flat = acts.reshape(len(acts), -1)
    if flat.shape[1] != v.shape[0]:
        raise ValueError(f"a CAV of {v.shape[0]} weights cannot project {flat.shape[1]} features")
    return (flat.astype(np.float64) @ v)[:, None, None]


def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D linear interpolation with half-pixel centres (align_corners=False), the
    convention of torch's and PIL's bilinear resize, so a map and its image line up however the sizes divide."""
    w = np.zeros((n_out, n_in))
    scale = n_in / n_out
    for o in range(n_out):
        src = min(max((o + 0.5) * scale - 0.5, 0.0), n_in - 1)
        lo = int(np.floor(src))
        hi = min(lo + 1, n_in - 1)
        frac = src - lo
        w[o, lo] += 1.0 - frac
        w[o, hi] += frac
    return w


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(n, h, w) -> (n, H, W) by separable bilinear interpolation (one matrix per axis)."""
    rows = _linear_weights(maps.shape[1], size[0])
    cols = _linear_weights(maps.shape[2], size[1])
    # Two matrix products per map (rows @ map @ cols^T): the same sums as the einsum "Hh,nhw,Ww->nHW", whose
    # unoptimised loop took 1.9 s for 50 maps of 64x64 against 0.01 s (measured on the demo's layers).
    return rows @ maps @ cols.T


def map_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two models' concept maps of the same images, at the larger of the two sizes.

    A map that does not vary (a constant projection) correlates with nothing: 0, not NaN."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"maps of the same images expected: {a.shape[0]} against {b.shape[0]}")
    size = (max(a.shape[1], b.shape[1]), max(a.shape[2], b.shape[2]))
    x = resize_maps(a, size).ravel()
    y = resize_maps(b, size).ravel()
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / denom) if denom > 0 else 0.0


def relative_depth(index: int, count: int) -> float:
    """A layer's depth as a share of its model's depth: the i-th of L layers (1-based) sits at i / L, so the
    last layer of any model is at 1 and networks of different depth line up."""
    if not 1 <= index <= count:
        raise ValueError(f"layer index {index} outside 1..{count}")
    return index / count


def best_depth(depths: Sequence[float], accuracies: Sequence[float]) -> float:
    """The relative depth with the highest CAV accuracy; ties go to the shallower layer (the concept is already
    encoded there)."""
    if len(depths) != len(accuracies) or not depths:
        raise ValueError("one accuracy per layer expected")
    order = sorted(range(len(depths)), key=lambda i: (-accuracies[i], depths[i]))
    return float(depths[order[0]])
