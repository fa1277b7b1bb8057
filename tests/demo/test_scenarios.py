"""The table cells of the demo scenarios are computed from what happened (latch states, pins,
security records), never literals: a different reality must show a different cell."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpclatch.demo import scenarios
from rpclatch.demo.scenarios import (
    client_change_word,
    end_word,
    latch_cell,
    policy_reason,
    rogue_cell,
    rogue_reason,
    server_change_word,
)
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.ipsec.latch import LatchState as S
from rpclatch.ipsec.spd import EntryOrigin


def mk(path: Path) -> Path:
    path.mkdir()
    return path


def test_latch_cell_follows_both_states() -> None:
    assert latch_cell(None, None) == "no"
    assert latch_cell(S.ESTABLISHED, S.ESTABLISHED) == "yes/yes"
    assert latch_cell(S.CLOSED, None) == "closed/none"
    assert latch_cell(S.ESTABLISHED, S.BROKEN) == "yes/broken"
    assert latch_cell(None, S.LARVAL) == "none/larval"


def test_end_word_names_the_state_as_the_json_does() -> None:
    assert end_word(S.ESTABLISHED) == "yes"
    assert end_word(None) == "none"
    assert end_word(S.BROKEN) == "BROKEN"


def test_rogue_cell_and_reason_follow_observations() -> None:
    assert rogue_cell(["BROKEN"], True) == "broken->yes"
    assert rogue_cell([], False) == "kept->no"
    assert rogue_reason(["BROKEN"], True, True, True, True) == (
        "latch BROKEN on conflicting SA, reset; reconnected, re-latched, re-bound"
    )
    r = rogue_reason([], False, False, True, False)
    assert "not broken" in r and "no reset" in r and "same connection" in r and "not re-bound" in r


def test_policy_change_words_and_reason() -> None:
    assert server_change_word(S.ESTABLISHED, EntryOrigin.PINNED_LATCH) == "pinned"
    assert server_change_word(S.ESTABLISHED, None) == "yes"
    assert server_change_word(S.BROKEN, None) == "broken"
    assert server_change_word(None, None) == "none"
    assert client_change_word(True, S.CLOSED) == "broken"
    assert client_change_word(False, S.ESTABLISHED) == "yes"
    text = policy_reason("pinned", "broken", True, True, "channel_prot", "bound")
    assert "server pinned its latch" in text and "client broke its latch" in text
    assert "reset and reconnected: channel_prot, bound" in text
    other = policy_reason("broken", "yes", False, False, "krb5p", "x")
    assert "server broke its latch" in other and "no reset and did not reconnect" in other


def test_scenario_2_cells_show_a_latch_when_the_server_does_run_ike(
    tmp_path: Path, realm: ThrowawayRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario 2 as shipped shows ``no``/``-``; with the server's IKE daemon back the same
    scenario script must show the latch and the peer it latched to."""
    from rpclatch.demo.runner import run_demo

    shipped = run_demo(mk(tmp_path / "a"), [2], realm=realm).results[0]
    assert (shipped.latched, shipped.peer) == ("no", "-")

    real_build = scenarios.build_testbed

    def with_ike(realm_: ThrowawayRealm, **kw: object) -> object:
        kw.pop("server_ike", None)
        return real_build(realm_, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(scenarios, "build_testbed", with_ike)
    changed = run_demo(mk(tmp_path / "b"), [2], realm=realm).results[0]
    assert changed.latched == "yes/yes" and changed.peer != "-"
    assert changed.verdict.value == "FAIL"  # the checks notice too


def test_scenario_5_cell_shows_break_when_the_server_does_not_pin(
    tmp_path: Path, realm: ThrowawayRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rpclatch.demo.runner import run_demo

    shipped = run_demo(mk(tmp_path / "a"), [4, 5], realm=realm).results
    assert shipped[0].latched == "broken->yes"
    assert shipped[0].reason == "latch BROKEN on conflicting SA, reset; reconnected, re-latched, re-bound"
    assert shipped[1].latched == "pinned/broken"
    assert "server pinned its latch" in shipped[1].reason

    real_build = scenarios.build_testbed

    def no_pin(realm_: ThrowawayRealm, **kw: object) -> object:
        kw.pop("server_config", None)
        return real_build(realm_, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(scenarios, "build_testbed", no_pin)
    changed = run_demo(mk(tmp_path / "b"), [5], realm=realm).results[0]
    assert changed.latched.split("/")[0] != "pinned"
    assert "server pinned" not in changed.reason
