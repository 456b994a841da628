"""RSVC's concept importance through a model's head: the gradient of log p(class) (= -CE) w.r.t. the concept
coefficients, the concept reconstruction placed at every position of the layer; and how well such
position-constant activations stand in for the real maps (head agreement).

The cost does not grow with the number of classes K: torch heads give d log softmax(.)[target] by one forward and
one backward pass per batch (base.LogpDirectional); ONNX heads take central differences of log p_target itself,
all classes' logits coming from the same head runs. (Before, torch built it as sum_k (1[k = t] - p_k)
d logit_k / da, one backward pass per class with p_k >= 1e-6: all 1,000 classes of an ImageNet model, and RSVC did
not finish in 10 minutes; benchmarks/rsvc_classes.py measures the two head sizes side by side.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from auditor import memory
from auditor.methods import rsvc_core as core
from auditor.models.base import Model, has_logp_directional

# Central differences for ONNX heads: the step moves the activation by this fraction of its typical norm
# (the ONNX adapter's own choice for its directional derivatives, see OnnxHead._steps).
FD_RELATIVE_STEP = 5e-4
# Bytes of head input (activations + images) per head call.
HEAD_CHUNK_BYTES = 48 * 2**20


def broadcast(V: np.ndarray, W: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The concept reconstruction V W (m, C) placed at every position of a (C, h, w) layer: (m, C, h, w)."""
    rec = (np.asarray(V, np.float64) @ W).astype(np.float32)
    return np.ascontiguousarray(np.broadcast_to(rec.reshape(len(rec), shape[0], *([1] * (len(shape) - 1))),
                                                (len(rec), *shape)))


def needs_images(head: object) -> bool:
    """Whether the head computes anything from the input images: not an ONNX head without skip paths, nor a torch
    head cut after every path from the images (AutogradHead.reads_images); every other head is given them."""
    if hasattr(head, "reads_images"):
        return bool(head.reads_images)
    return getattr(head, "extras", None) != []


@dataclass
class GradStats:
    head_rows: int = 0  # rows the head ran (torch: each one forward and one backward pass)


def concept_gradient(
    model: Model, layer: str, W: np.ndarray, shape: tuple[int, ...], patches: np.ndarray | None, target: int,
    scale: float, stats: GradStats,
) -> Callable[[np.ndarray], np.ndarray]:
    """grad(V): d log softmax(h(V W placed at every position))[target] / dV, (m, K) -> (m, K).

    Row r of V belongs to patch r % len(patches) (core.integrated_gradients stacks its points so); `patches` may be
    None for a head that does not read the images (`needs_images`). Heads with `logp_directional` (torch): exact,
    by autograd through the log-softmax, along the K concept directions. Others (ONNX): central differences of
    log p_target itself along each coefficient; the step is FD_RELATIVE_STEP of `scale` (the typical norm of a
    reconstruction) over |W_j|.
    """
    head = model.head(layer)
    k = len(W)
    reads = needs_images(head)
    if reads and patches is None:
        raise ValueError(f"the head from {layer} reads the input images: give the patches")
    per_row = 4 * (int(np.prod(shape)) + (int(np.prod(patches.shape[1:])) if reads else 0))
    exact = has_logp_directional(head)
    directions = broadcast(np.eye(k), W, shape)  # (K, C, h, w): concept j at every position

    def images(rows: np.ndarray) -> np.ndarray | None:
        return patches[rows % len(patches)] if reads else None

    def autograd(V: np.ndarray, rows: np.ndarray) -> np.ndarray:
        stats.head_rows += len(V)
        return np.asarray(head.logp_directional(broadcast(V, W, shape), images(rows), directions, target), np.float64)

    norms = np.linalg.norm(W, axis=1)
    steps = FD_RELATIVE_STEP * max(scale, 1e-12) / np.where(norms > 0, norms, 1.0)  # (K,)

    def differences(V: np.ndarray, rows: np.ndarray) -> np.ndarray:
        m = len(V)
        # Rows: for each point, +e_0 ... +e_{K-1}, then -e_0 ... -e_{K-1}.
        shifted = np.repeat(V[:, None, :], 2 * k, axis=1)
        eye = np.eye(k) * steps[:, None]
        shifted[:, :k] += eye
        shifted[:, k:] -= eye
        acts = broadcast(shifted.reshape(-1, k), W, shape)
        x = images(np.repeat(rows, 2 * k))
        f = core.log_softmax(np.asarray(head.logits(acts, x), np.float64))[:, target].reshape(m, 2 * k)
        stats.head_rows += m * 2 * k
        return (f[:, :k] - f[:, k:]) / (2 * steps[None, :])

    fn = autograd if exact else differences
    rows_per_point = 1 if exact else 2 * k
    chunk = max(1, HEAD_CHUNK_BYTES // (per_row * rows_per_point))

    def grad(V: np.ndarray) -> np.ndarray:
        out = np.zeros((len(V), k))
        for start in range(0, len(V), chunk):
            rows = np.arange(start, min(start + chunk, len(V)))
            out[rows] = fn(V[rows], rows)
        return out

    return grad


def head_agreement(model: Model, layer: str, full_acts: np.ndarray, means: np.ndarray, patches: np.ndarray | None,
                   target: int) -> dict[str, float]:
    """How well the head on position-constant activations (each patch's spatial mean at every position) matches
    the head on the real maps: exact when the head starts with global average pooling. A block of patches at a
    time: the real maps are on disk (memory.row_blocks hands out writable copies, which torch may wrap)."""
    head = model.head(layer)
    reads = needs_images(head)
    shape = tuple(full_acts.shape[1:])
    real, flat = [], []
    for start, block in memory.row_blocks(full_acts):
        rows = slice(start, start + len(block))
        x = patches[rows] if reads else None
        real.append(core.log_softmax(np.asarray(head.logits(block.astype(np.float32, copy=False), x))))
        flat.append(core.log_softmax(np.asarray(head.logits(broadcast(means[rows], np.eye(shape[0]), shape), x))))
    real_lp, flat_lp = np.concatenate(real), np.concatenate(flat)
    return {
        "top1_agreement": float((real_lp.argmax(1) == flat_lp.argmax(1)).mean()),
        "mean_abs_logp_diff": float(np.abs(real_lp[:, target] - flat_lp[:, target]).mean()),
    }
