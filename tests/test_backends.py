"""The same network audited as TorchScript and as ONNX: the same TCAV scores and verdicts."""

import shutil

import numpy as np

from auditor import pipeline
from auditor.models import load_model
from auditor.policy import load_policy

ONNX_LAYERS = ["/features/features.1/Relu_output_0", "/features/features.4/Relu_output_0"]
TORCH_LAYERS = ["features.1", "features.4"]


def test_onnx_and_torchscript_layers_agree(tiny_world):
    ts = load_model(tiny_world.script, "auto", (3, 16, 16))
    ox = load_model(tiny_world.onnx, "auto", (3, 16, 16))
    x = np.random.default_rng(0).normal(size=(4, 3, 16, 16)).astype(np.float32)
    assert np.allclose(ts.predict(x), ox.predict(x), atol=1e-4)
    a_ts = ts.activations(x, TORCH_LAYERS)
    a_ox = ox.activations(x, ONNX_LAYERS)
    for t, o in zip(TORCH_LAYERS, ONNX_LAYERS):
        assert np.allclose(a_ts[t], a_ox[o], atol=1e-4)


def test_pooled_gradients_agree(tiny_world):
    from auditor.activations import pooled_basis

    ts = load_model(tiny_world.script, "auto", (3, 16, 16))
    ox = load_model(tiny_world.onnx, "auto", (3, 16, 16))
    x = np.random.default_rng(1).normal(size=(6, 3, 16, 16)).astype(np.float32)
    for t, o in zip(TORCH_LAYERS, ONNX_LAYERS):
        a = ts.activations(x, [t])[t]
        basis = pooled_basis(a.shape[1:])
        g_ts = ts.head(t).directional(a, x, basis, 1)
        g_ox = ox.head(o).directional(ox.activations(x, [o])[o], x, basis, 1)
        assert np.abs(g_ts - g_ox).max() <= 1e-2 * np.abs(g_ts).max()
