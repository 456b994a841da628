"""Labelled concepts that best match an RSVC concept (issue 13, item 4): a unique important concept's top patches
summarised by the labels of the images they come from, where a labels CSV covers those images.

Label sources, in order: the labels CSV of every check of the policy that has one (INVERT's probe set), then a
``labels.csv`` at the root of the RSVC check's image folder (same format: image path relative to the CSV, one 0/1
column per concept). An image is covered when a source lists it. For each label: the share of the covered top
patches whose image has it, against its share among the covered evaluation images of the class (the base rate);
the best matches are the labels with the largest excess, kept when they hold for at least half the top patches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from auditor.errors import UserError
from auditor.labels import load_labels
from auditor.policy import Policy

BEST = 3  # labels listed per concept
MIN_SHARE = 0.5


def label_sources(policy: Policy, images_root: Path) -> list[Path]:
    """The labels CSVs that may cover the check's images (see the module docstring)."""
    found = [policy.resolve(str(c.labels)) for c in policy.checks if isinstance(getattr(c, "labels", None), str)]
    own = images_root / "labels.csv"
    if own.is_file():
        found.append(own)
    return list(dict.fromkeys(p.resolve() for p in found if p.is_file()))


def _table(sources: Sequence[Path]) -> dict[Path, dict[str, bool]]:
    table: dict[Path, dict[str, bool]] = {}
    for src in sources:
        try:
            labels = load_labels(src)
        except UserError:
            continue  # a broken CSV is its own check's problem; here it just covers nothing
        for i, image in enumerate(labels.images):
            table.setdefault(Path(image).resolve(), {}).update(
                {c: bool(labels.matrix[i, j]) for j, c in enumerate(labels.concepts)})
    return table


def summarise(policy: Policy, images_root: Path, classes: dict, findings: Sequence[dict]) -> dict:
    """{"sources": [...], "concepts": [{model, class, concept, covered, top, matches: [{label, share, base}]}]}
    for every unique and important concept with a collage."""
    sources = label_sources(policy, images_root)
    table = _table(sources)
    out = []
    for f in findings:
        if not (f["unique"] and f["important"]):
            continue
        info = classes.get(f["class"]) or {}
        concepts = ((info.get("models") or {}).get(f["model"]) or {}).get("concepts") or []
        entry = next((c for c in concepts if c["concept"] == f["concept"]), None)
        top = ((entry or {}).get("collages") or {}).get("top") or []
        rows = [table.get((images_root / p["image"]).resolve()) for p in top]
        covered = [r for r in rows if r is not None]
        base_rows = [table.get((images_root / p).resolve()) for p in info.get("evaluation") or []]
        base_rows = [r for r in base_rows if r is not None]
        matches = []
        if covered and base_rows:
            names = sorted({k for r in covered for k in r})
            share = {k: float(np.mean([r.get(k, False) for r in covered])) for k in names}
            base = {k: float(np.mean([r.get(k, False) for r in base_rows])) for k in names}
            ranked = sorted(names, key=lambda k: (-(share[k] - base[k]), k))
            matches = [{"label": k, "share": round(share[k], 4), "base": round(base[k], 4)}
                       for k in ranked if share[k] >= MIN_SHARE and share[k] > base[k]][:BEST]
        out.append({"model": f["model"], "class": f["class"], "concept": f["concept"], "covered": len(covered),
                    "top": len(top), "matches": matches})
    root = Path(policy.root).resolve()
    shown = [s.relative_to(root).as_posix() if s.is_relative_to(root) else str(s) for s in sources]
    return {"sources": shown, "concepts": out}
