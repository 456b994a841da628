"""ONNX adapter: the Model protocol over onnxruntime (CPUExecutionProvider; CUDA's first with `--device cuda`).

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
from pathlib import Path
from typing import Sequence

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
from auditor.models.onnx_graph import (  # noqa: F401
    _FLOAT, _all_known, _Dim, _external_data_files, _load_error, _one_line, _run_batched, _session, _sha256,
    _type_and_dims, _with_outputs,
)
from auditor.models.onnx_head import OnnxHead

# Images per session run in predict/activations: bounds the memory of the intermediate tensors.
BATCH_SIZE = 64
# Images in the shape-probing run when the batch axis is dynamic. Two, not one, so that a tensor whose first axis is
# not the batch (sequence-first attention internals) is told apart from a batch-first one.
PROBE_BATCH = 2
# Derived sessions (activations with extra outputs) kept per set of layer names.
MAX_CACHED_SESSIONS = 8




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
    providers : onnxruntime execution providers in order of preference (auditor.models.device.onnx_providers).

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
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        path = Path(path)
        self.path = path
        self.name = name or path.stem
        self._providers = tuple(providers)
        self._model, data_files = self._load(path)
        graph = self._model.graph
        self._initializers = {t.name for t in graph.initializer}
        self._input = self._pick_input(input_name)
        self._output = self._pick_output(output_name)
        self.input_shape, self._fixed_batch, self._batch_dim = self._read_input_shape()
        try:
            self._session = _session(str(path), self._providers)
        except Exception as exc:  # onnxruntime raises its own exception types for unsupported graphs
            raise _load_error(path, _one_line(exc)) from exc
        self.sha256 = _sha256([path, *data_files])
        self.device = "cuda" if self._session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

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
            session = _session(_with_outputs(self._model, names, typed=False), self._providers)
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
            session = _session(_with_outputs(self._model, sorted(key)), self._providers)
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
            session = _session(cut, self._providers)
        except Exception as exc:
            raise CheckError(f"{self.name}: cannot cut the head at layer {info.name!r}: {_one_line(exc)}") from exc
        return OnnxHead(self, info, session=session, extras=extras)
