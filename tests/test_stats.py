import numpy as np
import pytest
from scipy import stats as sps

from auditor.methods import stats


def slow_holm(p):
    """Holm by the textbook: sort, multiply by (m - rank), running max, cap at 1, unsort."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adj = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj


@pytest.mark.parametrize("seed", range(5))
def test_holm_matches_textbook(seed):
    p = np.random.default_rng(seed).uniform(0, 0.2, 17)
    p[3] = p[5]  # a tie
    assert np.allclose(stats.holm(p), slow_holm(list(p)))


def test_holm_keeps_order_and_bounds():
    p = np.array([0.01, 0.04, 0.03, 0.5])
    adj = stats.holm(p)
    assert np.allclose(adj, [0.04, 0.09, 0.09, 0.5])
    assert stats.holm(np.array([])).size == 0


@pytest.mark.parametrize("seed", range(5))
def test_welch_and_one_sample_equal_scipy(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0.6, 0.1, 10), rng.normal(0.5, 0.2, 10)
    assert stats.welch_t(a, b).p_value == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)
    assert stats.one_sample_t(a, 0.5).p_value == pytest.approx(sps.ttest_1samp(a, 0.5).pvalue)


def test_constant_samples_are_decided_not_nan():
    assert stats.welch_t(np.ones(5), np.ones(5)).p_value == 1.0
    assert stats.welch_t(np.ones(5), np.zeros(5)).p_value == 0.0
    assert stats.one_sample_t(np.full(4, 0.5), 0.5).p_value == 1.0
    # one constant sample and one varying: scipy's Welch is defined, and we pass it through
    a, b = np.ones(6), np.array([0.2, 0.4, 0.5, 0.6, 0.3, 0.5])
    assert stats.welch_t(a, b).p_value == pytest.approx(sps.ttest_ind(a, b, equal_var=False).pvalue)


@pytest.mark.parametrize("seed", range(4))
def test_rank_auc_equals_scipy_u_with_ties(seed):
    rng = np.random.default_rng(seed)
    pos = rng.integers(0, 5, size=(13, 3)).astype(float)  # few values: many ties
    neg = rng.integers(0, 4, size=(9, 3)).astype(float)
    auc = stats.rank_auc(pos, neg)
    for j in range(3):
        u = sps.mannwhitneyu(pos[:, j], neg[:, j], alternative="two-sided").statistic
        assert auc[j] == pytest.approx(u / (13 * 9))
        # and the definition: P(pos > neg) + P(tie) / 2, by brute force
        brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos[:, j] for n in neg[:, j]])
        assert auc[j] == pytest.approx(brute)
    res = stats.mann_whitney(pos[:, 0], neg[:, 0])
    assert res.p_value == pytest.approx(sps.mannwhitneyu(pos[:, 0], neg[:, 0], method="asymptotic").pvalue)
