"""RSVC's -CE gradient in one pass (auditor.methods.rsvc_grad, AutogradHead.logp_directional) against the slow,
obviously-correct formula it replaced: d log p_t / da = sum_k (1[k = t] - p_k) d logit_k / da, one logit
derivative per class, every class kept. On the tiny nets, eager and TorchScript, with and without a skip path
around the layer; and its cost: one forward + one backward per batch whatever the number of classes."""

from __future__ import annotations

import numpy as np
import pytest
import tinynet
import torch

from auditor.methods import rsvc_core as core
from auditor.methods import rsvc_grad
from auditor.models import load_model
from auditor.models.base import has_logp_directional
from auditor.models.torch_model import AutogradHead, ModuleModel

SHAPE = (3, 16, 16)
CLASSES = 10


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *SHAPE)).astype(np.float32)


def _net(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    net = tinynet.TinyNet(CLASSES) if kind == "tiny" else tinynet.SkipNet(CLASSES)
    with torch.no_grad():  # logits spread over several units, so many classes carry probability
        for p in net.parameters():
            p.mul_(3.0)
    return net.eval()


def _models(kind: str, tmp_path) -> list:
    net = _net(kind)
    path = tmp_path / f"{kind}.pt"
    torch.jit.script(net).save(str(path))
    return [ModuleModel(net, kind, "0", "torch", SHAPE), load_model(path, "auto", SHAPE)]


# (net, layer): the skip net's act1 is read again by nothing, but conv2's output is added to the stem's output `s`,
# a tensor the head takes from the images x.
CASES = [("tiny", "features.4"), ("skip", "act1")]


def _per_class_reference(head, acts: np.ndarray, x: np.ndarray, directions: np.ndarray, target: int) -> np.ndarray:
    """The formula RSVC used before: one logit derivative per class, weighted by 1[k = t] - p_k (float64)."""
    p = np.exp(core.log_softmax(np.asarray(head.logits(acts, x), np.float64)))
    weight = -p
    weight[:, target] += 1.0
    out = np.zeros((len(acts), len(directions)))
    for c in range(p.shape[1]):
        out += weight[:, c : c + 1] * np.asarray(head.directional(acts, x, directions, c), np.float64)
    return out


def _acts(model, layer: str, x: np.ndarray) -> np.ndarray:
    return model.activations(x, [layer])[layer]


@pytest.mark.parametrize("kind,layer", CASES)
def test_logp_directional_equals_the_per_class_sum(kind, layer, tmp_path):
    x = _images(70)  # more than one batch of the head (64)
    for model in _models(kind, tmp_path):
        head = model.head(layer)
        assert has_logp_directional(head)
        acts = _acts(model, layer, x)
        directions = np.random.default_rng(1).normal(size=(4, *acts.shape[1:])).astype(np.float32)
        p = np.exp(core.log_softmax(np.asarray(head.logits(acts, x), np.float64)))
        assert (p.max(axis=0) > 0.05).sum() >= 3, "the test needs several classes that carry probability"
        for target in (0, 7):
            want = _per_class_reference(head, acts, x, directions, target)
            got = head.logp_directional(acts, x, directions, target)
            assert got.shape == (70, 4)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                                       err_msg=f"{model.framework} {kind} target {target}")


@pytest.mark.parametrize("kind,layer", CASES)
def test_concept_gradient_equals_the_per_class_sum(kind, layer, tmp_path):
    """The whole grad(V) of RSVC's importance: concept reconstructions placed at every position."""
    x = _images(12, seed=2)
    for model in _models(kind, tmp_path):
        acts = _acts(model, layer, x)
        shape = tuple(acts.shape[1:])
        A = np.maximum(core.spatial_mean(acts), 0.0)
        W = core.nmf_concepts(A, 3, seed=0).W
        V = core.nnls_coefficients(A, W) * 1.3
        stats = rsvc_grad.GradStats()
        got = rsvc_grad.concept_gradient(model, layer, W, shape, x, 7, 1.0, stats)(V)
        head = model.head(layer)
        want = _per_class_reference(head, rsvc_grad.broadcast(V, W, shape), x,
                                    rsvc_grad.broadcast(np.eye(3), W, shape), 7)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(), err_msg=model.framework)
        assert stats.head_rows == len(V)  # one forward + backward per row, not one per class


def test_the_cost_does_not_grow_with_the_classes():
    """A 1,000-class head: one forward (and one backward) per batch of 64, as for a 2-class head."""
    torch.manual_seed(0)
    for classes in (2, 1000):
        model = ModuleModel(tinynet.TinyNet(classes), "t", "0", "torch", SHAPE)
        inner = model.head("features.4")
        calls = []

        def counting(a: torch.Tensor, x: torch.Tensor, inner=inner) -> torch.Tensor:
            calls.append(len(a))
            return inner._run(a, x)

        head = AutogradHead(counting)
        x = _images(100)
        acts = _acts(model, "features.4", x)
        out = head.logp_directional(acts, x, np.ones((2, *acts.shape[1:]), np.float32), classes - 1)
        assert np.isfinite(out).all() and np.abs(out).max() > 0
        assert calls == [64, 36], (classes, calls)


def test_onnx_heads_keep_their_differences(tiny_world):
    """ONNX heads have no one-pass log-probability gradient: RSVC takes central differences of log p_target,
    2K head rows per point, whatever the number of classes."""
    onnx = load_model(tiny_world.onnx, "auto", SHAPE)
    layer = next(li.name for li in onnx.layers() if li.kind == "Relu" and li.shape == (8, 8, 8))
    assert not has_logp_directional(onnx.head(layer))
    x = _images(5)
    acts = _acts(onnx, layer, x)
    A = core.spatial_mean(acts)
    W = core.nmf_concepts(A, 3, seed=0).W
    V = core.nnls_coefficients(A, W)
    stats = rsvc_grad.GradStats()
    g = rsvc_grad.concept_gradient(onnx, layer, W, (8, 8, 8), x, 1, 1.0, stats)(V)
    assert g.shape == (5, 3) and np.isfinite(g).all()
    assert stats.head_rows == 5 * 2 * 3
