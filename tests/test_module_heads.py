"""The head from an eager module's output runs only what follows the module (issue 18: RSVC's integrated
gradients ask a head many points per patch; a hooked head ran the whole network for each). Checked against the
hooked whole-network head and against predict; the modules before the cut are never called."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from auditor.models.torch_graph import module_output_head
from auditor.models.torch_model import CPU, ModuleModel, _module_head

SHAPE = (3, 12, 12)


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.bn(self.conv(x)))  # a skip path inside the block


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 5, 3, padding=1)
        self.blocks = nn.Sequential(Block(5), Block(5), Block(5))
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(torch.relu(self.stem(x))).mean(dim=(2, 3)))


class Reused(nn.Module):
    """One ReLU module called twice: its output is not one value, so no cut."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.act = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.b(self.act(self.a(x)))).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(40, *SHAPE)).astype(np.float32)


def _calls(module: nn.Module) -> list[int]:
    count = [0]
    module.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    return count


@pytest.mark.parametrize("layer", ["blocks.0", "blocks.1", "blocks.1.conv", "stem"])
def test_the_cut_head_equals_the_whole_network_head(x, layer):
    net = Net().eval()
    model = ModuleModel(net, "net", "0", "torch", SHAPE)
    acts = model.activations(x, [layer])[layer]
    cut = model.head(layer)
    whole = _module_head(net, layer, torch.contiguous_format, CPU)
    np.testing.assert_allclose(cut.logits(acts, x), model.predict(x), rtol=1e-5, atol=1e-6)
    for target in (0, 2):
        np.testing.assert_allclose(cut.grad(acts, x, target), whole.grad(acts, x, target), rtol=1e-5, atol=1e-7)
    # Off the model's own activations too (the head is a function of them: RSVC asks about scaled ones).
    scaled = acts * 0.5
    np.testing.assert_allclose(cut.logits(scaled, x), whole.logits(scaled, x), rtol=1e-5, atol=1e-6)


def test_the_cut_head_never_runs_the_modules_before_the_layer(x):
    net = Net().eval()
    model = ModuleModel(net, "net", "0", "torch", SHAPE)
    acts = model.activations(x, ["blocks.1"])["blocks.1"]
    head = model.head("blocks.1")  # (made first: tracing calls the modules it traces through, on proxies)
    stem, first, last = _calls(net.stem), _calls(net.blocks[0]), _calls(net.blocks[2])
    head.grad(acts, x, 1)
    assert (stem[0], first[0]) == (0, 0) and last[0] == 0  # blocks.2 is inlined by the trace: no module call either
    _module_head(net, "blocks.1", torch.contiguous_format, CPU).grad(acts, x, 1)
    assert stem[0] >= 1 and first[0] >= 1  # the hooked head runs everything


def test_a_module_called_twice_or_an_untraceable_model_keeps_the_hooked_head(x):
    net = Reused().eval()
    assert module_output_head(net, "act", CPU, torch.contiguous_format) is None
    assert module_output_head(net, "a", CPU, torch.contiguous_format) is not None

    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return (y * 2 if y.sum() > 0 else y).mean(dim=(2, 3))

    u = Untraceable().eval()
    assert module_output_head(u, "conv", CPU, torch.contiguous_format) is None
    model = ModuleModel(u, "u", "0", "torch", SHAPE)
    acts = model.activations(x, ["conv"])["conv"]
    np.testing.assert_allclose(model.head("conv").logits(acts, x), model.predict(x), rtol=1e-5, atol=1e-6)


def test_a_cut_head_with_no_path_from_the_images_needs_none(x, tmp_path):
    from auditor.methods.rsvc_grad import needs_images
    from auditor.models import load_model

    net = Net().eval()
    eager = ModuleModel(net, "net", "0", "torch", SHAPE)
    path = tmp_path / "net.pt"
    torch.jit.script(net).save(str(path))
    script = load_model(path, "auto", SHAPE)
    for model in (eager, script):
        # blocks.1's output: everything after it (blocks.2 and its skip path) reads only that value.
        head = model.head("blocks.1")
        assert not needs_images(head)
        acts = model.activations(x, ["blocks.1"])["blocks.1"]
        np.testing.assert_allclose(head.logits(acts, None), model.predict(x), rtol=1e-5, atol=1e-6)
        # The conv inside blocks.1: the block's skip path goes around it, from the images.
        assert needs_images(model.head("blocks.1.conv"))
