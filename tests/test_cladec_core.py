"""ClaDec's core: decoder shapes per layer kind, the frozen-classifier loss, the reference auto-encoder's fresh
copy and encoder, the content-keyed cache, and the measurements (retention against a per-pixel loop)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import tinynet  # noqa: E402

from auditor import data  # noqa: E402
from auditor.methods import artifact  # noqa: E402
from auditor.methods import cladec_core as cc  # noqa: E402
from auditor.methods import cladec_measure as cm  # noqa: E402
from auditor.methods import cladec_reference as cr  # noqa: E402
from auditor.models.torch_model import ModuleModel, ScriptModel  # noqa: E402
from auditor.policy import ArtifactSpec  # noqa: E402

PRE = data.Preprocessing((16, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
FAST = cc.Settings(epochs=2, batch_size=16, seed=5)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These trainings are tiny: on this shared 2-core machine (load average ~10) two intra-op threads made a
    2-epoch training 28x slower than one (3.5 s vs 0.13 s), waiting on each other's barriers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _images(n: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, 16, 16)).astype(np.float32)


def _acts(net: nn.Module, x01: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net.features(cc.to_model(torch.from_numpy(x01), PRE)).numpy()


def _ups(decoder: cc.Decoder) -> list[nn.ConvTranspose2d]:
    return [m for m in decoder.ups if isinstance(m, nn.ConvTranspose2d)]


# ------------------------------------------------------------------------------------------------ decoder


@pytest.mark.parametrize(
    "layer_shape, image, stages",
    [
        ((24, 64, 64), 64, 0),  # stride 1
        ((32, 32, 32), 64, 1),  # stride 2
        ((48, 16, 16), 64, 2),  # stride 4
        ((256, 8, 8), 64, 3),  # stride 8, channels 256 -> 128 -> 64 -> 64
        ((64, 7, 7), 64, 4),  # 7 does not divide 64: 112 px, resized to 64
        ((16, 7, 7), 28, 2),  # 7 * 4 = 28 exactly
        ((8, 5, 3), 28, 4),  # not square: the coarser side decides (3 * 2^4 >= 28)
        ((10,), 64, 6),  # dense: 1x1 -> 64
        ((300,), 28, 5),  # dense wider than 64
    ],
)
def test_decoder_shape_per_layer_kind(layer_shape: tuple[int, ...], image: int, stages: int) -> None:
    dec = cc.Decoder(layer_shape, (3, image, image))
    ups = _ups(dec)
    assert len(ups) == stages
    width = max(layer_shape[0], 64)
    for up in ups:  # halving, never below 64
        assert up.in_channels == width and up.out_channels == max(width // 2, 64)
        assert (up.kernel_size, up.stride, up.padding) == ((4, 4), (2, 2), (1, 1))
        width = up.out_channels
    assert dec.final.out_channels == 3
    stem = dec.stem[0]
    assert isinstance(stem, nn.Linear if len(layer_shape) == 1 else nn.Conv2d)
    with torch.no_grad():
        y = dec(torch.randn(5, *layer_shape) * 10)
    assert tuple(y.shape) == (5, 3, image, image)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_decoder_refuses_other_shapes_in_one_line() -> None:
    from auditor.errors import UserError

    with pytest.raises(UserError, match="conv .* or dense"):
        cc.Decoder((4, 5), (3, 16, 16))


def test_image_space_round_trip_with_bgr() -> None:
    pre = data.Preprocessing((16, 16), (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), channel_order="BGR")
    x01 = _images(3)
    rgb_u8 = (x01[0].transpose(1, 2, 0) * 255).round().astype(np.uint8)
    expected = data.normalise(rgb_u8, pre)  # the preprocessing the classifier was given its inputs with
    got = cc.to_model_np((rgb_u8.astype(np.float32) / 255).transpose(2, 0, 1)[None], pre)[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(cc.from_model(cc.to_model_np(x01, pre), pre), x01, atol=1e-5)


# ----------------------------------------------------------------------------------------------- training


def test_training_is_seeded_and_keeps_the_classifier_frozen() -> None:
    net = tinynet.tiny(0)
    before = {n: p.clone() for n, p in net.named_parameters()}
    x01 = _images()
    acts, labels = _acts(net, x01), np.arange(len(x01)) % 2
    lines: list[str] = []
    a = cc.train_cladec(acts, x01, labels, net, PRE, FAST, lines.append)
    b = cc.train_cladec(acts, x01, labels, net, PRE, FAST, lambda _m: None)
    assert a.stats.steps == 4 and len(lines) == 2 and "epoch 2/2" in lines[-1]
    assert not net.training and all(not p.requires_grad for p in net.parameters())
    for n, p in net.named_parameters():
        assert torch.equal(p, before[n]), n
    for (n, p), q in zip(a.decoder.named_parameters(), b.decoder.parameters()):
        assert torch.equal(p, q), n
    assert a.stats.classifier_seconds > 0


def test_ce_term_reaches_the_decoder_through_the_frozen_classifier() -> None:
    net = cc.freeze(tinynet.tiny(0))
    x01 = _images(8)
    acts = torch.from_numpy(_acts(net, x01))
    dec = cc.Decoder(tuple(acts.shape[1:]), (3, 16, 16))
    labels = torch.zeros(8, dtype=torch.int64)
    # alpha = 1: the loss is the classifier's CE alone, so any decoder gradient came through the classifier.
    loss, _ = cc.cladec_step(dec, acts, torch.from_numpy(x01), labels, net, PRE, alpha=1.0)(torch.arange(8))
    loss.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in dec.parameters())
    assert all(p.grad is None for p in net.parameters())


def test_alpha_changes_the_decoder_and_onnx_trains_with_alpha_zero() -> None:
    net = tinynet.tiny(0)
    x01 = _images()
    acts, labels = _acts(net, x01), np.arange(len(x01)) % 2
    heavy = cc.Settings(alpha=0.5, epochs=2, batch_size=16, seed=5)
    with_ce = cc.train_cladec(acts, x01, labels, net, PRE, heavy, lambda _m: None)
    no_clf = cc.train_cladec(acts, x01, None, None, PRE, heavy, lambda _m: None)
    zero = cc.train_cladec(acts, x01, labels, net, PRE, cc.Settings(alpha=0.0, epochs=2, batch_size=16, seed=5),
                           lambda _m: None)
    assert cc.effective_alpha(heavy, None) == 0.0 and no_clf.stats.classifier_seconds == 0.0
    w = [p.detach() for p in with_ce.decoder.parameters()]
    assert not all(torch.equal(p, q) for p, q in zip(w, no_clf.decoder.parameters()))
    for p, q in zip(no_clf.decoder.parameters(), zero.decoder.parameters()):  # no classifier == alpha 0
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="labels"):
        cc.train_cladec(acts, x01, None, net, PRE, heavy, lambda _m: None)


def test_training_with_a_torchscript_classifier() -> None:
    script = torch.jit.script(tinynet.tiny(0))
    x01 = _images()
    acts = ScriptModel(script, "s", "0", (3, 16, 16)).activations(cc.to_model_np(x01, PRE), ["features"])
    fitted = cc.train_cladec(acts["features"], x01, np.arange(32) % 2, script, PRE, FAST, lambda _m: None)
    assert fitted.stats.steps == 4 and fitted.stats.classifier_seconds > 0
    assert cm.decode(fitted, acts["features"]).shape == (32, 3, 16, 16)


def test_torch_module_accessor() -> None:
    net = tinynet.tiny(0)
    assert cc.torch_module(ModuleModel(net, "m", "0", "torch", (3, 16, 16))) is net
    assert cc.torch_module(object()) is None


# --------------------------------------------------------------------------------------- reference AE


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("script", [False, True])
def test_fresh_copy_reinitialises_and_leaves_the_original(script: bool) -> None:
    torch.manual_seed(1)
    net = BNNet().eval()
    with torch.no_grad():
        net.features[1].running_mean.fill_(3.0)
        net.features[1].running_var.fill_(5.0)
        net.features[1].weight.fill_(2.0)
        net.features[0].bias.fill_(0.7)
    module = torch.jit.script(net) if script else net
    for p in module.parameters():
        p.requires_grad_(False)  # as the adapters hold it
    before = {n: t.clone() for n, t in list(module.named_parameters()) + list(module.named_buffers())}
    twin = cr.fresh_copy(module)
    for n, t in list(module.named_parameters()) + list(module.named_buffers()):
        assert torch.equal(t, before[n]), n
    new = {n: t.detach() for n, t in list(twin.named_parameters()) + list(twin.named_buffers())}
    assert not torch.equal(new["features.0.weight"], before["features.0.weight"])
    bound = 1 / np.sqrt(3 * 3 * 3)  # kaiming-uniform with a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert float(new["features.0.weight"].abs().max()) <= bound
    assert float(new["features.0.weight"].std()) > bound / 3
    assert float(new["features.0.bias"].abs().max()) == 0.0 and float(new["fc.bias"].abs().max()) == 0.0
    assert torch.equal(new["features.1.weight"], torch.ones(4))
    assert torch.equal(new["features.1.running_mean"], torch.zeros(4))
    assert torch.equal(new["features.1.running_var"], torch.ones(4))
    assert all(p.requires_grad and p.is_leaf for p in twin.parameters()) and twin.training


@pytest.mark.parametrize("script", [False, True])
def test_encoder_gives_the_layer_output_and_stops_there(script: bool) -> None:
    net = tinynet.tiny(2)
    x = cc.to_model_np(_images(6), PRE)
    module = torch.jit.script(net) if script else net
    enc = cr.encoder(module, "features.1")
    expected = tinynet.eager_layer_grad(tinynet.tiny(2), "features.1", x, 0)[0]
    np.testing.assert_allclose(enc(torch.from_numpy(x)).detach().numpy(), expected, atol=1e-6)
    if not script:
        calls = []
        net.fc.register_forward_hook(lambda *_a: calls.append(1))
        enc(torch.from_numpy(x))
        assert calls == []  # nothing after the layer ran


@pytest.mark.parametrize("script", [False, True])
def test_reference_autoencoder_learns_and_onnx_says_why_not(script: bool) -> None:
    net = tinynet.tiny(0)
    module = torch.jit.script(net) if script else net
    x01 = _images(48)
    settings = cc.Settings(epochs=6, batch_size=16, seed=2)
    fitted = cr.train_reference(module, "features.4", x01, PRE, settings, lambda _m: None)
    assert fitted.kind == "reference_ae" and fitted.stats.steps == 18
    assert fitted.stats.losses[-1] < fitted.stats.losses[0]
    rec = cm.autoencode(fitted, x01, PRE)
    assert rec.shape == x01.shape and cm.mse(rec, x01) < cm.mse(np.full_like(x01, 0.0), x01)
    assert not any(torch.equal(p, q) for p, q in zip(fitted.encoder.parameters(), module.parameters()))
    reason = cr.unavailable_reason(None)
    assert reason is not None and "ONNX" in reason and cr.unavailable_reason(module) is None


# -------------------------------------------------------------------------------------------------- cache


def test_cache_second_call_trains_nothing(tmp_path: Path) -> None:
    net = tinynet.tiny(0)
    x01 = _images()
    acts, labels = _acts(net, x01), np.arange(32) % 2
    key = cc.cache_key("sha", "features", "cladec", FAST, 0.001, "fp")
    path = cc.cache_path(tmp_path, key)
    steps: list[int] = []

    def train() -> cc.Fitted:
        f = cc.train_cladec(acts, x01, labels, net, PRE, FAST, lambda _m: None)
        steps.append(f.stats.steps)
        return f

    first = cc.cached(path, train, lambda _m: None)
    second = cc.cached(path, train, lambda _m: None)
    assert steps == [4] and second.stats.steps == 0 and second.stats.cached
    np.testing.assert_array_equal(cm.decode(first, acts), cm.decode(second, acts))
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    path.write_bytes(b"not a torch file")
    lines: list[str] = []
    cc.cached(path, train, lines.append)
    assert steps == [4, 4] and "unreadable" in lines[0]


def test_cache_of_the_reference_autoencoder(tmp_path: Path) -> None:
    script = torch.jit.script(tinynet.tiny(0))
    x01 = _images()
    path = cc.cache_path(tmp_path, cc.cache_key("sha", "features.4", "reference_ae", FAST, 0.0, "fp"))
    train = lambda: cr.train_reference(script, "features.4", x01, PRE, FAST, lambda _m: None)  # noqa: E731
    first = cc.cached(path, train, lambda _m: None, encoder=cr.fresh_encoder(script, "features.4"))
    second = cc.cached(path, train, lambda _m: None, encoder=cr.fresh_encoder(script, "features.4"))
    assert first.stats.steps == 4 and second.stats.steps == 0
    np.testing.assert_allclose(cm.autoencode(first, x01, PRE), cm.autoencode(second, x01, PRE), atol=1e-6)


def test_cache_key_covers_every_part() -> None:
    base = ("sha", "layer", "cladec", FAST, 0.001, "fp")
    keys = {cc.cache_key(*base)}
    variants = [
        ("sha2", "layer", "cladec", FAST, 0.001, "fp"),
        ("sha", "layer2", "cladec", FAST, 0.001, "fp"),
        ("sha", "layer", "reference_ae", FAST, 0.001, "fp"),
        ("sha", "layer", "cladec", FAST, 0.0, "fp"),
        ("sha", "layer", "cladec", cc.Settings(epochs=3, batch_size=16, seed=5), 0.001, "fp"),
        ("sha", "layer", "cladec", cc.Settings(epochs=2, batch_size=16, seed=6), 0.001, "fp"),
        ("sha", "layer", "cladec", FAST, 0.001, "fp2"),
    ]
    keys |= {cc.cache_key(*v) for v in variants}
    assert len(keys) == len(variants) + 1 and cc.cache_key(*base) == cc.cache_key(*base)


# ------------------------------------------------------------------------------------------- measurements


def _slow_retention(da: np.ndarray, dn: np.ndarray, ia: np.ndarray, inn: np.ndarray, boxes: np.ndarray) -> float:
    num = den = 0.0
    for i in range(len(da)):
        r, c, h, w = boxes[i]
        for ch in range(da.shape[1]):
            for y in range(r, r + h):
                for x in range(c, c + w):
                    num += abs(float(da[i, ch, y, x]) - float(dn[i, ch, y, x]))
                    den += abs(float(ia[i, ch, y, x]) - float(inn[i, ch, y, x]))
    return num / den


def test_retention_against_a_per_pixel_loop_and_synthetic_decoders() -> None:
    rng = np.random.default_rng(3)
    ia, inn = rng.random((2, 5, 3, 12, 12))
    da, dn = rng.random((2, 5, 3, 12, 12))
    boxes = np.array([[0, 0, 3, 4], [8, 8, 4, 4], [2, 5, 1, 1], [0, 0, 12, 12], [5, 2, 6, 3]])
    assert cm.retention(da, dn, ia, inn, boxes) == pytest.approx(_slow_retention(da, dn, ia, inn, boxes), rel=1e-9)
    assert cm.retention(ia, inn, ia, inn, boxes) == pytest.approx(1.0)  # identity decoder keeps it whole
    const = np.full_like(ia, 0.3)
    assert cm.retention(const, const, ia, inn, boxes) == 0.0  # a constant decoder drops it
    half = cm.retention(0.5 * ia, 0.5 * inn, ia, inn, boxes)
    assert half == pytest.approx(0.5)
    # Differences outside the box do not count.
    outside = dn.copy()
    outside[:, :, 11, 11] += 5.0
    corner = np.tile([0, 0, 3, 3], (5, 1))
    assert cm.retention(dn, outside, ia, inn, corner) == 0.0


def test_boxes_match_the_probe_pairs(tmp_path: Path, tiny_world) -> None:
    glyph = np.zeros((8, 8, 4), np.uint8)
    glyph[..., 0], glyph[2:6, 2:6, 3], glyph[..., 1] = 255, 255, 40
    Image.fromarray(glyph, "RGBA").save(tmp_path / "glyph.png")
    images = data.list_images(tiny_world.root / "world" / "classes" / "a")[:6]
    spec = ArtifactSpec(image="glyph.png", position="random", scale=0.5)
    pairs, boxes = cm.retention_pairs(images, spec, tmp_path / "glyph.png", PRE, seed=11)
    again = artifact.make_pairs(images, spec, tmp_path / "glyph.png", PRE, 11)
    np.testing.assert_array_equal(pairs.artifact, again.artifact)
    assert boxes.shape == (6, 4) and (boxes[:, 2:] == 8).all() and len({tuple(b) for b in boxes}) > 1
    differs = np.abs(pairs.artifact - pairs.neutral).max(axis=1, keepdims=True) > 0
    inside = cm.box_mask(boxes, (16, 16))
    assert differs.any() and not (differs & ~inside).any()
    a01, n01 = cc.from_model(pairs.artifact, PRE), cc.from_model(pairs.neutral, PRE)
    assert cm.retention(a01, n01, a01, n01, boxes) == pytest.approx(1.0)


def test_fidelity_numbers() -> None:
    x = _images(4)
    assert cm.mse(x, x) == 0.0 and cm.mse(x + 0.1, x) == pytest.approx(0.01, rel=1e-5)
    a = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    b = np.array([[1.0, 0.0], [1.0, 0.0], [2.0, 1.0], [0.0, 3.0]])
    assert cm.top1_agreement(a, b) == 0.75
    grey = np.repeat(x[:, :1], 3, axis=1)
    assert cm.mean_saturation(grey) == pytest.approx(0.0, abs=1e-7) and cm.mean_saturation(x) > 0.3
