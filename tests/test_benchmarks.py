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


def test_stability_rule_is_methods_md_order():
    """(1) no control cell, (2) at most 1 changed verdict, then (3) the smaller watermark p; else the most stable."""
    assert stability.choose({"score": 0, "cosine": 1}, {"score": 0, "cosine": 0}, {"score": 0.3, "cosine": 0.01}) == "cosine"
    assert stability.choose({"score": 0, "cosine": 2}, {"score": 0, "cosine": 0}, {"score": 0.3, "cosine": 0.01}) == "score"
    assert stability.choose({"score": 0, "cosine": 0}, {"score": 0, "cosine": 1}, {"score": 0.3, "cosine": 0.01}) == "score"
    assert stability.choose({"score": 3, "cosine": 2}, {"score": 1, "cosine": 1}, {"score": 0.3, "cosine": 0.01}) == "cosine"


def test_stability_verdicts_are_holm_over_each_methods_tested_cells():
    def f(method, layer, p, tested=True):
        return {"method": method, "model": "m", "layer": layer, "class": "k", "concept": "c", "learned": True,
                "tested": tested, "score_p_value": p}

    rows = [f("tcav", "a", 0.01), f("tcav", "b", 0.03), f("sacv", "a", 0.02), f("sacv", "b", None, tested=False)]
    v = stability.verdicts(rows, "score")
    # TCAV: Holm over 2 cells (0.02, 0.03 -> both <= 0.05); SACV: one tested cell; the untested one is no verdict.
    assert v == {("tcav", "m", "a", "k", "c"): True, ("tcav", "m", "b", "k", "c"): True,
                 ("sacv", "m", "a", "k", "c"): True}
