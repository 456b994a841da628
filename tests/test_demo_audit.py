"""The demo end to end: `auditor demo` builds the world, trains, audits, renders — and the planted shortcut
shows where it must. Also: the same trained network as TorchScript and as ONNX gives the same TCAV results."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pypdf import PdfReader

from auditor import pipeline, results
from auditor.demo.build import policy_text
from auditor.policy import load_policy

REPO = Path(__file__).resolve().parents[1]


def _check(out: Path, method: str) -> dict:
    data = json.loads((out / "report" / "results.json").read_text())
    (check,) = [c for c in data["checks"] if c["method"] == method]
    return check


def _tcav(out: Path) -> dict:
    return _check(out, "tcav")


def test_causal_probe_finds_the_shortcut_in_the_candidate_only(demo_out):
    check = _check(demo_out, "artifact_probe")
    by = {(f["model"], f["class"]): f for f in check["findings"]}
    assert by[("candidate", "triangle")]["reliant"] and by[("candidate", "triangle")]["effect"] == "raises"
    assert not any(f["reliant"] for f in check["findings"] if f["model"] == "reference")
    assert all(abs(f["auc"] - 0.5) < 0.1 for f in check["findings"] if f["model"] == "reference")
    assert check["status"] == "FAIL" and check["severity"] == "critical"
    data = json.loads((demo_out / "report" / "results.json").read_text())
    assert data["verdict"] == "FAIL"


def test_tcav_reports_every_watermark_cell_of_both_models(demo_out):
    """Gradient-based evidence is reported as it is (METHODS.md: what TCAV can and cannot claim); the candidate's
    watermark cells are there with scores and tests, whatever they show."""
    check = _tcav(demo_out)
    for role in ("candidate", "reference"):
        cells = [f for f in check["findings"] if f["model"] == role and f["concept"] == "watermark"]
        assert {f["layer"] for f in cells} == set(check["details"]["layers"][role])
        for f in cells:
            assert f["learned"] and f["p_adjusted"] is not None  # the watermark is linearly decodable


def test_tcav_cells_give_the_demos_verdicts(demo_out):
    """Every TCAV cell's verdict, exactly, as measured on the demo with its instruction set pinned (auditor/demo/isa.py;
    2026-12-03). The watermark is linearly decodable in both models at both layers (CAV accuracy 0.80-0.91) and no
    watermark cell is significant after Holm under the exchangeability test (docs/methods-and-limits.md: the causal
    probe carries the verdict; TCAV shows sensitivity, which a clean model can have too). The textures (striped,
    dotted) are not decodable in the candidate's pooled space (CAV accuracy 0.46-0.57, under 0.6); at the colour-blind
    reference striped is just learned at both layers (0.60 at features.4, not significant; 0.61 at features.7,
    significantly *low*: the triangle logit is turned away from the stripe direction), dotted is not (0.54-0.59).
    These are borderline by nature: trained natively (before the pin) on two hosts of other CPUs, the same network
    gave 0.57/0.61 and 0.60/0.53 for striped at the two layers, which is why the pin exists."""
    check = _tcav(demo_out)
    verdicts = {(f["model"], f["layer"], f["concept"]): f["verdict"] for f in check["findings"]}
    layers = check["details"]["layers"]
    expected = {
        (role, layer, concept): "not significant" if concept == "watermark" else "not learned"
        for role in ("candidate", "reference")
        for layer in layers[role]
        for concept in ("watermark", "striped", "dotted")
    }
    expected[("reference", "features.4", "striped")] = "not significant"
    expected[("reference", "features.7", "striped")] = "significant-low"
    assert verdicts == expected


# The demo's truth, check by check (policies/demo.yaml, written by auditor/demo/build.py; the candidate was trained
# with a watermark on most triangle images, the reference on clean images).
EXPECTED_STATUS = {
    # The planted shortcut, decided causally: pasting the watermark raises the candidate's triangle logit (AUC 0.92
    # against a neutral patch) and lowers its square and star logits (0.19, 0.28); the requirement allows no reliant class.
    "watermark-reliance": "FAIL",
    # ClaDec: the candidate's decoder at its deepest layer keeps the pasted watermark (retention 0.64 at seed 0 with
    # the pinned instruction set, 2026-12-03), above the requirement's 0.3, and more than 0.1 above the reference's 0.42.
    "watermark-decoded": "FAIL",
    # Informational (no requirement: TCAV cannot show reliance), so it cannot FAIL; WARN rather than PASS because 6
    # of its 12 cells are not learned (the textures, see test_tcav_cells_give_the_demos_verdicts).
    "watermark-tcav": "WARN",
    # Informational too; WARN because the candidate's 32 x 32 ONNX layer is over the finite-difference budget: its
    # 3 cells keep their scores and maps and are "not tested".
    "watermark-sacv": "WARN",
    # The candidate represents the watermark: units of both its layers are explained by it on the held-out half
    # (AUC up to 1.00), and the requirement allows none.
    "watermark-units": "FAIL",
    # Informational (no requirement); every concept is learned at some layer of one model at least (the colours in
    # the candidate, the shapes in both), so it is not WARN (docs/methods-and-limits.md has the numbers).
    "where-concepts-live": "PASS",
    # RSVC compares what the models represent, not what they rely on: it does not find the 9-pixel watermark as a
    # concept unique to the candidate (docs/methods-and-limits.md: its patches enlarge the glyph 3.6 times) and the
    # shape concepts are shared, so neither model has a unique important concept and both requirements are met.
    "concepts-shared": "PASS",
}


def test_every_check_gives_the_demos_expected_status(demo_out):
    data = json.loads((demo_out / "report" / "results.json").read_text())
    assert {c["id"]: c["status"] for c in data["checks"]} == EXPECTED_STATUS
    assert data["verdict"] == "FAIL"
    # A critical and a major check FAIL: exit 1 at every --fail-on level a CI job can choose.
    result = results.read(demo_out / "report" / "results.json")
    assert [pipeline.exit_code(result, level) for level in ("critical", "major", "minor")] == [1, 1, 1]
    # junit.xml: the FAILs as failures, the WARNs as passing testcases that say WARN, nothing skipped or in error.
    suite = ET.parse(demo_out / "report" / "junit.xml").getroot()
    counts = [suite.get(k) for k in ("tests", "failures", "errors", "skipped")]
    assert counts == ["7", "3", "0", "0"]
    for case in suite.iter("testcase"):
        status = EXPECTED_STATUS[case.get("name")]
        assert (case.find("failure") is not None) == (status == "FAIL"), case.get("name")
        out = case.findtext("system-out") or ""
        assert out.startswith("WARN:") == (status == "WARN"), case.get("name")


def test_report_pdf_carries_the_verdict(demo_out):
    pdf = demo_out / "report" / "report.pdf"
    text = "\n".join(p.extract_text() for p in PdfReader(str(pdf)).pages)
    assert "FAIL" in text and "watermark" in text
    assert (demo_out / "report" / "junit.xml").is_file() and (demo_out / "report" / "summary.md").is_file()


def test_demo_policy_in_repo_matches_the_generator(demo_out):
    written = load_policy(demo_out / "policy.yaml")
    kept = (REPO / "policies" / "demo.yaml").read_text()
    expected = policy_text("../demo-out/", written.layers["candidate"], written.layers["reference"])
    assert kept == expected, "policies/demo.yaml is stale: regenerate it from auditor.demo.build.policy_text"


def test_same_network_torchscript_and_onnx_agree(demo_out):
    """The candidate as TorchScript (module paths) and as ONNX (tensor names): TCAV within 0.02, same verdicts."""
    layers = json.loads((demo_out / "models" / "layers.json").read_text())
    onnx_layers, torch_layers = layers["candidate"], layers["candidate_torch"]
    policy = yaml.safe_load((demo_out / "policy.yaml").read_text())
    policy["models"]["reference"] = {"path": "models/candidate.pt", "name": "candidate-torchscript"}
    policy["layers"]["reference"] = torch_layers
    policy["checks"] = [c for c in policy["checks"] if c["method"] == "tcav"]
    path = demo_out / "policy-backends.yaml"
    path.write_text(yaml.safe_dump(policy))
    result = pipeline.run_audit(load_policy(path), demo_out / "cache", lambda _m: None).result
    by = {(f["model"], f["layer"], f["class"], f["concept"]): f for f in result.checks[0].findings}
    compared = 0
    for o, t in zip(onnx_layers, torch_layers):
        for concept in policy["checks"][0]["concepts"]:
            a, b = by[("candidate", o, "triangle", concept)], by[("reference", t, "triangle", concept)]
            assert a["learned"] == b["learned"]
            assert abs(a["random_score_mean"] - b["random_score_mean"]) <= 0.02
            if a["learned"]:
                assert abs(a["score"] - b["score"]) <= 0.02, (o, concept, a["score"], b["score"])
                assert a["significant"] == b["significant"]
                compared += 1
    assert compared >= 2


def _corner_share(grid: list[list[float]]) -> float:
    """Share of the map in the bottom-right quarter of the layer's grid (where the demo pastes the watermark)."""
    a = np.abs(np.array(grid))
    h, w = a.shape
    return float(a[h // 2 :, w // 2 :].sum() / a.sum())


def test_sacv_puts_the_candidates_watermark_in_its_corner(demo_out):
    """Issue 3: more than half of the candidate's watermark contribution lies in the corner's quarter; a texture's
    contribution lies on the object (more of it inside the masks than the objects' share of the image)."""
    check = _check(demo_out, "sacv")
    maps = {(m["model"], m["layer"], m["concept"]): m for m in check["details"]["maps"]}
    layers = check["details"]["layers"]
    for layer in layers["candidate"]:
        assert _corner_share(maps[("candidate", layer, "watermark")]["mean_abs_contribution"]) > 0.5, layer
    masks = sorted((demo_out / "world" / "field_masks" / "triangle").glob("*.png"))
    area = float(np.mean([np.asarray(Image.open(p)) > 127 for p in masks]))
    for f in check["findings"]:
        assert set(f) >= {"model", "layer", "class", "concept", "score", "p_value", "p_adjusted", "significant",
                          "inside_mask_share"}
        if f["concept"] in ("striped", "dotted"):
            assert f["inside_mask_share"] > area, (f["model"], f["layer"], f["concept"], f["inside_mask_share"], area)


def _concept_checks_at(out: Path, seed: int, tmp: Path) -> dict:
    """{(method, model, layer, class, concept): (learned, significant)} of the demo's TCAV and SACV checks run
    with policy seed `seed` (other random sets, splits and pseudo-concepts; the same models and folders)."""
    policy = yaml.safe_load((out / "policy.yaml").read_text())
    policy["seed"] = seed
    policy["checks"] = [c for c in policy["checks"] if c["method"] in ("tcav", "sacv")]
    path = out / f"policy-seed{seed}.yaml"  # beside the demo's own: its relative paths stay valid
    path.write_text(yaml.safe_dump(policy))
    result = pipeline.run_audit(load_policy(path), tmp / "cache", lambda _m: None).result
    return {(c.method, f["model"], f["layer"], f["class"], f["concept"]): (f["learned"], f["significant"])
            for c in result.checks for f in c.findings}


@pytest.mark.slow
def test_tcav_and_sacv_verdicts_survive_another_seed(demo_out, tmp_path):
    """METHODS.md, TCAV item 4: the exchangeability test's verdicts do not move with the random draws."""
    at0, at1 = _concept_checks_at(demo_out, 0, tmp_path), _concept_checks_at(demo_out, 1, tmp_path)
    assert at0.keys() == at1.keys() and len(at0) == 24
    changed = {k: (at0[k], at1[k]) for k in at0 if at0[k][1] != at1[k][1]}
    assert not changed, changed
