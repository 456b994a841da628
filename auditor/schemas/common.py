"""Building blocks every check schema uses: strict frozen models, folders, severities, pasted artifacts."""

from __future__ import annotations

from dataclasses import fields
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The deciding statistic of TCAV's and SACV's exchangeability test ("score": s1, "cosine": s2), chosen by
# METHODS.md's rule on the demo (benchmarks/stability.py; docs/significance.md).
DEFAULT_STATISTIC = "score"

Severity = Literal["critical", "major", "minor"]


class Strict(BaseModel):
    """Unknown keys are errors (a misspelt key must never be silently ignored); values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FolderSpec(Strict):
    folder: str


class ArtifactSpec(Strict):
    image: str  # the artifact (PNG with alpha where it has a shape), pasted by auditor itself
    position: Literal["random", "top-left", "top-right", "bottom-left", "bottom-right"] = "bottom-right"
    scale: float | None = Field(default=None, gt=0, le=1)  # artifact width / image width; None: native pixels
    margin: float = Field(default=0.05, ge=0, lt=0.5)  # gap to the edges for corner positions, / image side
    opacity: float = Field(default=1.0, gt=0, le=1)


class ConceptRequirement(Strict):
    """A per-model requirement on a concept score (TCAV, SACV): forbidden, required, bounded."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    model: str = "candidate"  # a role from `models:`, or "all"
    concept: str
    class_: str | None = Field(default=None, alias="class")  # None: every class of the check
    significant: bool | None = None  # false: a forbidden concept (no layer may be significant)
    min_score: float | None = Field(default=None, ge=0, le=1)  # with significant: true
    max_score: float | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _says_something(self) -> "ConceptRequirement":
        if self.significant is None and self.min_score is None and self.max_score is None:
            raise ValueError("a requirement needs `significant`, `min_score` or `max_score`")
        return self


class _Absent:
    """A finding key results.json has only under some settings (e.g. the exchangeability test's p-values)."""

    _one: "_Absent | None" = None

    def __new__(cls) -> "_Absent":
        if cls._one is None:
            cls._one = super().__new__(cls)
        return cls._one

    def __repr__(self) -> str:
        return "ABSENT"

    def __reduce__(self) -> str:
        return "ABSENT"


ABSENT = _Absent()

# Finding fields whose JSON key is a Python keyword.
_JSON_NAMES = {"cls": "class"}
_FIELD_NAMES = {v: k for k, v in _JSON_NAMES.items()}


def finding_to_json(finding: object) -> dict:
    """A typed finding as results.json writes it: today's keys, ABSENT fields left out (not recursive: a
    finding's values are JSON values already)."""
    return {_JSON_NAMES.get(f.name, f.name): getattr(finding, f.name) for f in fields(finding)
            if getattr(finding, f.name) is not ABSENT}


def finding_from_json(kind: type, row: dict) -> object:
    """The typed finding of `kind` from a results.json row (keys it lacks stay ABSENT or their default); a key
    the dataclass does not know is a TypeError (the results file is not this version's)."""
    return kind(**{_FIELD_NAMES.get(k, k): v for k, v in row.items()})


def compare_flags(old: dict, new: dict, key: str, yes: str, no: str) -> list[str]:
    """The change of a boolean finding field as words ([] when it did not change)."""
    if bool(old.get(key)) == bool(new.get(key)):
        return []
    return [yes if new.get(key) else no]


def checked_rows(kind: type, rows: list[dict]) -> list[dict]:
    """Rows a method writes, each built through its typed finding and back: a key the dataclass does not know, or a
    field the row lacks, fails here, in the method, not in a reader of results.json."""
    return [finding_to_json(finding_from_json(kind, row)) for row in rows]
