"""Cost of ClaDec on a demo-sized setting: 2 models x 2 layers, a ClaDec decoder and a reference auto-encoder
each (8 trainings), 64 px images, from a cold cache.

    .venv/bin/python benchmarks/cladec_cost.py demo-out      # the demo's two CNNs (torch twins), after `make demo`
    .venv/bin/python benchmarks/cladec_cost.py               # no demo: the demo architectures, untrained, on noise

The frozen layer's activations come from one forward pass per model (the store's job in the audit; timed apart,
not part of a training). Prints the time of each training and the share of it spent in forward passes of the
frozen classifier on reconstructions (the CE term; its backward pass is not separable and counts as decoder
time), the machine's load and the workers' CPU seconds (on a shared machine wall time counts waits for a core).
The trainings run as the check runs them (cladec_parallel.train_missing: forked workers, one torch thread each). Last line: `cladec_cost: seconds=<s> classifier_share=<x>`
(target: seconds < 120 on 2 cores). Environment: CLADEC_BENCH_IMAGES (images, default 240),
CLADEC_BENCH_EPOCHS (default: Settings' epochs).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from auditor import data
from auditor.methods import cladec_core as cc
from auditor.methods import cladec_reference as cr
from auditor.methods.cladec_parallel import TRAINING_THREADS, Job, train_missing, worker_count
from auditor.models import Model, load_model
from auditor.models.torch_model import ModuleModel

SIZE = 64
PRE = data.Preprocessing((SIZE, SIZE), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
N_IMAGES = int(os.environ.get("CLADEC_BENCH_IMAGES", "240"))
EPOCHS = int(os.environ.get("CLADEC_BENCH_EPOCHS", str(cc.Settings().epochs)))


def demo_setting(demo_out: Path) -> tuple[dict[str, tuple[Model, list[str]]], np.ndarray, np.ndarray]:
    """{role: (torch module, layers)}, [0, 1] images and their class labels from a demo-out folder."""
    layers = json.loads((demo_out / "models" / "layers.json").read_text())
    models = {}
    for role, key in (("candidate", "candidate_torch"), ("reference", "reference")):
        model = load_model(demo_out / "models" / f"{role}.pt", "torch", (3, SIZE, SIZE), name=role)
        models[role] = (model, layers[key])
    classes = sorted(p for p in (demo_out / "world" / "classes").iterdir() if p.is_dir())
    per_class = max(1, N_IMAGES // len(classes))
    paths, labels = [], []
    for k, folder in enumerate(classes):
        chosen = data.list_images(folder)[:per_class]
        paths += chosen
        labels += [k] * len(chosen)
    x = np.stack([data.read_rgb(p, PRE.size) for p in paths]).astype(np.float32) / 255.0
    return models, np.ascontiguousarray(x.transpose(0, 3, 1, 2)), np.asarray(labels)


def tiny_setting() -> tuple[dict[str, tuple[Model, list[str]]], np.ndarray, np.ndarray]:
    """The demo's two architectures, seeded and untrained, on seeded noise images (no demo-out needed)."""
    from auditor.demo.train import candidate_factory, reference_factory

    torch.manual_seed(0)
    shape = (3, SIZE, SIZE)
    models = {
        "candidate": (ModuleModel(candidate_factory(), "candidate", "-", "torch", shape), ["features.6", "features.9"]),
        "reference": (ModuleModel(reference_factory(), "reference", "-", "torch", shape), ["features.4", "features.7"]),
    }
    rng = np.random.default_rng(0)
    return models, rng.random((N_IMAGES, 3, SIZE, SIZE), dtype=np.float32), rng.integers(0, 4, N_IMAGES)


def main(argv: list[str]) -> None:
    demo = Path(argv[1]) if len(argv) > 1 else None
    models, x01, labels = demo_setting(demo) if demo is not None and demo.is_dir() else tiny_setting()
    source = f"demo models from {demo}" if demo is not None and demo.is_dir() else "untrained demo architectures"
    print(f"cladec_cost: {source}; {len(x01)} images of {SIZE} px; epochs {EPOCHS}; {worker_count()} trainings at "
          f"a time, {TRAINING_THREADS} torch thread each; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    settings = cc.Settings(epochs=EPOCHS, seed=0)
    quiet = lambda _m: None  # noqa: E731
    jobs: list[Job] = []
    with tempfile.TemporaryDirectory() as tmp:
        for role, (model, layers) in models.items():
            module = cc.torch_module(model)
            t = time.perf_counter()
            acts = model.activations(cc.to_model_np(x01, PRE), layers)
            print(f"  {role}: activations of {len(layers)} layers {time.perf_counter() - t:.2f}s (store; not counted)")
            for layer in layers:
                shape = tuple(acts[layer].shape[1:])
                jobs.append(Job(Path(tmp) / f"{role}-{layer}-cladec.pt", partial(
                    cc.train_cladec, acts[layer], x01, labels, module, PRE, settings, quiet), f"{role} {layer} {shape} cladec"))
                jobs.append(Job(Path(tmp) / f"{role}-{layer}-ae.pt", partial(
                    cr.train_reference, module, layer, x01, PRE, settings, quiet), f"{role} {layer} {shape} reference AE"))
        # As the check runs them: every training in a worker, `worker_count()` at a time.
        t, c = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        train_missing(jobs, quiet)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - c.ru_utime) + (after.ru_stime - c.ru_stime)
        trained = train_seconds = clf = 0.0
        for job in jobs:
            stats = torch.load(job.path, weights_only=True)["stats"]  # what the worker measured and saved
            stats = cc.TrainStats(0, stats["seconds"], stats["classifier_seconds"], (), cached=True)
            trained += 1
            train_seconds, clf = train_seconds + stats.seconds, clf + stats.classifier_seconds
            print(f"  {job.what}: {stats.seconds:.2f}s (classifier forward {stats.classifier_seconds / stats.seconds:.0%})")
    print(f"cladec_cost: {int(trained)} trainings, {train_seconds:.1f}s of training in all, {cpu:.1f} CPU-s in the workers")
    print(f"cladec_cost: seconds={wall:.1f} classifier_share={clf / train_seconds:.3f}")


if __name__ == "__main__":
    main(sys.argv)
