"""Render speed and peak memory of a 100-check report (synthetic results.json, no models involved).

60 tcav checks (2 models x 3 layers x 2 classes x 3 concepts = 36 findings each) and 40 artifact_probe checks
(2 models x 10 classes = 20 findings each), rendered in this process with render_report.

Peak memory is the process's peak resident set size (resource.getrusage(RUSAGE_SELF).ru_maxrss, KiB on Linux):
WeasyPrint's layout and Pango/cairo live outside the Python heap, which tracemalloc would not see.
With two or more cores the figures are drawn by worker processes while this process lays out the PDF (see
auditor.report.workers.FigureDrawing); their peak RSS and CPU time are printed apart. The seconds of each phase
(RenderedReport.timings; "figures" overlaps "pdf_layout") and the load average before and after are printed too:
on a shared machine the load says how much of the time was spent waiting for a core.
The last line is machine-read: ``render_100: seconds=<s> peak_mib=<MiB>``.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from auditor import results
from auditor.report.render import render_report
from auditor.results import AuditResult, CheckResult, ImageSetInfo, ModelInfo, Provenance, Status

ROLES = ("candidate", "reference")
LAYERS = {
    "candidate": ["/features/features.3/Relu_output_0", "/features/features.8/Relu_output_0", "/classifier/Gemm_0"],
    "reference": ["layer2", "layer3", "layer4"],
}
CLASSES = ["triangle", "circle"]
CONCEPTS = ["watermark", "stripes", "dots"]
PROBE_CLASSES = [f"class_{i:02d}" for i in range(10)]
N_CHECKS = 100


def tcav_check(n: int) -> CheckResult:
    findings = []
    for m, role in enumerate(ROLES):
        for li, layer in enumerate(LAYERS[role]):
            for ci, cls in enumerate(CLASSES):
                for ki, concept in enumerate(CONCEPTS):
                    k = (n + m + li + ci + ki) % 7
                    significant = k == 0
                    findings.append({
                        "model": role, "layer": layer, "class": cls, "concept": concept,
                        "score": 0.3 + 0.1 * k, "score_std": 0.05, "p_value": 1e-5 if significant else 0.3,
                        "p_adjusted": 1e-4 if significant else 0.6, "significant": significant,
                        "cav_accuracy": 0.9, "learned": True, "magnitude": 0.2,
                        "random_score_mean": 0.5, "random_score_std": 0.1, "p_one_sample": 0.2,
                        "verdict": "sensitive" if significant else "not significant",
                        "tested": True, "cosine": 0.1 * k, "test": "welch",
                    })
    return CheckResult(
        id=f"tcav_check_{n:03d}", method="tcav", status=Status.FAIL if n % 5 == 0 else Status.PASS,
        severity=("critical", "major", "minor")[n % 3], summary=f"synthetic TCAV check {n}",
        requirement="no class may be sensitive to watermark", findings=findings,
        details={
            "settings": {"cav": "logistic", "space": "pooled", "random_sets": 10, "set_size": 50, "alpha": 0.05,
                         "test": "Welch two-sided t-test, Holm-adjusted over 36 tests", "family_size": 36},
            "layers": LAYERS,
            "requirements": [{"text": "not sensitive to watermark", "model": r, "met": n % 5 != 0} for r in ROLES],
            "notes": [],
        },
    )


def probe_check(n: int) -> CheckResult:
    findings = []
    for m, role in enumerate(ROLES):
        for ci, cls in enumerate(PROBE_CLASSES):
            auc = 0.5 + 0.045 * ((n + ci + m) % 10) * (1 if ci % 2 else -1)
            findings.append({
                "model": role, "class": cls, "artifact": "world/watermark.png", "auc": auc,
                "reliant": abs(auc - 0.5) > 0.2, "effect": "raises" if auc > 0.5 else "suppresses",
                "mean_logit_shift": (auc - 0.5) * 20, "flipped_to_class": 0.01, "prediction_changed": 0.1,
                "n_pairs": 240,
            })
    return CheckResult(
        id=f"probe_check_{n:03d}", method="artifact_probe", status=Status.FAIL, severity="critical",
        summary=f"synthetic artifact probe {n}", requirement="at most 0 classes may rely on the artifact",
        findings=findings,
        details={
            "settings": {"artifact": {"image": "world/watermark.png", "position": "bottom-right", "scale": None,
                                      "margin": 0.05, "opacity": 1.0},
                         "threshold": 0.7, "direction": "both", "n_pairs": 240, "test": "AUC"},
            "requirements": [{"text": "at most 0 classes may rely on the artifact", "model": r, "met": False}
                             for r in ROLES],
            "notes": [],
        },
    )


def make_result() -> AuditResult:
    checks = [tcav_check(i) if i % 5 < 3 else probe_check(i) for i in range(N_CHECKS)]
    prov = Provenance(
        tool_version="0.1.0", created="2025-11-23T13:21:07Z", policy_sha256="ab" * 32,
        policy_path="policies/bench.yaml", seed=0,
        models=[ModelInfo(r, f"{r}-net", "onnx", "cd" * 32, f"models/{r}.onnx") for r in ROLES],
        image_sets=[ImageSetInfo(f"concept:{c}", "ef" * 32, 50) for c in CONCEPTS],
        libraries={"numpy": "2.1.0"}, command="auditor run policies/bench.yaml --out out/",
        policy_text="title: bench\n",
    )
    return AuditResult(schema_version=results.SCHEMA_VERSION, title="Render benchmark (100 checks)", verdict="FAIL",
                       provenance=prov, checks=checks)


def main() -> None:
    keep = sys.argv[1] if len(sys.argv) > 1 else None  # an out directory to keep the report in
    os.environ.setdefault("SOURCE_DATE_EPOCH", "1763904067")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(keep) if keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        results.write(make_result(), root / "results.json")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        report = render_report(root / "results.json", root / "out")
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        load_after = os.getloadavg()
        from pypdf import PdfReader
        pages = len(PdfReader(report.pdf).pages)
        svg = [a for a in report.assets if a.suffix == ".svg"]
        png = [a for a in report.assets if a.suffix == ".png"]
        print(f"checks: {N_CHECKS}; figures: {len(svg)} (+ {len(png)} PNG rasters for the PDF); pages: {pages}; "
              f"pdf: {report.pdf.stat().st_size / 2**20:.1f} MiB")
        print(f"peak RSS before render (imports): {before:.0f} MiB")
        order = ("sections", "html", "figures", "pdf_layout", "figures_wait", "pdf_write")
        phases = sorted(report.timings.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
        print("phases: " + ", ".join(f"{name} {s:.1f} s" for name, s in phases))
        print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
              f"cores {len(os.sched_getaffinity(0))}")
        # Figure workers (auditor.report.workers) are child processes: their peak is reported apart.
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        print(f"figure workers: peak RSS {children.ru_maxrss / 1024:.0f} MiB; "
              f"cpu {children.ru_utime + children.ru_stime:.1f} s; this process cpu {time.process_time():.1f} s")
    print(f"render_100: seconds={seconds:.1f} peak_mib={peak:.0f}")


if __name__ == "__main__":
    main()
