"""Concept maps and their similarity across models, against slow, obviously correct references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auditor.methods import concept_maps as cm


def test_concept_map_is_the_projection_of_each_position_on_the_cav() -> None:
    rng = np.random.default_rng(0)
    acts, v = rng.normal(size=(3, 4, 5, 6)), rng.normal(size=4)
    maps = cm.concept_map(acts, v)
    for n in range(3):
        for h in range(5):
            for w in range(6):
                assert maps[n, h, w] == pytest.approx(float(acts[n, :, h, w] @ v))
    dense = cm.concept_map(acts.reshape(3, -1), rng.normal(size=120))
    assert dense.shape == (3, 1, 1)
    with pytest.raises(ValueError, match="4 channels"):
        cm.concept_map(acts, np.ones(3))


@pytest.mark.parametrize("src,dst", [((4, 4), (8, 8)), ((3, 5), (7, 16)), ((1, 1), (4, 4)), ((6, 6), (6, 6))])
def test_resize_matches_torch_bilinear_with_half_pixel_centres(src, dst) -> None:
    maps = np.random.default_rng(1).normal(size=(2, *src))
    ref = torch.nn.functional.interpolate(torch.from_numpy(maps)[:, None], size=dst, mode="bilinear",
                                          align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(cm.resize_maps(maps, dst), ref, atol=1e-10)


def test_map_similarity_is_pearson_at_the_larger_size() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(5, 4, 4))
    fine = cm.resize_maps(a, (8, 8))
    assert cm.map_similarity(a, fine * 3 + 1) == pytest.approx(1.0)  # same map, other scale and size
    assert cm.map_similarity(a, -fine) == pytest.approx(-1.0)
    b = rng.normal(size=(5, 8, 8))
    slow = np.corrcoef(cm.resize_maps(a, (8, 8)).ravel(), b.ravel())[0, 1]
    assert cm.map_similarity(a, b) == pytest.approx(slow)
    assert cm.map_similarity(np.ones((5, 2, 2)), b) == 0.0


def test_relative_depth_and_best_depth_with_ties_to_the_shallower_layer() -> None:
    assert [cm.relative_depth(i, 4) for i in (1, 2, 3, 4)] == [0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError):
        cm.relative_depth(0, 4)
    assert cm.best_depth([0.25, 0.5, 0.75, 1.0], [0.6, 0.9, 0.9, 0.7]) == 0.5
    assert cm.best_depth([1.0, 0.5], [0.8, 0.8]) == 0.5
