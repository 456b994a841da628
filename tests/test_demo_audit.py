"""The demo end to end: `auditor demo` builds the world, trains, audits, renders — and the planted shortcut
shows where it must. Also: the same trained network as TorchScript and as ONNX gives the same TCAV results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pypdf import PdfReader

from auditor import pipeline
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


def test_reference_cells_reported_as_they_are(demo_out):
    check = _tcav(demo_out)
    ref = [f for f in check["findings"] if f["model"] == "reference" and f["concept"] == "watermark"]
    layers = check["details"]["layers"]["reference"]
    assert {f["layer"] for f in ref} == set(layers)  # every cell is in the report, whatever it shows
    for f in ref:
        assert f["verdict"] in ("sensitive", "significant-low", "not significant", "not learned")


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
