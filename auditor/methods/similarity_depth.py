"""Relative depth of a model's layers, counted the same way for torch and ONNX models.

The layer lists the two adapters give are not alike: a torch model lists its modules, containers included
(`features` before `features.0`), an ONNX model every intermediate tensor (`Flatten`, reshapes). Their positions in
those lists would put the same layer of the same network at different depths. So depth is counted in *weight
layers* (convolutions and fully connected layers, as "ResNet-18" counts 18): a layer's index is the number of
weight layers up to and including it (for a torch container, up to its last sub-module), the model's count L is
all of them, and its relative depth is index / L (concept_maps.relative_depth), 0 for layers before the first
weight layer. A torch model exported to ONNX gets the same depths in both forms (tested).

Torch: a weight layer is a module without sub-modules owning a `weight` parameter or buffer of 2 or more
dimensions (convolutions, linear layers, and fixed linear stages such as the demo's luminance convolution, which
ONNX exports as a Conv; normalisation layers have 1-D weights and are folded or kept apart in ONNX alike).
Torch functional results (`F.conv2d(x, w)`, `F.linear`, `x @ w`, listed by the adapters as layers of kind
`conv2d`, `linear`, `matmul`, ...) count too, unless made inside a weight module (an nn.Conv2d's own conv call is
that module): the worked example's luminance stage as a functional conv counted in ONNX only (6 weight layers
against 5), and similarity paired conv_layers.1 with conv_layers.4.
ONNX: a node of type Conv, ConvTranspose, Gemm or MatMul (and their quantised forms). A MatMul between two
activations (attention) counts in ONNX and in torch's functional results, not as a module.
"""

from __future__ import annotations

from dataclasses import dataclass

from auditor.methods.concept_maps import relative_depth
from auditor.models.base import LayerInfo, Model

ONNX_WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger",
                             "QLinearConv", "QLinearMatMul"})
# Kinds of torch functional results (the op's name, as the adapters list them) that ONNX exports as the ops above.
TORCH_WEIGHT_OPS = frozenset({"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                              "conv_transpose3d", "convolution", "_convolution", "linear", "matmul", "mm", "bmm",
                              "addmm"})


@dataclass(frozen=True)
class Depths:
    """Each listed layer's index in weight layers (0: before the first one) and the model's count of them."""

    index: dict[str, int]
    count: int

    def relative(self, layer: str) -> float:
        i = self.index[layer]
        return 0.0 if i == 0 else relative_depth(i, self.count)


def _torch_weight_modules(model: Model) -> set[str]:
    module = getattr(model, "torch_module", None)
    if module is None:
        return set()
    out = set()
    for name, m in module.named_modules():
        if not name or any(True for _ in m.children()):
            continue
        tensors = dict(m.named_parameters(recurse=False))
        tensors.update(dict(m.named_buffers(recurse=False)))
        w = tensors.get("weight")
        if w is not None and w.dim() >= 2 and "Embedding" not in type(m).__name__:
            out.add(name)
    return out


def _is_inside(name: str, container: str) -> bool:
    return name == container or name.startswith(container + ".")


def count_depths(layers: list[LayerInfo], weight: set[str], nested: bool) -> Depths:
    """Depths of `layers` (in the adapter's order) given the names of the weight layers among them; `nested`: names
    are module paths (torch), so a container ends where its last sub-module does."""
    names = [li.name for li in layers]
    running, seen = [], 0
    for n in names:
        seen += n in weight
        running.append(seen)
    count = seen
    if count == 0:  # no convolution or linear layer the adapter can see: count every listed layer instead
        return Depths(index={n: i + 1 for i, n in enumerate(names)}, count=len(names))
    index = {}
    for i, n in enumerate(names):
        last = max(j for j in range(i, len(names)) if _is_inside(names[j], n)) if nested else i
        index[n] = running[last]
    return Depths(index=index, count=count)


def model_depths(model: Model) -> Depths:
    """The relative-depth counting of every layer `model.layers()` lists."""
    layers = model.layers()
    if model.framework == "onnx":
        return count_depths(layers, {li.name for li in layers if li.kind in ONNX_WEIGHT_OPS}, nested=False)
    modules = _torch_weight_modules(model)
    functional = {li.name for li in layers
                  if li.kind in TORCH_WEIGHT_OPS and not any(_is_inside(li.name, m) for m in modules)}
    return count_depths(layers, modules | functional, nested=True)
