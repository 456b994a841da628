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

With at least as many features D as training rows m (a ResNet-50's pooled layers: D = 1024 or 2048 channels,
m = 66 at set_size 50) Newton's step in the primal is a (D + 1) x (D + 1) system, and one sklearn fit per problem
(the former fallback) costs 4-6 ms at m = 66, D = 2048 (9-10 ms on synthetic correlated features; 2 cores). The
problem is solved exactly in m dimensions instead (`_logistic_newton`): the optimal w lies in the row space of the
standardised features z (m x D), so with z = U s V^T and w = V c (z w = U s c, |w| = |c|) the same objective of c
on the m x m features U s has the same optimum; U s comes from the m x m Gram matrix z z^T and w = z^T (y - p)
from the optimality condition, so V is never formed. Measured at m = 66, D = 2048, 200 problems: 2.0 ms a problem,
about 40% of it the float64 standardisation; the same reduction through a thin QR of z^T (w = Q c, features R^T)
took 5.2 ms with one BLAS thread, 11 ms with two (np.linalg.qr on stacks: Householder QR and forming Q), and 295 ms
while another process held the CPUs (its threaded LAPACK calls stall): slower than sklearn.
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
# Problems per sub-batch of the Newton solver: at most BATCH, and at most as many as keep WORK_COPIES float64 arrays
# of (rows, D + 1) per problem within NEWTON_BUDGET bytes (`chunks` sizes the callers' batches by one such copy).
# The copies: with D < rows the features with their column of ones, its transpose, the Hessian (smaller) and the
# still-iterating problems' copies of the first two; with D >= rows only the standardised features (the Gram matrix
# and the rest are rows x rows), so the bound is loose there. At 66 rows: 1024 problems at D = 64, 62 at D = 2048.
# A problem over the budget on its own is fitted alone (cav.fit_cav makes the same float64 copy).
BATCH = 1024
NEWTON_BUDGET = 256 * 2**20
WORK_COPIES = 4
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

    `logistic`: batched Newton (below), for any D; `mean`: the difference of class means, as `cav.fit_cav`; `sgd`:
    one sklearn fit per problem (slow: the reference learner has no batched form)."""
    if learner == "logistic":
        vectors, offsets = _logistic_newton(x_tr, y_tr)
    elif learner == "mean":
        mu1 = x_tr[:, y_tr == 1].mean(1, dtype=np.float64)
        mu0 = x_tr[:, y_tr == 0].mean(1, dtype=np.float64)
        vectors, offsets = mu1 - mu0, -np.einsum("bd,bd->b", mu1 - mu0, (mu1 + mu0) / 2)
    else:  # sgd
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


def _sub_batches(count: int, rows: int, dim: int) -> list[slice]:
    """Slices of `count` problems for the Newton solver (see NEWTON_BUDGET)."""
    size = max(1, min(BATCH, NEWTON_BUDGET // (WORK_COPIES * 8 * rows * (dim + 1))))
    return [slice(s, min(s + size, count)) for s in range(0, count, size)]


def _logistic_newton(x_tr: np.ndarray, y_tr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2 logistic regression (C = 1, intercept unpenalised) on each problem's standardised features, by Newton's
    method in sub-batches; returns the direction in raw activation space w / sigma and its offset, unnormalised.

    The objective is sklearn's LogisticRegression(C=1.0)'s; Newton converges to its optimum to 1e-9 (sklearn's
    lbfgs stops at tol 1e-4), so the two agree to about 1e-4 of |w| (tests compare them; with D >= m on correlated
    features sklearn stops further away: cosine 0.9988 measured at m = 66, D = 2048).

    D < m: Newton on z itself. D >= m: the optimum w lies in the row space of z (a component of w orthogonal to
    every row adds to |w| and changes no decision value). With z = U s V^T, the decision values of w = V c are
    U s c and |w| = |c|, so Newton on the m x m features f = U s (not re-standardised) finds the optimal c, exactly;
    f comes from the eigendecomposition of the Gram matrix z z^T = f f^T (eigh's backward error perturbs z z^T by
    about 1e-16 of its norm, which moves the decision values by as little), and w = z^T (y - p) is the optimality
    condition w + z^T (p - y) = 0, which needs neither V nor a division by a small singular value."""
    count, rows, dim = x_tr.shape
    y = np.asarray(y_tr, np.float64)
    out_v, out_b = [], []
    for part in _sub_batches(count, rows, dim):
        z = np.array(x_tr[part], np.float64)  # a copy: standardised in place below
        mu = z.mean(axis=1, keepdims=True)
        sigma = z.std(axis=1, keepdims=True)
        sigma[sigma == 0] = 1.0
        z -= mu
        z /= sigma
        if dim < rows:
            theta = _newton(z, y)
            w = theta[:, :dim]
        else:
            s, u = np.linalg.eigh(np.matmul(z, z.transpose(0, 2, 1)))  # the Gram matrix z z^T, (b, m, m)
            f = u * np.sqrt(np.maximum(s, 0.0))[:, None, :]  # f f^T = z z^T
            theta = _newton(f, y)
            a = y - expit(np.matmul(f, theta[:, :rows, None])[..., 0] + theta[:, -1:])
            w = np.matmul(a[:, None, :], z)[:, 0, :]  # z^T (y - p)
        w = w / sigma[:, 0, :]
        out_v.append(w)
        out_b.append(theta[:, -1] - np.einsum("bd,bd->b", w, mu[:, 0, :]))
    return np.concatenate(out_v), np.concatenate(out_b)


def _newton(features: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Minimise 0.5 |w|^2 + sum of log-losses of features @ w + b per problem, features (b, m, k) as given (already
    standardised); returns theta (b, k + 1) = (w, b)."""
    z = np.concatenate([features, np.ones((*features.shape[:2], 1))], axis=2)  # (b, m, k + 1)
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
    return theta


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
