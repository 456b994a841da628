"""The benchmark scripts (run by `make bench`, not by CI) still fit the code they time and patch."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import stability  # noqa: E402
import tcav_vs_captum  # noqa: E402


def test_every_timed_stage_still_exists():
    for owner, attr, label in tcav_vs_captum.ours_stages():
        assert callable(getattr(owner, attr, None)), f"{owner}.{attr} ({label}) is gone"


def test_stability_captures_the_methods_it_patches():
    for module in (stability.tcav, stability.sacv):
        assert callable(module.findings)


def test_rank_procedure_counts_the_concept_once():
    null = np.array([0.0, 1.0, 0.98, 0.02, 0.5, 0.6, 1.0, 0.0, 0.3, 0.7])
    # |0.99 - 0.5| = 0.49: exceeded or matched by the four runs at 0, 1, 1, 0 -> (1 + 4) / 11
    assert stability._p_rank(np.full(10, 0.99), null) == 5 / 11
    # Nothing as extreme: the smallest p the procedure can give with 10 runs
    assert stability._p_rank(np.full(10, 1.0), np.full(10, 0.6)) == 1 / 11
