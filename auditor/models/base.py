"""The Model protocol every adapter implements: numpy in, numpy out, float32, NCHW.

Preprocessing lives in the policy, not in the adapter: `x` is already resized and normalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class LayerInfo:
    """One layer (torch: a module path, or `<module path>.<op>` for a functional result, docs/layers.md; ONNX: a
    tensor name) and its per-image output shape."""

    name: str
    shape: tuple[int, ...]  # without the batch axis, e.g. (C, H, W) or (D,)
    kind: str  # torch: module class (Conv2d, ReLU, ...) or op (relu6, add); ONNX: producing op type (Conv, Relu, ...)


class Head(Protocol):
    """The network from one layer to the logits.

    `x` is the batch of input images that produced `acts`. Adapters use it only where the rest of the
    network needs tensors other than the layer's own (skip paths around the layer); for a sequential network
    it is not read. Gradients are of the logits, never of a loss.
    """

    def logits(self, acts: np.ndarray, x: np.ndarray) -> np.ndarray:
        """(n, *layer_shape) -> (n, K) logits."""
        ...

    def grad(self, acts: np.ndarray, x: np.ndarray, target: int) -> np.ndarray:
        """d logit[target] / d acts, shape (n, *layer_shape)."""
        ...

    def directional(
        self, acts: np.ndarray, x: np.ndarray, directions: np.ndarray, target: int
    ) -> np.ndarray:
        """Directional derivatives of logit[target] along each direction: directions (k, *layer_shape) -> (n, k)."""
        ...


class Model(Protocol):
    name: str
    sha256: str  # of the model file(s)
    framework: str  # "torchscript" | "torch" | "torch-export" | "onnx"
    input_shape: tuple[int, ...]  # (C, H, W), without batch axis

    def layers(self) -> list[LayerInfo]: ...

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, C, H, W) float32 -> (n, K) logits."""
        ...

    def activations(self, x: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]:
        """One forward pass for all requested layers: {layer: (n, *layer_shape)}."""
        ...

    def head(self, layer: str) -> Head: ...


@runtime_checkable
class LayerGrads(Protocol):
    """Optional capability of a Model (the torch adapters have it; ONNX models do not): exact logit gradients
    at several layers from ONE forward and ONE backward pass over each batch.

    The head (`Model.head(layer).grad`) answers the same question one layer at a time, each call a pass of its
    own; callers test for this capability with `has_layer_grads` and fall back to the head without it.
    """

    def layer_grads(self, x: np.ndarray, layers: Sequence[str], target: int) -> dict[str, np.ndarray]:
        """d logit[target] / d (layer's output) at every requested layer: {layer: (n, *layer_shape)} float32.

        Each layer's gradient is the one its head gives (`head(layer).grad(acts, x, target)`): every path from
        the layer to the logits counts, through later requested layers too, while tensors not computed from the
        layer (skip paths around it) stay at the values the images `x` give them. Unknown layers raise UserError.
        """
        ...

    def layer_acts_and_grads(
        self, x: np.ndarray, layers: Sequence[str], target: int
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """`layer_grads` together with the activations its forward pass computed, (acts, grads), each
        {layer: (n, *layer_shape)}; the activations equal `activations(x, layers)`."""
        ...


def has_layer_grads(model: object) -> bool:
    """Whether `model` offers `layer_grads` (one pass for several layers) rather than only per-layer heads."""
    return isinstance(model, LayerGrads)


@runtime_checkable
class LogpDirectional(Protocol):
    """Optional capability of a Head (the torch heads have it; ONNX heads do not): directional derivatives of the
    log-probability log softmax(logits)[target] (= -CE of the target) from ONE forward and ONE backward pass over
    each batch, whatever the number of classes.

    Without it a caller builds the same derivative from logit derivatives, d log p_t = sum_k (1[k = t] - p_k)
    d logit_k: one `directional` call per class, 1,000 of them on an ImageNet model. ONNX heads do not offer it:
    their derivatives are central differences, and differences of log p_target itself already cost one set of head
    runs whatever the number of classes (RSVC takes them so, with its own step rule; see rsvc_grad.py).
    """

    def logp_directional(
        self, acts: np.ndarray, x: np.ndarray, directions: np.ndarray, target: int
    ) -> np.ndarray:
        """d log softmax(h(acts))[target] / d acts . direction: directions (k, *layer_shape) -> (n, k) float32.
        `x` as for `Head.logits` (the images, read for skip paths around the layer)."""
        ...


def has_logp_directional(head: object) -> bool:
    """Whether `head` gives log-probability derivatives in one pass (`logp_directional`) rather than per class."""
    return isinstance(head, LogpDirectional)
