"""Cost of the exchangeability test: the demo's TCAV and SACV checks with `test: exchangeable` against the same
checks with `test: welch`, each from a cold cache (forward passes, gradients, CAVs, scores: the whole check), the
two alternated REPEAT times and each side's fastest run kept.

    .venv/bin/python benchmarks/exchangeable_cost.py demo-out     # after `make demo`

Also the TCAV check with `cav: mean` (the FastCAV learner) under both tests: what the ratio is when a CAV fit is
nearly free. Last line: `exchangeable_cost: tcav_ratio=<x> tcav_mean_ratio=<z> sacv_ratio=<y>` (targets: TCAV
<= 1.5, SACV <= 3 or mean CAVs).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from auditor import pipeline
from auditor.methods import METHODS
from auditor.policy import load_policy

REPEAT = int(os.environ.get("EXCHANGEABLE_BENCH_REPEAT", "2"))


def _policy(demo_out: Path, method: str, test: str, path: Path, cav: str | None) -> Path:
    policy = yaml.safe_load((demo_out / "policy.yaml").read_text())
    policy["models"] = {r: {**m, "path": str(demo_out / m["path"])} for r, m in policy["models"].items()}
    for key in ("classes", "concepts", "random"):
        policy["data"][key]["folder"] = str(demo_out / policy["data"][key]["folder"])
    checks = [c for c in policy["checks"] if c["method"] == method]
    for c in checks:
        c["test"] = test
        if cav is not None:
            c["cav"] = cav
        for key in ("images", "masks", "concept_masks"):
            if key in c:
                c[key] = {"folder": str(demo_out / c[key]["folder"])}
    policy["checks"] = checks
    path.write_text(yaml.safe_dump(policy))
    return path


def timed(demo_out: Path, method: str, test: str, tmp: Path, cav: str | None = None) -> tuple[float, str]:
    """Seconds of one cold run of the demo's `method` check under `test` (models loaded, sets validated first)."""
    policy = load_policy(_policy(demo_out, method, test, tmp / f"{method}-{test}.yaml", cav))
    cache = Path(tempfile.mkdtemp(dir=tmp))
    ctx = pipeline.prepare(policy, cache, lambda _m: None)
    check = policy.checks[0]
    start = time.perf_counter()
    result = METHODS[check.method].run(check, ctx)
    return time.perf_counter() - start, result.summary


def main(demo_out: Path) -> None:
    ratios = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, method, cav in (("tcav", "tcav", None), ("tcav_mean", "tcav", "mean"), ("sacv", "sacv", None)):
            best = {"welch": float("inf"), "exchangeable": float("inf")}
            for i in range(REPEAT):
                for test in ("welch", "exchangeable") if i % 2 == 0 else ("exchangeable", "welch"):
                    seconds, summary = timed(demo_out, method, test, tmp, cav)
                    best[test] = min(best[test], seconds)
                    print(f"{name} {test}: {seconds:.1f} s ({summary[:110]})", flush=True)
            ratios[name] = best["exchangeable"] / best["welch"]
            print(f"{name}: welch {best['welch']:.1f} s, exchangeable {best['exchangeable']:.1f} s, "
                  f"ratio {ratios[name]:.2f}", flush=True)
    load = os.getloadavg()[0]
    print(f"load average at the end: {load:.1f}")
    print(f"exchangeable_cost: tcav_ratio={ratios['tcav']:.2f} tcav_mean_ratio={ratios['tcav_mean']:.2f} "
          f"sacv_ratio={ratios['sacv']:.2f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out").resolve())
