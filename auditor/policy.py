"""The policy: a validated, declarative description of an audit.

Paths are relative to the policy file. Every error names its YAML key path (`checks[2].layers.candidate[0]`)
and what to do about it; `load_policy` raises `PolicyError` holding one line per problem.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from functools import lru_cache
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError, create_model, field_validator,
    model_validator,
)

from auditor.errors import UserError
from auditor.schemas.common import (  # noqa: F401  (ArtifactSpec, ConceptRequirement, Severity: re-exported)
    DEFAULT_STATISTIC, ArtifactSpec, ConceptRequirement, FolderSpec, Severity,
)
from auditor.schemas.common import Strict as _Strict
from auditor.schemas.artifact_probe import ArtifactProbeCheck, ProbeRequirement  # noqa: F401  (re-exported)
from auditor.schemas.invert import InvertCheck  # noqa: F401
from auditor.schemas.rsvc import RsvcCheck  # noqa: F401
from auditor.schemas.sacv import SacvCheck  # noqa: F401
from auditor.schemas.tcav import TcavCheck, TcavRequirement  # noqa: F401

# Schemas other modules import from here (they live in auditor/schemas/).
__all__ = [
    "ArtifactProbeCheck", "ArtifactSpec", "ConceptRequirement", "DEFAULT_STATISTIC", "InvertCheck", "Policy",
    "PolicyError", "ProbeRequirement", "RsvcCheck", "SacvCheck", "Severity", "TcavCheck", "TcavRequirement",
    "check_layers", "layer_overrides", "load_policy", "parse_policy", "relative_name",
]


class PolicyError(UserError):
    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class ModelSpec(_Strict):
    path: str | None = None  # .onnx, TorchScript .pt, .pt2, or weights (.pt / .safetensors) with `factory`
    framework: Literal["auto", "onnx", "torchscript", "torch"] = "auto"
    factory: str | None = None  # "module:function" building an nn.Module
    trust_pickle: bool = False  # a whole pickled nn.Module executes code from the file
    name: str | None = None

    @model_validator(mode="after")
    def _needs_source(self) -> "ModelSpec":
        if self.path is None and self.factory is None:
            raise ValueError("a model needs `path` (a model file) or `factory` (module:function)")
        return self


def _size(value: Any) -> int | tuple[int, int]:
    """One side or (H, W), each a whole number of pixels in 1..8192 (checked here, not by a pydantic union, so
    that a mistake gives one message, not one per union member)."""
    sides = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(sides) not in (1, 2) or isinstance(value, (list, tuple)) and len(sides) != 2:
        raise ValueError(f"must be one side or [height, width], not {value!r}")
    for side in sides:
        if isinstance(side, bool) or not isinstance(side, int) or not 1 <= side <= 8192:
            raise ValueError(f"image sides are whole numbers of pixels from 1 to 8192, not {side!r}")
    return sides[0] if not isinstance(value, (list, tuple)) else (sides[0], sides[1])


class PreprocessingSpec(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # `mean: [.nan, ...]` is a mistake

    size: Annotated[int | tuple[int, int], BeforeValidator(_size)] = 224  # (H, W) or one side for a square
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: Literal["RGB", "BGR"] = "RGB"

    @field_validator("std")
    @classmethod
    def _positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in v):
            raise ValueError("every std must be > 0")
        return v


class ClassNames(tuple):
    """The audited classes, in logit order, each with its logit index.

    A tuple of names (iteration, `in`, `len` and `join` see the named classes only), whose `index(name)` is the
    model's logit for that class, not its place in the tuple: with `names: {285: egyptian_cat}` a 1000-class
    model is audited on one class, and `names.index("egyptian_cat") == 285`. `complete` says the names cover
    every logit (a list in the policy), so their count must equal the model's."""

    logits: tuple[int, ...]
    complete: bool

    def __new__(cls, by_logit: dict[int, str], complete: bool) -> "ClassNames":
        order = sorted(by_logit)
        self = super().__new__(cls, [by_logit[i] for i in order])
        self.logits = tuple(order)
        self.complete = complete
        return self

    def index(self, name: str, *_args: int) -> int:  # type: ignore[override]
        return self.logits[tuple.index(self, name)]

    def __reduce__(self) -> tuple:  # copies and pickles keep the logit indices
        return (ClassNames, (dict(zip(self.logits, self)), self.complete))

    def __deepcopy__(self, _memo: dict) -> "ClassNames":
        return self


def _class_names(value: Any) -> ClassNames:
    """`names:` as a list (names[i] is logit i, one per logit) or a mapping {logit: name} (the classes audited)."""
    if isinstance(value, ClassNames):
        return value
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("needs at least one class name")
        by_logit, complete = dict(enumerate(value)), True
    elif isinstance(value, dict):
        if not value:
            raise ValueError("needs at least one class")
        by_logit, complete = {}, False
        for k, v in value.items():
            if isinstance(k, bool) or not isinstance(k, int) and not (isinstance(k, str) and k.isdigit()):
                raise ValueError(f"key {k!r} is not a logit index (a whole number >= 0)")
            if int(k) < 0:
                raise ValueError(f"logit {int(k)} is negative; logits are numbered from 0")
            if int(k) in by_logit:
                raise ValueError(f"logit {int(k)} is named twice")
            by_logit[int(k)] = v
    else:
        raise ValueError(
            "must be a list (names[i] is logit i) or a mapping {logit index: name}, e.g. {285: egyptian_cat}"
        )
    for i, v in by_logit.items():
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"the name of logit {i} must be a non-empty string, not {v!r}")
        if v != v.strip() or "/" in v or "\\" in v or v in (".", ".."):
            raise ValueError(f"{v!r} cannot name a class folder (no slashes, no surrounding spaces)")
    seen: dict[str, int] = {}
    for i, v in sorted(by_logit.items()):
        if v in seen:
            raise ValueError(f"{v!r} names logits {seen[v]} and {i}; class names must be unique")
        seen[v] = i
    return ClassNames(by_logit, complete)


class ClassesSpec(_Strict):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    folder: str  # one subfolder per class, named as in `names`
    # A list: names[i] is the model's logit i, one name per logit (validate checks the count against the model).
    # A mapping {logit: name}: only those classes are audited (one class of a 1000-class model needs one name).
    # A string: a text file (relative to the policy) with one name per line, line i naming logit i.
    names: Annotated[ClassNames, BeforeValidator(_class_names), PlainSerializer(list)]


class DataSpec(_Strict):
    classes: ClassesSpec
    concepts: FolderSpec | None = None  # one subfolder per concept
    random: FolderSpec | None = None  # a pool of random images (TCAV draws its random sets from it)
    masks: FolderSpec | None = None  # optional object masks: masks/<class>/<same file name as the image>


class Policy(_Strict):
    title: str = "Concept audit"
    seed: int = 0
    models: dict[str, ModelSpec]
    preprocessing: PreprocessingSpec = PreprocessingSpec()
    data: DataSpec
    layers: dict[str, list[str]] = {}  # per model; methods that read layers (tcav) need one per audited model
    # Any check schema of auditor.methods.METHODS: `policy_model()` narrows this to their union at parse time.
    checks: list[Any] = Field(min_length=1)

    # Filled by load_policy, not by the YAML.
    root: Path = Field(default=Path("."), exclude=True)
    source: str = Field(default="", exclude=True)
    sha256: str = Field(default="", exclude=True)
    text: str = Field(default="", exclude=True)

    def resolve(self, relative: str) -> Path:
        p = Path(relative).expanduser()
        return p if p.is_absolute() else (self.root / p)

    @property
    def image_size(self) -> tuple[int, int]:
        s = self.preprocessing.size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))


def method_tags() -> tuple[str, ...]:
    """The methods a policy may name: the keys of auditor.methods.METHODS, read when a policy is parsed (so a
    method added to the registry, e.g. by a test, is accepted without editing this module)."""
    from auditor.methods import METHODS

    return tuple(METHODS)


def reads_concepts(method: str) -> bool:
    from auditor.methods import METHODS

    return method in METHODS and METHODS[method].reads.concepts


def reads_layers(method: str) -> bool:
    from auditor.methods import METHODS

    return method in METHODS and METHODS[method].reads.layers


@lru_cache(maxsize=8)
def _policy_model(schemas: tuple[type, ...]) -> type[Policy]:
    checks = Annotated[Union[schemas], Field(discriminator="method")] if len(schemas) > 1 else schemas[0]
    return create_model("Policy", __base__=Policy, checks=(list[checks], Field(min_length=1)))


def policy_model() -> type[Policy]:
    """Policy with `checks` the discriminated union (on `method`) of every registered method's check schema."""
    from auditor.methods import METHODS

    return _policy_model(tuple(m.schema for m in METHODS.values()))


def _loc(loc: tuple[Any, ...]) -> str:
    """pydantic's ('checks', 2, 'tcav', 'layers', 'candidate', 0) -> 'checks[2].layers.candidate[0]'."""
    out = ""
    prev_int = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            prev_int = True
            continue
        if prev_int and part in method_tags():  # the discriminator tag pydantic inserts after a list index
            prev_int = False
            continue
        prev_int = False
        out += f".{part}" if out else str(part)
    return out or "(top level)"


def _message(err: dict[str, Any]) -> str:
    where = _loc(tuple(err["loc"]))
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown key (check the spelling; allowed keys are in policies/reference.yaml)"
    if kind == "missing":
        return f"{where}: required key is missing"
    if kind == "union_tag_invalid":
        return f"{where}: unknown method {err.get('input', {}).get('method')!r} (supported: {', '.join(method_tags())})" if isinstance(
            err.get("input"), dict
        ) else f"{where}: {err['msg']}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}"


# Fields load_policy fills in; a policy file may not set them.
_INTERNAL = ("root", "source", "sha256", "text")


def _scalar_key(node: yaml.Node) -> str | None:
    return str(node.value) if isinstance(node, yaml.ScalarNode) else None


def duplicate_keys(root: yaml.Node | None) -> list[str]:
    """One line per mapping key written twice, at any depth: PyYAML keeps the last value silently, which would
    drop, e.g., a whole first `checks:` list from the audit."""
    problems: list[tuple[int, int, str]] = []  # (line, column, message): reported in document order
    stack: list[tuple[yaml.Node, str]] = [(root, "")] if root is not None else []
    seen: set[int] = set()  # an alias makes the node graph a DAG, a recursive one a cycle: visit each node once
    while stack:
        node, where = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key, value in node.value:
                name = _scalar_key(key)
                if name is None or name == "<<":  # complex keys and merge keys are not plain duplicates
                    continue
                path = f"{where}.{name}" if where else name
                line = key.start_mark.line + 1
                if name in first_line:
                    lines = f"line {line}" if first_line[name] == line else f"lines {first_line[name]} and {line}"
                    problems.append((line, key.start_mark.column, f"{path}: duplicate key ({lines}); keep one"))
                else:
                    first_line[name] = line
                stack.append((value, path))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{where}[{i}]") for i, item in enumerate(node.value))
    return [message for _line, _col, message in sorted(problems)]


def _yaml(text: str, source: str) -> Any:
    try:
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
        duplicates = duplicate_keys(tree)
        if duplicates:
            raise PolicyError(source, duplicates)
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        if mark is None and isinstance(e, yaml.reader.ReaderError):  # e.g. a NUL or control character
            where = f"character {e.position + 1}"
        problem = str(getattr(e, "problem", None) or getattr(e, "reason", None) or e).strip().splitlines()
        raise PolicyError(source, [f"not valid YAML at {where}: {problem[0] if problem else type(e).__name__}"]) from None
    except RecursionError:  # YAML nested thousands deep
        raise PolicyError(source, ["not valid YAML: nested too deeply"]) from None


def _names_file(raw: dict, source: str, root: Path) -> None:
    """`data.classes.names: classes.txt` -> the list of its lines (line i names logit i), in place."""
    classes = raw.get("data", {}).get("classes") if isinstance(raw.get("data"), dict) else None
    if not isinstance(classes, dict) or not isinstance(classes.get("names"), str):
        return
    path = Path(classes["names"]).expanduser()
    path = path if path.is_absolute() else root / path
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise PolicyError(source, [f"data.classes.names: cannot read the names file {path}: {e.strerror or e}"]) from None
    except UnicodeDecodeError as e:
        raise PolicyError(source, [f"data.classes.names: {path} is not UTF-8 text (byte offset {e.start})"]) from None
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names or any(not n for n in names):
        raise PolicyError(source, [f"data.classes.names: {path} needs one class name per line, no blank lines"])
    raw["data"] = {**raw["data"], "classes": {**classes, "names": names}}


def parse_policy(text: str, source: str, root: Path) -> Policy:
    raw = _yaml(text, source)
    if not isinstance(raw, dict):
        raise PolicyError(source, ["the policy must be a YAML mapping (keys: models, data, layers, checks, ...)"])
    internal = [k for k in _INTERNAL if k in raw]
    if internal:
        raise PolicyError(source, [f"{k}: unknown key (check the spelling; allowed keys are in policies/reference.yaml)" for k in internal])
    _names_file(raw, source, root)
    try:
        policy = policy_model().model_validate(raw)
    except ValidationError as e:
        raise PolicyError(source, [_message(err) for err in e.errors()]) from None
    policy = policy.model_copy(
        update={"root": root, "source": source, "sha256": hashlib.sha256(text.encode()).hexdigest(), "text": text}
    )
    problems = _cross_check(policy)
    if problems:
        raise PolicyError(source, problems)
    return policy


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file (a BOM is allowed); anything else is one line naming the file and the first bad byte."""
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a {what}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the {what}: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: the {what} is not UTF-8 text (byte offset {e.start}: 0x{raw[e.start]:02x}); save it as UTF-8"
        ) from None


def load_policy(path: Path) -> Policy:
    path = Path(path)
    if not path.exists():
        raise UserError(f"policy file not found: {path}")
    text = read_text(path, "policy file")
    return parse_policy(text, str(path), path.resolve().parent)


def _cross_check(policy: Policy) -> list[str]:
    """Consistency the schema alone cannot see: roles, class and concept names (files come later)."""
    problems = []
    roles = list(policy.models)
    for role in policy.layers:
        if role not in policy.models:
            problems.append(f"layers.{role}: no model called {role!r} in `models` ({', '.join(roles)})")
    names = policy.data.classes.names
    for i, check in enumerate(policy.checks):
        here = f"checks[{i}]"
        for j, role in enumerate(getattr(check, "models", None) or []):
            if role not in policy.models:
                problems.append(f"{here}.models[{j}]: no model called {role!r} ({', '.join(roles)})")
        for role in layer_overrides(check):
            if role not in policy.models:
                problems.append(f"{here}.layers.{role}: no model called {role!r} ({', '.join(roles)})")
        for j, c in enumerate(getattr(check, "classes", [])):
            if c not in names:
                problems.append(f"{here}.classes[{j}]: {c!r} is not in data.classes.names ({_few(names)})")
        if reads_layers(check.method):
            for role in getattr(check, "models", None) or roles:
                if role in policy.models and role not in policy.layers and role not in (check.layers or {}):
                    problems.append(
                        f"{here}: {check.method} needs layers for model {role!r} (in `layers` or the check's own)"
                    )
        if reads_concepts(check.method):
            if policy.data.concepts is None:
                problems.append(f"{here}: {check.method} needs data.concepts (a folder of concept subfolders)")
            if policy.data.random is None:
                problems.append(f"{here}: {check.method} needs data.random (a pool of random images)")
        for j, r in enumerate(getattr(check, "require", [])):
            if getattr(r, "model", "all") != "all" and r.model not in policy.models:
                problems.append(f"{here}.require[{j}].model: no model called {r.model!r} ({', '.join(roles)})")
        for j, (a, b) in enumerate(getattr(check, "relative", [])):  # relative TCAV: pairs of its concepts
            for name in (a, b):
                if name not in check.concepts:
                    problems.append(f"{here}.relative[{j}]: {name!r} is not in the check's concepts")
            if a == b:
                problems.append(f"{here}.relative[{j}]: a concept cannot be compared with itself")
        if reads_concepts(check.method):
            named = list(check.concepts) + [relative_name(a, b) for a, b in getattr(check, "relative", [])]
            for j, r in enumerate(check.require):
                if r.concept not in named:
                    problems.append(f"{here}.require[{j}].concept: {r.concept!r} is not in the check's concepts")
                if r.class_ is not None and r.class_ not in check.classes:
                    problems.append(f"{here}.require[{j}].class: {r.class_!r} is not in the check's classes")
    ids = [c.id for c in policy.checks]
    for i, cid in enumerate(ids):
        if ids.index(cid) != i:
            problems.append(f"checks[{i}].id: {cid!r} is used twice; check ids must be unique")
    return problems


def _few(names: tuple[str, ...] | list[str], limit: int = 10) -> str:
    """A list of names short enough for one line of an error message."""
    shown = ", ".join(str(n)[:40] for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def relative_name(a: str, b: str) -> str:
    """The name of a relative TCAV cell (concept A against concept B)."""
    return f"{a} vs {b}"


def layer_overrides(check: Any) -> dict[str, list[str]]:
    """A check's own `layers:` (methods that read no layer, like the artifact probe, have none)."""
    return (check.layers or {}) if reads_layers(check.method) else {}


def check_layers(policy: Policy, check: Any) -> dict[str, list[str]]:
    """The layers a check audits per model: its own `layers:` where given, else the policy's."""
    if not reads_layers(check.method):
        return {}
    roles = getattr(check, "models", None) or list(policy.models)
    layers = layer_overrides(check)
    return {role: list(layers.get(role, policy.layers[role])) for role in roles}
