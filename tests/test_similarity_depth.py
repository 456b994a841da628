"""Relative depth counts a torch functional convolution as ONNX counts its Conv node (similarity_depth)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from auditor.methods.similarity_depth import model_depths
from auditor.models import load_model


class FunctionalStem(nn.Module):
    """A fixed grey stage as F.conv2d on a buffer of the top module (no module of its own), then two conv blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("grey", torch.tensor([0.299, 0.587, 0.114]).reshape(1, 3, 1, 1))
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(F.conv2d(x, self.grey))
        return self.fc(y.mean(dim=(2, 3)))


def test_a_functional_conv_counts_in_torch_as_its_conv_node_does_in_onnx(tmp_path):
    torch.manual_seed(0)
    net = FunctionalStem().eval()
    x = torch.rand(2, 3, 8, 8)
    torch.jit.save(torch.jit.trace(net, x), tmp_path / "m.pt")
    torch.onnx.export(net, x, tmp_path / "m.onnx", input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
    script = load_model(tmp_path / "m.pt", "torchscript", (3, 8, 8))
    onnx = load_model(tmp_path / "m.onnx", "onnx", (3, 8, 8))
    ts, ox = model_depths(script), model_depths(onnx)
    assert ts.count == ox.count == 4  # grey conv, two convs, the linear layer
    stem = [li.name for li in script.layers() if li.kind in ("conv2d", "_convolution")]  # traced: _convolution
    assert len(stem) == 1 and ts.relative(stem[0]) == 0.25
    assert ts.relative("body.0") == 0.5 and ts.relative("body.2") == 0.75
    relu_onnx = [li.name for li in onnx.layers() if li.kind == "Relu"]
    assert [ox.relative(n) for n in relu_onnx] == [ts.relative("body.1"), ts.relative("body.3")] == [0.5, 0.75]
