"""`auditor validate` on broken policies: exit 2, one line per problem naming where, never a traceback."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _auditor(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "auditor", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture
def policy_dir(tiny_world, tmp_path):
    (tmp_path / "world").symlink_to(tiny_world.root / "world")
    shutil.copy(tiny_world.script, tmp_path / "tiny.pt")
    return tmp_path


def _write(d: Path, text: str) -> Path:
    (d / "p.yaml").write_text(text)
    return d / "p.yaml"


def _assert_user_error(res, *needles):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert lines, res.stderr
    for n in needles:
        assert any(n in l for l in lines), (n, res.stderr)
    return lines


def test_valid_policy(tiny_world, policy_dir):
    text = tiny_world.policy_text({"candidate": "tiny.pt", "reference": "tiny.pt"})
    res = _auditor("validate", str(_write(policy_dir, text)))
    assert res.returncode == 0, res.stderr
    assert "valid" in res.stdout


def test_misspelt_key(tiny_world, policy_dir):
    text = tiny_world.policy_text({"candidate": "tiny.pt", "reference": "tiny.pt"}).replace("severity:", "severty:")
    lines = _assert_user_error(_auditor("validate", str(_write(policy_dir, text))), "checks[0].severty")
    assert len(lines) == 1


def test_missing_model_file(tiny_world, policy_dir):
    text = tiny_world.policy_text({"candidate": "nowhere.pt", "reference": "tiny.pt"})
    lines = _assert_user_error(_auditor("validate", str(_write(policy_dir, text))), "models.candidate", "nowhere.pt")
    assert len(lines) == 1


def test_unknown_layer(tiny_world, policy_dir):
    text = tiny_world.policy_text(
        {"candidate": "tiny.pt", "reference": "tiny.pt"},
        layers={"candidate": ["features.1", "features.44"], "reference": ["features.1"]},
    )
    lines = _assert_user_error(_auditor("validate", str(_write(policy_dir, text))), "layers.candidate[1]", "features.44")
    assert len(lines) == 1


def test_missing_policy_and_bad_yaml(policy_dir):
    _assert_user_error(_auditor("validate", str(policy_dir / "absent.yaml")), "absent.yaml")
    _assert_user_error(_auditor("validate", str(_write(policy_dir, "models: [unclosed\n"))), "not valid YAML")


def test_corrupt_image_is_named(tiny_world, policy_dir, tmp_path):
    world = tmp_path / "w2"
    shutil.copytree(tiny_world.root / "world", world)
    (world / "concepts" / "red" / "broken.png").write_bytes(b"\x89PNG garbage")
    text = tiny_world.policy_text({"candidate": "tiny.pt", "reference": "tiny.pt"}).replace("world/", "w2/")
    _assert_user_error(_auditor("validate", str(_write(policy_dir, text))), "broken.png")


def test_layers_command_lists_shapes(policy_dir):
    res = _auditor("layers", str(policy_dir / "tiny.pt"), "--size", "16")
    assert res.returncode == 0, res.stderr
    assert "features.4" in res.stdout and "(8, 8, 8)" in res.stdout
