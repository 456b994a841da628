"""ClaDec's reference auto-encoder: the classifier's architecture truncated at the audited layer, with fresh
weights, followed by the same decoder, trained end to end on MSE only (METHODS.md, ClaDec section).

What it reconstructs is what a network of that shape *can* keep when it is trained to keep everything; the
ClaDec decoder's reconstruction shows what the classifier chose to keep.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from auditor import data
from auditor.methods.cladec_core import Decoder, Fitted, Log, Settings, optimise, setup_torch, to_model

#: Buffers that are training statistics of normalisation layers, and their fresh values.
_STAT_BUFFERS = {"running_mean": 0.0, "running_var": 1.0, "num_batches_tracked": 0}


def unavailable_reason(module: nn.Module | None) -> str | None:
    """Why no reference auto-encoder can be trained for a model, or None when one can."""
    if module is None:
        return (
            "no reference auto-encoder: the model is ONNX, and training a fresh copy of its architecture needs "
            "a torch version of it (give a torch twin of the same model)"
        )
    return None


def fresh_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` (eager or TorchScript) with every parameter re-initialised and normalisation statistics
    reset, in training mode with gradients on; `module` itself is untouched.

    Weights (2-D and more) as torch's Conv/Linear `reset_parameters` draw them (kaiming-uniform, a = sqrt(5)),
    biases zero, 1-D weights (normalisation scales) one. BatchNorm running mean/var/count reset. Other buffers
    are kept: they are constants of the architecture, not learnt (e.g. the demo reference's fixed
    RGB-to-luminance stage), and a fresh network of the same architecture has them too."""
    with torch.no_grad():
        # Under no_grad: deepcopy of a ScriptModule clones its tensors, and outside it the clones of parameters
        # that require grad are non-leaf tensors (CloneBackward) that no optimiser accepts.
        twin = copy.deepcopy(module)
        for name, p in twin.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.dim() >= 2:
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
            elif leaf == "weight":
                p.fill_(1.0)
            else:
                p.zero_()
            p.requires_grad_(True)
        for name, b in twin.named_buffers():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in _STAT_BUFFERS:
                b.fill_(_STAT_BUFFERS[leaf])
    return twin.train()


class _Stop(Exception):
    """Raised by the forward hook once the layer's output exists: the rest of the network is not computed."""


class EagerEncoder(nn.Module):
    """An eager network up to (and including) one of its modules, by a forward hook that stops the pass."""

    def __init__(self, net: nn.Module, layer: str) -> None:
        super().__init__()
        self.net = net
        self.layer = layer
        self._target = dict(net.named_modules())[layer]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: dict[str, torch.Tensor] = {}

        def hook(_m: nn.Module, _i: object, o: torch.Tensor) -> None:
            out["a"] = o
            raise _Stop

        handle = self._target.register_forward_hook(hook)
        try:
            self.net(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        return out["a"]


class ScriptEncoder(nn.Module):
    """A TorchScript network up to one of its modules: hooks are refused on ScriptModules, so the encoder runs a
    copy of the inlined graph whose only output is the layer's value (dead code after it removed)."""

    def __init__(self, net: torch.jit.ScriptModule, layer: str) -> None:
        super().__init__()
        # The adapter's own map from module path to graph value (reading only; the lead may make it public).
        from auditor.models.torch_model import layer_values

        self.net = net
        self.layer = layer
        graph = net.inlined_graph.copy()
        value = layer_values(graph)[layer]
        graph.eraseOutput(0)
        graph.registerOutput(value)
        torch._C._jit_pass_dce(graph)
        self._fn = torch._C._create_function_from_graph("cladec_encoder", graph)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(self.net._c, x.contiguous())


def encoder(net: nn.Module, layer: str) -> nn.Module:
    return ScriptEncoder(net, layer) if isinstance(net, torch.jit.ScriptModule) else EagerEncoder(net, layer)


def fresh_encoder(module: nn.Module, layer: str) -> nn.Module:
    """The architecture of `module` truncated at `layer`, freshly initialised."""
    return encoder(fresh_copy(module), layer)


def train_reference(
    module: nn.Module,
    layer: str,
    images01: np.ndarray,
    pre: data.Preprocessing,
    settings: Settings,
    log: Log,
    what: str = "reference auto-encoder",
) -> Fitted:
    """Train encoder (fresh copy of `module` up to `layer`) + decoder end to end on MSE (alpha plays no part).

    The encoder sees the images as the classifier does (`to_model`); the decoder's output is in [0, 1]."""
    setup_torch(settings.seed)
    enc = fresh_encoder(module, layer)
    x01 = torch.from_numpy(np.ascontiguousarray(images01, dtype=np.float32))
    with torch.no_grad():  # in eval mode: a batch of one would upset batch normalisation
        shape = tuple(enc.eval()(to_model(x01[:1], pre)).shape[1:])
    enc.train()
    decoder = Decoder(shape, tuple(images01.shape[1:]))

    def step(idx: torch.Tensor) -> tuple[torch.Tensor, float]:
        xb = x01[idx]
        return F.mse_loss(decoder(enc(to_model(xb, pre))), xb), 0.0

    params = [p for p in enc.parameters() if p.requires_grad] + list(decoder.parameters())
    stats = optimise(params, len(x01), step, settings, log, what)
    return Fitted("reference_ae", decoder.eval(), enc.eval(), stats)
