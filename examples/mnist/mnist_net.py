"""The pretrained MNIST CNN that digit-recognizer-py 0.1.0 (PyPI, MIT) ships, exported twice: TorchScript and ONNX.

The package's `__init__` imports torchvision (its `recognizer` module does), which cannot be imported on the
CPU-only machines this project runs on, so the CNN class is loaded from the installed `model.py` by path:
`importlib.util.find_spec` locates the package without executing its `__init__`. Nothing is downloaded here:
`make` installs the package (`pip install --no-deps digit-recognizer-py==0.1.0`), and its weights file ships
inside it.

The shipped CNN reads one channel (1 x 28 x 28, MNIST-normalised); auditor feeds three (it decodes every image to
RGB). `RgbDigits` puts a fixed RGB-to-luminance stage, a 1x1 convolution (ITU-R 601: 0.299 R + 0.587 G + 0.114 B),
before the CNN, in both exports. The stage works on normalised inputs: with one mean and one std for all three
channels and weights summing to 1, sum_c w_c (p_c - m) / s = (L - m) / s, i.e. exactly the MNIST normalisation of the
luminance; on grey images (R = G = B) it is the grey value itself.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch import nn

from auditor.demo.train import export_onnx, export_torchscript

PACKAGE = "digit-recognizer-py==0.1.0"
#: ITU-R BT.601 luma weights (they sum to 1, which the normalised-input argument above needs).
LUMINANCE = (0.299, 0.587, 0.114)
#: MNIST's normalisation, as the package's own `DigitRecognizer` applies it (transforms.Normalize).
MEAN = 0.1307
STD = 0.3081
SIZE = 28

#: Module paths (in `RgbDigits`) of the CNN's four ReLUs: 32x28x28, 64x14x14, 128x7x7 (conv blocks), 256 (fc).
RELU_LAYERS: tuple[str, ...] = ("cnn.conv_layers.1", "cnn.conv_layers.4", "cnn.conv_layers.7", "cnn.fc_layers.1")


def package_dir() -> Path:
    """The installed digit_recognizer package folder, found without importing it (its __init__ needs torchvision)."""
    spec = importlib.util.find_spec("digit_recognizer")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"digit_recognizer is not installed; `pip install --no-deps {PACKAGE}` (make does it)")
    return Path(next(iter(spec.submodule_search_locations)))


def _model_module() -> ModuleType:
    path = package_dir() / "model.py"
    spec = importlib.util.spec_from_file_location("digit_recognizer_model", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shipped_cnn() -> nn.Module:
    """The package's CNN with its shipped weights (models/handwriting_model.pth), in eval mode."""
    net = _model_module().CNN()
    state = torch.load(package_dir() / "models" / "handwriting_model.pth", map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval()


class RgbDigits(nn.Module):
    """(n, 3, 28, 28) MNIST-normalised RGB -> luminance (a fixed 1x1 convolution) -> the CNN.

    The luminance stage is an `nn.Conv2d` module with frozen weights, not a functional conv2d on a buffer: auditor
    places layers by relative depth (weight layers up to the layer / all of them), counting Conv nodes in an ONNX
    graph but weight *modules* in a torch model. With a functional stage the ONNX export counted one weight layer
    more (6 against 5), so every layer sat at another depth in each file, and the similarity check paired
    conv_layers.1 of one with conv_layers.4 of the other (measured: linear CKA 0.75 there). As a module it is
    counted in both."""

    def __init__(self, cnn: nn.Module) -> None:
        super().__init__()
        self.luminance = nn.Conv2d(3, 1, kernel_size=1, bias=False)
        with torch.no_grad():
            self.luminance.weight.copy_(torch.tensor(LUMINANCE, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.luminance.weight.requires_grad_(False)
        self.cnn = cnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, 28, 28) -> (n, 10) logits of digits 0-9."""
        return self.cnn(self.luminance(x))


def export_both(models_dir: Path) -> dict[str, object]:
    """Write `digits.pt` (TorchScript) and `digits.onnx` (legacy exporter, opset 17, as the demo exports) of the
    same `RgbDigits` network; return their paths and the audit layers in each format's names."""
    models_dir.mkdir(parents=True, exist_ok=True)
    net = RgbDigits(shipped_cnn()).eval()
    torchscript = export_torchscript(net, models_dir / "digits.pt")
    onnx_path = export_onnx(net, models_dir / "digits.onnx", size=SIZE)
    return {
        "torchscript": torchscript,
        "onnx": onnx_path,
        "torch_layers": list(RELU_LAYERS),
        "onnx_layers": relu_tensors(onnx_path),
    }


def relu_tensors(onnx_path: Path) -> list[str]:
    """ONNX tensor names of the four ReLU outputs, in graph order (the order of `RELU_LAYERS`).

    The legacy exporter scopes the nested module cnn.conv_layers.1 as ``/cnn/conv_layers/conv_layers.1/`` (each
    level named relative to its grandparent), which auditor.demo.train.onnx_tensor_names, written for one level
    of nesting, does not spell; the graph's Relu nodes in order are unambiguous here."""
    import onnx

    names = [n.output[0] for n in onnx.load(str(onnx_path)).graph.node if n.op_type == "Relu"]
    if len(names) != len(RELU_LAYERS):
        raise RuntimeError(f"{onnx_path}: {len(names)} Relu nodes, expected {len(RELU_LAYERS)}")
    return names


def normalise(grey: np.ndarray) -> np.ndarray:
    """(n, 28, 28) uint8 grey images -> (n, 3, 28, 28) float32 as auditor feeds them (RGB, MNIST mean/std)."""
    x = (grey.astype(np.float32) / 255.0 - MEAN) / STD
    return np.repeat(x[:, None], 3, axis=1)


def torchscript_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """Logits of the TorchScript file on (n, 3, 28, 28) inputs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 deprecates TorchScript
        net = torch.jit.load(str(path), map_location="cpu").eval()
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """Logits of the ONNX file on (n, 3, 28, 28) inputs, in onnxruntime (CPU) as auditor runs it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]
