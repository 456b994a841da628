"""The benchmark scripts (run by `make bench`, not by CI) still fit the code they time and patch."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

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


def test_invert_speed_runs_end_to_end_on_a_tiny_job():
    """The INVERT benchmark as `make bench` runs it (a subprocess, this tree's package), on 24 units x 12 concepts x
    600 images with the reference timed on 4 units (about 3 s): the fast search must find the reference's formulas,
    and the machine-read last line must parse."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "invert_speed.py"), "24", "12", "600", "4"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("setting: 24 units x 12 concepts x 600 images (search 300, held-out 300)")
    assert sum(line.startswith("  unit ") for line in lines) == 4
    assert all(line.endswith("same") for line in lines if line.startswith("  unit "))
    last = re.fullmatch(r"invert_speed: speedup=(\d+\.\d) peak_mib=(\d+) same_formulas=(true|false)", lines[-1])
    assert last is not None, lines[-1]
    assert last.group(3) == "true"
    # Vectorised against one formula at a time: faster at any size (339x measured at this one).
    assert float(last.group(1)) > 1.0
    assert 0 < int(last.group(2)) < 2048
