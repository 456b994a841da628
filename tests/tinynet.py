"""A tiny seeded CNN for tests (importable as a `module:factory` too)."""

import numpy as np
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class SkipNet(nn.Module):
    """A residual block: cutting at conv1's output needs the block's input too."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.conv1 = nn.Conv2d(6, 6, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.stem(x))
        y = self.act2(self.conv2(self.act1(self.conv1(s))) + s)
        return self.fc(y.mean(dim=(2, 3)))


def tiny(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet().eval()


def skip(seed: int = 0) -> SkipNet:
    torch.manual_seed(seed)
    return SkipNet().eval()


def eager_layer_grad(net: nn.Module, layer: str, x: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """(activation, d logit[target] / d activation) of `layer` on a batch, by a forward hook and autograd on the
    eager module: the obviously-correct reference the adapters are checked against."""
    mod = dict(net.named_modules())[layer]
    store = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["a"] = out

    h = mod.register_forward_hook(hook)
    try:
        net(torch.from_numpy(x))[:, target].sum().backward()
    finally:
        h.remove()
    return store["a"].detach().numpy(), store["a"].grad.numpy()


class CornerNet(nn.Module):
    """logit 0 = brightness of the top-left 4x4 corner; logit 1 = brightness of the bottom-right corner: a model
    whose reliance on an artifact pasted in a corner is known exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, :, :4, :4].mean(dim=(1, 2, 3)), x[:, :, -4:, -4:].mean(dim=(1, 2, 3))], dim=1)
