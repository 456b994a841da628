"""The `cladec` check end to end on the tiny world: policy validation, findings, requirements, the cache through
run, the ONNX twin, the report section in the PDF, diff keys."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pypdf import PdfReader

from auditor import diff, pipeline, results
from auditor.methods.cladec import evaluate
from auditor.policy import PolicyError, parse_policy
from auditor.schemas.cladec import CladecRequirement

QUIET = lambda _m: None  # noqa: E731


def _glyph(root):
    g = np.zeros((4, 4, 4), np.uint8)
    g[..., 0] = 255
    g[..., 3] = 255
    Image.fromarray(g, "RGBA").save(root / "glyph.png")


def _policy_text(tiny_world, models: dict[str, str], check: str, layers: dict | None = None) -> str:
    text = tiny_world.policy_text(model_paths=models, layers=layers)
    return text.split("checks:\n")[0] + "checks:\n" + check


CHECK = """  - id: decode
    method: cladec
    epochs: 1
    batch_size: 16
    images_per_class: 8
    pairs_per_class: 4
    grid_images: 4
    artifact: {{image: glyph.png, position: bottom-right, margin: 0.0}}
{extra}"""


@pytest.fixture
def world(tiny_world, tmp_path):
    """The tiny world beside a glyph artifact, in a folder of this test's own (policies resolve relative to it)."""
    (tmp_path / "world").symlink_to(tiny_world.root / "world")
    _glyph(tmp_path)
    return tmp_path


def _parse(tiny_world, root, extra: str = "", models: dict | None = None, layers: dict | None = None):
    models = models or {"candidate": str(tiny_world.script), "reference": str(tiny_world.script)}
    text = _policy_text(tiny_world, models, CHECK.format(extra=extra), layers)
    return parse_policy(text, str(root / "p.yaml"), root)


def test_schema_mistakes_are_one_line_each(tiny_world, world):
    with pytest.raises(PolicyError, match=r"checks\[0\]\.require\[0\]: .*exactly one of `max_retention`"):
        _parse(tiny_world, world, "    require:\n      - {model: candidate}\n")
    with pytest.raises(PolicyError, match=r"`margin` goes with max_retention_vs only"):
        _parse(tiny_world, world, "    require:\n      - {model: candidate, max_retention: 0.3, margin: 0.1}\n")
    with pytest.raises(PolicyError, match=r"checks\[0\]\.alpha: Input should be less than 1"):
        _parse(tiny_world, world, "    alpha: 1.5\n")


def test_validate_names_every_problem_before_anything_runs(tiny_world, world):
    extra = ("    torch_twins: {candidate: {path: tiny.pt, layers: [features.1]}, nobody: {path: x.pt, layers: [a]}}\n"
             "    images: {folder: nowhere}\n"
             "    require:\n      - {model: candidate, max_retention_vs: reference}\n")
    text = _policy_text(tiny_world, {"candidate": str(tiny_world.script)}, CHECK.format(extra=extra)).replace(
        "glyph.png", "missing.png")
    policy = parse_policy(text, str(world / "p.yaml"), world)
    with pytest.raises(PolicyError) as e:
        pipeline.prepare(policy, world / "cache", QUIET)
    lines = e.value.problems
    assert "checks[0].torch_twins.nobody: no audited model called 'nobody' (candidate)" in lines
    assert any(x.startswith("checks[0].require[0].max_retention_vs: 'reference' is not audited") for x in lines)
    assert any(x.startswith("checks[0].images: folder not found: ") for x in lines)
    assert any(x.startswith("checks[0].artifact.image: file not found: ") for x in lines)
    assert any("model 'candidate' is a torch model already" in x for x in lines)


def test_run_gives_findings_for_every_model_layer_and_decoder_and_a_rerun_trains_nothing(tiny_world, world):
    policy = _parse(tiny_world, world, "    require:\n      - {model: candidate, max_retention: 2.0}\n")
    logs: list[str] = []
    first = pipeline.run_audit(policy, world / "cache", logs.append).result.checks[0]
    assert first.status.value == "PASS", first.summary
    keys = [(f["model"], f["layer"], f["decoder"]) for f in first.findings]
    assert keys == [(m, layer, d) for m in ("candidate", "reference") for layer in ("features.1", "features.4")
                    for d in ("cladec", "reference_ae")]
    for f in first.findings:
        assert 0 <= f["mse"] < 1 and f["retention"] is not None and f["retention"] >= 0
        assert (f["top1_agreement"] is None) == (f["decoder"] == "reference_ae")
    # Both roles are the same file: the content-keyed cache trains its 2 layers x (decoder, reference AE) once,
    # in worker processes (their epoch lines go to their own log), and all 8 fits read the cache.
    assert "cladec: training 4 decoders, 2 at a time" in logs
    assert len(list((world / "cache" / "cladec").glob("*.pt"))) == 4
    assert len([m for m in logs if "decoder from cache" in m]) == 8
    grid = first.details["grid"]
    assert len(grid["originals"]) == 4 and grid["pasted"] == [False, False, True, True]
    assert len(grid["recon"]["reference"]["features.4"]["reference_ae"]) == 4
    logs.clear()
    second = pipeline.run_audit(policy, world / "cache", logs.append).result.checks[0]
    assert not [m for m in logs if "epoch" in m]  # every decoder from the cache
    assert second.findings == first.findings
    assert second.details["grid"] == grid


def test_onnx_without_twin_trains_alpha_zero_and_says_so_and_with_twin_gets_both(tiny_world, world):
    models = {"candidate": str(tiny_world.onnx)}
    layers = {"candidate": ["/features/features.1/Relu_output_0"]}
    policy = _parse(tiny_world, world, "", models, layers)
    check = pipeline.run_audit(policy, world / "cache", QUIET).result.checks[0]
    assert [f["decoder"] for f in check.findings] == ["cladec"]
    assert check.details["models"]["candidate"]["alpha"] == 0.0
    assert "no reference auto-encoder" in check.details["notes"][0]
    twin = f"    torch_twins: {{candidate: {{path: {tiny_world.script}, layers: [features.1]}}}}\n"
    check = pipeline.run_audit(_parse(tiny_world, world, twin, models, layers), world / "cache", QUIET).result.checks[0]
    assert [f["decoder"] for f in check.findings] == ["cladec", "reference_ae"]
    assert check.details["models"]["candidate"]["alpha"] == 0.001 and check.details["notes"] == []
    wrong = twin.replace("features.1", "features.4")
    with pytest.raises(PolicyError, match=r"torch_twins\.candidate\.layers\[0\]: 'features.4' has shape"):
        pipeline.prepare(_parse(tiny_world, world, wrong, models, layers), world / "cache", QUIET)


def _rows(cand: float | None, ref: float | None) -> list[dict]:
    return [{"model": "candidate", "layer": "b", "decoder": "cladec", "retention": cand},
            {"model": "candidate", "layer": "a", "decoder": "cladec", "retention": 0.0},
            {"model": "reference", "layer": "y", "decoder": "cladec", "retention": ref},
            {"model": "candidate", "layer": "b", "decoder": "reference_ae", "retention": 0.0}]


def test_requirements_read_the_cladec_decoder_at_the_last_layer():
    layers = {"candidate": ["a", "b"], "reference": ["x", "y"]}
    bound = CladecRequirement(model="candidate", max_retention=0.3)
    assert [q["met"] for q in evaluate(bound, _rows(0.31, 0.0), layers)] == [False]
    assert [q["met"] for q in evaluate(bound, _rows(0.3, 0.0), layers)] == [True]
    assert [q["met"] for q in evaluate(bound, _rows(None, 0.0), layers)] == [False]  # not measured: not met
    vs = CladecRequirement(model="candidate", max_retention_vs="reference", margin=0.1)
    (q,) = evaluate(vs, _rows(0.5, 0.45), layers)
    assert q["met"] and q["why"] == "candidate: retention 0.50 at b, reference: 0.45 at y"
    assert not evaluate(vs, _rows(0.56, 0.45), layers)[0]["met"]
    everyone = evaluate(CladecRequirement(model="all", max_retention=0.4), _rows(0.1, 0.5), layers)
    assert [(q["model"], q["met"]) for q in everyone] == [("candidate", True), ("reference", False)]


def test_section_renders_into_the_pdf_and_diff_keys_on_model_layer_decoder(tiny_world, world):
    from click.testing import CliRunner

    from auditor import cli

    policy = world / "p.yaml"
    models = {"candidate": str(tiny_world.script), "reference": str(tiny_world.script)}
    policy.write_text(_policy_text(tiny_world, models, CHECK.format(
        extra="    require:\n      - {model: candidate, max_retention_vs: reference}\n")))
    out = world / "out"
    res = CliRunner().invoke(cli.main, ["run", str(policy), "--out", str(out), "--cache-dir", str(world / "c"),
                                        "--quiet"])
    assert res.exit_code in (0, 1), res.output
    text = "\n".join(page.extract_text() or "" for page in PdfReader(out / "report.pdf").pages)
    assert "ClaDec" in text and "reference auto-encoder" in text and "lower bound" in text
    assert "features.4" in text and "Retention" in text
    old = results.read(out / "results.json")
    check = old.checks[0]
    changed = [dict(f, retention=(f["retention"] or 0) + 0.5) for f in check.findings]
    new = results.from_dict(json.loads(results.dumps(old)))
    new.checks[0].findings[:] = changed
    d = diff.diff_results(old, new)
    assert d["findings"][0]["key"] == {"model": "candidate", "layer": "features.1", "decoder": "cladec"}
    assert all(f["change"].startswith("retention ") for f in d["findings"]) and len(d["findings"]) == 8
