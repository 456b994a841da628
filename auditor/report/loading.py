"""Reading results.json: load_results, and the key checks the sections read details through (findings are read as
their typed dataclasses, results.typed_findings)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from auditor import results
from auditor.errors import UserError
from auditor.results import AuditResult


class ResultsError(UserError):
    """results.json is missing, not JSON, or lacks what the report needs (exit code 2)."""



def load_results(path: Path) -> tuple[bytes, AuditResult]:
    """Read and validate results.json; returns its bytes (embedded in the PDF) and the parsed result.

    Raises
    ------
    ResultsError : the file is missing, not JSON, of another schema major version, or lacks a required key
        (the message names the key path, e.g. ``checks[1].status``).
    """
    path = Path(path)
    try:
        raw_bytes = path.read_bytes()
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read results file ({exc.strerror or exc})") from None
    try:
        raw = json.loads(raw_bytes.decode("utf-8"))
    except UnicodeDecodeError:
        raise ResultsError(f"{path}: not a UTF-8 text file") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(raw, dict):
        raise ResultsError(f"{path}: expected a JSON object at the top level")
    version = raw.get("schema_version")
    if isinstance(version, str) and version.split(".")[0] != results.SCHEMA_VERSION.split(".")[0]:
        raise ResultsError(
            f"{path}: schema_version {version} is not supported by this renderer "
            f"(it reads {results.SCHEMA_VERSION.split('.')[0]}.x); re-run the audit with this tool version"
        )
    try:
        result = results.from_dict(raw)
    except KeyError as exc:
        where = _locate_missing(raw, str(exc.args[0]))
        raise ResultsError(f"{path}: missing required key {where}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise ResultsError(f"{path}: malformed results ({exc})") from None
    return raw_bytes, result


def _locate_missing(raw: Mapping[str, Any], key: str) -> str:
    """The key path of the first object that should hold ``key`` but does not (by the dataclass fields)."""
    places: list[tuple[str, Any, type]] = [("", raw, results.AuditResult)]
    prov = raw.get("provenance")
    if isinstance(prov, dict):
        places.append(("provenance.", prov, results.Provenance))
        for name, cls in (("models", results.ModelInfo), ("image_sets", results.ImageSetInfo)):
            for i, item in enumerate(prov.get(name) or []):
                places.append((f"provenance.{name}[{i}].", item, cls))
    for i, check in enumerate(raw.get("checks") or []):
        label = f"checks[{i}]" + (f" (id {check['id']!r})" if isinstance(check, dict) and "id" in check else "")
        places.append((label + ".", check, results.CheckResult))
    for prefix, obj, cls in places:
        if isinstance(obj, dict) and key not in obj and key in {f.name for f in fields(cls)}:
            return f"'{prefix}{key}'"
    return f"'{key}'"


def need(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, Mapping):
        raise ResultsError(f"{where} is not an object")
    if key not in mapping:
        raise ResultsError(f"{where} is missing the key {key!r}")
    return mapping[key]


# ---------------------------------------------------------------------------------------------------------------
# Check sections


def requirements(details: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """details.requirements as the template's requirements table wants them (``why`` may be empty)."""
    return [
        {
            "text": str(need(req, "text", f"{where}: details.requirements[{i}]")),
            "model": str(req.get("model", "")),
            "met": bool(need(req, "met", f"{where}: details.requirements[{i}]")),
            "why": str(req.get("why") or ""),
        }
        for i, req in enumerate(details.get("requirements") or [])
    ]
