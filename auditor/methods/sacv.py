"""SACV (Wang et al. 2022): spatially aware concept activation vectors — *where* in the image a concept acts.

Every spatial position of a conv activation is one sample: the positions of concept images are labelled
concept, those of random images random, and a logistic regression gives the CAV v (C,) oriented toward the
concept. For a class image x and class k:

    relevance     R(h, w) = v . a_hw(x) + b
    contribution  M(h, w) = v . d logit_k / d a_hw(x)
    spatial score S(x)    = sum of M over the positions where R > 0

b is the CAV classifier's own offset (Cav.offset), so that R > 0 is exactly the per-position classifier's
decision "the concept is here". METHODS.md writes R = v . a; without the offset the sign of R says nothing
about presence (activations after a ReLU are non-negative and v has mixed signs): on the demo's triangles,
v . a > 0 held at 77% of the positions for a 9x9-pixel watermark, with the offset at 3%.
The maps, the inside-mask share and the overlays show the contribution where the concept is present,
M * [R > 0], the quantity the spatial score sums.

The spatial TCAV score is the fraction of class images with S > 0; as in TCAV it is computed once per random
run (concept vs R_i, against random-vs-random runs R_{i-1} vs R_i), Welch-tested and Holm-corrected.

Derivatives: torch models give the full gradient maps by autograd (every layer in one backward pass, through
the store) and every score is an einsum. ONNX models
give derivatives by finite differences through the head: S(x) is ONE directional derivative per image and CAV
(along v restricted to the positions where R > 0, a direction of its own per image), and the contribution maps
of the `map_images` are one derivative per position (v placed at that position).

What it can claim is what TCAV can claim (local sensitivity, see methods/tcav.py), plus where: the share of the
contribution inside the object's mask, and the maps themselves.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
from PIL import Image

from auditor import data
from auditor.context import Context, derive_seed, subsample
from auditor.errors import UserError
from auditor.methods import concept_scores, exchangeable, stats
from auditor.methods.cav import Cav
from auditor.methods.requirements import requirement_line
from auditor.methods.concept_scores import (
    MIN_CAV_ACCURACY, SACV_WORDS, Null, exchange_notes, is_tested, null_detail, requirement_rows, spare_set,
    status_and_summary, test_fields, test_words,
)
from auditor.methods.concept_scores import adjust as adjust_cells
from auditor.methods.spatial import (
    balanced_accuracy, concept_positions, contribution_maps, image_split, mean_spatial_cavs, position_sums,
    relevance_maps, spatial_cav, spatial_scores, spatial_stats, spatial_sums, subset_sums,
)
from auditor.models.base import has_layer_grads
from auditor.policy import Policy, check_layers
from auditor.results import CheckResult
from auditor.schemas.common import checked_rows
from auditor.schemas.sacv import SacvCheck, SacvFinding

# Overlay thumbnails embedded in results.json (the report draws from results.json alone, never from the
# image folders, which may not exist where the report is re-rendered).
THUMBNAIL_SIDE = 96


@dataclass(frozen=True)
class SpatialCell:
    """Raw material of one (model, layer, class, concept) before the correction."""

    model: str
    layer: str
    cls: str
    concept: str
    scores: np.ndarray  # (N,) spatial TCAV score per random run
    random_scores: np.ndarray  # (N,) random-vs-random spatial scores, same layer and class
    accuracies: np.ndarray  # (N,) held-out per-position accuracy of each concept CAV
    contribution: np.ndarray  # (m, H, W) M * [R > 0] of the mean concept CAV on the map images
    relevance: np.ndarray  # (m, H, W) R of the mean concept CAV on the map images
    inside_share: float | None  # share of |M| inside the object masks of the map images
    cosines: np.ndarray | None = None  # (N,) mean cosine of the gradient map with v at the R > 0 positions
    score_p: float | None = None  # exchangeability test: p of the spatial score (s1)
    cosine_p: float | None = None  # p of the cosine (s2)
    untested: str | None = None  # why the cell was not tested

    @property
    def learned(self) -> bool:
        return float(self.accuracies.mean()) >= MIN_CAV_ACCURACY

    @property
    def tested(self) -> bool:
        return self.learned and self.untested is None


# ----------------------------------------------------------------------------------------------- the method


def mask_fractions(mask_paths: list[Path], grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Object masks -> the fraction of each layer cell covered by the object: (n, H, W) in [0, 1].

    A mask is resized like its image (to the model input), then box-averaged onto the layer's grid: a cell
    half inside the object counts half.
    """
    out = []
    for p in mask_paths:
        with Image.open(p) as im:
            m = im.convert("L").resize((size[1], size[0]), Image.NEAREST)
        cell = Image.fromarray((np.asarray(m) > 127).astype(np.float32) * 255.0, mode="F")
        out.append(np.asarray(cell.resize((grid[1], grid[0]), Image.BOX), np.float32) / 255.0)
    return np.stack(out)


def inside_share(contribution: np.ndarray, inside: np.ndarray) -> float | None:
    """Share of sum |M * [R > 0]| that lies on the object (cells weighted by their object fraction)."""
    total = float(np.abs(contribution).sum())
    if total <= 0:
        return None
    return float((np.abs(contribution) * inside).sum() / total)


def thumbnail(path: Path) -> str:
    """A small PNG of an image as base64 (the report overlays the maps on it)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.BILINEAR)
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------------------------- image sets


def _classes_root(check: SacvCheck, policy: Policy) -> Path:
    return policy.resolve(check.images.folder if check.images is not None else policy.data.classes.folder)


def _masks_root(check: SacvCheck, policy: Policy) -> Path | None:
    if check.masks is not None:
        return policy.resolve(check.masks.folder)
    if check.images is None and policy.data.masks is not None:
        return policy.resolve(policy.data.masks.folder)
    return None


def _mask_paths(root: Path, sub: str, images: data.ImageSet) -> list[Path]:
    return [root / sub / p.name for p in images.paths]


def _masks_of(images: data.ImageSet, root: Path, sub: str, what: str, key: str, name: str,
              pre: data.Preprocessing, problems: list[str]) -> data.ImageSet | None:
    """The masks of `images` under root/sub: missing ones counted in one line, broken ones named."""
    paths = _mask_paths(root, sub, images)
    found = [p for p in paths if p.is_file()]
    if len(found) < len(paths):
        missing = next(p for p in paths if not p.is_file())
        problems.append(f"{key}: {len(paths) - len(found)} of {len(paths)} images of {what} have no mask "
                        f"(first: {missing})")
    broken = data.unreadable(found)
    problems.extend(f"{key}: {line}" for line in broken)
    return data.image_set(name, found, pre) if found and not broken else None


def validate(
    check: SacvCheck, policy: Policy, pre: data.Preprocessing, where: str, problems: list[str], models: dict,
) -> list[data.ImageSet]:
    """The check's own class folder and masks exist and decode, and every class image has its mask. Returns the
    sets only this check reads (its own images, masks and concept masks), for the provenance table."""
    concept_scores.validate(check, policy, pre, where, problems, models)  # the random draws fit the folders
    root = _classes_root(check, policy)
    masks = _masks_root(check, policy)
    own: list[data.ImageSet | None] = []
    if check.concept_masks is not None and policy.data.concepts is not None:
        croot = policy.resolve(policy.data.concepts.folder)
        mroot = policy.resolve(check.concept_masks.folder)
        for c in check.concepts:
            try:
                images = data.folder_set(f"concept:{c}", croot / c, pre)
            except UserError:
                continue  # the concept folder itself is checked by the pipeline
            own.append(_masks_of(images, mroot, c, f"concept {c!r}", f"{where}.concept_masks",
                                 f"{check.id}:concept-masks:{c}", pre, problems))
    for cls in check.classes:
        try:
            images = data.folder_set(f"{check.id}:class:{cls}", root / cls, pre)
        except UserError as e:
            problems.append(f"{where}.images: {e}")
            continue
        if check.images is not None:  # (data.classes folders are decoded by the pipeline)
            problems.extend(f"{where}.images: {line}" for line in data.unreadable(images.paths))
            own.append(images)
        if masks is not None:
            own.append(_masks_of(images, masks, cls, f"class {cls!r}", f"{where}.masks",
                                 f"{check.id}:masks:{cls}", pre, problems))
    return [s for s in own if s is not None]


def _class_set(check: SacvCheck, ctx: Context, cls: str, seed: int) -> data.ImageSet:
    if check.images is None:
        full = ctx.sets.classes[cls]
    else:
        full = data.folder_set(f"class:{cls}@{check.images.folder}", _classes_root(check, ctx.policy) / cls, ctx.pre)
    return subsample(full, check.class_images, derive_seed(seed, "class", cls), ctx.pre)


# ----------------------------------------------------------------------------------------------- running


@dataclass(frozen=True)
class _Overlay:
    model: str
    layer: str
    cls: str
    concept: str
    images: list[str]  # base64 PNG thumbnails
    logits: list[float]
    contribution: np.ndarray  # (t, H, W)


@dataclass(frozen=True)
class _Runs:
    """The CAVs of one (model, layer): N random-vs-random, then N per concept in the check's order."""

    null: list[Cav]
    concept: dict[str, list[Cav]]
    pseudo: tuple[np.ndarray, np.ndarray] | None = None  # exchangeable: (N, M, C) unit CAVs, (N, M) offsets

    def stacked(self, concepts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        runs = self.null + [v for c in concepts for v in self.concept[c]]
        return np.stack([v.vector for v in runs]), np.array([v.offset for v in runs])

    def mean(self, c: str) -> tuple[np.ndarray, float]:
        """One direction per concept for the maps: the runs' decision functions averaged, rescaled to unit norm."""
        v = np.mean([r.vector for r in self.concept[c]], axis=0)
        scale = max(float(np.linalg.norm(v)), 1e-12)
        return v / scale, float(np.mean([r.offset for r in self.concept[c]])) / scale


def _mean_runs(
    feats_r: list[np.ndarray], concepts: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    spare: np.ndarray, pseudo_rows: np.ndarray, seed: int,
) -> _Runs:
    """Mean per-position CAVs of the exchangeability test: per run i, the concepts, the M pseudo-concepts (spare
    rows, every position a concept sample: they have no concept mask) and the random-vs-random run, all on the
    run's one image split. `concepts`: concept -> (its folder's activations, the rows used, their `where`); the
    activations are read a block at a time, never copied whole (issue 18)."""
    sums_r = [position_sums(a) for a in feats_r]
    sums_c = {c: position_sums(a, where, rows) for c, (a, rows, where) in concepts.items()}
    sums_s = position_sums(spare)
    n = len(pseudo_rows[0])
    null, concept = [], {c: [] for c in concepts}
    vs, bs = [], []
    for i in range(1, len(feats_r)):
        c_tr, c_te, r_tr, r_te = image_split(n, derive_seed(seed, "split", str(i)))
        rand = subset_sums(sums_r[i], r_tr)
        sides = chain((subset_sums(sums_c[c], c_tr) for c in concepts),
                      (subset_sums(sums_s, r[c_tr]) for r in pseudo_rows))  # one pseudo-concept's rows at a time
        v, b = mean_spatial_cavs(sides, rand)
        for j, (c, (acts, rows, where)) in enumerate(concepts.items()):
            acc = balanced_accuracy(acts, rows[c_te], None if where is None else where[c_te], feats_r[i], r_te,
                                    v[j], b[j])
            concept[c].append(Cav(v[j].astype(np.float32), acc, float(b[j])))
        vs.append(v[len(concepts):].astype(np.float32))
        bs.append(b[len(concepts):])
        nv, nb = mean_spatial_cavs([subset_sums(sums_r[i - 1], c_tr)], rand)
        null.append(Cav(nv[0].astype(np.float32), 0.0, float(nb[0])))
    return _Runs(null=null, concept=concept, pseudo=(np.stack(vs), np.stack(bs)))


def _concept_where(check: SacvCheck, ctx: Context, c: str, rows: np.ndarray, grid: tuple) -> np.ndarray | None:
    if check.concept_masks is None:
        return None
    paths = _mask_paths(ctx.policy.resolve(check.concept_masks.folder), c, ctx.sets.concepts[c])
    return concept_positions(mask_fractions([paths[i] for i in rows], grid, ctx.policy.image_size))


def _train_runs(
    check: SacvCheck, ctx: Context, role: str, layers: list[str], randoms: list[data.ImageSet],
    concept_rows: dict[str, np.ndarray], seed: int, spare: tuple[data.ImageSet, np.ndarray] | None = None,
) -> dict[str, _Runs]:
    """The CAVs of every layer: logistic per-position CAVs (welch), or mean ones with the pseudo-concepts of the
    exchangeability test (`spare`: the spare pool and the (M, set_size) rows of each pseudo-concept)."""
    model = ctx.models[role]
    random_acts = [ctx.store.acts(model, layers, r) for r in randoms]
    concept_acts = {c: ctx.store.acts(model, layers, ctx.sets.concepts[c]) for c in check.concepts}
    spare_acts = None if spare is None else ctx.store.acts(model, layers, spare[0])
    out = {}
    for layer in layers:
        feats_r = [np.asarray(a[layer]) for a in random_acts]
        grid = feats_r[0].shape[2:]
        if spare is not None:
            concepts = {c: (np.asarray(concept_acts[c][layer]), concept_rows[c],
                            _concept_where(check, ctx, c, concept_rows[c], grid)) for c in check.concepts}
            out[layer] = _mean_runs(feats_r, concepts, np.asarray(spare_acts[layer]), spare[1], seed)
            continue
        null = [spatial_cav(feats_r[i - 1], feats_r[i], derive_seed(seed, "null", str(i))) for i in range(1, len(randoms))]
        concept: dict[str, list[Cav]] = {}
        for c in check.concepts:
            where = None
            if check.concept_masks is not None:
                paths = _mask_paths(ctx.policy.resolve(check.concept_masks.folder), c, ctx.sets.concepts[c])
                cover = mask_fractions([paths[i] for i in concept_rows[c]], grid, ctx.policy.image_size)
                where = concept_positions(cover)
            acts_c = np.asarray(concept_acts[c][layer])[concept_rows[c]]
            concept[c] = [
                spatial_cav(acts_c, feats_r[i], derive_seed(seed, "cav", c, str(i)), where)
                for i in range(1, len(randoms))
            ]
        out[layer] = _Runs(null=null, concept=concept)
    return out


def _class_cells(
    check: SacvCheck, ctx: Context, role: str, layers: list[str], runs: dict[str, _Runs], cls: str,
    class_set: data.ImageSet,
) -> tuple[list[SpatialCell], list[_Overlay], list[Null]]:
    model = ctx.models[role]
    n_runs = check.random_sets
    target = ctx.policy.data.classes.names.index(cls)
    # Torch: the exact gradient maps of every layer in one forward + backward pass (cached, shared with TCAV);
    # ONNX: finite differences through the head, only along the directions SACV needs.
    grad_maps = ctx.store.grad_maps(model, layers, class_set, target) if has_layer_grads(model) else None
    class_acts = ctx.store.acts(model, layers, class_set)
    m_idx = np.arange(min(check.map_images, len(class_set)))  # the set is already a seeded subsample
    # The decoded inputs: the map images alone where the gradient maps are at hand (the whole class set decoded
    # grew with it: 330 MB at 550 images of 224 px, issue 18); every image for a head's finite differences.
    x_map = data.load(class_set, ctx.pre, slice(0, len(m_idx)))
    x = ctx.store.images(class_set) if grad_maps is None else None
    logits = np.asarray(model.predict(x_map))[:, target]
    top = np.argsort(-logits, kind="stable")[: check.top_images]  # rows of the map images
    masks_root = _masks_root(check, ctx.policy)
    thumbs = [thumbnail(class_set.paths[int(i)]) for i in top]  # the same top images for every layer and concept
    cells, overlays, nulls = [], [], []
    for layer in layers:
        acts = np.asarray(class_acts[layer])
        grid = acts.shape[2:]
        pseudo = runs[layer].pseudo
        untested = None
        size = int(np.prod(acts.shape[1:]))
        if pseudo is not None and grad_maps is None and exchangeable.fd_rows(len(acts), size) > exchangeable.MAX_FD_ROWS:
            # Scores and maps as under Welch (directional finite differences along the concept's own CAVs), no test.
            untested, pseudo = exchangeable.over_budget(len(acts), size, layer), None
        if grad_maps is not None:
            grads = np.asarray(grad_maps[layer])
        elif pseudo is not None:  # the test needs the full map: ONNX finite differences, within the budget
            grads = np.asarray(ctx.store.grad_maps(model, [layer], class_set, target)[layer])
        elif hasattr(model.head(layer), "directional_per_image"):
            grads = None  # finite differences along SACV's own directions (ONNX)
        else:
            grads = np.asarray(model.head(layer).grad(acts, x, target))
        cavs, offsets = runs[layer].stacked(check.concepts)
        cosine = None
        if grads is not None:
            score, cosine = spatial_stats(acts, grads, cavs, offsets)
        else:
            score = spatial_scores(spatial_sums(model, layer, acts, x, grads, cavs, offsets, target))
        null_s1 = null_s2 = None
        if pseudo is not None:  # each pseudo-concept's statistics, mean over its N runs
            per_run = [spatial_stats(acts, grads, pseudo[0][i], pseudo[1][i]) for i in range(n_runs)]
            null_s1 = np.mean([r[0] for r in per_run], axis=0)
            null_s2 = np.mean([r[1] for r in per_run], axis=0)
            nulls.append(Null(role, layer, cls, null_s1, null_s2))
        inside = None
        if masks_root is not None:
            paths = _mask_paths(masks_root, cls, class_set)
            inside = mask_fractions([paths[i] for i in m_idx], grid, ctx.policy.image_size)
        for j, c in enumerate(check.concepts):
            v, b = runs[layer].mean(c)
            r = relevance_maps(acts[m_idx], v[None], np.array([b]))[:, 0]
            m = contribution_maps(
                model, layer, acts[m_idx], x_map, None if grads is None else grads[m_idx], v, target, r > 0
            )
            cols = slice(n_runs * (j + 1), n_runs * (j + 2))
            test = {}
            if null_s1 is not None:
                test = dict(score_p=exchangeable.permutation_p(abs(score[cols].mean() - 0.5), np.abs(null_s1 - 0.5)),
                            cosine_p=exchangeable.permutation_p(abs(cosine[cols].mean()), np.abs(null_s2)))
            cells.append(SpatialCell(
                model=role, layer=layer, cls=cls, concept=c, scores=score[cols], random_scores=score[:n_runs],
                accuracies=np.array([v.accuracy for v in runs[layer].concept[c]]), contribution=m, relevance=r,
                inside_share=None if inside is None else inside_share(m, inside),
                cosines=None if cosine is None else cosine[cols], untested=untested, **test,
            ))
            overlays.append(_Overlay(
                model=role, layer=layer, cls=cls, concept=c,
                images=thumbs,
                logits=[float(logits[i]) for i in top], contribution=m[top],
            ))
    return cells, overlays, nulls


def cav_learner(check: SacvCheck) -> str:
    """Mean CAVs under the exchangeability test (METHODS.md allows it for SACV: M x N per-position logistic fits of
    a few thousand positions each, at about 50 ms a fit, would make the demo's check minutes long), logistic CAVs
    (the paper's) under Welch."""
    return "mean" if check.test == "exchangeable" else "logistic"


def _cells(
    check: SacvCheck, ctx: Context,
) -> tuple[list[SpatialCell], list[_Overlay], dict[str, list[str]], dict | None]:
    seed = derive_seed(ctx.policy.seed, check.id)
    assert ctx.sets.random_pool is not None
    # As in TCAV: N + 1 disjoint random sets (concept run i is (C, R_i), null run i is (R_{i-1}, R_i)) and
    # seeds that depend on the check, concept and run only, so every model sees the same images and splits.
    randoms = data.draw_disjoint(ctx.sets.random_pool, check.random_sets + 1, check.set_size, seed, ctx.pre, "random")
    concept_rows = {
        c: np.sort(np.random.default_rng(derive_seed(seed, "concept", c)).permutation(len(ctx.sets.concepts[c]))[: check.set_size])
        for c in check.concepts
    }
    class_sets = {k: _class_set(check, ctx, k, seed) for k in check.classes}
    layers_by_model = check_layers(ctx.policy, check)
    cells: list[SpatialCell] = []
    overlays: list[_Overlay] = []
    nulls: list[Null] = []
    plan = None
    if check.test == "exchangeable":
        spare = spare_set(ctx.sets.random_pool, randoms[1:], ctx.pre, f"{check.id}:spare-random")
        family = sum(len(ls) for ls in layers_by_model.values()) * len(check.classes) * len(check.concepts)
        m, capped = exchangeable.pseudo_count(check.alpha, family, check.max_pseudo)
        rows = exchangeable.pseudo_rows(len(spare), check.set_size, m, derive_seed(seed, "pseudo"))
        plan = {"pseudo_concepts": m, "capped": capped, "spare": len(spare),
                "notes": exchange_notes(m, capped, check.max_pseudo, len(spare), check.set_size)}
    for role, layers in layers_by_model.items():
        ctx.log(f"sacv {check.id}: {role} ({len(layers)} layers, {len(check.concepts)} concepts, {check.random_sets} runs"
                + (f", {plan['pseudo_concepts']} pseudo-concepts)" if plan else ")"))
        runs = _train_runs(check, ctx, role, layers, randoms, concept_rows, seed, (spare, rows) if plan else None)
        for k in check.classes:
            more_cells, more_overlays, more_nulls = _class_cells(check, ctx, role, layers, runs, k, class_sets[k])
            cells += more_cells
            overlays += more_overlays
            nulls += more_nulls
    if plan:
        plan["null"] = null_detail(nulls)
    return cells, overlays, layers_by_model, plan


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _grid(a: np.ndarray, digits: int = 5) -> list[list[float]]:
    return [[float(f"{v:.{digits}g}") for v in row] for row in np.asarray(a, np.float64)]


def findings(cells: list[SpatialCell], test: str = "welch", statistic: str = "score") -> list[dict]:
    """One row per cell: the issue's fields, plus what the report needs (CAV accuracy, the random band)."""
    out = []
    for c in cells:
        row = {
            "model": c.model, "layer": c.layer, "class": c.cls, "concept": c.concept,
            "score": None, "p_value": None, "p_adjusted": None, "significant": False,
            "inside_mask_share": None if c.inside_share is None else round(c.inside_share, 6),
            "score_std": None,
            "random_score_mean": round(float(c.random_scores.mean()), 6),
            "random_score_std": round(float(c.random_scores.std()), 6),
            "cav_accuracy": round(float(c.accuracies.mean()), 6),
            "learned": c.learned,
            "tested": c.tested,
            "verdict": "not learned",
        }
        row.update(test_fields(c, test, statistic))
        out.append(row)
    return out


def adjust(rows: list[dict], alpha: float) -> tuple[list[dict], int]:
    """Holm over the check's tested cells (a p-value scipy could not compute counts as 1)."""
    raw = np.array([1.0 if f["p_value"] is None else f["p_value"] for f in rows if is_tested(f)])
    adjusted = stats.holm(raw) if len(raw) else np.array([])
    return adjust_cells(rows, list(adjusted), alpha), len(raw)


def _maps_detail(cells: list[SpatialCell], overlays: list[_Overlay]) -> tuple[list[dict], list[dict]]:
    """(maps, thumbnails): per cell the mean maps and the top images' maps (each naming its thumbnail by index
    in the (model, class) list of `thumbnails`, stored once: the top images are the same for every layer and
    concept). Map values keep 4 significant digits (overlays 3): figures, not measurements."""
    maps, thumbnails, seen = [], [], set()
    for c, o in zip(cells, overlays):
        if (c.model, c.cls) not in seen:
            seen.add((c.model, c.cls))
            thumbnails.append({"model": c.model, "class": c.cls, "images_png": list(o.images), "logits": o.logits})
        maps.append({
            "model": c.model, "layer": c.layer, "class": c.cls, "concept": c.concept,
            "images": int(len(c.contribution)),
            "mean_contribution": _grid(c.contribution.mean(axis=0), 4),
            "mean_abs_contribution": _grid(np.abs(c.contribution).mean(axis=0), 4),
            "overlays": [{"image": j, "contribution": _grid(m, 3)} for j, m in enumerate(o.contribution)],
        })
    return maps, thumbnails


def run(check: SacvCheck, ctx: Context) -> CheckResult:
    cells, overlays, layers_by_model, plan = _cells(check, ctx)
    rows, family = adjust(findings(cells, check.test, check.statistic), check.alpha)
    maps, thumbnails = _maps_detail(cells, overlays)
    reqs = requirement_rows(check.require, rows, list(layers_by_model), check.classes, SACV_WORDS)
    status, summary = status_and_summary(reqs, rows, SACV_WORDS.accuracy)
    details = {
        "settings": {
            "random_sets": check.random_sets, "set_size": check.set_size, "alpha": check.alpha,
            "classes": list(check.classes), "concepts": list(check.concepts),
            "map_images": check.map_images, "top_images": check.top_images,
            "masks": _masks_root(check, ctx.policy) is not None,
            "concept_masks": check.concept_masks is not None,
            "test": test_words(check.test, family, check.statistic, (plan or {}).get("pseudo_concepts", 0),
                               (plan or {}).get("spare", 0), SACV_WORDS),
            "test_name": check.test, "statistic": check.statistic if plan else "score",
            "cav": cav_learner(check),
            "family_size": family, "min_cav_accuracy": MIN_CAV_ACCURACY,
        },
        "layers": layers_by_model,
        "requirements": reqs,
        "maps": maps,
        "thumbnails": thumbnails,
        "notes": list((plan or {}).get("notes", [])),
    }
    if plan:
        details["settings"].update(pseudo_concepts=plan["pseudo_concepts"], spare_images=plan["spare"],
                                   max_pseudo=check.max_pseudo)
        details["null"] = plan["null"]
    return CheckResult(
        id=check.id, method="sacv", status=status, severity=check.severity, summary=summary,
        requirement=requirement_line(reqs), findings=checked_rows(SacvFinding, rows), details=details,
    )
