"""Issue 3's stability and control runs on the demo: a measurement, not a test (it does not hold; see README).

    .venv/bin/python benchmarks/stability.py demo-out      # after `make demo`; about 5 minutes on 2 cores

Stability: are the TCAV and SACV significance verdicts of the demo audit (demo-out/report/results.json: policy
seed 0, sets of 50) the same when the audit is rerun with another seed on 200-image concept sets (and random sets
of 200, from a world drawn with another seed; same models, same class images)?
Control: with random images in place of the class images, is any concept significant?
Then the same per-run scores under other significance procedures, for the decision METHODS.md needs: a one-sample
test against 0.5 (the random-vs-random null's mean is 0.5 by symmetry), the concept's mean score ranked among the
random-vs-random runs (the concept runs share one concept set: one draw, not N), and, for TCAV, the concept's
mean score ranked among 200 pseudo-concepts (random-image sets in the concept's place, against the same runs).
Last line: `stability: verdicts_equal=<true|false> changed=<n> of <n> control_significant=<n> of <n>`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import sys
import tempfile

import numpy as np
import yaml
from PIL import Image

from auditor import data, pipeline
from auditor.context import derive_seed
from auditor.methods import sacv, stats, tcav
from auditor.methods.cav import train_cav
from auditor.demo.world import render_sample, write_world
from auditor.policy import check_layers, load_policy

SET_SIZE = 200
RUNS = 10


def _key(c: dict, f: dict) -> tuple:
    return (c["method"], f["model"], f["layer"], f["class"], f["concept"])


def _verdicts(checks: list) -> dict:
    return {_key(c, f): (f["learned"], f["significant"]) for c in checks if c["method"] in ("tcav", "sacv")
            for f in c["findings"]}


def _numbers(checks: list) -> dict:
    """What each verdict rests on, printed beside every changed or control-significant cell."""
    return {_key(c, f): f"score {f['score']:.3f}+-{f['score_std']:.3f} random {f['random_score_mean']:.3f}"
                        f"+-{f['random_score_std']:.3f} p {f['p_value']:.2g} p_adj {f['p_adjusted']:.2g}"
            for c in checks if c["method"] in ("tcav", "sacv") for f in c["findings"] if f["learned"]}


def _policy(demo_out: Path, world: Path, seed: int, set_size: int, field: Path, field_masks: Path) -> dict:
    policy = yaml.safe_load((demo_out / "policy.yaml").read_text())
    policy["seed"] = seed
    policy["models"] = {r: {**m, "path": str(demo_out / m["path"])} for r, m in policy["models"].items()}
    policy["data"]["classes"]["folder"] = str(demo_out / "world" / "classes")
    policy["data"]["concepts"]["folder"] = str(world / "concepts")
    policy["data"]["random"]["folder"] = str(world / "random")
    checks = []
    for c in policy["checks"]:
        if c["method"] not in ("tcav", "sacv"):
            continue
        c = {**c, "set_size": set_size}
        if c["method"] == "sacv":
            c.update(images={"folder": str(field)}, masks={"folder": str(field_masks)},
                     concept_masks={"folder": str(world / "concept_masks")})
        checks.append(c)
    policy["checks"] = checks
    return policy


@dataclass(frozen=True)
class Audit:
    checks: list  # [{"method", "findings"}] as in results.json
    runs: dict  # key -> (concept scores per run, random-vs-random scores per run) of every learned cell
    pseudo: dict  # key -> p of the pseudo-concept procedure (TCAV cells only)


def _audit(policy: dict, path: Path, cache: Path, spare: Path) -> Audit:
    """Run the audit; the methods' per-run scores are captured on the way (results.json keeps only means)."""
    runs: dict = {}

    def capture(module, method: str):
        original = module.findings

        def findings(cells, *a, **k):
            for c in cells:
                if c.learned:
                    runs[(method, c.model, c.layer, c.cls, c.concept)] = (c.scores, c.random_scores)
            return original(cells, *a, **k)

        return original, findings

    originals = {}
    for module, method in ((tcav, "tcav"), (sacv, "sacv")):
        originals[module], module.findings = capture(module, method)
    try:
        path.write_text(yaml.safe_dump(policy))
        result = pipeline.run_audit(load_policy(path), cache, lambda _m: None).result
    finally:
        for module, f in originals.items():
            module.findings = f
    checks = [json.loads(json.dumps({"method": c.method, "findings": c.findings})) for c in result.checks]
    pseudo = _pseudo_concept_p(path, cache, spare)
    for k, p in pseudo.items():  # the procedure recomputes the concept's runs: they must be the audit's
        assert k not in runs or np.isclose(p[1], float(np.mean(runs[k][0]))), (k, p[1], runs[k][0])
    return Audit(checks, runs, {k: p for k, (p, _score) in pseudo.items() if k in runs})


# The pseudo-concept procedure (TCAV only): H0 is "the concept images are exchangeable with random images". Sets
# of the concept's size drawn from a spare pool of random images (in no random set) play the concept, each
# against the same N random sets with the same learner; the concept's mean score is one more draw among them:
# p = (1 + #{m: |T_m - 0.5| >= |T_concept - 0.5|}) / (M + 1). SACV's per-position CAVs (thousands of positions
# per fit) make the same far dearer there; not measured.
PSEUDO_SETS = 200
SPARE_POOL = 2000


def _pseudo_concept_p(policy_path: Path, cache: Path, spare: Path) -> dict:
    """{(method, model, layer, class, concept): (p, the concept's mean score)} for every TCAV cell."""
    policy = load_policy(policy_path)
    ctx = pipeline.prepare(policy, cache, lambda _m: None)
    pool = data.folder_set("spare-random", spare, ctx.pre)
    names = policy.data.classes.names
    out = {}
    for check in policy.checks:
        if check.method != "tcav":
            continue
        d = tcav.draws(check, ctx)
        n_runs = check.random_sets
        for role, layers in check_layers(policy, check).items():
            model = ctx.models[role]
            spare_acts = ctx.store.acts(model, layers, pool)
            random_acts = [ctx.store.acts(model, layers, r) for r in d.randoms]
            concept_acts = {c: ctx.store.acts(model, layers, ctx.sets.concepts[c]) for c in check.concepts}
            for layer in layers:
                fr = [tcav.features(np.asarray(a[layer]), check.space) for a in random_acts]

                def cavs(fc: np.ndarray, *tag: str) -> np.ndarray:
                    return np.stack([train_cav(fc, fr[i], check.cav, derive_seed(d.seed, *tag, str(i))).vector
                                     for i in range(1, n_runs + 1)])

                fs = tcav.features(np.asarray(spare_acts[layer]), check.space)
                rng = np.random.default_rng(derive_seed(d.seed, "pseudo", role, layer))
                pseudo = np.concatenate([cavs(fs[rng.choice(len(fs), check.set_size, replace=False)], "pseudo", str(m))
                                         for m in range(PSEUDO_SETS)])
                concept = {c: cavs(tcav.features(np.asarray(concept_acts[c][layer])[d.concept_rows[c]], check.space),
                                   "cav", c) for c in check.concepts}
                for k, class_set in d.class_sets.items():
                    def mean_scores(vs: np.ndarray) -> np.ndarray:  # (M * N, D) CAVs -> M mean scores
                        sens = tcav.sensitivities(ctx, role, layer, class_set, names.index(k), vs, check.space)
                        return (sens > 0).mean(axis=0).reshape(-1, n_runs).mean(axis=1)

                    null = mean_scores(pseudo)
                    for c, vs in concept.items():
                        t = float(mean_scores(vs)[0])
                        p = (1 + int(np.sum(np.abs(null - 0.5) >= abs(t - 0.5) - 1e-12))) / (PSEUDO_SETS + 1)
                        out[("tcav", role, layer, k, c)] = (p, t)
    return out


# Significance procedures compared on the same per-run scores; each is Holm-corrected over a method's cells
# (one TCAV and one SACV check here, so that is the audit's family for both).
def _p_welch(scores: np.ndarray, null: np.ndarray) -> float:
    """METHODS.md: two-sided Welch t-test of the concept runs against the random-vs-random runs."""
    return stats.welch_t(scores, null).p_value


def _p_half(scores: np.ndarray, null: np.ndarray) -> float:
    """One-sample t-test against 0.5: a random-vs-random CAV's direction is as likely as its negative (swap the
    two sets), so the null's mean is 0.5 by symmetry instead of being estimated from N near-0/1 draws."""
    return stats.one_sample_t(scores, 0.5).p_value


def _p_rank(scores: np.ndarray, null: np.ndarray) -> float:
    """The concept's mean score as one draw among random directions: the share of random-vs-random runs at
    least as far from 0.5, (1 + count) / (N + 1). The concept runs share one concept set, so they are not N
    independent samples of the concept; this counts the concept once. Smallest possible p: 1 / (N + 1)."""
    d = abs(float(np.mean(scores)) - 0.5)
    return (1 + int(np.sum(np.abs(null - 0.5) >= d - 1e-12))) / (len(null) + 1)


PROCEDURES = {"welch (METHODS.md)": _p_welch, "one-sample vs 0.5": _p_half, "rank among random": _p_rank}
PSEUDO = "pseudo-concepts (TCAV)"


def _significant(ps: dict, alpha: float = 0.05) -> dict:
    """{key: p} -> {key: significant after Holm over the method's cells}."""
    out = {}
    for method in ("tcav", "sacv"):
        keys = sorted(k for k in ps if k[0] == method)
        if keys:
            adjusted = stats.holm(np.array([ps[k] for k in keys]))
            out.update({k: bool(p <= alpha) for k, p in zip(keys, adjusted)})
    return out


def _ps(audit: Audit, procedure: str) -> dict:
    if procedure == PSEUDO:
        return audit.pseudo
    return {k: PROCEDURES[procedure](*runs) for k, runs in audit.runs.items()}


def stability(demo_out: Path, world: Path, tmp: Path, spare: Path) -> tuple[Audit, Audit]:
    """(the demo audit's TCAV and SACV checks rerun as they are: policy seed 0, sets of 50; the same with seed 1
    and sets of 200 from a world drawn with another seed)."""
    field, field_masks = demo_out / "world" / "field", demo_out / "world" / "field_masks"
    base = _audit(_policy(demo_out, demo_out / "world", 0, 50, field, field_masks), tmp / "base.yaml", tmp / "c0",
                  spare)
    again = _audit(_policy(demo_out, world, 1, SET_SIZE, field, field_masks), tmp / "p.yaml", tmp / "c1", spare)
    return base, again


def control(demo_out: Path, tmp: Path, spare: Path) -> Audit:
    """Verdicts with 60 random images (drawn like the random pool: 10% carry the watermark) as the class images."""
    rng = np.random.default_rng(12345)
    images, masks = tmp / "control" / "triangle", tmp / "control_masks" / "triangle"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    for i in range(60):
        s = render_sample(rng, size=64, watermark=bool(rng.random() < 0.1))
        Image.fromarray(s.image).save(images / f"{i:04d}.png")
        Image.fromarray(np.where(s.mask, 255, 0).astype(np.uint8)).save(masks / f"{i:04d}.png")
    policy = _policy(demo_out, demo_out / "world", 0, 50, images.parent, masks.parent)
    policy["data"]["classes"]["folder"] = str(images.parent)
    for c in policy["checks"]:
        c["classes"] = ["triangle"]
    return _audit(policy, tmp / "control.yaml", tmp / "cache-control", spare)


def main(demo_out: Path) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        world = tmp / "world200"
        write_world(world, seed=1, per_class=1, concept_size=SET_SIZE, random_pool=(RUNS + 1) * SET_SIZE + 50, probe=1)
        # Random images in no random set, for the pseudo-concepts (a world drawn with a third seed).
        write_world(tmp / "spare", seed=2, per_class=1, concept_size=1, random_pool=SPARE_POOL, probe=1)
        spare = tmp / "spare" / "random"
        base_audit, again_audit = stability(demo_out, world, tmp, spare)
        ctrl_audit = control(demo_out, tmp, spare)
    demo = _verdicts(json.loads((demo_out / "report" / "results.json").read_text())["checks"])
    base, again, ctrl = (_verdicts(a.checks) for a in (base_audit, again_audit, ctrl_audit))
    # The rerun at seed 0 must reproduce the demo audit's verdicts (the audit is deterministic).
    print(f"seed-0 rerun reproduces the demo audit's verdicts: {str(base == demo).lower()}")
    was_n, now_n, ctrl_n = (_numbers(a.checks) for a in (base_audit, again_audit, ctrl_audit))
    changed = {k: (base[k], again.get(k)) for k in base if base[k] != again.get(k)}
    for k, (was, now) in sorted(changed.items()):
        print(f"changed {k}: (learned, significant) {was} -> {now}\n  was {was_n.get(k)}\n  now {now_n.get(k)}")
    significant = sorted(k for k, v in ctrl.items() if v[1])
    print("control, every learned cell:")
    for k in sorted(ctrl_n):
        print(f"  {'SIGNIFICANT ' if ctrl[k][1] else ''}{k}: {ctrl_n[k]}")
    # The same runs under other significance procedures (learned cells; 'learned' does not depend on the test).
    print()
    print(f"{'procedure':<24}{'changed':>9}{'control sig.':>14}  significant at seed 0 / seed 1 (of learned cells)")
    for name in [*PROCEDURES, PSEUDO]:
        s0, s1, sc = (_significant(_ps(a, name)) for a in (base_audit, again_audit, ctrl_audit))
        moved = sum(s0[k] != s1.get(k) for k in s0)
        print(f"{name:<24}{moved:>6} of {len(s0):<3}{sum(sc.values()):>5} of {len(sc):<6}"
              f"{sum(s0.values())} / {sum(s1.values())}")
        for k in sorted(s0):
            if s0[k] or s1.get(k):
                print(f"    {'=' if s0[k] == s1.get(k) else '!'} {k}: {s0[k]} -> {s1.get(k)}")
    print("pseudo-concept p (raw) per TCAV cell, seed 0 / seed 1 / control:")
    for k in sorted(base_audit.pseudo):
        print(f"  {k}: {base_audit.pseudo[k]:.3f} / {again_audit.pseudo.get(k, float('nan')):.3f} / "
              f"{ctrl_audit.pseudo.get(k, float('nan')):.3f}")
    print(f"stability: verdicts_equal={str(not changed).lower()} changed={len(changed)} of {len(base)} "
          f"control_significant={len(significant)} of {len(ctrl)}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out").resolve())
