"""The publish report's renderings (pure functions): text, JSON, JUnit, GitHub, step summary."""

from __future__ import annotations

import json
from xml.etree import ElementTree

import pytest

from mergetools.errors import InvalidInputError
from registry.publish import (
    GateResult,
    PublishReport,
    refused_error,
    render,
    render_summary,
    report_from_dict,
)


def _report(*, passed: bool = False, published: bool = False) -> PublishReport:
    gates = [
        GateResult("ready", "support@3", "always", True, "support@3 is ready", {"status": "ready"}),
        GateResult(
            "require",
            "accuracy>=0.82@squad",
            "policy",
            passed,
            "accuracy = 0.8 does not meet >= 0.82\n100% sure: a|b, c:d",
            {"score": 0.8, "threshold": 0.82},
        ),
    ]
    return PublishReport(
        kind="publish",
        name="support",
        alias="production",
        ref="support@3",
        version=3,
        previous_version=2,
        actor="ci",
        dry_run=False,
        gates=gates,
        published=published,
    )


def test_text_is_a_table_and_a_verdict() -> None:
    lines = render(_report(), "text").splitlines()
    assert lines[0] == "publish support@3 to alias support@production (now @2)"
    assert lines[1].split() == ["GATE", "NAME", "SOURCE", "RESULT", "DETAIL"]
    assert lines[3].split()[:4] == ["require", "accuracy>=0.82@squad", "policy", "FAIL"]
    assert "100% sure: a|b, c:d" in lines[3]  # one line: the line break became a space
    assert lines[-1] == "refused: 1 of 2 gate(s) failed; the alias did not move"


def test_json_round_trips() -> None:
    data = json.loads(render(_report(), "json"))
    assert (data["passed"], data["from_ref"], data["to_ref"], data["counts"]) == (
        False,
        "support@2",
        "support@3",
        {"gates": 2, "failed": 1},
    )
    assert report_from_dict(data).to_dict() == data


def test_junit_has_one_case_per_gate() -> None:
    root = ElementTree.fromstring(render(_report(), "junit"))
    suite = root.find("testsuite")
    assert suite is not None and (suite.get("tests"), suite.get("failures")) == ("2", "1")
    cases = list(suite.iter("testcase"))
    assert [c.get("name") for c in cases] == ["ready: support@3", "require: accuracy>=0.82@squad"]
    failure = cases[1].find("failure")
    assert failure is not None and json.loads(failure.text or "")["score"] == 0.8


def test_github_escapes_commands_and_the_summary_escapes_pipes() -> None:
    lines = render(_report(), "github").splitlines()
    assert lines[0] == (
        "::error title=support@production%3A require accuracy>=0.82@squad::"
        "accuracy = 0.8 does not meet >= 0.82 100%25 sure: a|b, c:d"
    )
    assert lines[-1] == "loradex publish: refused: 1 of 2 gate(s) failed; the alias did not move"
    passed = render(_report(passed=True, published=True), "github").splitlines()
    assert passed[0].startswith("::notice title=support@production%3A gates pass::published:")
    summary = render_summary(_report())
    assert (
        "| require | `accuracy>=0.82@squad` | policy | ❌ fail | accuracy = 0.8 does not meet >= 0.82 100% sure: a\\|b, c:d |"
        in summary
    )


def test_refused_error_names_the_failed_gates_and_unknown_formats_are_refused() -> None:
    error = refused_error(_report())
    assert str(error) == (
        "publish of support@3 to alias support@production refused: 1 of 2 gate(s) failed "
        "(require accuracy>=0.82@squad); the alias did not move"
    )
    assert error.fields["report"]["gates"][1]["passed"] is False
    with pytest.raises(InvalidInputError, match="not one of text, json, junit, github"):
        render(_report(), "yaml")
