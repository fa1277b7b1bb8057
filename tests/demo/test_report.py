"""Verdict table and JSON rendering of demo results."""

from __future__ import annotations

import json
from dataclasses import replace

from rpclatch.demo.model import Check, RunResult, ScenarioResult, Verdict
from rpclatch.demo.report import render_json, render_table, render_text


def result(n: int, checks: tuple[Check, ...], error: str | None = None) -> ScenarioResult:
    return ScenarioResult(
        n,
        f"s{n}",
        f"scenario {n}",
        "yes/yes",
        "spki:ab12",
        "bound",
        "channel_prot",
        120,
        0,
        checks,
        error=error,
    )


def test_outcome_is_derived_from_checks() -> None:
    assert result(1, (Check("a", True, ""),)).verdict is Verdict.PASS
    assert result(1, (Check("a", True, ""), Check("b", False, "x"))).verdict is Verdict.FAIL
    assert result(1, ()).verdict is Verdict.FAIL
    assert result(1, (Check("a", True, ""),), error="boom").verdict is Verdict.FAIL


def test_table_has_a_row_per_scenario_with_aligned_columns() -> None:
    rows = [result(1, (Check("a", True, ""),)), result(2, (Check("a", False, "why"),))]
    lines = render_table(rows).splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("#") and "outcome" in lines[0]
    assert lines[2].endswith("PASS") and lines[3].endswith("FAIL")
    assert lines[0].index("peer") == lines[2].index("spki:ab12")


def test_text_and_json_report_failures() -> None:
    run = RunResult(
        "sim",
        "/tmp/x",
        "KRBTEST.COM",
        (result(1, (Check("a", True, ""),)), result(2, (Check("b", False, "why"),))),
        1.5,
    )
    assert not run.passed
    text = render_text(run)
    assert "check 'b' failed: why" in text and "SOME SCENARIOS FAILED" in text
    data = json.loads(render_json(run))
    assert data["passed"] is False
    assert [s["outcome"] for s in data["scenarios"]] == ["PASS", "FAIL"]
    assert data["scenarios"][1]["checks"][0] == {"name": "b", "passed": False, "detail": "why"}


def test_variants_of_one_scenario_get_their_own_rows() -> None:
    rows = [replace(result(6, (Check("a", True, ""),)), variant=v) for v in "ab"]
    lines = render_table(rows).splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["6a", "6b"]
    data = json.loads(render_json(RunResult("sim", "/tmp/x", "R", tuple(rows), 1.0)))
    labels = [(s["number"], s["variant"], s["label"]) for s in data["scenarios"]]
    assert labels == [(6, "a", "6a"), (6, "b", "6b")]
