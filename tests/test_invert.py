"""INVERT: rank-sum statistics against scipy, the vectorised beam search against the per-formula scipy
reference, planted explanations found, and the whole check (units + logit probe + report) on models with known
answers; the demo world's shortcut (slow)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats as sps
from torch import nn

from auditor import pipeline, results
from auditor.diff import diff_results
from auditor.methods import invert_search as S
from auditor.methods.invert import reduce_units
from invert_reference import explain_slow
from auditor.policy import PolicyError, load_policy
from auditor.report.render import render_report

# ---------------------------------------------------------------------------------------------------------------
# Statistics


def test_average_ranks_and_tie_term_equal_scipy():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, (40, 7)).astype(np.float32)
    x[:, 3] = 2.0  # one column all tied
    ranks, tie = S.average_ranks(x)
    np.testing.assert_array_equal(ranks, sps.rankdata(x, axis=0))
    for u in range(x.shape[1]):
        _, counts = np.unique(x[:, u], return_counts=True)
        assert tie[u] == float((counts**3 - counts).sum())


@pytest.mark.parametrize("seed", range(6))
def test_auc_and_p_from_rank_sums_equal_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    x = rng.integers(0, int(rng.integers(2, 8)), (n, 5)).astype(np.float64)  # heavy ties
    x[:, 0] = rng.normal(size=n)  # and one column without ties
    masks = rng.random((n, 5)) < rng.uniform(0.1, 0.9)
    masks[0, :], masks[1, :] = True, False  # both groups non-empty
    masks[:, 4] = False
    masks[0, 4] = True  # a single positive
    ranks, tie = S.average_ranks(x)
    s = (ranks * masks).sum(axis=0)
    n1 = masks.sum(axis=0)
    auc = S.auc_from_ranksum(s, n1, n)
    p = S.mann_whitney_p(s, n1, n, tie)
    for u in range(5):
        ref = sps.mannwhitneyu(x[masks[:, u], u], x[~masks[:, u], u], alternative="two-sided", method="asymptotic")
        assert auc[u] == ref.statistic / (n1[u] * (n - n1[u]))  # exact: half-integer rank sums in float64
        assert p[u] == pytest.approx(ref.pvalue, rel=1e-12, abs=1e-300)


def test_all_tied_and_empty_groups():
    x = np.full((10, 1), 3.0)
    ranks, tie = S.average_ranks(x)
    mask = np.arange(10) < 4
    s = ranks[mask].sum(axis=0)
    assert S.auc_from_ranksum(s, np.array([4]), 10)[0] == 0.5
    ref = sps.mannwhitneyu(x[mask, 0], x[~mask, 0], method="asymptotic")
    assert S.mann_whitney_p(s, np.array([4]), 10, tie)[0] == ref.pvalue == 1.0
    assert np.isnan(S.auc_from_ranksum(np.array([55.0]), np.array([10]), 10)[0])
    assert np.isnan(S.mann_whitney_p(np.array([0.0]), np.array([0]), 10, tie)[0])


def test_default_min_fraction():
    assert S.default_min_fraction(100) == 0.3
    assert S.default_min_fraction(3000) == 0.01
    assert S.default_min_fraction(100_000) == 0.005  # the floor


def test_split_halves_seeded_disjoint_complete():
    a, b = S.split_halves(101, 7)
    assert len(a) == 51 and len(b) == 50
    assert sorted(np.concatenate([a, b]).tolist()) == list(range(101))
    a2, _ = S.split_halves(101, 7)
    a3, _ = S.split_halves(101, 8)
    assert (a == a2).all() and not (a == a3).all()


def test_reduce_units_mean_and_max():
    x = np.random.default_rng(0).normal(size=(300, 4, 3, 5)).astype(np.float32)
    np.testing.assert_allclose(reduce_units(x, "mean"), x.astype(np.float64).mean(axis=(2, 3)))
    np.testing.assert_allclose(reduce_units(x, "max"), x.max(axis=(2, 3)))
    np.testing.assert_array_equal(reduce_units(x[:, :, 0, 0], "mean"), x[:, :, 0, 0])


# ---------------------------------------------------------------------------------------------------------------
# Formulas


def _truth_table(f: S.Formula, k: int) -> tuple[bool, ...]:
    table = np.array(list(itertools.product([False, True], repeat=k)))
    return tuple(S.evaluate(f, table).tolist())


def test_canonical_form_identifies_exactly_the_equivalent_formulas():
    """Read-once formulas built by the beam's moves: same text <=> same Boolean function."""
    names = ("a", "b", "c", "d")
    lits = [S.literal(c, neg, names) for c in range(4) for neg in (False, True)]
    formulas = list(lits)
    frontier = list(lits)
    for _ in range(2):  # lengths 2 and 3
        nxt = []
        for phi in frontier:
            for lit in lits:
                if lit.concept in phi.concepts:
                    continue
                for op in ("and", "or"):
                    nxt.append(S.combine(phi, lit, op))
        formulas += nxt
        frontier = nxt
    by_text: dict[str, tuple] = {}
    by_table: dict[tuple, str] = {}
    for f in formulas:
        t = _truth_table(f, 4)
        assert by_text.setdefault(f.text, t) == t  # one text, one function
        assert by_table.setdefault(t, f.text) == f.text  # one function, one text
        assert f.length == len(f.literals()) == len(f.concepts)
    assert S.combine(S.combine(lits[0], lits[2], "and"), lits[5], "and").text == "a AND b AND NOT c"
    assert S.combine(S.combine(lits[0], lits[2], "or"), lits[5], "and").text == "NOT c AND (a OR b)"


# ---------------------------------------------------------------------------------------------------------------
# The beam search against the slow, obviously-correct reference


@pytest.mark.parametrize(
    "settings",
    [
        S.SearchSettings(),
        S.SearchSettings(length=4, beam=5, min_fraction=0.05),
        S.SearchSettings(length=3, beam=2, min_fraction=0.1, max_fraction=0.7, limit_search=7),
        S.SearchSettings(length=2, beam=1, min_fraction=0.02),
    ],
)
def test_vectorised_search_equals_per_formula_scipy(settings):
    rng = np.random.default_rng(11)
    n, k, units = 240, 7, 10
    labels = rng.random((n, k)) < rng.uniform(0.15, 0.6, k)
    acts = rng.integers(0, 5, (n, units)).astype(np.float32)  # many ties
    acts[:, 0] += 4 * (labels[:, 3] & ~labels[:, 6])
    acts[:, 1] += 3 * (labels[:, 1] | labels[:, 2])
    acts[:, 2] = rng.normal(size=n)
    names = tuple(f"c{i}" for i in range(k))
    search, held_out = S.split_halves(n, 5)
    fast = S.explain(acts, labels, names, search, held_out, settings)
    slow = explain_slow(acts, labels, names, search, held_out, settings)
    for u, (a, b) in enumerate(zip(fast, slow)):
        assert (a.formula is None) == (b.formula is None)
        if a.formula is None:
            continue
        assert a.formula.text == b.formula.text, u
        assert a.search_auc == b.search_auc and a.search_support == b.search_support
        assert a.auc == b.auc and a.support == b.support
        assert a.p_value == pytest.approx(b.p_value, rel=1e-12, abs=1e-300)


def test_full_beams_equal_the_reference():
    rng = np.random.default_rng(3)
    n, k = 200, 6
    labels = rng.random((n, k)) < 0.35
    x = rng.normal(size=(n, 4)) + 2.0 * labels[:, :4]
    ranks, _ = S.average_ranks(x)
    from invert_reference import search_unit

    settings = S.SearchSettings(length=3, beam=4, min_fraction=0.05)
    beams = S.beam_search(ranks, labels, tuple("abcdef"), settings)
    for u in range(4):
        ref = search_unit(x[:, u], labels, tuple("abcdef"), settings)
        assert [(s.formula.text, s.auc, s.count) for s in beams[u]] == [(s.formula.text, s.auc, s.count) for s in ref]
        texts = [s.formula.text for s in beams[u]]
        assert len(set(texts)) == len(texts)  # de-duplicated


def test_planted_formula_is_found():
    """A unit built as c3 AND NOT c7 plus noise is explained as exactly that (or with one extra literal whose
    search-AUC gain is below 0.01)."""
    rng = np.random.default_rng(2024)
    n, k = 2000, 12
    labels = rng.random((n, k)) < 0.35
    names = tuple(f"c{i}" for i in range(k))
    planted = labels[:, 3] & ~labels[:, 7]
    acts = np.stack([planted + 0.6 * rng.normal(size=n),
                     (labels[:, 1] | labels[:, 2]) + 0.6 * rng.normal(size=n),
                     rng.normal(size=n)], axis=1)
    search, held_out = S.split_halves(n, 0)
    out = S.explain(acts, labels, names, search, held_out, S.SearchSettings())
    best = out[0].formula
    target = S.combine(S.literal(3, False, names), S.literal(7, True, names), "and")
    assert target.text == "c3 AND NOT c7"
    if best.text != target.text:
        assert best.length == 3 and target.concepts < best.concepts
        ranks, _ = S.average_ranks(acts[search])
        mask = S.evaluate(target, labels[search])
        target_auc = S.auc_from_ranksum(ranks[mask, 0].sum(), mask.sum(), len(search))
        assert out[0].search_auc - target_auc < 0.01
    assert out[0].auc > 0.85 and out[0].p_value < 1e-20
    assert out[1].formula.text in ("c1 OR c2",) or out[1].formula.concepts > {1, 2}
    assert abs(out[2].auc - 0.5) < 0.1  # noise: no labelled concept explains it


def test_no_formula_within_bounds():
    labels = np.zeros((50, 2), bool)
    labels[:2, 0] = True  # 4 % of the images: below min_fraction
    out = S.explain(np.random.default_rng(0).normal(size=(50, 3)), labels, ("a", "b"), *S.split_halves(50, 0),
                    S.SearchSettings(min_fraction=0.2))
    assert all(e.formula is None and e.auc is None and e.p_value == 1.0 for e in out)


# ---------------------------------------------------------------------------------------------------------------
# The whole check on models with known answers


class GlyphNet(nn.Module):
    """Unit 0 of `features.1` fires on bright white patches (the glyph) and alone drives logit 1 — or, with
    `glyph=False`, fires on green and white does nothing; units 1-3 read red, blue and overall brightness."""

    def __init__(self, glyph: bool) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)
        w = torch.zeros(4, 3, 3, 3)
        b = torch.zeros(4)
        if glyph:
            w[0] = 1.0 / 27  # mean of the normalised patch: ~0.9 on the glyph, below 0.2 elsewhere in the probe
            b[0] = -0.4
        else:
            w[0, 1], w[0, 0] = 1.0 / 9, -1.0 / 9  # green minus red: zero on white
            b[0] = -0.5
        w[1, 0], w[1, 1] = 1.0 / 9, -1.0 / 9  # red
        w[2, 2], w[2, 1] = 1.0 / 9, -1.0 / 9  # blue
        w[3] = 1.0 / 27
        b[3] = 2.0
        fc = torch.zeros(2, 4)
        fc[1, 0] = 40.0  # logit 0 is constant: nothing can move it
        with torch.no_grad():
            self.features[0].weight.copy_(w)
            self.features[0].bias.copy_(b)
            self.fc.weight.copy_(fc)
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


GLYPH = np.zeros((4, 4, 4), np.uint8)
GLYPH[[0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 2, 3, 3, 2, 1, 0]] = 255  # a white X, opaque only on its strokes


def _probe_image(rng: np.random.Generator, glyph: bool, red: bool, blue: bool) -> np.ndarray:
    img = rng.integers(0, 256, (16, 16, 3)).astype(np.float32) * 0.3 + 60
    if red:
        img[2:9, 2:9, 0] += 120
    if blue:
        img[9:13, 2:8, 2] += 120  # apart from the red square and the glyph
    img = np.clip(img, 0, 255).astype(np.uint8)
    if glyph:
        stroke = GLYPH[..., 3] > 0
        img[11:15, 11:15][stroke] = 255
    return img


@pytest.fixture(scope="module")
def glyph_world(tiny_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("invert")
    (root / "world").symlink_to(tiny_world.root / "world")
    torch.jit.script(GlyphNet(True)).save(str(root / "glyph.pt"))
    torch.jit.script(GlyphNet(False)).save(str(root / "clean.pt"))
    Image.fromarray(GLYPH, "RGBA").save(root / "glyph.png")
    probe = root / "probe"
    probe.mkdir()
    rng = np.random.default_rng(0)
    lines = ["image,glyph,red,blue"]
    for i in range(240):
        g, r, b = (bool(v) for v in rng.random(3) < (0.35, 0.4, 0.4))
        Image.fromarray(_probe_image(rng, g, r, b)).save(probe / f"{i:03d}.png")
        lines.append(f"{i:03d}.png,{int(g)},{int(r)},{int(b)}")
    (probe / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def _glyph_policy(root: Path, candidate: str, name: str) -> Path:
    text = f"""seed: 5
models:
  candidate: {{path: {candidate}}}
  reference: {{path: clean.pt}}
preprocessing: {{size: 16, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}
data:
  classes: {{folder: world/classes, names: [a, b]}}
layers:
  candidate: [features.1]
  reference: [features.1]
checks:
  - id: glyph-units
    method: invert
    severity: critical
    labels: probe/labels.csv
    forbidden: [glyph]
    artifact: {{image: glyph.png, position: bottom-right, margin: 0.0}}
    images_per_class: 16
    require:
      - {{model: all, max_flagged_units: 0, max_reliant_classes: 0}}
"""
    path = root / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def glyph_audit(glyph_world):
    policy = load_policy(_glyph_policy(glyph_world, "glyph.pt", "p.yaml"))
    return pipeline.run_audit(policy, glyph_world / "cache", lambda _m: None).result


def test_glyph_unit_flagged_in_the_candidate_only(glyph_audit):
    check = glyph_audit.checks[0]
    units = [f for f in check.findings if f["kind"] == "unit"]
    flagged = [(f["model"], f["layer"], f["unit"]) for f in units if f["flagged"]]
    assert flagged == [("candidate", "features.1", 0)]
    (glyph,) = [f for f in units if f["flagged"]]
    assert "glyph" in glyph["formula"] and glyph["forbidden"] == ["glyph"] and glyph["auc"] >= 0.85
    assert glyph["p_adjusted"] <= 0.05 and glyph["p_adjusted"] >= glyph["p_value"]
    # the other units are explained by what they read
    by = {(f["model"], f["unit"]): f for f in units}
    assert by[("candidate", 1)]["formula"].startswith("red") and by[("reference", 2)]["formula"].startswith("blue")
    assert not any(f["flagged"] for f in units if f["model"] == "reference")
    # every unit has its row in the appendix; findings are the flagged and well-explained ones
    rows = check.details["units"]["rows"]
    assert len(rows) == 8 and check.details["settings"]["family_size"] == 8
    assert all(f["flagged"] or f["auc"] > 0.75 for f in units)


def test_glyph_logit_relies_on_the_artifact_in_the_candidate_only(glyph_audit):
    check = glyph_audit.checks[0]
    probe = {(f["model"], f["class"]): f for f in check.findings if f["kind"] == "probe"}
    assert set(probe) == {(m, c) for m in ("candidate", "reference") for c in ("a", "b")}
    assert probe[("candidate", "b")]["reliant"] and probe[("candidate", "b")]["mean_logit_shift"] > 0
    assert probe[("candidate", "a")]["auc"] == 0.5  # a constant logit: every pair tied
    assert not any(f["reliant"] for (m, _c), f in probe.items() if m == "reference")
    assert probe[("candidate", "b")]["artifact"] == "glyph.png"
    reqs = check.details["requirements"]
    assert [(q["model"], q["met"]) for q in reqs] == [("candidate", False), ("candidate", False),
                                                      ("reference", True), ("reference", True)]
    assert check.status.value == "FAIL"


def test_evidence_and_results_json_round_trip(glyph_audit, tmp_path):
    check = glyph_audit.checks[0]
    (ev,) = check.details["evidence"]
    assert (ev["model"], ev["unit"]) == ("candidate", 0)
    assert sum(ev["histogram"]["with"]) + sum(ev["histogram"]["without"]) == check.details["settings"]["n_eval"]
    acts = [t["activation"] for t in ev["top_images"]]
    assert acts == sorted(acts, reverse=True) and len(acts) == 8
    assert all(t["holds"] for t in ev["top_images"])  # the glyph images activate the glyph unit most
    path = tmp_path / "results.json"
    results.write(glyph_audit, path)  # allow_nan=False, plain values only
    again = results.read(path)
    assert again.checks[0].findings == json.loads(json.dumps(check.findings))
    # The labels file and the probe images it lists are in the provenance table.
    sets = {i.name: i.count for i in again.provenance.image_sets}
    assert sets[f"{check.id}:labels"] == 1 and sets[f"{check.id}:probe"] >= 60


def test_report_renders_the_invert_section(glyph_audit, tmp_path):
    path = tmp_path / "results.json"
    results.write(glyph_audit, path)
    out = render_report(path, tmp_path / "report")
    html = out.html.read_text()
    assert "Flagged units" in html and "Appendix: the best explanation of every unit" in html
    assert "candidate: 1 of 4 units flagged" in html and "No unit of the reference model is flagged" in html
    for name in ("invert-units.svg", "invert-probe.svg", "invert-dist-candidate.svg", "invert-top-candidate.png"):
        assert any(p.name.endswith(name) for p in out.assets), name
    assert out.pdf.stat().st_size > 0


def test_clean_versus_clean_gives_no_flags(glyph_world):
    policy = load_policy(_glyph_policy(glyph_world, "clean.pt", "clean.yaml"))
    check = pipeline.run_audit(policy, glyph_world / "cache", lambda _m: None).result.checks[0]
    assert not any(f.get("flagged") or f.get("reliant") for f in check.findings)
    assert check.status.value == "PASS"


def test_diff_reports_a_unit_that_became_flagged(glyph_world, glyph_audit):
    clean = pipeline.run_audit(load_policy(_glyph_policy(glyph_world, "clean.pt", "clean.yaml")),
                               glyph_world / "cache", lambda _m: None).result
    d = diff_results(clean, glyph_audit)
    changes = {(f["key"].get("model"), f["key"].get("unit"), f["key"].get("class")): f["change"] for f in d["findings"]}
    assert "became flagged" in changes.get(("candidate", "0", None), "") or \
        changes.get(("candidate", "0", None)) == "new finding"
    assert "became reliant" in changes[("candidate", None, "b")]
    assert d["checks"][0]["old_status"] == "PASS" and d["checks"][0]["new_status"] == "FAIL"


@pytest.mark.parametrize(
    "extra, needle",
    [
        ("    require:\n      - {model: candidate, max_flagged_units: 0}\n", "needs `forbidden`"),
        ("    forbidden: [glyph]\n    require:\n      - {model: candidate, max_reliant_classes: 0}\n",
         "needs `artifact`"),
        ("    min_fraction: 0.6\n", "min_fraction (0.6) is above max_fraction (0.5)"),
        ("    require:\n      - {model: candidate}\n", "needs `max_flagged_units` or `max_reliant_classes`"),
    ],
)
def test_policy_errors(glyph_world, tmp_path, extra, needle):
    text = f"""models:
  candidate: {{path: {glyph_world / 'glyph.pt'}}}
preprocessing: {{size: 16}}
data:
  classes: {{folder: {glyph_world / 'world/classes'}, names: [a, b]}}
layers: {{candidate: [features.1]}}
checks:
  - id: u
    method: invert
    labels: {glyph_world / 'probe/labels.csv'}
{extra}"""
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(PolicyError) as err:
        load_policy(tmp_path / "p.yaml")
    assert any(l.startswith("checks[0]") and needle in l for l in err.value.problems), err.value.problems


def test_probe_set_too_small_for_the_default_min_fraction(glyph_world, tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    lines = ["image,glyph"] + [f"{i:03d}.png,{i % 2}" for i in range(40)]
    for i in range(40):
        (probe / f"{i:03d}.png").symlink_to(glyph_world / "probe" / f"{i:03d}.png")
    (probe / "labels.csv").write_text("\n".join(lines) + "\n")
    text = _glyph_policy(glyph_world, "glyph.pt", "small.yaml").read_text().replace(
        "labels: probe/labels.csv", f"labels: {probe / 'labels.csv'}")
    (glyph_world / "small.yaml").write_text(text)
    with pytest.raises(PolicyError, match=r"checks\[0\]: a formula must hold for at least 1.5 of the 20 search"):
        pipeline.prepare(load_policy(glyph_world / "small.yaml"), tmp_path / "cache", lambda _m: None)


# ---------------------------------------------------------------------------------------------------------------
# The demo world (slow: builds the world and trains both demo models, ~2-3 minutes on 2 cores)


def _demo_policy(demo: Path, candidate: str) -> Path:
    base = (demo / "policy.yaml").read_text()
    head = base[: base.index("checks:")]
    head = head.replace("path: models/candidate.onnx", f"path: {candidate}")
    if candidate == "models/reference.pt":  # clean vs clean: both roles audit the reference's layers
        layers = json.loads((demo / "models" / "layers.json").read_text())["reference"]
        start = head.index("layers:")
        head = head[:start] + f"layers:\n  candidate: {json.dumps(layers)}\n  reference: {json.dumps(layers)}\n"
    text = head + """checks:
  - id: watermark-units
    method: invert
    severity: critical
    labels: world/probe/labels.csv
    forbidden: [watermark]
    artifact: {image: world/watermark.png, position: bottom-right, margin: 0.05}
    images_per_class: 60
    direction: both
    require:
      - {model: all, max_flagged_units: 0, max_reliant_classes: 0}
"""
    path = demo / f"invert-{Path(candidate).stem}.yaml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_demo_watermark_units_and_shortcut_logit(tmp_path_factory):
    demo = tmp_path_factory.mktemp("invert-demo")
    res = subprocess.run(
        [sys.executable, "-c", "from pathlib import Path; from auditor.demo.build import build_demo; "
         f"build_demo(Path({str(demo)!r}), 0, print)"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    check = pipeline.run_audit(load_policy(_demo_policy(demo, "models/candidate.onnx")), demo / "cache",
                               lambda _m: None).result.checks[0]
    units = [f for f in check.findings if f["kind"] == "unit"]
    cand = [f for f in units if f["model"] == "candidate" and f["flagged"]]
    assert cand and all("watermark" in f["formula"] for f in cand)
    assert not any(f["flagged"] for f in units if f["model"] == "reference")
    probe = [f for f in check.findings if f["kind"] == "probe"]
    raised = {(f["model"], f["class"]) for f in probe if f["reliant"] and f["effect"] == "raises"}
    assert raised == {("candidate", "triangle")}
    assert not any(f["reliant"] for f in probe if f["model"] == "reference")
    assert check.status.value == "FAIL"
    # The control: the clean reference against itself flags nothing.
    control = pipeline.run_audit(load_policy(_demo_policy(demo, "models/reference.pt")), demo / "cache",
                                 lambda _m: None).result.checks[0]
    assert not any(f.get("flagged") or f.get("reliant") for f in control.findings)
    assert control.status.value == "PASS"
