"""policies/reference.yaml documents every key a policy can hold: it parses as shipped and with every optional
key uncommented, and the uncommented policy sets every field of every schema model the parser reads (every
method's check, requirement and nested spec), so a key added to a schema without a line here fails."""

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from auditor.methods import METHODS
from auditor.policy import Policy, parse_policy

REFERENCE = Path(__file__).resolve().parents[1] / "policies" / "reference.yaml"

# An optional key shown commented out: `# key: value` at a key's indentation (continuation comments sit further
# right, at the comment column, and are left alone).
KEY_LINE = re.compile(r"^( {0,8})# ([a-z_]+: .*)$", re.M)


def _uncommented(text: str) -> str:
    return KEY_LINE.sub(r"\1\2", text)


def _schema_models(annotation: object, found: dict[str, type[BaseModel]]) -> None:
    """Every pydantic model reachable from a type annotation (through list, dict, Union, Annotated, Optional)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation.__name__ not in found:
            found[annotation.__name__] = annotation
            for info in annotation.model_fields.values():
                _schema_models(info.annotation, found)
        return
    for arg in typing.get_args(annotation):
        _schema_models(arg, found)


def _fields_set(value: object, seen: dict[str, set[str]]) -> None:
    """{model class name: the fields the YAML set} over every model instance inside `value`."""
    if isinstance(value, BaseModel):
        seen.setdefault(type(value).__name__, set()).update(value.model_fields_set)
        for name in type(value).model_fields:
            _fields_set(getattr(value, name), seen)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _fields_set(v, seen)
    elif isinstance(value, dict):
        for v in value.values():
            _fields_set(v, seen)


def test_reference_policy_parses_as_shipped_and_with_every_optional_key():
    text = REFERENCE.read_text(encoding="utf-8")
    shipped = parse_policy(text, "reference.yaml", REFERENCE.parent)
    full = parse_policy(_uncommented(text), "reference.yaml", REFERENCE.parent)
    assert len(KEY_LINE.findall(text)) >= 20  # the optional keys are there to uncomment
    assert [c.id for c in shipped.checks] == [c.id for c in full.checks]
    assert {c.method for c in full.checks} == set(METHODS)


def test_reference_policy_sets_every_key_of_every_schema():
    models: dict[str, type[BaseModel]] = {}
    _schema_models(Policy, models)
    # Check schemas are not in Policy's annotation: the parser builds the union from the method registry.
    for method in METHODS.values():
        _schema_models(method.schema, models)
    # Every method's check schema is reached through `checks`, so a new method's schema is held to this too.
    assert {"TcavCheck", "ArtifactProbeCheck", "SacvCheck", "RsvcCheck", "InvertCheck"} <= set(models)
    seen: dict[str, set[str]] = {}
    _fields_set(parse_policy(_uncommented(REFERENCE.read_text(encoding="utf-8")), "r.yaml", REFERENCE.parent), seen)
    missing = {
        name: sorted(f for f, info in model.model_fields.items() if not info.exclude and f not in seen.get(name, set()))
        for name, model in models.items()
    }
    assert {name: keys for name, keys in missing.items() if keys} == {}
