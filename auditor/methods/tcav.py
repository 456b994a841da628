"""TCAV (Kim et al. 2018) with random-set repetition, Welch tests against random-vs-random scores and Holm
correction — see METHODS.md. What it can claim: a class logit is locally *sensitive* to a concept direction;
never that the model *relies* on the concept.

Cost: activations come from the store (one forward pass per model and image set); the logit gradient is taken
once per (model, layer, class) and every CAV's sensitivities are one matrix product with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from auditor import data
from auditor.context import Context, derive_seed, subsample
from auditor.methods import stats
from auditor.methods.cav import Cav, features, train_cav
from auditor.models.base import has_layer_grads
from auditor.policy import TcavCheck, TcavRequirement, check_layers, relative_name
from auditor.results import CheckResult, Status

MIN_CAV_ACCURACY = 0.6


@dataclass(frozen=True)
class Cell:
    """Raw material of one (model, layer, class, concept) before the family-wide correction."""

    model: str
    layer: str
    cls: str
    concept: str
    scores: np.ndarray  # (N,) TCAV score per random run
    random_scores: np.ndarray  # (N,) random-vs-random scores, same layer and class
    magnitudes: np.ndarray  # (N,)
    accuracies: np.ndarray  # (N,) held-out CAV accuracy per run

    @property
    def learned(self) -> bool:
        return float(self.accuracies.mean()) >= MIN_CAV_ACCURACY


def tcav_scores(sens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivities (n_images, k CAVs) -> (TCAV score, magnitude) per CAV.

    score = fraction of images with S > 0; magnitude = mean S / mean |S| (0 when every S is 0).
    """
    score = (sens > 0).mean(axis=0)
    denom = np.abs(sens).mean(axis=0)
    magnitude = np.divide(sens.mean(axis=0), denom, out=np.zeros_like(denom), where=denom > 0)
    return score, magnitude


def sensitivities(
    ctx: Context, role: str, layer: str, class_set: data.ImageSet, target: int, cavs: np.ndarray, space: str
) -> np.ndarray:
    """S = grad_{f_l} logit_target . v for every class image and CAV: (n_images, k).

    `pooled` (and dense layers): the spatially summed gradient (n, C) is cached per (model, layer, class) and
    multiplied by all CAVs at once. `flatten` on a conv layer: torch models give the full gradient map from the
    class set's one forward + backward pass for all layers (cached); ONNX models one finite-difference head
    call per layer with every CAV stacked.
    """
    model = ctx.models[role]
    acts = ctx.store.acts(model, [layer], class_set)[layer]
    if space == "pooled" or acts.ndim == 2:
        grads = ctx.store.pooled_grads(model, layer, class_set, target)
        return np.asarray(grads, np.float64) @ cavs.astype(np.float64).T
    if has_layer_grads(model):  # the full gradient map, from the class set's one pass for all layers
        grads = np.asarray(ctx.store.grad_maps(model, [layer], class_set, target)[layer])
        return grads.reshape(len(grads), -1).astype(np.float64) @ cavs.astype(np.float64).T
    head = model.head(layer)
    directions = cavs.reshape(len(cavs), *acts.shape[1:])
    return head.directional(np.asarray(acts), ctx.store.images(class_set), directions, target).astype(np.float64)


# Relative TCAV: the share of each concept's images one run's CAV is trained on (a seeded subsample per run,
# so the N runs differ the way the N random sets make concept-vs-random runs differ).
RELATIVE_SUBSAMPLE = 0.8


def relative_cavs(fa: np.ndarray, fb: np.ndarray, learner: str, runs: int, seed: int) -> list[Cav]:
    """N CAVs from concept A (label concept) against concept B, each on its own seeded subsample of both."""
    out = []
    for i in range(runs):
        rng = np.random.default_rng(derive_seed(seed, str(i)))
        ka, kb = max(2, int(RELATIVE_SUBSAMPLE * len(fa))), max(2, int(RELATIVE_SUBSAMPLE * len(fb)))
        ia, ib = np.sort(rng.permutation(len(fa))[:ka]), np.sort(rng.permutation(len(fb))[:kb])
        out.append(train_cav(fa[ia], fb[ib], learner, derive_seed(seed, "cav", str(i))))
    return out


@dataclass(frozen=True)
class Draws:
    """The seeded image sets of one TCAV check (the same for every model and layer)."""

    seed: int  # the check's seed; CAV seeds derive from it
    randoms: list[data.ImageSet]  # N + 1 disjoint random sets: concept run i is (C, R_i), null run i (R_{i-1}, R_i)
    concept_rows: dict[str, np.ndarray]  # concept -> the rows of its folder used (set_size of them, sorted)
    class_sets: dict[str, data.ImageSet]  # class -> its (subsampled) class images


def draws(check: TcavCheck, ctx: Context) -> Draws:
    seed = derive_seed(ctx.policy.seed, check.id)
    assert ctx.sets.random_pool is not None
    randoms = data.draw_disjoint(ctx.sets.random_pool, check.random_sets + 1, check.set_size, seed, ctx.pre, "random")
    # The same concept images and the same train/test splits for every model and layer: seeds depend on the
    # check, concept and run only, so two models (or one network in two formats) are compared like for like.
    concept_rows = {
        c: np.sort(rows[: check.set_size])
        for c in check.concepts
        for rows in [np.random.default_rng(derive_seed(seed, "concept", c)).permutation(len(ctx.sets.concepts[c]))]
    }
    class_sets = {
        k: subsample(ctx.sets.classes[k], check.class_images, derive_seed(seed, "class", k), ctx.pre)
        for k in check.classes
    }
    return Draws(seed, randoms, concept_rows, class_sets)


def _cells(check: TcavCheck, ctx: Context) -> tuple[list[Cell], dict[str, list[str]]]:
    d = draws(check, ctx)
    seed, randoms, concept_rows, class_sets = d.seed, d.randoms, d.concept_rows, d.class_sets
    n_runs = check.random_sets
    names = ctx.policy.data.classes.names
    layers_by_model = check_layers(ctx.policy, check)
    cells: list[Cell] = []
    for role, layers in layers_by_model.items():
        model = ctx.models[role]
        ctx.log(f"tcav {check.id}: {role} ({len(layers)} layers, {len(check.concepts)} concepts, {n_runs} runs)")
        random_acts = [ctx.store.acts(model, layers, r) for r in randoms]
        concept_acts = {c: ctx.store.acts(model, layers, ctx.sets.concepts[c]) for c in check.concepts}
        for k in check.classes:  # every layer of a class set in one forward pass; `sensitivities` then reads memory
            if has_layer_grads(model):  # torch: gradients and activations from one forward + backward pass
                ctx.store.grad_maps(model, layers, class_sets[k], names.index(k))
            ctx.store.acts(model, layers, class_sets[k])
        for layer in layers:
            feats_r = [features(np.asarray(a[layer]), check.space) for a in random_acts]
            null: list[Cav] = [
                train_cav(feats_r[i - 1], feats_r[i], check.cav, derive_seed(seed, "null", str(i)))
                for i in range(1, n_runs + 1)
            ]
            concept: dict[str, list[Cav]] = {}
            for c in check.concepts:
                fc = features(np.asarray(concept_acts[c][layer])[concept_rows[c]], check.space)
                concept[c] = [
                    train_cav(fc, feats_r[i], check.cav, derive_seed(seed, "cav", c, str(i)))
                    for i in range(1, n_runs + 1)
                ]
            for a, b in check.relative:
                concept[relative_name(a, b)] = relative_cavs(
                    features(np.asarray(concept_acts[a][layer])[concept_rows[a]], check.space),
                    features(np.asarray(concept_acts[b][layer])[concept_rows[b]], check.space),
                    check.cav, n_runs, derive_seed(seed, "relative", a, b),
                )
            names_all = list(concept)  # the check's concepts, then its relative pairs
            all_cavs = np.stack([v.vector for v in null] + [v.vector for c in names_all for v in concept[c]])
            for k in check.classes:
                sens = sensitivities(ctx, role, layer, class_sets[k], names.index(k), all_cavs, check.space)
                score, magnitude = tcav_scores(sens)
                random_scores = score[:n_runs]
                for j, c in enumerate(names_all):
                    cols = slice(n_runs * (j + 1), n_runs * (j + 2))
                    cells.append(
                        Cell(
                            model=role,
                            layer=layer,
                            cls=k,
                            concept=c,
                            scores=score[cols],
                            random_scores=random_scores,
                            magnitudes=magnitude[cols],
                            accuracies=np.array([v.accuracy for v in concept[c]]),
                        )
                    )
    return cells, layers_by_model


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def findings(cells: list[Cell]) -> list[dict]:
    """One finding per cell with its raw Welch p-value; `adjust` then sets p_adjusted and the verdict."""
    out = []
    for c in cells:
        row = {
            "model": c.model,
            "layer": c.layer,
            "class": c.cls,
            "concept": c.concept,
            "cav_accuracy": round(float(c.accuracies.mean()), 6),
            "learned": c.learned,
            "random_score_mean": round(float(c.random_scores.mean()), 6),
            "random_score_std": round(float(c.random_scores.std()), 6),
            "score": None, "score_std": None, "magnitude": None, "p_value": None, "p_adjusted": None,
            "p_one_sample": None, "significant": False, "verdict": "not learned",
        }
        if c.learned:
            row.update(
                score=round(float(c.scores.mean()), 6),
                score_std=round(float(c.scores.std()), 6),
                magnitude=round(float(c.magnitudes.mean()), 6),
                p_value=_finite(stats.welch_t(c.scores, c.random_scores).p_value),
                p_one_sample=_finite(stats.one_sample_t(c.scores, 0.5).p_value),
            )
        out.append(row)
    return out


def adjust(rows: list[dict], p_adjusted: list[float], alpha: float) -> list[dict]:
    """Rows with p_adjusted, significance and verdict set; `p_adjusted` holds one value per tested row, in order."""
    values = iter(p_adjusted)
    out = []
    for f in rows:
        if f["learned"]:
            p = float(next(values))
            significant = bool(p <= alpha)
            above = f["score"] > f["random_score_mean"]
            verdict = ("sensitive" if above else "significant-low") if significant else "not significant"
            f = {**f, "p_adjusted": _finite(p), "significant": significant, "verdict": verdict}
        out.append(f)
    return out


def _tested_p(rows: list[dict]) -> list[float]:
    # A p-value scipy could not compute (nan) is no evidence: it enters the family as 1.
    return [1.0 if f["p_value"] is None else f["p_value"] for f in rows if f["learned"]]


def requirement_text(r: TcavRequirement) -> str:
    who = "every model" if r.model == "all" else r.model
    cls = f"class {r.class_}" if r.class_ else "any class of the check"
    if r.significant is False:
        return f"{who}: {cls} must not be significantly sensitive to {r.concept} at any layer"
    parts = []
    if r.significant:
        parts.append(f"{cls} must be significantly sensitive to {r.concept} at some layer")
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
            learned = [f for f in cells if f["learned"]]
            if not learned:
                weak = True
                why.append(f"{role}/{k}: {r.concept} not learned at any layer (CAV accuracy < {MIN_CAV_ACCURACY})")
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


def status_and_summary(reqs: list[dict], rows: list[dict], accuracy_words: str) -> tuple[Status, str]:
    """A concept-score check's status and one-line summary from its evaluated requirements and rows."""
    not_learned = [f for f in rows if not f["learned"]]
    if any(not q["met"] for q in reqs):
        status = Status.FAIL  # the check's severity, against --fail-on, decides the exit code
    elif any(q["weak"] for q in reqs) or not_learned:
        status = Status.WARN  # weak evidence: some concept is not linearly decodable at some layer
    else:
        status = Status.PASS
    sensitive = [f for f in rows if f["verdict"] == "sensitive"]
    if reqs:
        summary = " | ".join(("MET " if q["met"] else "NOT MET ") + q["why"] for q in reqs)
    else:
        summary = f"{len(sensitive)} of {len(rows)} (model, layer, class, concept) cells significantly sensitive"
    if not_learned:
        summary += f" ({len(not_learned)} cells not learned: {accuracy_words} < {MIN_CAV_ACCURACY})"
    return status, summary


def conclude(check: TcavCheck, rows: list[dict], layers_by_model: dict[str, list[str]], family: int) -> CheckResult:
    """Requirements, status and summary from adjusted rows; `family` is the Holm family's size."""
    roles = list(layers_by_model)
    outcomes = [evaluate(r, rows, roles, check.classes) for r in check.require]
    reqs = [
        {"text": requirement_text(r), "model": r.model, "met": met, "weak": weak, "why": why}
        for r, (met, weak, why) in zip(check.require, outcomes)
    ]
    status, summary = status_and_summary(reqs, rows, "CAV accuracy")
    details = {
        "settings": {
            "cav": check.cav,
            "space": check.space,
            "random_sets": check.random_sets,
            "set_size": check.set_size,
            "alpha": check.alpha,
            "classes": list(check.classes),
            "concepts": list(check.concepts),
            "relative": [list(p) for p in check.relative],
            "test": "Welch two-sided t-test of concept vs random-vs-random scores, Holm-adjusted over "
            f"{family} tests (every tested TCAV cell of the audit)",
            "family_size": family,
            "min_cav_accuracy": MIN_CAV_ACCURACY,
        },
        "layers": layers_by_model,
        "requirements": reqs,
        "notes": [],  # the report's Limits box states what TCAV cannot claim
    }
    return CheckResult(
        id=check.id,
        method="tcav",
        status=status,
        severity=check.severity,
        summary=summary,
        requirement="; ".join(q["text"] for q in reqs) or "none (informational)",
        findings=rows,
        details=details,
    )


def run(check: TcavCheck, ctx: Context) -> CheckResult:
    cells, layers_by_model = _cells(check, ctx)
    rows = findings(cells)
    raw = _tested_p(rows)
    # Holm over this check alone; the pipeline widens the family to every TCAV check of the audit (correct_family).
    return conclude(check, adjust(rows, list(stats.holm(np.array(raw))), check.alpha), layers_by_model, len(raw))


def correct_family(checks: list[TcavCheck], results: list[CheckResult]) -> list[CheckResult]:
    """Holm over every tested cell of every TCAV check of the audit (METHODS.md: one family per audit).

    `checks[i]` is the policy spec of `results[i]`; results that are not TCAV or that crashed pass through.
    """
    tcav = [i for i, r in enumerate(results) if r.method == "tcav" and r.status != Status.ERROR]
    raw = [_tested_p(results[i].findings) for i in tcav]
    adjusted = list(stats.holm(np.array([p for ps in raw for p in ps])))
    family = len(adjusted)
    out = list(results)
    start = 0
    for i, ps in zip(tcav, raw):
        rows = adjust(results[i].findings, adjusted[start : start + len(ps)], checks[i].alpha)
        start += len(ps)
        out[i] = conclude(checks[i], rows, results[i].details["layers"], family)
    return out
