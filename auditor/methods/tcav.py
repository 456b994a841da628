"""TCAV (Kim et al. 2018) with random-set repetition, significance by the exchangeability test against
pseudo-concepts (default; methods/exchangeable.py) or the paper's Welch test against random-vs-random scores, and
Holm correction — see METHODS.md. What it can claim: a class logit is locally *sensitive* to a concept direction;
never that the model *relies* on the concept.

Cost: activations come from the store (one forward pass per model and image set); the logit gradient is taken
once per (model, layer, class) and every CAV's sensitivities are one matrix product with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from auditor import data
from auditor.context import Context, derive_seed, subsample
from auditor.methods import exchangeable, stats
from auditor.methods.cav import Cav, features, train_cav
from auditor.methods.requirements import requirement_line
from auditor.methods.concept_scores import (
    MIN_CAV_ACCURACY, TCAV_WORDS, Null, _tested_p, adjust, exchange_notes, null_detail, requirement_rows,
    spare_set, status_and_summary, test_fields, test_words,
)
from auditor.models.base import has_layer_grads
from auditor.policy import TcavCheck, check_layers, relative_name
from auditor.results import CheckResult, Status
from auditor.schemas.common import checked_rows
from auditor.schemas.tcav import TcavFinding

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
    cosines: np.ndarray | None = None  # (N,) mean cosine sensitivity per run (None: no full gradient, ONNX flatten)
    score_p: float | None = None  # exchangeability test: p of the TCAV score (s1)
    cosine_p: float | None = None  # p of the cosine sensitivity (s2)
    untested: str | None = None  # why the cell was not tested (e.g. a gradient map over the ONNX budget)

    @property
    def learned(self) -> bool:
        return float(self.accuracies.mean()) >= MIN_CAV_ACCURACY

    @property
    def tested(self) -> bool:
        return self.learned and self.untested is None


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
    spare: data.ImageSet  # the random pool less R_1..R_N: what pseudo-concepts are drawn from


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
    spare = spare_set(ctx.sets.random_pool, randoms[1:], ctx.pre, f"{check.id}:spare-random")
    return Draws(seed, randoms, concept_rows, class_sets, spare)


def family_bound(policy) -> int:
    """Cells of every TCAV check of the audit (Holm's family; cells found not learned later only shrink it)."""
    return sum(
        len(layers) * len(c.classes) * (len(c.concepts) + len(c.relative))
        for c in policy.checks if c.method == "tcav"
        for layers in check_layers(policy, c).values()
    )


def gradient_rows(ctx: Context, role: str, layer: str, class_set: data.ImageSet, target: int,
                  space: str) -> np.ndarray | None:
    """The logit gradient of every class image in the CAV's feature space, (n, D) float64: pooled (summed over
    positions) or flattened. None for a flattened ONNX layer whose finite-difference map is over budget."""
    model = ctx.models[role]
    acts = ctx.store.acts(model, [layer], class_set)[layer]
    if space == "pooled" or acts.ndim == 2:
        return np.asarray(ctx.store.pooled_grads(model, layer, class_set, target), np.float64)
    size = int(np.prod(acts.shape[1:]))
    if not has_layer_grads(model) and exchangeable.fd_rows(len(acts), size) > exchangeable.MAX_FD_ROWS:
        return None
    g = np.asarray(ctx.store.grad_maps(model, [layer], class_set, target)[layer])
    return g.reshape(len(g), -1).astype(np.float64)


def cosines(grads: np.ndarray, sens: np.ndarray) -> np.ndarray:
    """Mean over images of (g . v) / (|g| |v|) per CAV, from unit CAVs' sensitivities (n, k) -> (k,); an image
    whose gradient is 0 contributes 0."""
    norm = np.linalg.norm(grads, axis=1)
    return np.divide(sens, norm[:, None], out=np.zeros_like(sens), where=norm[:, None] > 0).mean(axis=0)


def pseudo_plan(check, ctx: Context, spare: int) -> tuple[int, bool, np.ndarray]:
    """(M, capped, rows (M, set_size) of the spare set) for a TCAV check (family: every TCAV cell of the audit)."""
    m, capped = exchangeable.pseudo_count(check.alpha, family_bound(ctx.policy), check.max_pseudo)
    seed = derive_seed(ctx.policy.seed, check.id, "pseudo")
    return m, capped, exchangeable.pseudo_rows(spare, check.set_size, m, seed)


@dataclass(frozen=True)
class SetsOnDemand:
    """A sequence of the `given` items, then `make(r)` for each r of `rest`, made when indexed (a slice: a list)."""

    given: list
    make: Callable[[Any], Any]
    rest: Sequence

    def __len__(self) -> int:
        return len(self.given) + len(self.rest)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self.given[i] if i < len(self.given) else self.make(self.rest[i - len(self.given)])


Scored = tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]


def _fit_and_score(x: np.ndarray, n: int, seed: int, grads: dict[str, np.ndarray], learner: str) -> Scored:
    """CAVs of the problems x (b, 2n, D) (rows < n: label 1) on the run's split, and every class's statistics:
    ({class: (b,) TCAV score}, {class: magnitude}, {class: mean cosine}, (b,) held-out accuracy)."""
    y = np.concatenate([np.ones(n, int), np.zeros(n, int)])
    tr, te = exchangeable.run_split(n, seed)
    fitted = exchangeable.fit_batch(x[:, tr], y[tr], x[:, te], y[te], learner, seed)
    scores, mags, coss = {}, {}, {}
    for k, g in grads.items():
        sens = g @ fitted.vectors.astype(np.float64).T
        scores[k], mags[k] = tcav_scores(sens)
        coss[k] = cosines(g, sens)
    return scores, mags, coss, fitted.accuracies


def score_runs(problems: Callable[[int, slice], np.ndarray], count: int, n: int, dim: int, runs: int,
               grads: dict[str, np.ndarray], learner: str, seed: int) -> Scored:
    """Score `count` problems over `runs` runs exactly alike: problems(i, part) gives run i's (b, 2n, D) rows of
    the problems in `part`; each run has one split and one fit seed for all. Returns (N, count) arrays."""
    out = ({k: np.zeros((runs, count)) for k in grads}, {k: np.zeros((runs, count)) for k in grads},
           {k: np.zeros((runs, count)) for k in grads}, np.zeros((runs, count)))
    for i in range(runs):
        for part in exchangeable.chunks(count, 2 * n, dim):
            got = _fit_and_score(problems(i, part), n, derive_seed(seed, "split", str(i + 1)), grads, learner)
            for whole, piece in zip(out[:3], got[:3]):
                for k in grads:
                    whole[k][i, part] = piece[k]
            out[3][i, part] = got[3]
    return out


def score_sets(sets: list[np.ndarray], random_runs: list[np.ndarray], grads: dict[str, np.ndarray], learner: str,
               seed: int) -> Scored:
    """Concepts and pseudo-concepts (each (n, D)): run i is each set against random_runs[i]."""
    n = len(sets[0])
    return score_runs(lambda i, part: np.stack([np.concatenate([s, random_runs[i][:n]]) for s in sets[part]]),
                      len(sets), n, sets[0].shape[1], len(random_runs), grads, learner, seed)


def score_pairs(pairs: list[tuple[np.ndarray, np.ndarray]], runs: int, grads: dict[str, np.ndarray], learner: str,
                seed: int) -> Scored:
    """Relative cells (A vs B) and pseudo-pairs alike: run i is each A against its B, both cut to the same seeded
    RELATIVE_SUBSAMPLE of their rows (the runs differ as `relative_cavs`'s do)."""
    n = len(pairs[0][0])
    k = max(2, int(RELATIVE_SUBSAMPLE * n))
    rngs = [np.random.default_rng(derive_seed(seed, "relative-run", str(i + 1))) for i in range(runs)]
    picks = [(np.sort(r.permutation(n)[:k]), np.sort(r.permutation(n)[:k])) for r in rngs]

    def problems(i: int, part: slice) -> np.ndarray:
        ia, ib = picks[i]
        return np.stack([np.concatenate([a[ia], b[ib]]) for a, b in pairs[part]])

    return score_runs(problems, len(pairs), k, pairs[0][0].shape[1], runs, grads, learner,
                      derive_seed(seed, "relative"))


def random_band_cavs(feats_r: list[np.ndarray], learner: str, seed: int) -> np.ndarray:
    """The N random-vs-random CAVs (R_{i-1} vs R_i) of the report's random band, fitted in one batch by the
    test's solver (40 one-at-a-time sklearn fits took a third of the check's time on the demo; the band is shown,
    never tested against, under this test)."""
    n = min(len(f) for f in feats_r)
    x = np.stack([np.concatenate([feats_r[i - 1][:n], feats_r[i][:n]]) for i in range(1, len(feats_r))])
    y = np.concatenate([np.ones(n, int), np.zeros(n, int)])
    tr, te = exchangeable.run_split(n, derive_seed(seed, "null-split"))
    return exchangeable.fit_batch(x[:, tr], y[tr], x[:, te], y[te], learner, derive_seed(seed, "null")).vectors


def _exchangeable_cells(check: TcavCheck, ctx: Context, d: Draws) -> tuple[list[Cell], list[Null], int, bool]:
    """Cells with both statistics' permutation p-values, and the pseudo-concepts' null of each (model, layer,
    class). The random-vs-random runs are still trained (the report's random band), never tested against."""
    names = ctx.policy.data.classes.names
    n_runs = check.random_sets
    m, capped, rows = pseudo_plan(check, ctx, len(d.spare))
    half = check.set_size
    pair_rows = (exchangeable.pseudo_rows(len(d.spare), 2 * half, m, derive_seed(d.seed, "pseudo-pairs"))
                 if check.relative else [])
    cells: list[Cell] = []
    nulls: list[Null] = []
    for role, layers in check_layers(ctx.policy, check).items():
        model = ctx.models[role]
        ctx.log(f"tcav {check.id}: {role} ({len(layers)} layers, {len(check.concepts)} concepts, {n_runs} runs, "
                f"{m} pseudo-concepts)")
        random_acts = [ctx.store.acts(model, layers, r) for r in d.randoms]
        concept_acts = {c: ctx.store.acts(model, layers, ctx.sets.concepts[c]) for c in check.concepts}
        spare_acts = ctx.store.acts(model, layers, d.spare)
        for k in check.classes:
            if has_layer_grads(model):
                ctx.store.grad_maps(model, layers, d.class_sets[k], names.index(k))
            ctx.store.acts(model, layers, d.class_sets[k])
        for layer in layers:
            feats_r = [features(np.asarray(a[layer]), check.space) for a in random_acts]
            null_cavs = random_band_cavs(feats_r, check.cav, d.seed)
            grads = {k: gradient_rows(ctx, role, layer, d.class_sets[k], names.index(k), check.space)
                     for k in check.classes}
            if any(g is None for g in grads.values()):
                size = int(np.prod(np.asarray(random_acts[0][layer]).shape[1:]))
                for k in check.classes:
                    why = exchangeable.over_budget(len(d.class_sets[k]), size, layer)
                    cells += [Cell(role, layer, k, c, np.zeros(n_runs), np.zeros(n_runs), np.zeros(n_runs),
                                   np.zeros(n_runs), untested=why)
                              for c in [*check.concepts, *(relative_name(a, b) for a, b in check.relative)]]
                continue
            fs = features(np.asarray(spare_acts[layer]), check.space)
            fc = {c: features(np.asarray(concept_acts[c][layer]), check.space, d.concept_rows[c])
                  for c in check.concepts}
            # The pseudo-concepts' rows are copied out of the spare set when a batch of problems needs them: all at
            # once they were 393 MB at set_size 50, 2,048 channels and ~1,000 pseudo-concepts (real_scale.py).
            sets = SetsOnDemand([fc[c] for c in check.concepts], lambda r: fs[r], rows)
            groups = [("concept", list(check.concepts), score_sets(sets, feats_r[1:], grads, check.cav, d.seed))]
            if check.relative:  # relative cells against pseudo-pairs: two disjoint pseudo-concepts each
                pairs = SetsOnDemand([(fc[a], fc[b]) for a, b in check.relative],
                                     lambda r: (fs[r[:half]], fs[r[half:]]), pair_rows)
                groups.append(("relative", [relative_name(a, b) for a, b in check.relative],
                               score_pairs(pairs, n_runs, grads, check.cav, d.seed)))
            for k in check.classes:
                null_scores = (grads[k] @ null_cavs.astype(np.float64).T > 0).mean(axis=0)
                for kind, names_, (scores, mags, coss, acc) in groups:
                    nc = len(names_)
                    ps, pc = scores[k][:, nc:].mean(axis=0), coss[k][:, nc:].mean(axis=0)
                    nulls.append(Null(role, layer, k, ps, pc, kind))
                    for j, c in enumerate(names_):
                        s1, s2 = scores[k][:, j], coss[k][:, j]
                        cells.append(Cell(
                            model=role, layer=layer, cls=k, concept=c, scores=s1, random_scores=null_scores,
                            magnitudes=mags[k][:, j], accuracies=acc[:, j], cosines=s2,
                            score_p=exchangeable.permutation_p(abs(s1.mean() - 0.5), np.abs(ps - 0.5)),
                            cosine_p=exchangeable.permutation_p(abs(s2.mean()), np.abs(pc)),
                        ))
    return cells, nulls, m, capped


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
                fc = features(np.asarray(concept_acts[c][layer]), check.space, concept_rows[c])
                concept[c] = [
                    train_cav(fc, feats_r[i], check.cav, derive_seed(seed, "cav", c, str(i)))
                    for i in range(1, n_runs + 1)
                ]
            for a, b in check.relative:
                concept[relative_name(a, b)] = relative_cavs(
                    features(np.asarray(concept_acts[a][layer]), check.space, concept_rows[a]),
                    features(np.asarray(concept_acts[b][layer]), check.space, concept_rows[b]),
                    check.cav, n_runs, derive_seed(seed, "relative", a, b),
                )
            names_all = list(concept)  # the check's concepts, then its relative pairs
            all_cavs = np.stack([v.vector for v in null] + [v.vector for c in names_all for v in concept[c]])
            for k in check.classes:
                sens = sensitivities(ctx, role, layer, class_sets[k], names.index(k), all_cavs, check.space)
                score, magnitude = tcav_scores(sens)
                random_scores = score[:n_runs]
                # The cosine sensitivity (s2) beside the score, where the gradient is at hand (pooled, or torch).
                cheap = check.space == "pooled" or has_layer_grads(model)
                g = gradient_rows(ctx, role, layer, class_sets[k], names.index(k), check.space) if cheap else None
                cos = None if g is None else cosines(g, sens)
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
                            cosines=None if cos is None else cos[cols],
                        )
                    )
    return cells, layers_by_model


def findings(cells: list[Cell], test: str = "welch", statistic: str = "score") -> list[dict]:
    """One finding per cell with its raw p-value of the deciding test; `adjust` then sets p_adjusted and the
    verdict. Under `exchangeable` both statistics' permutation p-values are kept (`score_p_value`,
    `cosine_p_value`) and `p_value` is the one of `statistic`."""
    out = []
    for c in cells:
        row = {
            "model": c.model,
            "layer": c.layer,
            "class": c.cls,
            "concept": c.concept,
            "cav_accuracy": None if c.untested else round(float(c.accuracies.mean()), 6),
            "learned": c.learned,
            "tested": c.tested,
            "random_score_mean": round(float(c.random_scores.mean()), 6),
            "random_score_std": round(float(c.random_scores.std()), 6),
            "score": None, "score_std": None, "magnitude": None, "p_value": None, "p_adjusted": None,
            "p_one_sample": None, "significant": False, "verdict": "not learned",
        }
        if c.learned:
            row.update(magnitude=round(float(c.magnitudes.mean()), 6))
        row.update(test_fields(c, test, statistic))
        out.append(row)
    return out


def conclude(check: TcavCheck, rows: list[dict], layers_by_model: dict[str, list[str]], family: int,
             exchange: dict | None = None) -> CheckResult:
    """Requirements, status and summary from adjusted rows; `family` is the Holm family's size; `exchange` the
    exchangeability test's details ({"pseudo_concepts", "capped", "spare", "null", "notes"}), if it ran."""
    reqs = requirement_rows(check.require, rows, list(layers_by_model), check.classes, TCAV_WORDS)
    status, summary = status_and_summary(reqs, rows, TCAV_WORDS.accuracy)
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
            "test": test_words(check.test, family, check.statistic, (exchange or {}).get("pseudo_concepts", 0),
                               spare=(exchange or {}).get("spare", 0)),
            "test_name": check.test,
            "statistic": check.statistic if check.test == "exchangeable" else "score",
            "family_size": family,
            "min_cav_accuracy": MIN_CAV_ACCURACY,
        },
        "layers": layers_by_model,
        "requirements": reqs,
        # The report's Limits box states what TCAV cannot claim; these are this run's own caveats.
        "notes": list((exchange or {}).get("notes", [])),
    }
    if exchange is not None:
        details["settings"].update(pseudo_concepts=exchange["pseudo_concepts"], spare_images=exchange["spare"],
                                   max_pseudo=check.max_pseudo)
        details["null"] = exchange["null"]
    return CheckResult(
        id=check.id,
        method="tcav",
        status=status,
        severity=check.severity,
        summary=summary,
        requirement=requirement_line(reqs),
        findings=checked_rows(TcavFinding, rows),
        details=details,
    )


def run(check: TcavCheck, ctx: Context) -> CheckResult:
    layers_by_model = check_layers(ctx.policy, check)
    exchange = None
    if check.test == "exchangeable":
        d = draws(check, ctx)
        cells, nulls, m, capped = _exchangeable_cells(check, ctx, d)
        exchange = {"pseudo_concepts": m, "capped": capped, "spare": len(d.spare), "null": null_detail(nulls),
                    "notes": exchange_notes(m, capped, check.max_pseudo, len(d.spare), check.set_size)}
    else:
        cells, layers_by_model = _cells(check, ctx)
    rows = findings(cells, check.test, check.statistic)
    raw = _tested_p(rows)
    # Holm over this check alone; the pipeline widens the family to every TCAV check of the audit (correct_family).
    return conclude(check, adjust(rows, list(stats.holm(np.array(raw))), check.alpha), layers_by_model, len(raw),
                    exchange)


def _exchange_of(result: CheckResult) -> dict | None:
    """The exchangeability details `conclude` put in a result, to carry through the family correction."""
    d = result.details
    if "null" not in d:
        return None
    s = d["settings"]
    return {"pseudo_concepts": s["pseudo_concepts"], "spare": s["spare_images"], "null": d["null"],
            "notes": d.get("notes", [])}


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
        out[i] = conclude(checks[i], rows, results[i].details["layers"], family, _exchange_of(results[i]))
    return out
