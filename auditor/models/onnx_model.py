"""ONNX adapter: the Model protocol over onnxruntime (CPUExecutionProvider).

Layers are ONNX tensor names (e.g. ``/features/features.3/Relu_output_0`` from torch's exporter). Activations come
from one session run per batch on a copy of the graph whose outputs include the requested tensors. The head from a
layer to the logits is the subgraph cut out with ``onnx.utils.Extractor``; onnxruntime has no gradients for
inference sessions, so the head's derivatives are central finite differences, batched into large runs.

Torch's legacy exporter names tensors by module path and op (``/layer1/layer1.0/conv1/Conv_output_0``); functional
calls outside a module get counters (``/Relu_output_0``, ``/Relu_1_output_0``); the output tensor takes the name
given to ``output_names``; and in eval mode BatchNorm is folded into the Conv before it, so a ``conv1/Conv`` tensor
is bn1(conv1(x)) and there is no BatchNorm tensor.

Numpy in, numpy out, float32, NCHW. Preprocessing lives in the policy: ``x`` is already resized and normalised.
"""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import onnx
import onnx.checker
import onnx.external_data_helper
import onnx.helper
import onnx.shape_inference
import onnx.utils
import onnxruntime as ort

from auditor.errors import CheckError, UserError, require_finite
from auditor.models.base import LayerInfo

# Images per session run in predict/activations: bounds the memory of the intermediate tensors.
BATCH_SIZE = 64
# Rows (perturbed activations) per head run in the finite differences, and the memory those rows may take.
MAX_HEAD_ROWS = 4096
HEAD_BYTES_BUDGET = 256 * 2**20
# Relative step of the central differences: each perturbation moves the activation of one image by
# FD_RELATIVE_STEP times its own norm (see `_steps` for why this value).
FD_RELATIVE_STEP = 5e-4
# Images in the shape-probing run when the batch axis is dynamic. Two, not one, so that a tensor whose first axis is
# not the batch (sequence-first attention internals) is told apart from a batch-first one.
PROBE_BATCH = 2
# Derived sessions (activations with extra outputs) kept per set of layer names.
MAX_CACHED_SESSIONS = 8

_FLOAT = onnx.TensorProto.FLOAT
_Dim = int | str | None  # a known size, a symbolic name, or unknown


# --------------------------------------------------------------------------------------------- small helpers


def _one_line(exc: BaseException) -> str:
    """The exception's message squeezed onto one line (UserError messages are one line)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _load_error(path: Path, reason: str) -> UserError:
    return UserError(f"{path}: cannot load ONNX model: {reason}")


def _session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 0  # onnxruntime's default: one thread per physical core
    options.log_severity_level = 3  # errors only: keeps stderr free of onnxruntime's warnings
    return options


def _session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    """A CPU session from a model proto (serialized here) or a file path."""
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, _session_options(), providers=["CPUExecutionProvider"])


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto stored in a graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t
            yield from attr.tensors
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def _external_data_files(model: onnx.ModelProto, base_dir: Path) -> list[Path]:
    """The external-data files a model refers to (paths relative to the model's folder), sorted, unique."""
    locations = {
        onnx.external_data_helper.ExternalDataInfo(tensor).location
        for tensor in _graph_tensors(model.graph)
        if onnx.external_data_helper.uses_external_data(tensor)
    }
    return sorted(base_dir / location for location in locations)


def _sha256(paths: Sequence[Path]) -> str:
    """sha256 of the files' bytes, concatenated in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(2**20), b""):
                digest.update(block)
    return digest.hexdigest()


def _type_and_dims(value: onnx.ValueInfoProto) -> tuple[int, list[_Dim] | None]:
    """(elem_type, dims) of a tensor value info; elem_type 0 and dims None where unknown."""
    if not value.type.HasField("tensor_type"):
        return 0, None
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return tensor_type.elem_type, None
    dims: list[_Dim] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(dim.dim_value)
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(dim.dim_param)
        else:
            dims.append(None)
    return tensor_type.elem_type, dims


def _all_known(dims: Sequence[_Dim]) -> bool:
    return all(isinstance(d, int) for d in dims)


def _with_outputs(model: onnx.ModelProto, names: Sequence[str], typed: bool = True) -> onnx.ModelProto:
    """A copy of `model` whose graph outputs also include `names` (float32 tensors, or untyped if not `typed`)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {out.name for out in copy.graph.output}
    for name in names:
        if name in present:
            continue
        if typed:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, _FLOAT, None))
        else:
            # No type: onnxruntime resolves it from the producing node (used to probe unknown tensors).
            copy.graph.output.append(onnx.ValueInfoProto(name=name))
        present.add(name)
    return copy


def _run_batched(
    session: ort.InferenceSession,
    feeds: dict[str, np.ndarray],
    outputs: Sequence[str],
    out_shapes: Sequence[tuple[int, ...]],
    batch_size: int,
    fixed_batch: int | None,
) -> list[np.ndarray]:
    """Run `session` over the rows of `feeds` in batches and concatenate the outputs.

    Parameters
    ----------
    feeds : {input name: (n, ...)} with the same n for every input.
    outputs : names of the outputs to fetch.
    out_shapes : per-row shape of each output; only used to shape the result when n == 0.
    batch_size : rows per run when the graph's batch axis is dynamic.
    fixed_batch : the batch size the graph was exported with, or None if dynamic. The last batch is then padded
        with zeros (and the padding rows dropped), since the graph accepts no other size.

    Returns
    -------
    One array (n, *out_shape) per output.
    """
    n = len(next(iter(feeds.values())))
    step = fixed_batch or batch_size
    parts: list[list[np.ndarray]] = [[] for _ in outputs]
    for start in range(0, n, step):
        chunk = {name: value[start : start + step] for name, value in feeds.items()}
        m = len(next(iter(chunk.values())))
        if fixed_batch is not None and m < fixed_batch:
            chunk = {
                name: np.concatenate([value, np.zeros((fixed_batch - m, *value.shape[1:]), value.dtype)])
                for name, value in chunk.items()
            }
        for part, result in zip(parts, session.run(list(outputs), chunk)):
            part.append(np.asarray(result)[:m])
    return [
        np.concatenate(part) if part else np.zeros((0, *shape), np.float32) for part, shape in zip(parts, out_shapes)
    ]


# --------------------------------------------------------------------------------------------- the model


def load_onnx(path: Path | str, **kw: str | None) -> OnnxModel:
    """Load an ONNX image classifier: ``OnnxModel(path, **kw)`` (name, input_name, output_name)."""
    return OnnxModel(Path(path), **kw)


class OnnxModel:
    """An ONNX image classifier run by onnxruntime on the CPU.

    Parameters
    ----------
    path : the .onnx file. External-data files next to it are loaded and hashed too.
    name : display name; defaults to the file stem.
    input_name : the image input, needed only when the graph has several inputs.
    output_name : the logits output; defaults to the graph's first output.

    Raises
    ------
    UserError
        The file is missing, is not ONNX, its graph is invalid, or the input is not a float32 (n, C, H, W) image with
        a fixed C, H and W, or the output is not (n, K).
    """

    framework = "onnx"

    def __init__(
        self,
        path: Path,
        name: str | None = None,
        input_name: str | None = None,
        output_name: str | None = None,
    ) -> None:
        path = Path(path)
        self.path = path
        self.name = name or path.stem
        self._model, data_files = self._load(path)
        graph = self._model.graph
        self._initializers = {t.name for t in graph.initializer}
        self._input = self._pick_input(input_name)
        self._output = self._pick_output(output_name)
        self.input_shape, self._fixed_batch, self._batch_dim = self._read_input_shape()
        try:
            self._session = _session(str(path))
        except Exception as exc:  # onnxruntime raises its own exception types for unsupported graphs
            raise _load_error(path, _one_line(exc)) from exc
        self.sha256 = _sha256([path, *data_files])

        # Graph structure: which node produces each tensor, and which tensors depend on the image.
        self._producer: dict[str, onnx.NodeProto] = {}
        self._order: dict[str, int] = {}  # tensor -> index of its producing node (topological order)
        for index, node in enumerate(graph.node):
            for out in node.output:
                if out:
                    self._producer[out] = node
                    self._order[out] = index
        self._dependent = self._depending_on({self._input})
        self._layers = self._find_layers()
        logits = self._layers.get(self._output)
        if logits is None or len(logits.shape) != 1:
            shape = "unknown" if logits is None else f"(n, {', '.join(map(str, logits.shape))})"
            raise UserError(f"{path}: output {self._output!r} has shape {shape}; expected float32 logits (n, K)")
        self._num_classes = logits.shape[0]
        self._annotate_layers()
        self._sessions: dict[frozenset[str], ort.InferenceSession] = {}
        self._heads: dict[str, OnnxHead] = {}

    # ----------------------------------------------------------------------------------------- loading

    @staticmethod
    def _load(path: Path) -> tuple[onnx.ModelProto, list[Path]]:
        """Parse, load external data, and check the model; every failure is a UserError.

        Returns
        -------
        The model (external data loaded into it) and its external-data files.
        """
        if not path.is_file():
            raise _load_error(path, "no such file")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
            raise _load_error(path, f"not an ONNX file ({_one_line(exc)})") from exc
        # Listed before loading: once loaded, the tensors no longer say where their data came from.
        data_files = _external_data_files(model, path.parent)
        for data_file in data_files:
            if not data_file.is_file():
                raise _load_error(path, f"missing external data file {data_file}")
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
            if model.ByteSize() > onnx.checker.MAXIMUM_PROTOBUF:
                onnx.checker.check_model(str(path))  # the in-memory checker cannot serialize > 2 GB
            else:
                onnx.checker.check_model(model)
        except Exception as exc:
            raise _load_error(path, f"invalid graph ({_one_line(exc)})") from exc
        if not model.graph.node or not model.graph.input or not model.graph.output:
            raise _load_error(path, "invalid graph (no nodes, inputs or outputs)")
        return model, data_files

    def _pick_input(self, input_name: str | None) -> str:
        # Old exporters list initializers among the graph inputs; those are weights, not images.
        inputs = [value.name for value in self._model.graph.input if value.name not in self._initializers]
        if input_name is not None:
            if input_name not in inputs:
                raise UserError(f"{self.path}: no input {input_name!r}; the model's inputs are {inputs}")
            return input_name
        if len(inputs) != 1:
            raise UserError(f"{self.path}: the model has inputs {inputs}; name the image input (input_name)")
        return inputs[0]

    def _pick_output(self, output_name: str | None) -> str:
        outputs = [value.name for value in self._model.graph.output]
        if output_name is not None:
            if output_name not in outputs:
                raise UserError(f"{self.path}: no output {output_name!r}; the model's outputs are {outputs}")
            return output_name
        # Classifiers that return several tensors put the main logits first (torch's aux-logit models do).
        return outputs[0]

    def _read_input_shape(self) -> tuple[tuple[int, int, int], int | None, _Dim]:
        """(C, H, W), the fixed batch size (None if dynamic), and the batch dim as declared."""
        value = next(v for v in self._model.graph.input if v.name == self._input)
        elem_type, dims = _type_and_dims(value)
        if elem_type != _FLOAT:
            raise UserError(f"{self.path}: input {self._input!r} must be float32 (ONNX elem_type {elem_type})")
        if dims is None or len(dims) != 4:
            shown = "unknown" if dims is None else f"{len(dims)}-D"
            raise UserError(f"{self.path}: input {self._input!r} must be a 4-D (n, C, H, W) image batch, got {shown}")
        chw = dims[1:]
        if not all(isinstance(d, int) for d in chw):
            shown = ", ".join(str(d) if d is not None else "?" for d in chw)
            raise UserError(
                f"{self.path}: input {self._input!r} has symbolic image dims ({shown}); "
                "export the model with a fixed image size"
            )
        fixed_batch = dims[0] if isinstance(dims[0], int) else None
        return (int(chw[0]), int(chw[1]), int(chw[2])), fixed_batch, dims[0]

    # ----------------------------------------------------------------------------------------- graph analysis

    def _depending_on(self, sources: set[str]) -> set[str]:
        """Tensors computed (directly or not) from any of `sources`, sources included."""
        reached = set(sources)
        for node in self._model.graph.node:  # topological order: one pass suffices
            if any(name in reached for name in node.input if name):
                reached.update(out for out in node.output if out)
        return reached

    def _find_layers(self) -> dict[str, LayerInfo]:
        """Every float32, batch-first tensor computed from the image, in topological order.

        Shapes come from ONNX shape inference; tensors it leaves incomplete are measured by one run on zeros with
        those tensors as extra outputs. Tensors whose first axis is not the batch are left out: activations must be
        (n, *shape).
        """
        try:
            inferred = onnx.shape_inference.infer_shapes(self._model, data_prop=True)
        except Exception:  # inference is best effort; the probe run below covers what it cannot do
            inferred = self._model
        known = {v.name: _type_and_dims(v) for v in (*inferred.graph.value_info, *inferred.graph.output)}
        candidates = [
            out
            for node in self._model.graph.node
            for out in node.output
            if out and out in self._dependent and out not in self._initializers and out != self._input
        ]
        shapes: dict[str, tuple[int, ...]] = {}
        to_probe: list[str] = []
        for name in candidates:
            elem_type, dims = known.get(name, (0, None))
            if elem_type not in (0, _FLOAT):
                continue  # a known non-float tensor (shapes, indices, masks)
            if elem_type == _FLOAT and dims and self._is_batch_dim(dims[0]) and _all_known(dims[1:]):
                shapes[name] = tuple(int(d) for d in dims[1:])  # type: ignore[arg-type]
            else:
                to_probe.append(name)
        if to_probe:
            shapes.update(self._probe_shapes(to_probe))
        return {
            name: LayerInfo(name=name, shape=shapes[name], kind=self._producer[name].op_type)
            for name in candidates
            if name in shapes and len(shapes[name]) >= 1
        }

    def _is_batch_dim(self, dim: _Dim) -> bool:
        """Whether an inferred first dim is certainly the input's batch axis."""
        if self._fixed_batch is not None:
            return dim == self._fixed_batch
        return isinstance(self._batch_dim, str) and dim == self._batch_dim

    def _probe_shapes(self, names: list[str]) -> dict[str, tuple[int, ...]]:
        """Per-image shapes of float32 batch-first tensors among `names`, from one run on a batch of zeros."""
        batch = self._fixed_batch or PROBE_BATCH
        try:
            session = _session(_with_outputs(self._model, names, typed=False))
            values = session.run(names, {self._input: np.zeros((batch, *self.input_shape), np.float32)})
        except Exception as exc:
            raise _load_error(self.path, f"a run on zeros failed ({_one_line(exc)})") from exc
        return {
            name: tuple(value.shape[1:])
            for name, value in zip(names, values)
            if isinstance(value, np.ndarray) and value.dtype == np.float32 and value.ndim >= 2 and len(value) == batch
        }

    def _annotate_layers(self) -> None:
        """Give every layer a value_info with its full shape: the Extractor needs one for each tensor it cuts at.

        Done in place (value_infos are type hints, the computation is unchanged), so no second copy of the weights.
        """
        graph = self._model.graph
        kept = [value for value in graph.value_info if value.name not in self._layers]
        del graph.value_info[:]
        graph.value_info.extend(kept)
        outputs = {value.name for value in graph.output}
        batch = self._batch_dim if self._batch_dim is not None else "n"
        for info in self._layers.values():
            if info.name not in outputs:
                graph.value_info.append(onnx.helper.make_tensor_value_info(info.name, _FLOAT, [batch, *info.shape]))

    # ----------------------------------------------------------------------------------------- running

    def _check_images(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            expected = ", ".join(map(str, self.input_shape))
            raise UserError(f"{self.name}: image batch has shape {tuple(x.shape)}; expected (n, {expected})")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _check_layer(self, layer: str) -> LayerInfo:
        info = self._layers.get(layer)
        if info is None:
            close = difflib.get_close_matches(layer, list(self._layers), n=5, cutoff=0.5)
            hint = f"; close names: {', '.join(close)}" if close else f"; {len(self._layers)} layers, see layers()"
            raise UserError(f"{self.name}: no layer {layer!r}{hint}")
        return info

    def _outputs(self, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        """{name: (n, *shape)} for layers and/or the image input itself, from one session run per batch."""
        x = self._check_images(x)
        wanted = [name for name in dict.fromkeys(names) if name != self._input]
        result = {self._input: x} if self._input in names else {}
        if not wanted:
            return result
        key = frozenset(wanted)
        session = self._sessions.get(key)
        if session is None:
            session = _session(_with_outputs(self._model, sorted(key)))
            if len(self._sessions) >= MAX_CACHED_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))  # drop the oldest
            self._sessions[key] = session
        shapes = [self._layers[name].shape for name in wanted]
        values = _run_batched(session, {self._input: x}, wanted, shapes, BATCH_SIZE, self._fixed_batch)
        result.update({name: value.astype(np.float32, copy=False) for name, value in zip(wanted, values)})
        return result

    # ----------------------------------------------------------------------------------------- the protocol

    def layers(self) -> list[LayerInfo]:
        """Every float32 intermediate tensor (the logits included), in topological order, with per-image shapes."""
        return list(self._layers.values())

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, C, H, W) float32 -> (n, K) float32 logits, in batches of BATCH_SIZE."""
        x = self._check_images(x)
        (logits,) = _run_batched(
            self._session, {self._input: x}, [self._output], [(self._num_classes,)], BATCH_SIZE, self._fixed_batch
        )
        return require_finite(logits.astype(np.float32, copy=False), f"model {self.name}, logits")

    def activations(self, x: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]:
        """One session run per batch for all requested layers: {layer: (n, *layer_shape)} float32."""
        for layer in layers:
            self._check_layer(layer)
        values = self._outputs(x, list(layers))
        return {layer: values[layer] for layer in layers}

    def head(self, layer: str) -> OnnxHead:
        """The network from `layer` to the logits (cached per layer)."""
        info = self._check_layer(layer)
        if layer not in self._heads:
            self._heads[layer] = self._build_head(info)
        return self._heads[layer]

    # ----------------------------------------------------------------------------------------- heads

    def _head_extras(self, layer: str) -> list[str]:
        """Tensors besides `layer` that the rest of the network needs: the ends of skip paths around the layer.

        Walking back from the logits, a tensor computed from the layer is part of the head (its producer is kept); a
        tensor computed from the image but not from the layer must be fed, if it is batch-first (a layer or the image
        itself), else its producer is kept too (shape arithmetic such as Shape(x) -> Reshape, whose values would be
        wrong if fed for a different number of rows). Constants (not computed from the image) stay in the head.
        """
        downstream = self._depending_on({layer})
        if self._output not in downstream:
            raise UserError(f"{self.name}: the output {self._output!r} does not depend on layer {layer!r}")
        extras: set[str] = set()
        seen: set[str] = set()
        stack = [self._output]
        while stack:
            name = stack.pop()
            if not name or name in seen or name == layer or name in self._initializers:
                continue
            seen.add(name)
            feedable = name == self._input or name in self._layers
            if name in self._dependent and name not in downstream and feedable:
                extras.add(name)
                continue
            node = self._producer.get(name)
            if node is not None:
                stack.extend(node.input)
        # Deterministic order: the image first, then tensors in topological order.
        return sorted(extras, key=lambda name: self._order.get(name, -1))

    def _build_head(self, info: LayerInfo) -> OnnxHead:
        if info.name == self._output:
            return OnnxHead(self, info, session=None, extras=[])  # the head of the logits is the identity
        extras = self._head_extras(info.name)
        try:
            cut = onnx.utils.Extractor(self._model).extract_model([info.name, *extras], [self._output])
            session = _session(cut)
        except Exception as exc:
            raise CheckError(f"{self.name}: cannot cut the head at layer {info.name!r}: {_one_line(exc)}") from exc
        return OnnxHead(self, info, session=session, extras=extras)


# --------------------------------------------------------------------------------------------- the head


class OnnxHead:
    """The network from one layer to the logits, as a cut-out ONNX subgraph.

    Derivatives are central finite differences (onnxruntime inference sessions have no gradients): every
    (image, direction, sign) perturbation of the activations becomes one row, and rows are stacked into runs of up
    to MAX_HEAD_ROWS (and HEAD_BYTES_BUDGET bytes), so the cost is a few large runs, not a loop per image.

    Parameters
    ----------
    model : the model the head belongs to (computes the extra inputs from the images).
    layer : the layer the head starts at.
    session : the head's session, or None for the identity head of the logits layer.
    extras : tensors besides the layer that the head needs (skip paths), computed from `x` by the full model.
    """

    def __init__(
        self, model: OnnxModel, layer: LayerInfo, session: ort.InferenceSession | None, extras: list[str]
    ) -> None:
        self.layer = layer.name
        self.shape = layer.shape
        self.extras = extras
        self._model = model
        self._session = session
        self._size = int(np.prod(self.shape))

    # ----------------------------------------------------------------------------------------- plumbing

    def _check_acts(self, acts: np.ndarray) -> np.ndarray:
        acts = np.asarray(acts)
        if tuple(acts.shape[1:]) != self.shape:
            raise ValueError(f"activations of {self.layer!r} must be (n, *{self.shape}), got {acts.shape}")
        return np.ascontiguousarray(acts, dtype=np.float32)

    def _extra_values(self, x: np.ndarray | None, n: int) -> dict[str, np.ndarray]:
        """{extra tensor: (n, ...)} from one run of the full model on the images `x` (not read if no extras)."""
        if not self.extras:
            return {}
        if x is None or len(x) != n:
            raise ValueError(f"the head at {self.layer!r} needs the {n} input images (skip paths: {self.extras})")
        return self._model._outputs(x, self.extras)

    def _run(self, rows: np.ndarray, extras: dict[str, np.ndarray]) -> np.ndarray:
        """Logits (m, K) for activation rows (m, *shape) with matching extra rows, in runs of `_rows_per_run`."""
        if self._session is None:
            return rows.reshape(len(rows), -1).astype(np.float32, copy=False)
        model = self._model
        feeds = {self.layer: rows, **extras}
        (logits,) = _run_batched(
            self._session, feeds, [model._output], [(model._num_classes,)], self._rows_per_run(), model._fixed_batch
        )
        return logits

    def _rows_per_run(self) -> int:
        """How many rows fit one head run (even: each + row is paired with its - row)."""
        row_bytes = 4 * self._size
        for name in self.extras:
            info = self._model._layers.get(name)
            row_bytes += 4 * int(np.prod(info.shape if info is not None else self._model.input_shape))
        rows = min(MAX_HEAD_ROWS, HEAD_BYTES_BUDGET // max(row_bytes, 1))
        return max(2, rows - rows % 2)

    @staticmethod
    def _steps(acts_flat: np.ndarray, direction_norms: np.ndarray) -> np.ndarray:
        """Finite-difference steps eps (n, k) with eps * |v_j| = FD_RELATIVE_STEP * |a_i|.

        Equivalently eps = FD_RELATIVE_STEP * rms(a_i) / rms(v_j): each perturbation is a fixed fraction of the
        image's own activation, whatever the layer's units and the direction's norm.

        Why 5e-4. The graph is float32 and onnxruntime has no float64 Conv, so the step trades two errors:
        - rounding: each logit carries noise of a few to tens of ulps of the magnitudes summed inside the head;
          divided by the step, it grows as the step shrinks (noise-dominated below ~2e-4 on the test networks);
        - kinks: a ReLU/MaxPool head is piecewise linear, so central differences are exact unless a ReLU's zero
          or a MaxPool near-tie lies within the step, and then return the slope averaged over the step; the
          share of such units grows with the step (the same step in float64 torch gives the same error, so at
          5e-4 and above this, not rounding, is the error).
        Measured against torch autograd, with the error relative to |grad| * |v| (the largest the derivative can
        be): median ~1e-5 to 1e-4; the largest are images with a kink within the step, ~1e-3 on a 16-layer
        residual net and up to ~3e-2 on 3-layer test nets (where one unit is a large share of the gradient).
        Steps from 3e-4 to 1e-3 do about equally well overall; 5e-4 sits in the middle. For channel-pooled
        directions (one per channel, over all positions) in deep random-weight ReLU nets the error is ~1e-2 of
        the pooled gradient's norm at every step: kinks are too dense for float32 central differences there.
        """
        scale = np.linalg.norm(acts_flat.astype(np.float64), axis=1)
        # All-zero activations (a dead image): step as if the activation had unit rms.
        scale = np.where(scale > 0, scale, np.sqrt(acts_flat.shape[1]))
        norms = np.where(direction_norms > 0, direction_norms, 1.0)  # zero direction: rows equal, derivative 0
        return FD_RELATIVE_STEP * scale[:, None] / norms[None, :]

    def _central_differences(
        self,
        acts_flat: np.ndarray,
        extras: dict[str, np.ndarray],
        target: int,
        steps: np.ndarray,
        perturb: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None],
    ) -> np.ndarray:
        """(h(a_i + eps_ij v_j) - h(a_i - eps_ij v_j)) / (2 eps_ij) of logit[target], for all i, j.

        The n * k pairs of rows are laid out flat (pair p is image p // k, direction p % k) and cut into runs of
        `_rows_per_run` rows: the + rows of a run first, then its - rows.

        Parameters
        ----------
        acts_flat : (n, d) float32 activations, flattened.
        extras : {tensor: (n, ...)} extra head inputs, repeated for every row of their image.
        steps : (n, k) positive step sizes eps_ij.
        perturb : (rows (m, d) float32, image indices i (m,), direction indices j (m,), signed steps (m,)) -> None;
            adds step * v_j (or v_ij, for per-image directions) to each row in place.

        Returns
        -------
        (n, k) float64 directional derivatives.
        """
        n, k = steps.shape
        pairs = self._rows_per_run() // 2
        result = np.zeros(n * k)
        for start in range(0, n * k, pairs):
            flat = np.arange(start, min(start + pairs, n * k))
            i, j = flat // k, flat % k
            step = steps[i, j]
            m = len(flat)
            rows = np.concatenate([acts_flat[i], acts_flat[i]])
            perturb(rows[:m], i, j, step)
            perturb(rows[m:], i, j, -step)
            feeds = {name: np.concatenate([value[i], value[i]]) for name, value in extras.items()}
            logits = self._run(rows.reshape(-1, *self.shape), feeds)[:, target].astype(np.float64)
            result[flat] = (logits[:m] - logits[m:]) / (2 * step)
        return result.reshape(n, k)

    def _check_target(self, target: int) -> int:
        classes = self._model._num_classes
        if not 0 <= int(target) < classes:
            raise ValueError(f"target class {target} out of range [0, {classes})")
        return int(target)

    # ----------------------------------------------------------------------------------------- the protocol

    def logits(self, acts: np.ndarray, x: np.ndarray) -> np.ndarray:
        """(n, *layer_shape) activations (+ the images x, read only for skip paths) -> (n, K) float32 logits."""
        acts = self._check_acts(acts)
        return self._run(acts, self._extra_values(x, len(acts))).astype(np.float32, copy=False)

    def directional(self, acts: np.ndarray, x: np.ndarray, directions: np.ndarray, target: int) -> np.ndarray:
        """Directional derivatives of logit[target] along each direction.

        Parameters
        ----------
        acts : (n, *layer_shape) activations of the images `x`.
        x : (n, C, H, W) images; read only if the head has skip paths (extras).
        directions : (k, *layer_shape) directions (any norm; the derivative scales with it).
        target : class index.

        Returns
        -------
        (n, k) float32: d logit[target] / d acts . direction, by central finite differences.
        """
        acts = self._check_acts(acts)
        target = self._check_target(target)
        directions = np.asarray(directions)
        if tuple(directions.shape[1:]) != self.shape:
            raise ValueError(f"directions must be (k, *{self.shape}), got {directions.shape}")
        dirs = directions.astype(np.float64).reshape(-1, self._size)  # float64 for the norms
        n = len(acts)
        if self._session is None:  # identity head: the derivative of logit[target] is the direction's coordinate
            return np.broadcast_to(dirs[:, target].astype(np.float32), (n, len(dirs))).copy()
        acts_flat = acts.reshape(n, -1)
        steps = self._steps(acts_flat, np.linalg.norm(dirs, axis=1))

        dirs32 = dirs.astype(np.float32)

        def along(rows: np.ndarray, _i: np.ndarray, j: np.ndarray, step: np.ndarray) -> None:
            # The sum is rounded to float32 (u |a| per coordinate), as any float32 input to the graph must be.
            rows += step[:, None].astype(np.float32) * dirs32[j]

        extras = self._extra_values(x, n)
        return self._central_differences(acts_flat, extras, target, steps, along).astype(np.float32)

    def directional_per_image(
        self, acts: np.ndarray, x: np.ndarray, directions: np.ndarray, target: int
    ) -> np.ndarray:
        """Like `directional`, with directions of their own for every image: directions (n, k, *layer_shape) ->
        (n, k). SACV needs it: its direction for image i is the CAV restricted to the positions where the
        concept's relevance on image i is positive, a different direction per image."""
        acts = self._check_acts(acts)
        target = self._check_target(target)
        n = len(acts)
        directions = np.asarray(directions)
        if directions.shape[0] != n or tuple(directions.shape[2:]) != self.shape:
            raise ValueError(f"directions must be ({n}, k, *{self.shape}), got {directions.shape}")
        k = directions.shape[1]
        dirs = directions.reshape(n, k, self._size)
        if self._session is None:
            return dirs[:, :, target].astype(np.float32)
        acts_flat = acts.reshape(n, -1)
        norms = np.linalg.norm(dirs.astype(np.float64), axis=2)  # (n, k)
        scale = self._steps(acts_flat, np.ones(1))[:, 0] / FD_RELATIVE_STEP  # |a_i|, as `_steps` defines it
        steps = FD_RELATIVE_STEP * scale[:, None] / np.where(norms > 0, norms, 1.0)
        dirs32 = dirs.astype(np.float32)

        def along(rows: np.ndarray, i: np.ndarray, j: np.ndarray, step: np.ndarray) -> None:
            rows += step[:, None].astype(np.float32) * dirs32[i, j]

        extras = self._extra_values(x, n)
        return self._central_differences(acts_flat, extras, target, steps, along).astype(np.float32)

    def grad(self, acts: np.ndarray, x: np.ndarray, target: int) -> np.ndarray:
        """Full gradient d logit[target] / d acts, shape (n, *layer_shape) float32.

        Expensive: central differences along every coordinate (the identity basis) cost 2 * n * prod(layer_shape)
        head rows. Meant for small layers; prefer `directional` for large ones.
        """
        acts = self._check_acts(acts)
        target = self._check_target(target)
        n = len(acts)
        if self._session is None:
            out = np.zeros((n, self._size), np.float32)
            out[:, target] = 1.0
            return out.reshape(n, *self.shape)
        acts_flat = acts.reshape(n, -1)
        steps = self._steps(acts_flat, np.ones(self._size))

        def along_axis(rows: np.ndarray, _i: np.ndarray, j: np.ndarray, step: np.ndarray) -> None:
            rows[np.arange(len(rows)), j] += step  # the identity basis is never built: coordinate j of each row

        extras = self._extra_values(x, n)
        grads = self._central_differences(acts_flat, extras, target, steps, along_axis)
        return grads.astype(np.float32).reshape(n, *self.shape)
