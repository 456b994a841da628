"""The torch adapters: TorchScript graph surgery agrees with eager hooks and autograd."""

import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

import tinynet
from auditor.errors import UserError
from auditor.models import load_model
from auditor.models.torch_model import ModuleModel, ScriptModel

SHAPE = (3, 16, 16)


@pytest.mark.parametrize("factory,layer", [(tinynet.tiny, "features.1"), (tinynet.tiny, "features.4"),
                                           (tinynet.skip, "act1"), (tinynet.skip, "conv1")])
def test_torchscript_activations_and_gradients_equal_eager(tmp_path, factory, layer):
    net = factory(0)
    path = tmp_path / "m.pt"
    torch.jit.script(net).save(str(path))
    model = load_model(path, "auto", SHAPE)
    assert isinstance(model, ScriptModel) and model.framework == "torchscript"
    x = np.random.default_rng(0).normal(size=(5, *SHAPE)).astype(np.float32)
    acts_ref, grad_ref = tinynet.eager_layer_grad(factory(0), layer, x, target=1)
    acts = model.activations(x, [layer])[layer]
    assert np.allclose(acts, acts_ref, atol=1e-5)
    head = model.head(layer)
    assert np.allclose(head.logits(acts, x), model.predict(x), atol=1e-5)
    assert np.allclose(head.grad(acts, x, 1), grad_ref, atol=1e-6)
    v = np.random.default_rng(1).normal(size=(3, *acts.shape[1:])).astype(np.float32)
    assert np.allclose(head.directional(acts, x, v, 1), grad_ref.reshape(5, -1) @ v.reshape(3, -1).T, atol=1e-4)


def test_layers_lists_modules_with_shapes(tmp_path):
    path = tmp_path / "m.pt"
    torch.jit.script(tinynet.tiny(0)).save(str(path))
    layers = {li.name: li for li in load_model(path, "auto", SHAPE).layers()}
    assert layers["features.1"].shape == (6, 16, 16)
    assert layers["features.4"].shape == (8, 8, 8)
    assert layers["fc"].shape == (2,)
    assert layers["features.0"].kind == "Conv2d"


def test_factory_with_state_dict_and_safetensors(tmp_path, monkeypatch):
    net = tinynet.tiny(0)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    from safetensors.torch import save_file

    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    x = np.random.default_rng(0).normal(size=(3, *SHAPE)).astype(np.float32)
    expected = net(torch.from_numpy(x)).detach().numpy()
    for weights in ("w.pt", "w.safetensors"):
        m = load_model(tmp_path / weights, "torch", SHAPE, factory="tinynet:TinyNet", search_dir=Path(__file__).parent)
        assert isinstance(m, ModuleModel)
        assert np.allclose(m.predict(x), expected, atol=1e-5)
        assert np.allclose(m.activations(x, ["features.4"])["features.4"].shape, (3, 8, 8, 8))


def test_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(tinynet.tiny(0), path)
    with pytest.raises(UserError, match="trust_pickle"):
        load_model(path, "auto", SHAPE)
    m = load_model(path, "auto", SHAPE, trust_pickle=True)
    assert m.framework == "torch-pickle"


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "missing.pt", "auto", SHAPE)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(UserError, match="bad.pt"):
        load_model(bad, "auto", SHAPE)
    path = tmp_path / "m.pt"
    torch.jit.script(tinynet.tiny(0)).save(str(path))
    m = load_model(path, "auto", SHAPE)
    with pytest.raises(UserError, match="features.9"):
        m.activations(np.zeros((1, *SHAPE), np.float32), ["features.9"])
    with pytest.raises(UserError, match="module:function"):
        load_model(None, "torch", SHAPE, factory="nocolon")


# ------------------------------------------------------------------------- several layers in one pass (layer_grads)

MULTI = [(tinynet.tiny, ["features.1", "features.4", "pool", "fc"]), (tinynet.skip, ["stem", "conv1", "act1", "act2"])]


def _both_adapters(tmp_path, factory):
    """The network as an eager ModuleModel (factory + state_dict, hooks) and as a TorchScript file (graph edit)."""
    net = factory(0)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    torch.jit.script(net).save(str(tmp_path / "m.pt"))
    eager = load_model(tmp_path / "w.pt", "torch", SHAPE, factory=f"tinynet:{factory.__name__}",
                       search_dir=Path(__file__).parent)
    script = load_model(tmp_path / "m.pt", "auto", SHAPE)
    assert isinstance(eager, ModuleModel) and isinstance(script, ScriptModel)
    return eager, script


@pytest.mark.parametrize("factory,layers", MULTI)
def test_layer_grads_equal_per_image_autograd_and_per_layer_heads(tmp_path, factory, layers):
    # 70 images: two batches of the adapters' 64, so batching and the batch-summed logit are both exercised.
    x = np.random.default_rng(2).normal(size=(70, *SHAPE)).astype(np.float32)
    # The reference: one image at a time, a hook and autograd on a fresh eager module.
    net = factory(0)
    ref = {l: np.concatenate([tinynet.eager_layer_grad(net, l, x[i : i + 1], 0)[1] for i in range(len(x))])
           for l in layers}
    for model in _both_adapters(tmp_path, factory):
        # Three calls: TorchScript's optimising executor takes over after its profiling runs and would merge a
        # layer's later uses into a node whose inner uses a gradient at its output misses; every call must hold.
        for _ in range(3):
            got = model.layer_grads(x, layers, 0)
            assert list(got) == layers
            for l in layers:
                assert got[l].dtype == np.float32 and got[l].shape == ref[l].shape
                np.testing.assert_allclose(got[l], ref[l], rtol=1e-5, atol=1e-7, err_msg=f"{type(model).__name__} {l}")
        acts, grads = model.layer_acts_and_grads(x, layers, 0)
        plain = model.activations(x, layers)
        for l in layers:
            np.testing.assert_array_equal(grads[l], got[l])
            np.testing.assert_allclose(acts[l], plain[l], rtol=1e-6, atol=1e-6)
            head = model.head(l).grad(plain[l], x, 0)
            np.testing.assert_allclose(got[l], head, rtol=1e-5, atol=1e-7)
        assert np.abs(got[layers[1]]).max() > 0  # a gradient that could be wrong, not all zeros


def test_layer_grads_is_one_forward_pass_per_batch(tmp_path):
    eager, _ = _both_adapters(tmp_path, tinynet.skip)
    eager.layers()  # listed once per model (a probe pass of its own), before counting
    calls = []
    handle = eager._module.register_forward_pre_hook(lambda _m, _i: calls.append(1))
    try:
        eager.layer_grads(np.zeros((70, *SHAPE), np.float32), ["stem", "conv1", "act1", "act2"], 1)
    finally:
        handle.remove()
    assert len(calls) == 2  # two batches, every layer in each


class _InplaceNet(torch.nn.Module):
    """conv -> in-place ReLU: the conv's output tensor is overwritten after the hook saw it."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.act = torch.nn.ReLU(inplace=inplace)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


def test_layer_grads_with_an_inplace_op_after_the_layer():
    x = np.random.default_rng(3).normal(size=(5, *SHAPE)).astype(np.float32)
    model = ModuleModel(_InplaceNet(inplace=True), "inplace", "0", "torch", SHAPE)
    got = model.layer_grads(x, ["conv", "act"], 1)
    # The same weights without the in-place op: the gradient at the conv's output (pre-ReLU value) is the same.
    for l in ("conv", "act"):
        _, ref = tinynet.eager_layer_grad(_InplaceNet(inplace=False), l, x, 1)
        np.testing.assert_allclose(got[l], ref, rtol=1e-5, atol=1e-7)
    assert (got["conv"] == 0).any() and (got["conv"] != got["act"]).any()  # the ReLU's mask is in the conv's


def test_layer_grads_unknown_layer_is_a_user_error(tmp_path):
    for model in _both_adapters(tmp_path, tinynet.tiny):
        with pytest.raises(UserError, match="features.9"):
            model.layer_grads(np.zeros((1, *SHAPE), np.float32), ["features.1", "features.9"], 0)


class _ViewNet(torch.nn.Module):
    """Written for the default strides: `view` of a conv output fails on a channels-last tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 16 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).view(x.shape[0], -1))


def test_conv_nets_run_channels_last_with_the_default_layouts_numbers(tmp_path):
    x = np.random.default_rng(0).normal(size=(5, *SHAPE)).astype(np.float32)
    acts_ref, grad_ref = tinynet.eager_layer_grad(tinynet.tiny(0), "features.1", x, target=1)
    path = tmp_path / "m.pt"
    torch.jit.script(tinynet.tiny(0)).save(str(path))
    for model in (ModuleModel(tinynet.tiny(0), "m", "0", "torch", SHAPE), load_model(path, "auto", SHAPE)):
        assert model._layout == torch.channels_last
        acts, grads = model.layer_acts_and_grads(x, ["features.1"], 1)
        # Arrays come back in (n, C, H, W) order whatever the layout the network ran in.
        assert acts["features.1"].flags.c_contiguous and grads["features.1"].flags.c_contiguous
        assert np.allclose(acts["features.1"], acts_ref, atol=1e-5)
        assert np.allclose(grads["features.1"], grad_ref, atol=1e-6)
        assert model.activations(x, ["features.1"])["features.1"].flags.c_contiguous


def test_a_net_written_for_the_default_strides_keeps_them():
    net = _ViewNet().eval()
    x = np.random.default_rng(0).normal(size=(3, *SHAPE)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    model = ModuleModel(net, "v", "0", "torch", SHAPE)
    assert model._layout == torch.contiguous_format
    assert all(p.is_contiguous() for p in net.parameters())
    assert np.allclose(model.predict(x), expected, atol=1e-6)
    assert model.activations(x, ["conv"])["conv"].shape == (3, 4, 16, 16)


class _ReusedReLU(torch.nn.Module):
    """One ReLU module called twice per pass, as torchvision's BasicBlock does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv1(x))
        return self.fc(self.relu(self.conv2(h) + h).mean(dim=(2, 3)))


def test_a_module_called_twice_gives_its_last_output_in_every_path(tmp_path):
    torch.manual_seed(0)
    net = _ReusedReLU().eval()
    x = np.random.default_rng(0).normal(size=(70, *SHAPE)).astype(np.float32)  # two batches
    with torch.no_grad():
        xt = torch.from_numpy(x)
        h = torch.relu(net.conv1(xt))
        last = torch.relu(net.conv2(h) + h).numpy()
    path = tmp_path / "r.pt"
    torch.jit.script(net).save(str(path))
    for model in (ModuleModel(net, "r", "0", "torch", SHAPE), load_model(path, "auto", SHAPE)):
        acts = model.activations(x, ["relu"])["relu"]
        assert acts.shape == (70, 4, 16, 16)
        assert np.allclose(acts, last, atol=1e-5)
        assert np.allclose(model.layer_acts_and_grads(x, ["relu"], 0)[0]["relu"], last, atol=1e-5)
        assert {li.name: li.shape for li in model.layers()}["relu"] == (4, 16, 16)


# ------------------------------------------------------------------------------- factory models: code in the hash

_NETDEF = '''import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.{act}(self.conv(x)).mean(dim=(2, 3)))


def build() -> Net:
    return Net()
'''


class _NetdefParams(torch.nn.Module):
    """The parameters of `netdef.Net` (same names and shapes), to write its weights files."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 2)


@pytest.fixture
def netdef_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests here import a module `netdef` from several folders: sys.path is restored and `netdef` forgotten
    after each test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    sys.modules.pop("netdef", None)


def _load_netdef(folder: Path, weights: Path | None, factory: str = "netdef:build") -> ModuleModel:
    """`netdef:build` + weights from `folder`, imported afresh as a new audit process would import it."""
    sys.modules.pop("netdef", None)
    sys.path[:] = [p for p in sys.path if not p.startswith(str(folder.parent))]
    model = load_model(weights, "torch", SHAPE, factory=factory, search_dir=folder)
    assert isinstance(model, ModuleModel)
    return model


@pytest.mark.usefixtures("netdef_imports")
def test_a_changed_model_class_is_a_new_sha256_and_never_served_stale_activations(tmp_path, tiny_world):
    from auditor import data
    from auditor.activations import Store

    for name, act in (("relu", "relu"), ("tanh", "tanh"), ("relu-copy", "relu")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "netdef.py").write_text(_NETDEF.format(act=act))
    # One weights file for both: the classes differ only in forward's activation, the parameters are the same.
    torch.save(_NetdefParams(0).state_dict(), tmp_path / "w.pt")
    pre = data.Preprocessing(size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    images = data.folder_set("s", tiny_world.root / "world" / "concepts" / "red", pre)
    cache = tmp_path / "cache"

    relu = _load_netdef(tmp_path / "relu", tmp_path / "w.pt")
    first = Store(cache, pre)
    relu_acts = np.array(first.acts(relu, ["fc"], images)["fc"])
    assert first.stats.extracted == 1

    tanh = _load_netdef(tmp_path / "tanh", tmp_path / "w.pt")
    assert tanh.sha256 != relu.sha256
    second = Store(cache, pre)  # a new run on the same cache directory
    tanh_acts = np.array(second.acts(tanh, ["fc"], images)["fc"])
    assert second.stats.extracted == 1 and second.stats.from_disk == 0
    np.testing.assert_allclose(tanh_acts, tanh.activations(second.images(images), ["fc"])["fc"], atol=1e-6)
    assert not np.allclose(tanh_acts, relu_acts, atol=1e-3)

    # The same code from another folder is the same model: the hash is of the bytes, and the cache serves it.
    again = _load_netdef(tmp_path / "relu-copy", tmp_path / "w.pt")
    assert again.sha256 == relu.sha256
    third = Store(cache, pre)
    np.testing.assert_array_equal(np.array(third.acts(again, ["fc"], images)["fc"]), relu_acts)
    assert third.stats.extracted == 0 and third.stats.from_disk == 1


@pytest.mark.usefixtures("netdef_imports")
def test_factory_sha256_covers_the_weights_and_the_factory_string(tmp_path):
    (tmp_path / "relu").mkdir()
    (tmp_path / "relu" / "netdef.py").write_text(_NETDEF.format(act="relu") + "\n\nother = build\n")
    torch.save(_NetdefParams(0).state_dict(), tmp_path / "w0.pt")
    torch.save(_NetdefParams(1).state_dict(), tmp_path / "w1.pt")
    shas = {
        _load_netdef(tmp_path / "relu", tmp_path / w, f).sha256
        for w, f in (("w0.pt", "netdef:build"), ("w1.pt", "netdef:build"), ("w0.pt", "netdef:other"))
    }
    assert len(shas) == 3
    assert _load_netdef(tmp_path / "relu", None).sha256 not in shas  # no weights: code and string only
