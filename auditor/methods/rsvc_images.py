"""RSVC's image pool, before anything runs and while it runs: `validate` (the check's models and image folders,
and that its layers are non-negative), the pool of images with each model's prediction, the extraction /
evaluation split, and the clock that says where the check's time went."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from auditor import data
from auditor.context import Context
from auditor.errors import UserError
from auditor.models.base import Model
from auditor.policy import Policy, check_layers
from auditor.schemas.rsvc import RsvcCheck


# ------------------------------------------------------------------------------------------------ timing


@dataclass
class Clock:
    """Where the check's time went (logged; never written to results.json, which must be reproducible)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, what: str, since: float) -> None:
        self.seconds[what] = self.seconds.get(what, 0.0) + time.perf_counter() - since


# ------------------------------------------------------------------------------------------------ images


def images_root(check: RsvcCheck, policy: Policy) -> Path:
    return policy.resolve(check.images.folder if check.images is not None else policy.data.classes.folder)


def validate(
    check: RsvcCheck, policy: Policy, pre: data.Preprocessing, where: str, problems: list[str],
    models: dict[str, Model],
) -> list[data.ImageSet]:
    """Before anything runs: two distinct-role models, non-negative layers, and the image folder with a subfolder
    per checked class. Returns the class folders of its own image folder (every one the pool reads), for the
    provenance table."""
    roles = check.models or list(policy.models)
    if len(roles) != 2:
        problems.append(f"{where}.models: rsvc compares exactly two models, got {len(roles)} ({', '.join(roles)})")
    elif roles[0] == roles[1]:
        problems.append(f"{where}.models: the two models must be different roles (got {roles[0]!r} twice)")
    root = images_root(check, policy)
    if len(roles) == 2 and roles[0] != roles[1]:
        problems.extend(negative_layers(check, policy, pre, where, models, root))
    if check.images is None:
        return []  # data.classes is checked by the pipeline
    if not root.is_dir():
        problems.append(f"{where}.images.folder: folder not found: {root}")
        return []
    for cls in check.classes:
        try:
            data.folder_set(f"rsvc:{cls}", root / cls, pre)
        except UserError as e:
            problems.append(f"{where}.images: {e}")
    # Every class folder the pool reads (not only the checked classes) must decode.
    own = []
    for k in policy.data.classes.names:
        paths = data.list_images(root / k) if (root / k).is_dir() else []
        broken = data.unreadable(paths)
        problems.extend(f"{where}.images: {line}" for line in broken)
        if paths and not broken:
            own.append(data.image_set(f"{check.id}:class:{k}", paths, pre))
    return own


@dataclass(frozen=True)
class Pool:
    """Every image the check may use, with each model's prediction."""

    paths: tuple[Path, ...]
    labels: tuple[str, ...]  # display name "class-folder/file"
    predicted: dict[str, np.ndarray]  # role -> (n,) predicted class index
    folders: tuple[str, ...]


# Images of the pool decoded and predicted at a time (the torch adapter's batch).
POOL_BLOCK = 64


def _pool(check: RsvcCheck, ctx: Context, roles: list[str], clock: Clock) -> Pool:
    root = images_root(check, ctx.policy)
    names = ctx.policy.data.classes.names
    folders = [k for k in names if (root / k).is_dir()]
    sets = [data.folder_set(f"rsvc-pool:{k}@{root}", root / k, ctx.pre) for k in folders]
    predicted: dict[str, list[np.ndarray]] = {r: [] for r in roles}
    for s in sets:
        # Decoded POOL_BLOCK images at a time: the whole folder decoded grew with it (issue 18).
        for first in range(0, len(s), POOL_BLOCK):
            x = data.load(s, ctx.pre, slice(first, first + POOL_BLOCK))
            for role in roles:
                t = time.perf_counter()
                predicted[role].append(ctx.models[role].predict(x).argmax(axis=1))
                clock.add("forward", t)
                clock.add("pool", t)
    return Pool(
        paths=tuple(p for s in sets for p in s.paths),
        labels=tuple(f"{k}/{p.name}" for k, s in zip(folders, sets) for p in s.paths),
        predicted={r: np.concatenate(v) if v else np.zeros(0, int) for r, v in predicted.items()},
        folders=tuple(folders),
    )


@dataclass(frozen=True)
class Split:
    extraction: np.ndarray  # pool indices
    evaluation: np.ndarray
    candidates: int  # images either model predicts as the class
    note: str | None  # why the split is smaller than asked, if it is


def split_images(candidates: np.ndarray, n_extraction: int, n_evaluation: int, seed: int) -> Split:
    """Disjoint seeded extraction and evaluation images; with fewer candidates than both ask for, the candidates
    are shared in the asked proportion."""
    n = len(candidates)
    order = candidates[np.random.default_rng(seed).permutation(n)]
    note = None
    if n >= n_extraction + n_evaluation:
        e, v = n_extraction, n_evaluation
    else:
        e = int(round(n * n_extraction / (n_extraction + n_evaluation)))
        v = n - e
        note = (
            f"only {n} images are predicted as the class by either model (asked: {n_extraction} for extraction "
            f"+ {n_evaluation} for evaluation): split {e} / {v}"
        )
    return Split(np.sort(order[:e]), np.sort(order[e : e + v]), n, note)


# Images per checked class a layer's sign is tested on before anything runs (the first ones of the folder).
SIGN_IMAGES = 2


def layer_where(check: RsvcCheck, policy: Policy, role: str) -> str:
    """The YAML path of a model's layer list as the check reads it (its own `layers:` or the policy's)."""
    index = next(i for i, c in enumerate(policy.checks) if c.id == check.id)
    own = check.layers or {}
    return f"checks[{index}].layers.{role}" if role in own else f"layers.{role}"


def negative_message(where: str, layer: str, role: str, low: float) -> str:
    return (f"{where}: layer {layer!r} of model {role!r} has negative activations (min {low:.3g}); RSVC factorises "
            "activations with NMF and needs a non-negative layer, e.g. a ReLU output")


def is_negative(a: np.ndarray) -> tuple[bool, float]:
    """(negative beyond rounding, the minimum): a ReLU-free graph path may leave -0-ish values, which are fine."""
    low, high = float(a.min(initial=0.0)), float(np.abs(a).max(initial=0.0))
    return negative_beyond_rounding(low, high), low


def negative_beyond_rounding(low: float, high: float) -> bool:
    """`is_negative` from a layer's minimum and largest magnitude (taken a block at a time)."""
    return low < -1e-6 * max(high, 1e-30)


def negative_layers(check: RsvcCheck, policy: Policy, pre: data.Preprocessing, where: str,
                    models: dict[str, Model], root: Path) -> list[str]:
    """One line per audited layer with negative activations on the first SIGN_IMAGES images of each checked class
    (NMF needs a non-negative layer; a signed layer such as a conv output is negative on almost any image). A
    model or folder that failed to load is reported elsewhere."""
    paths = [p for k in check.classes if (root / k).is_dir() for p in data.list_images(root / k)[:SIGN_IMAGES]]
    try:
        x = np.stack([data.decode(p, pre) for p in paths]) if paths else None
    except Exception:  # an unreadable image: the folder checks name it
        x = None
    if x is None:
        return []
    out = []
    for role, layers in check_layers(policy, check).items():
        if role not in models:
            continue
        known = {li.name for li in models[role].layers()}
        wanted = [layer for layer in layers if layer in known]
        try:
            acts = models[role].activations(x, wanted) if wanted else {}
        except Exception:  # a model that does not run on these images: its own checks say so
            continue
        for layer in wanted:
            negative, low = is_negative(np.asarray(acts[layer]))
            if negative:
                out.append(negative_message(layer_where(check, policy, role), layer, role, low))
    return out
