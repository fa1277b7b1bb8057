"""``rpclatch demo`` end to end, in process: exit status, table, JSON, and the run directory."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from rpclatch.cli import main
from rpclatch.demo.scenarios import SCENARIOS
from rpclatch.gss.realm import ThrowawayRealm

PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"


def test_demo_runs_every_scenario_and_writes_artefacts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["demo", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["#", "scenario"])
    rows = lines[header + 2 : header + 2 + len(SCENARIOS)]
    assert [r.split()[0] for r in rows] == [s.label for s in SCENARIOS]
    assert [s.label for s in SCENARIOS][-4:] == ["6a", "6b", "6c", "6d"]
    assert all(r.rstrip().endswith("PASS") for r in rows)
    assert "all scenarios behaved as expected" in text
    for spec in SCENARIOS:
        base = out / f"{spec.label}-{spec.name}"
        assert (base.with_suffix(".pcapng")).read_bytes()[:4] == PCAPNG_MAGIC
        assert ET.parse(base.with_suffix(".svg")).getroot().tag.endswith("svg")
        assert "PASS" in base.with_suffix(".html").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] is True and len(summary["scenarios"]) == len(SCENARIOS)


def test_demo_json_single_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path), "--json", "--scenario", "3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["world"] == "sim" and data["passed"] is True
    (s,) = data["scenarios"]
    assert s["number"] == 3 and s["binding"].startswith("FAILED") and s["gss_service"] == "krb5p"
    assert s["attacker_bytes"] > 0 and s["attacker_plaintext_bytes"] == 0
    assert all(c["passed"] for c in s["checks"]) and len(s["checks"]) >= 5
    (record,) = s["security"]  # connection.security of the one connection, as JSON
    assert record["bind_outcome"] == "MISMATCH" and record["warnings"] and record["latched"]
    assert Path(s["files"]["pcapng"]).exists()


def test_demo_verdict_fails_when_reality_differs(
    tmp_path: Path, realm: ThrowawayRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verdicts come from observations: break the testbed (the server's IKE daemon is gone in
    scenario 1) and scenario 1 must fail, with the failed checks named."""
    from rpclatch.demo import scenarios
    from rpclatch.demo.runner import run_demo
    from rpclatch.netsim.ike import IkeMode

    real_build = scenarios.build_testbed

    def no_ike(realm_: ThrowawayRealm, **kw: object) -> object:
        return real_build(realm_, server_ike=IkeMode.ABSENT, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(scenarios, "build_testbed", no_ike)
    result = run_demo(tmp_path, [1], realm=realm)
    assert not result.passed
    failed = {c.name for c in result.results[0].checks if not c.passed}
    assert {"client latch ESTABLISHED", "DATA calls are channel_prot on the wire"} <= failed


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["demo", "--world", "uml", "--scenario", "6"], "the uml world runs scenarios"),
        (["demo", "--world", "uml", "--approach", "1"], "keeps latches in the key manager"),
        (["demo", "--scenario", "9"], "there is no scenario 9"),
        (["demo", "--scenario", "x"], "is not a number"),
    ],
)
def test_demo_user_errors_are_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_demo_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--list"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(SCENARIOS)


def test_demo_without_a_kdc_says_how_to_fix_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rpclatch.gss.realm import RealmError

    def no_kdc(self: ThrowawayRealm) -> ThrowawayRealm:
        raise RealmError("could not start a KDC: krb5kdc not found")

    monkeypatch.setattr(ThrowawayRealm, "start", no_kdc)
    assert main(["demo", "--out", str(tmp_path)]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("rpclatch: error:") and "scripts/setup.sh" in errors[0]


def test_demo_approach_1_runs_every_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path), "--json", "--approach", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["approach"] == 1 and data["passed"] is True
    assert [s["outcome"] for s in data["scenarios"]] == ["PASS"] * len(SCENARIOS)
    checks = {c["name"] for s in data["scenarios"] for c in s["checks"]}
    assert "latch held in the TCB (approach 1)" in checks
    assert "latch held in the latch database (approach 2)" not in checks
    assert "approach 1" in (tmp_path / "summary.txt").read_text()


@pytest.mark.parametrize("approach", ["1", "2"])
def test_rogue_and_policy_change_scenarios_under_both_approaches(
    tmp_path: Path, realm: ThrowawayRealm, approach: str
) -> None:
    """Scenarios 4 and 5 need the latch to break on a conflicting SA and on an SPD change (RFC 5660
    §2): in approach 1 the engine tells the TCB latch, in approach 2 the latch database breaks its
    latch. Both must pass, with the latch held where the approach says."""
    from rpclatch.demo.runner import run_demo
    from rpclatch.ipsec.engine import Approach

    result = run_demo(tmp_path, [4, 5], realm=realm, approach=Approach(int(approach)))
    assert result.approach == int(approach)
    by_number = {r.number: r for r in result.results}
    for r in by_number.values():
        assert r.verdict.value == "PASS", [c for c in r.checks if not c.passed] or r.error
        assert r.attacker_plaintext == 0
    names4 = {c.name for c in by_number[4].checks}
    assert {"client latch went BROKEN", "the rogue could read no frame of the flow"} <= names4
    names5 = {c.name for c in by_number[5].checks}
    assert {"server latch pinned, still ESTABLISHED", "client latch BROKEN by its policy change"} <= names5
    home = (
        "latch held in the TCB (approach 1)"
        if approach == "1"
        else "latch held in the latch database (approach 2)"
    )
    assert home in names4 and home in names5
    # the diagram shows the admin's action before the break it caused (same virtual instant)
    labels = [e.label for e in by_number[5].events]
    admin = next(i for i, label in enumerate(labels) if label.startswith("admin: client SPD"))
    broken = [
        i
        for i, e in enumerate(by_number[5].events)
        if e.src == "client" and "BROKEN" in e.label and e.t >= by_number[5].events[admin].t
    ]
    assert broken and admin < broken[0]


def test_demo_rejects_an_unknown_approach(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--approach", "3"])
    assert exc.value.code == 2 and "--approach" in capsys.readouterr().err
