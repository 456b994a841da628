"""Concept activation vectors: linear directions separating concept from random activations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.model_selection import train_test_split

from auditor import memory

LEARNERS = ("logistic", "sgd", "mean")


@dataclass(frozen=True)
class Cav:
    vector: np.ndarray  # (D,) unit norm, pointing toward the concept
    accuracy: float  # held-out accuracy of the concept-vs-random classifier
    # The classifier's decision on raw activations a is proportional to vector . a + offset (> 0: concept).
    offset: float = 0.0


def features(acts: np.ndarray, space: str, rows: np.ndarray | None = None) -> np.ndarray:
    """(n, *layer_shape) -> (n, D) of every image, or of `rows` in their order: `flatten` keeps every position,
    `pooled` averages conv maps over space. A memory-mapped set is read a block of images at a time and its pages
    forgotten after each (memory.row_blocks), so pooling a set holds one block of it, not the set (issue 18)."""
    n = len(acts) if rows is None else len(rows)
    if space == "pooled" and acts.ndim == 4:
        out = np.empty(acts.shape[:2] if rows is None else (n, acts.shape[1]), acts.dtype)
        for start, block in memory.row_blocks(acts, rows):
            out[start : start + len(block)] = block.mean(axis=(2, 3))
        return out
    if rows is None:
        return acts.reshape(n, -1)
    out = np.asarray(acts[np.asarray(rows)]).reshape(n, -1)  # the features are these rows: a copy either way
    memory.forget(acts)
    return out


def train_cav(concept: np.ndarray, random: np.ndarray, learner: str, seed: int) -> Cav:
    """Fit a CAV on (n, D) feature rows.

    Both sets are cut to the smaller size; a stratified, seeded 2/3 : 1/3 split gives the held-out accuracy.
    """
    n = min(len(concept), len(random))
    y = np.concatenate([np.ones(n, int), np.zeros(n, int)])
    # Split row numbers, not rows (the same split: it depends on the labels and the seed only), so that
    # flattened conv activations (10^5 features a row) are copied once, as float32, into the two parts.
    tr, te = train_test_split(np.arange(2 * n), test_size=1 / 3, stratify=y, random_state=seed)
    x = np.concatenate([concept[:n], random[:n]])
    return fit_cav(x[tr], y[tr], x[te], y[te], learner, seed)


def fit_cav(
    x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, learner: str, seed: int
) -> Cav:
    """Fit a CAV on a given split (label 1 = concept); the accuracy is measured on (x_te, y_te).

    Arithmetic is float64 whatever the input's type (the mean learner accumulates in float64 without a float64
    copy of its input: the same numbers)."""
    if learner == "mean":
        # FastCAV: the difference of class means; classify by the side of the midpoint.
        mu1, mu0 = x_tr[y_tr == 1].mean(0, dtype=np.float64), x_tr[y_tr == 0].mean(0, dtype=np.float64)
        v = mu1 - mu0
        offset = -float(v @ (mu1 + mu0) / 2)
        pred = ((x_te - (mu1 + mu0) / 2) @ v > 0).astype(int)
    elif learner == "logistic":
        x_tr, x_te = np.asarray(x_tr, np.float64), np.asarray(x_te, np.float64)
        # L2 logistic regression on standardised features; the direction in activation space is w / sigma
        # (the gradient of the decision function w.r.t. the raw activations).
        mu, sigma = x_tr.mean(0), x_tr.std(0)
        sigma[sigma == 0] = 1.0
        clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed).fit((x_tr - mu) / sigma, y_tr)
        v = clf.coef_[0] / sigma
        offset = float(clf.intercept_[0] - v @ mu)
        pred = clf.predict((x_te - mu) / sigma)
        v, offset = _toward_concept(v, offset, clf.classes_)
    elif learner == "sgd":
        # The reference implementation's settings.
        x_tr, x_te = np.asarray(x_tr, np.float64), np.asarray(x_te, np.float64)
        clf = SGDClassifier(alpha=0.01, max_iter=1000, tol=1e-3, random_state=seed).fit(x_tr, y_tr)
        v, offset = _toward_concept(clf.coef_[0], float(clf.intercept_[0]), clf.classes_)
        pred = clf.predict(x_te)
    else:
        raise ValueError(f"unknown CAV learner {learner!r}; one of {LEARNERS}")
    norm = np.linalg.norm(v)
    if norm > 0:
        v, offset = v / norm, offset / norm
    return Cav(vector=v.astype(np.float32), accuracy=float((pred == y_te).mean()), offset=float(offset))


def _toward_concept(coef: np.ndarray, intercept: float, classes: np.ndarray) -> tuple[np.ndarray, float]:
    # sklearn's binary coef_ points toward classes_[1]; the concept is label 1, so flip if the order differs.
    return (coef, intercept) if classes[1] == 1 else (-coef, -intercept)
