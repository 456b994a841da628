"""The torch adapters: TorchScript graph surgery agrees with eager hooks and autograd."""

from pathlib import Path

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
