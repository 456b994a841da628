"""RSVC's ground truth on the demo (issue 13): the candidate's colour bias is a concept the colour-blind reference
cannot represent. Slow: builds the demo (world + both models) at seeds 0, 1 and 2 and runs the demo's RSVC check.

The rule below was written before RSVC was run on the colour world:
- some candidate concept of the colour-biased class is unique (similarity < tau_sim) and important
  (importance > tau_imp), and at least 70 % of its top-9 collage patches come from objects of the biased hue
  family: the patch's image has colour == truth.json's hue family in records.csv, and at least 10 % of the
  patch's pixels lie on that image's object (field_masks/);
- no reference concept is unique and important, in any class of the check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from auditor import pipeline
from auditor.demo.world import read_records
from auditor.policy import load_policy

HUE_SHARE = 0.7
ON_OBJECT = 0.1


def _build(out: Path, seed: int) -> None:
    res = subprocess.run(
        [sys.executable, "-c", "from pathlib import Path; from auditor.demo.build import build_demo; "
         f"build_demo(Path({str(out)!r}), {seed}, print)"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]


def rsvc_check(out: Path) -> dict:
    """The demo policy's RSVC check alone, run on a built demo folder: its result as a dict."""
    base = load_policy(out / "policy.yaml")
    text = (out / "policy.yaml").read_text()
    head, checks = text[: text.index("checks:")], text[text.index("checks:") :]
    rsvc = checks[checks.index("  - id: concepts-shared") :]
    path = out / "rsvc-only.yaml"
    path.write_text(head + "checks:\n" + rsvc)
    result = pipeline.run_audit(load_policy(path), out / "cache", lambda _m: None).result
    assert base.seed == load_policy(path).seed
    c = result.checks[0]
    return {"summary": c.summary, "status": str(c.status), "findings": c.findings, "details": c.details}


def hue_patch(out: Path, patch: dict, family: str, records: dict) -> bool:
    """The patch comes from an object of the hue family (the rule in the module docstring)."""
    rel = f"field/{patch['image']}"
    if records[rel]["colour"] != family:
        return False
    mask = np.asarray(Image.open(out / "world" / "field_masks" / patch["image"])) > 127
    t, l, h, w = patch["box"]
    return float(mask[t : t + h, l : l + w].mean()) >= ON_OBJECT


def colour_verdict(out: Path, check: dict) -> dict:
    """What the rule looks at, per candidate concept of the biased class: similarity, importance, hue share."""
    truth = json.loads((out / "world" / "truth.json").read_text())
    family, cls = truth["colour_bias"]["hue_family"], truth["colour_bias"]["class"]
    records = read_records(out / "world")
    concepts = {c["concept"]: c for c in check["details"]["classes"][cls]["models"]["candidate"]["concepts"]}
    rows = []
    for f in check["findings"]:
        if f["model"] != "candidate" or f["class"] != cls:
            continue
        top = concepts[f["concept"]].get("collages", {}).get("top", [])
        share = float(np.mean([hue_patch(out, p, family, records) for p in top])) if top else None
        rows.append({"concept": f["concept"], "similarity": f["similarity"], "importance": f["importance"],
                     "unique": f["unique"], "important": f["important"], "hue_share": share})
    evaluation = check["details"]["classes"][cls]["evaluation"]
    base = float(np.mean([records[f"field/{p}"]["colour"] == family for p in evaluation]))
    ref_ui = [(f["class"], f["concept"]) for f in check["findings"]
              if f["model"] == "reference" and f["unique"] and f["important"]]
    return {"class": cls, "family": family, "concepts": rows, "evaluation_family_share": base,
            "reference_unique_important": ref_ui}


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "measured 2026-12-03 (docs/methods-and-limits.md, the colour world): no seed meets the rule; seed 0 and 2 have "
    "no unique important circle concept, seed 1's has 6 of 9 green top patches and the reference has one unique "
    "important square concept"))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rsvc_finds_the_colour_bias_unique_to_the_candidate(seed: int, tmp_path: Path) -> None:
    out = tmp_path / f"demo-{seed}"
    _build(out, seed)
    check = rsvc_check(out)
    v = colour_verdict(out, check)
    print(json.dumps(v, indent=1))
    hits = [c for c in v["concepts"] if c["unique"] and c["important"] and (c["hue_share"] or 0) >= HUE_SHARE]
    assert hits, v
    assert not v["reference_unique_important"], v
