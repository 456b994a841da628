"""Statistical tests and multiple-comparison corrections shared by all methods."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import special
from scipy import stats as sps


@dataclass(frozen=True)
class TestResult:
    statistic: float
    p_value: float
    test: str  # the test's name, printed beside every p-value in the report


def welch_t(a: np.ndarray, b: np.ndarray) -> TestResult:
    """Two-sided Welch t-test of mean(a) = mean(b).

    scipy returns nan when both samples are constant; we decide those cases directly: equal constants are no
    evidence (p = 1), different constants are as strong as evidence gets (p = 0).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        equal = a[0] == b[0]
        return TestResult(0.0 if equal else float("inf") * np.sign(a[0] - b[0]), 1.0 if equal else 0.0, "Welch t-test")
    with warnings.catch_warnings():
        # One constant sample (e.g. every run scored 1.0) makes scipy warn about precision; its result is exact.
        warnings.simplefilter("ignore", RuntimeWarning)
        res = sps.ttest_ind(a, b, equal_var=False)
    return TestResult(float(res.statistic), float(res.pvalue), "Welch t-test")


def one_sample_t(a: np.ndarray, mu: float) -> TestResult:
    """Two-sided one-sample t-test of mean(a) = mu (constant samples decided directly, as above)."""
    a = np.asarray(a, np.float64)
    if np.ptp(a) == 0:
        equal = a[0] == mu
        return TestResult(0.0 if equal else float("inf") * np.sign(a[0] - mu), 1.0 if equal else 0.0, "one-sample t-test")
    res = sps.ttest_1samp(a, mu)
    return TestResult(float(res.statistic), float(res.pvalue), "one-sample t-test")


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order."""
    p = np.asarray(p, np.float64)
    m = len(p)
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    adjusted_sorted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted_sorted, 1.0)
    return out


def rank_auc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUC = U_pos / (n_pos n_neg) from average ranks (ties count half), for every column at once.

    pos (n1, k), neg (n0, k) -> (k,). Equals P(pos > neg) + P(pos = neg) / 2, i.e. scipy's Mann-Whitney U of
    `pos` divided by n1 n0.
    """
    pos = np.asarray(pos, np.float64).reshape(len(pos), -1)
    neg = np.asarray(neg, np.float64).reshape(len(neg), -1)
    n1, n0 = len(pos), len(neg)
    ranks = sps.rankdata(np.concatenate([pos, neg]), axis=0)  # average ranks: tie-aware
    u = ranks[:n1].sum(axis=0) - n1 * (n1 + 1) / 2
    return u / (n1 * n0)


def average_ranks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based, ties share their mean rank) of every column, and each column's tie term.

    x (n, u) -> ranks (n, u) float64, tie_term (u,) = sum over tie groups of t^3 - t (what the normal
    approximation of Mann-Whitney U needs). Computed per column at once: one argsort, no Python loop.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected (images, units), got shape {x.shape}")
    n, u = x.shape
    if n == 0:
        return np.zeros((0, u)), np.zeros(u)
    order = np.argsort(x, axis=0, kind="stable")
    xs = np.take_along_axis(x, order, axis=0)
    starts = np.ones((n, u), bool)
    starts[1:] = xs[1:] != xs[:-1]
    del xs
    idx = np.arange(n, dtype=np.int64)[:, None]
    first = np.maximum.accumulate(np.where(starts, idx, 0), axis=0)  # first position of each element's tie group
    ends = np.ones((n, u), bool)
    ends[:-1] = starts[1:]
    last = np.minimum.accumulate(np.where(ends, idx, n - 1)[::-1], axis=0)[::-1]
    del starts, ends
    ranks = np.empty((n, u), np.float64)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=0)
    t = (last - first + 1).astype(np.float64)
    # Each element of a group of size t contributes t^2 - 1; a group contributes t (t^2 - 1) = t^3 - t.
    tie_term = (t * t - 1.0).sum(axis=0)
    return ranks, tie_term


def auc_from_ranksum(s: np.ndarray, n1: np.ndarray, n: int) -> np.ndarray:
    """AUC = (S - n1 (n1 + 1) / 2) / (n1 n0); NaN where n1 is 0 or n (no positives or no negatives)."""
    s = np.asarray(s, np.float64)
    n1 = np.asarray(n1, np.float64)
    n0 = n - n1
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (s - n1 * (n1 + 1.0) / 2.0) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)


def mann_whitney_p(s: np.ndarray, n1: np.ndarray, n: int, tie_term: np.ndarray) -> np.ndarray:
    """Two-sided Mann-Whitney U p-value, normal approximation with tie and continuity correction — exactly
    scipy.stats.mannwhitneyu(method="asymptotic") — from rank sums; NaN where a group is empty."""
    s = np.asarray(s, np.float64)
    n1 = np.asarray(n1, np.float64)
    n0 = n - n1
    u1 = s - n1 * (n1 + 1.0) / 2.0
    u = np.maximum(u1, n1 * n0 - u1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = np.sqrt(n1 * n0 / 12.0 * ((n + 1.0) - np.asarray(tie_term, np.float64) / (n * (n - 1.0))))
        z = (u - n1 * n0 / 2.0 - 0.5) / sd
    p = np.clip(2.0 * special.ndtr(-z), 0.0, 1.0)
    return np.where((n1 > 0) & (n0 > 0), p, np.nan)


def mann_whitney(pos: np.ndarray, neg: np.ndarray) -> TestResult:
    """Two-sided Mann-Whitney U test (normal approximation, tie and continuity correction), as scipy's
    mannwhitneyu(method="asymptotic") does it: INVERT's vectorised rank-sum test on one column."""
    pos, neg = np.asarray(pos, np.float64).ravel(), np.asarray(neg, np.float64).ravel()
    n1, n = len(pos), len(pos) + len(neg)
    ranks, tie = average_ranks(np.concatenate([pos, neg])[:, None])
    s = ranks[:n1].sum(axis=0)
    p = mann_whitney_p(s, np.array([n1]), n, tie)[0]
    return TestResult(float(s[0] - n1 * (n1 + 1) / 2), float(p), "Mann-Whitney U test")
