"""INVERT scaling: 512 units x 100 concepts x 10,000 images, L = 3, B = 3 — the vectorised search
(auditor.methods.invert_search.explain: rank sums and inclusion-exclusion, every unit at once) against the
straightforward per-formula implementation (tests/invert_reference.py, explain_slow: each formula's mask
evaluated, its AUC and p from scipy.stats.mannwhitneyu).

Both run the same job: seeded halves, beam search on one, AUC and Mann-Whitney p of the best formula on the other.
The per-formula side would take about half an hour for all 512 units, so it is timed on SUBSET units and scaled
linearly (its cost is the same for every unit: every unit evaluates the same number of formulas); the output says
so. The fast side runs on all 512 units; its formulas and AUCs for the subset must equal the reference's.

Peak memory: the process's peak resident set size (resource.getrusage, KiB on Linux) read after the fast run and
before the reference runs, so it covers the data, the interpreter and the fast search; tracemalloc's peak of the
fast run alone (numpy allocations) is printed beside it.
The last line is machine-read: ``invert_speed: speedup=<x> peak_mib=<MiB> same_formulas=<true|false>``.

`python benchmarks/invert_speed.py [UNITS CONCEPTS IMAGES SUBSET]` runs it at another size (the test suite runs a
tiny one end to end); the defaults are the size above, the one docs/measurements.md's numbers come from.
"""

from __future__ import annotations

import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from auditor.methods.invert_search import SearchSettings, explain, split_halves

# The per-formula reference is a test oracle: it lives in tests/, beside the tests that check the search against it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from invert_reference import explain_slow  # noqa: E402

UNITS, CONCEPTS, IMAGES = 512, 100, 10_000
SETTINGS = SearchSettings(length=3, beam=3)
SUBSET = 8  # units the per-formula reference is timed on


def synthetic(
    seed: int = 0, units: int = UNITS, concepts: int = CONCEPTS, images: int = IMAGES
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Labels with prevalences 3-50 %; units that follow random 1-3 concept formulas through a ReLU (so, like
    real post-ReLU activations, many exact zeros: ties), plus pure-noise units."""
    rng = np.random.default_rng(seed)
    labels = rng.random((images, concepts)) < rng.uniform(0.03, 0.5, concepts)
    acts = np.empty((images, units), np.float32)
    for u in range(units):
        signal = np.zeros(images)
        for _ in range(int(rng.integers(0, 4))):
            c = int(rng.integers(concepts))
            signal += rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 2.0) * labels[:, c]
        acts[:, u] = np.maximum(signal + rng.normal(size=images), 0.0)
    return acts, labels, tuple(f"concept_{i:03d}" for i in range(concepts))


def main(units: int = UNITS, concepts: int = CONCEPTS, images: int = IMAGES, subset_size: int = SUBSET) -> None:
    acts, labels, names = synthetic(0, units, concepts, images)
    search, held_out = split_halves(images, 1)
    print(f"setting: {units} units x {concepts} concepts x {images} images (search {len(search)}, held-out "
          f"{len(held_out)}), L = {SETTINGS.length}, B = {SETTINGS.beam}, min_fraction default "
          f"{SETTINGS.bounds(len(search))[0]:g}, max_fraction {SETTINGS.max_fraction:g}; "
          f"{100 * float((acts == 0).mean()):.0f} % of activations are exact zeros (ties)", flush=True)

    t0 = time.perf_counter()
    c0 = time.process_time()
    fast = explain(acts, labels, names, search, held_out, SETTINGS)
    fast_wall, fast_cpu = time.perf_counter() - t0, time.process_time() - c0
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    explain(acts, labels, names, search, held_out, SETTINGS)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"vectorised, all {units} units: {fast_wall:.2f} s wall, {fast_cpu:.2f} s cpu; peak RSS "
          f"{peak_rss_mib:.0f} MiB (tracemalloc peak of the search {traced_peak / 2**20:.0f} MiB)", flush=True)

    subset = [int(u) for u in np.linspace(0, units - 1, subset_size).round()]
    t0 = time.perf_counter()
    c0 = time.process_time()
    slow = explain_slow(acts, labels, names, search, held_out, SETTINGS, units=subset)
    slow_wall, slow_cpu = time.perf_counter() - t0, time.process_time() - c0
    scale = units / subset_size
    print(f"per-formula scipy reference, {subset_size} units {subset}: {slow_wall:.1f} s wall, {slow_cpu:.1f} s cpu; "
          f"scaled linearly x{scale:g} to {units} units: {slow_wall * scale:.0f} s wall (estimate: the reference was "
          f"NOT run on all units)", flush=True)

    same = True
    for u, s in zip(subset, slow):
        f = fast[u]
        ok = (f.formula is None) == (s.formula is None) and (
            f.formula is None
            or (f.formula.text == s.formula.text and f.search_auc == s.search_auc and f.auc == s.auc
                and abs(f.p_value - s.p_value) <= 1e-12 * max(1.0, abs(s.p_value)))
        )
        same &= ok
        text = "-" if f.formula is None else f.formula.text
        print(f"  unit {u:3d}: {text:<58} search AUC {f.search_auc or 0:.4f} held-out AUC "
              f"{f.auc if f.auc is not None else float('nan'):.4f}  {'same' if ok else 'DIFFERENT: ' + str(s)}")
    explained = sum(1 for f in fast if f.auc is not None and f.auc > 0.75)
    print(f"units explained with held-out AUC > 0.75: {explained} of {units}")
    speedup = slow_wall * scale / fast_wall
    print(f"speedup (wall, reference scaled to {units} units): {speedup:.0f}x (target >= 20); "
          f"by cpu time {slow_cpu * scale / fast_cpu:.0f}x; peak memory {peak_rss_mib:.0f} MiB (target < 2048)")
    print(f"invert_speed: speedup={speedup:.1f} peak_mib={peak_rss_mib:.0f} same_formulas={str(same).lower()}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:5]))
