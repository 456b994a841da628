"""A random pool too small for the sets a check draws from it is found before any method computes, by `auditor
validate` and by `auditor run` alike: one line per problem naming the YAML key (`checks[i].random_sets`,
`data.random.folder`), the counts and the fix, every problem of the policy at once, exit 2."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "auditor", *args], capture_output=True, text=True)


def _world(tiny_world, d: Path, pool: int) -> None:
    """The tiny world's classes and concepts, and a random pool of its first `pool` images."""
    for name in ("classes", "concepts"):
        (d / name).symlink_to(tiny_world.root / "world" / name)
    (d / "pool").mkdir()
    for p in sorted((tiny_world.root / "world" / "random").iterdir())[:pool]:
        shutil.copy(p, d / "pool" / p.name)
    shutil.copy(tiny_world.script, d / "tiny.pt")


def _policy(d: Path, checks: str) -> Path:
    (d / "p.yaml").write_text(f"""seed: 1
models:
  candidate: {{path: tiny.pt}}
  reference: {{path: tiny.pt}}
preprocessing: {{size: 16, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}
data:
  classes: {{folder: classes, names: [a, b]}}
  concepts: {{folder: concepts}}
  random: {{folder: pool}}
layers:
  candidate: ['features.1', 'features.4']
  reference: ['features.1', 'features.4']
checks:
{checks}""")
    return d / "p.yaml"


def _lines(res: subprocess.CompletedProcess, count: int) -> list[str]:
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == count, res.stderr
    return lines


CHECKS = """  - id: t
    method: tcav
    test: welch
    classes: [a]
    concepts: [red]
    random_sets: 2
    set_size: 12
  - id: s
    method: sacv
    classes: [a]
    concepts: [red, blue]
    random_sets: 2
    set_size: 10
  - id: t2
    method: tcav
    test: welch
    classes: [a]
    concepts: [missing]
    random_sets: 2
    set_size: 10
"""


def test_a_small_pool_is_named_by_validate_and_by_run_before_any_work(tiny_world, tmp_path):
    _world(tiny_world, tmp_path, 30)
    policy = _policy(tmp_path, CHECKS)
    # TCAV under Welch: (2 + 1) x 12 = 36 images; SACV under the exchangeability test: (2 + 2) x 10 = 40; and an
    # unrelated mistake (a concept folder that does not exist), all in one answer.
    for res in (_cli("validate", str(policy)), _cli("run", str(policy), "--out", str(tmp_path / "out"),
                                                     "--cache-dir", str(tmp_path / "cache"), "--quiet")):
        lines = _lines(res, 3)
        tcav = next(line for line in lines if "checks[0]" in line)
        assert "checks[0].random_sets: test welch draws random_sets + 1 = 3 disjoint sets of set_size = 12" in tcav
        assert "data.random.folder (pool)" in tcav and "it needs 36 images, the folder has 30; add 6 images" in tcav
        assert "lower random_sets / set_size" in tcav
        sacv = next(line for line in lines if "checks[1]" in line)
        assert "checks[1].random_sets: test exchangeable draws random_sets = 2 sets of set_size = 10 images" in sacv
        assert "it needs 40 images, the folder has 30; add 10 images" in sacv and "or use test: welch" in sacv
        assert any("missing" in line for line in lines)
    assert not (tmp_path / "out" / "results.json").exists()  # `run` stopped before computing anything
    # The fixes the lines name: sets that fit the pool exactly pass.
    fixed = CHECKS.replace("set_size: 12", "set_size: 10").replace("    method: sacv\n", "    method: sacv\n    test: welch\n")
    policy = _policy(tmp_path, fixed.split("  - id: t2")[0])
    res = _cli("validate", str(policy))
    assert res.returncode == 0, res.stderr


def test_a_similarity_check_on_a_pool_of_two_images(tiny_world, tmp_path):
    """Similarity subsamples the pool (no disjoint sets), but a CAV's non-concept side needs 3 images and CKA 4."""
    _world(tiny_world, tmp_path, 2)
    policy = _policy(tmp_path, """  - id: sim
    method: similarity
    concepts: [red]
""")
    lines = _lines(_cli("validate", str(policy)), 2)
    assert "checks[0].concepts: data.random.folder (pool) has 2 images" in lines[0]
    assert "checks[0]: CKA takes its images from data.random.folder (pool), which has 2" in lines[1]
