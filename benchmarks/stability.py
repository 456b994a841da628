"""Stability, control and calibration of the shipped significance test (`test: exchangeable`) on the demo.

    .venv/bin/python benchmarks/stability.py demo-out      # after `make demo`; 20-40 minutes on 2 cores

Stability: are the TCAV and SACV verdicts of the demo's checks (policy seed 0, sets of 50) the same when rerun with
policy seed 1 on 200-image concept and random sets (from a world drawn with another seed; same models and class
images)? Control: with 60 random images in place of the triangle images, is any cell significant? Calibration: the
share of control cells with raw p <= 0.05 over CALIBRATION_SEEDS controls (images and policy seed varied; 0.05 is
nominal). Both statistics of METHODS.md are measured on the same runs (each finding carries both p-values); the
default is chosen by METHODS.md's rule: no control cell significant, at most 1 changed learned-cell verdict, then
the smaller p on the candidate's watermark cells. Last line:

    stability: test=exchangeable statistic=<s1|s2> tcav_changed=<k> of <n> sacv_changed=<k> of <n>
    control_significant=<j> calibration=<x>
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from auditor import pipeline
from auditor.demo.world import render_sample, write_world
from auditor.methods import stats
from auditor.policy import load_policy

SET_SIZE = 200
RUNS = 10
CALIBRATION_SEEDS = 20
ALPHA = 0.05
STATISTICS = {"score": "s1", "cosine": "s2"}


def _policy(demo_out: Path, world: Path, seed: int, set_size: int, classes: Path, field: Path, masks: Path) -> dict:
    """The demo policy's TCAV and SACV checks (shipped defaults) on the given sets."""
    policy = yaml.safe_load((demo_out / "policy.yaml").read_text())
    policy["seed"] = seed
    policy["models"] = {r: {**m, "path": str(demo_out / m["path"])} for r, m in policy["models"].items()}
    policy["data"]["classes"]["folder"] = str(classes)
    policy["data"]["concepts"]["folder"] = str(world / "concepts")
    policy["data"]["random"]["folder"] = str(world / "random")
    checks = []
    for c in policy["checks"]:
        if c["method"] in ("tcav", "sacv"):
            c = {**c, "set_size": set_size}
            if c["method"] == "sacv":
                c.update(images={"folder": str(field)}, masks={"folder": str(masks)},
                         concept_masks={"folder": str(world / "concept_masks")})
            checks.append(c)
    policy["checks"] = checks
    return policy


# Each audit's findings are kept here as they come (STABILITY_KEEP=<dir>), so that a failure after 40 minutes of
# audits loses nothing: a rerun with the same folder reads them back instead of auditing again.
KEEP = Path(os.environ["STABILITY_KEEP"]) if os.environ.get("STABILITY_KEEP") else None


def _findings(policy: dict, path: Path, cache: Path) -> list[dict]:
    """Every TCAV and SACV finding of the audit, with its method."""
    kept = None if KEEP is None else KEEP / f"{path.stem}.json"
    if kept is not None and kept.is_file():
        return json.loads(kept.read_text())
    path.write_text(yaml.safe_dump(policy))
    result = pipeline.run_audit(load_policy(path), cache, lambda _m: None).result
    out = [{**f, "method": c.method} for c in result.checks for f in c.findings]
    if kept is not None:
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(out))
    return out


def _key(f: dict) -> tuple:
    return (f["method"], f["model"], f["layer"], f["class"], f["concept"])


def _tested(f: dict) -> bool:
    return bool(f.get("tested", f["learned"]))


def verdicts(findings: list[dict], statistic: str) -> dict:
    """{cell: significant} of the learned cells under `statistic`, Holm over each method's cells (one TCAV and one
    SACV check here: the audit's family for both)."""
    out = {}
    for method in ("tcav", "sacv"):
        cells = sorted((_key(f), f[f"{statistic}_p_value"]) for f in findings if f["method"] == method and _tested(f))
        if cells:
            adjusted = stats.holm(np.array([p for _k, p in cells]))
            out.update({k: bool(p <= ALPHA) for (k, _p), p in zip(cells, adjusted)})
    return out


def _control_images(tmp: Path, seed: int) -> tuple[Path, Path]:
    """60 random images (drawn like the random pool: 10% carry the watermark) as the class 'triangle'."""
    rng = np.random.default_rng(12345 + seed)
    images, masks = tmp / f"control{seed}" / "triangle", tmp / f"control{seed}_masks" / "triangle"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for i in range(60):
        s = render_sample(rng, size=64, watermark=bool(rng.random() < 0.1))
        Image.fromarray(s.image).save(images / f"{i:04d}.png")
        Image.fromarray(np.where(s.mask, 255, 0).astype(np.uint8)).save(masks / f"{i:04d}.png")
    return images.parent, masks.parent


def control(demo_out: Path, tmp: Path, seed: int) -> list[dict]:
    classes, masks = _control_images(tmp, seed)
    policy = _policy(demo_out, demo_out / "world", seed, 50, classes, classes, masks)
    for c in policy["checks"]:
        c["classes"] = ["triangle"]
    return _findings(policy, tmp / f"control{seed}.yaml", tmp / "cache-control")


def choose(changed: dict, control_sig: dict, watermark_p: dict) -> str:
    """METHODS.md's rule: (1) no control cell significant, (2) at most 1 changed learned-cell verdict, then (3) the
    smaller p on the candidate's watermark cells; if none passes (1) and (2), the most stable one."""
    passing = [s for s in STATISTICS if control_sig[s] == 0 and changed[s] <= 1]
    if passing:
        return min(passing, key=lambda s: watermark_p[s])
    return min(STATISTICS, key=lambda s: (changed[s], control_sig[s]))


def main(demo_out: Path) -> None:
    start = time.time()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        world = tmp / "world200"
        write_world(world, seed=1, per_class=1, concept_size=SET_SIZE, random_pool=(RUNS + 11) * SET_SIZE, probe=1)
        w, field = demo_out / "world", demo_out / "world" / "field"
        base = _findings(_policy(demo_out, w, 0, 50, w / "classes", field, w / "field_masks"), tmp / "b.yaml", tmp / "c0")
        again = _findings(_policy(demo_out, world, 1, SET_SIZE, w / "classes", field, w / "field_masks"),
                          tmp / "a.yaml", tmp / "c1")
        print(f"[{time.time() - start:.0f}s] stability runs done", flush=True)
        controls = []
        for seed in range(CALIBRATION_SEEDS):
            controls.append(control(demo_out, tmp, seed))
            print(f"[{time.time() - start:.0f}s] control seed {seed} done", flush=True)
    changed, control_sig, watermark_p, calibration = {}, {}, {}, {}
    by_method: dict = {}
    for s in STATISTICS:
        v0, v1, vc = verdicts(base, s), verdicts(again, s), verdicts(controls[0], s)
        moved = sorted(k for k in v0 if v0[k] != v1.get(k))
        by_method[s] = {m: (sum(k[0] == m for k in moved), sum(k[0] == m for k in v0)) for m in ("tcav", "sacv")}
        changed[s] = len(moved)
        control_sig[s] = sum(vc.values())
        ps = [f[f"{s}_p_value"] for f in base if _tested(f) and f["model"] == "candidate" and f["concept"] == "watermark"]
        watermark_p[s] = float(np.mean(ps)) if ps else 1.0
        raw = [f[f"{s}_p_value"] for c in controls for f in c if _tested(f)]
        calibration[s] = float(np.mean(np.array(raw) <= 0.05)) if raw else float("nan")
        print(f"\n{s} ({STATISTICS[s]}): changed {changed[s]} of {len(v0)} tested cells, control significant "
              f"{control_sig[s]} of {len(vc)}, calibration {calibration[s]:.3f} ({len(raw)} control cells over "
              f"{CALIBRATION_SEEDS} seeds), candidate watermark mean p {watermark_p[s]:.4f}; significant at seed 0 / 1: "
              f"{sum(v0.values())} / {sum(v1.values())}")
        for k in sorted(set(v0) | set(v1)):
            if v0.get(k) or v1.get(k):
                print(f"    {'=' if v0.get(k) == v1.get(k) else '!'} {k}: {v0.get(k)} -> {v1.get(k)}")
    print("\nraw p per learned cell (score / cosine), seed 0 -> seed 1:")
    b1 = {_key(f): f for f in again}
    for f in base:
        if _tested(f):
            g = b1.get(_key(f), {})
            print(f"  {_key(f)}: {f['score_p_value']:.4f}/{f['cosine_p_value']:.4f} -> "
                  f"{g.get('score_p_value')}/{g.get('cosine_p_value')}")
    best = choose(changed, control_sig, watermark_p)
    print(f"\n[{time.time() - start:.0f}s] rule picks {best}")
    t, sv = by_method[best]["tcav"], by_method[best]["sacv"]
    print(f"stability: test=exchangeable statistic={STATISTICS[best]} tcav_changed={t[0]} of {t[1]} "
          f"sacv_changed={sv[0]} of {sv[1]} control_significant={control_sig[best]} calibration={calibration[best]:.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out").resolve())
