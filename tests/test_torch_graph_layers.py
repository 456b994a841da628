"""Functional results (`F.relu6(x)`, `x + y`, `torch.flatten`) as layers of eager (`module:factory`),
torch.export and TorchScript models, checked against a hand-written forward pass and a hand-split network (no hooks, no fx)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from auditor.errors import UserError
from auditor.methods.rsvc_images import is_negative
from auditor.models import load_model
from auditor.models.torch_model import ModuleModel

SHAPE = (3, 16, 16)
FUNCTIONAL = ["relu6", "blocks.0.relu6", "blocks.0.add", "blocks.1.relu6", "blocks.1.add", "adaptive_avg_pool2d",
              "flatten"]

# A net whose ReLU6s and residual sums are functional calls (no module computes them). Written to a file so that
# it loads as a user's `module:factory` does.
NET_SOURCE = '''import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn(self.conv(x)))
        return x + y


class R6Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.blocks = nn.Sequential(Block(6), Block(6))
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.stem(x))
        x = self.blocks(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build() -> R6Net:
    torch.manual_seed(0)
    net = R6Net()
    with torch.no_grad():
        for m in net.modules():  # batch-norm statistics that are not the identity, some ReLU6s saturated
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.2, 1.0)
                m.weight.uniform_(2.0, 4.0)
                m.bias.uniform_(-0.5, 1.0)
    return net.eval()
'''


@pytest.fixture(scope="module")
def netdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("r6net")
    (d / "r6net.py").write_text(NET_SOURCE)
    return d


@pytest.fixture(scope="module")
def eager(netdir: Path) -> ModuleModel:
    return load_model(None, "torch", SHAPE, factory="r6net:build", search_dir=netdir)


@pytest.fixture(scope="module")
def exported(netdir: Path, eager: ModuleModel) -> ModuleModel:
    program = torch.export.export(
        eager.torch_module, (torch.zeros(2, *SHAPE),), dynamic_shapes={"x": {0: torch.export.Dim("n")}}
    )
    path = netdir / "r6net.pt2"
    torch.export.save(program, str(path))
    return load_model(path, "auto", SHAPE)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return (np.random.default_rng(1).normal(size=(70, *SHAPE)) * 2).astype(np.float32)  # two batches


def oracle(net: torch.nn.Module, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The functional values and the logits, by the forward pass written out by hand."""
    v = {"relu6": F.relu6(net.stem(x))}
    h = v["relu6"]
    for i, b in enumerate(net.blocks):
        v[f"blocks.{i}.relu6"] = F.relu6(b.bn(b.conv(h)))
        h = v[f"blocks.{i}.add"] = h + v[f"blocks.{i}.relu6"]
    v["adaptive_avg_pool2d"] = F.adaptive_avg_pool2d(h, 1)
    v["flatten"] = torch.flatten(v["adaptive_avg_pool2d"], 1)
    return v, net.fc(v["flatten"])


def split_grad(net: torch.nn.Module, x: np.ndarray, target: int) -> np.ndarray:
    """d logit[target] / d blocks.0.relu6 by the network cut by hand at that value: the first half computes it
    and the block's input (the skip path), the second half runs on from a leaf tensor holding it."""
    with torch.no_grad():
        skip = F.relu6(net.stem(torch.from_numpy(x)))
        b0 = net.blocks[0]
        a = F.relu6(b0.bn(b0.conv(skip)))
    a = a.clone().requires_grad_(True)
    h = skip + a
    b1 = net.blocks[1]
    h = h + F.relu6(b1.bn(b1.conv(h)))
    logits = net.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))
    (g,) = torch.autograd.grad(logits[:, target].sum(), a)
    return g.numpy()


def test_functional_results_are_listed_with_shape_and_op(eager):
    layers = {li.name: li for li in eager.layers()}
    for name in FUNCTIONAL:
        assert name in layers, name
    assert layers["blocks.0.relu6"].kind == "relu6" and layers["blocks.0.relu6"].shape == (6, 16, 16)
    assert layers["blocks.1.add"].kind == "add"
    assert layers["flatten"].kind == "flatten" and layers["flatten"].shape == (6,)
    assert layers["blocks.0"].kind == "Block" and layers["stem"].kind == "Conv2d"  # module outputs as before
    names = [li.name for li in eager.layers()]
    # Listed in execution order among the modules: a block's values after its modules, before the next block.
    assert names.index("blocks.0.bn") < names.index("blocks.0.relu6") < names.index("blocks.0.add") < names.index("blocks.1")


def test_activations_equal_the_hand_written_forward(eager, x):
    got = eager.activations(x, FUNCTIONAL + ["stem"])
    with torch.no_grad():
        want, _ = oracle(eager.torch_module, torch.from_numpy(x))
    for name in FUNCTIONAL:
        np.testing.assert_allclose(got[name], want[name].numpy().reshape(got[name].shape), rtol=1e-5, atol=1e-5)
    assert got["blocks.0.relu6"].max() == pytest.approx(6.0)  # saturated somewhere: the ReLU6 is exercised


@pytest.mark.parametrize("layer", ["relu6", "blocks.0.relu6", "blocks.1.add", "flatten"])
def test_head_logits_from_a_functional_value_reproduce_predict(eager, x, layer):
    acts = eager.activations(x, [layer])[layer]
    np.testing.assert_allclose(eager.head(layer).logits(acts, x), eager.predict(x), rtol=1e-5, atol=1e-5)


def test_head_grad_equals_autograd_on_the_hand_split_network(eager, x):
    acts = eager.activations(x, ["blocks.0.relu6"])["blocks.0.relu6"]
    for target in (0, 1):
        got = eager.head("blocks.0.relu6").grad(acts, x, target)
        want = split_grad(eager.torch_module, x, target)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert np.abs(want).max() > 0


def test_layer_grads_at_two_functional_layers_in_one_pass_equal_per_layer_heads(eager, x):
    layers = ["blocks.0.relu6", "blocks.1.add"]
    acts, grads = eager.layer_acts_and_grads(x, layers, 1)
    plain = eager.activations(x, layers)
    for layer in layers:
        np.testing.assert_allclose(acts[layer], plain[layer], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(grads[layer], eager.head(layer).grad(plain[layer], x, 1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grads["blocks.0.relu6"], split_grad(eager.torch_module, x, 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(eager.layer_grads(x, layers, 1)["blocks.1.add"], grads["blocks.1.add"])


def test_layer_grads_mixing_module_and_functional_layers(eager, x):
    layers = ["blocks.0.conv", "blocks.0.relu6"]
    _, grads = eager.layer_acts_and_grads(x, layers, 0)
    plain = eager.activations(x, layers)
    for layer in layers:
        np.testing.assert_allclose(grads[layer], eager.head(layer).grad(plain[layer], x, 0), rtol=1e-5, atol=1e-7)


def test_a_functional_relu6_output_passes_rsvcs_non_negative_search(eager, x):
    acts = eager.activations(x[:8], ["blocks.0.relu6", "blocks.0.bn"])
    assert not is_negative(acts["blocks.0.relu6"])[0]
    assert is_negative(acts["blocks.0.bn"])[0]  # the value before it is signed: the search can tell them apart


def test_rsvc_validate_accepts_a_functional_relu6_layer(netdir, tiny_world, tmp_path):
    """The real search (rsvc_images.negative_layers, through `auditor validate`) on a `module:factory` model."""
    (tmp_path / "world").symlink_to(tiny_world.root / "world")
    (tmp_path / "r6net.py").write_text(NET_SOURCE)

    def validate(layer: str) -> subprocess.CompletedProcess:
        (tmp_path / "p.yaml").write_text(f"""seed: 1
models:
  candidate: {{factory: "r6net:build"}}
  reference: {{factory: "r6net:build"}}
preprocessing: {{size: 16, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}
data:
  classes: {{folder: world/classes, names: [a, b]}}
layers:
  candidate: ['{layer}']
  reference: ['{layer}']
checks:
  - id: shared
    method: rsvc
    classes: [a]
    concepts: 4
""")
        return subprocess.run([sys.executable, "-m", "auditor", "validate", str(tmp_path / "p.yaml")],
                              capture_output=True, text=True)

    ok = validate("blocks.0.relu6")
    assert ok.returncode == 0, ok.stderr
    signed = validate("blocks.0.bn")
    assert signed.returncode == 2 and "negative activations" in signed.stderr and "Traceback" not in signed.stderr


def test_torch_export_program_same_names_same_values(eager, exported, x):
    assert exported.framework == "torch-export"
    assert [(li.name, li.shape, li.kind) for li in exported.layers()] == [
        (li.name, li.shape, li.kind) for li in eager.layers()
    ]
    names = [li.name for li in eager.layers()]
    a, b = eager.activations(x, names), exported.activations(x, names)
    for name in names:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(exported.predict(x), eager.predict(x), rtol=1e-5, atol=1e-5)
    layers = ["blocks.0.relu6", "blocks.0", "fc"]
    _, g_export = exported.layer_acts_and_grads(x, layers, 1)
    _, g_eager = eager.layer_acts_and_grads(x, layers, 1)
    for name in layers:
        np.testing.assert_allclose(g_export[name], g_eager[name], rtol=1e-5, atol=1e-6, err_msg=name)
    head = exported.head("blocks.0.relu6")
    np.testing.assert_allclose(head.grad(a["blocks.0.relu6"], x, 1), g_eager["blocks.0.relu6"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head.logits(a["blocks.0.relu6"], x), eager.predict(x), rtol=1e-5, atol=1e-5)


class _InplaceAfterAdd(torch.nn.Module):
    """`h = x + y` read out, then overwritten by an in-place ReLU: the layer must be h before the ReLU."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x) + x
        return self.fc(F.relu(h, inplace=True).mean(dim=(2, 3)))


def test_a_functional_value_overwritten_in_place_later(x):
    net = _InplaceAfterAdd().eval()
    model = ModuleModel(net, "inplace", "0", "torch", SHAPE)
    with torch.no_grad():
        want = (net.conv(torch.from_numpy(x)) + torch.from_numpy(x)).numpy()
    assert want.min() < 0
    np.testing.assert_allclose(model.activations(x, ["add"])["add"], want, rtol=1e-5, atol=1e-5)
    acts, grads = model.layer_acts_and_grads(x, ["add"], 0)
    np.testing.assert_allclose(acts["add"], want, rtol=1e-5, atol=1e-5)
    head = model.head("add")
    np.testing.assert_allclose(grads["add"], head.grad(want, x, 0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(head.logits(want, x), model.predict(x), rtol=1e-5, atol=1e-5)
    expected = (want > 0) * net.fc.weight[0].detach().numpy()[None, :, None, None] / (16 * 16)
    np.testing.assert_allclose(grads["add"], expected, rtol=1e-5, atol=1e-7)


class _InplaceAfterConv(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.act = torch.nn.ReLU(inplace=True)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


def test_a_module_heads_in_place_op_writes_on_a_copy(x):
    """The head of a module output followed by ReLU(inplace=True): logits left the caller's array rectified and
    grad failed on its leaf tensor, before the head read a copy."""
    net = _InplaceAfterConv().eval()
    model = ModuleModel(net, "inplace", "0", "torch", SHAPE)
    acts = model.activations(x, ["conv"])["conv"]
    kept = acts.copy()
    np.testing.assert_allclose(model.head("conv").logits(acts, x), model.predict(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(acts, kept)
    expected = (kept > 0) * net.fc.weight[1].detach().numpy()[None, :, None, None] / (16 * 16)
    np.testing.assert_allclose(model.head("conv").grad(acts, x, 1), expected, rtol=1e-5, atol=1e-7)


class _Untraceable(torch.nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:
            y = y * 2
        return F.relu(y).mean(dim=(2, 3))


def test_an_untraceable_model_keeps_its_module_outputs_and_says_why():
    model = ModuleModel(_Untraceable().eval(), "u", "0", "torch", SHAPE)
    assert [li.name for li in model.layers()] == ["conv"]
    assert "torch.fx cannot trace u" in model.graph_note
    with pytest.raises(UserError, match="functional results are not listed: torch.fx cannot trace u"):
        model.activations(np.zeros((1, *SHAPE), np.float32), ["relu"])


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_same_names_same_values(eager, netdir, x, how):
    net = eager.torch_module
    scripted = torch.jit.script(net) if how == "script" else torch.jit.trace(net, torch.zeros(2, *SHAPE))
    path = netdir / f"r6net-{how}.pt"
    scripted.save(str(path))
    model = load_model(path, "auto", SHAPE)
    assert model.framework == "torchscript"
    assert [(li.name, li.shape, li.kind) for li in model.layers()] == [
        (li.name, li.shape, li.kind) for li in eager.layers()
    ]
    a, b = eager.activations(x, FUNCTIONAL), model.activations(x, FUNCTIONAL)
    for name in FUNCTIONAL:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-5, err_msg=name)
    _, grads = model.layer_acts_and_grads(x, ["blocks.0.relu6", "blocks.1.add"], 1)
    np.testing.assert_allclose(grads["blocks.0.relu6"], split_grad(net, x, 1), rtol=1e-5, atol=1e-6)
    head = model.head("blocks.0.relu6")
    np.testing.assert_allclose(head.grad(a["blocks.0.relu6"], x, 1), split_grad(net, x, 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head.logits(a["blocks.0.relu6"], x), eager.predict(x), rtol=1e-5, atol=1e-5)


def test_torchscript_value_overwritten_in_place_later(x, tmp_path):
    net = _InplaceAfterAdd().eval()
    path = tmp_path / "inplace.pt"
    torch.jit.script(net).save(str(path))
    model = load_model(path, "auto", SHAPE)
    with torch.no_grad():
        want = (net.conv(torch.from_numpy(x)) + torch.from_numpy(x)).numpy()
    acts, grads = model.layer_acts_and_grads(x, ["add"], 0)
    np.testing.assert_allclose(model.activations(x, ["add"])["add"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(acts["add"], want, rtol=1e-5, atol=1e-5)
    kept = want.copy()
    np.testing.assert_allclose(model.head("add").grad(want, x, 0), grads["add"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(want, kept)  # the head's in-place ReLU wrote on a copy, not on the caller's array
    expected = (want > 0) * net.fc.weight[0].detach().numpy()[None, :, None, None] / (16 * 16)
    np.testing.assert_allclose(grads["add"], expected, rtol=1e-5, atol=1e-7)


def test_auditor_layers_lists_functional_results(netdir):
    res = subprocess.run([sys.executable, "-m", "auditor", "layers", "r6net:build", "--size", "16"],
                         capture_output=True, text=True, cwd=netdir)
    assert res.returncode == 0, res.stderr
    rows = {line.split()[0]: line.split()[1] for line in res.stdout.splitlines() if not line.startswith("#")}
    assert rows["blocks.0.add"] == "add" and rows["blocks.1.relu6"] == "relu6" and rows["blocks.0.conv"] == "Conv2d"
