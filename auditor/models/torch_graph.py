"""Every value of a torch model's graph as a layer: functional results (`F.relu6(x)`, `x + y`, `torch.flatten`)
that no module returns, and, for `torch.export` programs, module outputs too. The same names for TorchScript's
inlined graphs (the section at the end; torch_model.ScriptModel runs them). docs/layers.md is the user's version.

Eager modules are traced with `torch.fx.symbolic_trace`; a `torch.export` program's `module()` is an fx graph
already. The graph is then the one mechanism: extra outputs give activations; the value replaced by a new input
gives the head from that value to the logits (with every other tensor, skip paths included, computed from the
images as before), as the TorchScript adapter does with its inlined graph.

Names (stable across runs: they depend on the code, not on counters of a tracing session):

- a module's output keeps its module path (`features.4`, `blocks.0`); in an exported program it is the last value
  computed inside that module, as for TorchScript;
- a functional result is `<module path>.<op>`, the path of the innermost module whose code makes the call
  (nothing for the top-level module) and the op's name (`layer1.0.add`, `blocks.2.relu6`, `flatten`); the k-th
  call of the same op in the same module is `<op>_<k>` from the second on (`add`, `add_1`, ...). Ops inside
  torch.nn's own modules (the conv inside a Conv2d) are that module's output, not listed again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import fx, nn

from auditor.errors import UserError
from auditor.models.base import LayerInfo
from auditor.models.torch_model import (
    AutogradHead, _as_input, _batches, _grads_at, _joined, _owned, _unknown_layer,
)

# Images in the probe run that measures shapes: two, so that a value whose first axis is not the batch is told
# apart from one that is (as for ONNX).
PROBE_BATCH = 2


@dataclass(frozen=True)
class GraphValue:
    """One nameable value: the fx node computing it, its kind (op name, or module class for a module output)."""

    name: str
    node: str
    kind: str
    index: int  # where it is listed: its node's position in the graph; a module's: its first node's


def trace_eager(module: nn.Module) -> tuple[fx.GraphModule | None, str]:
    """(the fx graph of `module`, "") or (None, why fx cannot trace it) — e.g. control flow on tensor values."""
    try:
        return fx.symbolic_trace(module), ""
    except Exception as e:  # fx raises many types (TraceError, TypeError, NotImplementedError...)
        first = " ".join(str(e).split()) or type(e).__name__
        return None, first[:200]


def _class_of(entry: Any) -> tuple[str, str]:
    """(module, class name) of an nn_module_stack type: a class (symbolic_trace) or its dotted name (export)."""
    if isinstance(entry, type):
        return entry.__module__, entry.__name__
    text = str(entry)
    mod, _, cls = text.rpartition(".")
    return mod, cls


def _is_leaf(entry: Any) -> bool:
    """fx's own rule (Tracer.is_leaf_module): torch.nn's modules are not traced into, Sequential excepted."""
    mod, cls = _class_of(entry)
    return (mod.startswith("torch.nn") or mod.startswith("torch.ao.nn")) and cls != "Sequential"


def _scopes(node: fx.Node) -> list[tuple[str, Any]]:
    """The modules `node` was computed in, outermost first, as (path, type); the top-level module left out, and a
    repeated call's `@1` suffix (torch.export) dropped: a module called twice is one layer, its last output."""
    stack = node.meta.get("nn_module_stack") or {}
    out = []
    for path, kind in stack.values():
        path = re.sub(r"@\d+", "", str(path))
        if path:
            out.append((path, kind))
    return out


def _op_name(node: fx.Node) -> str:
    target = node.target
    if node.op == "call_method":
        return str(target)
    if isinstance(target, torch._ops.OpOverload):  # aten.relu6.default -> relu6
        return target._schema.name.split("::")[-1]
    name = getattr(target, "__name__", None) or str(target)
    return name.split(".")[-1]


def _is_value(node: fx.Node) -> bool:
    return node.op in ("call_function", "call_method") or (node.op == "call_module" and node.target != "_guards_fn")


def name_values(gm: fx.GraphModule, exported: bool, taken: set[str]) -> list[GraphValue]:
    """The graph's nameable values in execution order (the module doc says how they are named).

    `exported`: the graph of a torch.export program, where module calls are inlined too, so module outputs are
    listed (the last value inside each module); for an eager trace they come from forward hooks instead and
    only functional results are listed. `taken`: names already used (module paths), never given again."""
    used = set(taken) | {path for node in gm.graph.nodes for path, _ in _scopes(node)}
    counts: dict[tuple[str, str], int] = {}
    functional: list[GraphValue] = []
    last_in: dict[str, tuple[fx.Node, Any]] = {}
    first_in: dict[str, int] = {}
    for index, node in enumerate(gm.graph.nodes):
        if not _is_value(node):
            continue
        scopes = _scopes(node)
        for path, kind in scopes:
            last_in[path] = (node, kind)
            first_in.setdefault(path, index)
        if node.op == "call_module" or (scopes and _is_leaf(scopes[-1][1])):
            continue  # a module's own output, or an op inside torch.nn's module code
        scope = scopes[-1][0] if scopes else ""
        op = _op_name(node)
        while True:
            k = counts.get((scope, op), 0)
            counts[(scope, op)] = k + 1
            short = op if k == 0 else f"{op}_{k}"
            name = f"{scope}.{short}" if scope else short
            if name not in used:
                break
        used.add(name)
        functional.append(GraphValue(name, node.name, op, index))
    # A module is listed where it starts, before the modules and values inside it (as named_modules lists them).
    modules = [
        GraphValue(path, node.name, _class_of(kind)[1], first_in[path]) for path, (node, kind) in last_in.items()
    ] if exported else []
    ranked = [(v.index, 0, v.name.count("."), v) for v in modules] + [(v.index, 1, 0, v) for v in functional]
    return [r[-1] for r in sorted(ranked, key=lambda r: r[:3])]


def _copy(gm: fx.GraphModule) -> tuple[fx.Graph, dict[str, fx.Node], fx.Node]:
    """A plain copy of the graph (no pytree in/out spec, no output node yet), its nodes by name, and the logits
    node (the first output where the model returns several, as for ONNX)."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    out = graph.graph_copy(gm.graph, env)
    while isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, fx.Node):
        raise UserError("the model's graph does not return a tensor of logits")
    return graph, {old.name: new for old, new in env.items()}, out


def _copy_of(value: Any) -> Any:
    """A tensor's copy; anything else (a shape, a tuple) as it is."""
    return value.clone() if isinstance(value, torch.Tensor) else value


def _tap(graph: fx.Graph, node: fx.Node) -> None:
    """Make the rest of the graph read a copy of `node`'s value: an in-place op downstream then changes the copy,
    never the value read out or differentiated against."""
    with graph.inserting_after(node):
        copy = graph.call_function(_copy_of, (node,))
    node.replace_all_uses_with(copy, delete_user_cb=lambda user: user is not copy)


def _may_mutate(gm: fx.GraphModule) -> Callable[[fx.Node], bool]:
    """Nodes dead code elimination must keep: fx's impure ones and anything that may write in place."""
    modules = dict(gm.named_modules())

    def impure(node: fx.Node) -> bool:
        if node.is_impure() or node.kwargs.get("inplace") or _op_name(node).endswith("_"):
            return True
        return node.op == "call_module" and bool(getattr(modules.get(str(node.target)), "inplace", False))

    return impure


class GraphLayers:
    """The values of one fx graph (`name_values`) as layers: activations, heads and logit gradients.

    `device` and `layout` are the model's: inputs go there, numpy comes back on the CPU."""

    def __init__(
        self, gm: fx.GraphModule, values: Sequence[GraphValue], model: str, device: torch.device,
        layout: torch.memory_format,
    ) -> None:
        self._gm = gm
        self._values = {v.name: v for v in values}
        self._model = model
        self._device = device
        self._layout = layout
        self._extractors: dict[tuple[str, ...], fx.GraphModule] = {}
        self._infos: list[LayerInfo] | None = None

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def index(self, name: str) -> int:
        return self._values[name].index

    def _input(self, x: np.ndarray) -> torch.Tensor:
        return _as_input(x, self._layout, self._device)

    def _extractor(self, names: tuple[str, ...]) -> fx.GraphModule:
        """The graph returning (logits, *values of `names`)."""
        if names not in self._extractors:
            graph, nodes, logits = _copy(self._gm)
            taps = [nodes[self._values[n].node] for n in names]
            for node in dict.fromkeys(taps):
                _tap(graph, node)
            graph.output((logits, *taps))
            self._extractors[names] = fx.GraphModule(self._gm, graph)
        return self._extractors[names]

    def layers(self, input_shape: tuple[int, ...]) -> list[LayerInfo]:
        """Every value that is a floating-point tensor with the batch as its first axis, with per-image shapes,
        measured by one run on zeros."""
        if self._infos is None:
            names = tuple(self._values)
            x = np.zeros((PROBE_BATCH, *input_shape), np.float32)
            try:
                with torch.no_grad():
                    out = self._extractor(names)(self._input(x))
            except Exception as e:
                raise UserError(
                    f"{self._model}: its graph does not run on a batch of {PROBE_BATCH} images "
                    f"({' '.join(str(e).split())[:200]}); an exported program needs a dynamic batch dimension "
                    "(torch.export.Dim)"
                ) from e
            self._infos = [
                LayerInfo(n, tuple(v.shape[1:]), self._values[n].kind)
                for n, v in zip(names, out[1:])
                if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() >= 2 and len(v) == PROBE_BATCH
            ]
            keep = {li.name for li in self._infos}
            self._values = {n: v for n, v in self._values.items() if n in keep}
            self._extractors.clear()
        return self._infos

    def merged(self, modules: list[LayerInfo], input_shape: tuple[int, ...]) -> list[LayerInfo]:
        """`modules` (module outputs in their own order) with the graph's values among them: each value just
        before the first module that starts after it in the graph (so a block's functional results follow its
        modules and precede the next block's)."""
        values = self.layers(input_shape)
        first: dict[str, int] = {}
        for index, node in enumerate(self._gm.graph.nodes):
            if node.op == "call_module":
                first.setdefault(str(node.target), index)
            for path, _ in _scopes(node):
                first.setdefault(path, index)
        return merge_in_order(modules, [(self._values[v.name].index, v) for v in values], first)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The graph's own logits (to check that a trace reproduces the module)."""
        with torch.no_grad():
            return self._extractor(())(self._input(x))[0].cpu().numpy()

    def _check(self, names: Sequence[str]) -> None:
        for n in names:
            if n not in self._values:
                raise _unknown_layer(n, list(self._values), self._model)

    def activations(self, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """{name: (n, *shape)} float32 from one run of the graph per batch."""
        names = tuple(dict.fromkeys(names))
        self._check(names)
        fn = self._extractor(names)
        parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        with torch.no_grad():
            for s in _batches(len(x)):
                out = fn(self._input(x[s]))
                for n, v in zip(names, out[1:]):
                    parts[n].append(_owned(v))
        return _joined(parts)

    def acts_and_grads(
        self, x: np.ndarray, names: Sequence[str], target: int
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """({name: activations}, {name: d logit[target] / d activations}), one forward and one backward pass per
        batch: every path from a value to the logits counts, tensors not computed from it keep their values."""
        names = tuple(dict.fromkeys(names))
        self._check(names)
        fn = self._extractor(names)
        acts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        grads: dict[str, list[np.ndarray]] = {n: [] for n in names}
        with torch.enable_grad():
            for s in _batches(len(x)):
                # Frozen parameters: the input is what makes autograd record the pass.
                out = fn(self._input(x[s]).requires_grad_(True))
                values = list(out[1:])
                for n, v, g in zip(names, values, _grads_at(out[0], target, values)):
                    acts[n].append(_owned(v))
                    grads[n].append(g)
        return _joined(acts), _joined(grads)

    def head(self, name: str) -> AutogradHead:
        """The graph with `name`'s value replaced by an input: run(acts, x) -> logits, on the CPU."""
        self._check([name])
        return head_at(self._gm, self._values[name].node, self._device, self._layout)


def head_at(gm: fx.GraphModule, node_name: str, device: torch.device, layout: torch.memory_format) -> AutogradHead:
    """The head of `gm` from the value of its node `node_name` to the logits: run(acts, x) -> logits (CPU), the
    graph with that value replaced by an input and what only fed it removed."""
    graph, nodes, logits = _copy(gm)
    node = nodes[node_name]
    last_input = [n for n in graph.nodes if n.op == "placeholder"][-1]
    with graph.inserting_after(last_input):
        acts_in = graph.placeholder("auditor_acts")
    node.replace_all_uses_with(acts_in)
    _tap(graph, acts_in)  # the head may write in place on its input: never on the caller's tensor
    graph.output(acts_in if logits is node else logits)
    # Ops that only fed the replaced value are dead now; the skip paths that still read `x` stay.
    fn = fx.GraphModule(gm, graph)
    fn.graph.eliminate_dead_code(is_impure_node=_may_mutate(fn))
    fn.recompile()
    reads = any(n.users for n in fn.graph.nodes if n.op == "placeholder" and n.name != acts_in.name)

    def run(acts: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        images = x.to(device).contiguous(memory_format=layout) if reads else None
        return fn(images, acts.to(device)).cpu()

    return AutogradHead(run, reads_images=reads)


class _LeafAt(fx.Tracer):
    """fx's tracer, with the module at `path` kept as one call (its output a node of its own)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name == self._path or super().is_leaf_module(m, module_qualified_name)


def module_output_head(module: nn.Module, path: str, device: torch.device,
                       layout: torch.memory_format) -> AutogradHead | None:
    """The head from the output of the module at `path` that computes only what the logits still need from
    there (the rest of the network, and the skip paths around the module from `x`), or None where fx cannot trace
    the module or calls that module more than once (then a forward hook on the whole network is the head).

    Why: a hooked head runs the whole network for every point it is asked about; RSVC's integrated gradients
    ask (ig_steps + 1) points of every patch, at a layer near the logits (benchmarks/real_scale.py: layer4 of a
    ResNet-50, where the rest is the pooling and the last linear layer)."""
    try:
        graph = _LeafAt(path).trace(module)
    except Exception:  # fx raises many types (TraceError, TypeError, NotImplementedError...)
        return None
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == path]
    if len(calls) != 1:
        return None
    return head_at(fx.GraphModule(module, graph), calls[0].name, device, layout)


def graph_for(
    module: nn.Module, model: str, exported: bool, device: torch.device, layout: torch.memory_format,
    predict: Callable[[np.ndarray], np.ndarray], input_shape: tuple[int, ...],
) -> tuple[GraphLayers | None, str]:
    """The graph values of a ModuleModel's module, or (None, one line saying why functional results are not
    listed). An eager module's trace must reproduce its logits on a probe batch: symbolic tracing runs Python
    code once, so anything decided at trace time differently from a real call would otherwise be served as the
    model."""
    taken = {n for n, _ in module.named_modules() if n}
    if exported:
        if not isinstance(module, fx.GraphModule):
            return None, f"functional results are not listed: {model}'s program has no fx graph"
        return GraphLayers(module, name_values(module, True, taken), model, device, layout), ""
    gm, why = trace_eager(module)
    if gm is None:
        return None, f"functional results are not listed: torch.fx cannot trace {model} ({why})"
    graph = GraphLayers(gm, name_values(gm, False, taken), model, device, layout)
    x = np.random.default_rng(0).normal(size=(PROBE_BATCH, *input_shape)).astype(np.float32)
    try:
        got, want = graph.logits(x), predict(x)
        same = got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-4, atol=1e-5 * (1 + np.abs(want).max())))
        graph.layers(input_shape)
    except Exception as e:  # the trace does not even run: the model is still served through its modules
        same, why = False, " ".join(str(e).split())[:200]
    if not same:
        return None, f"functional results are not listed: the torch.fx trace of {model} does not reproduce it{f' ({why})' if why else ''}"
    return graph, ""


# ------------------------------------------------------------------------------------------------- TorchScript
# The same names for a TorchScript file's inlined graph, whose ops carry their module hierarchy
# (`blocks(Sequential).0(Block).UNKNOWN_INSTANCE(UNKNOWN_TYPE)` for an F.relu6 called in a Block).

_SCOPE = re.compile(r"([^.()]+)\(([^()]*)\)")


def _script_scope(hierarchy: str) -> tuple[str, str]:
    """-> (module path, class of the innermost module; "" at the top level)."""
    parts = [(m.group(1), m.group(2)) for m in _SCOPE.finditer(hierarchy)
             if m.group(1) not in ("SELF", "UNKNOWN_INSTANCE")]
    return ".".join(p for p, _ in parts), (parts[-1][1] if parts else "")


def _script_leaf(cls: str) -> bool:
    """A torch.nn module class (by name: the graph keeps no more), Sequential excepted: as `_is_leaf`."""
    found = getattr(nn, cls, None)
    return isinstance(found, type) and issubclass(found, nn.Module) and cls != "Sequential"


def script_functional(graph: torch._C.Graph, taken: set[str]) -> list[tuple[str, torch._C.Value, str, int]]:
    """(name, value, op, position) of every functional result among the graph's top-level ops, named as in
    `name_values`. In-place ops (`add_`) are left out: their value is another op's tensor, changed."""
    used = set(taken)
    counts: dict[tuple[str, str], int] = {}
    out = []
    for index, node in enumerate(graph.nodes()):
        kind = node.kind()
        if not kind.startswith("aten::") or kind.endswith("_") or node.outputsSize() != 1:
            continue
        if not isinstance(node.output().type(), torch._C.TensorType):
            continue
        scope, cls = _script_scope(node.getModuleHierarchy())
        if cls and _script_leaf(cls):
            continue
        op = kind.split("::", 1)[1]
        while True:
            k = counts.get((scope, op), 0)
            counts[(scope, op)] = k + 1
            name = (f"{scope}." if scope else "") + (op if k == 0 else f"{op}_{k}")
            if name not in used:
                break
        used.add(name)
        out.append((name, node.output(), op, index))
    return out


def script_first_nodes(graph: torch._C.Graph) -> dict[str, int]:
    """Module path -> position of the first top-level op inside it."""
    first: dict[str, int] = {}
    for index, node in enumerate(graph.nodes()):
        path, _ = _script_scope(node.getModuleHierarchy())
        parts = path.split(".") if path else []
        for i in range(1, len(parts) + 1):
            first.setdefault(".".join(parts[:i]), index)
    return first


def merge_in_order(modules: list[LayerInfo], values: list[tuple[int, LayerInfo]], first: dict[str, int]) -> list[LayerInfo]:
    """`modules` in their own order with `values` ((position, info), by position) among them: each value just
    before the first module that starts after it (a block's functional results follow its modules)."""
    out: list[LayerInfo] = []
    i = 0
    for m in modules:
        at = first.get(m.name)
        while at is not None and i < len(values) and values[i][0] < at:
            out.append(values[i][1])
            i += 1
        out.append(m)
    return out + [v for _, v in values[i:]]


def tap_script(graph: torch._C.Graph, value: torch._C.Value) -> None:
    """`_tap` for a TorchScript graph: the ops after `value`'s producer read a clone of it."""
    none = graph.insertConstant(None)
    clone = graph.create("aten::clone", [value, none])
    if value.node().kind() == "prim::Param":  # a graph input: the clone goes first
        clone.insertBefore(next(iter(graph.nodes())))
    else:
        clone.insertAfter(value.node())
    none.node().moveBefore(clone)
    clone.output().setType(value.type())
    value.replaceAllUsesAfterNodeWith(clone, clone.output())
