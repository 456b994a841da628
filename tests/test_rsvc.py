"""RSVC: numerics against slow, obviously-correct references (a scipy NNLS loop, per-fold sklearn pipelines, a
manual bilinear resize, eager autograd), the concept gradient across formats, identities (a model against itself
and against a copy with permuted channels), policy errors, the report section; the demo world (slow)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
import tinynet
import torch
from sklearn.decomposition import NMF
from sklearn.linear_model import Lasso
from sklearn.preprocessing import StandardScaler

from auditor import data, diff, pipeline, results
from auditor.context import derive_seed
from auditor.errors import UserError
from auditor.methods import rsvc
from auditor.methods import rsvc_core as core
from auditor.models import load_model
from auditor.policy import PolicyError, load_policy

# ---------------------------------------------------------------------------------------------------------------
# Numerics


def _relu_data(seed: int, n: int, c: int = 24, rank: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.maximum(0.0, rng.normal(size=(n, rank)) @ rng.normal(size=(rank, c)) + 0.2)


def test_nnls_equals_a_scipy_loop_and_beats_the_refit_bug():
    A, X = _relu_data(0, 300), _relu_data(1, 120)
    concepts = core.nmf_concepts(A, 6, seed=0)
    W = concepts.W
    ours = core.nnls_coefficients(X, W)
    slow = np.stack([scipy.optimize.nnls(W.T, x)[0] for x in X])  # one exact NNLS per row
    np.testing.assert_allclose(ours, slow, atol=1e-7 * np.abs(slow).max())
    assert (ours >= 0).all()
    # The reference code: NMF.fit_transform(X, H=W) ignores W (init != "custom") and fits new concepts, so its
    # coefficients reconstruct X badly with the concepts that were shown.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refit = NMF(n_components=6, init="nndsvd", random_state=0, max_iter=1000).fit_transform(X, H=W)
    ours_err, slow_err = core.reconstruction_error(X, ours, W), core.reconstruction_error(X, slow, W)
    refit_err = core.reconstruction_error(X, refit, W)
    assert ours_err <= slow_err + 1e-9
    assert refit_err > 1.2 * ours_err


def test_nmf_is_seeded_and_capped_at_the_rank_it_can_have():
    A = _relu_data(2, 40, c=5)
    a, b = core.nmf_concepts(A, 3, seed=4), core.nmf_concepts(A, 3, seed=4)
    np.testing.assert_array_equal(a.W, b.W)
    assert core.nmf_concepts(A, 10, seed=0).W.shape == (5, 5)  # K <= min(n, C)


def _bilinear(img: np.ndarray, out: int) -> np.ndarray:
    """Manual bilinear resize of (C, h, w) to (C, out, out), half-pixel centres (align_corners=False)."""
    c, h, w = img.shape
    res = np.zeros((c, out, out))
    for i in range(out):
        for j in range(out):
            y = max((i + 0.5) * h / out - 0.5, 0.0)
            x = max((j + 0.5) * w / out - 0.5, 0.0)
            y0, x0 = min(int(y), h - 1), min(int(x), w - 1)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            res[:, i, j] = ((1 - dy) * (1 - dx) * img[:, y0, x0] + (1 - dy) * dx * img[:, y0, x1]
                            + dy * (1 - dx) * img[:, y1, x0] + dy * dx * img[:, y1, x1])
    return res


def test_patch_grid_and_patches():
    grid = core.patch_grid((64, 64), 64 / 224, 0.8)
    assert grid.crop == (18, 18) and grid.stride == (14, 14)
    assert [b[:2] for b in grid.boxes] == [(t, l) for t in (0, 14, 28, 42) for l in (0, 14, 28, 42)]
    assert core.patch_grid((64, 64), 1.0, 0.8).boxes == ((0, 0, 64, 64),)
    images = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    small = core.patch_grid((16, 16), 0.3, 0.8)  # 5 px crops, stride 4
    patches = core.cut_patches(images, small, (16, 16))
    assert patches.shape == (2 * len(small), 3, 16, 16)
    for row in (0, len(small) + 4):  # image-major rows: patch p of image i is row i * P + p
        i, p = divmod(row, len(small))
        t, l, h, w = small.boxes[p]
        np.testing.assert_allclose(patches[row], _bilinear(images[i, :, t : t + h, l : l + w], 16), atol=1e-5)


def _slow_similarity(X, Y, fold_of_row, alpha):
    """Per fold: standardise features and targets on the training rows (sklearn scalers), Lasso, predict, back to
    the targets' units, scipy Pearson per concept; mean over folds."""
    per_fold = []
    for f in np.unique(fold_of_row):
        test, train = fold_of_row == f, fold_of_row != f
        sx, sy = StandardScaler().fit(X[train]), StandardScaler().fit(Y[train])
        model = Lasso(alpha=alpha, max_iter=10000).fit(sx.transform(X[train]), sy.transform(Y[train]))
        pred = sy.inverse_transform(model.predict(sx.transform(X[test])).reshape(-1, Y.shape[1]))
        per_fold.append([scipy.stats.pearsonr(Y[test][:, j], pred[:, j])[0] for j in range(Y.shape[1])])
    return np.mean(per_fold, axis=0)


def test_cross_validated_similarity_matches_a_slow_per_fold_reference():
    rng = np.random.default_rng(3)
    images, per_image = 20, 6
    X = rng.gamma(2.0, size=(images * per_image, 12))
    Y = np.maximum(0, X[:, :4] @ rng.normal(size=(4, 3)) + rng.normal(scale=0.5, size=(len(X), 3)))
    fold = core.image_folds(images, 5, seed=1)
    assert sorted(np.bincount(fold)) == [4] * 5
    fold_of_row = np.repeat(fold, per_image)  # all patches of an image in one fold
    cv = core.cross_validated_similarity(X, Y, fold_of_row, alpha=0.1)
    np.testing.assert_allclose(cv.similarity, _slow_similarity(X, Y, fold_of_row, 0.1), atol=1e-6)
    # Held-out rows never shape the standardisation (the reference code z-scored with all rows): scaling fold 0's
    # features leaves the fold-0 model (statistics and weights from folds 1-4) as it was, so fold 0's predictions
    # are that fixed model applied to the changed rows.
    X2 = X.copy()
    X2[fold_of_row == 0] *= 3.0
    cv2 = core.cross_validated_similarity(X2, Y, fold_of_row, alpha=0.1)
    mx, sx = X[fold_of_row != 0].mean(0), X[fold_of_row != 0].std(0)
    my, sy = Y[fold_of_row != 0].mean(0), Y[fold_of_row != 0].std(0)
    m = Lasso(alpha=0.1, max_iter=10000).fit((X[fold_of_row != 0] - mx) / sx, (Y[fold_of_row != 0] - my) / sy)
    expected = m.predict((X2[fold_of_row == 0] - mx) / sx) * sy + my
    np.testing.assert_allclose(cv2.predicted[fold_of_row == 0], expected, atol=1e-8)


def test_a_constant_prediction_counts_as_zero():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    # Concept 1 is noise: no feature correlates with it above alpha = 0.5, so every Lasso weight is 0.
    Y = np.stack([X[:, 0] * 3 + 1, rng.normal(size=60)], axis=1)
    cv = core.cross_validated_similarity(X, Y, np.repeat(np.arange(5), 12), alpha=0.5)
    assert np.ptp(cv.predicted[:12, 1]) == 0.0
    assert cv.similarity[1] == 0.0 and cv.similarity[0] > 0.9
    r, flat_a, flat_b = core.column_pearson(np.ones((5, 1)), np.arange(5.0)[:, None])
    assert r[0] == 0.0 and flat_a[0] and not flat_b[0]


def test_integrated_gradients_against_a_slow_loop_and_completeness():
    rng = np.random.default_rng(1)
    M = rng.normal(size=(3, 4))
    target = 2

    def f(V):
        return core.log_softmax(V @ M)[:, target]

    def grad(V):  # analytic d log p_target / dV
        p = np.exp(core.log_softmax(V @ M))
        weight = -p
        weight[:, target] += 1
        return weight @ M.T

    U = rng.gamma(2.0, size=(5, 3))
    ig = core.integrated_gradients(U, grad, steps=30)
    slow = np.zeros_like(U)
    for i in range(len(U)):
        for s in range(31):
            w = 0.5 if s in (0, 30) else 1.0
            slow[i] += w / 30 * grad((s / 30) * U[i : i + 1])[0]
    np.testing.assert_allclose(ig, U * slow, rtol=1e-12)
    np.testing.assert_allclose(ig.sum(axis=1), f(U) - f(np.zeros_like(U)), atol=2e-3)


def test_mean_max_similarity_and_pearson_matrix():
    rng = np.random.default_rng(0)
    U1 = rng.normal(size=(50, 2))
    U2 = np.stack([U1[:, 0] * 2 + 1, rng.normal(size=50), np.ones(50)], axis=1)  # a copy, noise, a constant
    R = core.pearson_matrix(U1, U2)
    slow = np.array([[scipy.stats.pearsonr(U1[:, a], U2[:, b])[0] if b < 2 else 0.0 for b in range(3)]
                     for a in range(2)])
    np.testing.assert_allclose(R, slow, atol=1e-12)
    assert core.mean_max_similarity(R) == pytest.approx(0.5 * (R.max(1).mean() + R.max(0).mean()))
    assert core.mean_max_similarity(core.pearson_matrix(U1, U1)) == pytest.approx(1.0)


def test_collages_take_one_patch_per_image():
    real = np.array([9.0, 8.0, 1.0, 7.0, 0.5, 0.2, 3.0, 0.1])
    pred = np.array([1.0, 8.0, 5.0, 7.0, 3.0, 0.2, 0.0, 0.1])
    image = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    c = core.collage_rows(real, pred, image, count=2)
    assert c.top == [0, 3]  # 9 (image 0) then 7 (image 1); row 1 (8) is image 0 again
    assert c.over == [2, 4]  # real - predicted most negative: -4 (image 1), -2.5 (image 2)
    assert c.under == [6]  # below the top's floor (7), under-predicted: 3 - 0 (image 3) only


# ---------------------------------------------------------------------------------------------------------------
# The concept gradient through real heads


def _eager_reference_grad(net, layer, x, U, W, target):
    """d log p_target / du with the layer's output replaced by u W at every position: eager autograd."""
    mod = dict(net.named_modules())[layer]
    with torch.no_grad():
        shape = None

        def grab(_m, _i, out):
            nonlocal shape
            shape = out.shape[1:]

        h = mod.register_forward_hook(grab)
        net(torch.from_numpy(x[:1]))
        h.remove()
    u = torch.tensor(U, dtype=torch.float64, requires_grad=True)
    rec = (u @ torch.tensor(W)).float()[:, :, None, None].expand(-1, -1, *shape[1:])
    h = mod.register_forward_hook(lambda _m, _i, _o: rec)
    try:
        logp = torch.log_softmax(net(torch.from_numpy(x)).double(), dim=1)[:, target].sum()
    finally:
        h.remove()
    (g,) = torch.autograd.grad(logp, u)
    return g.numpy()


def test_concept_gradient_torch_onnx_and_eager_agree(tiny_world):
    shape = (3, 16, 16)
    pre = data.Preprocessing(size=(16, 16), mean=(0.5,) * 3, std=(0.25,) * 3)
    x = data.load(data.folder_set("a", tiny_world.root / "world" / "classes" / "a", pre), pre)[:6]
    net = tinynet.tiny(0)
    acts = {}
    h = dict(net.named_modules())["features.4"].register_forward_hook(lambda _m, _i, o: acts.setdefault("a", o))
    with torch.no_grad():
        net(torch.from_numpy(x))
    h.remove()
    A = core.spatial_mean(acts["a"].numpy())
    W = core.nmf_concepts(A, 3, seed=0).W
    U = core.nnls_coefficients(A, W) * 1.3
    expected = _eager_reference_grad(net, "features.4", x, U, W, target=1)
    script = load_model(tiny_world.script, "auto", shape)
    onnx = load_model(tiny_world.onnx, "auto", shape)
    onnx_layer = next(li.name for li in onnx.layers() if li.kind == "Relu" and li.shape == (8, 8, 8))
    scale = float(np.median(np.linalg.norm(U @ W, axis=1)))
    for model, layer, tol in ((script, "features.4", 1e-4), (onnx, onnx_layer, 2e-2)):
        stats = rsvc.GradStats()
        got = rsvc.concept_gradient(model, layer, W, (8, 8, 8), x, 1, scale, stats)(U)
        np.testing.assert_allclose(got, expected, atol=tol * np.abs(expected).max(), err_msg=model.framework)
        assert stats.head_rows > 0


# ---------------------------------------------------------------------------------------------------------------
# End to end on the tiny world: a model against itself and against a channel-permuted copy


def _permuted_copy(path: Path) -> None:
    """TinyNet with the channels of its last conv (features.3 -> ReLU features.4) permuted and the classifier's
    inputs permuted to match: the same function, its concept layer's channels reordered."""
    net = tinynet.tiny(0)
    perm = torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])
    with torch.no_grad():
        net.features[3].weight.copy_(net.features[3].weight[perm])
        net.features[3].bias.copy_(net.features[3].bias[perm])
        net.fc.weight.copy_(net.fc.weight[:, perm])
    torch.jit.script(net).save(str(path))


def _tiny_policy(tiny_world, tmp_path: Path, candidate: Path, extra: str = "", layer: str = "features.4",
                 require: str = "") -> Path:
    text = f"""seed: 2
models:
  candidate: {{path: {candidate}}}
  reference: {{path: {tiny_world.script}}}
preprocessing: {{size: 16, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}
data:
  classes: {{folder: {tiny_world.root / "world" / "classes"}, names: [a, b]}}
layers:
  candidate: ['features.1', '{layer}']
  reference: ['features.1', 'features.4']
checks:
  - id: shared
    method: rsvc
    classes: [a]
    concepts: 4
    extraction_images: 16
    evaluation_images: 16
    patch: 0.3
    ig_steps: 10
{extra}{require}"""
    path = tmp_path / "rsvc.yaml"
    path.write_text(text)
    return path


def _run(policy: Path, tmp_path: Path):
    return pipeline.run_audit(load_policy(policy), tmp_path / "cache", lambda _m: None).result


@pytest.fixture(scope="module")
def tiny_same(tiny_world, tmp_path_factory):
    """The tiny network compared with itself (one run shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("rsvc-same")
    policy = _tiny_policy(tiny_world, tmp, tiny_world.script,
                          require="    require:\n      - {model: all, max_unique_important: 0}\n")
    return _run(policy, tmp)


def test_a_model_against_itself_and_a_permuted_copy(tiny_world, tiny_same, tmp_path):
    same = tiny_same
    check = same.checks[0]
    rows = check.findings
    assert len(rows) == 8 and {f["model"] for f in rows} == {"candidate", "reference"}
    for f in rows:  # the same network: the cross-model regression IS the self regression
        assert f["similarity"] == f["self_similarity"], f
        assert f["similarity"] > 0.9, f
        assert not f["unique"]
    assert check.status.value == "PASS"
    assert json.loads(results.dumps(same))  # JSON-clean (no numpy values, no NaN)

    permuted = tmp_path / "permuted.pt"
    _permuted_copy(permuted)
    other = _run(_tiny_policy(tiny_world, tmp_path, permuted), tmp_path).checks[0]
    by = {(f["model"], f["concept"]): f for f in other.findings}
    base = {(f["model"], f["concept"]): f for f in rows}
    for (role, j), f in by.items():
        assert f["similarity"] == pytest.approx(f["self_similarity"], abs=2e-3), f
        # The permuted copy's concepts are the original's, channels reordered: same self similarity and importance.
        assert f["self_similarity"] == pytest.approx(base[(role, j)]["self_similarity"], abs=2e-3)
        assert f["importance"] == pytest.approx(base[(role, j)]["importance"], abs=2e-3)
    lw = other.details["layerwise"]["a"]
    assert lw["mmcs"][-1][-1] == pytest.approx(1.0, abs=1e-6)  # concept layer vs its permuted twin


def test_a_signed_layer_is_refused_with_its_policy_path(tiny_world, tmp_path):
    policy = _tiny_policy(tiny_world, tmp_path, tiny_world.script, layer="features.3")  # a conv output
    with pytest.raises(PolicyError) as e:  # found by `validate`, before anything runs
        pipeline.prepare(load_policy(policy), tmp_path / "cache", lambda _m: None)
    assert len(e.value.problems) == 1
    assert e.value.problems[0].startswith("layers.candidate: layer 'features.3' of model 'candidate' has negative")


def test_the_image_folder_is_checked_before_anything_runs(tiny_world, tmp_path):
    (tmp_path / "imgs" / "b").mkdir(parents=True)
    policy = _tiny_policy(tiny_world, tmp_path, tiny_world.script, extra=f"    images: {{folder: {tmp_path / 'imgs'}}}\n")
    with pytest.raises(PolicyError, match=r"checks\[0\]\.images: image folder not found: .*imgs/a"):
        pipeline.prepare(load_policy(policy), tmp_path / "cache", lambda _m: None)
    # A broken file in any class folder the pool reads (here b, not a checked class) is named, not crashed on.
    shutil.copytree(tiny_world.root / "world" / "classes", tmp_path / "imgs", dirs_exist_ok=True)
    broken = sorted((tmp_path / "imgs" / "b").glob("*.png"))[0]
    broken.write_bytes(b"\x89PNG broken")
    with pytest.raises(PolicyError) as e:
        pipeline.prepare(load_policy(policy), tmp_path / "cache", lambda _m: None)
    assert e.value.problems == [f"checks[0].images: {broken}: not a readable image (UnidentifiedImageError)"]
    bad = _tiny_policy(tiny_world, tmp_path, tiny_world.script, require="    require:\n      - {model: reference}\n")
    with pytest.raises(PolicyError, match=r"max_unique_important"):
        load_policy(bad)


def test_section_renders_and_diff_names_the_change(tiny_same, tmp_path):
    from auditor.report.render import render_report

    res = tiny_same
    out = tmp_path / "out"
    out.mkdir()
    results.write(res, out / "results.json")
    rendered = render_report(out / "results.json", out)
    html = rendered.html.read_text()
    assert "All concepts of class" in html and "Layerwise comparison" in html
    assert any(p.name.endswith("gallery.png") for p in rendered.assets)
    # diff: a concept that became unique and important is named as such
    new = json.loads(results.dumps(res))
    new["checks"][0]["findings"][0].update(unique=True, important=True, similarity=0.0)
    d = diff.diff_results(res, results.from_dict(new))
    (moved,) = d["findings"]
    assert moved["change"].startswith("became unique and important") and moved["key"]["concept"] == "0"


# ---------------------------------------------------------------------------------------------------------------
# The demo world (slow: builds the world and trains both demo models, ~2-3 minutes on 2 cores)

DEMO_CHECK = """checks:
  - id: concepts-shared
    method: rsvc
    severity: major
    classes: [triangle]
    images: {folder: world/field}
    layers:
      reference: ['features.4', 'features.7', 'features.10']
      candidate: ['/features/features.6/Relu_output_0', '/features/features.9/Relu_output_0',
                  '/features/features.11/Relu_output_0']
    require:
      - {model: reference, max_unique_important: 0}
      - {model: candidate, max_unique_important: 0}
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rsvc-demo")
    res = subprocess.run(
        [sys.executable, "-c", "from pathlib import Path; from auditor.demo.build import build_demo; "
         f"build_demo(Path({str(out)!r}), 0, print)"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def _glyph_patches(paths, grid) -> np.ndarray:
    """Per evaluation patch: its image carries the watermark (pixels equal to the glyph where the glyph is opaque)
    and the patch covers at least half of the glyph. Decided before running RSVC on the demo."""
    from auditor.demo.world import GLYPH_SIZE, watermark_glyph, watermark_position

    glyph = watermark_glyph()
    r0, c0 = watermark_position(64)
    opaque = glyph[..., 3] == 255
    marked = np.array([np.all(data.read_rgb(p, (64, 64))[r0 : r0 + GLYPH_SIZE, c0 : c0 + GLYPH_SIZE][opaque]
                              == glyph[..., :3][opaque]) for p in paths])
    cover = np.array([max(0, min(t + h, r0 + GLYPH_SIZE) - max(t, r0)) * max(0, min(l + w, c0 + GLYPH_SIZE) - max(l, c0))
                      / GLYPH_SIZE**2 for t, l, h, w in grid.boxes])
    return (marked[:, None] & (cover[None, :] >= 0.5)).reshape(-1)


@pytest.mark.slow
def test_demo_world(demo):
    from PIL import Image

    from auditor.methods.stats import rank_auc

    base = (demo / "policy.yaml").read_text()
    policy_path = demo / "rsvc.yaml"
    policy_path.write_text(base[: base.index("checks:")] + DEMO_CHECK)
    policy = load_policy(policy_path)
    result = pipeline.run_audit(policy, demo / "cache", lambda _m: None).result
    check = result.checks[0]
    info = check.details["classes"]["triangle"]

    # Shape concepts are shared: a concept whose top evaluation patches lie on the object (mean mask coverage of
    # its gallery patches >= 0.25) is predicted by the other model (similarity >= tau_sim), both directions.
    objects = []
    for role, m in info["models"].items():
        for c in m["concepts"]:
            cover = [np.mean(np.asarray(Image.open(demo / "world" / "field_masks" / p["image"]))[
                p["box"][0] : p["box"][0] + p["box"][2], p["box"][1] : p["box"][1] + p["box"][3]] > 127)
                for p in c["top"]]
            if np.mean(cover) >= 0.25:
                objects.append((role, c["concept"]))
    by = {(f["model"], f["concept"]): f for f in check.findings}
    assert len({r for r, _ in objects}) == 2
    for key in objects:
        assert not by[key]["unique"], by[key]

    # The watermark concept: the candidate concept whose coefficients best separate glyph patches (patches
    # covering >= half the glyph of a watermarked image) from the other evaluation patches, by AUC.
    # Measured with METHODS.md's patches (64/224 of the side, enlarged 3.6x to the input size): NO candidate
    # concept isolates the glyph (best AUC 0.85, that concept's similarity 0.45), because the demo candidate does
    # not respond to an enlarged glyph (second part). RSVC therefore cannot call the watermark unique on this
    # world, and the assertion below pins that measured fact. (Also measured, on 100 + 100 field images: whole
    # images as patches give a glyph concept with AUC 1.00 and importance 1.00 but similarity 0.31; crops kept at
    # native scale on a blank canvas, not in METHODS.md, give AUC 1.00 and similarity 0.56: the reference
    # represents the glyph visually even though it does not use it.)
    ctx = pipeline.prepare(policy, demo / "cache", lambda _m: None)
    root = demo / "world" / "field"
    grid = core.patch_grid((64, 64), 64 / 224, 0.8)
    sets = {part: data.image_set(f"rsvc:concepts-shared:triangle:{part}", [root / p for p in info[part]], ctx.pre)
            for part in ("extraction", "evaluation")}
    glyph = _glyph_patches(sets["evaluation"].paths, grid)
    assert len(info["evaluation"]) >= 25 and glyph.sum() >= 20
    layer = "/features/features.11/Relu_output_0"
    A = {part: rsvc._means(ctx, policy.checks[0], "candidate", [layer],
                           rsvc.PatchSet(s, grid, (64, 64), ctx.store.images), rsvc.Clock(), {})[layer]
         for part, s in sets.items()}
    seed = derive_seed(derive_seed(policy.seed, "concepts-shared"), "nmf", "triangle", "candidate", layer)
    W = core.nmf_concepts(A["extraction"], 10, seed).W
    U = core.nnls_coefficients(A["evaluation"], W)
    auc = rank_auc(U[glyph], U[~glyph])
    assert auc.max() < 0.9

    # Why: on whole watermarked images the candidate answers "triangle"; on the same images' corner patches,
    # enlarged as RSVC enlarges them, it never does.
    target = policy.data.classes.names.index("triangle")
    marked_images = np.unique(np.flatnonzero(glyph) // len(grid))
    x = ctx.store.images(sets["evaluation"])[marked_images]
    cand = ctx.models["candidate"]
    assert (cand.predict(x).argmax(1) == target).mean() >= 0.9
    corner = core.cut_patches(x, grid, (64, 64))[len(grid) - 1 :: len(grid)]
    assert (cand.predict(corner).argmax(1) == target).mean() <= 0.1
