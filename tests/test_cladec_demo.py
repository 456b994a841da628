"""ClaDec on the demo (issue 15's must-shows), read from the demo audit's results.json (`auditor demo` runs the
check; its decoders are cached by content key, so this reads what the demo trained)."""

from __future__ import annotations

import json

import pytest


def _cladec(demo_out) -> dict:
    data = json.loads((demo_out / "report" / "results.json").read_text())
    return next(c for c in data["checks"] if c["method"] == "cladec")


@pytest.mark.slow
def test_the_colour_blind_reference_decodes_to_less_saturated_images(demo_out):
    """The reference sees luminance only (its network starts with a fixed RGB-to-grey stage): its ClaDec
    reconstructions have at most half the candidate's mean saturation at every layer depth."""
    check = _cladec(demo_out)
    sat = {(d["model"], d["layer"], d["decoder"]): d["saturation"] for d in check["details"]["saturation"]["decoded"]}
    layers = check["details"]["layers"]
    assert len(layers["candidate"]) == len(layers["reference"]) == 2
    for cand, ref in zip(layers["candidate"], layers["reference"]):
        assert sat[("reference", ref, "cladec")] <= 0.5 * sat[("candidate", cand, "cladec")], (cand, ref, sat)


@pytest.mark.slow
def test_demo_findings_cover_both_models_layers_and_decoders(demo_out):
    """Every (model, layer) has a ClaDec decoder and a reference auto-encoder (the candidate's through its
    TorchScript twin, alpha 0.001), each with a measured retention."""
    check = _cladec(demo_out)
    assert check["details"]["models"]["candidate"]["alpha"] == 0.001
    keys = {(f["model"], f["layer"], f["decoder"]) for f in check["findings"]}
    layers = check["details"]["layers"]
    assert keys == {(m, la, d) for m in layers for la in layers[m] for d in ("cladec", "reference_ae")}
    assert all(f["retention"] is not None for f in check["findings"])
