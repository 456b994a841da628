"""Linear CKA (Kornblith et al. 2019) and its debiased variant, from n x n Gram matrices.

Two layers' representations of the same n images are compared through their Gram matrices K = X X^T, never
through a D x D feature covariance: a 224-px ResNet layer has D up to 800,000 features, its covariance would not
fit in memory, and n (images) is a few thousand at most. The Gram matrix is accumulated over column chunks of X,
so a memory-mapped activation array of any width is read a slab at a time and memory stays at n x n plus one
n x chunk slab.

Linear CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with the biased HSIC of the centred Grams, in which
the 1/(n-1)^2 factors cancel. It is biased upwards for wide layers and few images (two random representations
score well above 0); the debiased variant (Nguyen, Raghu, Kornblith 2021) replaces HSIC with its unbiased
estimator (Song et al. 2012), whose expectation is the population HSIC, so unrelated features score about 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np

# Columns read per slab when accumulating a Gram matrix: 4,096 float32 columns of 1,000 images is 16 MB.
GRAM_CHUNK = 4096
# Columns per float32 product in GramBuilder: a batch of 50 rows x 32,768 columns is 6.5 MB.
BUILDER_CHUNK = 32768


def gram(features: np.ndarray, chunk: int = GRAM_CHUNK) -> np.ndarray:
    """K = X X^T in float64 for X of shape (n, ...) (flattened per image), a column slab at a time.

    Works on a numpy memmap without loading it: each slab is read, cast to float64 (float32 sums over 10^5
    features lose about 4 digits) and multiplied, so memory is n x n + n x chunk.
    """
    n = features.shape[0]
    flat = features.reshape(n, -1)
    k = np.zeros((n, n), dtype=np.float64)
    for start in range(0, flat.shape[1], chunk):
        slab = np.asarray(flat[:, start : start + chunk], dtype=np.float64)
        k += slab @ slab.T
    return k


def _centre(k: np.ndarray) -> np.ndarray:
    """H K H with H = I - 11^T/n, without forming H."""
    return k - k.mean(axis=0, keepdims=True) - k.mean(axis=1, keepdims=True) + k.mean()


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:
    """tr(H K H L) (up to the constant 1/(n-1)^2, which cancels in CKA)."""
    return float(np.sum(_centre(k) * _centre(l)))


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. 2012's unbiased HSIC estimator; needs n >= 4."""
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"debiased CKA needs at least 4 images, got {n}")
    kt = k - np.diag(np.diag(k))
    lt = l - np.diag(np.diag(l))
    kl_sum = float(kt.sum(axis=0) @ lt.sum(axis=1))  # 1^T K~ L~ 1
    term = float(np.sum(kt * lt)) + kt.sum() * lt.sum() / ((n - 1) * (n - 2)) - 2.0 * kl_sum / (n - 2)
    return term / (n * (n - 3))


def _ratio(kl: float, kk: float, ll: float) -> float:
    # A constant representation (all images alike) has HSIC 0 with itself: CKA is undefined there, reported as 0
    # (it shares no variation with anything). A debiased self-HSIC can come out slightly negative for tiny n.
    denom = kk * ll
    if not np.isfinite(denom) or denom <= 0.0:
        return 0.0
    return float(kl / np.sqrt(denom))


def cka_from_grams(k: np.ndarray, l: np.ndarray) -> tuple[float, float]:
    """(linear CKA, debiased linear CKA) of two Gram matrices of the same images in the same order."""
    if k.shape != l.shape or k.shape[0] != k.shape[1]:
        raise ValueError(f"Gram matrices of the same n images expected, got {k.shape} and {l.shape}")
    biased = _ratio(hsic_biased(k, l), hsic_biased(k, k), hsic_biased(l, l))
    debiased = _ratio(hsic_unbiased(k, l), hsic_unbiased(k, k), hsic_unbiased(l, l))
    return biased, debiased


def cka(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(linear CKA, debiased linear CKA) of two representations (n, ...) of the same n images."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"the same images expected: {x.shape[0]} rows against {y.shape[0]}")
    return cka_from_grams(gram(x), gram(y))


def cka_matrix(grams_a: list[np.ndarray], grams_b: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Layer x layer (linear, debiased) CKA between two models, from each layer's Gram matrix.

    Each Gram is computed once per layer (the expensive part, linear in D); every pair then costs O(n^2).
    """
    lin = np.zeros((len(grams_a), len(grams_b)))
    deb = np.zeros_like(lin)
    for i, k in enumerate(grams_a):
        for j, l in enumerate(grams_b):
            lin[i, j], deb[i, j] = cka_from_grams(k, l)
    return lin, deb


class GramBuilder:
    """K = X X^T for the rows of X arriving in image batches, without holding X in memory.

    Each batch is appended to a float32 scratch file; its block row of K is computed against itself and every
    earlier batch read back from the file (plain reads, not a memory map, so the pages do not stay in the
    process's resident set). Memory: K (n x n float64), two batches, one float64 column slab of each. For 1,000
    images of a 224-px ResNet layer (200,704 features) X is 800 MB; a batch of 50 is 40 MB. Several layers of one
    forward pass each get a builder; use as a context manager so the scratch file goes whatever happens.
    """

    def __init__(self, scratch: Path, block_cols: int = BUILDER_CHUNK) -> None:
        self._path = scratch
        self._file: BinaryIO = open(scratch, "w+b")
        self._block_cols = block_cols
        self._sizes: list[int] = []
        self._width: int | None = None
        self._blocks: dict[tuple[int, int], np.ndarray] = {}

    def add(self, batch: np.ndarray) -> None:
        rows = np.ascontiguousarray(batch.reshape(len(batch), -1), dtype=np.float32)
        if self._width is None:
            self._width = rows.shape[1]
        elif rows.shape[1] != self._width:
            raise ValueError(f"batches of {self._width} and {rows.shape[1]} features")
        self._file.seek(0, 2)
        rows.tofile(self._file)
        self._sizes.append(len(rows))
        i = len(self._sizes) - 1
        for j in range(i + 1):
            other = rows if j == i else self._read(j)
            self._blocks[(i, j)] = _cross(rows, other, self._block_cols)

    def _read(self, j: int) -> np.ndarray:
        assert self._width is not None
        self._file.seek(sum(self._sizes[:j]) * self._width * 4)
        count = self._sizes[j] * self._width
        return np.fromfile(self._file, dtype=np.float32, count=count).reshape(self._sizes[j], self._width)

    def gram(self) -> np.ndarray:
        starts = np.concatenate([[0], np.cumsum(self._sizes)]).astype(int)
        k = np.zeros((starts[-1], starts[-1]))
        for (i, j), block in self._blocks.items():
            k[starts[i] : starts[i + 1], starts[j] : starts[j + 1]] = block
            k[starts[j] : starts[j + 1], starts[i] : starts[i + 1]] = block.T
        return k

    def close(self) -> None:
        self._file.close()
        self._path.unlink(missing_ok=True)

    def __enter__(self) -> "GramBuilder":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def gram_of_batches(batches: Iterable[np.ndarray], scratch: Path, block_cols: int = BUILDER_CHUNK) -> np.ndarray:
    """K = X X^T for rows arriving in batches, X kept on disk (see GramBuilder)."""
    with GramBuilder(scratch, block_cols) as builder:
        for batch in batches:
            builder.add(batch)
        return builder.gram()


def _cross(a: np.ndarray, b: np.ndarray, block_cols: int) -> np.ndarray:
    # float32 products per column slab, summed in float64: sgemm is about twice dgemm's speed and needs no float64
    # copies; a slab's float32 dot products err by ~1e-6 relative, far below what CKA reports (2 decimals).
    out = np.zeros((len(a), len(b)))
    for s in range(0, a.shape[1], block_cols):
        out += a[:, s : s + block_cols] @ b[:, s : s + block_cols].T
    return out
