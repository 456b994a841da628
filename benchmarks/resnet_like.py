"""A ResNet-18-shaped network for the benchmarks: BasicBlocks 2-2-2-2, widths 64-128-256-512, 224 px input,
about 11.7M parameters, seeded random initialisation (no pretrained weights).

`build()` is the factory a policy names (`factory: resnet_like:build`); the weights file then holds its
state_dict. No in-place ops, so hooks on any module output see the value the next module reads.
"""

from __future__ import annotations

import torch
from torch import nn

NUM_CLASSES = 10
SEED = 1234


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class ResNetLike(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, cin = (64, 128, 256, 512), 64
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w, 1)))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build(seed: int = SEED) -> ResNetLike:
    """The network with a seeded random init; BatchNorm statistics randomised a little so eval mode is not
    the identity (a random net that has 'seen' data)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = ResNetLike()
    randomise(net, gen, linear=True)
    return net.eval()


def randomise(net: nn.Module, gen: torch.Generator, linear: bool) -> None:
    """In module order: Kaiming-normal convolutions, BatchNorm statistics and affine terms drawn near the identity,
    and (with `linear`) small normal linear weights with zero bias; all from `gen`."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
                m.weight.uniform_(0.2, 0.6, generator=gen)
                m.bias.normal_(0.0, 0.05, generator=gen)
            elif linear and isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.05, generator=gen)
                m.bias.zero_()
