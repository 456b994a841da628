"""The exchangeability test of TCAV and SACV (METHODS.md, TCAV item 4): are the concept images, as the class
logit's sensitivity sees them, like any set of the same size from the random pool?

Pseudo-concepts Q_1..Q_M are sets of `set_size` random-pool images that are in none of the random sets R_1..R_N
they are scored against. Each is scored exactly like the concept: the same learner, the same N runs against
R_1..R_N with the same per-run train/test split, the same class images and gradients; its statistic is the mean
over its N runs. With d = |statistic - centre|,

    p = (1 + #{m : d_m >= d_concept}) / (M + 1).

One set of M pseudo-concepts serves every concept of a (model, layer, class). M is sized so that the smallest
attainable p, 1 / (M + 1), is at most alpha / (4 x family size), and capped.

Why every pseudo-concept gets all N runs (M x N CAV fits, not M): the concept's statistic averages N runs that
share one concept set; a single run of a pseudo-concept is a noisier statistic (at the demo's layers a single
run's TCAV score is about 0 or 1, so its d is about 0.5 whatever the set), which would make the test blind.

Fitting M x N CAVs one by one with sklearn costs about 2 ms each (38,000 fits on the demo's TCAV check: 80 s), so
the logistic learner here is a batched Newton solver of the same objective as `cav.fit_cav`'s (L2 logistic
regression, C = 1, unpenalised intercept, on standardised features), and under this test the concept's CAVs come
from the same solver as the pseudo-concepts' (exchangeable by construction, not up to solver tolerance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import expit
from sklearn.model_selection import train_test_split

from auditor.methods.cav import fit_cav

DEFAULT_MAX_PSEUDO = 2000
# A pseudo-concept is `set_size` images of the spare pool (the random pool less the paired random sets). Drawn
# from a spare of S images, the sets overlap and the null is narrower than a fresh draw's by the finite-population
# factor (S - n) / (S - 1) in variance: at S = 2n that is 0.5 (refused in validate), at S = 10n 0.9 (no warning).
MIN_SPARE_SETS = 2
WARN_SPARE_SETS = 10
# Problems per batch of the Newton solver: (batch, rows, D + 1) float64 arrays, about 60 MB at 66 rows, D = 64.
BATCH = 1024
NEWTON_MAX_ITER = 50
NEWTON_TOL = 1e-9


def pseudo_count(alpha: float, family: int, cap: int = DEFAULT_MAX_PSEUDO) -> tuple[int, bool]:
    """(M, capped): the smallest M with 1 / (M + 1) <= alpha / (4 family), at most `cap`."""
    need = max(1, math.ceil(4 * max(family, 1) / alpha - 1e-9) - 1)
    return min(need, cap), need > cap


def permutation_p(d_concept: float, d_pseudo: np.ndarray) -> float:
    """(1 + #{d_m >= d_concept}) / (M + 1); a tie counts against the concept (1e-12 absorbs float rounding)."""
    d_pseudo = np.asarray(d_pseudo, np.float64)
    return (1 + int(np.sum(d_pseudo >= d_concept - 1e-12))) / (len(d_pseudo) + 1)


def pseudo_rows(spare: int, size: int, count: int, seed: int) -> np.ndarray:
    """(count, size) row numbers of the spare pool: each pseudo-concept drawn without replacement, independently
    of the others (so two pseudo-concepts may share images when the spare is not `count` sets large)."""
    rng = np.random.default_rng(seed)
    return np.sort(np.stack([rng.choice(spare, size=size, replace=False) for _ in range(count)]), axis=1)


def run_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The stratified 2/3 : 1/3 split of one run over 2n rows (rows < n: concept side, label 1), as `train_cav`
    makes it; shared by the concept and every pseudo-concept of the run."""
    y = np.concatenate([np.ones(n, int), np.zeros(n, int)])
    tr, te = train_test_split(np.arange(2 * n), test_size=1 / 3, stratify=y, random_state=seed)
    return np.sort(tr), np.sort(te)


@dataclass(frozen=True)
class Fitted:
    """CAVs of a batch of problems: unit vectors (B, D) toward label 1, offsets (B,), held-out accuracy (B,)."""

    vectors: np.ndarray
    offsets: np.ndarray
    accuracies: np.ndarray


def fit_batch(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, learner: str,
              seed: int) -> Fitted:
    """Fit B CAV problems that share their labels: x_tr (B, m, D), y_tr (m,), x_te (B, t, D), y_te (t,).

    `logistic`: batched Newton (below); `mean`: the difference of class means, as `cav.fit_cav`; `sgd`: one
    sklearn fit per problem (slow: the reference learner has no batched form)."""
    if learner == "logistic" and x_tr.shape[2] < x_tr.shape[1]:
        vectors, offsets = _logistic_newton(x_tr, y_tr)
    elif learner == "mean":
        mu1 = x_tr[:, y_tr == 1].mean(1, dtype=np.float64)
        mu0 = x_tr[:, y_tr == 0].mean(1, dtype=np.float64)
        vectors, offsets = mu1 - mu0, -np.einsum("bd,bd->b", mu1 - mu0, (mu1 + mu0) / 2)
    else:  # sgd, or logistic with more features than rows (flattened conv maps): the primal Hessian is D x D
        cavs = [fit_cav(x_tr[b], y_tr, x_te[b], y_te, learner, seed) for b in range(len(x_tr))]
        vectors = np.stack([c.vector for c in cavs]).astype(np.float64)
        offsets = np.array([c.offset for c in cavs])
    norms = np.linalg.norm(vectors, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    vectors, offsets = vectors / safe[:, None], offsets / safe
    decision = np.einsum("btd,bd->bt", np.asarray(x_te, np.float64), vectors) + offsets[:, None]
    accuracies = ((decision > 0).astype(int) == y_te[None, :]).mean(axis=1)
    return Fitted(vectors.astype(np.float32), offsets, accuracies)


def _objective(f: np.ndarray, y: np.ndarray, theta: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """0.5 |w|^2 + sum of log-losses, per problem, from the decision values f (b, m)."""
    return 0.5 * (penalty * theta**2).sum(axis=1) + (np.logaddexp(0.0, f) - y * f).sum(axis=1)


def _damped(z: np.ndarray, y: np.ndarray, theta: np.ndarray, step: np.ndarray, penalty: np.ndarray,
            before: np.ndarray) -> np.ndarray:
    """The Newton step, halved for each problem until the objective does not rise (a full step from far away, e.g.
    one that saturates every row, can overshoot); the objective is convex, so a small enough step descends."""
    scale = np.ones(len(step))
    for _ in range(40):
        trial = theta - scale[:, None] * step
        after = _objective(np.matmul(z, trial[..., None])[..., 0], y, trial, penalty)
        worse = after > before + 1e-12 * np.abs(before)
        if not worse.any():
            break
        scale[worse] *= 0.5
    return scale[:, None] * step


def _logistic_newton(x_tr: np.ndarray, y_tr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2 logistic regression (C = 1, intercept unpenalised) on each problem's standardised features, by Newton's
    method in batches; returns the direction in raw activation space w / sigma and its offset, unnormalised.

    The objective is sklearn's LogisticRegression(C=1.0)'s; Newton converges to its optimum to 1e-9 (sklearn's
    lbfgs stops at tol 1e-4), so the two agree to about 1e-4 of |w| (tests compare them)."""
    out_v, out_b = [], []
    y = np.asarray(y_tr, np.float64)
    for first in range(0, len(x_tr), BATCH):
        part = slice(first, first + BATCH)
        x = np.asarray(x_tr[part], np.float64)
        mu = x.mean(axis=1, keepdims=True)
        sigma = x.std(axis=1, keepdims=True)
        sigma[sigma == 0] = 1.0
        z = np.concatenate([(x - mu) / sigma, np.ones((*x.shape[:2], 1))], axis=2)  # (b, m, D + 1)
        zt = np.ascontiguousarray(z.transpose(0, 2, 1))
        d = z.shape[2] - 1
        theta = np.zeros((len(z), d + 1))
        penalty = np.ones(d + 1)
        penalty[-1] = 0.0
        active = np.arange(len(z))
        for _ in range(NEWTON_MAX_ITER):
            whole = len(active) == len(z)  # no copy while every problem is still iterating
            za, zta, th = (z, zt, theta) if whole else (z[active], zt[active], theta[active])
            f = np.matmul(za, th[..., None])[..., 0]
            p = expit(f)
            grad = np.matmul(zta, (p - y)[..., None])[..., 0] + penalty * th
            hess = np.matmul(zta * (p * (1 - p))[:, None, :], za)
            hess[:, np.arange(d), np.arange(d)] += 1.0
            hess[:, d, d] += 1e-10  # the intercept's curvature vanishes when every row is saturated
            step = np.linalg.solve(hess, grad[..., None])[..., 0]
            step = _damped(za, y, th, step, penalty, _objective(f, y, th, penalty))
            theta[active] = th - step
            # Converged problems leave the batch: most converge in 6-8 steps, a few separable ones take more.
            # (Starting from the same set's solution of the previous run measured no faster on the demo: 30 s
            # against 25-27 s for the TCAV check, the far starts needing halved steps.)
            active = active[np.abs(step).max(axis=1) > NEWTON_TOL * (1 + np.abs(th).max(axis=1))]
            if not len(active):
                break
        w = theta[:, :d] / sigma[:, 0, :]
        out_v.append(w)
        out_b.append(theta[:, d] - np.einsum("bd,bd->b", w, mu[:, 0, :]))
    return np.concatenate(out_v), np.concatenate(out_b)


# Head rows (two per image and direction) an ONNX model may spend on finite-difference gradient maps for this test:
# the pseudo-concepts need the full map (M x N directions per image otherwise). Measured on the demo candidate:
# 33,000 rows/s from its 8 x 8 layer (3,072 values: 369,000 rows for 60 images, 11 s), 1,300 rows/s from its
# 32 x 32 layer (32,768 values: 3.9 million rows, about 50 minutes).
MAX_FD_ROWS = 1_000_000


def fd_rows(images: int, size: int) -> int:
    return 2 * images * size


OVER_BUDGET_SHORT = "an ONNX layer whose gradient map is over the finite-difference budget"


def over_budget(images: int, size: int, layer: str) -> str:
    return (f"the exchangeability test needs the full gradient map at {layer!r}, which an ONNX model "
            f"gives only by finite differences ({fd_rows(images, size):,} head passes for {images} images, over "
            f"the budget of {MAX_FD_ROWS:,}); use a smaller layer, a torch model, or test: welch")


def chunks(count: int, rows: int, dim: int, budget: int = 256 * 2**20) -> list[slice]:
    """Slices of `count` problems whose (rows x dim) float64 copies fit `budget` bytes together."""
    size = max(1, min(BATCH, budget // max(8 * rows * dim, 1)))
    return [slice(s, min(s + size, count)) for s in range(0, count, size)]


def spare_warning(spare: int, size: int) -> str | None:
    """The report's note when the spare pool is small enough to narrow the null (see MIN_SPARE_SETS)."""
    if spare >= WARN_SPARE_SETS * size:
        return None
    return (f"the pseudo-concepts are drawn from {spare} spare random images ({spare / size:.1f} sets of {size}): "
            f"they overlap, and the null distribution is narrower than for fresh draws (by a variance factor of "
            f"{(spare - size) / max(spare - 1, 1):.2f}), which makes p-values smaller than they should be; a random "
            f"pool with {WARN_SPARE_SETS} sets beyond the random sets avoids it")


def size_problems(check, where: str, pool: int | None, concepts: dict[str, int], pool_folder: str = "") -> list[str]:
    """What the policy's sets lack for a check's random draws and exchangeability test (one line each, naming the
    YAML key, the counts and the fix): Welch draws N + 1 disjoint random sets; the exchangeability test a spare
    pool of MIN_SPARE_SETS sets beyond the N paired random sets (a pseudo-pair of relative TCAV takes two disjoint
    sets of it), and concept folders of `set_size` (a pseudo-concept has `set_size` images: a smaller concept set
    would not be exchangeable with it). `pool` is the number of images in data.random.folder (`pool_folder`)."""
    welch = getattr(check, "test", None) != "exchangeable"
    sets = check.random_sets + (1 if welch else MIN_SPARE_SETS)
    need = sets * check.set_size
    out = []
    if pool is not None and pool < need:
        source = f"data.random.folder ({pool_folder})" if pool_folder else "data.random.folder"
        size = f"set_size = {check.set_size} images"
        if welch:
            what = f"test welch draws random_sets + 1 = {sets} disjoint sets of {size}"
        else:
            what = (f"test exchangeable draws random_sets = {check.random_sets} sets of {size} and its pseudo-concepts "
                    f"from {MIN_SPARE_SETS} more sets")
        out.append(f"{where}.random_sets: {what}, all from {source}: it needs {need} images, the folder has {pool}; add "
                   f"{need - pool} images to it or lower random_sets / set_size"
                   + ("" if welch else ", or use test: welch"))
    for j, c in enumerate([] if welch else check.concepts):
        # (A folder of fewer than 3 images has its own line from the pipeline: one line per mistake.)
        if c in concepts and 3 <= concepts[c] < check.set_size:
            out.append(f"{where}.concepts[{j}]: concept {c!r} has {concepts[c]} images; test exchangeable compares "
                       f"it with pseudo-concepts of set_size {check.set_size}: add images or lower set_size")
    return out
