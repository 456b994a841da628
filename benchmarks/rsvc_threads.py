"""RSVC's time with 1 and 2 torch threads (issue 13, item 5): the demo's RSVC check from a cold cache (pool
predictions, patch activations, NMF, Lasso, importance, collages: the whole check), the two thread counts
alternated REPEAT times; every run's seconds, each side's median and the ratio, and the load from `uptime`
before and after (the machine is shared: the ratio is what matters, and it depends on the load).

    .venv/bin/python benchmarks/rsvc_threads.py demo-out     # after `make demo`

The thread rule (auditor/threads.py) is bypassed: each run sets its own count. Last line:
`rsvc_threads: one=<s> two=<s> ratio_two_over_one=<x>`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from auditor import pipeline, threads
from auditor.methods import METHODS
from auditor.policy import load_policy

REPEAT = int(os.environ.get("RSVC_THREADS_REPEAT", "3"))


def _policy(demo_out: Path, path: Path) -> Path:
    policy = yaml.safe_load((demo_out / "policy.yaml").read_text())
    policy["models"] = {r: {**m, "path": str(demo_out / m["path"])} for r, m in policy["models"].items()}
    for key in ("classes", "concepts", "random"):
        policy["data"][key]["folder"] = str(demo_out / policy["data"][key]["folder"])
    checks = [c for c in policy["checks"] if c["method"] == "rsvc"]
    for c in checks:
        if "images" in c:
            c["images"] = {"folder": str(demo_out / c["images"]["folder"])}
    policy["checks"] = checks
    path.write_text(yaml.safe_dump(policy))
    return path


def timed(policy_path: Path, tmp: Path, n_threads: int) -> tuple[float, str]:
    """Seconds of one cold run of the demo's RSVC check with `n_threads` torch threads (models loaded first)."""
    policy = load_policy(policy_path)
    ctx = pipeline.prepare(policy, Path(tempfile.mkdtemp(dir=tmp)), lambda _m: None)
    check = policy.checks[0]
    previous_rule, previous = threads.SMALL_MODEL_THREADS, torch.get_num_threads()
    threads.SMALL_MODEL_THREADS = n_threads  # the rule then leaves this count as it is
    torch.set_num_threads(n_threads)
    try:
        start = time.perf_counter()
        result = METHODS[check.method].run(check, ctx)
        return time.perf_counter() - start, result.summary
    finally:
        threads.SMALL_MODEL_THREADS = previous_rule
        torch.set_num_threads(previous)


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(demo_out: Path) -> None:
    print(f"before: {_uptime()}", flush=True)
    runs: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        policy_path = _policy(demo_out, tmp / "rsvc.yaml")
        for i in range(REPEAT):
            for n in (1, 2) if i % 2 == 0 else (2, 1):
                seconds, summary = timed(policy_path, tmp, n)
                runs[n].append(seconds)
                print(f"threads {n}: {seconds:.1f} s  load {os.getloadavg()[0]:.1f}  ({summary[:90]})", flush=True)
    one, two = statistics.median(runs[1]), statistics.median(runs[2])
    print(f"after: {_uptime()}")
    print("one thread: " + ", ".join(f"{s:.1f}" for s in runs[1]) + " s; two threads: "
          + ", ".join(f"{s:.1f}" for s in runs[2]) + " s")
    print(f"rsvc_threads: one={one:.1f} two={two:.1f} ratio_two_over_one={two / one:.2f}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out").resolve())
