"""PyTorch adapters: TorchScript files, `torch.export` programs, and `module:factory` + weights.

Two mechanisms reach a layer's activations and the head above it:

- eager `nn.Module`s (factory + state_dict/safetensors, trusted pickles): forward hooks that record a module's
  output, or replace it with given activations (the head); functional results (`F.relu6(x)`, `x + y`) and every
  value of a `torch.export` program through the module's fx graph (torch_graph.py);
- TorchScript: hooks are refused on ScriptModules, so we edit a copy of the inlined graph instead. Every op in
  it carries its module hierarchy (`features(Sequential).3(ReLU)`); a module's value is the last op of that
  module, a functional result is named as for fx (torch_graph.py). Extra graph outputs give activations;
  replacing the value by a new graph input gives the head.

Loading is in torch_load.py; `device` moves the module there and numpy in and out stays on the CPU.

Either way the head runs the network on the real images `x` with the layer's value substituted, so skip
paths around the layer keep their real values (what the gradient of the logit w.r.t. the layer means).
"""

from __future__ import annotations

import copy
import difflib
import re
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from auditor.errors import UserError, require_finite
from auditor.models.base import LayerInfo

if TYPE_CHECKING:
    from auditor.models.torch_graph import GraphLayers

BATCH = 64
CPU = torch.device("cpu")


def _unknown_layer(name: str, known: Sequence[str], model: str) -> UserError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; `auditor layers {model}` lists them"
    return UserError(f"layer {name!r} is not in model {model}{hint}")


def _batches(n: int, size: int = BATCH) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


def _contract(grads: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """(n, *shape) gradients . (k, *shape) directions -> (n, k)."""
    n, k = grads.shape[0], directions.shape[0]
    return (grads.reshape(n, -1).astype(np.float64) @ directions.reshape(k, -1).astype(np.float64).T).astype(
        np.float32
    )


def _grads_at(logits: torch.Tensor, target: int, values: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """d logits[:, target].sum() / d value for each value, in one backward pass. Each row of a batch only
    reaches its own logits (eval mode: no batch statistics), so the sum gives every image's own gradient.
    A value the logit does not depend on gets zeros."""
    grads = [np.zeros(tuple(v.shape), np.float32) for v in values]
    tracked = [i for i, v in enumerate(values) if v.requires_grad]
    if tracked and logits.requires_grad:
        got = torch.autograd.grad(
            logits[:, target].sum(), [values[i] for i in tracked], allow_unused=True, materialize_grads=True
        )
        for i, g in zip(tracked, got):
            grads[i] = g.detach().cpu().numpy()
    return grads


def _joined(parts: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-batch arrays -> one C-ordered float32 array per layer; a single C-ordered batch (the usual image set)
    is not copied, a channels-last one is copied once into (n, C, H, W) order."""
    return {
        n: np.ascontiguousarray(v[0] if len(v) == 1 else np.concatenate(v), dtype=np.float32)
        for n, v in parts.items()
    }


def _owned(t: torch.Tensor) -> np.ndarray:
    """A C-ordered float32 copy of a tensor (the network may change the tensor in place later)."""
    return np.array(t.detach().cpu().numpy(), dtype=np.float32, order="C", copy=True)


# Probe input for the layout choice: a fixed pattern, so the choice is the same on every run.
_PROBE_SEED = 0


def _as_input(x: np.ndarray, layout: torch.memory_format, device: torch.device = CPU) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device).contiguous(memory_format=layout)


def _layout_for(module: nn.Module, input_shape: tuple[int, ...], device: torch.device = CPU) -> torch.memory_format:
    """channels_last for conv nets when it gives the same logits, else the default layout.

    oneDNN's convolutions run faster on channels-last tensors on CPU (a ResNet-18 forward pass on one core: 1.6 s
    instead of 2.2 s for 50 images at 224 px). Models whose code assumes the default strides (`x.view(n, -1)`
    after a conv) fail or differ under it: a probe pass in both layouts decides, and the module is converted
    back when they disagree. Results differ from the default layout by float rounding only (about 1e-7)."""
    # (a TorchScript submodule is a RecursiveScriptModule that keeps its class name in `original_name`)
    convs = any(isinstance(m, nn.Conv2d) or getattr(m, "original_name", "") == "Conv2d" for m in module.modules())
    if len(input_shape) != 3 or not convs:
        return torch.contiguous_format
    x = torch.from_numpy(np.random.default_rng(_PROBE_SEED).random((2, *input_shape), dtype=np.float32)).to(device)
    try:
        with torch.no_grad():
            plain = module(x)
            module.to(memory_format=torch.channels_last)
            fast = module(x.contiguous(memory_format=torch.channels_last))
        same = (
            isinstance(plain, torch.Tensor) and isinstance(fast, torch.Tensor) and plain.shape == fast.shape
            and bool(torch.allclose(plain, fast, rtol=1e-4, atol=1e-5 * (1.0 + float(plain.abs().max()))))
        )
    except Exception:  # any failure under the other layout means: keep the layout the model was written for
        same = False
    if not same:
        module.to(memory_format=torch.contiguous_format)
        return torch.contiguous_format
    return torch.channels_last


def _on_cpu(model: "ModuleModel | ScriptModel") -> nn.Module:
    """A model's module on the CPU: itself, or (run on another device) a copy made once. ClaDec trains its
    decoder through the module with CPU tensors."""
    if model._device.type == "cpu":
        return model._module
    if model._cpu_copy is None:
        model._cpu_copy = copy.deepcopy(model._module).to(CPU)
    return model._cpu_copy


# ----------------------------------------------------------------------------------------------- eager modules


class AutogradHead:
    """Head from a layer to the logits; `run(acts, x)` is the network on `x` with the layer's value replaced.

    `reads_images` False: nothing the head computes comes from `x` (a graph cut at a layer no skip path goes
    around), so callers may pass x=None and need not make the images (RSVC's patches, issue 18)."""

    def __init__(self, run: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
                 reads_images: bool = True) -> None:
        self._run = run
        self.reads_images = reads_images

    def logits(self, acts: np.ndarray, x: np.ndarray | None) -> np.ndarray:
        out = []
        with torch.no_grad():
            for s in _batches(len(acts)):
                out.append(self._run(torch.from_numpy(np.ascontiguousarray(acts[s])), _rows_of(x, s)).numpy())
        return np.concatenate(out).astype(np.float32)

    def grad(self, acts: np.ndarray, x: np.ndarray | None, target: int) -> np.ndarray:
        out = []
        for s in _batches(len(acts)):
            a = torch.from_numpy(np.ascontiguousarray(acts[s])).requires_grad_(True)
            y = self._run(a, _rows_of(x, s))
            (g,) = torch.autograd.grad(y[:, target].sum(), a)
            out.append(g.numpy())
        return np.concatenate(out).astype(np.float32)

    def directional(self, acts: np.ndarray, x: np.ndarray, directions: np.ndarray, target: int) -> np.ndarray:
        return _contract(self.grad(acts, x, target), directions)

    def logp_directional(self, acts: np.ndarray, x: np.ndarray | None, directions: np.ndarray,
                         target: int) -> np.ndarray:
        """d log softmax(logits)[target] / d acts . direction, (k, *shape) directions -> (n, k) float32: one
        forward and one backward pass per batch for any number of classes (base.LogpDirectional). The softmax
        is taken in float64, as callers that built it from the logits did."""
        out = []
        for s in _batches(len(acts)):
            a = torch.from_numpy(np.ascontiguousarray(acts[s])).requires_grad_(True)
            y = self._run(a, _rows_of(x, s))
            (g,) = torch.autograd.grad(torch.log_softmax(y.double(), dim=1)[:, target].sum(), a)
            out.append(g.numpy())
        return _contract(np.concatenate(out), directions)


def _rows_of(x: np.ndarray | None, s: slice) -> torch.Tensor | None:
    """Rows `s` of the images as a tensor (x may be any sequence of arrays that slices to one), or None."""
    return None if x is None else torch.from_numpy(np.ascontiguousarray(x[s]))


def _module_head(module: nn.Module, layer: str, layout: torch.memory_format, device: torch.device) -> AutogradHead:
    target = dict(module.named_modules())[layer]

    def run(acts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # (`.to` is differentiable and the identity on the CPU: gradients come back to the caller's tensor.) The
        # network reads a copy: an in-place op after the layer (ReLU(inplace=True)) wrote on the caller's array
        # (logits) or failed on the leaf tensor (grad).
        on_device = acts.to(device)
        handle = target.register_forward_hook(lambda _m, _i, _o: on_device.clone())
        try:
            return module(x.to(device).contiguous(memory_format=layout)).cpu()
        finally:
            handle.remove()

    return AutogradHead(run)


class ModuleModel:
    """An eager `nn.Module` (or a torch.export program's module) in eval mode, parameters frozen, on `device`.

    Module outputs of eager modules are read by forward hooks; functional results, and every value of an exported
    program (whose module calls are inlined, so no hook fires), through its fx graph (torch_graph.py)."""

    def __init__(
        self, module: nn.Module, name: str, sha256: str, framework: str, input_shape: tuple[int, ...],
        device: str = "cpu",
    ) -> None:
        self._device = torch.device(device)
        # An exported program is in the mode it was exported in (its module refuses `eval()`).
        self._module = (module if framework == "torch-export" else module.eval()).to(self._device)
        for p in self._module.parameters():
            p.requires_grad_(False)
        self.name = name
        self.sha256 = sha256
        self.framework = framework
        self.device = self._device.type
        self.input_shape = tuple(input_shape)
        self._layers: list[LayerInfo] | None = None
        self._layout = _layout_for(self._module, self.input_shape, self._device)
        self._graph: GraphLayers | None = None
        self.graph_note = ""  # why functional results are not listed ("" when they are), set by layers()
        self._cpu_copy: nn.Module | None = None
        self._heads: dict[str, AutogradHead] = {}

    @property
    def torch_module(self) -> nn.Module:
        """The network itself, in eval mode with frozen parameters, on the CPU (ClaDec decodes through it there)."""
        return _on_cpu(self)

    def layers(self) -> list[LayerInfo]:
        if self._layers is None:
            exported = self.framework == "torch-export"
            from auditor.models.torch_graph import graph_for  # (torch_graph imports this module's helpers)

            self._graph, self.graph_note = graph_for(
                self._module, self.name, exported, self._device, self._layout, self.predict, self.input_shape
            )
            hooked = [] if exported else self._hook_layers()
            self._layers = hooked if self._graph is None else self._graph.merged(hooked, self.input_shape)
        return self._layers

    def _hook_layers(self) -> list[LayerInfo]:
        mods = {n: m for n, m in self._module.named_modules() if n}
        acts = self._capture(np.zeros((1, *self.input_shape), np.float32), list(mods))
        return [LayerInfo(n, tuple(acts[n].shape[1:]), type(mods[n]).__name__) for n in mods if n in acts]

    @contextmanager
    def _hooks(self, names: Sequence[str], seen: dict[str, np.ndarray]) -> Iterator[None]:
        mods = dict(self._module.named_modules())
        handles = []

        def record(name: str) -> Callable:
            def hook(_m: nn.Module, _i: object, out: object) -> None:
                # A module called twice in one pass (a ReLU reused in a residual block): its last output, as
                # `layer_acts_and_grads` and TorchScript graphs take it.
                if isinstance(out, torch.Tensor):
                    seen[name] = _owned(out)

            return hook

        try:
            for n in names:
                handles.append(mods[n].register_forward_hook(record(n)))
            yield
        finally:
            for h in handles:
                h.remove()

    def _capture(self, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        store: dict[str, list[np.ndarray]] = {}
        seen: dict[str, np.ndarray] = {}
        with torch.no_grad(), self._hooks(names, seen):
            for s in _batches(len(x)):
                seen.clear()
                self._module(_as_input(x[s], self._layout, self._device))
                for n, a in seen.items():
                    store.setdefault(n, []).append(a)
        return _joined(store)

    def predict(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = np.concatenate(
                [self._module(_as_input(x[s], self._layout, self._device)).cpu().numpy() for s in _batches(len(x))]
            ).astype(np.float32)
        return require_finite(logits, f"model {self.name}, logits")

    def _split(self, layers: Sequence[str]) -> tuple[list[str], list[str]]:
        """The requested layers (unknown ones a UserError) as (module outputs read by hooks, graph values)."""
        known = [li.name for li in self.layers()]
        for layer in layers:
            if layer not in known:
                note = f"; {self.graph_note}" if self.graph_note else ""
                raise UserError(f"{_unknown_layer(layer, known, self.name)}{note}")
        names = list(dict.fromkeys(layers))
        graphed = [n for n in names if self._graph is not None and n in self._graph]
        return [n for n in names if n not in graphed], graphed

    def activations(self, x: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]:
        hooked, graphed = self._split(layers)
        out = self._capture(x, hooked) if hooked else {}
        if graphed:
            assert self._graph is not None
            out.update(self._graph.activations(x, graphed))
        return out

    def head(self, layer: str) -> AutogradHead:
        """The head from `layer`, made once per layer: a trace (or graph edit) of a ResNet-50 takes a tenth of a
        second, and a check asks for a layer's head several times (RSVC: three times per class)."""
        hooked, _ = self._split([layer])
        if layer not in self._heads:
            if not hooked:
                assert self._graph is not None
                self._heads[layer] = self._graph.head(layer)
            else:
                from auditor.models.torch_graph import module_output_head  # (torch_graph imports this module)

                # Only what follows the module, where fx can cut the network there; else the whole network, hooked.
                self._heads[layer] = (module_output_head(self._module, layer, self._device, self._layout)
                                      or _module_head(self._module, layer, self._layout, self._device))
        return self._heads[layer]

    def layer_grads(self, x: np.ndarray, layers: Sequence[str], target: int) -> dict[str, np.ndarray]:
        """d logit[target] / d (layer output) for every layer, one forward + one backward pass per batch."""
        return self.layer_acts_and_grads(x, layers, target)[1]

    def layer_acts_and_grads(
        self, x: np.ndarray, layers: Sequence[str], target: int
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """({layer: activations}, {layer: d logit[target] / d activations}) from the same passes: one pass per
        batch for module outputs (hooks), one for graph values; a request mixing both takes the two."""
        hooked, graphed = self._split(layers)
        acts, grads = self._hooked_acts_and_grads(x, hooked, target) if hooked else ({}, {})
        if graphed:
            assert self._graph is not None
            more_acts, more_grads = self._graph.acts_and_grads(x, graphed, target)
            acts.update(more_acts)
            grads.update(more_grads)
        return acts, grads

    def _hooked_acts_and_grads(
        self, x: np.ndarray, names: list[str], target: int
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        mods = dict(self._module.named_modules())
        seen: dict[str, torch.Tensor] = {}

        def keep(name: str) -> Callable:
            def hook(_m: nn.Module, _i: object, out: object) -> object:
                if not isinstance(out, torch.Tensor):
                    return None
                if not out.requires_grad:
                    # Parameters are frozen, so nothing before the first requested layer is recorded: the graph
                    # starts at its value (cheaper than making `x` require grad and recording the stem).
                    out = out.detach().requires_grad_(True)
                seen[name] = out  # a module called twice: its last output, as for TorchScript
                # The rest of the network reads a copy: an in-place op downstream (ReLU(inplace=True)) changes
                # the copy, never the value the gradient is taken against.
                return out.clone()

            return hook

        acts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        grads: dict[str, list[np.ndarray]] = {n: [] for n in names}
        handles = [mods[n].register_forward_hook(keep(n)) for n in names]
        try:
            for s in _batches(len(x)):
                seen.clear()
                with torch.enable_grad():
                    logits = self._module(_as_input(x[s], self._layout, self._device))
                missing = [n for n in names if n not in seen]
                if missing:
                    raise RuntimeError(f"{self.name}: layers {missing} produced no tensor in the forward pass")
                for n, g in zip(names, _grads_at(logits, target, [seen[n] for n in names])):
                    acts[n].append(seen[n].detach().cpu().numpy())
                    grads[n].append(g)
        finally:
            for h in handles:
                h.remove()
        return _joined(acts), _joined(grads)


# ------------------------------------------------------------------------------------------------- TorchScript

_SCOPE = re.compile(r"([^.()]+)\(([^()]*)\)")


def _module_path(hierarchy: str) -> str:
    """'features(Sequential).3(ReLU).UNKNOWN_INSTANCE(UNKNOWN_TYPE)' -> 'features.3'."""
    names = [m.group(1) for m in _SCOPE.finditer(hierarchy)]
    return ".".join(n for n in names if n not in ("SELF", "UNKNOWN_INSTANCE"))


def layer_values(graph: torch._C.Graph) -> dict[str, torch._C.Value]:
    """Module path -> the value its last top-level tensor op produces (the module's output)."""
    values: dict[str, torch._C.Value] = {}
    for node in graph.nodes():
        if not node.kind().startswith("aten::") or node.outputsSize() != 1:
            continue
        out = node.output()
        if not isinstance(out.type(), torch._C.TensorType):
            continue
        path = _module_path(node.getModuleHierarchy())
        parts = path.split(".") if path else []
        # A module's output is also its parents' latest value; later ops overwrite earlier ones.
        for i in range(1, len(parts) + 1):
            values[".".join(parts[:i])] = out
    return values


def _script_graph(module: torch.jit.ScriptModule) -> torch._C.Graph:
    """A copy of the inlined graph with constant conditions folded: `F.relu6(x)` inlines as an `if inplace:` on a
    constant, and its result would otherwise be a `prim::If`'s, not the op's, with no module path to name it."""
    graph = module.inlined_graph.copy()
    torch._C._jit_pass_constant_propagation(graph)
    return graph


def _fold_eval(graph: torch._C.Graph) -> None:
    """`self.training` as the constant False (ScriptModel keeps its module in eval mode). Read at run time, it kept
    BatchNorm's training branch (it counts batches: a side effect dead-code elimination must keep) and with it
    every op before the head's layer: the head ran the whole network (tests/test_module_heads.py)."""
    reads = [n for n in graph.findAllNodes("prim::GetAttr") if n.s("name") == "training"]
    if not reads:
        return
    false = graph.insertConstant(False)
    false.node().moveBefore(next(iter(graph.nodes())))
    for node in reads:
        node.output().replaceAllUsesWith(false)
    torch._C._jit_pass_constant_propagation(graph)


def _script_head(
    module: torch.jit.ScriptModule, value_of: Callable[[torch._C.Graph], torch._C.Value], layout: torch.memory_format,
    device: torch.device,
) -> AutogradHead:
    from auditor.models.torch_graph import tap_script

    graph = _script_graph(module)
    value = value_of(graph)
    acts_in = graph.addInput("acts")
    acts_in.setType(value.type())
    value.replaceAllUsesWith(acts_in)
    tap_script(graph, acts_in)  # an in-place op downstream writes on a copy, never on the caller's array
    _fold_eval(graph)
    # Ops that only fed the replaced value are now dead; the skip paths that still read `x` stay.
    torch._C._jit_pass_dce(graph)
    fn = torch._C._create_function_from_graph("auditor_head", graph)
    images_in = list(graph.inputs())[1]  # (self, x, acts)
    reads = len(images_in.uses()) > 0
    unused = torch.empty(0)  # the function's signature keeps `x`; nothing reads it when `reads` is False

    def run(acts: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        images = x.to(device).contiguous(memory_format=layout) if reads else unused
        return fn(module._c, images, acts.to(device)).cpu()

    return AutogradHead(run, reads_images=reads)


class ScriptModel:
    """A TorchScript file: activations and heads from edited copies of its inlined graph."""

    def __init__(
        self, module: torch.jit.ScriptModule, name: str, sha256: str, input_shape: tuple[int, ...], device: str = "cpu"
    ) -> None:
        self._device = torch.device(device)
        self.device = self._device.type
        self._cpu_copy: nn.Module | None = None
        self._module = module.eval().to(self._device)
        for p in self._module.parameters():
            p.requires_grad_(False)
        self.name = name
        self.sha256 = sha256
        self.framework = "torchscript"
        self.input_shape = tuple(input_shape)
        self._extractors: dict[tuple[str, ...], Callable] = {}
        self._heads: dict[str, AutogradHead] = {}
        self._layers: list[LayerInfo] | None = None
        self._kinds = {
            n: m.original_name for n, m in self._module.named_modules() if n
        }
        self._layout = _layout_for(self._module, self.input_shape, self._device)

    def _values(self, graph: torch._C.Graph) -> dict[str, torch._C.Value]:
        """Layer name -> value in `graph` (the inlined graph or a copy): module outputs, functional results."""
        from auditor.models.torch_graph import script_functional  # (torch_graph imports this module)

        values = layer_values(graph)
        values.update({n: v for n, v, _, _ in script_functional(graph, set(values) | set(self._kinds))})
        return values

    def _extractor(self, layers: tuple[str, ...]) -> Callable:
        if layers not in self._extractors:
            from auditor.models.torch_graph import tap_script

            graph = _script_graph(self._module)
            values = self._values(graph)
            # The rest of the graph reads copies: an in-place op after a layer (ReLU(inplace=True) after a conv,
            # `out += identity`) must not change the value read out or differentiated against.
            for value in {values[layer].unique(): values[layer] for layer in layers}.values():
                tap_script(graph, value)
            for layer in layers:
                graph.registerOutput(values[layer])
            graph.makeMultiOutputIntoTuple()
            self._extractors[layers] = torch._C._create_function_from_graph("auditor_extract", graph)
        return self._extractors[layers]

    def _run(self, x: np.ndarray, layers: tuple[str, ...]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        fn = self._extractor(layers)
        logits, acts = [], {n: [] for n in layers}
        with torch.no_grad():
            for s in _batches(len(x)):
                out = fn(self._module._c, _as_input(x[s], self._layout, self._device))
                logits.append(out[0].cpu().numpy())
                for n, a in zip(layers, out[1:]):
                    acts[n].append(a.cpu().numpy())
        return np.concatenate(logits).astype(np.float32), _joined(acts)

    @property
    def torch_module(self) -> nn.Module:
        """The network itself, in eval mode with frozen parameters, on the CPU (ClaDec decodes through it there)."""
        return _on_cpu(self)

    def layers(self) -> list[LayerInfo]:
        """Module outputs in module order, functional results (float, batch-first) among them in graph order."""
        if self._layers is None:
            from auditor.models.torch_graph import merge_in_order, script_first_nodes, script_functional

            graph = _script_graph(self._module)
            names = tuple(self._values(graph))
            with torch.no_grad():  # two images: a value whose first axis is not the batch is told apart
                out = self._extractor(names)(self._module._c, _as_input(np.zeros((2, *self.input_shape)), self._layout, self._device))
            got = {n: v for n, v in zip(names, out[1:]) if isinstance(v, torch.Tensor)}
            modules = [LayerInfo(n, tuple(got[n].shape[1:]), self._kinds[n]) for n in self._kinds if n in got]
            functional = [
                (index, LayerInfo(n, tuple(got[n].shape[1:]), op))
                for n, _, op, index in script_functional(graph, set(layer_values(graph)) | set(self._kinds))
                if n in got and got[n].is_floating_point() and got[n].dim() >= 2 and len(got[n]) == 2
            ]
            self._layers = merge_in_order(modules, functional, script_first_nodes(graph))
        return self._layers

    def predict(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = np.concatenate(
                [self._module(_as_input(x[s], self._layout, self._device)).cpu().numpy() for s in _batches(len(x))]
            ).astype(np.float32)
        return require_finite(logits, f"model {self.name}, logits")

    def _check(self, layer: str) -> None:
        known = [li.name for li in self.layers()]
        if layer not in known:
            raise _unknown_layer(layer, known, self.name)

    def activations(self, x: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]:
        for layer in layers:
            self._check(layer)
        return self._run(x, tuple(layers))[1]

    def head(self, layer: str) -> AutogradHead:
        self._check(layer)
        if layer not in self._heads:  # made once per layer, as ModuleModel's
            self._heads[layer] = _script_head(self._module, lambda g: self._values(g)[layer], self._layout,
                                              self._device)
        return self._heads[layer]

    def layer_grads(self, x: np.ndarray, layers: Sequence[str], target: int) -> dict[str, np.ndarray]:
        """d logit[target] / d (layer output) for every layer, one forward + one backward pass per batch."""
        return self.layer_acts_and_grads(x, layers, target)[1]

    def layer_acts_and_grads(
        self, x: np.ndarray, layers: Sequence[str], target: int
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """({layer: activations}, {layer: d logit[target] / d activations}) from the same passes: the extraction
        graph (layers as extra outputs) run with autograd and differentiated at those outputs."""
        names = tuple(dict.fromkeys(layers))
        for layer in names:
            self._check(layer)
        fn = self._extractor(names)
        acts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        grads: dict[str, list[np.ndarray]] = {n: [] for n in names}
        # Unoptimised execution runs the graph op by op, each op recorded by autograd as in eager mode. The
        # optimising executor merges a layer's value and the ops after it into one differentiable node, and a
        # gradient taken at that node's output misses the uses inside it (wrong gradients, seen in the tests).
        with torch.jit.optimized_execution(False), torch.enable_grad():
            for s in _batches(len(x)):
                # Frozen parameters: the input is what makes autograd record the pass.
                xb = _as_input(x[s], self._layout, self._device).requires_grad_(True)
                res = fn(self._module._c, xb)
                for n, v, g in zip(names, res[1:], _grads_at(res[0], target, list(res[1:]))):
                    acts[n].append(v.detach().cpu().numpy())
                    grads[n].append(g)
        return _joined(acts), _joined(grads)
