"""ClaDec's measurements: reconstructions, their fidelity, and how much of a pasted artifact a layer keeps.

Artifact retention on paired images (the artifact probe's pairs: artifact pasted vs a neutral patch on exactly
the same pixels): mean |decoded difference| inside the artifact's box / mean |input difference| there, pooled
over the pairs. 0: the decodings of the two images agree, the layer dropped the artifact; 1: the decoded
difference is as large as the input's, the layer kept it whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from auditor import data
from auditor.methods import artifact
from auditor.methods.cladec_core import Fitted, to_model
from auditor.policy import ArtifactSpec

BATCH = 64


def decode(fitted: Fitted, acts: np.ndarray) -> np.ndarray:
    """ClaDec reconstructions (n, 3, H, W) in [0, 1] from the frozen layer's activations (n, *layer_shape)."""
    fitted.decoder.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(acts), BATCH):
            a = torch.from_numpy(np.ascontiguousarray(acts[s : s + BATCH], dtype=np.float32))
            out.append(fitted.decoder(a).numpy())
    return np.concatenate(out).astype(np.float32)


def autoencode(fitted: Fitted, images01: np.ndarray, pre: data.Preprocessing) -> np.ndarray:
    """Reference auto-encoder reconstructions (n, 3, H, W) in [0, 1] of [0, 1] images."""
    enc: nn.Module | None = fitted.encoder
    if enc is None:
        raise ValueError("autoencode needs a reference auto-encoder (a Fitted with an encoder)")
    enc.eval()
    fitted.decoder.eval()
    out = []
    with torch.no_grad():
        for s in range(0, len(images01), BATCH):
            x = torch.from_numpy(np.ascontiguousarray(images01[s : s + BATCH], dtype=np.float32))
            out.append(fitted.decoder(enc(to_model(x, pre))).numpy())
    return np.concatenate(out).astype(np.float32)


def mse(x_hat: np.ndarray, x: np.ndarray) -> float:
    """Mean squared error over every pixel and channel, in [0, 1] image space."""
    return float(np.mean((x_hat.astype(np.float64) - x.astype(np.float64)) ** 2))


def top1_agreement(logits_recon: np.ndarray, logits_orig: np.ndarray) -> float:
    """Share of images whose top-1 class on the reconstruction equals the one on the original."""
    return float(np.mean(logits_recon.argmax(axis=1) == logits_orig.argmax(axis=1)))


def box_mask(boxes: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(n, 4) boxes (row, col, height, width) -> (n, 1, H, W) boolean masks."""
    rows = np.arange(hw[0]).reshape(1, -1, 1)
    cols = np.arange(hw[1]).reshape(1, 1, -1)
    r, c, h, w = (boxes[:, i].reshape(-1, 1, 1) for i in range(4))
    inside = (rows >= r) & (rows < r + h) & (cols >= c) & (cols < c + w)
    return inside[:, None]


def retention(
    decoded_art: np.ndarray, decoded_neu: np.ndarray, input_art: np.ndarray, input_neu: np.ndarray, boxes: np.ndarray
) -> float:
    """Pooled mean |decoded difference| / mean |input difference| inside each pair's box (NaN when the inputs do
    not differ there). All images (n, C, H, W) in the same space; boxes (n, 4) row, col, height, width."""
    mask = box_mask(boxes, decoded_art.shape[2:])
    d_out = np.abs(decoded_art.astype(np.float64) - decoded_neu) * mask
    d_in = np.abs(input_art.astype(np.float64) - input_neu) * mask
    den = float(d_in.sum())
    return float(d_out.sum()) / den if den > 0 else float("nan")


def artifact_boxes(
    n: int, spec: ArtifactSpec, artifact_path: Path, pre: data.Preprocessing, seed: int
) -> np.ndarray:
    """The (n, 4) boxes `artifact.make_pairs` pastes into for the same arguments: the same patch size and the
    same seeded positions, drawn in the same order."""
    # The probe's own resize of the artifact, so the boxes are exactly the probe's.
    patch = artifact.fit_artifact(artifact.load_artifact(artifact_path), pre.size[1], spec)
    rng = np.random.default_rng(seed)
    rows = [(*artifact.position(spec, pre.size, patch.shape[:2], rng), *patch.shape[:2]) for _ in range(n)]
    return np.asarray(rows, dtype=np.int64).reshape(n, 4)


def retention_pairs(
    images: list[Path], spec: ArtifactSpec, artifact_path: Path, pre: data.Preprocessing, seed: int
) -> tuple[artifact.Pairs, np.ndarray]:
    """The probe's pairs (normalised, as `Model.activations` takes them) and the box of each pair."""
    pairs = artifact.make_pairs(images, spec, artifact_path, pre, seed)
    return pairs, artifact_boxes(len(images), spec, artifact_path, pre, seed)


def mean_saturation(images01: np.ndarray) -> float:
    """Mean HSV saturation (max - min) / max over channels of (n, 3, H, W) [0, 1] images (0 for black pixels)."""
    hi, lo = images01.max(axis=1), images01.min(axis=1)
    sat = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-12), 0.0)
    return float(sat.mean())
