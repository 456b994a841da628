"""SACV against slow per-position references, across formats, and end to end on the tiny world."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import tinynet
from auditor import data
from auditor.cli import main
from auditor.methods import sacv, spatial
from auditor.models import load_path
from auditor.pipeline import prepare
from auditor.policy import PolicyError, parse_policy
from conftest import MEAN, SIZE, STD

PRE = data.Preprocessing(size=(SIZE, SIZE), mean=MEAN, std=STD)


def test_position_rows_transpose_each_image() -> None:
    acts = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    slow = np.concatenate([a.reshape(3, -1).T for a in acts])  # METHODS.md: A.reshape(C, -1).T per image
    np.testing.assert_array_equal(spatial.position_rows(acts), slow)
    assert spatial.position_rows(acts)[6].tolist() == acts[0, :, 1, 1].tolist()  # row = position (h=1, w=1)


def _slow_sums(acts: np.ndarray, grads: np.ndarray, cavs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per image, CAV and position: S = sum of v . g over the positions where v . a + b > 0."""
    n, _, h, w = acts.shape
    out = np.zeros((n, len(cavs)))
    for i in range(n):
        for k, (v, b) in enumerate(zip(cavs, offsets)):
            for y in range(h):
                for x in range(w):
                    if float(v @ acts[i, :, y, x]) + b > 0:
                        out[i, k] += float(v @ grads[i, :, y, x])
    return out


@pytest.fixture(scope="module")
def batch(tiny_world) -> dict:
    x = data.load(data.folder_set("a", tiny_world.root / "world" / "classes" / "a", PRE), PRE)[:6]
    net = tinynet.tiny(0)
    acts, grads = tinynet.eager_layer_grad(net, "features.1", x, 1)
    rng = np.random.default_rng(1)
    cavs = rng.normal(size=(3, acts.shape[1])).astype(np.float32)
    cavs /= np.linalg.norm(cavs, axis=1, keepdims=True)
    offsets = np.array([-0.2, 0.0, 0.3])
    return {"x": x, "acts": acts, "grads": grads, "cavs": cavs, "offsets": offsets}


def test_spatial_sums_equal_the_slow_reference(tiny_world, batch) -> None:
    model = load_path(str(tiny_world.script), input_shape=(3, SIZE, SIZE))
    grads = model.head("features.1").grad(batch["acts"], batch["x"], 1)
    np.testing.assert_allclose(grads, batch["grads"], rtol=1e-5, atol=1e-6)
    fast = spatial.spatial_sums(model, "features.1", batch["acts"], batch["x"], grads, batch["cavs"], batch["offsets"], 1)
    slow = _slow_sums(batch["acts"], batch["grads"], batch["cavs"], batch["offsets"])
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-6)
    assert spatial.spatial_scores(fast).tolist() == (slow > 0).mean(axis=0).tolist()


def test_onnx_finite_differences_match_autograd(tmp_path: Path) -> None:
    # SkipNet cut after act1: ReLU kinks and a skip path, no MaxPool. (Before a MaxPool, ReLU zeros tie in
    # a window and the function has no derivative there: autograd picks one index, central differences
    # average the one-sided slopes; that is not an error of either.)
    import torch

    net = tinynet.skip(0)
    path = tmp_path / "skip.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, SIZE, SIZE),), str(path), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, opset_version=17)
    onnx = load_path(str(path), input_shape=(3, SIZE, SIZE))
    x = np.random.default_rng(0).normal(size=(5, 3, SIZE, SIZE)).astype(np.float32)
    acts, grads = tinynet.eager_layer_grad(net, "act1", x, 1)
    layer = next(i.name for i in onnx.layers() if "act1" in i.name)
    np.testing.assert_allclose(onnx.activations(x, [layer])[layer], acts, rtol=1e-4, atol=1e-5)
    rng = np.random.default_rng(1)
    cavs = rng.normal(size=(3, acts.shape[1])).astype(np.float32)
    cavs /= np.linalg.norm(cavs, axis=1, keepdims=True)
    offsets = np.array([-0.2, 0.0, 0.3])
    slow = _slow_sums(acts, grads, cavs, offsets)
    fd = spatial.spatial_sums(onnx, layer, acts, x, None, cavs, offsets, 1)
    np.testing.assert_allclose(fd, slow, atol=1e-2 * np.abs(slow).max())
    present = spatial.relevance_maps(acts, cavs[:1], offsets[:1])[:, 0] > 0
    maps_fd = spatial.contribution_maps(onnx, layer, acts, x, None, cavs[0], 1, present)
    maps_exact = np.einsum("nchw,c->nhw", grads, cavs[0]) * present
    # One position per derivative: a kink within the step moves it by a few percent (onnx_model._steps).
    np.testing.assert_allclose(maps_fd, maps_exact, atol=3e-2 * np.abs(maps_exact).max())
    assert (maps_fd[~present] == 0).all()


def test_mask_fractions_average_over_cells(tmp_path: Path) -> None:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, : SIZE // 2] = 255  # left half
    mask[0, SIZE // 2] = 255  # plus one pixel: a quarter of a 2 x 2 cell
    Image.fromarray(mask).save(tmp_path / "m.png")
    cover = sacv.mask_fractions([tmp_path / "m.png"], (SIZE // 2, SIZE // 2), (SIZE, SIZE))[0]
    assert cover[:, : SIZE // 4].min() == 1.0
    assert cover[0, SIZE // 4] == pytest.approx(0.25)
    assert cover[1:, SIZE // 4 :].max() == 0.0


def test_concept_positions_keep_covered_cells_or_the_best_one() -> None:
    cover = np.zeros((2, 3, 3))
    cover[0, 1, 1] = 0.6
    cover[0, 2, 2] = 0.4
    cover[1, 0, 2] = 0.3  # no cell half covered: the most covered one counts
    keep = spatial.concept_positions(cover)
    assert keep[0].sum() == 1 and keep[0, 1, 1]
    assert keep[1].sum() == 1 and keep[1, 0, 2]


def test_spatial_cav_finds_a_small_concept_only_with_masks() -> None:
    # Concept images: one 2x2 patch of positions carries channel 0 high; elsewhere they equal random images.
    rng = np.random.default_rng(0)
    random = rng.normal(0, 1, (60, 4, 8, 8))
    concept = rng.normal(0, 1, (60, 4, 8, 8))
    concept[:, 0, 6:, 6:] += 4.0  # Bayes accuracy Phi(2) = 0.977
    where = np.zeros((60, 8, 8), bool)
    where[:, 6:, 6:] = True
    with_masks = spatial.spatial_cav(concept, random, 1, where)
    without = spatial.spatial_cav(concept, random, 1)
    assert with_masks.accuracy > 0.9 and abs(with_masks.vector[0]) > 0.9 and with_masks.vector[0] > 0
    assert without.accuracy < 0.6  # 4 of 64 positions differ: the paper's labelling cannot learn it


SACV_CHECK = """  - id: sacv-red
    method: sacv
    classes: [a]
    concepts: [red, blue]
    random_sets: 4
    set_size: 12
    map_images: 6
    top_images: 2
    masks: {folder: MASKS}
"""


@pytest.fixture(scope="module")
def half_masks(tiny_world, tmp_path_factory) -> Path:
    """Masks for class a: the left half of every image (the share inside is then checkable from the maps)."""
    root = tmp_path_factory.mktemp("masks")
    (root / "a").mkdir()
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, : SIZE // 2] = 255
    for p in sorted((tiny_world.root / "world" / "classes" / "a").glob("*.png")):
        Image.fromarray(mask).save(root / "a" / p.name)
    return root


def _policy(tiny_world, masks: Path, models: dict[str, str], layers: dict) -> str:
    return tiny_world.policy_text(models, SACV_CHECK.replace("MASKS", str(masks)), layers)


def test_sacv_audit_torchscript_and_onnx_agree(tiny_world, half_masks, tmp_path: Path) -> None:
    layers = {"candidate": ["/features/features.1/Relu_output_0", "/features/features.4/Relu_output_0"],
              "reference": ["features.1", "features.4"]}
    text = _policy(tiny_world, half_masks, {"candidate": str(tiny_world.onnx), "reference": str(tiny_world.script)},
                   layers)
    (tiny_world.root / "sacv.yaml").write_text(text)
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", str(tiny_world.root / "sacv.yaml"), "--out", str(out), "--quiet",
                                   "--cache-dir", str(tmp_path / "cache")])
    # The exit code is the one the verdicts imply (0 all met, 1 a requirement failed), not "either".
    from auditor import pipeline, results
    assert res.exit_code == pipeline.exit_code(results.read(out / "results.json")), res.output
    result = json.loads((out / "results.json").read_text())
    check = next(c for c in result["checks"] if c["method"] == "sacv")
    rows = check["findings"]
    assert len(rows) == 2 * 2 * 2  # models x layers x concepts
    for f in rows:
        assert {"model", "layer", "class", "concept", "score", "p_value", "p_adjusted", "significant",
                "inside_mask_share"} <= set(f)
    # One network in two formats: the same scores (finite differences vs autograd) and verdicts. At the deep
    # layer only: features.1 feeds a MaxPool whose windows of ReLU zeros tie, where the logit has no derivative
    # (autograd picks one index, central differences average the slopes) and S(x) near 0 can flip sign.
    pairs = {(f["model"], layers[f["model"]].index(f["layer"]), f["concept"]): f for f in rows}
    for (role, li, concept), f in pairs.items():
        if role != "candidate" or li != 1:
            continue
        g = pairs[("reference", li, concept)]
        assert f["learned"] == g["learned"]
        if f["learned"]:
            assert abs(f["score"] - g["score"]) <= 0.02
            assert f["significant"] == g["significant"]
    # The inside share is what the maps say: masks cover the left half of every image.
    for m in check["details"]["maps"]:
        f = next(r for r in rows if all(r[k] == m[k] for k in ("model", "layer", "class", "concept")))
        grid = np.abs(np.array(m["mean_abs_contribution"]))
        if grid.sum() > 0 and f["inside_mask_share"] is not None:
            assert f["inside_mask_share"] == pytest.approx(grid[:, : grid.shape[1] // 2].sum() / grid.sum(), abs=2e-3)
        assert len(m["overlays"]) == 2
    # The masks only this check reads are in the provenance table, with their fingerprint.
    sets = {i["name"]: i for i in result["provenance"]["image_sets"]}
    assert sets["sacv-red:masks:a"]["count"] == 16 and len(sets["sacv-red:masks:a"]["fingerprint"]) == 64
    html = (out / "report.html").read_text()
    assert "Where in the image does the concept" in html and "sacv-maps-0.png" in html
    assert (out / "assets").is_dir() and any(p.name.endswith("sacv-maps-0.png") for p in (out / "assets").iterdir())


def test_missing_masks_are_one_line_each(tiny_world, half_masks, tmp_path: Path) -> None:
    broken = tmp_path / "masks"
    shutil.copytree(half_masks, broken)
    next((broken / "a").glob("*.png")).unlink()
    text = _policy(tiny_world, broken, {"candidate": str(tiny_world.script)}, {"candidate": ["features.1"]})
    policy = parse_policy(text, "p.yaml", tiny_world.root)
    with pytest.raises(PolicyError) as e:
        prepare(policy, tmp_path / "cache", lambda _m: None)
    lines = [p for p in e.value.problems if "masks" in p]
    assert len(lines) == 1 and lines[0].startswith("checks[1].masks: 1 of 16 images of class 'a' have no mask")


def test_broken_files_in_the_checks_own_folders_are_named_before_anything_runs(tiny_world, half_masks, tmp_path):
    masks, images = tmp_path / "masks", tmp_path / "images"
    shutil.copytree(half_masks, masks)
    shutil.copytree(tiny_world.root / "world" / "classes", images)
    broken_mask = sorted((masks / "a").glob("*.png"))[0]
    broken_mask.write_bytes(b"\x89PNG not a mask")
    broken_image = sorted((images / "a").glob("*.png"))[1]
    broken_image.write_bytes(b"\x89PNG not an image")
    text = _policy(tiny_world, masks, {"candidate": str(tiny_world.script)}, {"candidate": ["features.1"]})
    text = text.replace("    masks: {folder:", f"    images: {{folder: {images}}}\n    masks: {{folder:")
    with pytest.raises(PolicyError) as e:
        prepare(parse_policy(text, "p.yaml", tiny_world.root), tmp_path / "cache", lambda _m: None)
    assert f"checks[1].masks: {broken_mask}: not a readable image (UnidentifiedImageError)" in e.value.problems
    assert f"checks[1].images: {broken_image}: not a readable image (UnidentifiedImageError)" in e.value.problems
