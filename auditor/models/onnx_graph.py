"""The ONNX adapter's graph and session helpers (auditor.models.onnx_model): sessions, external data, hashes,
tensor types, extra outputs, batched runs."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx
import onnx.checker
import onnx.external_data_helper
import onnx.helper
import onnx.shape_inference
import onnx.utils
import onnxruntime as ort

from auditor.errors import UserError

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


def _session(
    model: onnx.ModelProto | str, providers: Sequence[str] = ("CPUExecutionProvider",)
) -> ort.InferenceSession:
    """A session (CPU unless `providers` say otherwise) from a model proto (serialized here) or a file path."""
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, _session_options(), providers=list(providers))


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
