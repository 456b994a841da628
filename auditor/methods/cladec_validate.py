"""ClaDec before anything runs (`validate`) and the torch side of each model: the network the classification term
and the reference auto-encoder need (the model itself when it is torch, its declared torch twin when it is ONNX).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auditor import data
from auditor.errors import UserError
from auditor.methods import artifact
from auditor.methods.cladec_core import torch_module
from auditor.methods.cladec_images import class_folders, images_root, paste_root
from auditor.methods.cladec_reference import unavailable_reason
from auditor.models import load_model
from auditor.models.base import Model
from auditor.policy import Policy, check_layers
from auditor.schemas.cladec import CladecCheck

# Images a twin's logits are compared with its ONNX model's on (seeded noise at the policy's size), and how
# close they must be: float32 ONNX Runtime vs torch differ by ~1e-6 relative on the demo's CNNs; a twin of another
# network or other weights differs by whole logits.
TWIN_IMAGES = 4
TWIN_TOLERANCE = 1e-3


@dataclass(frozen=True)
class TorchSide:
    """What ClaDec trains through for one model: `module` None (ONNX without a twin) trains with alpha = 0 and
    has no reference auto-encoder (`unavailable` says why)."""

    module: object | None  # torch nn.Module
    layers: tuple[str, ...]  # the module's names of the check's layers (a twin names them its own way)
    sha256: str  # the twin's hash ("" when the module is the model itself): part of the cache keys
    twin: str | None  # the twin's path as the policy names it
    unavailable: str | None


def load_twin(check: CladecCheck, policy: Policy, role: str) -> Model:
    spec = check.torch_twins[role]
    return load_model(policy.resolve(spec.path), "auto", (3, *policy.image_size), name=f"{role}-torch-twin",
                      search_dir=policy.root)


def torch_side(check: CladecCheck, policy: Policy, role: str, model: Model, layers: list[str]) -> TorchSide:
    module = torch_module(model)
    if module is not None:
        return TorchSide(module, tuple(layers), "", None, None)
    if role not in check.torch_twins:
        return TorchSide(None, tuple(layers), "", None, unavailable_reason(None))
    twin = load_twin(check, policy, role)
    return TorchSide(torch_module(twin), tuple(check.torch_twins[role].layers), twin.sha256,
                     check.torch_twins[role].path, None)


def _twin_problems(check: CladecCheck, policy: Policy, where: str, role: str, model: Model,
                   layers: list[str]) -> list[str]:
    here = f"{where}.torch_twins.{role}"
    if torch_module(model) is not None:
        return [f"{here}: model {role!r} is a torch model already; a twin is for ONNX models"]
    spec = check.torch_twins[role]
    try:
        twin = load_twin(check, policy, role)
    except UserError as e:
        return [f"{here}.path: {e}"]
    if torch_module(twin) is None:
        return [f"{here}.path: {spec.path} did not load as a torch module (TorchScript .pt or module:factory)"]
    if len(spec.layers) != len(layers):
        return [f"{here}.layers: {len(spec.layers)} layers, but the check audits {len(layers)} of model {role!r} "
                f"({', '.join(layers)}); name the twin's layer for each, in order"]
    known = {li.name: tuple(li.shape) for li in twin.layers()}
    shapes = {li.name: tuple(li.shape) for li in model.layers()}
    out = []
    for j, (mine, theirs) in enumerate(zip(layers, spec.layers)):
        if theirs not in known:
            out.append(f"{here}.layers[{j}]: layer {theirs!r} is not in the twin (`auditor layers {spec.path}`)")
        elif mine in shapes and known[theirs] != shapes[mine]:
            out.append(f"{here}.layers[{j}]: {theirs!r} has shape {known[theirs]}, {mine!r} of model {role!r} "
                       f"{shapes[mine]}: not the same layer")
    x = np.random.default_rng(0).standard_normal((TWIN_IMAGES, 3, *policy.image_size)).astype(np.float32)
    a, b = model.predict(x), twin.predict(x)
    gap = float(np.abs(a - b).max()) if a.shape == b.shape else float("inf")
    if not gap <= TWIN_TOLERANCE * max(1.0, float(np.abs(a).max())):
        out.append(f"{here}.path: the twin's logits differ from model {role!r}'s by up to {gap:.3g} on the same "
                   "images: it is not the same network")
    return out


def _folder_problems(root: Path, names: tuple[str, ...], where: str, pre: data.Preprocessing,
                     what: str, check_id: str) -> tuple[list[str], list[data.ImageSet]]:
    if not root.is_dir():
        return [f"{where}: folder not found: {root}"], []
    folders = class_folders(root, names)
    if not folders:
        return [f"{where}: {root} has no subfolder named after a class ({', '.join(names)})"], []
    problems, own = [], []
    for k in folders:
        paths = data.list_images(root / k)
        broken = data.unreadable(paths)
        problems.extend(f"{where}: {line}" for line in broken)
        if paths and not broken:
            own.append(data.image_set(f"{check_id}:{what}:{k}", paths, pre))
    if not own and not problems:
        problems.append(f"{where}: no images in the class subfolders of {root}")
    return problems, own


def _artifact_problems(check: CladecCheck, policy: Policy, pre: data.Preprocessing, where: str) -> tuple[list[str], list[data.ImageSet]]:
    path = policy.resolve(check.artifact.image)
    if not path.is_file():
        return [f"{where}.artifact.image: file not found: {path}"], []
    broken = data.unreadable([path])
    if broken:
        return [f"{where}.artifact.image: {line}" for line in broken], []
    problems: list[str] = []
    artifact.validate(check, policy, pre, where, problems, {})
    return problems, [data.image_set(f"{check.id}:artifact", [path], pre)]


def _role_problems(check: CladecCheck, roles: list[str], where: str) -> list[str]:
    out = []
    for role in check.torch_twins:
        if role not in roles:
            out.append(f"{where}.torch_twins.{role}: no audited model called {role!r} ({', '.join(roles)})")
    for j, r in enumerate(check.require):
        if r.model != "all" and r.model not in roles:
            out.append(f"{where}.require[{j}].model: {r.model!r} is not audited by this check ({', '.join(roles)})")
        if r.max_retention_vs is not None and r.max_retention_vs not in roles:
            out.append(f"{where}.require[{j}].max_retention_vs: {r.max_retention_vs!r} is not audited by this check "
                       f"({', '.join(roles)})")
    return out


def validate(check: CladecCheck, policy: Policy, pre: data.Preprocessing, where: str, problems: list[str],
             models: dict[str, Model]) -> list[data.ImageSet]:
    """One line per problem: image folders, the artifact, the twins (loadable, same network, layers named), the
    layers' shapes (a decoder takes C x H x W or D), the requirements' roles. Returns the sets read, for provenance."""
    layers_by_model = check_layers(policy, check)
    roles = list(layers_by_model)
    problems.extend(_role_problems(check, roles, where))
    names = policy.data.classes.names
    found, own = _folder_problems(images_root(check, policy), names,
                                  f"{where}.images" if check.images is not None else "data.classes", pre, "train",
                                  check.id)
    problems.extend(found)
    if check.artifact is not None:
        found, sets = _artifact_problems(check, policy, pre, where)
        problems.extend(found)
        own += sets
        if check.artifact_images is not None:
            found, sets = _folder_problems(paste_root(check, policy), names, f"{where}.artifact_images", pre,
                                           "pairs", check.id)
            problems.extend(found)
            own += sets
    for role, layers in layers_by_model.items():
        if role not in models:
            continue
        shapes = {li.name: tuple(li.shape) for li in models[role].layers()}
        for layer in layers:
            if layer in shapes and len(shapes[layer]) not in (1, 3):
                problems.append(f"{where}: cladec decodes C x H x W or D layers; {layer!r} of model {role!r} has "
                                f"shape {shapes[layer]}")
        if role in check.torch_twins:
            problems.extend(_twin_problems(check, policy, where, role, models[role], layers))
    return own
