"""What TCAV and SACV share: the cells' findings and test fields, the Holm adjustment and verdicts, requirements,
status and summary, the exchangeability test's report details (its null, its words, its notes).

A cell is a TCAV `tcav.Cell` or a SACV `sacv.SpatialCell`: both have scores, random scores, accuracies,
cosines, the two permutation p-values and `learned` / `tested`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from auditor import data
from auditor.errors import UserError
from auditor.methods import exchangeable, stats
from auditor.methods.requirements import met_summary
from auditor.policy import TcavRequirement
from auditor.results import Status


MIN_CAV_ACCURACY = 0.6


def spare_set(pool: data.ImageSet, paired: list[data.ImageSet], pre: data.Preprocessing, name: str) -> data.ImageSet:
    """The pool's images in none of the `paired` random sets (R_1..R_N), in pool order."""
    used = {p for r in paired for p in r.paths}
    return data.image_set(name, [p for p in pool.paths if p not in used], pre)


@dataclass(frozen=True)
class Null:
    """The pseudo-concepts of one (model, layer, class): each one's mean TCAV score and cosine over the N runs."""

    model: str
    layer: str
    cls: str
    scores: np.ndarray  # (M,)
    cosines: np.ndarray  # (M,)
    kind: str = "concept"  # "relative": pseudo-pairs, the null of the check's relative cells (A vs B)


def _count(folder: Path) -> int | None:
    """Images in a folder, or None when it cannot be listed (the pipeline names the folder)."""
    try:
        return len(data.list_images(folder))
    except UserError:
        return None


def validate(check: Any, policy: Any, pre: data.Preprocessing, where: str, problems: list[str],
             models: dict) -> list[data.ImageSet]:
    """TCAV's and SACV's random draws fit the policy's folders: the random pool holds the N + 1 paired sets (and,
    under the exchangeability test, the spare sets of the pseudo-concepts); a concept folder holds set_size images
    under that test. (Before, a Welch check with a small pool stopped the audit mid-run.)"""
    d = policy.data
    pool = None if d.random is None else _count(policy.resolve(d.random.folder))
    concepts = {}
    if d.concepts is not None:
        for c in check.concepts:
            n = _count(policy.resolve(d.concepts.folder) / c)
            if n is not None:
                concepts[c] = n
    problems.extend(exchangeable.size_problems(check, where, pool, concepts, d.random.folder if d.random else ""))
    return []


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


@dataclass(frozen=True)
class Wording:
    """How a concept-score method names its statistic and its verdicts in requirements, summaries and tests."""

    score: str  # the statistic s1
    scores: str  # the per-run scores the Welch test compares
    sensitive: str  # what a significant cell is
    accuracy: str  # the CAV accuracy a learned cell reaches
    scope: str  # the Holm family, "every tested ..."


TCAV_WORDS = Wording("TCAV score", "scores", "sensitive", "CAV accuracy", "TCAV cell of the audit")
SACV_WORDS = Wording("spatial TCAV score", "spatial scores", "spatially sensitive", "per-position CAV accuracy",
                     "cell of this check")


def statistic_words(statistic: str, words: Wording = TCAV_WORDS) -> str:
    return {"score": f"{words.score} (s1; centre 0.5)", "cosine": "cosine sensitivity (s2; centre 0)"}[statistic]


def test_fields(c: Any, test: str, statistic: str) -> dict:
    """A cell's statistics and its deciding p-value (TCAV and SACV cells alike): `score`, `cosine`, the test;
    under `exchangeable` both permutation p-values, and `p_value` is the one of `statistic`."""
    out: dict = {"cosine": None, "test": test}
    if test == "exchangeable":
        out.update(statistic=statistic, score_p_value=None, cosine_p_value=None)
    if c.untested:
        out.update(verdict="not tested", reason=c.untested)
    if not c.learned:
        return out
    out.update(score=round(float(c.scores.mean()), 6), score_std=round(float(c.scores.std()), 6),
               cosine=None if c.cosines is None else round(float(c.cosines.mean()), 6))
    if not c.tested:  # learned, with its scores, but no test (see `untested`)
        return out
    if test == "exchangeable":
        out.update(score_p_value=c.score_p, cosine_p_value=c.cosine_p,
                   p_value=c.score_p if statistic == "score" else c.cosine_p)
    else:
        out.update(p_value=_finite(stats.welch_t(c.scores, c.random_scores).p_value))
        if hasattr(c, "magnitudes"):  # TCAV's cells keep the one-sample test beside Welch, as before
            out.update(p_one_sample=_finite(stats.one_sample_t(c.scores, 0.5).p_value))
    return out


def _above(f: dict) -> bool:
    """Which side of its null a significant cell lies on: the random-vs-random mean (welch), or the statistic's
    centre (exchangeable: score 0.5, cosine 0)."""
    if f.get("test") == "exchangeable":
        return f["cosine"] > 0 if f.get("statistic") == "cosine" else f["score"] > 0.5
    return f["score"] > f["random_score_mean"]


def adjust(rows: list[dict], p_adjusted: list[float], alpha: float) -> list[dict]:
    """Rows with p_adjusted, significance and verdict set; `p_adjusted` holds one value per tested row, in order."""
    values = iter(p_adjusted)
    out = []
    for f in rows:
        if is_tested(f):
            p = float(next(values))
            significant = bool(p <= alpha)
            verdict = ("sensitive" if _above(f) else "significant-low") if significant else "not significant"
            f = {**f, "p_adjusted": _finite(p), "significant": significant, "verdict": verdict}
        out.append(f)
    return out


def _tested_p(rows: list[dict]) -> list[float]:
    # A p-value scipy could not compute (nan) is no evidence: it enters the family as 1.
    return [1.0 if f["p_value"] is None else f["p_value"] for f in rows if is_tested(f)]


def is_tested(f: dict) -> bool:
    """A finding that enters the Holm family (results.json from before the exchangeability test has no
    `tested`: there every learned cell was tested)."""
    return bool(f.get("tested", f["learned"]))


def requirement_text(r: TcavRequirement, words: Wording = TCAV_WORDS) -> str:
    who = "every model" if r.model == "all" else r.model
    cls = f"class {r.class_}" if r.class_ else "any class of the check"
    if r.significant is False:
        return f"{who}: {cls} must not be significantly {words.sensitive} to {r.concept} at any layer"
    parts = []
    if r.significant:
        parts.append(f"{cls} must be significantly {words.sensitive} to {r.concept} at some layer")
    else:
        parts.append(f"{cls} TCAV score for {r.concept} at every learned layer")
    if r.min_score is not None:
        parts.append(f"score >= {r.min_score:g}")
    if r.max_score is not None:
        parts.append(f"score <= {r.max_score:g}")
    return f"{who}: " + ", ".join(parts)


def _in_bounds(f: dict, r: TcavRequirement) -> bool:
    return (r.min_score is None or f["score"] >= r.min_score) and (r.max_score is None or f["score"] <= r.max_score)


def evaluate(r: TcavRequirement, rows: list[dict], roles: list[str], classes: list[str]) -> tuple[bool, bool, str]:
    """(met, evidence_weak, why) for one requirement over the relevant findings."""
    who = roles if r.model == "all" else [r.model]
    ks = [r.class_] if r.class_ else classes
    met, weak, why = True, False, []
    for role in who:
        for k in ks:
            cells = [f for f in rows if f["model"] == role and f["class"] == k and f["concept"] == r.concept]
            learned = [f for f in cells if is_tested(f)]
            if len(learned) < len([f for f in cells if f["learned"]]):
                weak = True  # a learned cell without a test cannot support a verdict either way
            if not learned:
                weak = True
                why.append(f"{role}/{k}: {r.concept} not learned or not tested at any layer (CAV accuracy < "
                           f"{MIN_CAV_ACCURACY}, or see the cell)")
                continue
            sig = [f for f in learned if f["significant"]]
            if r.significant is False:
                ok = not sig
                detail = ", ".join(f"{f['layer']} (TCAV {f['score']:.2f}, p_adj {f['p_adjusted']:.2g})" for f in sig)
                why.append(f"{role}/{k}: " + (f"significant for {r.concept} at {detail}" if sig else f"{r.concept} not significant"))
            elif r.significant:
                good = [f for f in sig if _in_bounds(f, r)]
                ok = bool(good)
                why.append(
                    f"{role}/{k}: "
                    + (f"{r.concept} significant at {', '.join(f['layer'] for f in good)}" if ok else f"{r.concept} not significant within bounds at any layer")
                )
            else:
                ok = all(_in_bounds(f, r) for f in learned)
                why.append(f"{role}/{k}: {r.concept} scores " + ", ".join(f"{f['score']:.2f}" for f in learned))
            met = met and ok
    return met, weak, "; ".join(why)


def requirement_rows(require: list[TcavRequirement], rows: list[dict], roles: list[str], classes: list[str],
                     words: Wording) -> list[dict]:
    """Each requirement evaluated: {"text", "model", "met", "weak", "why"}."""
    out = []
    for r in require:
        met, weak, why = evaluate(r, rows, roles, classes)
        out.append({"text": requirement_text(r, words), "model": r.model, "met": met, "weak": weak, "why": why})
    return out


def status_and_summary(reqs: list[dict], rows: list[dict], accuracy_words: str) -> tuple[Status, str]:
    """A concept-score check's status and one-line summary from its evaluated requirements and rows."""
    not_learned = [f for f in rows if not f["learned"] and f["verdict"] != "not tested"]
    untested = [f for f in rows if f["verdict"] == "not tested"]
    if any(not q["met"] for q in reqs):
        status = Status.FAIL  # the check's severity, against --fail-on, decides the exit code
    elif any(q["weak"] for q in reqs) or not_learned or untested:
        status = Status.WARN  # weak evidence: some concept is not linearly decodable at some layer
    else:
        status = Status.PASS
    sensitive = [f for f in rows if f["verdict"] == "sensitive"]
    if reqs:
        summary = met_summary(reqs)
    else:
        summary = f"{len(sensitive)} of {len(rows)} (model, layer, class, concept) cells significantly sensitive"
    if not_learned:
        summary += f" ({len(not_learned)} cells not learned: {accuracy_words} < {MIN_CAV_ACCURACY})"
    if untested:
        layers = sorted({f["layer"] for f in untested})
        summary += (f" ({len(untested)} cells not tested at {', '.join(layers)}: "
                    f"{exchangeable.OVER_BUDGET_SHORT}; the findings say why)")
    return status, summary


def test_words(test: str, family: int, statistic: str = "score", pseudo: int = 0, spare: int = 0,
               words: Wording = TCAV_WORDS) -> str:
    """The test as the report names it beside every p-value (`spare`: the images pseudo-concepts come from)."""
    scope = words.scope
    if test == "exchangeable":
        return (f"exchangeability test of the {statistic_words(statistic, words)} against {pseudo} pseudo-concepts (random-pool "
                f"sets in the concept's place, scored alike; each drawn independently from {spare} spare images, so "
                f"two may share images): p = (1 + #{{pseudo-concepts at least as far from the centre}}) / "
                f"({pseudo} + 1), Holm-adjusted over {family} tests (every tested {scope})")
    return (f"Welch two-sided t-test of concept vs random-vs-random {words.scores}, Holm-adjusted over {family} tests "
            f"(every tested {scope})")


def null_detail(nulls: list[Null]) -> list[dict]:
    """The pseudo-concepts' statistics per (model, layer, class), for the report's null-distribution figure."""
    return [{"model": n.model, "layer": n.layer, "class": n.cls, "kind": n.kind,
             "scores": [round(float(v), 4) for v in n.scores], "cosines": [round(float(v), 5) for v in n.cosines]}
            for n in nulls]


def exchange_notes(m: int, capped: bool, cap: int, spare: int, size: int) -> list[str]:
    notes = []
    if capped:
        notes.append(f"WARN: the number of pseudo-concepts is capped at {cap} (max_pseudo): the smallest attainable "
                     f"p, 1/{m + 1}, is above alpha / (4 x family size), and significance after Holm may be "
                     "unattainable")
    warning = exchangeable.spare_warning(spare, size)
    if warning:
        notes.append(f"WARN: {warning}")
    return notes
