"""A ResNet-50-shaped network for the benchmarks: Bottleneck blocks 3-4-6-3, output widths 256-512-1024-2048,
224 px input, about 23.5M parameters with the default 10-class head (25.6M with 1,000 classes), seeded random
initialisation (no pretrained weights, no torchvision).

`build()` is the factory a policy names (`factory: resnet50_like:build`); `build_seed2` is a second, independently
initialised copy (the audit's reference model). No in-place ops, so hooks on any module output see the value
the next module reads.
"""

from __future__ import annotations

import torch
from torch import nn

NUM_CLASSES = 10
SEED = 1234
PREFERRED_BIAS = 4.0


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int) -> None:
        super().__init__()
        cout = mid * 4
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


class ResNet50Like(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (mid, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
            stride = 1 if i == 0 else 2
            layers = [Bottleneck(cin, mid, stride)] + [Bottleneck(mid * 4, mid, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            cin = mid * 4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build(seed: int = SEED, num_classes: int = NUM_CLASSES) -> ResNet50Like:
    """The network with a seeded random init; BatchNorm statistics randomised a little so eval mode is not
    the identity (a random net that has 'seen' data)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = ResNet50Like(num_classes)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=gen)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
                m.weight.uniform_(0.2, 0.6, generator=gen)
                m.bias.normal_(0.0, 0.05, generator=gen)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 0.05, generator=gen)
                m.bias.zero_()
                # Logit 1 raised: RSVC takes the images a model predicts as the class, and a deep random net
                # gives nearly the same logits for every image (measured: they differ by ~1e-4), so without
                # it the predicted class would be an arbitrary one; with it both copies predict class 1.
                m.bias[1] = PREFERRED_BIAS
    return net.eval()


def build_seed2() -> ResNet50Like:
    return build(seed=SEED + 1)


def build_two_logits() -> ResNet50Like:
    """The real-scale benchmark's candidate: 2 logits. RSVC's importance step runs the whole network once per
    class that carries probability, for every integrated-gradient point of every patch (issue 18, item 2, fixed
    elsewhere); with 10 logits that step alone ran over 10 minutes here on 24 patches."""
    return build(num_classes=2)


def build_two_logits_seed2() -> ResNet50Like:
    return build(seed=SEED + 1, num_classes=2)
