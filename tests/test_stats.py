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
