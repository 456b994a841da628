"""The exchangeability test (METHODS.md, TCAV item 4) against slow, obviously correct references."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import tinynet
from auditor import data, pipeline
from auditor.context import derive_seed

from auditor.methods import exchangeable, spatial, tcav
from auditor.methods.cav import features, fit_cav
from auditor.policy import PolicyError, load_policy


def test_permutation_p_counts_pseudo_concepts_at_least_as_far():
    rng = np.random.default_rng(0)
    for _ in range(50):
        null = np.round(rng.random(rng.integers(1, 40)), 2)  # rounded: ties happen
        d = float(np.round(rng.random(), 2))
        slow = (1 + sum(1 for v in null if v >= d)) / (len(null) + 1)
        assert exchangeable.permutation_p(d, null) == slow


def test_pseudo_count_is_the_smallest_m_that_reaches_alpha_over_4_family():
    for alpha in (0.05, 0.01, 0.1):
        for family in (1, 3, 12, 40):
            m, capped = exchangeable.pseudo_count(alpha, family, cap=10**9)
            slow = next(k for k in range(1, 10**6) if 1 / (k + 1) <= alpha / (4 * family) + 1e-15)
            assert (m, capped) == (slow, False)
    assert exchangeable.pseudo_count(0.05, 1000, cap=2000) == (2000, True)


def test_pseudo_rows_are_sets_without_repeats_and_reproducible():
    rows = exchangeable.pseudo_rows(30, 12, 50, seed=4)
    assert rows.shape == (50, 12) and all(len(set(r)) == 12 for r in rows) and rows.max() < 30
    assert np.array_equal(rows, exchangeable.pseudo_rows(30, 12, 50, seed=4))


def test_batched_logistic_is_sklearns_logistic_regression():
    """Same objective as cav.fit_cav's learner (C = 1 on standardised features), solved to convergence."""
    rng = np.random.default_rng(1)
    n, d = 24, 7
    tr, te = exchangeable.run_split(n, 5)
    y = np.r_[np.ones(n, int), np.zeros(n, int)]
    x = rng.standard_normal((6, 2 * n, d)) + y[None, :, None] * rng.random(d) * 0.8
    fitted = exchangeable.fit_batch(x[:, tr], y[tr], x[:, te], y[te], "logistic", 0)
    for b in range(len(x)):
        xt = x[b, tr]
        mu, sigma = xt.mean(0), xt.std(0)
        clf = LogisticRegression(C=1.0, tol=1e-12, max_iter=100000).fit((xt - mu) / sigma, y[tr])
        w = clf.coef_[0] / sigma
        offset = clf.intercept_[0] - w @ mu
        norm = np.linalg.norm(w)
        assert np.allclose(fitted.vectors[b], w / norm, atol=1e-5)
        assert np.isclose(fitted.offsets[b], offset / norm, atol=1e-5)
        assert fitted.accuracies[b] == np.mean(((x[b, te] @ w + offset) > 0).astype(int) == y[te])


def _primal_optimum(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """The slow reference: 0.5 |w|^2 + sum of log-losses of z w + b, z = x standardised (sigma 0 -> 1), minimised by
    scipy's L-BFGS-B in all D dimensions (exact gradient, tight tolerances); returns the unnormalised direction in
    raw space w / sigma and its offset. Asserts that the gradient at the answer vanishes."""
    from scipy.optimize import minimize

    mu, sigma = x.mean(0), x.std(0)
    sigma[sigma == 0] = 1.0
    z, y = (x - mu) / sigma, y.astype(np.float64)

    def value_and_grad(theta):
        w, b = theta[:-1], theta[-1]
        f = z @ w + b
        p = 1 / (1 + np.exp(-f))
        return 0.5 * w @ w + np.sum(np.logaddexp(0, f) - y * f), np.r_[z.T @ (p - y) + w, np.sum(p - y)]

    res = minimize(value_and_grad, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B",
                   options={"ftol": 0, "gtol": 1e-11, "maxiter": 100000, "maxcor": 50})
    assert np.abs(value_and_grad(res.x)[1]).max() < 1e-6, res.message
    w = res.x[:-1] / sigma
    return w, res.x[-1] - w @ mu


def _problems(seed: int, count: int, rows: int, dim: int, test_rows: int = 40):
    """`count` problems (rows, dim) with some signal; the first has a zero-variance column (3), the second is
    ill-conditioned (columns of rank 3 plus 1e-3 noise, two rows 1e-7 apart)."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(rows // 2, int), np.zeros(rows - rows // 2, int)]
    yt = np.r_[np.ones(test_rows // 2, int), np.zeros(test_rows // 2, int)]
    signal = rng.standard_normal(dim) * 0.7 * min(1.0, 20 / dim) ** 0.5  # held-out accuracy below 1
    x = rng.standard_normal((count, rows, dim)) + y[None, :, None] * signal
    xt = rng.standard_normal((count, test_rows, dim)) + yt[None, :, None] * signal
    x[0, :, 3] = xt[0, :, 3] = 2.5
    basis = rng.standard_normal((3, dim))
    x[1] = rng.standard_normal((rows, 3)) @ basis + 1e-3 * rng.standard_normal((rows, dim)) + y[:, None] * signal
    x[1, 1] = x[1, 0] + 1e-7
    xt[1] = rng.standard_normal((test_rows, 3)) @ basis + yt[:, None] * signal
    return x, y, xt, yt


@pytest.mark.parametrize("dim", [50, 300, 20])  # 20 rows: D > m, D >> m, D == m (all the reduced path)
def test_batched_logistic_with_at_least_as_many_features_as_rows(dim):
    """D >= m: the m-dimensional problem on the Gram matrix's factor gives the full problem's optimum (against the
    slow primal reference, to 1e-5), and sklearn's fit_cav up to its lbfgs tolerance (direction, offset, held-out
    accuracy)."""
    x, y, xt, yt = _problems(dim, 5, 20, dim)
    fitted = exchangeable.fit_batch(x, y, xt, yt, "logistic", 0)
    raw_v, raw_b = exchangeable._logistic_newton(x, y)
    for b in range(len(x)):
        w, offset = _primal_optimum(x[b], y)
        assert np.abs(raw_v[b] - w).max() <= 1e-5 * np.abs(w).max()
        assert abs(raw_b[b] - offset) <= 1e-5 * max(abs(offset), 1.0)
        norm = np.linalg.norm(w)
        assert np.allclose(fitted.vectors[b], w / norm, atol=1e-5)
        assert np.isclose(fitted.offsets[b], offset / norm, atol=1e-5)
        assert fitted.accuracies[b] == np.mean(((xt[b] @ w + offset) > 0).astype(int) == yt)
        ref = fit_cav(x[b], y, xt[b], yt, "logistic", 0)
        assert float(fitted.vectors[b].astype(np.float64) @ ref.vector) > 0.999
        assert abs(fitted.offsets[b] - ref.offset) <= 1e-2 * max(abs(ref.offset), 1.0)
        assert fitted.accuracies[b] == ref.accuracy
    assert abs(raw_v[0, 3]) < 1e-12  # the zero-variance column


@pytest.mark.parametrize("dim", [20, 50])  # D == m (the edge of the switch) and D > m
def test_reduced_newton_equals_primal_newton(dim):
    """The reduced path's answer is the primal Newton's on the same z (a (D + 1) x (D + 1) Hessian: slow, direct)."""
    x, y, _xt, _yt = _problems(7, 4, 20, dim)
    raw_v, raw_b = exchangeable._logistic_newton(x, y)
    mu, sigma = x.mean(1, keepdims=True), x.std(1, keepdims=True)
    sigma[sigma == 0] = 1.0
    theta = exchangeable._newton((x - mu) / sigma, y.astype(np.float64))
    w = theta[:, :-1] / sigma[:, 0]
    assert np.allclose(raw_v, w, rtol=0, atol=1e-8 * np.abs(w).max())
    assert np.allclose(raw_b, theta[:, -1] - np.einsum("bd,bd->b", w, mu[:, 0]), rtol=0, atol=1e-8)


@pytest.mark.parametrize("dim", [8, 60])  # primal (D < m) and reduced (D >= m)
def test_newton_sub_batches_give_the_one_batch_answer(monkeypatch, dim):
    x, y, xt, yt = _problems(dim + 1, 7, 20, dim)
    whole = exchangeable.fit_batch(x, y, xt, yt, "logistic", 0)
    sizes = []
    newton = exchangeable._newton
    monkeypatch.setattr(exchangeable, "_newton", lambda f, yy: sizes.append(len(f)) or newton(f, yy))
    monkeypatch.setattr(exchangeable, "NEWTON_BUDGET", 2 * exchangeable.WORK_COPIES * 8 * 20 * (dim + 1))
    parts = exchangeable.fit_batch(x, y, xt, yt, "logistic", 0)
    assert sizes == [2, 2, 2, 1]
    assert np.array_equal(whole.vectors, parts.vectors) and np.array_equal(whole.offsets, parts.offsets)
    assert np.array_equal(whole.accuracies, parts.accuracies)


def test_batched_mean_is_cav_fit_cavs_mean_learner():
    rng = np.random.default_rng(2)
    n = 15
    tr, te = exchangeable.run_split(n, 1)
    y = np.r_[np.ones(n, int), np.zeros(n, int)]
    x = rng.standard_normal((4, 2 * n, 5)).astype(np.float32)
    fitted = exchangeable.fit_batch(x[:, tr], y[tr], x[:, te], y[te], "mean", 0)
    for b in range(4):
        ref = fit_cav(x[b, tr], y[tr], x[b, te], y[te], "mean", 0)
        assert np.allclose(fitted.vectors[b], ref.vector, atol=1e-6)
        assert np.isclose(fitted.offsets[b], ref.offset) and fitted.accuracies[b] == ref.accuracy


def _policy(tiny_world, tmp_path: Path, check_yaml: str, models: dict | None = None) -> Path:
    text = tiny_world.policy_text(models).split("checks:")[0] + "checks:\n" + check_yaml
    text = text.replace("world/", f"{tiny_world.root}/world/")
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


TCAV_MEAN = """  - id: ex
    method: tcav
    classes: [a]
    concepts: [red, blue]
    cav: mean
    random_sets: 3
    set_size: 12
"""


def test_tcav_exchangeable_equals_a_slow_reference(tiny_world, tmp_path):
    """Per pseudo-concept and run: a CAV by cav.fit_cav, per-image autograd gradients, a loop for the p-value."""
    policy = load_policy(_policy(tiny_world, tmp_path, TCAV_MEAN))
    check = policy.checks[0]
    ctx = pipeline.prepare(policy, tmp_path / "cache", lambda _m: None)
    result = tcav.run(check, ctx)
    d = tcav.draws(check, ctx)
    m, _capped, rows = tcav.pseudo_plan(check, ctx, len(d.spare))
    assert m == 639  # 2 models x 2 layers x 1 class x 2 concepts = 8 cells: 1 / (M + 1) <= 0.05 / 32
    net = tinynet.tiny(0)
    pre = ctx.pre
    for layer in policy.layers["candidate"]:
        acts = lambda s: features(tinynet.eager_layer_grad(net, layer, data.load(s, pre), 0)[0], "pooled")  # noqa: E731
        fr = [acts(r) for r in d.randoms]
        spare = acts(d.spare)
        _a, g = tinynet.eager_layer_grad(net, layer, data.load(d.class_sets["a"], pre), 0)
        g = g.sum(axis=(2, 3)).astype(np.float64)

        def stats_of(fc):
            s1, s2 = [], []
            for i in range(1, check.random_sets + 1):
                tr, te = exchangeable.run_split(12, derive_seed(d.seed, "split", str(i)))
                x = np.concatenate([fc, fr[i][:12]])
                y = np.r_[np.ones(12, int), np.zeros(12, int)]
                v = fit_cav(x[tr], y[tr], x[te], y[te], "mean", 0).vector.astype(np.float64)
                s = [float(gi @ v) for gi in g]
                s1.append(np.mean([si > 0 for si in s]))
                s2.append(np.mean([si / np.linalg.norm(gi) for si, gi in zip(s, g)]))
            return np.mean(s1), np.mean(s2)

        null = [stats_of(spare[r]) for r in rows]
        for c in check.concepts:
            fc = acts(ctx.sets.concepts[c])[d.concept_rows[c]]
            s1, s2 = stats_of(fc)
            p1 = (1 + sum(abs(n1 - 0.5) >= abs(s1 - 0.5) - 1e-12 for n1, _ in null)) / (m + 1)
            p2 = (1 + sum(abs(n2) >= abs(s2) - 1e-12 for _, n2 in null)) / (m + 1)
            f = next(f for f in result.findings
                     if f["model"] == "candidate" and f["layer"] == layer and f["concept"] == c)
            if not f["learned"]:
                continue
            assert f["score"] == pytest.approx(s1, abs=1e-6) and f["cosine"] == pytest.approx(s2, abs=1e-5)
            assert f["score_p_value"] == pytest.approx(p1) and f["cosine_p_value"] == pytest.approx(p2)
            assert f["p_value"] == f["score_p_value"] and f["statistic"] == "score"
    assert result.details["settings"]["pseudo_concepts"] == 639 and len(result.details["null"]) == 4


def test_welch_is_still_available_and_ignores_pseudo_concepts(tiny_world, tmp_path):
    policy = load_policy(_policy(tiny_world, tmp_path, TCAV_MEAN + "    test: welch\n"))
    ctx = pipeline.prepare(policy, tmp_path / "cache", lambda _m: None)
    result = tcav.run(policy.checks[0], ctx)
    assert "Welch" in result.details["settings"]["test"] and "null" not in result.details
    assert all("score_p_value" not in f for f in result.findings)


def test_mean_spatial_cavs_equal_per_position_means():
    rng = np.random.default_rng(3)
    concept, random = rng.random((5, 4, 3, 3)), rng.random((6, 4, 3, 3))
    where = rng.random((5, 3, 3)) > 0.5
    v, b = spatial.mean_spatial_cavs([spatial.position_sums(concept, where)], spatial.position_sums(random))
    rows_c = [concept[i, :, h, w] for i in range(5) for h in range(3) for w in range(3) if where[i, h, w]]
    rows_r = [random[i, :, h, w] for i in range(6) for h in range(3) for w in range(3)]
    mu1, mu0 = np.mean(rows_c, axis=0), np.mean(rows_r, axis=0)
    slow = (mu1 - mu0) / np.linalg.norm(mu1 - mu0)
    assert np.allclose(v[0], slow) and np.isclose(b[0], -slow @ (mu1 + mu0) / 2)


def test_spatial_stats_equal_a_per_image_loop():
    rng = np.random.default_rng(4)
    acts, grads = rng.random((7, 4, 5, 5)), rng.standard_normal((7, 4, 5, 5))
    cavs = rng.standard_normal((3, 4))
    cavs /= np.linalg.norm(cavs, axis=1, keepdims=True)
    offsets = rng.standard_normal(3)
    score, cosine = spatial.spatial_stats(acts, grads, cavs, offsets, chunk=2)
    for k in range(3):
        s, c = [], []
        for x, g in zip(acts, grads):
            positive = [(h, w) for h in range(5) for w in range(5) if cavs[k] @ x[:, h, w] + offsets[k] > 0]
            total = sum(cavs[k] @ g[:, h, w] for h, w in positive)
            s.append(total > 0)
            direction = np.zeros_like(g)
            for h, w in positive:
                direction[:, h, w] = cavs[k]
            denom = np.linalg.norm(g) * np.linalg.norm(direction)
            c.append(total / denom if denom > 0 else 0.0)
        assert score[k] == pytest.approx(np.mean(s)) and cosine[k] == pytest.approx(np.mean(c), abs=1e-5)


def test_validate_refuses_a_pool_without_spare_images(tiny_world, tmp_path):
    check = TCAV_MEAN.replace("random_sets: 3", "random_sets: 7")  # (7 + 2) x 12 = 108 > 100 pool images
    policy = load_policy(_policy(tiny_world, tmp_path, check))
    with pytest.raises(PolicyError) as e:
        pipeline.prepare(policy, tmp_path / "cache", lambda _m: None)
    assert "checks[0].random_sets: test exchangeable" in str(e.value) and "needs 108 images" in str(e.value)


def test_validate_refuses_a_concept_smaller_than_set_size(tiny_world, tmp_path):
    policy = load_policy(_policy(tiny_world, tmp_path, TCAV_MEAN.replace("set_size: 12", "set_size: 15")))
    with pytest.raises(PolicyError) as e:
        pipeline.prepare(policy, tmp_path / "cache", lambda _m: None)
    assert "concept 'red' has 14 images" in str(e.value)


def test_relative_cells_are_tested_against_pseudo_pairs(tiny_world, tmp_path):
    """A vs B against M pairs of disjoint pseudo-concepts, every pair scored like (A, B): the same per-run subsample
    of each side, split and learner (slow reference: fit_cav and loops)."""
    check = TCAV_MEAN + "    relative: [[red, blue]]\n"
    policy = load_policy(_policy(tiny_world, tmp_path, check, {"candidate": str(tiny_world.script)}))
    check = policy.checks[0]
    ctx = pipeline.prepare(policy, tmp_path / "cache", lambda _m: None)
    result = tcav.run(check, ctx)
    d = tcav.draws(check, ctx)
    m, _capped, _rows = tcav.pseudo_plan(check, ctx, len(d.spare))
    pair_rows = exchangeable.pseudo_rows(len(d.spare), 24, m, derive_seed(d.seed, "pseudo-pairs"))
    net = tinynet.tiny(0)
    layer = policy.layers["candidate"][0]
    acts = lambda s: features(tinynet.eager_layer_grad(net, layer, data.load(s, ctx.pre), 0)[0], "pooled")  # noqa: E731
    spare = acts(d.spare)
    _a, g = tinynet.eager_layer_grad(net, layer, data.load(d.class_sets["a"], ctx.pre), 0)
    g = g.sum(axis=(2, 3)).astype(np.float64)
    k = int(tcav.RELATIVE_SUBSAMPLE * 12)

    def score(fa, fb):
        out = []
        for i in range(1, check.random_sets + 1):
            rng = np.random.default_rng(derive_seed(d.seed, "relative-run", str(i)))
            ia, ib = np.sort(rng.permutation(12)[:k]), np.sort(rng.permutation(12)[:k])
            tr, te = exchangeable.run_split(k, derive_seed(derive_seed(d.seed, "relative"), "split", str(i)))
            x, y = np.concatenate([fa[ia], fb[ib]]), np.r_[np.ones(k, int), np.zeros(k, int)]
            v = fit_cav(x[tr], y[tr], x[te], y[te], "mean", 0).vector.astype(np.float64)
            out.append(np.mean([float(gi @ v) > 0 for gi in g]))
        return np.mean(out)

    fa, fb = (acts(ctx.sets.concepts[c])[d.concept_rows[c]] for c in ("red", "blue"))
    s = score(fa, fb)
    null = [score(spare[r[:12]], spare[r[12:]]) for r in pair_rows]
    p = (1 + sum(abs(v - 0.5) >= abs(s - 0.5) - 1e-12 for v in null)) / (m + 1)
    f = next(f for f in result.findings if f["layer"] == layer and f["concept"] == "red vs blue")
    assert f["learned"] and f["score"] == pytest.approx(s) and f["score_p_value"] == pytest.approx(p)
    assert {n["kind"] for n in result.details["null"]} == {"concept", "relative"}


def test_report_names_the_test_and_draws_each_null(tiny_world, tmp_path):
    """A run's report: the test's words (M, statistic, family), the other statistic beside each p, one null panel
    per (model, layer, class) and its caption; results.json carries both statistics' p-values."""
    import json

    from click.testing import CliRunner
    from pypdf import PdfReader

    from auditor.cli import main

    path = _policy(tiny_world, tmp_path, TCAV_MEAN)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", str(path), "--out", str(out), "--quiet", "--cache-dir", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    check = json.loads((out / "results.json").read_text())["checks"][0]
    assert check["details"]["settings"]["pseudo_concepts"] == 639 and len(check["details"]["null"]) == 4
    assert all(len(n["scores"]) == 639 for n in check["details"]["null"])
    tested = [f for f in check["findings"] if f["tested"]]
    assert tested and all(f["score_p_value"] >= 1 / 640 and f["cosine_p_value"] >= 1 / 640 for f in tested)
    text = " ".join(p.extract_text() for p in PdfReader(out / "report.pdf").pages)
    assert "exchangeability test of the TCAV score" in " ".join(text.split())
    assert "639 pseudo-concepts" in " ".join(text.split()) and "cosine" in text
    assert "Why each cell is or is not significant" in text
    assert (out / "assets").is_dir() and any(p.name.endswith("null.png") for p in (out / "assets").iterdir())
