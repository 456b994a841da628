"""PyTorch adapters: TorchScript files, `torch.export` programs, and `module:factory` + weights.

Two mechanisms reach a layer's activations and the head above it:

- eager `nn.Module`s (factory + state_dict/safetensors, exported programs, trusted pickles): forward hooks that
  record a module's output, or replace it with given activations (the head);
- TorchScript: hooks are refused on ScriptModules, so we edit a copy of the inlined graph instead. Every op in
  it carries its module hierarchy (`features(Sequential).3(ReLU)`); a layer's value is the last op of that
  module. Extra graph outputs give activations; replacing the value by a new graph input gives the head.

Either way the head runs the network on the real images `x` with the layer's value substituted, so skip
paths around the layer keep their real values (what the gradient of the logit w.r.t. the layer means).
"""

from __future__ import annotations

import difflib
import hashlib
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from auditor.errors import UserError, require_finite
from auditor.models.base import LayerInfo
from auditor.models.factory import factory_sha256, import_factory

BATCH = 64


def file_sha256(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


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
            grads[i] = g.detach().numpy()
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
    return np.array(t.detach().numpy(), dtype=np.float32, order="C", copy=True)


# Probe input for the layout choice: a fixed pattern, so the choice is the same on every run.
_PROBE_SEED = 0


def _as_input(x: np.ndarray, layout: torch.memory_format) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).contiguous(memory_format=layout)


def _layout_for(module: nn.Module, input_shape: tuple[int, ...]) -> torch.memory_format:
    """channels_last for conv nets when it gives the same logits, else the default layout.

    oneDNN's convolutions run faster on channels-last tensors on CPU (a ResNet-18 forward pass on one core: 1.6 s
    instead of 2.2 s for 50 images at 224 px). Models whose code assumes the default strides (`x.view(n, -1)`
    after a conv) fail or differ under it: a probe pass in both layouts decides, and the module is converted
    back when they disagree. Results differ from the default layout by float rounding only (about 1e-7)."""
    # (a TorchScript submodule is a RecursiveScriptModule that keeps its class name in `original_name`)
    convs = any(isinstance(m, nn.Conv2d) or getattr(m, "original_name", "") == "Conv2d" for m in module.modules())
    if len(input_shape) != 3 or not convs:
        return torch.contiguous_format
    x = torch.from_numpy(np.random.default_rng(_PROBE_SEED).random((2, *input_shape), dtype=np.float32))
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


# ----------------------------------------------------------------------------------------------- eager modules


class AutogradHead:
    """Head from a layer to the logits; `run(acts, x)` is the network on `x` with the layer's value replaced."""

    def __init__(self, run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        self._run = run

    def logits(self, acts: np.ndarray, x: np.ndarray) -> np.ndarray:
        out = []
        with torch.no_grad():
            for s in _batches(len(acts)):
                out.append(self._run(torch.from_numpy(acts[s]), torch.from_numpy(x[s])).numpy())
        return np.concatenate(out).astype(np.float32)

    def grad(self, acts: np.ndarray, x: np.ndarray, target: int) -> np.ndarray:
        out = []
        for s in _batches(len(acts)):
            a = torch.from_numpy(np.ascontiguousarray(acts[s])).requires_grad_(True)
            y = self._run(a, torch.from_numpy(x[s]))
            (g,) = torch.autograd.grad(y[:, target].sum(), a)
            out.append(g.numpy())
        return np.concatenate(out).astype(np.float32)

    def directional(self, acts: np.ndarray, x: np.ndarray, directions: np.ndarray, target: int) -> np.ndarray:
        return _contract(self.grad(acts, x, target), directions)

    def logp_directional(self, acts: np.ndarray, x: np.ndarray, directions: np.ndarray, target: int) -> np.ndarray:
        """d log softmax(logits)[target] / d acts . direction, (k, *shape) directions -> (n, k) float32: one
        forward and one backward pass per batch for any number of classes (base.LogpDirectional). The softmax
        is taken in float64, as callers that built it from the logits did."""
        out = []
        for s in _batches(len(acts)):
            a = torch.from_numpy(np.ascontiguousarray(acts[s])).requires_grad_(True)
            y = self._run(a, torch.from_numpy(x[s]))
            (g,) = torch.autograd.grad(torch.log_softmax(y.double(), dim=1)[:, target].sum(), a)
            out.append(g.numpy())
        return _contract(np.concatenate(out), directions)


def _module_head(module: nn.Module, layer: str, layout: torch.memory_format) -> AutogradHead:
    target = dict(module.named_modules())[layer]

    def run(acts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        handle = target.register_forward_hook(lambda _m, _i, _o: acts)
        try:
            return module(x.contiguous(memory_format=layout))
        finally:
            handle.remove()

    return AutogradHead(run)


class ModuleModel:
    """An eager `nn.Module` in eval mode, parameters frozen."""

    def __init__(
        self, module: nn.Module, name: str, sha256: str, framework: str, input_shape: tuple[int, ...]
    ) -> None:
        self._module = module.eval()
        for p in self._module.parameters():
            p.requires_grad_(False)
        self.name = name
        self.sha256 = sha256
        self.framework = framework
        self.input_shape = tuple(input_shape)
        self._layers: list[LayerInfo] | None = None
        self._layout = _layout_for(self._module, self.input_shape)

    @property
    def torch_module(self) -> nn.Module:
        """The network itself, in eval mode with frozen parameters (ClaDec decodes through it)."""
        return self._module

    def layers(self) -> list[LayerInfo]:
        if self._layers is None:
            mods = {n: m for n, m in self._module.named_modules() if n}
            acts = self._capture(np.zeros((1, *self.input_shape), np.float32), list(mods))
            self._layers = [
                LayerInfo(n, tuple(acts[n].shape[1:]), type(mods[n]).__name__) for n in mods if n in acts
            ]
        return self._layers

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
                self._module(_as_input(x[s], self._layout))
                for n, a in seen.items():
                    store.setdefault(n, []).append(a)
        return _joined(store)

    def predict(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = np.concatenate(
                [self._module(_as_input(x[s], self._layout)).numpy() for s in _batches(len(x))]
            ).astype(np.float32)
        return require_finite(logits, f"model {self.name}, logits")

    def activations(self, x: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]:
        known = [li.name for li in self.layers()]
        for layer in layers:
            if layer not in known:
                raise _unknown_layer(layer, known, self.name)
        return self._capture(x, list(layers))

    def head(self, layer: str) -> AutogradHead:
        known = [li.name for li in self.layers()]
        if layer not in known:
            raise _unknown_layer(layer, known, self.name)
        return _module_head(self._module, layer, self._layout)

    def layer_grads(self, x: np.ndarray, layers: Sequence[str], target: int) -> dict[str, np.ndarray]:
        """d logit[target] / d (layer output) for every layer, one forward + one backward pass per batch."""
        return self.layer_acts_and_grads(x, layers, target)[1]

    def layer_acts_and_grads(
        self, x: np.ndarray, layers: Sequence[str], target: int
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """({layer: activations}, {layer: d logit[target] / d activations}) from the same passes."""
        names = list(dict.fromkeys(layers))
        known = [li.name for li in self.layers()]
        for layer in names:
            if layer not in known:
                raise _unknown_layer(layer, known, self.name)
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
                    logits = self._module(_as_input(x[s], self._layout))
                missing = [n for n in names if n not in seen]
                if missing:
                    raise RuntimeError(f"{self.name}: layers {missing} produced no tensor in the forward pass")
                for n, g in zip(names, _grads_at(logits, target, [seen[n] for n in names])):
                    acts[n].append(seen[n].detach().numpy())
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


def _script_head(module: torch.jit.ScriptModule, layer: str, layout: torch.memory_format) -> AutogradHead:
    graph = module.inlined_graph.copy()
    value = layer_values(graph)[layer]
    acts_in = graph.addInput("acts")
    acts_in.setType(value.type())
    value.replaceAllUsesWith(acts_in)
    # Ops that only fed the replaced value are now dead; the skip paths that still read `x` stay.
    torch._C._jit_pass_dce(graph)
    fn = torch._C._create_function_from_graph("auditor_head", graph)
    return AutogradHead(lambda acts, x: fn(module._c, x.contiguous(memory_format=layout), acts))


class ScriptModel:
    """A TorchScript file: activations and heads from edited copies of its inlined graph."""

    def __init__(self, module: torch.jit.ScriptModule, name: str, sha256: str, input_shape: tuple[int, ...]) -> None:
        self._module = module.eval()
        for p in self._module.parameters():
            p.requires_grad_(False)
        self.name = name
        self.sha256 = sha256
        self.framework = "torchscript"
        self.input_shape = tuple(input_shape)
        self._extractors: dict[tuple[str, ...], Callable] = {}
        self._layers: list[LayerInfo] | None = None
        self._kinds = {
            n: m.original_name for n, m in self._module.named_modules() if n
        }
        self._layout = _layout_for(self._module, self.input_shape)

    def _extractor(self, layers: tuple[str, ...]) -> Callable:
        if layers not in self._extractors:
            graph = self._module.inlined_graph.copy()
            values = layer_values(graph)
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
                out = fn(self._module._c, _as_input(x[s], self._layout))
                logits.append(out[0].numpy())
                for n, a in zip(layers, out[1:]):
                    acts[n].append(a.numpy())
        return np.concatenate(logits).astype(np.float32), _joined(acts)

    @property
    def torch_module(self) -> nn.Module:
        """The network itself, in eval mode with frozen parameters (ClaDec decodes through it)."""
        return self._module

    def layers(self) -> list[LayerInfo]:
        if self._layers is None:
            names = tuple(layer_values(self._module.inlined_graph))
            _, acts = self._run(np.zeros((1, *self.input_shape), np.float32), names)
            order = [n for n, _ in self._module.named_modules() if n in acts]
            self._layers = [LayerInfo(n, tuple(acts[n].shape[1:]), self._kinds.get(n, "")) for n in order]
        return self._layers

    def predict(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = np.concatenate(
                [self._module(_as_input(x[s], self._layout)).numpy() for s in _batches(len(x))]
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
        return _script_head(self._module, layer, self._layout)

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
                xb = _as_input(x[s], self._layout).requires_grad_(True)
                res = fn(self._module._c, xb)
                for n, v, g in zip(names, res[1:], _grads_at(res[0], target, list(res[1:]))):
                    acts[n].append(v.detach().numpy())
                    grads[n].append(g)
        return _joined(acts), _joined(grads)


# ----------------------------------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class TorchSpec:
    path: Path | None  # weights, TorchScript or .pt2 file
    factory: str | None  # "package.module:function" building the nn.Module
    trust_pickle: bool
    input_shape: tuple[int, ...]
    name: str


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state_dict (a dict of tensors), found {type(state).__name__}")
    return state


def load_torch(spec: TorchSpec, search_dir: Path | None = None):
    """Load a torch model as the spec says.

    Returns a `ScriptModel` for TorchScript files and a `ModuleModel` otherwise.
    """
    path = spec.path
    if path is not None and not path.is_file():
        raise UserError(f"model file not found: {path}")
    try:
        if spec.factory:
            factory_module, factory = import_factory(spec.factory, search_dir)
            module = factory()
            if not isinstance(module, nn.Module):
                raise UserError(f"factory {spec.factory!r} returned {type(module).__name__}, not an nn.Module")
            # The code that builds the network is hashed with the weights (factory.py says why).
            sha = factory_sha256(spec.factory, factory_module, module, path)
            if path is not None:
                missing, unexpected = module.load_state_dict(_load_state(path), strict=False)
                if missing or unexpected:
                    raise UserError(
                        f"{path}: weights do not fit {spec.factory}: missing {list(missing)[:3]}, "
                        f"unexpected {list(unexpected)[:3]}"
                    )
            return ModuleModel(module, spec.name, sha, "torch", spec.input_shape)
        assert path is not None
        sha = file_sha256([path])
        if path.suffix == ".pt2":
            program = torch.export.load(str(path))
            return ModuleModel(program.module(), spec.name, sha, "torch-export", spec.input_shape)
        try:
            scripted = torch.jit.load(str(path), map_location="cpu")
            return ScriptModel(scripted, spec.name, sha, spec.input_shape)
        except RuntimeError as script_error:
            if not spec.trust_pickle:
                raise UserError(
                    f"{path}: not a TorchScript file ({str(script_error).splitlines()[0]}); a state_dict needs "
                    "`factory: module:function`, and a pickled nn.Module needs `trust_pickle: true` "
                    "(it runs code from the file)"
                ) from script_error
        module = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(module, nn.Module):
            raise UserError(f"{path}: the pickle holds {type(module).__name__}, not an nn.Module")
        return ModuleModel(module, spec.name, sha, "torch-pickle", spec.input_shape)
    except UserError:
        raise
    except Exception as e:  # a model that does not load is a user input problem: one line, exit 2
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path or spec.factory}: cannot load torch model: {first}") from e
