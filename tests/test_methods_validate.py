"""User mistakes that methods used to find mid-run (after minutes of work, with no results.json) are found by
`auditor validate`, before any method computes: exit 2, one line naming the YAML path. One test per moved check."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SIDE = 16  # the tiny world's image side (tests/conftest.py)


def _validate(policy: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditor", "validate", str(policy)], capture_output=True, text=True)


def _one_line(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def world(tiny_world, tmp_path) -> Path:
    (tmp_path / "world").symlink_to(tiny_world.root / "world")
    shutil.copy(tiny_world.script, tmp_path / "tiny.pt")
    return tmp_path


def _policy(d: Path, checks: str, layers: str = "['features.1', 'features.4']") -> Path:
    text = f"""seed: 1
models:
  candidate: {{path: tiny.pt}}
  reference: {{path: tiny.pt}}
preprocessing: {{size: {SIDE}, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}
data:
  classes: {{folder: world/classes, names: [a, b]}}
layers:
  candidate: {layers}
  reference: ['features.1', 'features.4']
checks:
{checks}"""
    (d / "p.yaml").write_text(text)
    return d / "p.yaml"


def _big_artifact(d: Path) -> str:
    """An artifact wider than the images (native pixels: no `scale`)."""
    Image.fromarray(np.full((SIDE + 4, SIDE + 4, 3), 200, np.uint8)).save(d / "big.png")
    return "big.png"


def test_an_artifact_larger_than_the_images_fails_validate(world):
    name = _big_artifact(world)
    policy = _policy(world, f"""  - id: probe
    method: artifact_probe
    artifact: {{image: {name}}}
""")
    _one_line(_validate(policy), "checks[0].artifact:", "larger than the images", "artifact.scale")


def test_inverts_pasted_artifact_larger_than_the_images_fails_validate(world):
    name = _big_artifact(world)
    rows = ["image,stripe"] + [f"world/classes/{k}/{p.name},{i % 2}" for k in ("a", "b")
                               for i, p in enumerate(sorted((world / "world" / "classes" / k).glob("*.png")))]
    (world / "labels.csv").write_text("\n".join(rows) + "\n")
    policy = _policy(world, f"""  - id: units
    method: invert
    labels: labels.csv
    min_fraction: 0.1
    artifact: {{image: {name}}}
""")
    _one_line(_validate(policy), "checks[0].artifact:", "larger than the images")


def test_a_signed_rsvc_layer_fails_validate(world):
    """RSVC factorises activations with NMF: a conv output (negative values) was refused only mid-run."""
    policy = _policy(world, """  - id: shared
    method: rsvc
    classes: [a]
    concepts: 4
""", layers="['features.1', 'features.3']")
    _one_line(_validate(policy), "layers.candidate: layer 'features.3' of model 'candidate' has negative activations")


def test_rsvc_naming_one_model_twice_fails_validate(world):
    policy = _policy(world, """  - id: shared
    method: rsvc
    classes: [a]
    models: [candidate, candidate]
""")
    _one_line(_validate(policy), "checks[0].models:", "different roles")


def test_sacvs_own_image_folder_without_a_class_fails_validate(world):
    """SACV read its own `images:` folder mid-run; a missing class subfolder is a policy mistake."""
    own = world / "own"
    shutil.copytree(world / "world" / "classes" / "b", own / "b")
    policy = _policy(world, """  - id: where
    method: sacv
    classes: [a]
    concepts: [red]
    test: welch
    random_sets: 2
    set_size: 10
    images: {folder: own}
""")
    text = policy.read_text().replace("data:\n", "data:\n  concepts: {folder: world/concepts}\n  random: {folder: world/random}\n")
    policy.write_text(text)
    _one_line(_validate(policy), "checks[0].images:", "own/a")


def test_a_welch_tcav_check_larger_than_the_random_pool_fails_validate(world):
    """Under Welch, TCAV draws N + 1 disjoint random sets; a pool too small for them stopped the audit mid-run."""
    policy = _policy(world, """  - id: t
    method: tcav
    test: welch
    classes: [a]
    concepts: [red]
    random_sets: 9
    set_size: 10
""")  # (9 + 1) x 10 = 100 images: the pool has them; 11 sets do not fit
    text = policy.read_text().replace("data:\n", "data:\n  concepts: {folder: world/concepts}\n  random: {folder: world/random}\n")
    policy.write_text(text)
    assert _validate(policy).returncode == 0
    policy.write_text(text.replace("random_sets: 9", "random_sets: 10"))
    _one_line(_validate(policy), "checks[0].random_sets: test welch draws random_sets + 1 = 11 disjoint sets of set_size = 10",
              "the folder has 100")
