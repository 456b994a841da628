"""The `similarity` check (concept similarity at relative depth, and CKA) wired in: policy errors, a run on the
tiny network as TorchScript against the same network as ONNX (whose answers are known: identical layers), slow
obviously-correct references for its CKA and best depths, the report section in a PDF, diff keys, and the
relative depth `auditor layers` prints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from auditor import cli, data, diff, pipeline, results
from auditor.policy import PolicyError, load_policy
from auditor.report.render import render_report

ONNX_LAYERS = ["/features/features.1/Relu_output_0", "/features/features.4/Relu_output_0"]
TORCH_LAYERS = ["features.1", "features.4"]
CHECK = """  - id: sim
    method: similarity
    concepts: [red, blue]
    labels: {labels}
    label_concepts: [warm]
    runs: 2
    set_size: 10
    map_images: 8
{extra}"""


def _policy_text(tiny_world, labels: Path, extra: str = "", models: dict | None = None, layers: dict | None = None) -> str:
    models = models or {"candidate": str(tiny_world.onnx), "reference": str(tiny_world.script)}
    layers = layers or {"candidate": ONNX_LAYERS, "reference": TORCH_LAYERS}
    text = tiny_world.policy_text(models, layers=layers)
    return text.split("checks:\n")[0] + "checks:\n" + CHECK.format(labels=labels, extra=extra)


@pytest.fixture(scope="module")
def sim_world(tiny_world, tmp_path_factory) -> Path:
    """A labels CSV over the tiny world's images (absolute paths): `warm` is 1 on the red concept images."""
    root = tmp_path_factory.mktemp("sim")
    w = tiny_world.root / "world"
    rows = ["image,warm,cool"]
    for kind, warm, cool in (("concepts/red", 1, 0), ("concepts/blue", 0, 1)):
        rows += [f"{p},{warm},{cool}" for p in sorted((w / kind).glob("*.png"))]
    rows += [f"{p},0,0" for p in sorted((w / "random").glob("*.png"))[:20]]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _write(tiny_world, sim_world: Path, name: str, extra: str = "", **kw) -> Path:
    path = tiny_world.root / name  # beside the tiny world, whose folders the policy names relatively
    path.write_text(_policy_text(tiny_world, sim_world / "labels.csv", extra, **kw))
    return path


@pytest.fixture(scope="module")
def sim_audit(tiny_world, sim_world) -> results.AuditResult:
    extra = ("    require:\n      - {concept: red, max_depth_shift: 0}\n"
             "      - {min_cka_at_matched_depth: 0.99, variant: linear}\n")
    policy = load_policy(_write(tiny_world, sim_world, "sim.yaml", extra))
    return pipeline.run_audit(policy, sim_world / "cache", lambda _m: None).result


def _kind(check, kind: str) -> list[dict]:
    return [f for f in check.findings if f["kind"] == kind]


# ----------------------------------------------------------------------------------------------- policy errors


@pytest.mark.parametrize("extra, needle", [
    ("    require:\n      - {concept: green, max_depth_shift: 0.2}\n", "'green' is not one of the check's concepts"),
    ("    require:\n      - {max_depth_shift: 0.2}\n", "`max_depth_shift` needs `concept`"),
    ("    require:\n      - {concept: red, min_cka_at_matched_depth: 0.5}\n", "takes no `concept`"),
    ("    cav: forest\n", "cav"),
])
def test_schema_errors_name_the_key(tiny_world, sim_world, extra, needle):
    with pytest.raises(PolicyError) as err:
        load_policy(_write(tiny_world, sim_world, "bad.yaml", extra))
    assert any(p.startswith("checks[0]") and needle in p for p in err.value.problems), err.value.problems


def test_unknown_concept_column_and_layer_are_one_line_each(tiny_world, sim_world):
    text = _policy_text(tiny_world, sim_world / "labels.csv",
                        layers={"candidate": ONNX_LAYERS, "reference": ["features.1", "features.9"]})
    text = text.replace("concepts: [red, blue]", "concepts: [red, green]").replace("[warm]", "[warm, hot]")
    (tiny_world.root / "bad2.yaml").write_text(text)
    policy = load_policy(tiny_world.root / "bad2.yaml")
    with pytest.raises(PolicyError) as err:
        pipeline.prepare(policy, sim_world / "cache", lambda _m: None)
    problems = err.value.problems
    assert any(p.startswith("checks[0].concepts[1]: 'green'") for p in problems), problems
    assert any(p.startswith("checks[0].label_concepts[1]: 'hot' is not a column") for p in problems), problems
    assert any(p.startswith("layers.reference[1]: layer 'features.9' is not in model 'reference'") for p in problems)
    # Through the CLI: exit 2 and the problems, never a traceback.
    res = CliRunner().invoke(cli.main, ["validate", str(tiny_world.root / "bad2.yaml")])
    assert res.exit_code == 2 and "Traceback" not in res.output and "'hot' is not a column" in res.output


def test_three_models_need_two_named(tiny_world, sim_world):
    models = {"candidate": str(tiny_world.onnx), "reference": str(tiny_world.script), "third": str(tiny_world.script)}
    layers = {"candidate": ONNX_LAYERS, "reference": TORCH_LAYERS, "third": TORCH_LAYERS}
    path = _write(tiny_world, sim_world, "three.yaml", models=models, layers=layers)
    with pytest.raises(PolicyError) as err:
        pipeline.prepare(load_policy(path), sim_world / "cache", lambda _m: None)
    assert any("similarity compares two models; the policy has 3" in p for p in err.value.problems)


# ----------------------------------------------------------------------------------------------- the run


def test_three_kinds_of_findings_and_the_same_network_twice_is_identical(sim_audit):
    (check,) = sim_audit.checks
    concepts, ckas, maps = _kind(check, "concept"), _kind(check, "cka"), _kind(check, "map")
    assert len(concepts) == 3 * 2 * 2 and len(ckas) == 2 * 2 and len(maps) == 3 * 2 * 2
    assert set(concepts[0]) >= {"concept", "model", "layer", "relative_depth", "cav_accuracy"}
    assert set(ckas[0]) >= {"model_a", "layer_a", "model_b", "layer_b", "cka", "cka_debiased"}
    assert set(maps[0]) >= {"concept", "layer_a", "layer_b", "map_similarity"}
    # The ONNX export and the TorchScript file are one network: same depths, same CAV accuracies, CKA and concept
    # maps identical at the same layer (float rounding of two engines aside), and different across layers.
    pair = dict(zip(ONNX_LAYERS, TORCH_LAYERS))
    acc = {(f["concept"], f["model"], f["layer"]): (f["relative_depth"], f["cav_accuracy"]) for f in concepts}
    for (c, role, layer), (depth, a) in acc.items():
        if role == "candidate":
            other = acc[(c, "reference", pair[layer])]
            assert other[0] == depth and abs(other[1] - a) <= 0.05
    for f in ckas:
        same = pair[f["layer_a"]] == f["layer_b"]
        assert f["matched"] == same
        if same:
            assert f["cka"] == pytest.approx(1.0, abs=1e-4) and f["cka_debiased"] == pytest.approx(1.0, abs=1e-4)
        else:
            assert f["cka"] < 0.999
    for f in maps:
        if pair[f["layer_a"]] == f["layer_b"]:
            assert f["map_similarity"] == pytest.approx(1.0, abs=1e-4)
    assert check.status.value == "PASS", check.summary
    assert [q["met"] for q in check.details["requirements"]] == [True, True]
    assert check.details["depths"]["candidate"] == {ONNX_LAYERS[0]: pytest.approx(1 / 3), ONNX_LAYERS[1]: pytest.approx(2 / 3)}


def test_red_is_learned_and_the_label_concept_agrees_with_its_folder(sim_audit):
    """`warm` (the red images against the blue and random ones, from labels) and `red` (its folder against the
    random pool) are the same concept: both learned at the tiny net's layers (colour is in the input)."""
    (check,) = sim_audit.checks
    for f in _kind(check, "concept"):
        if f["concept"] in ("red", "warm"):
            assert f["learned"] and f["cav_accuracy"] >= 0.8, f


def test_best_depths_equal_a_slow_reference(sim_audit):
    """Best layer per (concept, model) from the findings by plain loops: highest accuracy, ties to the shallower."""
    (check,) = sim_audit.checks
    rows = _kind(check, "concept")
    for s in check.details["depth_shifts"]:
        for side, role in (("a", "candidate"), ("b", "reference")):
            best = None
            for f in rows:
                if f["concept"] != s["concept"] or f["model"] != role:
                    continue
                if best is None or f["cav_accuracy"] > best["cav_accuracy"] or (
                        f["cav_accuracy"] == best["cav_accuracy"] and f["relative_depth"] < best["relative_depth"]):
                    best = f
            assert s[f"layer_{side}"] == best["layer"] and s[f"depth_{side}"] == best["relative_depth"]
            assert [f["layer"] for f in rows if f["concept"] == s["concept"] and f["model"] == role and f["best"]] == [
                best["layer"]]
        assert s["shift"] == pytest.approx(s["depth_b"] - s["depth_a"])


def _textbook_cka(x: np.ndarray, y: np.ndarray) -> float:
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return float(hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l)))


def test_cka_of_the_check_equals_the_textbook_formula_on_its_images(sim_audit, tiny_world, sim_world):
    """The check's batched Gram matrices, on the labels' images (48 < cka_images: all of them), against
    tr(KHLH) / sqrt(tr(KHKH) tr(LHLH)) on activations extracted here."""
    from auditor.labels import load_labels
    from auditor.models import load_path
    from auditor.pipeline import preprocessing

    (check,) = sim_audit.checks
    policy = load_policy(tiny_world.root / "sim.yaml")
    pre = preprocessing(policy)
    images = data.load(data.image_set("x", load_labels(sim_world / "labels.csv").images, pre), pre)
    assert check.details["settings"]["cka_images"] == len(images)
    ref = load_path(str(tiny_world.script), (3, 16, 16)).activations(images, TORCH_LAYERS)
    onnx = load_path(str(tiny_world.onnx), None).activations(images, ONNX_LAYERS)
    for f in _kind(check, "cka"):
        x = onnx[f["layer_a"]].reshape(len(images), -1).astype(np.float64)
        y = ref[f["layer_b"]].reshape(len(images), -1).astype(np.float64)
        assert f["cka"] == pytest.approx(_textbook_cka(x, y), abs=1e-5)


def test_requirements_on_depth_shift_and_matched_cka():
    from auditor.methods.similarity import evaluate, matched_layers
    from auditor.schemas.similarity import SimilarityRequirement as R

    shifts = [{"concept": "circle", "depth_a": 0.4, "depth_b": 0.7, "shift": 0.3, "learned_a": True, "learned_b": True},
              {"concept": "green", "depth_a": 0.4, "depth_b": 0.4, "shift": 0.0, "learned_a": True, "learned_b": False}]
    roles = ["candidate", "reference"]
    assert evaluate(R(concept="circle", max_depth_shift=0.3), roles, shifts, [])[0]
    met, why = evaluate(R(concept="circle", max_depth_shift=0.25), roles, shifts, [])
    assert not met and "shift +0.30" in why
    met, why = evaluate(R(concept="green", max_depth_shift=1), roles, shifts, [])
    assert not met and "not learned at any audited layer of reference" in why
    # Matched depth: nearest relative depth, ties to the shallower layer.
    assert matched_layers({"a1": 0.5, "a2": 1.0}, {"b1": 0.25, "b2": 0.75, "b3": 1.0}) == {"a1": "b1", "a2": "b3"}
    ckas = [{"layer_a": "a1", "layer_b": "b1", "cka": 0.9, "cka_debiased": 0.4, "matched": True},
            {"layer_a": "a1", "layer_b": "b2", "cka": 0.1, "cka_debiased": 0.1, "matched": False}]
    assert evaluate(R(min_cka_at_matched_depth=0.5), roles, [], ckas)[0]
    met, why = evaluate(R(min_cka_at_matched_depth=0.5, variant="debiased"), roles, [], ckas)
    assert not met and "debiased CKA at matched depth 0.40 (a1 vs b1" in why


# ----------------------------------------------------------------------------------------------- report, diff


def test_section_renders_into_the_pdf(sim_audit, tmp_path):
    path = tmp_path / "results.json"
    results.write(sim_audit, path)
    out = render_report(path, tmp_path / "report")
    html = out.html.read_text()
    assert "Where each concept is encoded" in html and "Depth shifts" in html and "warm" in html
    for name in ("similarity-depth.svg", "similarity-cka.svg", "similarity-maps-0.svg"):
        assert any(p.name.endswith(name) for p in out.assets), name
    assert "dominated by the high-variance directions" in html
    assert out.pdf.stat().st_size > 0


def test_findings_round_trip_and_diff_keys_each_kind(sim_audit):
    back = results.from_dict(json.loads(results.dumps(sim_audit)))
    typed = results.typed_findings(back.checks[0])
    assert {type(f).__name__ for f in typed} == {"ConceptDepthFinding", "CkaFinding", "MapFinding"}
    check = back.checks[0]
    moved = []
    for f in check.findings:
        g = dict(f)
        if g["kind"] == "concept" and g["concept"] == "red" and g["model"] == "candidate" and g["best"]:
            g["best"] = False
        if g["kind"] == "cka" and g["matched"]:
            g["cka_debiased"] = g["cka_debiased"] - 0.5
        moved.append(g)
    new = dataclasses.replace(back, checks=[dataclasses.replace(check, findings=moved)])
    d = diff.diff_results(back, new)
    keys = {tuple(sorted(f["key"])): f["change"] for f in d["findings"]}
    assert any("no longer the best layer" in c for k, c in keys.items() if "concept" in k and "model" in k)
    cka_changes = [f for f in d["findings"] if f["key"].get("kind") == "cka"]
    assert len(cka_changes) == 2 and all("cka_debiased moved by -0.50" in f["change"] for f in cka_changes)
    assert set(cka_changes[0]["key"]) == {"kind", "model_a", "layer_a", "model_b", "layer_b"}


# ----------------------------------------------------------------------------------------------- auditor layers


def test_layers_prints_the_same_relative_depth_for_torch_and_onnx(tiny_world):
    runner = CliRunner()
    torch_out = runner.invoke(cli.main, ["layers", str(tiny_world.script), "--size", "16"])
    onnx_out = runner.invoke(cli.main, ["layers", str(tiny_world.onnx)])
    assert torch_out.exit_code == 0 and onnx_out.exit_code == 0

    def depth(out: str, name: str) -> str:
        line = next(l for l in out.splitlines() if l.split()[0] == name)
        return line.split("depth ")[1]

    # Weight layers: two convolutions and the linear layer.
    assert depth(torch_out.output, "features.1") == depth(onnx_out.output, ONNX_LAYERS[0]) == "0.333"
    assert depth(torch_out.output, "features.4") == depth(onnx_out.output, ONNX_LAYERS[1]) == "0.667"
    assert depth(torch_out.output, "fc") == depth(onnx_out.output, "logits") == "1.000"
    assert depth(torch_out.output, "features") == "0.667"  # a container ends where its last module does
    assert "(8, 8, 8)" in torch_out.output  # the shapes are still there
