"""The causal artifact probe on models with known answers."""

import numpy as np
import pytest
import tinynet
import torch
from PIL import Image

from auditor import pipeline
from auditor.methods.artifact import paste_pair, position
from auditor.policy import ArtifactSpec, load_policy


def test_pairs_differ_only_on_the_footprint():
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    patch = np.zeros((3, 3, 4), np.float32)
    patch[..., :3] = 1.0
    patch[1, :, 3] = 1.0  # a horizontal bar: only the middle row is opaque
    at = position(ArtifactSpec(image="x.png", position="bottom-right", margin=0.0), (16, 16), (3, 3), None)
    assert at == (13, 13)
    art, neu = paste_pair(rgb, patch, at, 1.0)
    changed = np.any(art != rgb, axis=2) | np.any(neu != rgb, axis=2)
    assert not changed[:14].any() and not changed[15:].any() and not changed[:, :13].any()
    assert (art[14, 13:] == 255).all()
    assert np.allclose(neu[14, 13:], rgb.reshape(-1, 3).mean(0), atol=1)  # the image's own mean colour


def test_random_positions_are_seeded_and_inside():
    spec = ArtifactSpec(image="x.png", position="random")
    a = [position(spec, (20, 30), (5, 7), np.random.default_rng(3)) for _ in range(2)]
    assert a[0] == a[1]
    r, c = a[0]
    assert 0 <= r <= 15 and 0 <= c <= 23


@pytest.fixture
def corner_policy(tiny_world, tmp_path):
    torch.jit.script(tinynet.CornerNet()).save(str(tmp_path / "corner.pt"))
    (tmp_path / "world").symlink_to(tiny_world.root / "world")
    glyph = np.full((4, 4, 4), 255, np.uint8)
    Image.fromarray(glyph, "RGBA").save(tmp_path / "white.png")

    def write(position: str) -> object:
        text = f"""seed: 1
models:
  candidate: {{path: corner.pt}}
  reference: {{path: {tiny_world.script}}}
preprocessing: {{size: 16, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}
data:
  classes: {{folder: world/classes, names: [a, b]}}
checks:
  - id: probe
    method: artifact_probe
    severity: critical
    artifact: {{image: white.png, position: {position}, margin: 0.0}}
    direction: both
    require:
      - {{model: all, max_reliant_classes: 0}}
"""
        (tmp_path / "p.yaml").write_text(text)
        return load_policy(tmp_path / "p.yaml")

    return write, tmp_path


def test_probe_finds_the_corner_reliance_and_nothing_else(corner_policy):
    write, tmp = corner_policy
    result = pipeline.run_audit(write("bottom-right"), tmp / "cache", lambda _m: None).result
    check = result.checks[0]
    by = {(f["model"], f["class"]): f for f in check.findings}
    assert by[("candidate", "b")]["auc"] == 1.0 and by[("candidate", "b")]["reliant"]
    # logit 0 reads the other corner: identical for both versions of every image -> all ties -> AUC 0.5
    assert by[("candidate", "a")]["auc"] == 0.5 and not by[("candidate", "a")]["reliant"]
    assert check.status.value == "FAIL"
    # pasted where the model does not look, the same artifact moves nothing
    other = pipeline.run_audit(write("top-right"), tmp / "cache", lambda _m: None).result.checks[0]
    assert all(f["auc"] == 0.5 for f in other.findings if f["model"] == "candidate")


def test_missing_artifact_is_a_policy_error(corner_policy):
    write, tmp = corner_policy
    policy = write("bottom-right")
    (tmp / "white.png").unlink()
    with pytest.raises(Exception, match=r"checks\[0\].artifact.image"):
        pipeline.prepare(policy, tmp / "cache", lambda _m: None)
