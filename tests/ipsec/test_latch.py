"""Latch state machine (RFC 5660 §2.2 Figure 1) and the Latch Database (RFC 5660 §2.3)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from rpclatch.ipsec import examples as ex
from rpclatch.ipsec.decisions import DropReason
from rpclatch.ipsec.engine import IPsecEngine
from rpclatch.ipsec.errors import IllegalTransition, LatchConflict, LatchExists, LatchNotFound, PolicyRefused
from rpclatch.ipsec.latch import (
    TRANSITIONS,
    Alert,
    AlertReason,
    BrokenDisposition,
    LatchEvent,
    LatchRequest,
    LatchState,
    next_state,
    params_from_sa,
)
from rpclatch.ipsec.model import AES_GCM_128, ProtectionParams, Selector, ThreeTuple
from rpclatch.ipsec.spd import SpdAction

S, E = LatchState, LatchEvent

LEGAL = {
    (None, E.CREATE_LISTENER): S.LISTENER,
    (None, E.CREATE_ESTABLISHED): S.ESTABLISHED,
    (None, E.CREATE_BROKEN): S.BROKEN,
    (None, E.CREATE_LARVAL): S.LARVAL,
    (S.LARVAL, E.SA_READY): S.ESTABLISHED,
    (S.LARVAL, E.SA_FAILED): S.CLOSED,
    (S.LARVAL, E.RELEASE): S.CLOSED,
    (S.LARVAL, E.ADMIN_CLOSE): S.CLOSED,
    (S.LISTENER, E.RELEASE): S.CLOSED,
    (S.LISTENER, E.ADMIN_CLOSE): S.CLOSED,
    (S.ESTABLISHED, E.CONFLICT): S.BROKEN,
    (S.BROKEN, E.CONFLICT): S.BROKEN,
    (S.BROKEN, E.CONFLICTS_CLEARED): S.ESTABLISHED,
    (S.ESTABLISHED, E.RELEASE): S.CLOSED,
    (S.BROKEN, E.RELEASE): S.CLOSED,
    (S.ESTABLISHED, E.ADMIN_CLOSE): S.CLOSED,
    (S.BROKEN, E.ADMIN_CLOSE): S.CLOSED,
}
ALL_PAIRS = list(itertools.product([None, *LatchState], LatchEvent))


def test_table_is_exactly_the_rfc_figure() -> None:
    assert dict(TRANSITIONS) == LEGAL


@pytest.mark.parametrize(("state", "event"), [p for p in ALL_PAIRS if p in LEGAL])
def test_legal_transition(state: LatchState | None, event: LatchEvent) -> None:
    assert next_state(state, event) is LEGAL[(state, event)]


@pytest.mark.parametrize(("state", "event"), [p for p in ALL_PAIRS if p not in LEGAL])
def test_illegal_transition_raises(state: LatchState | None, event: LatchEvent) -> None:
    with pytest.raises(IllegalTransition):
        next_state(state, event)


def test_closed_is_terminal() -> None:
    for event in LatchEvent:
        with pytest.raises(IllegalTransition):
            next_state(S.CLOSED, event)


# -- LD ---------------------------------------------------------------------------------------

SERVER_KEY, CLIENT_KEY, ROGUE_KEY = 1, 2, 3
F = ex.flow("192.0.2.1", 2049, "192.0.2.2", 40000)


def engine(**kw: object) -> IPsecEngine:
    return IPsecEngine(ex.nfs_spd(), ex.btns_pad(), **kw)  # type: ignore[arg-type]


def test_listener_latch_twice_fails_and_release() -> None:
    e = engine()
    key = ThreeTuple.of("192.0.2.1", 2049, 6)
    h = e.latches.create_listener_latch(key)
    with pytest.raises(LatchExists):
        e.latches.create_listener_latch(key)
    assert e.latches.inquire_latch(h).state is S.LISTENER
    info = e.latches.release_latch(h)
    assert info.state is S.CLOSED
    with pytest.raises(LatchNotFound):
        e.latches.inquire_latch(h)
    e.latches.create_listener_latch(key)  # allowed again once CLOSED


def test_connection_latch_from_existing_sa_and_find() -> None:
    e = engine()
    sa = e.install_sa(ex.narrow_sa(F, ex.btns_peer(CLIENT_KEY), ex.btns_local(SERVER_KEY)), 0.0)
    assert sa is not None and sa.btns
    h = e.latches.create_connection_latch(F)
    assert e.latches.find_latch(F) == h
    info = e.latches.inquire_latch(h)
    assert info.state is S.ESTABLISHED and info.params is not None
    assert info.params.peer == ex.btns_peer(CLIENT_KEY) and info.params.qop.determinate
    with pytest.raises(LatchExists):
        e.latches.create_connection_latch(F)
    with pytest.raises(LatchNotFound):
        e.latches.find_latch(F.reversed())


def test_conflicting_sas_prevent_latch() -> None:
    e = engine(config=None)
    e.latches.narrow_conflicting_sas = False
    e.install_sa(ex.narrow_sa(F, ex.btns_peer(CLIENT_KEY), ex.btns_local(SERVER_KEY)), 0.0)
    e.install_sa(ex.narrow_sa(F, ex.btns_peer(ROGUE_KEY), ex.btns_local(SERVER_KEY)), 0.0)
    with pytest.raises(LatchConflict):
        e.latches.create_connection_latch(F)


def test_latch_on_bypassed_flow_is_refused() -> None:
    e = IPsecEngine(ex.nfs_spd(SpdAction.BYPASS), ex.btns_pad())
    with pytest.raises(PolicyRefused):
        e.latches.create_connection_latch(F)


def test_conflicting_sa_breaks_then_removal_restores() -> None:
    e = engine()
    e.latches.narrow_conflicting_sas = False
    alerts: list[Alert] = []
    e.install_sa(ex.narrow_sa(F, ex.btns_peer(CLIENT_KEY), ex.btns_local(SERVER_KEY)), 0.0)
    h = e.latches.create_connection_latch(F, on_alert=alerts.append)
    rogue = e.install_sa(ex.narrow_sa(F, ex.btns_peer(ROGUE_KEY), ex.btns_local(SERVER_KEY)), 1.0)
    assert rogue is not None
    assert [a.new_state for a in alerts] == [S.BROKEN] and alerts[0].reason is AlertReason.CONFLICTING_SA
    assert e.latches.inquire_latch(h).broken_by_sas == {rogue.sa_id}
    e.delete_sa(rogue.sa_id, 2.0)
    assert alerts[-1].new_state is S.ESTABLISHED and alerts[-1].reason is AlertReason.CONFLICTS_CLEARED


def test_wide_conflicting_sa_is_narrowed() -> None:
    e = engine()
    alerts: list[Alert] = []
    e.install_sa(ex.narrow_sa(F, ex.btns_peer(CLIENT_KEY), ex.btns_local(SERVER_KEY)), 0.0)
    e.latches.create_connection_latch(F, on_alert=alerts.append)
    wide = Selector(local=ex.NET, remote=ex.NET, proto=6)
    got = e.install_sa(
        ex.narrow_sa(F, ex.btns_peer(ROGUE_KEY), ex.btns_local(SERVER_KEY), selectors=(wide,)), 1.0
    )
    assert got is not None and not got.carries(F)
    assert got.carries(ex.flow("192.0.2.1", 2049, "192.0.2.2", 40001))
    assert alerts == []


def test_dpd_breaks_irremediably() -> None:
    e = engine()
    alerts: list[Alert] = []
    e.install_sa(ex.narrow_sa(F, ex.btns_peer(CLIENT_KEY), ex.btns_local(SERVER_KEY)), 0.0)
    h = e.latches.create_connection_latch(F, on_alert=alerts.append)
    e.peer_dead(ex.btns_peer(CLIENT_KEY), 1.0)
    assert alerts[-1].reason is AlertReason.PEER_DEAD and alerts[-1].new_state is S.BROKEN
    # a fresh congruent SA from the same key does not bring it back
    e.install_sa(ex.narrow_sa(F, ex.btns_peer(CLIENT_KEY), ex.btns_local(SERVER_KEY)), 2.0)
    assert e.latches.inquire_latch(h).state is S.BROKEN and e.latches.inquire_latch(h).peer_dead


def test_admin_close_and_disposition() -> None:
    e = engine()
    alerts: list[Alert] = []
    e.install_sa(ex.narrow_sa(F, ex.btns_peer(CLIENT_KEY), ex.btns_local(SERVER_KEY)), 0.0)
    h = e.latches.create_connection_latch(
        F, LatchRequest(disposition=BrokenDisposition.WAIT), on_alert=alerts.append
    )
    assert e.latches.inquire_latch(h).disposition is BrokenDisposition.WAIT
    e.latches.set_disposition(h, BrokenDisposition.ICMP_UNREACHABLE)
    e.latches.admin_close(h, "operator")
    assert alerts[-1].new_state is S.CLOSED and alerts[-1].reason is AlertReason.ADMIN_CLOSE
    assert alerts[-1].disposition is BrokenDisposition.ICMP_UNREACHABLE
    with pytest.raises(LatchNotFound):
        e.latches.find_latch(F)


def test_wide_sa_reports_indeterminate_qop() -> None:
    e = engine()
    wide = Selector(local=ex.NET, remote=ex.NET, proto=6)
    e.install_sa(ex.narrow_sa(F, ex.btns_peer(CLIENT_KEY), ex.btns_local(SERVER_KEY), selectors=(wide,)), 0.0)
    info = e.latches.inquire_latch(e.latches.create_connection_latch(F))
    assert info.qop_indeterminate and info.params is not None and info.params.qop.suite is None


def test_request_with_unmet_qop_conflicts() -> None:
    from rpclatch.ipsec.model import ProtectionPolicy

    e = engine()
    e.install_sa(
        ex.narrow_sa(
            F, ex.btns_peer(CLIENT_KEY), ex.btns_local(SERVER_KEY), params=ProtectionParams(suite=AES_GCM_128)
        ),
        0.0,
    )
    with pytest.raises(LatchConflict):
        e.latches.create_connection_latch(
            F, LatchRequest(policy=ProtectionPolicy(suites=(ex.ProtectionParams().suite,)))
        )


def test_same_peer_different_qop_sas_conflict() -> None:
    e = engine()
    e.install_sa(ex.narrow_sa(F, ex.btns_peer(CLIENT_KEY), ex.btns_local(SERVER_KEY)), 0.0)
    e.install_sa(
        ex.narrow_sa(
            F, ex.btns_peer(CLIENT_KEY), ex.btns_local(SERVER_KEY), params=ProtectionParams(suite=AES_GCM_128)
        ),
        0.0,
    )
    with pytest.raises(LatchConflict):
        e.latches.create_connection_latch(F)


def test_requested_local_identity_is_honoured() -> None:
    e = engine()
    e.install_sa(ex.narrow_sa(F, ex.btns_peer(CLIENT_KEY), ex.btns_local(SERVER_KEY)), 0.0)
    with pytest.raises(LatchConflict):
        e.latches.create_connection_latch(F, LatchRequest(local=ex.btns_local(ROGUE_KEY)))
    assert e.latches.create_connection_latch(F, LatchRequest(local=ex.btns_local(SERVER_KEY))) > 0


def test_negotiation_finished_fails_a_larval_latch_it_cannot_serve() -> None:
    e = engine()
    alerts: list[Alert] = []
    # the ULP wants peer ROGUE_KEY; no SA exists yet, so the latch waits (LARVAL) for an ACQUIRE
    want_rogue = LatchRequest(peer=ex.btns_peer(ROGUE_KEY))
    h = e.latches.create_connection_latch(F, want_rogue, on_alert=alerts.append)
    assert e.latches.inquire_latch(h).state is S.LARVAL and F in e.key_manager.pending
    # the negotiation yields CLIENT_KEY's SA: installed, but it cannot serve the latch
    e.install_sa(ex.narrow_sa(F, ex.btns_peer(CLIENT_KEY), ex.btns_local(SERVER_KEY)), 1.0)
    assert e.latches.get(h) is None and F not in e.key_manager.pending
    assert [(a.old_state, a.new_state, a.reason) for a in alerts] == [
        (S.LARVAL, S.CLOSED, AlertReason.SA_UNSUITABLE)
    ]
    assert "does not suit" in alerts[0].detail
    # nothing LARVAL left: a second report changes nothing; an ESTABLISHED latch is untouched
    assert not e.latches.negotiation_finished(F)
    h2 = e.latches.create_connection_latch(F)
    assert not e.latches.negotiation_finished(F)
    assert e.latches.inquire_latch(h2).state is S.ESTABLISHED


# -- RFC 5660 §2: the local identity is a latched parameter (issue #10 item 15) ----------------------

OTHER_LOCAL_KEY = 9


def test_same_peer_other_local_id_is_not_congruent() -> None:
    latched = ex.narrow_sa(F, ex.btns_peer(CLIENT_KEY), ex.btns_local(SERVER_KEY))
    params = params_from_sa(latched, F, None)
    rekey = ex.narrow_sa(F, ex.btns_peer(CLIENT_KEY), ex.btns_local(SERVER_KEY))
    other_local = ex.narrow_sa(F, ex.btns_peer(CLIENT_KEY), ex.btns_local(OTHER_LOCAL_KEY))
    assert params.congruent(rekey)
    assert not params.congruent(other_local)


def test_sa_with_other_local_id_breaks_the_latch_like_a_peer_change() -> None:
    e = engine()
    e.latches.narrow_conflicting_sas = False
    alerts: list[Alert] = []
    good = e.install_sa(ex.narrow_sa(F, ex.btns_peer(CLIENT_KEY), ex.btns_local(SERVER_KEY)), 0.0)
    h = e.latches.create_connection_latch(F, on_alert=alerts.append)
    other = e.install_sa(ex.narrow_sa(F, ex.btns_peer(CLIENT_KEY), ex.btns_local(OTHER_LOCAL_KEY)), 1.0)
    assert good is not None and other is not None
    assert [(a.new_state, a.reason) for a in alerts] == [(S.BROKEN, AlertReason.CONFLICTING_SA)]
    assert e.latches.inquire_latch(h).broken_by_sas == {other.sa_id}
    e.delete_sa(other.sa_id, 2.0)
    assert alerts[-1].new_state is S.ESTABLISHED
    # the packet path judges the local ID too: an SA put in the SAD without the LD's vetting
    # (here directly) carries nothing of the ESTABLISHED latch's flow, and the drop names why
    stray = replace(
        ex.narrow_sa(F, ex.btns_peer(CLIENT_KEY), ex.btns_local(OTHER_LOCAL_KEY)), sa_id=e.sad.next_sa_id()
    )
    e.sad.add(stray)
    assert e.latches.inquire_latch(h).state is S.ESTABLISHED
    d = e.inbound(F, stray, 3.0)
    assert not d.accepted and d.reason is DropReason.LATCH_LOCAL_ID_MISMATCH
    assert e.inbound(F, good, 3.0).accepted


def test_sas_differing_only_in_local_id_prevent_a_latch() -> None:
    e = engine()
    e.latches.narrow_conflicting_sas = False
    e.install_sa(ex.narrow_sa(F, ex.btns_peer(CLIENT_KEY), ex.btns_local(SERVER_KEY)), 0.0)
    e.install_sa(ex.narrow_sa(F, ex.btns_peer(CLIENT_KEY), ex.btns_local(OTHER_LOCAL_KEY)), 0.0)
    with pytest.raises(LatchConflict):
        e.latches.create_connection_latch(F)
