"""run_audit(policy) -> AuditResult: the only orchestrator.

policy -> models + image sets (all validated before any check runs) -> each check's method -> AuditResult.
A check that crashes is recorded as ERROR and the audit goes on; a user mistake stops everything up front.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from auditor import __version__, data, memory
from auditor.activations import Store, StoreStats
from auditor.context import Context, ImageSets
from auditor.errors import CheckError, NonFiniteError, UserError
from auditor.methods import METHODS
from auditor.models import Model, load_model, resolve_framework
from auditor.models import device as devices
from auditor.policy import Policy, PolicyError, check_layers, layer_overrides
from auditor.results import SCHEMA_VERSION, AuditResult, CheckResult, ImageSetInfo, ModelInfo, Provenance, Status

LIBRARIES = ("numpy", "scipy", "scikit-learn", "torch", "onnx", "onnxruntime", "weasyprint", "matplotlib", "pydantic")


@dataclass(frozen=True)
class RunOutcome:
    result: AuditResult
    stats: StoreStats


def preprocessing(policy: Policy) -> data.Preprocessing:
    p = policy.preprocessing
    return data.Preprocessing(size=policy.image_size, mean=tuple(p.mean), std=tuple(p.std), channel_order=p.channel_order)


def _load_models(policy: Policy, problems: list[str], device: str = "cpu") -> dict[str, Model]:
    models: dict[str, Model] = {}
    shape = (3, *policy.image_size)
    paths = {role: policy.resolve(spec.path) if spec.path else None for role, spec in policy.models.items()}
    if device == "cuda":  # one line for the run, not one per model
        devices.check_cuda(resolve_framework(paths[r], s.framework) for r, s in policy.models.items())
    for role, spec in policy.models.items():
        path = paths[role]
        try:
            models[role] = load_model(
                path, spec.framework, shape, factory=spec.factory, trust_pickle=spec.trust_pickle,
                name=spec.name or role, search_dir=policy.root, device=device,
            )
        except UserError as e:
            problems.append(f"models.{role}: {e}")
    return models


# Square sides tried when a model does not run at the policy's size, to say which sizes it accepts.
_PROBE_SIDES = (8, 16, 28, 32, 64, 96, 128, 160, 192, 224, 256, 299, 320, 384, 448, 512)


def _forward(model: Model, shape: tuple[int, ...]) -> np.ndarray | None:
    """Logits of one zero image of `shape`, or None when the model does not run on it."""
    try:
        return np.asarray(model.predict(np.zeros((1, *shape), np.float32)))
    except NonFiniteError:  # runs, but gives NaN: the checks report it where it appears
        return np.full((1, 1), np.nan, np.float32)
    except Exception:  # torch raises RuntimeError, its TorchScript wrapper others: all mean "not this shape"
        return None


def _probe_models(policy: Policy, models: dict[str, Model], problems: list[str]) -> None:
    """One forward pass per model at the policy's size, before anything else touches it: a shape mismatch is one
    line naming the model and the sizes it accepts (not a TorchScript traceback), and the class names are checked
    against the number of logits. A model that does not run is dropped from `models` (its layers go unchecked)."""
    shape = (3, *policy.image_size)
    names = policy.data.classes.names
    logit_counts: dict[int, list[str]] = {}
    for role in list(models):
        spec = policy.models[role]
        where = f"models.{role}"
        source = spec.path or spec.factory
        logits = _forward(models[role], shape)
        if logits is None:
            ok = [f"{s}x{s}" for s in _PROBE_SIDES if s != shape[1] and _forward(models[role], (3, s, s)) is not None]
            accepts = f"it runs on {', '.join(ok)} images" if ok else f"it ran on none of {_PROBE_SIDES[0]}..{_PROBE_SIDES[-1]} px square images"
            problems.append(
                f"{where}: {source} does not run on images of shape {shape} (preprocessing.size {policy.preprocessing.size}); "
                f"{accepts}"
            )
            del models[role]
            continue
        if logits.ndim != 2 or logits.shape[0] != 1:
            problems.append(f"{where}: {source} gives output of shape {tuple(logits.shape)} for one image; expected logits (1, K)")
            del models[role]
            continue
        if np.isnan(logits).all() and logits.shape[1] == 1:
            continue  # NaN logits (see `_forward`): the checks report the model where it is used
        logit_counts.setdefault(logits.shape[1], []).append(role)
    # One line per logit count, naming every model that has it (two copies of one model are one mistake).
    for k, roles in logit_counts.items():
        who = " and ".join(f"{r!r} ({policy.models[r].path or policy.models[r].factory})" for r in roles)
        models_have = f"model{'s' if len(roles) > 1 else ''} {who} ha{'ve' if len(roles) > 1 else 's'} {k} logits"
        if names.complete and len(names) != k:
            problems.append(
                f"data.classes.names: {len(names)} names, but {models_have}; give one name per logit in order, or a "
                "mapping {logit: name} of the classes to audit (e.g. {285: egyptian_cat})"
            )
        elif not names.complete and max(names.logits) >= k:
            problems.append(f"data.classes.names: logit {max(names.logits)} is named, but {models_have} (0..{k - 1})")


def _check_layers(policy: Policy, models: dict[str, Model], problems: list[str]) -> None:
    known = {role: {li.name for li in m.layers()} for role, m in models.items()}

    def check(where: str, role: str, names: list[str]) -> None:
        if role not in known:
            return
        for j, name in enumerate(names):
            if name not in known[role]:
                problems.append(
                    f"{where}[{j}]: layer {name!r} is not in model {role!r} "
                    f"(`auditor layers {policy.models[role].path or policy.models[role].factory}` lists them)"
                )

    for role, names in policy.layers.items():
        check(f"layers.{role}", role, names)
    for i, c in enumerate(policy.checks):
        for role, names in layer_overrides(c).items():
            check(f"checks[{i}].layers.{role}", role, names)
    # SACV works on positions: a layer without a C x H x W output is a policy mistake, known before anything runs.
    shapes = {role: {li.name: tuple(li.shape) for li in m.layers()} for role, m in models.items()}
    for i, c in enumerate(policy.checks):
        if not METHODS[c.method].reads.conv_layers:
            continue
        for role, names in check_layers(policy, c).items():
            own = role in layer_overrides(c)
            for j, name in enumerate(names):
                shape = shapes.get(role, {}).get(name)
                if shape is not None and len(shape) != 3:
                    where = (f"checks[{i}].layers.{role}[{j}]" if own
                             else f"layers.{role}[{j}] (read by checks[{i}], {c.method})")
                    problems.append(
                        f"{where}: {c.method} needs convolutional layers (C x H x W); {name!r} of model {role!r} has "
                        f"shape {shape}"
                    )


# Fewest images in a concept folder (see `_image_sets`).
MIN_CONCEPT_IMAGES = 3


def _paste_images_key(check) -> str:
    """The key of the clean images a pasting check names (the probe's `images`, INVERT's `artifact_images`)."""
    return "images" if hasattr(check, "images") else "artifact_images"


def _pastes_onto_classes(check) -> bool:
    """A pasting check with an artifact and no folder of its own pastes onto every class folder."""
    return getattr(check, "artifact", None) is not None and getattr(check, _paste_images_key(check), None) is None


def _image_sets(policy: Policy, pre: data.Preprocessing, models: dict[str, Model], problems: list[str]) -> ImageSets:
    # (sacv and rsvc checks with their own `images:` folder read and validate that folder themselves.)
    reads = {c.id: METHODS[c.method].reads for c in policy.checks}
    needed_classes = sorted({
        k for c in policy.checks if reads[c.id].classes and getattr(c, "images", None) is None for k in c.classes
    })
    if any(reads[c.id].pastes and _pastes_onto_classes(c) for c in policy.checks):
        needed_classes = list(policy.data.classes.names)  # the probe pastes onto every class's clean images
    needed_concepts = sorted({k for c in policy.checks if reads[c.id].concepts for k in c.concepts})
    d = policy.data

    def folder(where: str, path: Path, name: str) -> data.ImageSet | None:
        try:
            s = data.folder_set(name, path, pre)
        except UserError as e:
            problems.append(f"{where}: {e}")
            return None
        problems.extend(data.unreadable(s.paths))
        return s

    root = policy.resolve(d.classes.folder)
    classes = {k: folder(f"data.classes ({k})", root / k, f"class:{k}") for k in needed_classes}
    concepts = {}
    if d.concepts is not None:
        croot = policy.resolve(d.concepts.folder)
        concepts = {k: folder(f"data.concepts ({k})", croot / k, f"concept:{k}") for k in needed_concepts}
        for k, s in concepts.items():
            # A CAV is fitted on a stratified 2/3 : 1/3 split of concept vs random images: fewer than this many
            # concept images leave a side of the split without one.
            if s is not None and len(s) < MIN_CONCEPT_IMAGES:
                problems.append(
                    f"data.concepts ({k}): {croot / k} has {len(s)} image{'s' if len(s) != 1 else ''}; a concept needs "
                    f"at least {MIN_CONCEPT_IMAGES} (a CAV is fitted and tested on a split of them)"
                )
    pool = folder("data.random", policy.resolve(d.random.folder), "random-pool") if d.random is not None else None
    own: list[data.ImageSet] = []
    for i, c in enumerate(policy.checks):
        if reads[c.id].pastes and c.artifact is not None:
            artifact = policy.resolve(c.artifact.image)
            if not artifact.is_file():
                problems.append(f"checks[{i}].artifact.image: file not found: {artifact}")
            else:
                broken = data.unreadable([artifact])
                problems.extend(f"checks[{i}].artifact.image: {line}" for line in broken)
                if not broken:
                    own.append(data.image_set(f"{c.id}:artifact", [artifact], pre))
            key = _paste_images_key(c)
            images = getattr(c, key)
            if images is not None:
                own.append(folder(f"checks[{i}].{key}", policy.resolve(images.folder), f"probe-images:{c.id}"))
        validate = METHODS[c.method].validate
        if validate is not None:  # files only this method reads (e.g. INVERT's labels.csv)
            own.extend(validate(c, policy, pre, f"checks[{i}]", problems, models))
    return ImageSets(
        classes={k: v for k, v in classes.items() if v is not None},
        concepts={k: v for k, v in concepts.items() if v is not None},
        random_pool=pool,
        own=tuple(s for s in own if s is not None),
    )


def prepare(
    policy: Policy, cache_dir: Path, log: Callable[[str], None], device: str = "cpu", max_memory: int | None = None
) -> Context:
    """Load models (on `device`: cpu, cuda or auto) and image sets and check everything the policy names
    exists; raise PolicyError listing every problem (one line each) before any computation starts. `max_memory`
    (bytes; default `memory.default_budget()`) is the budget the store sizes its chunks against."""
    problems: list[str] = []
    pre = preprocessing(policy)
    log("loading models")
    models = _load_models(policy, problems, device)
    _probe_models(policy, models, problems)
    _check_layers(policy, models, problems)
    log("checking image sets")
    sets = _image_sets(policy, pre, models, problems)
    if problems:
        raise PolicyError(policy.source, problems)
    cache = devices.cache_dir(cache_dir, (getattr(m, "device", "cpu") for m in models.values()))
    store = Store(cache, pre, log, max_memory)
    log(f"memory budget {memory.format_size(store.max_memory)} (chunks of up to {memory.format_size(store.chunk_bytes)})")
    return Context(policy=policy, models=models, sets=sets, store=store, log=log)


def created_timestamp() -> str:
    """Now in UTC, or SOURCE_DATE_EPOCH when set (reproducible reports)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def library_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def provenance(ctx: Context, command: str) -> Provenance:
    policy = ctx.policy
    sets = list(ctx.sets.classes.values()) + list(ctx.sets.concepts.values())
    if ctx.sets.random_pool is not None:
        sets.append(ctx.sets.random_pool)
    sets.extend(ctx.sets.own)
    return Provenance(
        tool_version=__version__,
        created=created_timestamp(),
        policy_sha256=policy.sha256,
        policy_path=policy.source,
        seed=policy.seed,
        models=[
            ModelInfo(
                role=role, name=m.name, framework=m.framework, sha256=m.sha256,
                path=str(policy.models[role].path or policy.models[role].factory),
                trust_pickle=policy.models[role].trust_pickle, device=getattr(m, "device", "cpu"),
            )
            for role, m in ctx.models.items()
        ],
        image_sets=[ImageSetInfo(name=s.name, fingerprint=s.fingerprint, count=len(s)) for s in sets],
        libraries=library_versions(),
        command=command,
        policy_text=policy.text,
    )


def _run_check(check, ctx: Context, errors_log: Path | None) -> CheckResult:
    try:
        return METHODS[check.method].run(check, ctx)
    except UserError:
        raise
    except CheckError as e:  # e.g. the model's NaN: ERROR saying which model and layer, no traceback
        ctx.log(f"check {check.id}: {e}")
        return CheckResult(
            id=check.id, method=check.method, status=Status.ERROR, severity=check.severity,
            summary=str(e).splitlines()[0], requirement="(not evaluated)", findings=[],
            details={"layers": check_layers(ctx.policy, check)},
        )
    except Exception as e:  # a crashed check is ERROR in the report; the rest of the audit still runs
        if errors_log is not None:
            with open(errors_log, "a", encoding="utf-8") as f:
                f.write(f"--- check {check.id}\n{traceback.format_exc()}\n")
        ctx.log(f"check {check.id} crashed: {type(e).__name__}: {e}")
        return CheckResult(
            id=check.id, method=check.method, status=Status.ERROR, severity=check.severity,
            summary=f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            requirement="(not evaluated)", findings=[], details={"layers": check_layers(ctx.policy, check)},
        )


def correct_families(specs: list, results: list[CheckResult]) -> list[CheckResult]:
    """Each method's audit-wide multiple-comparison correction (METHODS[m].correct), over its checks that did not
    crash, in policy order; `specs[i]` is the policy check of `results[i]`."""
    out = list(results)
    for name, method in METHODS.items():
        if method.correct is None:
            continue
        mine = [i for i, r in enumerate(results) if r.method == name and r.status != Status.ERROR]
        if not mine:
            continue
        corrected = method.correct([specs[i] for i in mine], [results[i] for i in mine])
        for i, r in zip(mine, corrected):
            out[i] = r
    return out


def run_audit(
    policy: Policy, cache_dir: Path, log: Callable[[str], None], command: str = "", errors_log: Path | None = None,
    device: str = "cpu", max_memory: int | None = None,
) -> RunOutcome:
    ctx = prepare(policy, cache_dir, log, device, max_memory)
    checks = []
    for check in policy.checks:
        log(f"check {check.id} ({check.method})")
        checks.append(_run_check(check, ctx, errors_log))
        ctx.store.release()  # what the check read stays on disk; its maps and decoded images are let go
        log(f"check {check.id} done, peak memory so far {memory.peak_rss_mib():.0f} MiB")
    checks = correct_families(list(policy.checks), checks)
    verdict = "FAIL" if any(c.status in (Status.FAIL, Status.ERROR) for c in checks) else "PASS"
    s = ctx.store.stats
    log(
        f"store: {s.extracted} activation arrays extracted in {s.forward_passes} forward passes, "
        f"{s.from_disk} from the disk cache; {s.gradients} gradient arrays computed, {s.gradients_from_disk} from cache"
    )
    result = AuditResult(
        schema_version=SCHEMA_VERSION, title=policy.title, verdict=verdict,
        provenance=provenance(ctx, command), checks=checks,
    )
    return RunOutcome(result=result, stats=s)


def exit_code(result: AuditResult, fail_on: str = "minor") -> int:
    """0 pass; 1 a check failed at or above `fail_on`; 3 a check crashed (the audit is incomplete)."""
    if any(c.status == Status.ERROR for c in result.checks):
        return 3
    rank = {"critical": 0, "major": 1, "minor": 2}
    if any(c.status == Status.FAIL and rank[c.severity] <= rank[fail_on] for c in result.checks):
        return 1
    return 0
