"""figures/common.py's grid of small multiples, shared by the INVERT distributions and the RSVC layerwise maps."""

from __future__ import annotations

from matplotlib.figure import Figure

from auditor.report.figures.common import grid_shape, panel_grid


def test_grid_shape() -> None:
    assert grid_shape(0) == (1, 1) and grid_shape(1) == (1, 1) and grid_shape(3) == (1, 3)
    assert grid_shape(4) == (2, 3) and grid_shape(7) == (3, 3) and grid_shape(5, per_row=2) == (3, 2)


def test_panel_grid_pairs_panels_in_reading_order_and_hides_the_rest() -> None:
    fig = Figure()
    axes, cells = panel_grid(fig, ["a", "b", "c", "d"], *grid_shape(4))
    assert axes.shape == (2, 3)
    assert [(i, p) for i, _ax, p in cells] == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
    assert [ax for _i, ax, _p in cells] == list(axes.flat[:4])
    assert [ax.get_visible() for ax in axes.flat] == [True] * 4 + [False] * 2
