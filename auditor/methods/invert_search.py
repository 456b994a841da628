"""INVERT's vectorised machinery (METHODS.md, INVERT): average ranks, AUC and Mann-Whitney p-values from rank
sums, compositional formulas, and the beam search over every unit at once.

Everything rests on one identity. With r_u the average ranks of unit u's activations over n images and y the 0/1
mask of a formula, U_1 = y . r_u - n_1 (n_1 + 1) / 2 and AUC = U_1 / (n_1 n_0). Rank sums of compositions follow
from rank sums of simpler ones by inclusion-exclusion, so a beam step for every unit, beam formula and concept is
two matrix products ((mask * r) @ labels for the rank sums of `phi AND c`, mask @ labels for the counts):

    S(phi AND c)     = P                       n(phi AND c)     = Q
    S(phi AND NOT c) = S(phi) - P              n(phi AND NOT c) = n(phi) - Q
    S(phi OR c)      = S(phi) + S(c) - P       n(phi OR c)      = n(phi) + n(c) - Q
    S(phi OR NOT c)  = n(n+1)/2 - S(c) + P     n(phi OR NOT c)  = n - n(c) + Q

Rank sums of 0/1 masks times half-integer ranks are exact in float64 (below 2^53), so these AUCs equal scipy's
bit for bit, ties included.

Formulas. Beam formulas are read-once (each concept at most once: a literal on a concept the formula already uses
never adds an essential variable, so the result re-expresses a shorter formula and is skipped). A read-once
formula has one normal form up to the order of AND / OR operands, so the canonical form is the text with nested
same-operator terms flattened and operands sorted: `a AND b` and `b AND a` are one formula (the de-duplication
the reference code lacks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from auditor.methods.stats import auc_from_ranksum, average_ranks, mann_whitney_p  # noqa: F401

# Units per block of the beam step: the (units x beam x images) float64 product stays ~50 MB at 10,000 images.
UNIT_BLOCK = 128
MIN_IMAGES_DEFAULT = 30
MIN_FRACTION_FLOOR = 0.005

# ---------------------------------------------------------------------------------------------------------------
# Formulas


@dataclass(frozen=True)
class Formula:
    """A literal (`op == "lit"`) or an AND / OR of operands; `text` is the canonical form (see module doc)."""

    op: str  # "lit" | "and" | "or"
    text: str
    length: int  # number of literals
    concepts: frozenset[int]  # indices of the concepts it uses
    concept: int = -1  # literals only
    negated: bool = False  # literals only
    operands: tuple["Formula", ...] = field(default=(), repr=False)

    def literals(self) -> list[tuple[int, bool]]:
        """(concept index, negated) of every literal."""
        if self.op == "lit":
            return [(self.concept, self.negated)]
        return [lit for o in self.operands for lit in o.literals()]


def literal(concept: int, negated: bool, names: tuple[str, ...] | list[str]) -> Formula:
    return Formula(
        op="lit", text=("NOT " if negated else "") + names[concept], length=1,
        concepts=frozenset([concept]), concept=concept, negated=negated,
    )


def _operand_text(f: Formula) -> str:
    return f.text if f.op == "lit" else f"({f.text})"


def _operand_order(f: Formula) -> tuple[int, str]:
    # Plain literals first, then negated ones, then bracketed terms: "c3 AND NOT c7 AND (c1 OR c2)".
    return (0 if f.op == "lit" and not f.negated else 1 if f.op == "lit" else 2, f.text)


def combine(phi: Formula, lit: Formula, op: str) -> Formula:
    """`phi op lit` in canonical form: same-operator terms flattened, operands in a fixed order (plain literals,
    negated literals, bracketed terms; each by text)."""
    parts = (*phi.operands, lit) if phi.op == op else (phi, lit)
    parts = tuple(sorted(parts, key=_operand_order))
    return Formula(
        op=op, text=f" {op.upper()} ".join(_operand_text(p) for p in parts), length=phi.length + lit.length,
        concepts=phi.concepts | lit.concepts, operands=parts,
    )


def evaluate(f: Formula, labels: np.ndarray) -> np.ndarray:
    """The formula's 0/1 mask over images: labels (n, k) bool -> (n,) bool."""
    if f.op == "lit":
        col = labels[:, f.concept]
        return ~col if f.negated else col.copy()
    out = evaluate(f.operands[0], labels)
    for o in f.operands[1:]:
        out = (out & evaluate(o, labels)) if f.op == "and" else (out | evaluate(o, labels))
    return out


def sort_key(auc: float, f: Formula) -> tuple[float, int, str]:
    """Beam order: higher AUC first, then the shorter formula, then the canonical text (deterministic ties)."""
    return (-auc, f.length, f.text)


# ---------------------------------------------------------------------------------------------------------------
# Ranks, AUC and Mann-Whitney U from rank sums: auditor.methods.stats (one implementation for every method)


def default_min_fraction(n: int) -> float:
    """max(0.005, 30 images / n): the reference's 0.002 lets a formula fit a handful of images."""
    return max(MIN_FRACTION_FLOOR, MIN_IMAGES_DEFAULT / max(n, 1))


def in_bounds(n1: np.ndarray, n: int, lo: float, hi: float) -> np.ndarray:
    """0 < n1 < n and lo <= n1 / n <= hi (the same float expression in every implementation)."""
    n1 = np.asarray(n1)
    frac = n1 / n
    return (n1 > 0) & (n1 < n) & (frac >= lo) & (frac <= hi)


# ---------------------------------------------------------------------------------------------------------------
# Beam search


@dataclass(frozen=True)
class SearchSettings:
    length: int = 3  # L
    beam: int = 3  # B
    min_fraction: float | None = None  # None: default_min_fraction(n of the search images)
    max_fraction: float = 0.5
    limit_search: int | None = None  # candidates: the top literals by 2|AUC - 0.5|; None: all 2k

    def bounds(self, n: int) -> tuple[float, float]:
        lo = default_min_fraction(n) if self.min_fraction is None else self.min_fraction
        return lo, self.max_fraction


@dataclass(frozen=True)
class Scored:
    formula: Formula
    auc: float
    count: int  # images the formula holds for


def literal_table(names: tuple[str, ...]) -> tuple[list[Formula], np.ndarray]:
    """Literals 0..k-1 = concepts, k..2k-1 = their negations; and each literal's rank by text (for ties)."""
    k = len(names)
    lits = [literal(c, False, names) for c in range(k)] + [literal(c, True, names) for c in range(k)]
    text_rank = np.empty(2 * k, np.int64)
    text_rank[np.argsort([f.text for f in lits], kind="stable")] = np.arange(2 * k)
    return lits, text_rank


class _Registry:
    """Distinct formulas of the beams (shared between units) with their masks over the search images."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels
        self.formulas: list[Formula] = []
        self.masks: list[np.ndarray] = []
        self.index: dict[str, int] = {}

    def add(self, f: Formula, mask: np.ndarray | None = None) -> int:
        i = self.index.get(f.text)
        if i is None:
            i = len(self.formulas)
            self.index[f.text] = i
            self.formulas.append(f)
            self.masks.append(evaluate(f, self.labels) if mask is None else mask)
        return i


# The four ways to extend a beam formula with concept c, in the order of the candidate arrays.
_OPS = (("and", False), ("and", True), ("or", False), ("or", True))


def beam_search(
    ranks: np.ndarray, labels: np.ndarray, names: tuple[str, ...], settings: SearchSettings
) -> list[list[Scored]]:
    """INVERT's compositional beam search for every unit at once.

    Parameters
    ----------
    ranks : (n, u) average ranks of each unit's activations over the search images (`average_ranks`).
    labels : (n, k) bool concept labels of the same images.
    names : the k concept names.
    settings : L, B, fraction bounds, candidate limit.

    Returns
    -------
    Per unit, its final beam (at most B formulas, best first by `sort_key`); empty when no formula fits the
    fraction bounds.
    """
    ranks = np.asarray(ranks, np.float64)
    n, n_units = ranks.shape
    k = len(names)
    lo, hi = settings.bounds(n)
    B = settings.beam
    lab = np.asarray(labels, bool)
    lab_f = lab.astype(np.float64)
    total = n * (n + 1) / 2.0
    lits, text_rank = literal_table(names)

    # Atoms: rank sums of every concept for every unit in one product.
    s_pos = lab_f.T @ ranks  # (k, u)
    n_pos = lab.sum(axis=0).astype(np.float64)  # (k,)
    s_lit = np.concatenate([s_pos, total - s_pos])  # (2k, u)
    n_lit = np.concatenate([n_pos, n - n_pos])  # (2k,)
    auc_lit = auc_from_ranksum(s_lit, n_lit[:, None], n)  # (2k, u)
    ok_lit = in_bounds(n_lit, n, lo, hi)  # (2k,)

    # Candidate literals per unit: all of them, or the top `limit_search` by 2|AUC - 0.5| (ties: by text).
    allowed = np.ones((n_units, 2 * k), bool)
    if settings.limit_search is not None and settings.limit_search < 2 * k:
        strength = np.nan_to_num(2.0 * np.abs(auc_lit.T - 0.5), nan=0.0)  # (u, 2k)
        order = np.lexsort((np.broadcast_to(text_rank, strength.shape), -strength), axis=-1)
        allowed[:] = False
        np.put_along_axis(allowed, order[:, : settings.limit_search], True, axis=1)

    # Initial beam: the top B literals within the fraction bounds.
    reg = _Registry(lab)
    lit_ids = [reg.add(f, evaluate(f, lab)) for f in lits]
    key_auc = np.where(ok_lit[None, :] & ~np.isnan(auc_lit.T), -auc_lit.T, np.inf)  # (u, 2k)
    order = np.lexsort((np.broadcast_to(text_rank, key_auc.shape), key_auc), axis=-1)
    beam_id = np.full((n_units, B), -1, np.int64)
    beam_s = np.zeros((n_units, B))
    beam_n = np.zeros((n_units, B))
    beam_auc = np.full((n_units, B), -np.inf)
    for u in range(n_units):
        j = 0
        for lit in order[u, :B]:
            if not np.isfinite(key_auc[u, lit]):
                break
            beam_id[u, j], beam_s[u, j] = lit_ids[lit], s_lit[lit, u]
            beam_n[u, j], beam_auc[u, j] = n_lit[lit], auc_lit[lit, u]
            j += 1

    for _step in range(2, settings.length + 1):
        beam_id, beam_s, beam_n, beam_auc = _step_all(
            reg, ranks, lab_f, lits, s_pos, n_pos, allowed, beam_id, beam_s, beam_n, beam_auc, n, lo, hi, B
        )

    out: list[list[Scored]] = []
    for u in range(n_units):
        out.append([
            Scored(reg.formulas[beam_id[u, j]], float(beam_auc[u, j]), int(beam_n[u, j]))
            for j in range(B) if beam_id[u, j] >= 0
        ])
    return out


def _step_all(
    reg: _Registry, ranks: np.ndarray, lab_f: np.ndarray, lits: list[Formula], s_pos: np.ndarray,
    n_pos: np.ndarray, allowed: np.ndarray, beam_id: np.ndarray, beam_s: np.ndarray, beam_n: np.ndarray,
    beam_auc: np.ndarray, n: int, lo: float, hi: float, B: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One beam step for every unit: extend every beam formula by every candidate literal with AND and OR."""
    n_units = ranks.shape[1]
    k = lab_f.shape[1]
    total = n * (n + 1) / 2.0
    masks = np.stack(reg.masks)  # (F, n) bool: every distinct formula seen so far
    uses = np.zeros((len(reg.formulas), k), bool)
    for i, f in enumerate(reg.formulas):
        uses[i, list(f.concepts)] = True
    lengths = np.array([f.length for f in reg.formulas], np.int64)
    counts_q = masks.astype(np.float64) @ lab_f  # (F, k): n(phi AND c), the same for every unit
    new_id = np.full_like(beam_id, -1)
    new_s, new_n, new_auc = np.zeros_like(beam_s), np.zeros_like(beam_n), np.full_like(beam_auc, -np.inf)
    combined: dict[tuple[int, int, int], Formula] = {}  # (formula id, concept, op) -> canonical formula
    for start in range(0, n_units, UNIT_BLOCK):
        sl = slice(start, min(start + UNIT_BLOCK, n_units))
        ids = beam_id[sl]  # (b, B)
        present = ids >= 0
        safe = np.where(present, ids, 0)
        m = masks[safe]  # (b, B, n)
        mr = m * ranks[:, sl].T[:, None, :]  # (b, B, n): each unit's ranks where the beam formula holds
        p = (mr.reshape(-1, n) @ lab_f).reshape(len(ids), B, k)  # rank sums of phi AND c
        del m, mr
        q = counts_q[safe]  # (b, B, k)
        sp = beam_s[sl][:, :, None]
        npf = beam_n[sl][:, :, None]
        sc = s_pos[:, sl].T[:, None, :]  # (b, 1, k)
        nc = n_pos[None, None, :]
        s4 = np.stack([p, sp - p, sp + sc - p, total - sc + p], axis=-1)  # (b, B, k, 4)
        n4 = np.stack([q, npf - q, npf + nc - q, n - nc + q], axis=-1)
        auc4 = auc_from_ranksum(s4, n4, n)
        ok = in_bounds(n4, n, lo, hi) & ~np.isnan(auc4)
        ok &= present[:, :, None, None]
        ok &= ~uses[safe][:, :, :, None]  # a literal on a concept phi uses re-expresses a shorter formula
        lit_allowed = allowed[sl]  # (b, 2k)
        ok &= np.stack([lit_allowed[:, :k], lit_allowed[:, k:], lit_allowed[:, :k], lit_allowed[:, k:]], -1)[:, None]
        auc4 = np.where(ok, auc4, -np.inf)
        flat_auc = np.concatenate([beam_auc[sl], auc4.reshape(len(ids), -1)], axis=1)  # old beam first
        old_len = np.where(present, lengths[safe], 0)  # (b, B)
        # New formulas are one literal longer than the beam formula they extend.
        new_len = np.broadcast_to(old_len[:, :, None] + 1, (len(ids), B, k * 4)).reshape(len(ids), -1)
        flat_len = np.concatenate([old_len, new_len], axis=1)
        order = np.lexsort((flat_len, -flat_auc), axis=-1)
        for r in range(len(ids)):
            u = start + r
            chosen = _select(order[r], flat_auc[r], flat_len[r], ids[r], reg, lits, k, combined, B)
            for j, (pos, f) in enumerate(chosen):
                if pos < B:  # an old beam formula
                    new_id[u, j], new_s[u, j], new_n[u, j] = beam_id[u, pos], beam_s[u, pos], beam_n[u, pos]
                else:
                    b, c, o = np.unravel_index(pos - B, (B, k, 4))
                    new_id[u, j] = reg.add(f, _extend_mask(reg.masks[ids[r, b]], reg.labels[:, c], o))
                    new_s[u, j], new_n[u, j] = s4[r, b, c, o], n4[r, b, c, o]
                new_auc[u, j] = flat_auc[r, pos]
    return new_id, new_s, new_n, new_auc


def _extend_mask(mask: np.ndarray, col: np.ndarray, op: int) -> np.ndarray:
    name, negated = _OPS[op]
    lit = ~col if negated else col
    return (mask & lit) if name == "and" else (mask | lit)


def _select(
    order: np.ndarray, auc: np.ndarray, length: np.ndarray, ids: np.ndarray, reg: _Registry, lits: list[Formula],
    k: int, combined: dict[tuple[int, int, int], Formula], B: int,
) -> list[tuple[int, Formula]]:
    """The top B distinct formulas of one unit's merged beam, walking candidates in (AUC, length) order and
    resolving exact ties by canonical text. Only the candidates walked get a Formula object."""
    chosen: list[tuple[int, Formula]] = []
    seen: set[str] = set()
    i = 0
    while i < len(order) and len(chosen) < B:
        pos = order[i]
        if not np.isfinite(auc[pos]):
            break
        # The group of candidates tied in (AUC, length) with this one, ordered by text.
        j = i
        while j < len(order) and auc[order[j]] == auc[pos] and length[order[j]] == length[pos]:
            j += 1
        group = [(p, _formula_at(p, ids, reg, lits, k, combined, B)) for p in order[i:j]]
        for p, f in sorted(group, key=lambda t: t[1].text):
            if len(chosen) < B and f.text not in seen:
                seen.add(f.text)
                chosen.append((int(p), f))
        i = j
    return chosen


def _formula_at(
    pos: int, ids: np.ndarray, reg: _Registry, lits: list[Formula], k: int,
    combined: dict[tuple[int, int, int], Formula], B: int,
) -> Formula:
    if pos < B:
        return reg.formulas[ids[pos]]
    b, c, o = (int(v) for v in np.unravel_index(pos - B, (B, k, 4)))
    key = (int(ids[b]), c, o)
    f = combined.get(key)
    if f is None:
        name, negated = _OPS[o]
        f = combine(reg.formulas[ids[b]], lits[c + k if negated else c], name)
        combined[key] = f
    return f


# ---------------------------------------------------------------------------------------------------------------
# Held-out evaluation and the whole explanation


@dataclass(frozen=True)
class UnitExplanation:
    """A unit's best formula: found on the search half, scored on the held-out half."""

    formula: Formula | None  # None: no formula fits the fraction bounds
    search_auc: float | None
    search_support: int
    auc: float | None  # held-out AUC (None when the formula holds for all or none of the held-out images)
    support: int  # held-out images the formula holds for
    fraction: float  # support / held-out images
    p_value: float  # two-sided Mann-Whitney U on the held-out half (1.0 when undefined)


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint halves (search, evaluation) of n images, each sorted; the search half gets the odd one."""
    perm = np.random.default_rng(seed).permutation(n)
    half = math.ceil(n / 2)
    return np.sort(perm[:half]), np.sort(perm[half:])


def explain(
    acts: np.ndarray, labels: np.ndarray, names: tuple[str, ...], search_rows: np.ndarray, eval_rows: np.ndarray,
    settings: SearchSettings,
) -> list[UnitExplanation]:
    """INVERT for every unit: beam search on `search_rows`, AUC and p of the best formula on `eval_rows`.

    acts (n, u) one scalar per image and unit; labels (n, k) bool.
    """
    acts = np.asarray(acts)
    if not np.isfinite(acts).all():
        raise ValueError("activations contain NaN or infinity")
    labels = np.asarray(labels, bool)
    ranks, _ = average_ranks(acts[search_rows])
    beams = beam_search(ranks, labels[search_rows], names, settings)
    del ranks
    best = [b[0] if b else None for b in beams]
    return evaluate_held_out(acts[eval_rows], labels[eval_rows], best)


def evaluate_held_out(acts: np.ndarray, labels: np.ndarray, best: list[Scored | None]) -> list[UnitExplanation]:
    """AUC, support and Mann-Whitney p of each unit's formula on held-out images: acts (m, u), labels (m, k)."""
    m, n_units = acts.shape
    ranks, tie = average_ranks(acts)
    masks: dict[str, np.ndarray] = {}
    s = np.zeros(n_units)
    n1 = np.zeros(n_units)
    for u, b in enumerate(best):
        if b is None:
            continue
        mask = masks.get(b.formula.text)
        if mask is None:
            mask = masks[b.formula.text] = evaluate(b.formula, labels)
        s[u] = ranks[mask, u].sum()
        n1[u] = mask.sum()
    auc = auc_from_ranksum(s, n1, m)
    p = mann_whitney_p(s, n1, m, tie)
    out = []
    for u, b in enumerate(best):
        if b is None:
            out.append(UnitExplanation(None, None, 0, None, 0, 0.0, 1.0))
            continue
        defined = not np.isnan(auc[u])
        out.append(UnitExplanation(
            formula=b.formula, search_auc=b.auc, search_support=b.count,
            auc=float(auc[u]) if defined else None, support=int(n1[u]), fraction=float(n1[u] / m) if m else 0.0,
            p_value=float(p[u]) if defined else 1.0,
        ))
    return out
