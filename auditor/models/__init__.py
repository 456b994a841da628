"""Model adapters behind one protocol (base.Model) and the one loader the rest of the code calls."""

from __future__ import annotations

from pathlib import Path

from auditor.errors import UserError
from auditor.models.base import Head, LayerInfo, Model

__all__ = ["Head", "LayerInfo", "Model", "load_model", "load_path", "resolve_framework"]


def resolve_framework(path: Path | None, framework: str) -> str:
    """`framework` "auto" decided by the file suffix (.onnx -> "onnx", anything else "torch")."""
    if framework == "auto":
        return "onnx" if path is not None and path.suffix.lower() == ".onnx" else "torch"
    return framework


def load_model(
    path: Path | None,
    framework: str,
    input_shape: tuple[int, ...] | None,
    factory: str | None = None,
    trust_pickle: bool = False,
    name: str | None = None,
    search_dir: Path | None = None,
    device: str = "cpu",
) -> Model:
    """Load an ONNX or torch model. `framework` "auto" decides by the file suffix (.onnx -> ONNX).

    `input_shape` None: an ONNX model takes the shape its graph declares; a torch model, which declares none,
    (3, 224, 224). `device`: "cpu", "cuda" or "auto" (auditor.models.device)."""
    from auditor.models.device import onnx_providers, torch_device

    framework = resolve_framework(path, framework)
    display = name or (path.stem if path is not None else (factory or "model"))
    if framework == "onnx":
        if path is None:
            raise UserError("an ONNX model needs `path`")
        from auditor.models.onnx_model import OnnxModel

        model = OnnxModel(path, name=display, providers=onnx_providers(device))
        if input_shape is not None and tuple(model.input_shape) != tuple(input_shape):
            raise UserError(
                f"{path}: the model takes images of shape {tuple(model.input_shape)}, the policy's preprocessing "
                f"gives {tuple(input_shape)}; set preprocessing.size to match"
            )
        return model
    from auditor.models.torch_load import TorchSpec, load_torch

    shape = tuple(input_shape) if input_shape is not None else (3, 224, 224)
    return load_torch(TorchSpec(path, factory, trust_pickle, shape, display, torch_device(device)), search_dir)


def load_path(
    spec: str, input_shape: tuple[int, ...] | None = None, trust_pickle: bool = False, device: str = "cpu"
) -> Model:
    """`auditor layers MODEL`: a file path, or `module:factory[@weights]`; `input_shape` None: the ONNX graph's
    own, (3, 224, 224) for torch."""
    if ":" in spec and not Path(spec).exists():
        factory, _, weights = spec.partition("@")
        return load_model(
            Path(weights) if weights else None, "torch", input_shape, factory=factory, search_dir=Path.cwd(),
            device=device,
        )
    return load_model(Path(spec), "auto", input_shape, trust_pickle=trust_pickle, device=device)
