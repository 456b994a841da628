"""Linear and debiased CKA against slow, obviously correct references, and the invariances CKA must have."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from auditor.methods import cka


def _slow_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith 2019, eq. for linear CKA, with the centring matrix H written out."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def _slow_hsic_u(k: np.ndarray, l: np.ndarray) -> float:
    """The unbiased HSIC as its U-statistic definition (Song et al. 2012): sums over distinct index tuples."""
    n = k.shape[0]
    idx = range(n)
    two = sum(k[i, j] * l[i, j] for i, j in itertools.permutations(idx, 2))
    three = sum(k[i, j] * l[i, q] for i, j, q in itertools.permutations(idx, 3))
    four = sum(k[i, j] * l[q, r] for i, j, q, r in itertools.permutations(idx, 4))
    falling = lambda m: np.prod([n - t for t in range(m)])  # noqa: E731  (n)_m
    return two / falling(2) + four / falling(4) - 2 * three / falling(3)


def _features(seed: int, n: int = 7, d: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=(d, 3)) + 0.5 * rng.normal(size=(n, 3))  # related to x, not a copy
    return x, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_cka_equals_the_textbook_formula(seed: int) -> None:
    x, y = _features(seed)
    assert cka.cka(x, y)[0] == pytest.approx(_slow_cka(x, y), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unbiased_hsic_equals_its_u_statistic_definition(seed: int) -> None:
    x, y = _features(seed)
    k, l = x @ x.T, y @ y.T
    assert cka.hsic_unbiased(k, l) == pytest.approx(_slow_hsic_u(k, l), abs=1e-6)
    slow = _slow_hsic_u(k, l) / np.sqrt(_slow_hsic_u(k, k) * _slow_hsic_u(l, l))
    assert cka.cka(x, y)[1] == pytest.approx(slow, abs=1e-6)


def test_gram_in_column_slabs_equals_the_whole_product_and_reads_a_memmap(tmp_path) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(9, 4, 5, 5)).astype(np.float32)
    mm = np.lib.format.open_memmap(tmp_path / "acts.npy", mode="w+", dtype=np.float32, shape=x.shape)
    mm[:] = x
    mm.flush()
    flat = x.reshape(9, -1).astype(np.float64)
    np.testing.assert_allclose(cka.gram(np.load(tmp_path / "acts.npy", mmap_mode="r"), chunk=7), flat @ flat.T,
                               rtol=1e-12, atol=1e-9)


def test_a_model_against_itself_scores_one() -> None:
    x, _ = _features(4, n=20, d=6)
    lin, deb = cka.cka_matrix([cka.gram(x), cka.gram(x * 2)], [cka.gram(x)])
    np.testing.assert_allclose(lin, 1.0, atol=1e-12)
    np.testing.assert_allclose(deb, 1.0, atol=1e-12)


def test_invariant_to_rotation_isotropic_scaling_and_channel_permutation() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 2, 3, 3))  # a conv layer: 2 channels x 3 x 3
    y = rng.normal(size=(30, 8)) + x.reshape(30, -1)[:, :8]
    base = cka.cka(x, y)
    q, _ = np.linalg.qr(rng.normal(size=(18, 18)))
    rotated = (x.reshape(30, -1) @ q) * 3.7
    permuted = x[:, ::-1]  # channels swapped
    for other in (rotated, permuted):
        np.testing.assert_allclose(cka.cka(other, y), base, atol=1e-9)


def test_debiased_cka_is_near_zero_for_unrelated_wide_features_where_the_biased_one_is_not() -> None:
    # Why the debiased variant is reported beside the classic one: 50 images, 2,000 independent random features.
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(50, 2000)), rng.normal(size=(50, 2000))
    lin, deb = cka.cka(x, y)
    assert lin > 0.5
    assert abs(deb) < 0.05


def test_constant_representation_and_mismatched_images_are_reported() -> None:
    x = np.ones((6, 3))
    assert cka.cka(x, np.random.default_rng(7).normal(size=(6, 3))) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same images"):
        cka.cka(np.zeros((5, 2)), np.zeros((6, 2)))
    with pytest.raises(ValueError, match="at least 4"):
        cka.cka(np.eye(3), np.eye(3))


def test_gram_of_batches_equals_the_gram_of_all_rows(tmp_path) -> None:
    rng = np.random.default_rng(8)
    x = rng.normal(size=(23, 3, 4, 4)).astype(np.float32)
    batches = [x[0:10], x[10:17], x[17:23]]
    flat = x.reshape(23, -1).astype(np.float64)
    k = cka.gram_of_batches(iter(batches), tmp_path / "scratch.bin", block_cols=5)
    np.testing.assert_allclose(k, flat @ flat.T, rtol=1e-5, atol=1e-4)  # float32 products (see cka._cross)
    assert not (tmp_path / "scratch.bin").exists()
    with pytest.raises(ValueError, match="features"):
        cka.gram_of_batches(iter([x[:2], x[:2, :2]]), tmp_path / "s2.bin")
