"""Build the worked example: `python examples/mnist/build.py OUT [--per-class N]`.

Writes OUT/models/digits.pt (TorchScript) and OUT/models/digits.onnx (ONNX) of the pretrained MNIST CNN that
digit-recognizer-py 0.1.0 ships (mnist_net.py), OUT/world/ (real handwritten digits, stroke concepts, a random
pool, a probe set, the glyph: mnist_world.py), OUT/policy.yaml (mnist_policy.py) and OUT/metrics.json (the CNN's
top-1 accuracy on the digits and the largest logit difference between the two exports). Then
`auditor run OUT/policy.yaml --out OUT/report` audits it (`make example` does both).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mnist_net  # noqa: E402
import mnist_policy  # noqa: E402
import mnist_world  # noqa: E402

#: Class images per digit in the full example (the next as many go to the probe set; the rarest digit has 174).
PER_CLASS = 80


def measure(models: dict, digits: np.ndarray, labels: np.ndarray, class_idx: np.ndarray) -> dict:
    """Top-1 accuracy of both exports on every digit and on the class images, and their largest logit gap."""
    x = mnist_net.normalise(digits)
    ts = mnist_net.torchscript_logits(models["torchscript"], x)
    ox = mnist_net.onnx_logits(models["onnx"], x)
    pred = ts.argmax(axis=1)
    return {
        "digits": int(len(labels)),
        "top1_accuracy": float((pred == labels).mean()),
        "top1_accuracy_class_images": float((pred[class_idx] == labels[class_idx]).mean()),
        "top1_accuracy_per_digit": [float((pred[labels == d] == d).mean()) for d in range(10)],
        "onnx_top1_accuracy": float((ox.argmax(axis=1) == labels).mean()),
        "max_abs_logit_difference": float(np.abs(ts - ox).max()),
    }


def build(out: Path, per_class: int = PER_CLASS, seed: int = 0) -> dict:
    """Write the models, the world, the policy and metrics.json under `out`; return the metrics. An earlier
    build's world/ and models/ are replaced (a build with fewer images would otherwise leave the extra ones)."""
    out.mkdir(parents=True, exist_ok=True)
    for ours in ("world", "models"):
        shutil.rmtree(out / ours, ignore_errors=True)
    models = mnist_net.export_both(out / "models")
    world = mnist_world.write_world(
        out / "world", per_class, mnist_policy.CONCEPT_IMAGES, mnist_policy.RANDOM_POOL, seed=seed
    )
    policy = mnist_policy.policy_text(models["onnx_layers"], models["torch_layers"], seed=seed)
    (out / "policy.yaml").write_text(policy, encoding="utf-8")
    metrics = measure(models, world["digits"], world["labels"], world["class_idx"])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (created)")
    parser.add_argument("--per-class", type=int, default=PER_CLASS,
                        help=f"class images per digit, and as many probe images (default {PER_CLASS}, at most 87)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 1 <= args.per_class <= 87:
        parser.error("--per-class must be 1..87 (the rarest digit has 174 images, split between classes and probe)")
    m = build(args.out, args.per_class, args.seed)
    per_digit = " ".join(f"{d}:{a:.2f}" for d, a in enumerate(m["top1_accuracy_per_digit"]))
    print(f"top-1 accuracy on {m['digits']} scikit-learn digits: {m['top1_accuracy']:.3f} ({per_digit}); "
          f"class images {m['top1_accuracy_class_images']:.3f}; ONNX {m['onnx_top1_accuracy']:.3f}; "
          f"largest |logit| difference ONNX vs TorchScript {m['max_abs_logit_difference']:.2e}")
    print(f"policy: {args.out / 'policy.yaml'}")


if __name__ == "__main__":
    main()
