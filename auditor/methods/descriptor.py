"""The frozen descriptor of a concept method: everything the policy, the pipeline and `diff` need to know about
it, in one place (METHODS in auditor/methods/__init__.py is the registry of them).

`run`, `validate` and `correct` are `Lazy` references, resolved at call time: importing the registry must not
import torch or the methods' numerics (`auditor render` and `auditor diff` read it and import no torch; importing
every method module eagerly took 3.5 s against 0.9 s).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Lazy:
    """A function named by module and attribute, imported on its first call."""

    module: str
    name: str

    def resolve(self) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module), self.name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)


@dataclass(frozen=True)
class Reads:
    """The image sets and model parts a method reads (the pipeline loads and checks them before anything runs)."""

    layers: bool = False  # layer activations: the check needs layers per audited model
    classes: bool = False  # the class folders of the check's `classes` (unless the check has its own `images`)
    concepts: bool = False  # the concept folders of the check's `concepts`, and the random pool
    pastes: bool = False  # pastes `artifact` onto clean images (every class folder unless it has its own folder)
    conv_layers: bool = False  # its layers must have C x H x W outputs


# (old finding, new finding) -> (the changes in words, the fields that show them, the score whose move counts)
Compare = Callable[[dict, dict], "tuple[list[str], tuple[str, ...], str | None]"]


@dataclass(frozen=True)
class FindingKind:
    """One kind of finding a method writes: its typed dataclass, the fields that identify it between two audits
    (`auditor diff` matches findings on them) and how two findings of one key compare."""

    type: type
    key: tuple[str, ...]
    compare: Compare


@dataclass(frozen=True)
class Method:
    """A concept method.

    schema: the pydantic model of its check (its `method` field is the policy's discriminator);
    run(check, ctx) -> CheckResult; validate(check, policy, pre, where, problems, models) -> the image sets it read
    (one line appended to `problems` per mistake, during `prepare`, after the models load and before any method
    computes), or None;
    correct(checks, results) -> results: a correction over the whole audit's family (the pipeline calls it once
    with every non-crashed result of this method, in policy order), or None when the family is the check;
    family: the multiple-comparison family, in words ("audit": every cell of every such check; "check");
    findings: its finding kinds, by the findings' `kind` field ("" for a method whose findings have none);
    default_kind: the kind of a finding without a `kind` field.
    """

    schema: type
    run: Lazy
    reads: Reads
    findings: dict[str, FindingKind]
    family: str | None
    validate: Lazy | None = None
    correct: Lazy | None = None
    default_kind: str = ""

    @property
    def finding(self) -> type:
        """The dataclass of its (default kind of) finding."""
        return self.findings[self.default_kind].type

    def kind_of(self, finding: dict) -> FindingKind:
        return self.findings.get(finding.get("kind", self.default_kind), self.findings[self.default_kind])
