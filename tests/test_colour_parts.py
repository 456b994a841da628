"""Issue 13's small parts: the torch thread rule for small models, the reported (not required) unique important
concepts, and the RSVC section's lead data."""

from __future__ import annotations

import pytest
import torch

from auditor import threads
from auditor.methods.rsvc_reported import reported_text
from auditor.report.sections import rsvc as rsvc_section_module
from auditor.results import CheckResult, Status
from auditor.schemas.rsvc import RsvcRequirement


class _M:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.input_shape = shape


def test_thread_rule_only_for_small_models() -> None:
    assert threads.threads_for([_M((3, 64, 64)), _M((3, 64, 64))]) == threads.SMALL_MODEL_THREADS
    assert threads.threads_for([_M((3, 64, 64)), _M((3, 224, 224))]) is None
    assert threads.threads_for([]) is None


def test_thread_count_is_restored_even_when_the_block_raises() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError):
            with threads.torch_threads(1):
                assert torch.get_num_threads() == 1
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 2

        class Ctx:
            models = {"a": _M((3, 32, 32)), "b": _M((3, 32, 32))}

        seen = threads.small_model_threads(lambda check, ctx: torch.get_num_threads())(None, Ctx())
        assert seen == threads.SMALL_MODEL_THREADS and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def _f(model: str, cls: str, j: int, sim: float, imp: float) -> dict:
    return {"model": model, "other": "x", "layer": "l", "other_layer": "l", "class": cls, "concept": j,
            "similarity": sim, "self_similarity": 0.9, "importance": imp, "importance_raw": imp,
            "unique": sim < 0.3, "important": imp > 0.3}


def test_unrequired_unique_important_concepts_are_reported_most_important_first() -> None:
    findings = [_f("candidate", "circle", 1, 0.1, 0.5), _f("candidate", "circle", 2, 0.2, 0.9),
                _f("candidate", "square", 0, 0.6, 0.9), _f("reference", "circle", 0, 0.1, 0.2)]
    text = reported_text(findings, ["candidate", "reference"], [RsvcRequirement(model="reference",
                                                                                max_unique_important=0)])
    assert text == (" | REPORTED candidate: 2 unique important concepts: circle #2 (similarity 0.20, importance "
                    "0.90), circle #1 (similarity 0.10, importance 0.50)")
    assert reported_text(findings, ["candidate", "reference"],
                         [RsvcRequirement(model="all", max_unique_important=5)]) == ""


def test_lead_lists_unique_important_concepts_with_their_labels() -> None:
    findings = [_f("candidate", "circle", 1, 0.1, 0.5), _f("candidate", "circle", 2, 0.2, 0.9),
                _f("reference", "circle", 0, 0.5, 0.9)]
    labelled = {"sources": ["world/field/labels.csv"], "concepts": [
        {"model": "candidate", "class": "circle", "concept": 2, "covered": 9, "top": 9,
         "matches": [{"label": "green", "share": 1.0, "base": 0.8}]}]}
    check = CheckResult(id="c", method="rsvc", status=Status.PASS, severity="major", summary="", requirement="",
                        findings=findings, details={"labelled": labelled})
    out = rsvc_section_module.lead(check, {("candidate", "circle", 2): "FIG"})
    assert [it["concept"] for it in out["concepts"]] == [2, 1]
    assert out["concepts"][0]["figure"] == "FIG" and out["concepts"][1]["figure"] is None
    assert out["concepts"][0]["labels"].startswith("green (100% of the top patches, 80%")
    assert out["concepts"][1]["coverage"] == "no labels cover the images of its top patches"
