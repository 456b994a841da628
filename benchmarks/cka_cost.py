"""CKA between every pair of 4 layers of two ResNet-18-sized networks on 1,000 images at 224 px: time against the
forward passes alone, and peak memory.

The floor is what any CKA needs: one forward pass of each network over the images. Ours adds the hooks that
copy the 4 layers' outputs and the Gram matrices built batch by batch (auditor.methods.cka.GramBuilder: rows on
a scratch file, n x n in memory), then the 4 x 4 (linear, debiased) CKA matrices. Peak memory is the process's
maximum resident set (ru_maxrss) read after each phase; the floor's peak is printed too, so the difference is
what CKA adds. Environment: CKA_IMAGES (1000), CKA_BATCH (50), CKA_SIDE (224).
Last line: `cka_cost: seconds=<ours> floor_seconds=<floor> ratio=<x> peak_mib=<m>`.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import resnet_like  # noqa: E402

from auditor.methods import cka  # noqa: E402

IMAGES = int(os.environ.get("CKA_IMAGES", "1000"))
BATCH = int(os.environ.get("CKA_BATCH", "50"))
SIDE = int(os.environ.get("CKA_SIDE", "224"))
LAYERS = ("layer1", "layer2", "layer3", "layer4")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def image_batches():
    for start in range(0, IMAGES, BATCH):
        n = min(BATCH, IMAGES - start)
        yield torch.from_numpy(np.random.default_rng([7, start]).normal(size=(n, 3, SIDE, SIDE)).astype(np.float32))


def floor(net: torch.nn.Module) -> float:
    t = time.perf_counter()
    with torch.inference_mode():
        for x in image_batches():
            net(x)
    return time.perf_counter() - t


def grams(net: torch.nn.Module, scratch: Path) -> list[np.ndarray]:
    seen: dict[str, np.ndarray] = {}
    hooks = [getattr(net, name).register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(
        name, out.detach().numpy())) for name in LAYERS]
    builders = [cka.GramBuilder(scratch / f"{name}.bin") for name in LAYERS]
    try:
        with torch.inference_mode():
            for x in image_batches():
                net(x)
                for name, builder in zip(LAYERS, builders):
                    builder.add(seen.pop(name))
        return [b.gram() for b in builders]
    finally:
        for h in hooks:
            h.remove()
        for b in builders:
            b.close()


def main() -> None:
    torch.set_flush_denormal(True)
    nets = [resnet_like.build(seed) for seed in (1, 2)]
    print(f"{IMAGES} images at {SIDE} px, batches of {BATCH}, torch threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    floor_s = sum(floor(net) for net in nets)
    floor_peak = peak_mib()
    print(f"floor: forward passes of both networks {floor_s:.1f} s, peak {floor_peak:.0f} MiB", flush=True)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ga, gb = (grams(net, Path(tmp)) for net in nets)
        lin, deb = cka.cka_matrix(ga, gb)
    ours = time.perf_counter() - t
    print("linear CKA (rows: network 1 layer1..4, columns: network 2)\n" + np.array2string(lin, precision=3))
    print("debiased CKA\n" + np.array2string(deb, precision=3))
    print(f"ours: forward passes, hooks, Gram matrices and CKA {ours:.1f} s, peak {peak_mib():.0f} MiB")
    print(f"cka_cost: seconds={ours:.1f} floor_seconds={floor_s:.1f} ratio={ours / floor_s:.2f} "
          f"peak_mib={peak_mib():.0f}")


if __name__ == "__main__":
    main()
