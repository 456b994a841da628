from pathlib import Path

import pytest

from auditor.policy import PolicyError, parse_policy

REPO = Path(__file__).resolve().parents[1]


def test_reference_policy_is_valid_against_the_schema():
    text = (REPO / "policies" / "reference.yaml").read_text()
    p = parse_policy(text, "reference.yaml", REPO / "policies")
    assert p.checks[0].require[1].min_score == 0.7
    assert p.resolve("models/x.onnx") == REPO / "policies" / "models" / "x.onnx"


def test_every_problem_is_reported_with_its_path():
    text = (REPO / "policies" / "reference.yaml").read_text()
    text = text.replace("cav: logistic", "cav: logistik").replace("classes: [dog]", "classes: [wolf]")
    with pytest.raises(PolicyError) as e:
        parse_policy(text, "p.yaml", REPO)
    assert any("checks[0].cav" in p for p in e.value.problems)
    text2 = (REPO / "policies" / "reference.yaml").read_text().replace("classes: [dog]", "classes: [wolf]")
    with pytest.raises(PolicyError) as e2:
        parse_policy(text2, "p.yaml", REPO)
    assert any(p.startswith("checks[0].classes[0]") and "wolf" in p for p in e2.value.problems)
    assert any("require[0].class" in p for p in e2.value.problems)


def test_unknown_method_and_duplicate_ids():
    text = (REPO / "policies" / "reference.yaml").read_text()
    with pytest.raises(PolicyError, match="unknown method"):
        parse_policy(text.replace("method: tcav", "method: tcavv"), "p.yaml", REPO)
