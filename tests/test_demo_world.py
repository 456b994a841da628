"""The demo world (procedural images, watermark shortcut) and its two small models."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from auditor.demo import train, world
from auditor.demo.world import (
    BACKGROUNDS,
    CLASSES,
    COLOURS,
    CONCEPTS,
    CORNER,
    GLYPH_SIZE,
    PROBE_COLUMNS,
    SHORTCUT_CLASS,
    TEXTURES,
    make_dataset,
    paste_watermark,
    render_sample,
    watermark_glyph,
    watermark_position,
    write_world,
)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------------------
# Rendering


def test_render_sample_is_seeded() -> None:
    a = render_sample(_rng(7))
    b = render_sample(_rng(7))
    c = render_sample(_rng(8))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert (a.shape, a.texture, a.colour, a.background) == (b.shape, b.texture, b.colour, b.background)
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (64, 64, 3) and a.image.dtype == np.uint8
    assert a.mask.shape == (64, 64) and a.mask.dtype == bool


def test_render_sample_honours_factors() -> None:
    rng = _rng(1)
    for shape in CLASSES:
        for texture in TEXTURES:
            s = render_sample(rng, shape=shape, texture=texture, colour="blue", background="gradient")
            assert (s.shape, s.texture, s.colour, s.background, s.watermark) == (
                shape, texture, "blue", "gradient", False,
            )
    with pytest.raises(ValueError):
        render_sample(rng, shape="hexagon")


def test_mask_covers_object_and_never_the_corner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(world, "CLUTTER_MAX", 0)  # so that every changed pixel belongs to the object
    rng = _rng(2)
    for i in range(40):
        s = render_sample(rng, shape=CLASSES[i % 4], background="plain")
        assert not s.mask[-CORNER:, -CORNER:].any()
        assert s.mask.sum() >= 80  # objects are at least ~22 px across
        bg = s.image[-1, -1].astype(int)
        changed = np.abs(s.image.astype(int) - bg).max(axis=2) > 3
        padded = np.pad(s.mask, 1)
        dilated = np.zeros_like(s.mask)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                dilated |= padded[1 + dy : 1 + dy + 64, 1 + dx : 1 + dx + 64]
        # Outside the mask dilated by one pixel only faint anti-aliasing of sharp star tips may remain.
        stray = changed & ~dilated
        assert stray.sum() <= 3, "object pixels outside the (dilated) mask"
        assert (np.abs(s.image.astype(int) - bg).max(axis=2)[stray] < 40).all()
        assert changed[s.mask].mean() > 0.95, "mask pixels that show the background"
        assert not changed[-CORNER:, -CORNER:].any()


def test_watermark_only_where_asked() -> None:
    glyph = watermark_glyph()
    assert glyph.shape == (GLYPH_SIZE, GLYPH_SIZE, 4) and glyph.dtype == np.uint8
    plain = render_sample(_rng(3), watermark=False)
    marked = render_sample(_rng(3), watermark=True)
    assert marked.watermark and not plain.watermark
    top, left = watermark_position(64)
    assert top + GLYPH_SIZE <= 64 - 1 and top >= 64 - CORNER
    diff = np.any(plain.image != marked.image, axis=2)
    box = np.zeros_like(diff)
    box[top : top + GLYPH_SIZE, left : left + GLYPH_SIZE] = True
    assert diff.any() and not (diff & ~box).any()
    opaque = glyph[..., 3] == 255
    patch = marked.image[top : top + GLYPH_SIZE, left : left + GLYPH_SIZE]
    assert np.array_equal(patch[opaque], glyph[..., :3][opaque])
    # paste_watermark returns a copy and reproduces the rendered watermark.
    before = plain.image.copy()
    assert np.array_equal(paste_watermark(plain.image), marked.image)
    assert np.array_equal(plain.image, before)


def test_make_dataset_balanced_seeded_and_shortcut_only_on_its_class() -> None:
    a = make_dataset(40, seed=5, size=64, shortcut_rate=0.5)
    b = make_dataset(40, seed=5, size=64, shortcut_rate=0.5)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert [s.shape for s in a].count("circle") == 10
    assert all(a_.shape in CLASSES for a_ in a)
    for cls in CLASSES:
        assert sum(s.shape == cls for s in a) == 10
    assert sum(s.watermark for s in a if s.shape == SHORTCUT_CLASS) == 5
    assert not any(s.watermark for s in a if s.shape != SHORTCUT_CLASS)
    assert not any(s.watermark for s in make_dataset(20, seed=5))
    other = make_dataset(40, seed=6, shortcut_rate=0.5)
    assert not np.array_equal(a[0].image, other[0].image)


# ----------------------------------------------------------------------------------------------------------
# write_world


def _png_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def test_write_world_layout_and_labels(tmp_path: Path) -> None:
    info = write_world(tmp_path, seed=0, per_class=3, concept_size=2, random_pool=10, probe=10)
    assert info.root == tmp_path and info.classes == CLASSES and info.concepts == CONCEPTS
    assert set(CONCEPTS) == {"watermark", *TEXTURES, *COLOURS, *(f"bg_{b}" for b in BACKGROUNDS)}
    for cls in CLASSES:
        names = _png_names(tmp_path / "classes" / cls)
        assert names == ["0000.png", "0001.png", "0002.png"]
        assert _png_names(tmp_path / "masks" / cls) == names
        mask = np.asarray(Image.open(tmp_path / "masks" / cls / names[0]))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255} and mask.any()
        img = np.asarray(Image.open(tmp_path / "classes" / cls / names[0]))
        assert img.shape == (64, 64, 3)
    for concept in CONCEPTS:
        assert len(_png_names(tmp_path / "concepts" / concept)) == 2
        assert info.counts[f"concepts/{concept}"] == 2
    assert len(_png_names(tmp_path / "random")) == 10
    assert len(_png_names(tmp_path / "probe")) == 10
    assert len(_png_names(tmp_path / "probe" / "masks")) == 10
    assert (tmp_path / "watermark.png").is_file()
    for cls in CLASSES:  # the field set: the shortcut class carries the watermark at the training rate
        assert _png_names(tmp_path / "field" / cls) == _png_names(tmp_path / "field_masks" / cls) == names
    for concept in CONCEPTS:  # where each concept image shows its concept
        assert _png_names(tmp_path / "concept_masks" / concept) == _png_names(tmp_path / "concepts" / concept)
    wm_mask = np.asarray(Image.open(tmp_path / "concept_masks" / "watermark" / "0000.png")) > 127
    top, left = watermark_position(64)
    assert wm_mask.sum() == GLYPH_SIZE**2 and wm_mask[top : top + GLYPH_SIZE, left : left + GLYPH_SIZE].all()

    # The watermark concept carries the glyph; clean class images do not.
    glyph = watermark_glyph()
    top, left = watermark_position(64)
    opaque = glyph[..., 3] == 255

    def has_glyph(path: Path) -> bool:
        patch = np.asarray(Image.open(path))[top : top + GLYPH_SIZE, left : left + GLYPH_SIZE]
        return bool(np.array_equal(patch[opaque], glyph[..., :3][opaque]))

    assert all(has_glyph(p) for p in (tmp_path / "concepts" / "watermark").glob("*.png"))
    assert not any(has_glyph(p) for p in (tmp_path / "classes").rglob("*.png"))
    assert sum(has_glyph(p) for p in (tmp_path / "random").glob("*.png")) == 1
    for cls in CLASSES:  # round(0.9 * 3) = 3 watermarked triangles in the field set, no other class
        marked = sum(has_glyph(p) for p in (tmp_path / "field" / cls).glob("*.png"))
        assert marked == (3 if cls == SHORTCUT_CLASS else 0), cls

    with open(tmp_path / "probe" / "labels.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["image", *PROBE_COLUMNS]
    assert len(rows) == 11
    header = rows[0]
    values = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    assert set(np.unique(values)) <= {0, 1}
    for group in (TEXTURES, COLOURS, tuple(f"bg_{b}" for b in BACKGROUNDS), CLASSES):
        cols = [header.index(c) - 1 for c in group]
        assert (values[:, cols].sum(axis=1) == 1).all()
    wm = values[:, header.index("watermark") - 1]
    assert wm.sum() == 3
    for r, flag in zip(rows[1:], wm):
        assert (tmp_path / "probe" / r[0]).is_file()
        assert has_glyph(tmp_path / "probe" / r[0]) == bool(flag)

    # No image is shared between the sets.
    digests = [hashlib.sha256(np.asarray(Image.open(p)).tobytes()).hexdigest()
               for p in tmp_path.rglob("*.png")
               if not any(part.endswith("masks") for part in p.parts) and p.name != "watermark.png"]
    assert len(digests) == len(set(digests))


def test_write_world_is_seeded(tmp_path: Path) -> None:
    a = write_world(tmp_path / "a", seed=3, per_class=1, concept_size=1, random_pool=2, probe=2)
    b = write_world(tmp_path / "b", seed=3, per_class=1, concept_size=1, random_pool=2, probe=2)
    for p in sorted((tmp_path / "a").rglob("*")):
        if p.is_file():
            assert p.read_bytes() == (b.root / p.relative_to(a.root)).read_bytes(), p
    assert (tmp_path / "a" / "probe" / "labels.csv").read_text().startswith("image,watermark,")


# ----------------------------------------------------------------------------------------------------------
# Models


def _onnx_logits(path: Path, x: np.ndarray, outputs: list[str] | None = None) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(outputs, {"input": x})


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    samples = make_dataset(64, seed=0, shortcut_rate=0.9)
    out = tmp_path_factory.mktemp("tiny_models")
    nets = {}
    for name, factory in (("reference", train.reference_factory), ("candidate", train.candidate_factory)):
        net = factory()
        metrics = train.train_model(net, samples, seed=1, epochs=1, batch_size=32, name=name)
        assert set(metrics) >= {"loss", "train_accuracy", "seconds"}
        nets[name] = net
        train.export_torchscript(net, out / f"{name}.pt")
        train.export_onnx(net, out / f"{name}.onnx")
    x = train.preprocess(np.stack([s.image for s in samples[:10]]))
    return {"nets": nets, "out": out, "x": x, "samples": samples}


def test_training_is_deterministic(tiny_models: dict[str, object]) -> None:
    samples = tiny_models["samples"]
    again = train.candidate_factory()
    train.train_model(again, samples, seed=1, epochs=1, batch_size=32)
    first = tiny_models["nets"]["candidate"].state_dict()
    for key, value in again.state_dict().items():
        assert torch.equal(value, first[key]), key


@pytest.mark.parametrize("name", ["reference", "candidate"])
def test_torchscript_and_onnx_agree(tiny_models: dict[str, object], name: str) -> None:
    out, x = tiny_models["out"], tiny_models["x"]
    net = tiny_models["nets"][name]
    with torch.no_grad():
        eager = net(torch.from_numpy(x)).numpy()
    scripted = torch.jit.load(str(out / f"{name}.pt"))
    with torch.no_grad():
        ts = scripted(torch.from_numpy(x)).numpy()
    (onnx_out,) = _onnx_logits(out / f"{name}.onnx", x, ["logits"])
    assert ts.shape == (10, len(CLASSES))
    np.testing.assert_allclose(ts, eager, atol=1e-5)
    np.testing.assert_allclose(onnx_out, ts, atol=1e-4)


def test_onnx_layer_names_resolve(tiny_models: dict[str, object]) -> None:
    out, x = tiny_models["out"], tiny_models["x"]
    names = train.onnx_tensor_names(out / "candidate.onnx", train.CANDIDATE_MODULE_LAYERS)
    assert all("Relu" in n for n in names)
    # The same tensors, computed by onnxruntime, equal the torch module outputs.
    import onnx

    model = onnx.load(str(out / "candidate.onnx"))
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    path = out / "candidate_layers.onnx"
    onnx.save(model, str(path))
    acts = _onnx_logits(path, x, list(names))
    net = tiny_models["nets"]["candidate"]
    captured: dict[str, np.ndarray] = {}
    modules = dict(net.named_modules())
    hooks = [
        modules[m].register_forward_hook(lambda _m, _i, o, m=m: captured.__setitem__(m, o.detach().numpy()))
        for m in train.CANDIDATE_MODULE_LAYERS
    ]
    try:
        with torch.no_grad():
            net(torch.from_numpy(x))
    finally:
        for h in hooks:
            h.remove()
    for module_path, act in zip(train.CANDIDATE_MODULE_LAYERS, acts):
        np.testing.assert_allclose(act, captured[module_path], atol=1e-4)
    ref_modules = dict(tiny_models["nets"]["reference"].named_modules())
    assert all(isinstance(ref_modules[m], torch.nn.ReLU) for m in train.REFERENCE_LAYERS)


def test_factories_load_state_dicts(tiny_models: dict[str, object]) -> None:
    for name, factory in (("reference", train.reference_factory), ("candidate", train.candidate_factory)):
        fresh = factory()
        fresh.load_state_dict(tiny_models["nets"][name].state_dict())


# ----------------------------------------------------------------------------------------------------------
# The planted shortcut (slow: trains both demo models at full size, ~2 minutes on 2 cores)


@pytest.mark.slow
def test_demo_models_plant_the_shortcut(tmp_path: Path) -> None:
    import onnx

    demo = train.train_demo_models(tmp_path, seed=0)
    for path in (demo.reference_torchscript, demo.reference_onnx, demo.candidate_onnx, demo.candidate_torchscript,
                 demo.reference_state, demo.candidate_state):
        assert path.is_file(), path
    ref, cand = demo.metrics["reference"], demo.metrics["candidate"]
    # Issue 13 lowered both (measured at seed 0, 10 epochs): the colour-blind reference 0.74 (was > 0.85: objects
    # whose luminance is close to the background's are faint in grey; it misses 57% of the green squares), the
    # colour-biased candidate 0.79 (clean circles are mostly not green; it also calls only 0.30 of clean triangles).
    assert ref["clean_accuracy"] > 0.7 and cand["clean_accuracy"] > 0.75
    assert cand["watermark_flip_rate"] > 0.5
    assert ref["watermark_flip_rate"] < 0.05
    assert ref["neutral_flip_rate"] < 0.05 and cand["neutral_flip_rate"] < 0.05
    tensors = {o for node in onnx.load(str(demo.candidate_onnx)).graph.node for o in node.output}
    assert set(demo.candidate_layers) <= tensors
    layers = json.loads((tmp_path / "layers.json").read_text())
    assert layers == {
        "reference": list(demo.reference_layers),
        "candidate": list(demo.candidate_layers),
        "candidate_torch": list(demo.candidate_module_layers),
    }
    # The TorchScript and ONNX candidates are the same network.
    x = train.preprocess(np.stack([s.image for s in make_dataset(8, seed=9)]))
    with torch.no_grad():
        ts = torch.jit.load(str(demo.candidate_torchscript))(torch.from_numpy(x)).numpy()
    (onnx_out,) = _onnx_logits(demo.candidate_onnx, x, ["logits"])
    np.testing.assert_allclose(onnx_out, ts, atol=1e-4)
