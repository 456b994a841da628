"""The straightforward INVERT: one formula at a time, its mask evaluated over the labels, its AUC from
scipy.stats.mannwhitneyu. Obviously correct and slow; the vectorised search (invert_search) is tested and
benchmarked against it (tests/test_invert.py, benchmarks/invert_speed.py). Same rules as the fast search:
fraction bounds, candidate literals by 2|AUC - 0.5|, read-once formulas, canonical de-duplication, sort_key.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from auditor.methods.invert_search import (
    Formula,
    Scored,
    SearchSettings,
    UnitExplanation,
    combine,
    evaluate,
    in_bounds,
    literal,
    sort_key,
)


def scipy_auc(x: np.ndarray, mask: np.ndarray) -> float:
    """U_1 / (n_1 n_0) of the images where mask holds against the rest (scipy's U of the first sample)."""
    n1 = int(mask.sum())
    n0 = len(mask) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    u = sps.mannwhitneyu(x[mask], x[~mask], alternative="two-sided", method="asymptotic").statistic
    return float(u) / (n1 * n0)


def search_unit(x: np.ndarray, labels: np.ndarray, names: tuple[str, ...], settings: SearchSettings) -> list[Scored]:
    """The beam search for one unit: x (n,) activations, labels (n, k) bool."""
    n, k = labels.shape
    lo, hi = settings.bounds(n)
    lits = [literal(c, False, names) for c in range(k)] + [literal(c, True, names) for c in range(k)]
    scored = []
    for f in lits:
        mask = evaluate(f, labels)
        scored.append((f, scipy_auc(x, mask), int(mask.sum())))
    strength = {f.text: (0.0 if np.isnan(a) else 2 * abs(a - 0.5)) for f, a, _ in scored}
    candidates = sorted(lits, key=lambda f: (-strength[f.text], f.text))
    if settings.limit_search is not None:
        candidates = candidates[: settings.limit_search]
    beam = sorted(
        [Scored(f, a, c) for f, a, c in scored if in_bounds(np.array(c), n, lo, hi) and not np.isnan(a)],
        key=lambda s: sort_key(s.auc, s.formula),
    )[: settings.beam]
    for _step in range(2, settings.length + 1):
        pool = list(beam)
        for phi in beam:
            for lit in candidates:
                if lit.concept in phi.formula.concepts:
                    continue
                for op in ("and", "or"):
                    f: Formula = combine(phi.formula, lit, op)
                    mask = evaluate(f, labels)
                    count = int(mask.sum())
                    if not in_bounds(np.array(count), n, lo, hi):
                        continue
                    pool.append(Scored(f, scipy_auc(x, mask), count))
        pool.sort(key=lambda s: sort_key(s.auc, s.formula))
        beam, seen = [], set()
        for s in pool:
            if s.formula.text not in seen and len(beam) < settings.beam:
                seen.add(s.formula.text)
                beam.append(s)
    return beam


def explain_slow(
    acts: np.ndarray, labels: np.ndarray, names: tuple[str, ...], search_rows: np.ndarray, eval_rows: np.ndarray,
    settings: SearchSettings, units: list[int] | None = None,
) -> list[UnitExplanation]:
    """`invert_search.explain`, one unit and one formula at a time (optionally only `units`)."""
    labels = np.asarray(labels, bool)
    ls, le = labels[search_rows], labels[eval_rows]
    out = []
    for u in range(acts.shape[1]) if units is None else units:
        beam = search_unit(np.asarray(acts[search_rows, u], np.float64), ls, names, settings)
        if not beam:
            out.append(UnitExplanation(None, None, 0, None, 0, 0.0, 1.0))
            continue
        best = beam[0]
        x = np.asarray(acts[eval_rows, u], np.float64)
        mask = evaluate(best.formula, le)
        n1 = int(mask.sum())
        auc = scipy_auc(x, mask)
        if np.isnan(auc):
            p = 1.0
        else:
            p = float(sps.mannwhitneyu(x[mask], x[~mask], alternative="two-sided", method="asymptotic",
                                       use_continuity=True).pvalue)
        out.append(UnitExplanation(
            formula=best.formula, search_auc=best.auc, search_support=best.count,
            auc=None if np.isnan(auc) else auc, support=n1, fraction=n1 / len(mask), p_value=p,
        ))
    return out
