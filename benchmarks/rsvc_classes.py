"""RSVC's cost with a 10-class and a 1,000-class head (issue 18, item 2): the same check on the same trunk and the
same images, only the classifier differs. The class audited is named by a mapping (`names: {285: chosen}`), the
way a user audits one class of an ImageNet model, and the check must evaluate it (all images enter it: a bias on
its logit makes both models predict it everywhere, while every other class keeps p >= 1e-6, the floor of the
per-class gradient RSVC used before; the benchmark prints how many do).

Two TorchScript models (candidate and reference: a narrow ResNet-ish trunk, BasicBlocks 32-64-128-256 at 64 px, two
seeds; the trunk is the same for both head sizes), concept layer `layer3` (its head: `layer4`, pooling and the
classifier: 8.4M multiply-adds a row, against 0.26M for a 1,000-class classifier). Both head sizes are timed
side by side, alternated, RSVC_CLASSES_REPEAT (2) times, each run from a cold cache (pool predictions, patch
activations, NMF, Lasso, importance: the whole check). For the record, the per-class -CE gradient RSVC used before
(one forward + backward per class with p >= 1e-6, i.e. all of them) is estimated on the 1,000-class head from one
chunk of rows: its cost over the one-pass gradient's on the same rows, times the importance seconds measured.

    .venv/bin/python benchmarks/rsvc_classes.py

Last line: `rsvc_classes: seconds_10=<s> seconds_1000=<s> ratio=<x>` (median seconds of the whole check).
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from resnet_like import BasicBlock, randomise  # noqa: E402

from auditor import pipeline  # noqa: E402
from auditor.methods import METHODS  # noqa: E402
from auditor.methods import rsvc_core as core  # noqa: E402
from auditor.models import load_model  # noqa: E402
from auditor.policy import load_policy  # noqa: E402

REPEAT = int(os.environ.get("RSVC_CLASSES_REPEAT", "2"))
SIDE = 64
IMAGES = 32
TARGET = {10: 3, 1000: 285}  # the logit audited in each head
WIDTHS = (32, 64, 128, 256)


class Net(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        # As ResNet's stem: stride 2 and a max-pool, so layer1..layer4 run at 16, 8, 4 and 2 px.
        self.stem = nn.Sequential(nn.Conv2d(3, WIDTHS[0], 3, 2, 1, bias=False), nn.BatchNorm2d(WIDTHS[0]), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        cin = WIDTHS[0]
        for i, w in enumerate(WIDTHS):
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)))
            cin = w
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(x.mean(dim=(2, 3)))


def build(classes: int, seed: int) -> Net:
    """The trunk from `seed` alone (the same for both head sizes), then the classifier from its own seed."""
    torch.manual_seed(seed)
    net = Net(classes)
    randomise(net, torch.Generator().manual_seed(seed), linear=False)
    with torch.no_grad():
        head = torch.Generator().manual_seed(seed + 10_000)
        net.fc.weight.normal_(0.0, 2.0 / WIDTHS[-1] ** 0.5, generator=head)
        net.fc.bias.zero_()
    return net.eval()


def images(folder: Path) -> np.ndarray:
    """IMAGES seeded pictures (noise, a bright box and stripes), written as PNG; returns them normalised."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(IMAGES):
        img = rng.normal(110, 30, (SIDE, SIDE, 3))
        y, x = rng.integers(0, SIDE - 20, 2)
        img[y : y + 20, x : x + 20] += rng.uniform(40, 120, 3)
        img[:: int(rng.integers(3, 8))] += 50
        rgb = np.clip(img, 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"{i:03d}.png")
        out.append((rgb.transpose(2, 0, 1) / 255.0 - 0.5) / 0.25)
    return np.stack(out).astype(np.float32)


def save(net: Net, target: int, x: np.ndarray, path: Path) -> None:
    """Raise the target's bias until every image predicts it (0.5 above the largest other logit)."""
    with torch.no_grad():
        logits = net(torch.from_numpy(x))
        others = logits.clone()
        others[:, target] = -np.inf
        net.fc.bias[target] += float((others.max(1).values - logits[:, target]).max()) + 0.5
        p = torch.softmax(net(torch.from_numpy(x)), 1)
    assert bool((p.argmax(1) == target).all())
    torch.jit.script(net).save(str(path))


def policy(tmp: Path, classes: int) -> Path:
    text = {
        "seed": 0,
        "models": {r: {"path": str(tmp / f"{r}-{classes}.pt")} for r in ("candidate", "reference")},
        "preprocessing": {"size": SIDE, "mean": [0.5] * 3, "std": [0.25] * 3},
        "data": {"classes": {"folder": str(tmp / "classes"), "names": {TARGET[classes]: "chosen"}}},
        "layers": {"candidate": ["layer3"], "reference": ["layer3"]},
        "checks": [{"id": "rsvc", "method": "rsvc", "classes": ["chosen"], "concepts": 5, "extraction_images": 12,
                    "evaluation_images": 12, "ig_steps": 10}],
    }
    path = tmp / f"rsvc-{classes}.yaml"
    path.write_text(yaml.safe_dump(text))
    return path


def timed(path: Path, tmp: Path) -> tuple[float, float, dict]:
    """(seconds of the check, seconds of its importance step, the class's details) from a cold cache."""
    lines: list[str] = []
    pol = load_policy(path)
    ctx = pipeline.prepare(pol, Path(tempfile.mkdtemp(dir=tmp)), lines.append)
    start = time.perf_counter()
    result = METHODS["rsvc"].run(pol.checks[0], ctx)
    seconds = time.perf_counter() - start
    found = [float(m.group(1)) for line in lines for m in [re.search(r"importance (\d+\.\d) s", line)] if m]
    return seconds, found[-1] if found else float("nan"), result.details["classes"]["chosen"]


def old_over_new(model_path: Path, x: np.ndarray, target: int) -> tuple[float, int]:
    """(the per-class gradient's seconds / the one-pass gradient's, classes it would use) on 64 rows of the head."""
    model = load_model(model_path, "torch", (3, SIDE, SIDE))
    head = model.head("layer3")
    rows = np.repeat(x, 2, axis=0)[:64]
    acts = model.activations(rows, ["layer3"])["layer3"]
    directions = np.random.default_rng(0).random((5, *acts.shape[1:])).astype(np.float32)
    t = time.perf_counter()
    head.logp_directional(acts, rows, directions, target)
    new = time.perf_counter() - t
    t = time.perf_counter()
    p = np.exp(core.log_softmax(np.asarray(head.logits(acts, rows), np.float64)))
    used = int((p.max(axis=0) >= 1e-6).sum())
    sample = 20
    for c in range(sample):
        head.directional(acts, rows, directions, c)
    per_class = (time.perf_counter() - t) / sample
    return per_class * used / new, used


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    print(f"before: {uptime()}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        x = images(tmp / "classes" / "chosen")
        for classes in (10, 1000):
            for role, seed in (("candidate", 1), ("reference", 2)):
                save(build(classes, seed), TARGET[classes], x, tmp / f"{role}-{classes}.pt")
        runs: dict[int, list[float]] = {10: [], 1000: []}
        importance: dict[int, list[float]] = {10: [], 1000: []}
        for i in range(REPEAT):
            for classes in (10, 1000) if i % 2 == 0 else (1000, 10):
                seconds, imp, info = timed(policy(tmp, classes), tmp)
                # names: {285: chosen} reached RSVC: every image is predicted as logit 285 and entered the class.
                assert info["skipped"] is None and info["candidates"] == IMAGES, info
                runs[classes].append(seconds)
                importance[classes].append(imp)
                print(f"{classes:>4} classes: {seconds:.1f} s (importance {imp:.1f} s; {info['evaluation_images']} "
                      f"evaluation images x {info['patches_per_image']} patches)  load {os.getloadavg()[0]:.1f}",
                      flush=True)
        ratio, used = old_over_new(tmp / "candidate-1000.pt", x, TARGET[1000])
    s10, s1000 = statistics.median(runs[10]), statistics.median(runs[1000])
    print(f"after: {uptime()}")
    print(f"old per-class -CE gradient on the 1000-class head (estimated): {used} classes with p >= 1e-6, "
          f"{ratio:.0f}x the one-pass gradient's time on the same rows, i.e. about "
          f"{ratio * statistics.median(importance[1000]):.0f} s of importance instead of "
          f"{statistics.median(importance[1000]):.1f} s")
    print(f"rsvc_classes: seconds_10={s10:.1f} seconds_1000={s1000:.1f} ratio={s1000 / s10:.2f}")


if __name__ == "__main__":
    torch.set_flush_denormal(True)
    main()
