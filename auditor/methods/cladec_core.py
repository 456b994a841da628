"""ClaDec's computational core (METHODS.md, ClaDec section): the decoder, its training against a frozen classifier,
and the content-keyed cache of trained decoders.

A ClaDec decoder learns to reconstruct the input image from one frozen layer's activations, with the loss
(1 - alpha) MSE(x_hat, x) + alpha CE(classifier(normalise(x_hat)), y): what the reconstruction shows is what
the layer keeps. The reference auto-encoder (cladec_reference.py) is the same decoder after a freshly
initialised copy of the network truncated at the layer, trained end to end on MSE only.

Images here are in [0, 1] RGB image space, (n, 3, H, W): the decoder's sigmoid output lives there, and the
classifier sees `to_model(x_hat)`, the policy preprocessing's channel order and mean/std applied.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from auditor import data
from auditor.errors import UserError

#: Part of every cache key: bump when the decoder, the loss or the training loop changes what a key trains.
CODE_VERSION = "cladec-2"  # 2: every training with one torch thread (cladec_parallel)

Log = Callable[[str], None]


def torch_module(model: object) -> nn.Module | None:
    """The torch module behind an adapter (eager or TorchScript: their `torch_module` property), None for ONNX."""
    module = getattr(model, "torch_module", None)
    return module if isinstance(module, nn.Module) else None


# ------------------------------------------------------------------------------------------- image space


def to_model(x01: torch.Tensor, pre: data.Preprocessing) -> torch.Tensor:
    """[0, 1] RGB images -> the classifier's input (channel order, then (x - mean) / std), differentiably."""
    x = x01.flip(1) if pre.channel_order == "BGR" else x01
    mean = torch.tensor(pre.mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def from_model(x: np.ndarray, pre: data.Preprocessing) -> np.ndarray:
    """Normalised model inputs (the store's images) -> [0, 1] RGB images, float32 (n, 3, H, W)."""
    mean = np.asarray(pre.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(1, 3, 1, 1)
    x01 = x.astype(np.float32) * std + mean
    return np.ascontiguousarray(x01[:, ::-1] if pre.channel_order == "BGR" else x01)


def to_model_np(x01: np.ndarray, pre: data.Preprocessing) -> np.ndarray:
    """`to_model` for arrays: reconstructions -> what `Model.predict` takes."""
    return to_model(torch.from_numpy(np.ascontiguousarray(x01, dtype=np.float32)), pre).numpy()


# ------------------------------------------------------------------------------------------------ decoder


def _stages(size: int, target: int) -> int:
    """ceil(log2(target / size)) computed on integers (no float fuzz at exact powers of two), at least 0."""
    k = 0
    while size * 2**k < target:
        k += 1
    return k


class Decoder(nn.Module):
    """Layer activations (n, *layer_shape) -> images (n, C_img, H_img, W_img) in [0, 1]."""

    def __init__(self, layer_shape: tuple[int, ...], image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.layer_shape = tuple(int(s) for s in layer_shape)
        self.image_shape = tuple(int(s) for s in image_shape)
        c_img, h_img, w_img = self.image_shape
        if len(self.layer_shape) == 1:
            width = max(self.layer_shape[0], 64)
            self.stem: nn.Module = nn.Sequential(nn.Linear(self.layer_shape[0], width), nn.ReLU())
            h, w = 1, 1
        elif len(self.layer_shape) == 3:
            c, h, w = self.layer_shape
            width = max(c, 64)
            self.stem = nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.ReLU())
        else:
            raise UserError(
                f"ClaDec decodes conv (C, H, W) or dense (D,) layers; this layer's output has shape {self.layer_shape}"
            )
        stages: list[nn.Module] = []
        for _ in range(max(_stages(h, h_img), _stages(w, w_img))):
            out = max(width // 2, 64)  # halving channels, never below 64
            stages += [nn.ConvTranspose2d(width, out, 4, stride=2, padding=1), nn.ReLU()]
            width = out
        self.ups = nn.Sequential(*stages)
        self.final = nn.ConvTranspose2d(width, c_img, 3, stride=1, padding=1)
        self.to(memory_format=torch.channels_last)  # see forward

    def forward(self, acts: torch.Tensor) -> torch.Tensor:
        z = self.stem(acts)
        if z.dim() == 2:
            z = z.view(z.shape[0], -1, 1, 1)
        # channels_last: measured 20-30% less CPU per training step than NCHW for these transposed convolutions
        # (batch 32, 64 px, 1 and 2 threads); the parameters are converted by `channels_last`.
        y = self.final(self.ups(z.contiguous(memory_format=torch.channels_last)))
        if tuple(y.shape[2:]) != self.image_shape[1:]:
            y = F.interpolate(y, size=self.image_shape[1:], mode="bilinear", align_corners=False)
        return torch.sigmoid(y)


# ----------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Settings:
    """Training settings (METHODS.md: Adam lr 3e-4, wd 1e-5; alpha 0.001)."""

    alpha: float = 0.001
    # 8 epochs is a placeholder for the method layer: on the demo (240 images, 2 models x 2 layers, decoder and
    # reference AE) 2 epochs took 119 CPU-s (benchmarks/cladec_cost.py), so 8 need about 4 minutes on 2 cores.
    epochs: int = 8
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-5
    seed: int = 0


@dataclass(frozen=True)
class TrainStats:
    steps: int  # optimisation steps taken (0 when loaded from the cache)
    seconds: float  # wall time of the training loop
    classifier_seconds: float  # of which forward passes of the frozen classifier on reconstructions
    losses: tuple[float, ...]  # mean loss per epoch
    cached: bool


def setup_torch(seed: int) -> None:
    """Seed torch's global generator (decoder initialisation draws from it) and flush denormals, as the demo's
    training does (denormal floats are slow on x86 CPUs; not measured for the decoders here)."""
    torch.manual_seed(seed)
    torch.set_flush_denormal(True)


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=gen)
    for s in range(0, n, batch_size):
        yield order[s : s + batch_size]


def optimise(
    params: list[nn.Parameter],
    n: int,
    step_loss: Callable[[torch.Tensor], tuple[torch.Tensor, float]],
    settings: Settings,
    log: Log,
    what: str,
) -> TrainStats:
    """Adam over `settings.epochs` seeded shuffles of n samples; `step_loss(indices)` -> (loss, classifier s)."""
    opt = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(settings.seed)
    steps, clf_s, losses = 0, 0.0, []
    t0 = time.perf_counter()
    for epoch in range(settings.epochs):
        total, count = 0.0, 0
        for idx in _batches(n, settings.batch_size, gen):
            loss, s = step_loss(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps, clf_s = steps + 1, clf_s + s
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
        losses.append(total / max(count, 1))
        log(f"cladec {what}: epoch {epoch + 1}/{settings.epochs} loss {losses[-1]:.5f} ({time.perf_counter() - t0:.1f}s)")
    return TrainStats(steps, time.perf_counter() - t0, clf_s, tuple(losses), cached=False)


def freeze(classifier: nn.Module) -> nn.Module:
    """Eval mode, no parameter gradients (the adapters already do this; idempotent). Gradients still flow
    through it to its input."""
    classifier.eval()
    for p in classifier.parameters():
        p.requires_grad_(False)
    return classifier


def cladec_step(
    decoder: Decoder,
    acts: torch.Tensor,
    images01: torch.Tensor,
    labels: torch.Tensor | None,
    classifier: nn.Module | None,
    pre: data.Preprocessing,
    alpha: float,
) -> Callable[[torch.Tensor], tuple[torch.Tensor, float]]:
    """The ClaDec loss on a batch of indices: (1 - alpha) MSE + alpha CE(classifier(normalise(x_hat)), y)."""

    def step(idx: torch.Tensor) -> tuple[torch.Tensor, float]:
        x_hat = decoder(acts[idx])
        loss = (1 - alpha) * F.mse_loss(x_hat, images01[idx])
        if alpha == 0 or classifier is None or labels is None:
            return loss, 0.0
        t = time.perf_counter()
        logits = classifier(to_model(x_hat, pre))
        s = time.perf_counter() - t
        return loss + alpha * F.cross_entropy(logits, labels[idx]), s

    return step


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


@dataclass(frozen=True)
class Fitted:
    """A trained decoder (and, for the reference auto-encoder, its encoder) with how it was trained."""

    kind: str  # "cladec" | "reference_ae"
    decoder: Decoder
    encoder: nn.Module | None
    stats: TrainStats


def effective_alpha(settings: Settings, classifier: nn.Module | None) -> float:
    """alpha as trained: 0 without a torch classifier (ONNX: no gradients through the classifier)."""
    return settings.alpha if classifier is not None else 0.0


def train_cladec(
    acts: np.ndarray,
    images01: np.ndarray,
    labels: np.ndarray | None,
    classifier: nn.Module | None,
    pre: data.Preprocessing,
    settings: Settings,
    log: Log,
    what: str = "decoder",
) -> Fitted:
    """Train a ClaDec decoder on the frozen layer's activations `acts` (n, *layer_shape) of `images01`.

    `classifier` None (ONNX) trains with alpha = 0; with alpha > 0 `labels` (n,) class indices are required."""
    alpha = effective_alpha(settings, classifier)
    if alpha > 0 and labels is None:
        raise ValueError("ClaDec with alpha > 0 needs the images' class labels")
    setup_torch(settings.seed)
    decoder = Decoder(acts.shape[1:], images01.shape[1:])
    clf = freeze(classifier) if classifier is not None and alpha > 0 else None
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64)) if labels is not None else None
    step = cladec_step(decoder, _tensor(acts), _tensor(images01), y, clf, pre, alpha)
    stats = optimise(list(decoder.parameters()), len(acts), step, settings, log, what)
    return Fitted("cladec", decoder.eval(), None, stats)


# ------------------------------------------------------------------------------------------------- cache


def cache_key(
    model_sha256: str, layer: str, kind: str, settings: Settings, alpha: float, images_fingerprint: str
) -> str:
    """Content key of one trained decoder: the model file, layer, decoder kind, alpha as trained, the training
    settings (epochs, seed, batch, optimiser), the image set and the code version."""
    parts = {
        "model": model_sha256,
        "layer": layer,
        "kind": kind,
        "alpha": alpha,
        "settings": asdict(settings) | {"alpha": alpha},
        "images": images_fingerprint,
        "code": CODE_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / "cladec" / f"{key}.pt"


def tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name, detached copies (works for eager and TorchScript modules)."""
    named = list(module.named_parameters()) + list(module.named_buffers())
    return {n: t.detach().clone() for n, t in named}


def load_tensors(module: nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Copy saved values into `module`'s parameters and buffers in place (names and shapes must match)."""
    named = dict(list(module.named_parameters()) + list(module.named_buffers()))
    if set(named) != set(values):
        raise ValueError("cached tensors do not match the module")
    with torch.no_grad():
        for n, t in named.items():
            t.copy_(values[n])


def save_fitted(path: Path, fitted: Fitted) -> None:
    """torch.save to a temporary file, then an atomic replace: a crash never leaves half a file under the key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "code": CODE_VERSION,
        "kind": fitted.kind,
        "layer_shape": list(fitted.decoder.layer_shape),
        "image_shape": list(fitted.decoder.image_shape),
        "decoder": tensors(fitted.decoder),
        "encoder": tensors(fitted.encoder) if fitted.encoder is not None else None,
        "stats": {"seconds": fitted.stats.seconds, "classifier_seconds": fitted.stats.classifier_seconds,
                  "losses": list(fitted.stats.losses)},
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_fitted(path: Path, encoder: nn.Module | None, log: Log) -> Fitted | None:
    """The cached decoder at `path` (None when absent or unreadable: it is then trained again). `encoder`: a
    module of the encoder's architecture to load the cached reference encoder's weights into."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        decoder = Decoder(tuple(state["layer_shape"]), tuple(state["image_shape"]))
        load_tensors(decoder, state["decoder"])
        if state["encoder"] is not None:
            if encoder is None:
                raise ValueError("no encoder to load into")
            load_tensors(encoder, state["encoder"])
    except (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as e:
        log(f"cladec: cached decoder {path.name} unreadable ({type(e).__name__}); training again")
        return None
    s = state["stats"]
    stats = TrainStats(0, float(s["seconds"]), float(s["classifier_seconds"]), tuple(s["losses"]), cached=True)
    return Fitted(state["kind"], decoder.eval(), encoder.eval() if state["encoder"] is not None else None, stats)


def cached(path: Path | None, train: Callable[[], Fitted], log: Log, encoder: nn.Module | None = None) -> Fitted:
    """`train()` unless `path` holds the result already; a fresh result is saved under `path`."""
    if path is not None:
        hit = load_fitted(path, encoder, log)
        if hit is not None:
            log(f"cladec: {hit.kind} decoder from cache {path.name[:12]}")
            return hit
    fitted = train()
    if path is not None:
        save_fitted(path, fitted)
    return fitted
