"""The ONNX adapter against torch: tiny seeded CNNs exported with torch's legacy exporter, compared with the torch
forward (logits, forward-hook activations) and autograd (gradients of one logit w.r.t. an intermediate activation)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import auditor.models.onnx_head as onnx_head
import auditor.models.onnx_model as onnx_model
from auditor.errors import UserError
from auditor.models.onnx_model import OnnxModel, load_onnx

SIZE = 16  # image height and width


class SeqNet(nn.Module):
    """Plain sequential CNN: conv/relu/pool twice, then a two-layer classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SkipNet(nn.Module):
    """One residual block, y = relu(conv2(relu(conv1(s))) + s): cutting at conv1's output needs the skip tensor s.

    The final reshape reads the batch size from the image input (Shape(input) in the graph), so a head cut inside
    the block also needs the image itself.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.stem(x))
        y = torch.relu(self.conv2(torch.relu(self.conv1(s))) + s)
        return self.fc(y.mean(dim=(2, 3)).reshape(x.shape[0], -1))


def export(net: nn.Module, path: Path, dynamic_batch: bool = True, dynamic_image: bool = False) -> Path:
    axes = {"input": {0: "n"}, "logits": {0: "n"}} if dynamic_batch else {}
    if dynamic_image:
        axes["input"] = {**axes.get("input", {}), 2: "h", 3: "w"}
    example = torch.zeros(1, 3, SIZE, SIZE)
    torch.onnx.export(
        net, (example,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
        dynamic_axes=axes or None, opset_version=17,
    )  # fmt: skip
    return path


def make_net(cls: type[nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return cls().eval()


@pytest.fixture(scope="module")
def seq(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, OnnxModel]:
    net = make_net(SeqNet, 0)
    return net, load_onnx(export(net, tmp_path_factory.mktemp("seq") / "seq.onnx"))


@pytest.fixture(scope="module")
def skip(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, OnnxModel]:
    net = make_net(SkipNet, 1)
    return net, load_onnx(export(net, tmp_path_factory.mktemp("skip") / "skip.onnx"))


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, SIZE, SIZE)).astype(np.float32)


def torch_logits(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def hooked(net: nn.Module, module: nn.Module, x: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """(activation of `module`, d logit[target] / d activation) by torch autograd."""
    store: dict[str, torch.Tensor] = {}

    def hook(_: nn.Module, __: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        out.retain_grad()
        store["out"] = out

    handle = module.register_forward_hook(hook)
    try:
        net(torch.from_numpy(x))[:, target].sum().backward()
    finally:
        handle.remove()
    return store["out"].detach().numpy(), store["out"].grad.numpy()


# --------------------------------------------------------------------------------------------- loading


def test_metadata(seq: tuple[nn.Module, OnnxModel]) -> None:
    _, model = seq
    assert model.framework == "onnx"
    assert model.name == "seq"
    assert model.input_shape == (3, SIZE, SIZE)
    assert model.sha256 == hashlib.sha256(model.path.read_bytes()).hexdigest()
    assert OnnxModel(model.path, name="other").name == "other"


def test_garbage_file_is_a_user_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(UserError, match="cannot load ONNX model") as info:
        load_onnx(garbage)
    assert str(garbage) in str(info.value) and "\n" not in str(info.value)
    text = tmp_path / "text.onnx"
    text.write_text("this is not a model\n")
    with pytest.raises(UserError, match="cannot load ONNX model"):
        load_onnx(text)


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        load_onnx(tmp_path / "absent.onnx")


def test_symbolic_image_size_is_a_user_error(tmp_path: Path) -> None:
    path = export(make_net(SkipNet, 0), tmp_path / "dyn.onnx", dynamic_image=True)
    with pytest.raises(UserError, match="fixed image size"):
        load_onnx(path)


def test_external_data_is_hashed(tmp_path: Path, seq: tuple[nn.Module, OnnxModel]) -> None:
    import onnx

    proto = onnx.load(str(seq[1].path))
    path = tmp_path / "ext.onnx"
    onnx.save(proto, str(path), save_as_external_data=True, location="ext.data", size_threshold=0)
    model = load_onnx(path)
    expected = hashlib.sha256(path.read_bytes() + (tmp_path / "ext.data").read_bytes()).hexdigest()
    assert model.sha256 == expected
    x = images(3)
    np.testing.assert_allclose(model.predict(x), seq[1].predict(x), atol=1e-6)


# --------------------------------------------------------------------------------------------- layers, forward


def test_layers_lists_tensors_with_shapes(seq: tuple[nn.Module, OnnxModel]) -> None:
    _, model = seq
    got = [(info.name, info.shape, info.kind) for info in model.layers()]
    assert got == [
        ("/features/features.0/Conv_output_0", (8, 16, 16), "Conv"),
        ("/features/features.1/Relu_output_0", (8, 16, 16), "Relu"),
        ("/features/features.2/MaxPool_output_0", (8, 8, 8), "MaxPool"),
        ("/features/features.3/Conv_output_0", (16, 8, 8), "Conv"),
        ("/features/features.4/Relu_output_0", (16, 8, 8), "Relu"),
        ("/features/features.5/MaxPool_output_0", (16, 4, 4), "MaxPool"),
        ("/classifier/classifier.0/Flatten_output_0", (256,), "Flatten"),
        ("/classifier/classifier.1/Gemm_output_0", (32,), "Gemm"),
        ("/classifier/classifier.2/Relu_output_0", (32,), "Relu"),
        ("logits", (5,), "Gemm"),
    ]


def test_skip_net_layers_leave_out_shape_arithmetic(skip: tuple[nn.Module, OnnxModel]) -> None:
    _, model = skip
    names = [info.name for info in model.layers()]
    # Shape(input) -> Gather -> ... -> Reshape: only float, batch-first tensors are layers.
    assert names == [
        "/stem/Conv_output_0", "/Relu_output_0", "/conv1/Conv_output_0", "/Relu_1_output_0", "/conv2/Conv_output_0",
        "/Add_output_0", "/Relu_2_output_0", "/ReduceMean_output_0", "/Reshape_output_0", "logits",
    ]  # fmt: skip


def test_probe_run_agrees_with_shape_inference(skip: tuple[nn.Module, OnnxModel]) -> None:
    _, model = skip
    expected = {info.name: info.shape for info in model.layers()}
    assert model._probe_shapes(list(expected)) == expected


@pytest.mark.parametrize("fixture", ["seq", "skip"])
def test_predict_matches_torch(fixture: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    net, model = request.getfixturevalue(fixture)
    monkeypatch.setattr(onnx_model, "BATCH_SIZE", 4)  # 10 images: three batches, the last one short
    x = images(10)
    logits = model.predict(x)
    assert logits.dtype == np.float32 and logits.shape == (10, model.layers()[-1].shape[0])
    np.testing.assert_allclose(logits, torch_logits(net, x), atol=1e-4)
    assert model.predict(x[:0]).shape == (0, logits.shape[1])


def test_activations_match_forward_hooks(seq: tuple[nn.Module, OnnxModel]) -> None:
    net, model = seq
    modules = {
        "/features/features.0/Conv_output_0": net.features[0],
        "/features/features.4/Relu_output_0": net.features[4],
        "/features/features.5/MaxPool_output_0": net.features[5],
        "/classifier/classifier.0/Flatten_output_0": net.classifier[0],
        "/classifier/classifier.2/Relu_output_0": net.classifier[2],
        "logits": net.classifier[3],
    }
    x = images(5)
    acts = model.activations(x, list(modules))
    assert list(acts) == list(modules)
    for name, module in modules.items():
        expected, _ = hooked(net, module, x, 0)
        assert acts[name].dtype == np.float32
        np.testing.assert_allclose(acts[name], expected, atol=1e-4, err_msg=name)
    # The session with these extra outputs is built once and reused.
    sessions = dict(model._sessions)
    model.activations(x, list(reversed(modules)))
    assert model._sessions == sessions


def test_skip_activations_match_forward_hooks(skip: tuple[nn.Module, OnnxModel]) -> None:
    net, model = skip
    x = images(4)
    acts = model.activations(x, ["/conv1/Conv_output_0", "/conv2/Conv_output_0"])
    np.testing.assert_allclose(acts["/conv1/Conv_output_0"], hooked(net, net.conv1, x, 0)[0], atol=1e-4)
    np.testing.assert_allclose(acts["/conv2/Conv_output_0"], hooked(net, net.conv2, x, 0)[0], atol=1e-4)


def test_unknown_layer_is_a_user_error(seq: tuple[nn.Module, OnnxModel]) -> None:
    _, model = seq
    with pytest.raises(UserError, match="features.3/Relu_output") as info:
        model.activations(images(1), ["/features/features.3/Relu_output_0"])
    assert "/features/features.4/Relu_output_0" in str(info.value)  # a close name is suggested
    with pytest.raises(UserError, match="no layer 'features.3'"):
        model.head("features.3")


# --------------------------------------------------------------------------------------------- heads


def test_sequential_head_reproduces_logits_without_images(seq: tuple[nn.Module, OnnxModel]) -> None:
    _, model = seq
    x = images(6)
    layer = "/features/features.2/MaxPool_output_0"
    head = model.head(layer)
    assert head.extras == []
    acts = model.activations(x, [layer])[layer]
    np.testing.assert_allclose(head.logits(acts, None), model.predict(x), atol=1e-5)  # type: ignore[arg-type]


def test_skip_head_is_fed_the_skip_tensor(skip: tuple[nn.Module, OnnxModel]) -> None:
    _, model = skip
    layer = "/conv1/Conv_output_0"
    head = model.head(layer)
    assert head.extras == ["input", "/Relu_output_0"]  # the image (for Shape) and the skip tensor s
    x = images(5)
    acts = model.activations(x, [layer])[layer]
    np.testing.assert_allclose(head.logits(acts, x), model.predict(x), atol=1e-5)
    # The skip tensor really is read from x: other images give other logits for the same activations.
    assert not np.allclose(head.logits(acts, images(5, seed=1)), model.predict(x), atol=1e-3)
    # After the block, only the final reshape still reads the image (its batch size).
    assert model.head("/Relu_2_output_0").extras == ["input"]


def directional_reference(g: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(g . v for every image and direction, |g| * |v|), both (n, k)."""
    g_flat = g.reshape(len(g), -1).astype(np.float64)
    v_flat = directions.reshape(len(directions), -1).astype(np.float64)
    scale = np.linalg.norm(g_flat, axis=1)[:, None] * np.linalg.norm(v_flat, axis=1)[None, :]
    return g_flat @ v_flat.T, scale


CASES = [
    ("seq", "/features/features.3/Conv_output_0", lambda net: net.features[3]),
    ("seq", "/classifier/classifier.1/Gemm_output_0", lambda net: net.classifier[1]),
    ("skip", "/conv1/Conv_output_0", lambda net: net.conv1),  # inside the residual block
]


@pytest.mark.parametrize(("fixture", "layer", "module"), CASES)
def test_directional_matches_autograd(fixture: str, layer: str, module, request: pytest.FixtureRequest) -> None:
    net, model = request.getfixturevalue(fixture)
    x = images(8)
    head = model.head(layer)
    for target in (0, 3):
        acts, g = hooked(net, module(net), x, target)
        directions = np.random.default_rng(target).normal(size=(6, *acts.shape[1:])).astype(np.float32)
        directions[1] *= 100.0  # the step adapts to the direction's norm
        directions[5] = g.mean(axis=0)  # a direction the logit is sensitive to, like a concept's
        got = head.directional(model.activations(x, [layer])[layer], x, directions, target)
        expected, scale = directional_reference(g, directions)
        assert got.dtype == np.float32 and got.shape == (8, 6)
        # Error relative to |g| |v|, the largest the derivative can be. (Random directions are nearly orthogonal
        # to g, so their derivatives are ~|g| |v| / sqrt(size): relative to those, float32 noise looks larger.)
        assert np.max(np.abs(got - expected) / scale) < 1e-2
        np.testing.assert_allclose(got[:, 5], expected[:, 5], rtol=1e-2)


def test_directional_is_independent_of_the_run_size(
    skip: tuple[nn.Module, OnnxModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, model = skip
    layer = "/conv1/Conv_output_0"
    x = images(5)
    acts = model.activations(x, [layer])[layer]
    directions = np.random.default_rng(0).normal(size=(7, *acts.shape[1:])).astype(np.float32)
    whole = model.head(layer).directional(acts, x, directions, 1)
    monkeypatch.setattr(onnx_head, "MAX_HEAD_ROWS", 6)  # 70 rows in 12 runs, pairs split across images
    np.testing.assert_allclose(model.head(layer).directional(acts, x, directions, 1), whole, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("layer", "module"),
    [
        ("/classifier/classifier.1/Gemm_output_0", lambda net: net.classifier[1]),
        ("/features/features.5/MaxPool_output_0", lambda net: net.features[5]),
    ],
)
def test_grad_matches_autograd_on_a_small_layer(layer: str, module, seq: tuple[nn.Module, OnnxModel]) -> None:
    net, model = seq
    x = images(6)
    acts, g = hooked(net, module(net), x, 2)
    got = model.head(layer).grad(model.activations(x, [layer])[layer], x, 2)
    assert got.dtype == np.float32 and got.shape == g.shape
    assert np.linalg.norm(got - g) < 1e-3 * np.linalg.norm(g)


def test_logits_layer_head_is_the_identity(seq: tuple[nn.Module, OnnxModel]) -> None:
    _, model = seq
    x = images(3)
    logits = model.activations(x, ["logits"])["logits"]
    head = model.head("logits")
    np.testing.assert_array_equal(head.logits(logits, x), logits)
    directions = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_array_equal(head.directional(logits, x, directions, 2), np.tile(directions[:, 2], (3, 1)))
    np.testing.assert_array_equal(head.grad(logits, x, 2), np.tile(np.eye(5, dtype=np.float32)[2], (3, 1)))


def test_fixed_batch_export_is_padded(tmp_path: Path) -> None:
    """A graph exported for batches of exactly one still takes any number of images and perturbation rows."""
    net = make_net(SkipNet, 2)
    model = load_onnx(export(net, tmp_path / "fixed.onnx", dynamic_batch=False))
    x = images(3)
    np.testing.assert_allclose(model.predict(x), torch_logits(net, x), atol=1e-4)
    layer = "/conv1/Conv_output_0"
    acts, g = hooked(net, net.conv1, x, 1)
    directions = np.random.default_rng(0).normal(size=(2, *acts.shape[1:])).astype(np.float32)
    got = model.head(layer).directional(model.activations(x, [layer])[layer], x, directions, 1)
    expected, scale = directional_reference(g, directions)
    assert np.max(np.abs(got - expected) / scale) < 1e-2
