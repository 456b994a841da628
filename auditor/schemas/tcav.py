"""The `tcav` check: concept sensitivity of class logits (METHODS.md, TCAV), and its typed finding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from auditor.schemas.common import ABSENT, DEFAULT_STATISTIC, ConceptRequirement, Strict as _Strict, compare_flags

TcavRequirement = ConceptRequirement  # the name older code uses


class TcavCheck(_Strict):
    id: str
    method: Literal["tcav"]
    severity: Literal["critical", "major", "minor"] = "major"
    description: str = ""
    classes: list[str] = Field(min_length=1)
    concepts: list[str] = Field(min_length=1)
    models: list[str] | None = None  # default: every model of the policy
    layers: dict[str, list[str]] | None = None  # default: the policy's `layers`
    cav: Literal["logistic", "sgd", "mean"] = "logistic"
    space: Literal["pooled", "flatten"] = "pooled"
    random_sets: int = Field(default=10, ge=2, le=100)
    set_size: int = Field(default=50, ge=10)
    class_images: int | None = Field(default=None, ge=1)  # cap on class images per class (seeded subsample)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    # Relative TCAV: pairs [A, B] of the check's concepts; the CAV separates A from B (not from random), and its
    # cells are named "A vs B" (requirements may name them so).
    relative: list[tuple[str, str]] = []
    # Significance (METHODS.md, TCAV item 4): `exchangeable` tests the concept against pseudo-concepts (random-pool
    # sets scored alike); `welch` is the paper's test against random-vs-random runs, for published comparisons.
    test: Literal["exchangeable", "welch"] = "exchangeable"
    # Which statistic decides under `exchangeable` (both are computed and reported): the TCAV score (s1) or the
    # cosine sensitivity (s2). The default is the one METHODS.md's rule picked on the demo (README).
    statistic: Literal["score", "cosine"] = DEFAULT_STATISTIC
    max_pseudo: int = Field(default=2000, ge=19)  # cap on the pseudo-concepts (a WARN names it when it binds)
    require: list[ConceptRequirement] = []


@dataclass(frozen=True)
class ConceptFinding:
    """One (model, layer, class, concept) cell of a TCAV check (SACV's finding adds its own fields). Fields whose
    default is ABSENT are keys results.json has only under some settings (the exchangeability test's p-values,
    an untested cell's reason); they are left out of the JSON when absent."""

    model: str
    layer: str
    cls: str  # "class" in results.json
    concept: str
    cav_accuracy: float | None
    learned: bool
    tested: bool
    random_score_mean: float
    random_score_std: float
    score: float | None
    score_std: float | None
    p_value: float | None
    p_adjusted: float | None
    significant: bool
    verdict: str  # "sensitive" | "significant-low" | "not significant" | "not learned" | "not tested"
    cosine: float | None
    test: str  # "exchangeable" | "welch"
    statistic: object = ABSENT  # under `exchangeable`: "score" | "cosine"
    score_p_value: object = ABSENT
    cosine_p_value: object = ABSENT
    reason: object = ABSENT  # why a cell was not tested


@dataclass(frozen=True)
class TcavFinding(ConceptFinding):
    magnitude: float | None = None
    p_one_sample: float | None = None


def compare(old: dict, new: dict) -> tuple[list[str], tuple[str, ...], str | None]:
    """(changes, the fields that show them, the score field whose move is reported) of two TCAV/SACV findings."""
    changes = compare_flags(old, new, "significant", "became significant", "no longer significant")
    if old.get("learned") != new.get("learned"):
        changes.append("concept now learned" if new.get("learned") else "concept no longer learned")
    return changes, ("score", "p_adjusted", "significant"), "score"
