"""ClaDec (Schneider & Vlachos 2022; METHODS.md, ClaDec): what a layer keeps of the image, shown as images.

For each audited (model, layer): a ClaDec decoder trained on the frozen layer's activations (from the store) with
(1 - alpha) MSE + alpha CE through the frozen classifier, and a reference auto-encoder (the architecture truncated
at the layer, fresh weights, MSE only). Both are cached by content key under the cache directory, so a rerun trains
nothing. Measured: reconstruction MSE, the classifier's top-1 agreement on ClaDec reconstructions vs originals,
and, with an artifact, retention on the artifact probe's pairs (cladec_measure.retention).

ONNX models: the activations come from the ONNX model itself; the classification term and the reference
auto-encoder need a torch network, a declared `torch_twins` entry, else alpha = 0 and no reference auto-encoder.
"""

from __future__ import annotations

import hashlib
import math
from functools import partial

import numpy as np

from auditor import threads
from auditor.context import Context, derive_seed
from auditor.methods import cladec_images as ci
from auditor.methods.cladec_core import (
    Fitted, Settings, cache_key, cache_path, cached, effective_alpha, from_model, to_model_np, train_cladec,
)
from auditor.methods.cladec_parallel import Job, train_here, train_missing
from auditor.methods.cladec_measure import autoencode, decode, mean_saturation, mse, retention, top1_agreement
from auditor.methods.cladec_reference import fresh_encoder, train_reference
from auditor.methods.cladec_validate import TorchSide, torch_side
from auditor.methods.requirements import met_summary, requirement_line
from auditor.policy import check_layers
from auditor.results import CheckResult, Status
from auditor.schemas.cladec import CladecCheck, CladecFinding, CladecRequirement
from auditor.schemas.common import checked_rows


def _round(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def _retention_of(recon_art: np.ndarray, recon_neu: np.ndarray, paired: ci.Paired, pre) -> float | None:
    return _round(retention(recon_art, recon_neu, from_model(paired.artifact, pre), from_model(paired.neutral, pre),
                            paired.boxes))


class _Run:
    """The state one check's run shares between its models and layers (plain holder, built once in `run`)."""

    def __init__(self, check: CladecCheck, ctx: Context) -> None:
        self.check, self.ctx, self.pre = check, ctx, ctx.pre
        self.seed = derive_seed(ctx.policy.seed, check.id)
        self.settings = Settings(alpha=check.alpha, epochs=check.epochs, batch_size=check.batch_size,
                                 seed=derive_seed(self.seed, "train"))
        self.train = ci.training(check, ctx, self.seed)
        self.x = ctx.store.images(self.train.images)
        self.x01 = from_model(self.x, self.pre)
        self.paired = ci.pairs(check, ctx, self.seed)
        n_pairs = 0 if self.paired is None else len(self.paired.artifact)
        self.grid = ci.grid(len(self.x), n_pairs, check.grid_images, derive_seed(self.seed, "grid"))
        self.grid_x = ci.grid_inputs(self.x, self.paired, self.grid)
        self.cache_dir = ctx.store.cache_dir
        # The labels come from the class folders, which the set's fingerprint (file names and bytes) does not see.
        labels = hashlib.sha256(self.train.labels.tobytes()).hexdigest()
        self.images_key = f"{self.train.images.fingerprint}:{labels}"
        self.seconds: dict[str, float] = {}
        self.saturation: dict[tuple[str, str, str], float] = {}  # (model, layer, decoder) -> mean saturation

    def job(self, kind: str, key_model: str, layer: str, alpha: float, train, what: str) -> Job:
        key = cache_key(key_model, layer, kind, self.settings, alpha, self.images_key)
        return Job(cache_path(self.cache_dir, key), train, what)

    def fit(self, job: Job, encoder=None) -> Fitted:
        """The job's decoder from the cache (trained by `train_missing`'s workers), else trained here."""
        fitted = cached(job.path, lambda: train_here(job), self.ctx.log, encoder=encoder)
        self.seconds[job.what] = fitted.stats.seconds  # the training's own time, wherever and whenever it ran
        return fitted


def _acts(run: _Run, role: str, layers: list[str]) -> tuple[dict, dict | None, dict | None]:
    """The layer activations of the training images and of both halves of the pairs (from the store)."""
    store, model = run.ctx.store, run.ctx.models[role]
    # In memory (the store hands read-only memmaps, which torch refuses to wrap without a copy anyway).
    train = {k: np.array(v) for k, v in store.acts(model, layers, run.train.images).items()}
    if run.paired is None:
        return train, None, None
    p = run.paired
    art = store.derived_acts(model, layers, f"cladec-pairs:{run.check.id}:artifact", f"{p.fingerprint}:artifact",
                             lambda: p.artifact)
    neu = store.derived_acts(model, layers, f"cladec-pairs:{run.check.id}:neutral", f"{p.fingerprint}:neutral",
                             lambda: p.neutral)
    return train, {k: np.array(v) for k, v in art.items()}, {k: np.array(v) for k, v in neu.items()}


def _grid_acts(run: _Run, train: np.ndarray, art: np.ndarray | None) -> np.ndarray:
    rows = [np.asarray(train[list(run.grid.training)])]
    if art is not None and run.grid.pasted:
        rows.append(np.asarray(art[list(run.grid.pasted)]))
    return np.concatenate(rows)


def _jobs(run: _Run, role: str, layers: list[str], side: TorchSide, train_acts: dict) -> dict[tuple[str, str], Job]:
    """{(layer, "cladec" | "reference_ae"): its training} for one model (no reference AE without a torch side)."""
    pre, log = run.pre, run.ctx.log
    alpha = effective_alpha(run.settings, side.module)
    key_model = run.ctx.models[role].sha256 + side.sha256
    jobs = {}
    for layer, torch_layer in zip(layers, side.layers):
        a = np.asarray(train_acts[layer])
        what = f"{role} {layer} decoder"
        jobs[(layer, "cladec")] = run.job("cladec", key_model, layer, alpha, partial(
            train_cladec, a, run.x01, run.train.labels, side.module, pre, run.settings, log, what), what)
        if side.module is not None:
            what = f"{role} {layer} reference AE"
            jobs[(layer, "reference_ae")] = run.job("reference_ae", key_model, layer, 0.0, partial(
                train_reference, side.module, torch_layer, run.x01, pre, run.settings, log, what), what)
    return jobs


def _model_rows(run: _Run, role: str, layers: list[str], side: TorchSide, acts: tuple,
                jobs: dict[tuple[str, str], Job]) -> tuple[list[dict], dict]:
    """Findings and grid reconstructions of one model, every layer: ClaDec decoder, then the reference AE."""
    pre, model = run.pre, run.ctx.models[role]
    train_acts, art_acts, neu_acts = acts
    logits = model.predict(run.x)
    rows, grids = [], {}
    for layer, torch_layer in zip(layers, side.layers):
        a = np.asarray(train_acts[layer])
        fitted = run.fit(jobs[(layer, "cladec")])
        recon = decode(fitted, a)
        ret = None
        if run.paired is not None:
            ret = _retention_of(decode(fitted, np.asarray(art_acts[layer])), decode(fitted, np.asarray(neu_acts[layer])),
                                run.paired, pre)
        agree = top1_agreement(model.predict(to_model_np(recon, pre)), logits)
        run.saturation[(role, layer, "cladec")] = mean_saturation(recon)
        rows.append({"model": role, "layer": layer, "decoder": "cladec", "mse": _round(mse(recon, run.x01)),
                     "top1_agreement": _round(agree), "retention": ret})
        cell = {"cladec": ci.pngs(decode(fitted, _grid_acts(run, a, None if art_acts is None else art_acts[layer]))),
                "reference_ae": None}
        if side.module is not None:
            ae = run.fit(jobs[(layer, "reference_ae")], encoder=fresh_encoder(side.module, torch_layer))
            ret_ae = None
            if run.paired is not None:
                ret_ae = _retention_of(autoencode(ae, from_model(run.paired.artifact, pre), pre),
                                       autoencode(ae, from_model(run.paired.neutral, pre), pre), run.paired, pre)
            recon_ae = autoencode(ae, run.x01, pre)
            run.saturation[(role, layer, "reference_ae")] = mean_saturation(recon_ae)
            rows.append({"model": role, "layer": layer, "decoder": "reference_ae",
                         "mse": _round(mse(recon_ae, run.x01)), "top1_agreement": None,
                         "retention": ret_ae})
            cell["reference_ae"] = ci.pngs(autoencode(ae, from_model(run.grid_x, pre), pre))
        grids[layer] = cell
    return rows, grids


def _finding(rows: list[dict], role: str, layer: str) -> dict | None:
    return next((r for r in rows if r["model"] == role and r["layer"] == layer and r["decoder"] == "cladec"), None)


def _fmt(x: float | None) -> str:
    return "not measured" if x is None else f"{x:.2f}"


def evaluate(r: CladecRequirement, rows: list[dict], layers_by_model: dict[str, list[str]]) -> list[dict]:
    """One evaluated requirement per model it names: the ClaDec decoder's retention at the model's last layer."""
    out = []
    for role in (list(layers_by_model) if r.model == "all" else [r.model]):
        last = layers_by_model[role][-1]
        mine = (_finding(rows, role, last) or {}).get("retention")
        if r.max_retention is not None:
            bound, text = r.max_retention, f"{role}: ClaDec retention of the artifact at {last} at most {r.max_retention:g}"
            why = f"{role}: retention {_fmt(mine)} at {last}"
        else:
            other = r.max_retention_vs
            other_last = layers_by_model[other][-1]
            theirs = (_finding(rows, other, other_last) or {}).get("retention")
            bound = None if theirs is None else theirs + r.margin
            text = (f"{role}: ClaDec retention of the artifact at {last} at most {other}'s at {other_last}"
                    + (f" + {r.margin:g}" if r.margin else ""))
            why = f"{role}: retention {_fmt(mine)} at {last}, {other}: {_fmt(theirs)} at {other_last}"
        met = mine is not None and bound is not None and mine <= bound
        out.append({"text": text, "model": role, "met": met, "why": why})
    return out


def _summary(reqs: list[dict], rows: list[dict], layers_by_model: dict[str, list[str]]) -> str:
    if reqs:
        return met_summary(reqs)
    parts = []
    for role, layers in layers_by_model.items():
        f = _finding(rows, role, layers[-1]) or {}
        parts.append(f"{role} {layers[-1]}: MSE {f.get('mse', float('nan')):.4f}, top-1 agreement "
                     f"{f.get('top1_agreement') or 0:.0%}" + (f", retention {f['retention']:.2f}"
                                                               if f.get("retention") is not None else ""))
    return "; ".join(parts)


# One torch thread for the demo's 64 px models: benchmarks/cladec_cost.py, one epoch of the demo's 8 trainings at
# load 7-8 on the shared 2 cores: 1 thread 30.4 / 29.4 CPU-s (108 / 60 s wall), 2 threads 58.8 CPU-s (111 s):
# the second thread doubles the CPU and buys no time (as RSVC measured, auditor/threads.py).
@threads.small_model_threads
def run(check: CladecCheck, ctx: Context) -> CheckResult:
    layers_by_model = check_layers(ctx.policy, check)
    r = _Run(check, ctx)
    rows: list[dict] = []
    grids: dict[str, dict] = {}
    models: dict[str, dict] = {}
    notes: list[str] = []
    sides = {role: torch_side(check, ctx.policy, role, ctx.models[role], layers)
             for role, layers in layers_by_model.items()}
    acts = {role: _acts(r, role, layers) for role, layers in layers_by_model.items()}
    jobs = {role: _jobs(r, role, layers, sides[role], acts[role][0]) for role, layers in layers_by_model.items()}
    # Every training first, two at a time in worker processes; the loop below then reads them from the cache.
    train_missing([j for mine in jobs.values() for j in mine.values()], ctx.log)
    for role, layers in layers_by_model.items():
        side = sides[role]
        ctx.log(f"cladec {check.id}: {role}, {len(layers)} layers, {len(r.x)} training images, alpha "
                f"{effective_alpha(r.settings, side.module):g}")
        mine, grids[role] = _model_rows(r, role, layers, side, acts[role], jobs[role])
        rows.extend(mine)
        models[role] = {"framework": ctx.models[role].framework, "alpha": effective_alpha(r.settings, side.module),
                        "twin": side.twin, "reference_ae": side.unavailable, "layers": layers}
        if side.unavailable is not None:
            notes.append(f"{role}: ClaDec trained with alpha = 0 (reconstruction only) and {side.unavailable}")
    for what, s in r.seconds.items():
        ctx.log(f"cladec {check.id}: {what} {s:.1f}s")  # timings go to the log, never to results.json
    reqs = [q for req in check.require for q in evaluate(req, rows, layers_by_model)]
    if r.paired is not None and any(f["retention"] is None for f in rows):
        notes.append("retention is not measured where the artifact and the neutral patch do not differ in the box")
    status = Status.FAIL if any(not q["met"] for q in reqs) else Status.PASS
    grid_x01 = from_model(r.grid_x, ctx.pre)
    details = {
        "settings": {
            "alpha": check.alpha, "epochs": check.epochs, "batch_size": check.batch_size,
            "training_images": len(r.x), "images": check.images.folder if check.images else "data.classes",
            "artifact": check.artifact.model_dump() if check.artifact else None,
            "n_pairs": 0 if r.paired is None else len(r.paired.artifact),
            # The tightest absolute bound of the requirements: the report draws it on the retention bars.
            "max_retention": min((q.max_retention for q in check.require if q.max_retention is not None), default=None),
        },
        "models": models,
        "layers": layers_by_model,
        "grid": {"originals": ci.pngs(grid_x01),
                 "pasted": [False] * len(r.grid.training) + [True] * len(r.grid.pasted), "recon": grids},
        # Mean HSV saturation of the reconstructions of the training images (and of the images themselves): a
        # model that cannot see hue (the demo's colour-blind reference) decodes to greys.
        "saturation": {"original": _round(mean_saturation(r.x01)),
                       "decoded": [{"model": m, "layer": la, "decoder": d, "saturation": _round(v)}
                                   for (m, la, d), v in r.saturation.items()]},
        "requirements": reqs,
        "notes": notes,
    }
    return CheckResult(id=check.id, method="cladec", status=status, severity=check.severity,
                       summary=_summary(reqs, rows, layers_by_model), requirement=requirement_line(reqs),
                       findings=checked_rows(CladecFinding, rows), details=details)
