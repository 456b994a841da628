"""TCAV against a slow, obviously-correct reference: per-image autograd on the eager module, per-CAV loops."""

from pathlib import Path

import numpy as np
import pytest
import torch

import tinynet
from auditor import data, pipeline
from auditor.context import derive_seed
from auditor.methods.cav import features, train_cav
from auditor.methods.tcav import tcav_scores
from auditor.policy import load_policy


def _per_image(net, layer, x, target):
    """Activation and d logit[target] / d activation, one image at a time."""
    pairs = [tinynet.eager_layer_grad(net, layer, img[None], target) for img in x]
    return np.concatenate([a for a, _ in pairs]), np.concatenate([g for _, g in pairs])


def _slow_tcav(policy, check, net):
    pre = pipeline.preprocessing(policy)
    seed = derive_seed(policy.seed, check.id)
    pool = data.folder_set("random-pool", policy.resolve(policy.data.random.folder), pre)
    randoms = data.draw_disjoint(pool, check.random_sets + 1, check.set_size, seed, pre, "random")
    concept_sets = {c: data.folder_set(c, policy.resolve(policy.data.concepts.folder) / c, pre) for c in check.concepts}
    rows = {
        c: np.sort(np.random.default_rng(derive_seed(seed, "concept", c)).permutation(len(s))[: check.set_size])
        for c, s in concept_sets.items()
    }
    out = {}
    for layer in policy.layers["candidate"]:
        def acts_of(images):
            return _per_image(net, layer, data.load(images, pre), 0)[0]

        fr = [features(acts_of(r), check.space) for r in randoms]
        for k in check.classes:
            target = policy.data.classes.names.index(k)
            class_set = data.folder_set(k, policy.resolve(policy.data.classes.folder) / k, pre)
            _, grads = _per_image(net, layer, data.load(class_set, pre), target)

            def score(cav_vector):
                if check.space == "pooled":
                    s = [float(g.sum(axis=(1, 2)) @ cav_vector) for g in grads]
                else:
                    s = [float(g.ravel() @ cav_vector) for g in grads]
                return np.mean(np.array(s) > 0)

            null = [score(train_cav(fr[i - 1], fr[i], check.cav, derive_seed(seed, "null", str(i))).vector)
                    for i in range(1, check.random_sets + 1)]
            for c in check.concepts:
                fc = features(acts_of(concept_sets[c])[rows[c]], check.space)
                scores = [score(train_cav(fc, fr[i], check.cav, derive_seed(seed, "cav", c, str(i))).vector)
                          for i in range(1, check.random_sets + 1)]
                out[(layer, k, c)] = (np.mean(scores), np.mean(null))
            for a, b in check.relative:  # concept A against concept B, each run on its own 80% of both
                fa = features(acts_of(concept_sets[a])[rows[a]], check.space)
                fb = features(acts_of(concept_sets[b])[rows[b]], check.space)
                pair_seed = derive_seed(seed, "relative", a, b)
                scores = []
                for i in range(check.random_sets):
                    rng = np.random.default_rng(derive_seed(pair_seed, str(i)))
                    ia = np.sort(rng.permutation(len(fa))[: int(0.8 * len(fa))])
                    ib = np.sort(rng.permutation(len(fb))[: int(0.8 * len(fb))])
                    scores.append(score(train_cav(fa[ia], fb[ib], check.cav, derive_seed(pair_seed, "cav", str(i))).vector))
                out[(layer, k, f"{a} vs {b}")] = (np.mean(scores), np.mean(null))
    return out


@pytest.mark.parametrize("space", ["pooled", "flatten"])
def test_tcav_matches_slow_per_image_reference(tiny_world, tmp_path, space):
    text = tiny_world.policy_text({"candidate": str(tiny_world.script)}).replace(
        "    set_size: 12\n", f"    set_size: 12\n    space: {space}\n    relative: [[red, blue]]\n    test: welch\n"
    )  # the paper's procedure (the exchangeability test has its own reference: test_exchangeable.py)
    (tmp_path / "world").symlink_to(tiny_world.root / "world")
    (tmp_path / "p.yaml").write_text(text)
    policy = load_policy(tmp_path / "p.yaml")
    result = pipeline.run_audit(policy, tmp_path / "cache", lambda _m: None).result
    ref = _slow_tcav(policy, policy.checks[0], tinynet.tiny(0))
    findings = result.checks[0].findings
    assert len(findings) == len(ref) == 6  # 2 layers x (2 concepts + 1 relative pair)
    assert any(f["concept"] == "red vs blue" and f["learned"] for f in findings)
    for f in findings:
        score, null = ref[(f["layer"], f["class"], f["concept"])]
        assert f["random_score_mean"] == pytest.approx(null, abs=1e-9)
        if f["learned"]:
            assert f["score"] == pytest.approx(score, abs=1e-9)


def test_tcav_scores_and_magnitude():
    s = np.array([[1.0, -1.0], [2.0, -3.0], [-1.0, 0.0]])
    score, mag = tcav_scores(s)
    assert np.allclose(score, [2 / 3, 0])
    assert np.allclose(mag, [(2 / 3) / (4 / 3), (-4 / 3) / (4 / 3)])


def test_holm_family_spans_every_tcav_check_of_the_audit(tiny_world, tmp_path):
    from auditor.methods import stats

    second = """  - id: tcav-blue
    method: tcav
    classes: [b]
    concepts: [blue]
    random_sets: 4
    set_size: 12
"""
    (tmp_path / "world").symlink_to(tiny_world.root / "world")
    (tmp_path / "p.yaml").write_text(tiny_world.policy_text({"candidate": str(tiny_world.script)}, extra_check=second))
    result = pipeline.run_audit(load_policy(tmp_path / "p.yaml"), tmp_path / "cache", lambda _m: None).result
    tested = [f for c in result.checks for f in c.findings if f["learned"]]
    assert len(result.checks) == 2 and len(tested) > len([f for f in result.checks[0].findings if f["learned"]])
    expected = stats.holm(np.array([f["p_value"] for f in tested]))
    assert np.allclose([f["p_adjusted"] for f in tested], expected)
    for c in result.checks:
        assert c.details["settings"]["family_size"] == len(tested)
