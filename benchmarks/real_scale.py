"""The demo policy's battery (artifact probe, TCAV, SACV, INVERT, RSVC) on a ResNet-50-sized network at 224 px:
wall time per check against its floor, and the peak resident memory of the audit.

The world is made here, seeded, as PNG files in a temp folder: two class folders (circles, squares), three concept
folders (watermark, striped, dotted), a random pool of shapes and textures, a probe set with a labels CSV, and the
watermark image. The models are two copies of benchmarks/resnet50_like.py with different seeds (candidate and
reference), named by their factory. `auditor run` runs as a child process (`python -m auditor run`); its peak RSS
is the child's ru_maxrss from wait4, so the benchmark's own memory is not counted.

Per check: its wall time (from the audit's own progress lines: one check's start to the next one's), and its
floor: the bare forward and backward passes of plain torch that the check needs and that no earlier check of the
audit already computed (the store caches activations and gradients, so a pass is counted for the first check that
needs it, as the audit pays it). Counted per model the check runs on:
  artifact_probe  forward: every pasted image twice (artifact, neutral patch)
  tcav            forward: concept sets + random pool; forward+backward: the class images (one target each)
  sacv            the same (all cached by TCAV when it ran first on the same layers: floor 0 then)
  invert          forward: the probe set
  rsvc            forward: every class image (the model's predictions pick the class's images) and every patch
                  of the extraction and evaluation images (each patch is resized to the input size); the head
                  passes from the concept layer (layer4 -> fc) for the importance are not counted (~0.1% of a
                  forward).
A pass's cost is measured in this run on the world's own images: seconds per image of a forward pass and of a
forward+backward pass (logit sum, gradient at the input), each the best of 2 timings over up to 32 images, with the
audit's batch size, channels-last as the torch adapters run conv nets. Floor of a check = forward images x forward cost + backward images x forward+backward cost.

Options: --images N (default 1000, env REAL_SCALE_IMAGES; at least 200) is the number of class + concept + pool +
probe images; --scale K reruns on K x the images and prints `scaling: memory_ratio=<x> time_ratio=<x>`;
--max-memory is passed to `auditor run` when given. Last line:
`real_scale: seconds=<s> floor_ratio=<x> peak_mib=<m>` (of the first run; --scale prints its line before it).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

SIDE = 224
CONCEPTS = ("watermark", "striped", "dotted")
CLASSES = {0: "circle", 1: "square"}  # logit -> class name; logit 1 is the one the random nets predict (RSVC)
RANDOM_SETS = 4
LAYERS = ("layer3", "layer4")
PATCH, STRIDE = 0.5, 1.0  # RSVC crops: 4 per image
# TCAV and SACV at the schema's defaults: 2,000 pseudo-concepts (the exchangeability test fits 2,000 x random_sets
# CAVs per model and layer in 1,024 and 2,048 dimensions: batched Newton in the rows' dimension since issue 18; one
# sklearn fit each before, over 6 minutes here) and RSVC at the default 30 integrated-gradient intervals (the head
# from the concept layer, layer4, is the pooling and the last linear layer since issue 18: a hooked head ran the
# whole network for each point). RSVC runs on a fixed number of images (5 evaluation images: one per fold), so
# its cost does not grow with --images; its extraction and evaluation images are the policy's to choose.
RSVC_IMAGES = 5


@dataclass(frozen=True)
class Sizes:
    set_size: int  # concept images per concept and random set size
    pool: int
    per_class: int
    probe: int
    rsvc_images: int  # extraction and evaluation images each

    @property
    def total(self) -> int:
        return len(CONCEPTS) * self.set_size + self.pool + len(CLASSES) * self.per_class + self.probe


def sizes(n: int) -> Sizes:
    """Split n images: 1/20 of n per concept and random set (at least 10, the schema's least), a pool of
    (random_sets + 2) sets, the rest half to the classes and half to the probe set."""
    s = max(10, n // 20)
    pool = (RANDOM_SETS + 2) * s
    rest = n - len(CONCEPTS) * s - pool
    if rest < 40:
        raise SystemExit(f"--images {n}: too few; at least 200")
    per_class = rest // 4
    return Sizes(s, pool, per_class, rest - 2 * per_class, RSVC_IMAGES)


# ---- the world ----------------------------------------------------------------------------------------------


def background(rng: np.random.Generator) -> np.ndarray:
    kind = rng.integers(3)
    base = rng.integers(40, 216, size=3).astype(np.float32)
    if kind == 0:
        img = np.broadcast_to(base, (SIDE, SIDE, 3)).copy()
    elif kind == 1:
        img = base + rng.normal(0, 25, size=(SIDE, SIDE, 3))
    else:
        ramp = np.linspace(-60, 60, SIDE, dtype=np.float32)
        img = base + (ramp[:, None, None] if rng.integers(2) else ramp[None, :, None])
    return np.broadcast_to(img, (SIDE, SIDE, 3)).astype(np.float32)


def draw_shape(img: np.ndarray, rng: np.random.Generator, shape: str) -> None:
    yy, xx = np.mgrid[:SIDE, :SIDE]
    cy, cx = rng.integers(60, SIDE - 60, size=2)
    r = rng.integers(25, 55)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r if shape == "circle" else (abs(yy - cy) < r) & (abs(xx - cx) < r)
    img[mask] = rng.integers(0, 256, size=3)


def texture(img: np.ndarray, rng: np.random.Generator, kind: str) -> None:
    yy, xx = np.mgrid[:SIDE, :SIDE]
    colour = rng.integers(0, 256, size=3)
    if kind == "striped":
        period = rng.integers(8, 24)
        mask = ((xx + yy * rng.integers(0, 2)) // (period // 2)) % 2 == 0
    else:  # dotted
        period = rng.integers(12, 28)
        mask = ((yy % period) - period / 2) ** 2 + ((xx % period) - period / 2) ** 2 < (period / 4) ** 2
    img[mask] = colour


def watermark() -> np.ndarray:
    """A 48 x 24 RGBA stamp: a white bar pattern on a half-transparent dark box."""
    w = np.zeros((24, 48, 4), np.uint8)
    w[..., 3] = 160
    w[4:20, 4:44:6, :3] = 255
    w[4:20, 4:44:6, 3] = 255
    return w


def stamp(img: np.ndarray, mark: np.ndarray) -> None:
    h, w = mark.shape[:2]
    y, x = SIDE - h - 10, SIDE - w - 10
    alpha = mark[..., 3:4].astype(np.float32) / 255
    img[y : y + h, x : x + w] = img[y : y + h, x : x + w] * (1 - alpha) + mark[..., :3] * alpha


def save(img: np.ndarray, path: Path) -> None:
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(path)


def make_world(root: Path, sz: Sizes, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    mark = watermark()
    Image.fromarray(mark, "RGBA").save(root / "watermark.png")
    for name in CLASSES.values():
        (root / "classes" / name).mkdir(parents=True)
        for i in range(sz.per_class):
            img = background(rng)
            draw_shape(img, rng, name)
            save(img, root / "classes" / name / f"{i:04d}.png")
    for c in CONCEPTS:
        (root / "concepts" / c).mkdir(parents=True)
        for i in range(sz.set_size):
            img = background(rng)
            stamp(img, mark) if c == "watermark" else texture(img, rng, c)
            save(img, root / "concepts" / c / f"{i:04d}.png")
    (root / "random").mkdir()
    for i in range(sz.pool):
        img = background(rng)
        if rng.random() < 0.5:
            draw_shape(img, rng, ("circle", "square")[rng.integers(2)])
        if rng.random() < 0.3:
            texture(img, rng, ("striped", "dotted")[rng.integers(2)])
        save(img, root / "random" / f"{i:04d}.png")
    (root / "probe").mkdir()
    with open(root / "probe" / "labels.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["image", *CONCEPTS, "plain", "circle", "square"])
        for i in range(sz.probe):
            img = background(rng)
            shape = ("circle", "square")[rng.integers(2)]
            draw_shape(img, rng, shape)
            tex = ("striped", "dotted", "plain")[rng.integers(3)]
            if tex != "plain":
                texture(img, rng, tex)
            wm = rng.random() < 0.3
            if wm:
                stamp(img, mark)
            save(img, root / "probe" / f"{i:04d}.png")
            out.writerow([f"{i:04d}.png", int(wm), int(tex == "striped"), int(tex == "dotted"), int(tex == "plain"),
                          int(shape == "circle"), int(shape == "square")])


def policy_text(sz: Sizes) -> str:
    names = ", ".join(f"{k}: {v}" for k, v in CLASSES.items())
    layers = "[" + ", ".join(LAYERS) + "]"
    return f"""title: real-scale benchmark
seed: 0
models:
  candidate: {{factory: resnet50_like:build_two_logits, name: candidate}}
  reference: {{factory: resnet50_like:build_two_logits_seed2, name: reference}}
preprocessing: {{size: {SIDE}}}
data:
  classes: {{folder: classes, names: {{{names}}}}}
  concepts: {{folder: concepts}}
  random: {{folder: random}}
layers: {{candidate: {layers}, reference: {layers}}}
checks:
  - {{id: probe, method: artifact_probe, artifact: {{image: watermark.png, position: bottom-right, margin: 0.05}},
      images_per_class: {sz.per_class}, direction: both}}
  - {{id: tcav, method: tcav, classes: [{CLASSES[1]}], concepts: [{", ".join(CONCEPTS)}], random_sets: {RANDOM_SETS},
      set_size: {sz.set_size}}}
  - {{id: sacv, method: sacv, classes: [{CLASSES[1]}], concepts: [{", ".join(CONCEPTS)}], random_sets: {RANDOM_SETS},
      set_size: {sz.set_size}}}
  - {{id: invert, method: invert, labels: probe/labels.csv, forbidden: [watermark], min_fraction: 0.1}}
  - {{id: rsvc, method: rsvc, classes: [{CLASSES[1]}], layers: {{candidate: {layers}, reference: {layers}}},
      extraction_images: {sz.rsvc_images}, evaluation_images: {sz.rsvc_images}, patch: {PATCH}, stride: {STRIDE}}}
"""


# ---- the floor ------------------------------------------------------------------------------------------------


def pass_costs(images: list[Path]) -> tuple[float, float]:
    """Seconds per image of a forward pass and of a forward+backward pass of the candidate, plain torch."""
    import torch

    import resnet50_like
    from auditor import data
    from auditor.models.torch_model import BATCH

    pre = data.Preprocessing((SIDE, SIDE), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    # In the layout the torch adapters pick for conv nets (channels-last, see docs/measurements.md), so that the
    # floor stays a floor.
    x = torch.from_numpy(np.stack([data.decode(p, pre) for p in images[:32]])).to(memory_format=torch.channels_last)
    net = resnet50_like.build_two_logits().to(memory_format=torch.channels_last)
    fwd, fb = [], []
    for _ in range(2):
        t = time.perf_counter()
        with torch.inference_mode():
            for s in range(0, len(x), BATCH):
                net(x[s : s + BATCH])
        fwd.append((time.perf_counter() - t) / len(x))
        t = time.perf_counter()
        for s in range(0, len(x), BATCH):
            xb = x[s : s + BATCH].clone().requires_grad_(True)
            net(xb).sum().backward()
        fb.append((time.perf_counter() - t) / len(x))
    return min(fwd), min(fb)


def pass_costs_in_child(folder: Path) -> tuple[float, float]:
    """`pass_costs` in a child process: torch's allocator keeps what the timing used, and this process stays
    small beside the audit it starts."""
    out = subprocess.run([sys.executable, __file__, "--pass-costs", str(folder)], capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[-2]), float(out[-1])


def floor_counts(sz: Sizes) -> dict[str, tuple[int, int]]:
    """check id -> (forward images, forward+backward images) over both models, first use only (see the top)."""
    models = 2
    concepts_pool = len(CONCEPTS) * sz.set_size + sz.pool
    patches = 2 * sz.rsvc_images * int(round(1 / PATCH)) ** 2
    return {
        "probe": (models * 2 * len(CLASSES) * sz.per_class, 0),
        "tcav": (models * concepts_pool, models * sz.per_class),
        "sacv": (0, 0),
        "invert": (models * sz.probe, 0),
        "rsvc": (models * (len(CLASSES) * sz.per_class + patches), 0),
    }


# ---- the audit ----------------------------------------------------------------------------------------------

_LINE = re.compile(r"^\[\s*([0-9.]+)s\] (check (\S+) \(|store: )")


def run_audit(root: Path, max_memory: str | None) -> tuple[dict[str, float], float, float, str]:
    """(seconds per check, wall seconds, peak MiB of the child, its stderr)."""
    cmd = [sys.executable, "-m", "auditor", "run", str(root / "policy.yaml"), "--out", str(root / "out"),
           "--cache-dir", str(root / "cache")]
    if max_memory:
        cmd += ["--max-memory", max_memory]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t = time.perf_counter()
    with open(root / "stderr.txt", "w") as err:
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=root)
        _pid, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t
    text = (root / "stderr.txt").read_text()
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):
        raise SystemExit(f"auditor run exited {code}:\n{text[-3000:]}")
    marks = [(float(m.group(1)), m.group(3)) for m in map(_LINE.match, text.splitlines()) if m]
    per_check = {cid: nxt[0] - at for (at, cid), nxt in zip(marks, marks[1:]) if cid}
    return per_check, wall, usage.ru_maxrss / 1024, text


_PEAK = re.compile(r"check (\S+) done, peak memory so far (\d+) MiB")


def check_peaks(text: str) -> dict[str, int]:
    """check id -> the audit's peak RSS when it ended (the pipeline logs it; absent before issue 18's change)."""
    return {m.group(1): int(m.group(2)) for m in map(_PEAK.search, text.splitlines()) if m}


@dataclass(frozen=True)
class Run:
    images: int
    seconds: float
    floor: float
    peak_mib: float


def one_run(n: int, max_memory: str | None, keep: Path | None) -> Run:
    sz = sizes(n)
    tmp = Path(tempfile.mkdtemp(prefix="real-scale-"))
    try:
        make_world(tmp, sz)
        shutil.copy(HERE / "resnet50_like.py", tmp / "resnet50_like.py")  # the factory, found beside the policy
        (tmp / "policy.yaml").write_text(policy_text(sz))
        f, fb = pass_costs_in_child(tmp / "classes" / CLASSES[1])
        print(f"{sz.total} images ({sz.per_class} per class x {len(CLASSES)}, {sz.set_size} per concept x "
              f"{len(CONCEPTS)}, pool {sz.pool}, probe {sz.probe}, RSVC {sz.rsvc_images}+{sz.rsvc_images}) at "
              f"{SIDE} px; pass costs {f:.3f} s/image forward, {fb:.3f} s/image forward+backward; load "
              f"{os.getloadavg()[0]:.1f}", flush=True)
        per_check, wall, peak, text = one_audit(tmp, max_memory)
        floors = {cid: nf * f + nb * fb for cid, (nf, nb) in floor_counts(sz).items()}
        peaks = check_peaks(text)
        for cid, s in per_check.items():
            fl = floors.get(cid, 0.0)
            ratio = f"{s / fl:.2f}" if fl > 0 else "-"
            peak_so_far = f"   peak so far {peaks[cid]} MiB" if cid in peaks else ""
            print(f"  {cid:8s} {s:8.1f} s   floor {fl:8.1f} s   ratio {ratio}{peak_so_far}", flush=True)
        seconds = sum(per_check.values())
        floor = sum(floors.values())
        peak_line = [line for line in text.splitlines() if "peak" in line.lower()]
        print(f"  checks {seconds:.1f} s (whole run {wall:.1f} s, with loading, probing and the report), floor "
              f"{floor:.1f} s, peak RSS {peak:.0f} MiB{'; ' + peak_line[-1] if peak_line else ''}", flush=True)
        return Run(sz.total, seconds, floor, peak)
    finally:
        if keep is not None:
            shutil.copytree(tmp, keep, dirs_exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)


def one_audit(root: Path, max_memory: str | None) -> tuple[dict[str, float], float, float, str]:
    return run_audit(root, max_memory)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=int(os.environ.get("REAL_SCALE_IMAGES", "1000")))
    ap.add_argument("--scale", type=int, default=None, help="rerun on this many times the images")
    ap.add_argument("--max-memory", default=None, help="passed to `auditor run`")
    ap.add_argument("--keep", type=Path, default=None, help="copy the world, cache and report here")
    ap.add_argument("--pass-costs", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pass_costs is not None:
        print(*pass_costs(sorted(args.pass_costs.iterdir())))
        return
    first = one_run(args.images, args.max_memory, args.keep)
    if args.scale:
        big = one_run(args.images * args.scale, args.max_memory, None)
        print(f"scaling: images {first.images} -> {big.images}; memory_ratio={big.peak_mib / first.peak_mib:.2f} "
              f"time_ratio={big.seconds / first.seconds:.2f}", flush=True)
    print(f"real_scale: seconds={first.seconds:.1f} floor_ratio={first.seconds / first.floor:.2f} "
          f"peak_mib={first.peak_mib:.0f}", flush=True)


if __name__ == "__main__":
    main()
