"""The conformance runner's case model, registry and reports (no network): ids, levels, outcome
adjustment, exit code, table/JSON/JUnit shapes."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpclatch.commands.conformance import hex_arg, parse_host, seconds_arg
from rpclatch.conformance import registry, report, runner
from rpclatch.conformance.model import CaseResult, CaseSpec, Finding, Group, Level, Outcome, Report
from rpclatch.conformance.probe import LocalGssError, NoContext, ProbeConfig, Session, Unsupported, flip_last
from rpclatch.conformance.registry import Case, UnknownCase
from rpclatch.errors import UserError
from rpclatch.gss.provider import GssapiProvider


def _spec(id: str = "GSS-90", level: Level = Level.MUST, group: Group = Group.GSS) -> CaseSpec:
    return CaseSpec(id, group, "§1", level, "a title", "sent", "expected")


def _report(*outcomes: tuple[str, Level, Outcome]) -> Report:
    results = tuple(CaseResult.of(_spec(i, lv), Finding(o, f"why {i}", "got")) for i, lv, o in outcomes)
    return Report("192.0.2.1:2049", 100003, 4, 0, "nfs@h", "krb5i", results)


def test_ids_unique_prefixed_and_complete() -> None:
    cases = registry.all_cases()
    ids = [c.spec.id for c in cases]
    assert len(ids) == len(set(ids))
    for c in cases:
        assert re.fullmatch(rf"{c.spec.group.prefix}-\d\d", c.spec.id)
        assert c.spec.section and c.spec.title and c.spec.sends and c.spec.expects
    # the lists: RFC 2203 cases, RFC 5403 no-channel and channel cases, robustness probes
    assert {f"GSS-{n:02d}" for n in range(1, 20)} <= set(ids)
    assert {f"CB-{n:02d}" for n in range(1, 17)} <= set(ids)
    assert {f"ROB-{n:02d}" for n in range(1, 5)} <= set(ids)
    assert all(c.run is not None for c in cases)  # every case runs (OMIT is decided in the run)


def test_select_by_id_and_group() -> None:
    assert [c.spec.id for c in registry.select(["gss-05"])] == ["GSS-05"]
    rob = registry.select(groups=["rob"])
    assert rob and all(c.spec.group is Group.ROB for c in rob)
    both = registry.select(["CB-01"], ["ROB"])
    assert both[0].spec.id == "CB-01" and len(both) == len(rob) + 1
    assert len(registry.select()) == len(registry.all_cases())
    with pytest.raises(UnknownCase, match="GSS-99"):
        registry.select(["GSS-99"])
    with pytest.raises(UnknownCase, match="XYZ"):
        registry.select(groups=["xyz"])


def test_add_refuses_bad_ids() -> None:
    with pytest.raises(ValueError, match="group"):
        registry.add(Case(_spec("CB-99", group=Group.GSS), None, "x"))
    with pytest.raises(ValueError, match="duplicate"):
        registry.add(Case(_spec("GSS-01"), None, "x"))


def test_should_never_fails_and_exit_code() -> None:
    r = CaseResult.of(_spec(level=Level.SHOULD), Finding(Outcome.FAIL, "no"))
    assert r.outcome is Outcome.WARN
    ok = _report(
        ("GSS-01", Level.MUST, Outcome.PASS),
        ("GSS-02", Level.SHOULD, Outcome.FAIL),
        ("CB-01", Level.MUST, Outcome.NOT_SUPPORTED),
        ("CB-10", Level.MUST, Outcome.OMIT),
    )
    assert not ok.must_failed and ok.exit_code == 0
    assert ok.counts() == {"PASS": 1, "FAIL": 0, "WARN": 1, "NOT-SUPPORTED": 1, "OMIT": 1}
    bad = _report(("GSS-01", Level.MUST, Outcome.PASS), ("GSS-05", Level.MUST, Outcome.FAIL))
    assert bad.must_failed and bad.exit_code == 1


def test_table_json_junit_shapes() -> None:
    rep = _report(
        ("GSS-01", Level.MUST, Outcome.PASS),
        ("GSS-05", Level.MUST, Outcome.FAIL),
        ("GSS-16", Level.SHOULD, Outcome.FAIL),
        ("GSS-17", Level.MUST, Outcome.OMIT),
    )
    text = report.table(rep)
    assert "RFC 2203" in text and "GSS-05  FAIL" in text and "-> why GSS-05" in text
    assert text.splitlines()[-1] == "result: a MUST failed"
    data = json.loads(report.to_json(rep))
    assert data["must_failed"] is True and data["counts"]["FAIL"] == 1
    case = data["cases"][1]
    assert set(case) == {
        "id", "group", "rfc", "section", "level", "title", "sent", "expected", "got", "outcome", "reason"
    }  # fmt: skip
    assert (case["id"], case["outcome"], case["level"]) == ("GSS-05", "FAIL", "MUST")
    root = ET.fromstring(report.junit(rep))
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "4" and suite.get("failures") == "1"
    assert suite.get("skipped") == "1"
    by_name = {tc.get("name", "").split()[0]: tc for tc in suite.iter("testcase")}
    assert by_name["GSS-05"].find("failure") is not None
    assert by_name["GSS-17"].find("skipped") is not None
    assert by_name["GSS-16"].find("failure") is None  # WARN is not a failure


def test_listing_names_every_case() -> None:
    text = report.listing(registry.all_cases())
    assert len(text.splitlines()) == len(registry.all_cases())
    assert "CB-10" in text and "CB-14" in text and "[OMIT" not in text


def test_flip_last() -> None:
    assert flip_last(b"\x00\x01") == b"\x00\xfe"
    assert flip_last(b"") == b"\x01"


@given(st.text(max_size=40))
def test_parse_host_is_total(text: str) -> None:
    """Any HOST string gives (host, port) or a UserError, nothing else."""
    try:
        host, port = parse_host(text)
    except UserError:
        return
    assert host and not any(c.isspace() for c in host)
    assert port is None or 1 <= port <= 65535


@given(st.sampled_from(["192.0.2.1", "nfs.example", "[2001:db8::1]"]), st.integers(1, 65535))
def test_parse_host_with_port(host: str, port: int) -> None:
    assert parse_host(f"{host}:{port}") == (host.strip("[]"), port)
    assert parse_host(host) == (host.strip("[]"), None)


@pytest.mark.parametrize(
    ("raised", "outcome", "reason"),
    [
        (NoContext("no v1 context: x"), Outcome.OMIT, "no v1 context: x"),
        (Unsupported("RPCSEC_GSS version 2 refused"), Outcome.NOT_SUPPORTED, "RPCSEC_GSS version 2 refused"),
        (TimeoutError(), Outcome.FAIL, "connection to the server timed out"),
        (
            ConnectionRefusedError(111, "Connection refused"),
            Outcome.FAIL,
            "connection to the server failed: Connection refused",
        ),
    ],
)
def test_run_case_maps_exceptions(raised: Exception, outcome: Outcome, reason: str) -> None:
    async def fn(session: Session) -> Finding:
        raise raised

    config = ProbeConfig("192.0.2.1", 2049, 100003, 4)
    result = asyncio.run(runner.run_case(Case(_spec(), fn), config, GssapiProvider()))
    assert (result.outcome, result.reason) == (outcome, reason)


def test_run_case_lets_a_local_gss_error_stop_the_run() -> None:
    async def fn(session: Session) -> Finding:
        raise LocalGssError("no ticket")

    config = ProbeConfig("192.0.2.1", 2049, 100003, 4)
    with pytest.raises(LocalGssError):
        asyncio.run(runner.run_case(Case(_spec(), fn), config, GssapiProvider()))


@pytest.mark.parametrize(
    ("client_left", "skew", "budget", "failures"),
    [
        (36000.0, 300.0, 30.0, 11),  # a 10-hour ticket: 36300 / 2**11 + 2 = 19.7 s
        (28800.0, 0.0, 30.0, 11),  # 28800 / 2**10 + 2 = 30.1 s: one more
        (10.0, 1.0, 15.0, 1),  # 5.5 + 2 s; the ticket outlives it by more than the slack
        (3.0, 1.0, 15.0, None),  # too short to tell halving from the ticket's own end
        (1e9, 300.0, 4.0, None),  # more than MAX_BIND_FAILURES halvings
    ],
)
def test_failures_for_picks_the_fewest_halvings(
    client_left: float, skew: float, budget: float, failures: int | None
) -> None:
    from rpclatch.conformance.cases_rfc5403 import _failures_for, _Lifetime

    assert _failures_for(_Lifetime(0.0, client_left, client_left + skew), budget) == failures


def test_args_and_seconds_options() -> None:
    assert hex_arg("0x0000 0004 6563686f") == bytes.fromhex("000000046563686f")
    assert hex_arg("") == b""
    assert seconds_arg("0") == 0.0
    for bad, parse in (("0xzz", hex_arg), ("abc", hex_arg), ("-1", seconds_arg), ("inf", seconds_arg)):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)
