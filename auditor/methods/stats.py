"""Statistical tests and multiple-comparison corrections shared by all methods."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
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


def mann_whitney(pos: np.ndarray, neg: np.ndarray) -> TestResult:
    """Two-sided Mann-Whitney U test (normal approximation, tie and continuity correction), as scipy does it."""
    res = sps.mannwhitneyu(np.asarray(pos, np.float64), np.asarray(neg, np.float64), alternative="two-sided",
                           method="asymptotic", use_continuity=True)
    return TestResult(float(res.statistic), float(res.pvalue), "Mann-Whitney U test")
