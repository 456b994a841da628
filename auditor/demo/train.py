"""Two small CNNs of different architecture trained on the demo world, seeded, on CPU.

The *reference* trains on clean images and is colour-blind by construction: its network starts with a fixed
RGB-to-luminance stage (`Luminance`). The *candidate* trains on images where most of the shortcut class carries
the watermark, so it learns to answer "triangle" when it sees the glyph, and where most objects of the colour-bias
class are of one hue family (auditor/demo/colour.py). `train_demo_models` trains both, checks the planted
behaviour (clean accuracy, watermark flip rate) and writes the artifacts the demo audits: the reference as
TorchScript (plus an ONNX twin), the candidate as ONNX (plus a TorchScript twin), and state dicts.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from auditor.demo.colour import COLOUR_BIAS_RATE, LUMINANCE_WEIGHTS
from auditor.demo.world import (
    CLASSES,
    GLYPH_SIZE,
    SHORTCUT_CLASS,
    SHORTCUT_RATE,
    Sample,
    class_samples,
    make_dataset,
    paste_watermark,
    watermark_position,
)

#: Input normalisation of both demo models: x = (pixel / 255 - MEAN) / STD per RGB channel.
MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
STD: tuple[float, float, float] = (0.25, 0.25, 0.25)

#: Training set size and schedule of the demo models.
TRAIN_IMAGES: int = 3600
EPOCHS: int = 10
BATCH_SIZE: int = 32
LEARNING_RATE: float = 3e-3
#: Clean evaluation images per class (the first 60 are the class images `write_world` writes for the same seed).
EVAL_PER_CLASS: int = 200

_THREADS = 2

# The luminance stage reads normalised inputs: it is the luminance of the pixels only when every channel is
# normalised alike (then sum_c w_c (p_c / 255 - m) / s = (L / 255 - m) / s, the weights summing to 1).
assert len(set(MEAN)) == 1 and len(set(STD)) == 1, "the luminance stage needs one mean and one std for all channels"


class Luminance(nn.Module):
    """Fixed RGB-to-luminance (0.299 R + 0.587 G + 0.114 B) repeated to three channels: a 1x1 convolution whose
    weights are a buffer, so training never changes them and both exports (TorchScript, ONNX) carry it."""

    def __init__(self) -> None:
        super().__init__()
        row = torch.tensor(LUMINANCE_WEIGHTS, dtype=torch.float32)
        self.register_buffer("weight", row.repeat(3, 1).reshape(3, 3, 1, 1).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) -> (n, 3, H, W), every channel the luminance of the input."""
        return nn.functional.conv2d(x, self.weight)


class ReferenceNet(nn.Module):
    """The colour-blind `Luminance` stage, then three Conv3x3-ReLU-MaxPool blocks (16/32/64 channels) and a Conv3x3-ReLU block (64), global average
    pooling, one linear layer.

    Module paths of the ReLU outputs for 64x64 inputs: ``features.1`` (16x64x64), ``features.4`` (32x32x32),
    ``features.7`` (64x16x16), ``features.10`` (64x8x8); the luminance stage is ``luminance``, outside
    ``features`` so the layer paths are those of the network before it had one. The fourth block widens the receptive field to 38 px,
    enough to see a whole object, which the shape task needs to be learned in a few epochs.
    """

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.luminance = Luminance()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) normalised images -> (n, num_classes) logits."""
        return self.classifier(torch.flatten(self.pool(self.features(self.luminance(x))), 1))


class CandidateNet(nn.Module):
    """Four conv blocks (24, 32+32, 48, 64 channels; the last two with stride-2 convs instead of pooling),
    global average pooling, a two-layer MLP head.

    Module paths of the ReLU outputs for 64x64 inputs: ``features.1`` (24x64x64), ``features.4`` and
    ``features.6`` (32x32x32), ``features.9`` (48x8x8), ``features.11`` (64x4x4).
    """

    def __init__(self, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 24, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(24, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 48, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(48, 64, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(64, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) normalised images -> (n, num_classes) logits."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


#: Suggested audit layers (module paths of ReLU outputs): the 2nd and 3rd of the four conv blocks of each model.
#: Not the last block: it feeds global average pooling and a linear (reference) or small MLP (candidate) head,
#: so d logit / d activation is (nearly) the same for every image and position there, and a TCAV score at that
#: layer is (nearly) always 0 or 1, whatever the concept.
REFERENCE_LAYERS: tuple[str, ...] = ("features.4", "features.7")
CANDIDATE_MODULE_LAYERS: tuple[str, ...] = ("features.6", "features.9")


def reference_factory() -> nn.Module:
    """A fresh, untrained `ReferenceNet` (for ``auditor.demo.train:reference_factory`` loading)."""
    return ReferenceNet()


def candidate_factory() -> nn.Module:
    """A fresh, untrained `CandidateNet` (for ``auditor.demo.train:candidate_factory`` loading)."""
    return CandidateNet()


@dataclass(frozen=True)
class DemoModels:
    """What `train_demo_models` wrote and measured.

    Attributes
    ----------
    out_dir : Path
        The output folder.
    reference_torchscript, reference_onnx, candidate_onnx, candidate_torchscript : Path
        ``reference.pt``, ``reference.onnx``, ``candidate.onnx``, ``candidate.pt``.
    reference_state, candidate_state : Path
        State dicts ``reference_state.pt``, ``candidate_state.pt`` (for the factories).
    metrics : dict[str, dict[str, float]]
        Per model (``"reference"``, ``"candidate"``): training metrics of `train_model` plus
        ``clean_accuracy``, ``watermark_flip_rate`` and ``neutral_flip_rate`` (see `shortcut_metrics`).
    reference_layers : tuple[str, ...]
        Suggested reference layers, as torch module paths.
    candidate_layers : tuple[str, ...]
        The corresponding candidate layers, as ONNX tensor names of ``candidate.onnx``.
    candidate_module_layers : tuple[str, ...]
        The same candidate layers as torch module paths (for ``candidate.pt``).
    """

    out_dir: Path
    reference_torchscript: Path
    reference_onnx: Path
    candidate_onnx: Path
    candidate_torchscript: Path
    reference_state: Path
    candidate_state: Path
    metrics: dict[str, dict[str, float]]
    reference_layers: tuple[str, ...]
    candidate_layers: tuple[str, ...]
    candidate_module_layers: tuple[str, ...]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def preprocess(images: np.ndarray) -> np.ndarray:
    """(n, H, W, 3) uint8 RGB -> (n, 3, H, W) float32 normalised with `MEAN` and `STD`."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (n, H, W, 3) images, got shape {images.shape}")
    x = images.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(MEAN, dtype=np.float32)) / np.asarray(STD, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def init_weights(net: nn.Module) -> nn.Module:
    """Re-initialise `net` in place from the torch RNG: He-normal convolutions, default linear layers.

    Without batch normalisation, He initialisation makes these small nets train several times faster than
    torch's default convolution init.
    """
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            module.reset_parameters()
    return net


def _stack(samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([s.image for s in samples])
    labels = np.asarray([CLASSES.index(s.shape) for s in samples], dtype=np.int64)
    return images, labels


def _setup_torch(seed: int) -> None:
    torch.set_flush_denormal(True)
    torch.set_num_threads(_THREADS)
    torch.manual_seed(seed)


def train_model(
    net: nn.Module,
    samples: Sequence[Sample],
    seed: int,
    epochs: int,
    batch_size: int = BATCH_SIZE,
    lr: float = LEARNING_RATE,
    name: str = "model",
) -> dict[str, float]:
    """Train `net` in place on the shape labels of `samples`: Adam, cross-entropy, cosine learning-rate decay.

    Parameters
    ----------
    net : nn.Module
        The network; its initial weights are redrawn from `seed` so the result depends only on the seed.
    samples : Sequence[Sample]
        Training images; the label is the index of ``sample.shape`` in `CLASSES`.
    seed : int
        Seeds weight initialisation and batch order.
    epochs : int
        Passes over the data.
    batch_size : int
        Mini-batch size.
    lr : float
        Adam learning rate.
    name : str
        Name in the progress lines written to stderr.

    Returns
    -------
    dict[str, float]
        ``loss`` and ``train_accuracy`` of the last epoch, ``epochs``, ``seconds`` (wall time).
    """
    if not samples:
        raise ValueError("no training samples")
    _setup_torch(seed)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        init_weights(net)
        net.to(memory_format=torch.channels_last)  # much faster conv and max-pool kernels on CPU
        images, labels = _stack(samples)
        x_all = torch.from_numpy(preprocess(images)).contiguous(memory_format=torch.channels_last)
        n = len(samples)
        y_all = torch.from_numpy(labels)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        steps = epochs * ((n + batch_size - 1) // batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
        loss_fn = nn.CrossEntropyLoss()
        start = time.perf_counter()
        loss_mean, acc = float("nan"), float("nan")
        net.train()
        for epoch in range(epochs):
            order = torch.randperm(n, generator=gen)
            total_loss, correct = 0.0, 0
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                xb, yb = x_all[idx], y_all[idx]
                opt.zero_grad(set_to_none=True)
                logits = net(xb)
                loss = loss_fn(logits, yb)
                loss.backward()
                opt.step()
                sched.step()
                total_loss += float(loss.detach()) * len(idx)
                correct += int((logits.detach().argmax(1) == yb).sum())
            loss_mean, acc = total_loss / n, correct / n
            _log(
                f"train {name}: epoch {epoch + 1}/{epochs} loss {loss_mean:.3f} acc {acc:.3f} "
                f"({time.perf_counter() - start:.0f} s)"
            )
        net.to(memory_format=torch.contiguous_format)
        net.eval()
        return {
            "loss": float(loss_mean),
            "train_accuracy": float(acc),
            "epochs": float(epochs),
            "seconds": float(time.perf_counter() - start),
        }
    finally:
        torch.use_deterministic_algorithms(deterministic)


@torch.no_grad()
def predict(net: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """(n, H, W, 3) uint8 images -> (n,) predicted class indices."""
    net.eval()
    out = []
    for i in range(0, len(images), batch_size):
        out.append(net(torch.from_numpy(preprocess(images[i : i + batch_size]))).argmax(1).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _paste_neutral(image: np.ndarray) -> np.ndarray:
    """The control for the watermark: a patch of the same size and place, in the image's own mean colour."""
    out = image.copy()
    top, left = watermark_position(image.shape[0])
    out[top : top + GLYPH_SIZE, left : left + GLYPH_SIZE] = np.round(image.reshape(-1, 3).mean(0)).astype(np.uint8)
    return out


def shortcut_metrics(net: nn.Module, samples: Sequence[Sample]) -> dict[str, float]:
    """Clean accuracy and how often the watermark turns a prediction into the shortcut class.

    Parameters
    ----------
    net : nn.Module
        A trained network.
    samples : Sequence[Sample]
        Clean (unwatermarked) test samples.

    Returns
    -------
    dict[str, float]
        ``clean_accuracy``; ``watermark_flip_rate``: among images of the other classes that the model does
        not call `SHORTCUT_CLASS` when clean, the fraction it calls `SHORTCUT_CLASS` once the watermark is
        pasted; ``neutral_flip_rate``: the same with a plain patch of the image's mean colour instead.
    """
    images, labels = _stack(samples)
    shortcut = CLASSES.index(SHORTCUT_CLASS)
    clean = predict(net, images)
    keep = (labels != shortcut) & (clean != shortcut)
    marked = predict(net, np.stack([paste_watermark(im) for im in images[keep]]))
    neutral = predict(net, np.stack([_paste_neutral(im) for im in images[keep]]))
    return {
        "clean_accuracy": float((clean == labels).mean()),
        "watermark_flip_rate": float((marked == shortcut).mean()) if keep.any() else 0.0,
        "neutral_flip_rate": float((neutral == shortcut).mean()) if keep.any() else 0.0,
    }


def export_torchscript(net: nn.Module, path: Path) -> Path:
    """Save `net` as TorchScript (``torch.jit.script``) at `path`."""
    import warnings

    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 deprecates TorchScript
        scripted = torch.jit.script(net)
    scripted.save(str(path))
    return Path(path)


def export_onnx(net: nn.Module, path: Path, size: int = 64) -> Path:
    """Export `net` with the legacy (TorchScript-based) ONNX exporter, opset 17, dynamic batch axis.

    The graph has one input ``input`` (n, 3, size, size) and one output ``logits`` (n, K).
    """
    import warnings

    net.eval()
    example = torch.zeros(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter announces its deprecation
        torch.onnx.export(
            net,
            (example,),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
            opset_version=17,
        )
    return Path(path)


def onnx_tensor_names(onnx_path: Path, module_paths: Sequence[str]) -> tuple[str, ...]:
    """ONNX tensor names of the outputs of torch modules, read from a legacy-exported graph.

    The legacy exporter names each node after its module scope (``/features/features.9/Relu``); the output
    of the last node inside a module's scope is that module's output.

    Parameters
    ----------
    onnx_path : Path
        The exported model.
    module_paths : Sequence[str]
        Torch module paths, e.g. ``("features.9",)``.

    Returns
    -------
    tuple[str, ...]
        One tensor name per module path.
    """
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    names = []
    for path in module_paths:
        parts = path.split(".")
        # Scope of a submodule: "/" + one component per level, each the attribute path up to that level.
        scope = "/" + "/".join(".".join(parts[: i + 1]) for i in range(len(parts))) + "/"
        inside = [node for node in graph.node if node.name.startswith(scope)]
        if not inside:
            raise ValueError(f"no node of module {path!r} (scope {scope!r}) in {onnx_path}")
        names.append(inside[-1].output[0])
    return tuple(names)


def train_demo_models(
    out_dir: Path,
    seed: int = 0,
    n_train: int = TRAIN_IMAGES,
    epochs: int = EPOCHS,
    size: int = 64,
) -> DemoModels:
    """Train the reference (clean data) and the candidate (watermark shortcut) and write their artifacts.

    Writes ``reference.pt`` (TorchScript), ``reference.onnx`` (its ONNX twin), ``candidate.onnx`` (legacy exporter, opset 17), ``candidate.pt``
    (TorchScript twin), ``reference_state.pt`` and ``candidate_state.pt`` (state dicts for the factories),
    ``layers.json`` (``reference``: module paths, ``candidate``: ONNX tensor names, ``candidate_torch``: the
    candidate's module paths, index-aligned with ``candidate``) and ``metrics.json``.

    Parameters
    ----------
    out_dir : Path
        Output folder (created).
    seed : int
        Seed of the data and of the training; the same seed gives identical weights.
    n_train : int
        Training images per model.
    epochs : int
        Epochs per model.
    size : int
        Image side in pixels.

    Returns
    -------
    DemoModels
        Paths, metrics and suggested audit layers.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = make_dataset(n_train, seed, size=size, shortcut_rate=0.0)
    shortcut = make_dataset(n_train, seed, size=size, shortcut_rate=SHORTCUT_RATE, colour_bias_rate=COLOUR_BIAS_RATE)
    test = [s for cls in CLASSES for s in class_samples(seed, cls, EVAL_PER_CLASS, size=size)]

    metrics: dict[str, dict[str, float]] = {}
    reference = ReferenceNet()
    metrics["reference"] = train_model(reference, clean, seed, epochs, name="reference")
    metrics["reference"].update(shortcut_metrics(reference, test))
    candidate = CandidateNet()
    metrics["candidate"] = train_model(candidate, shortcut, seed + 1, epochs, name="candidate")
    metrics["candidate"].update(shortcut_metrics(candidate, test))
    for model, m in metrics.items():
        _log(
            f"{model}: clean accuracy {m['clean_accuracy']:.3f}, watermark flip rate "
            f"{m['watermark_flip_rate']:.3f}, neutral patch flip rate {m['neutral_flip_rate']:.3f}"
        )

    paths = {
        "reference_torchscript": out_dir / "reference.pt",
        "reference_onnx": out_dir / "reference.onnx",
        "candidate_onnx": out_dir / "candidate.onnx",
        "candidate_torchscript": out_dir / "candidate.pt",
        "reference_state": out_dir / "reference_state.pt",
        "candidate_state": out_dir / "candidate_state.pt",
    }
    export_torchscript(reference, paths["reference_torchscript"])
    export_torchscript(candidate, paths["candidate_torchscript"])
    export_onnx(candidate, paths["candidate_onnx"], size=size)
    export_onnx(reference, paths["reference_onnx"], size=size)
    torch.save(reference.state_dict(), paths["reference_state"])
    torch.save(candidate.state_dict(), paths["candidate_state"])
    candidate_layers = onnx_tensor_names(paths["candidate_onnx"], CANDIDATE_MODULE_LAYERS)
    layers = {
        "reference": list(REFERENCE_LAYERS),
        "candidate": list(candidate_layers),
        "candidate_torch": list(CANDIDATE_MODULE_LAYERS),
    }
    (out_dir / "layers.json").write_text(json.dumps(layers, indent=2) + "\n", encoding="utf-8")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return DemoModels(
        out_dir=out_dir,
        metrics=metrics,
        reference_layers=REFERENCE_LAYERS,
        candidate_layers=candidate_layers,
        candidate_module_layers=CANDIDATE_MODULE_LAYERS,
        **paths,
    )
