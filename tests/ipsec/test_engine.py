"""IPsecEngine packet path: approach 2 (latch in LD/PAD/SPD), BYPASS-OR-PROTECT, TIME_WAIT hold,
SPD changes, key-manager events."""

from __future__ import annotations

import pytest

from rpclatch.ipsec import examples as ex
from rpclatch.ipsec.backend import InProcessBackend
from rpclatch.ipsec.decisions import CLEARTEXT, DropReason, InboundVerdict, OutboundVerdict
from rpclatch.ipsec.engine import Approach, EngineConfig, FlowChoice, IPsecEngine, ProtectionOutcome
from rpclatch.ipsec.errors import PolicyRefused
from rpclatch.ipsec.keymgr import AcquireOutcome, SaProvision
from rpclatch.ipsec.latch import Alert, AlertReason, LatchState
from rpclatch.ipsec.model import AddressRange, FiveTuple, IkeSaRef, ProtectionParams, ThreeTuple
from rpclatch.ipsec.pad_latching import TimeWaitPolicy
from rpclatch.ipsec.spd import EntryOrigin, SpdAction

SERVER, CLIENT, ROGUE = 1, 2, 3
SRV = ex.flow("192.0.2.1", 2049, "192.0.2.2", 40000)  # server's view
CLI = SRV.reversed()  # client's view
LISTEN = ThreeTuple.of("192.0.2.1", 2049, 6)


def server(**cfg: object) -> IPsecEngine:
    return IPsecEngine(ex.nfs_spd(), ex.btns_pad(), config=EngineConfig(**cfg))  # type: ignore[arg-type]


def provision(peer_seed: int, addr: str = "192.0.2.1", **kw: object) -> SaProvision:
    return SaProvision(
        remote=AddressRange.single(addr),
        peer=ex.btns_peer(peer_seed),
        peer_addr=AddressRange.single(addr).first,
        local=ex.btns_local(CLIENT),
        params=ProtectionParams(),
        ike_sa=IkeSaRef(7, 8),
        **kw,  # type: ignore[arg-type]
    )


def test_listener_spawns_latch_and_enforces_peer() -> None:
    e = server()
    alerts: list[Alert] = []
    e.listen(LISTEN, on_alert=alerts.append)
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    d = e.inbound(SRV, sa, 0.0, initiating=True)
    assert d.accepted and d.latch is not None and d.tag is not None and d.tag.peer == ex.btns_peer(CLIENT)
    assert alerts[0].reason is AlertReason.NEW_CONNECTION and alerts[0].key == SRV
    assert SRV in e.pad_layer.clones and e.pad_layer.clones[SRV].peer == ex.btns_peer(CLIENT)
    assert e.inbound(SRV, None, 0.1).reason is DropReason.LATCHED_FLOW_CLEARTEXT
    out = e.outbound(SRV, 0.1)
    assert out.verdict is OutboundVerdict.PROTECT and out.sa == sa
    # the backend holds an exact-5-tuple policy pinned to the client's reqid
    assert e.backend_flow_policies()[SRV].reqid == e.key_manager.reqid_for(ex.btns_peer(CLIENT))


def test_unknown_sa_and_selector_mismatch() -> None:
    e = server()
    other = ex.flow("192.0.2.1", 2049, "192.0.2.2", 40001)
    sa = e.install_sa(ex.narrow_sa(other, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    assert sa is not None
    assert e.inbound(SRV, sa, 0.0).reason is DropReason.SA_SELECTOR_MISMATCH
    e.delete_sa(sa.sa_id, 1.0)
    assert e.inbound(other, sa, 1.0).reason is DropReason.SA_UNKNOWN


def test_cleartext_to_protect_entry_and_bypass() -> None:
    e = server()
    assert e.inbound(SRV, None, 0.0).reason is DropReason.CLEARTEXT_ON_PROTECTED_FLOW
    ssh = ex.flow("192.0.2.1", 22, "192.0.2.2", 5000)
    assert e.inbound(ssh, None, 0.0).tag is CLEARTEXT
    assert e.outbound(ssh, 0.0).verdict is OutboundVerdict.BYPASS


def test_initiator_latch_larval_then_established() -> None:
    e = IPsecEngine(ex.nfs_spd(), ex.btns_pad(), provisions=[provision(SERVER, setup_delay=0.5)])
    alerts: list[Alert] = []
    h = e.connect(CLI, on_alert=alerts.append, now=0.0)
    assert e.latches.inquire_latch(h).state is LatchState.LARVAL
    d = e.outbound(CLI, 0.0, initiating=True)
    assert d.verdict is OutboundVerdict.NEED_SA and d.reason is DropReason.LATCH_LARVAL
    assert e.inbound(CLI, None, 0.1).reason is DropReason.LATCH_LARVAL
    assert e.next_deadline() == 0.5
    e.poll(0.5)
    assert alerts[-1].new_state is LatchState.ESTABLISHED
    assert e.outbound(CLI, 0.6).verdict is OutboundVerdict.PROTECT


def test_initiator_acquire_timeout_closes_latch() -> None:
    e = IPsecEngine(ex.nfs_spd(), ex.btns_pad(), config=EngineConfig(acquire_timeout=2.0))
    alerts: list[Alert] = []
    h = e.connect(CLI, on_alert=alerts.append, now=0.0)
    e.poll(2.0)
    assert alerts[-1].new_state is LatchState.CLOSED and alerts[-1].reason is AlertReason.SA_SETUP_FAILED
    assert e.latches.get(h) is None


def test_auto_latch_on_initiating_outbound() -> None:
    e = IPsecEngine(ex.nfs_spd(), ex.btns_pad(), provisions=[provision(SERVER)])
    d = e.outbound(CLI, 0.0, initiating=True)
    assert d.verdict is OutboundVerdict.PROTECT and d.latch is not None
    assert e.latches.inquire_latch(d.latch).state is LatchState.ESTABLISHED


def test_time_wait_hold_then_removal() -> None:
    e = server(time_wait=TimeWaitPolicy(0.01, 0.04, 2.0))  # hold 0.1 s
    e.listen(LISTEN)
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    h = e.inbound(SRV, sa, 0.0, initiating=True).latch
    e.close_flow(SRV, 1.0)
    assert e.next_deadline() == pytest.approx(1.1)
    late = e.inbound(SRV, None, 1.05)
    assert late.reason is DropReason.LATCHED_FLOW_CLEARTEXT  # still judged by the old latch
    e.poll(1.1)
    assert e.latches.latch_for(SRV) is None and SRV not in e.pad_layer.clones and h is not None
    assert SRV not in e.backend_flow_policies()


def test_new_flow_trigger_during_hold_supersedes_atomically() -> None:
    e = server()
    e.listen(LISTEN)
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    old = e.inbound(SRV, sa, 0.0, initiating=True).latch
    e.close_flow(SRV, 1.0)
    e.delete_sa(sa.sa_id if sa else 0, 1.0)
    sa2 = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(ROGUE), ex.btns_local(SERVER)), 1.01)
    d = e.inbound(SRV, sa2, 1.02, initiating=True)
    assert d.accepted and d.latch is not None and d.latch != old
    assert e.pad_layer.clones[SRV].peer == ex.btns_peer(ROGUE)  # a fresh latch, not the old peer
    assert SRV not in e.pad_layer.holds


def test_spd_change_breaks_by_default() -> None:
    e = server()
    alerts: list[Alert] = []
    e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    h = e.connect(SRV, on_alert=alerts.append)
    broken = e.update_spd(ex.nfs_spd(SpdAction.BYPASS))
    assert broken == [h] and alerts[-1].reason is AlertReason.SPD_CHANGE
    assert e.outbound(SRV, 1.0).reason is DropReason.LATCH_BROKEN
    assert e.inbound(SRV, None, 1.0).reason is DropReason.LATCH_BROKEN
    e.update_spd(ex.nfs_spd())
    assert alerts[-1].new_state is LatchState.ESTABLISHED


def test_spd_change_pins_when_enabled_and_pin_dies_on_restart() -> None:
    e = server(pin_on_spd_change=True)
    alerts: list[Alert] = []
    e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    h = e.connect(SRV, on_alert=alerts.append)
    assert e.update_spd(ex.nfs_spd(SpdAction.BYPASS)) == []
    pinned = e.spd.overlay_entry(SRV)
    assert pinned is not None and pinned.origin is EntryOrigin.PINNED_LATCH and alerts == []
    assert e.outbound(SRV, 1.0).verdict is OutboundVerdict.PROTECT
    e.restart_key_manager(2.0, restore_latches=True)
    assert e.spd.overlay_entry(SRV) is None  # the logical SPD update never survives a restart
    assert e.latches.inquire_latch(h).state is LatchState.BROKEN


def test_restart_without_restore_closes_everything() -> None:
    e = server()
    alerts: list[Alert] = []
    e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    e.connect(SRV, on_alert=alerts.append)
    e.restart_key_manager(1.0, restore_latches=False)
    assert alerts[-1].reason is AlertReason.KEY_MANAGER_RESTART and len(e.latches) == 0
    assert e.backend_flow_policies() == {}


def test_peer_id_store_corruption_closes() -> None:
    e = server()
    alerts: list[Alert] = []
    e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    e.connect(SRV, on_alert=alerts.append)
    assert e.check_peer_id_store() == []
    ref = next(iter(e.peer_ids._store))
    e.peer_ids._store[ref] = ex.btns_peer(ROGUE)  # corrupt it
    assert len(e.check_peer_id_store()) == 1
    assert alerts[-1].reason is AlertReason.PEER_ID_STORE_CORRUPTED


# -- BYPASS-OR-PROTECT ---------------------------------------------------------------------------


@pytest.mark.parametrize("approach", list(Approach))
def test_bop_inbound_first_packet_decides(approach: Approach) -> None:
    e = IPsecEngine(ex.nfs_spd(SpdAction.BYPASS_OR_PROTECT), ex.btns_pad(), approach=approach)
    clear_flow = ex.flow("192.0.2.1", 2049, "192.0.2.3", 41000)
    assert e.inbound(clear_flow, None, 0.0).reason is DropReason.BOP_UNDECIDED
    assert e.inbound(clear_flow, None, 0.0, initiating=True).tag is CLEARTEXT
    entry = e.spd.overlay_entry(clear_flow)
    assert entry is not None and entry.action is SpdAction.BYPASS
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    assert e.inbound(SRV, sa, 0.0, initiating=True).accepted
    entry = e.spd.overlay_entry(SRV)
    assert entry is not None and entry.action is SpdAction.PROTECT
    # a PROTECT-decided flow never accepts cleartext, a cleartext-decided one never accepts ESP
    assert not e.inbound(SRV, None, 0.1).accepted
    sa3 = e.install_sa(ex.narrow_sa(clear_flow, ex.btns_peer(ROGUE), ex.btns_local(SERVER)), 0.0)
    assert e.inbound(clear_flow, sa3, 0.1).reason is DropReason.BOP_FLOW_DECIDED_CLEARTEXT
    e.close_flow(SRV, 1.0)
    e.poll(5.0)
    assert e.spd.overlay_entry(SRV) is None  # the clone went away with the flow


@pytest.mark.parametrize("approach", list(Approach))
def test_bop_outbound_protect_then_ike_timeout_then_bypass(approach: Approach) -> None:
    e = IPsecEngine(
        ex.nfs_spd(SpdAction.BYPASS_OR_PROTECT),
        ex.btns_pad(),
        config=EngineConfig(approach=approach, acquire_timeout=3.0),
        provisions=[provision(SERVER, setup_delay=10.0)],  # IKE will time out
    )
    assert e.outbound(CLI, 0.0, initiating=True).reason is DropReason.BOP_UNDECIDED
    outcomes: list[ProtectionOutcome] = []
    first = e.request_protection(CLI, FlowChoice.PROTECT, 0.0, on_outcome=outcomes.append)
    assert first.pending
    assert e.outbound(CLI, 0.0, initiating=True).verdict is OutboundVerdict.NEED_SA
    e.poll(3.0)
    assert outcomes and not outcomes[0].ok and outcomes[0].acquire is AcquireOutcome.TIMEOUT
    assert e.outbound(CLI, 3.0).reason is DropReason.BOP_IKE_FAILED
    assert e.request_protection(CLI, FlowChoice.BYPASS, 3.0).ok
    assert e.outbound(CLI, 3.1).verdict is OutboundVerdict.BYPASS


def test_bop_outbound_protect_success_never_falls_back() -> None:
    e = IPsecEngine(ex.nfs_spd(SpdAction.BYPASS_OR_PROTECT), ex.btns_pad(), provisions=[provision(SERVER)])
    out = e.request_protection(CLI, FlowChoice.PROTECT, 0.0)
    assert out.ok and out.latch is not None
    assert e.outbound(CLI, 0.0, initiating=True).verdict is OutboundVerdict.PROTECT
    with pytest.raises(PolicyRefused):
        e.request_protection(CLI, FlowChoice.BYPASS, 1.0)
    assert e.inbound(CLI, None, 1.0).reason is DropReason.LATCHED_FLOW_CLEARTEXT


def test_optional_protection_and_privileged_bypass() -> None:
    e = IPsecEngine(ex.nfs_spd(SpdAction.BYPASS), ex.btns_pad(), provisions=[provision(SERVER)])
    out = e.request_protection(CLI, FlowChoice.PROTECT, 0.0)
    entry = e.spd.overlay_entry(CLI)
    assert out.ok and entry is not None and entry.origin is EntryOrigin.APPLICATION_REQUEST
    e2 = IPsecEngine(ex.nfs_spd(), ex.btns_pad())
    with pytest.raises(PolicyRefused):
        e2.request_protection(CLI, FlowChoice.BYPASS, 0.0)
    assert e2.request_protection(CLI, FlowChoice.BYPASS, 0.0, privileged=True).ok
    assert e2.outbound(CLI, 0.0).verdict is OutboundVerdict.BYPASS


def test_btns_peer_needs_btns_ok() -> None:
    e = IPsecEngine(ex.nfs_spd(btns_ok=False), ex.btns_pad())
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    d = e.inbound(SRV, sa, 0.0)
    assert d.verdict is InboundVerdict.DROP and d.reason is DropReason.SA_NOT_BTNS_OK


def test_unsuitable_sas_fail_the_larval_latch() -> None:
    from rpclatch.ipsec.latch import LatchRequest

    e = IPsecEngine(ex.nfs_spd(), ex.btns_pad(), provisions=[provision(SERVER, setup_delay=0.5)])
    alerts: list[Alert] = []
    # the application insists on talking to key ROGUE; the negotiation yields SERVER's key
    h = e.connect(CLI, LatchRequest(peer=ex.btns_peer(ROGUE)), on_alert=alerts.append, now=0.0)
    assert e.latches.inquire_latch(h).state is LatchState.LARVAL
    e.poll(0.5)
    assert e.latches.get(h) is None
    assert alerts[-1].new_state is LatchState.CLOSED and alerts[-1].reason is AlertReason.SA_UNSUITABLE
    assert not e.key_manager.pending


def test_unsuitable_sas_fail_the_protection_request_too() -> None:
    from rpclatch.ipsec.latch import LatchRequest

    e = IPsecEngine(
        ex.nfs_spd(SpdAction.BYPASS_OR_PROTECT),
        ex.btns_pad(),
        provisions=[provision(SERVER, setup_delay=0.5)],
    )
    outcomes: list[ProtectionOutcome] = []
    alerts: list[Alert] = []
    out = e.request_protection(
        CLI,
        FlowChoice.PROTECT,
        0.0,
        request=LatchRequest(peer=ex.btns_peer(ROGUE)),
        on_alert=alerts.append,
        on_outcome=outcomes.append,
    )
    assert out.pending
    e.poll(0.5)
    assert [o.acquire for o in outcomes] == [AcquireOutcome.UNSUITABLE] and not outcomes[0].ok
    assert alerts[-1].reason is AlertReason.SA_UNSUITABLE
    assert e.spd.overlay_entry(CLI) is None  # the PROTECT clone is withdrawn: the app may choose again


def test_how_would_protect_has_no_side_effects() -> None:
    e = IPsecEngine(ex.nfs_spd(), ex.btns_pad(), provisions=[provision(SERVER)])
    d = e.how_would_protect(CLI, 0.0)
    assert d.verdict is OutboundVerdict.NEED_SA and not e.key_manager.pending and len(e.latches) == 0
    e.outbound(CLI, 0.0, initiating=True)  # latches and negotiates
    d = e.how_would_protect(CLI, 0.1)
    assert d.verdict is OutboundVerdict.PROTECT and d.tag is not None and d.tag.peer == ex.btns_peer(SERVER)
    assert (
        e.how_would_protect(ex.flow("192.0.2.2", 5, "192.0.2.1", 22), 0.1).verdict is OutboundVerdict.BYPASS
    )


def test_backend_acquire_and_expire_events() -> None:
    e = IPsecEngine(ex.nfs_spd(), ex.btns_pad(), provisions=[provision(SERVER)])
    e.backend_acquire(CLI, 0.0)
    (sa,) = list(e.sad)
    e.backend_expire(sa.sa_id, False, 1.0)  # soft: nothing to do here
    assert sa.sa_id in e.sad
    e.backend_expire(sa.sa_id, True, 2.0)
    assert sa.sa_id not in e.sad


def test_ipv6_flow_latches() -> None:
    from rpclatch.ipsec.model import AuthMethod, FiveTuple
    from rpclatch.ipsec.pad import ChildSaAuthorization, PadEntry, PublicKeyPattern

    net6 = AddressRange.network("2001:db8::/64")
    pad = [PadEntry("btns6", PublicKeyPattern(), AuthMethod.RAW_PUBLIC_KEY, ChildSaAuthorization((net6,)))]
    e = IPsecEngine(ex.nfs_spd(), pad)
    f6 = FiveTuple.of("2001:db8::1", 2049, "2001:db8::2", 40000, 6)
    e.listen(ThreeTuple.of("2001:db8::1", 2049, 6))
    sa = e.install_sa(ex.narrow_sa(f6, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    d = e.inbound(f6, sa, 0.0, initiating=True)
    assert d.accepted and d.latch is not None
    assert e.inbound(f6, None, 0.1).reason is DropReason.LATCHED_FLOW_CLEARTEXT


def test_auto_latch_conflict_proceeds_unlatched_without_raising() -> None:
    e = IPsecEngine(ex.nfs_spd(), ex.btns_pad(), config=EngineConfig(narrow_conflicting_sas=False))
    e.install_sa(ex.narrow_sa(CLI, ex.btns_peer(SERVER), ex.btns_local(CLIENT)), 0.0)
    e.install_sa(ex.narrow_sa(CLI, ex.btns_peer(ROGUE), ex.btns_local(CLIENT)), 0.0)
    d = e.outbound(CLI, 0.0, initiating=True)
    assert d.verdict is OutboundVerdict.PROTECT and d.latch is None and len(e.latches) == 0


def test_request_protection_is_idempotent_on_a_latched_flow() -> None:
    e = IPsecEngine(ex.nfs_spd(SpdAction.BYPASS_OR_PROTECT), ex.btns_pad(), provisions=[provision(SERVER)])
    first = e.request_protection(CLI, FlowChoice.PROTECT, 0.0)
    again = e.request_protection(CLI, FlowChoice.PROTECT, 1.0)
    assert first.ok and again.ok and again.latch == first.latch
    entry = e.spd.overlay_entry(CLI)
    assert entry is not None and entry.action is SpdAction.PROTECT


@pytest.mark.parametrize("approach", list(Approach))
def test_protect_after_privileged_bypass_restores_protection(approach: Approach) -> None:
    e = IPsecEngine(ex.nfs_spd(), ex.btns_pad(), approach=approach, provisions=[provision(SERVER)])
    assert e.request_protection(CLI, FlowChoice.BYPASS, 0.0, privileged=True).ok
    assert e.outbound(CLI, 0.0).verdict is OutboundVerdict.BYPASS
    assert e.request_protection(CLI, FlowChoice.PROTECT, 1.0).ok
    assert e.spd.overlay_entry(CLI) is None  # the configured PROTECT entry governs again
    assert e.outbound(CLI, 1.0).verdict is OutboundVerdict.PROTECT


def test_only_connection_protocols_latch_in_the_policy_layer() -> None:
    e = server()
    with pytest.raises(PolicyRefused):
        e.connect(ex.flow("192.0.2.1", 0, "192.0.2.2", 0, 1))  # ICMP
    with pytest.raises(PolicyRefused):
        e.listen(ThreeTuple.of("192.0.2.1", 0, 1))


def test_latched_flow_verdict_cache_follows_latch_and_sad_changes() -> None:
    """The steady-state fast path (per-flow verdict cache) never outlives what it summarises."""
    e = server(narrow_conflicting_sas=False)
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    assert sa is not None
    h = e.connect(SRV)
    first = e.inbound(SRV, sa, 0.1)
    assert first.accepted and first.sa is sa and e.inbound(SRV, sa, 0.2) is first  # served from cache
    # a conflicting SA breaks the latch: the cached ACCEPT must not be served any more
    rogue = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(ROGUE), ex.btns_local(SERVER)), 1.0)
    assert e.latches.inquire_latch(h).state is LatchState.BROKEN
    assert e.inbound(SRV, sa, 1.1).reason is DropReason.LATCH_BROKEN
    # T5: the conflict goes away (SA removed), the latch is ESTABLISHED again and accepts again
    assert rogue is not None
    e.delete_sa(rogue.sa_id, 2.0)
    assert e.latches.inquire_latch(h).state is LatchState.ESTABLISHED
    again = e.inbound(SRV, sa, 2.1)
    assert again.accepted and again is not first
    # the latched SA itself leaves the SAD: its packets are refused, not served from the cache
    e.delete_sa(sa.sa_id, 3.0)
    assert e.inbound(SRV, sa, 3.1).reason is DropReason.SA_UNKNOWN
    # the latch released: no cached latched verdict for the flow either
    sa2 = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 4.0)
    assert sa2 is not None and e.inbound(SRV, sa2, 4.1).latch == h
    e.latches.release_latch(h)
    assert e.inbound(SRV, sa2, 4.2).latch is None


# -- the datapath backend mirrors BROKEN latches and the SPD (RFC 5660 §2.3) -----------------------


def _backend_action(e: IPsecEngine, flow: FiveTuple) -> tuple[SpdAction, EntryOrigin, int | None] | None:
    p = e.backend_flow_policies().get(flow)
    return None if p is None else (p.entry.action, p.entry.origin, p.reqid)


def _discarding(e: IPsecEngine, flow: FiveTuple) -> bool:
    return _backend_action(e, flow) == (SpdAction.DISCARD, EntryOrigin.BROKEN_LATCH, None)


def test_spd_change_break_discards_flow_in_backend_before_alert_and_restores() -> None:
    e = server()
    seen: list[tuple[LatchState, bool]] = []
    e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    e.connect(SRV, on_alert=lambda a: seen.append((a.new_state, _discarding(e, SRV))))
    rid = e.key_manager.reqid_for(ex.btns_peer(CLIENT))
    assert _backend_action(e, SRV) == (SpdAction.PROTECT, EntryOrigin.CONFIGURED, rid)
    e.update_spd(ex.nfs_spd(SpdAction.BYPASS))
    # the kernel already discards the flow when the holder hears the latch broke
    assert seen == [(LatchState.BROKEN, True)] and _discarding(e, SRV)
    e.update_spd(ex.nfs_spd())
    assert seen[-1] == (LatchState.ESTABLISHED, False)
    assert _backend_action(e, SRV) == (SpdAction.PROTECT, EntryOrigin.CONFIGURED, rid)


def test_conflicting_sa_break_discards_flow_in_backend_until_the_sa_goes() -> None:
    e = server(narrow_conflicting_sas=False)
    e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    h = e.connect(SRV)
    rogue = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(ROGUE), ex.btns_local(SERVER)), 0.5)
    assert rogue is not None and e.latches.inquire_latch(h).state is LatchState.BROKEN
    assert _discarding(e, SRV) and e.outbound(SRV, 0.6).reason is DropReason.LATCH_BROKEN
    e.delete_sa(rogue.sa_id, 1.0)
    assert e.latches.inquire_latch(h).state is LatchState.ESTABLISHED
    assert _backend_action(e, SRV) == (
        SpdAction.PROTECT,
        EntryOrigin.CONFIGURED,
        e.key_manager.reqid_for(ex.btns_peer(CLIENT)),
    )


def test_peer_dead_discards_flow_in_backend_until_the_latch_is_released() -> None:
    e = server()
    e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    h = e.connect(SRV)
    e.peer_dead(ex.btns_peer(CLIENT), 1.0)
    assert e.latches.inquire_latch(h).state is LatchState.BROKEN and _discarding(e, SRV)
    e.latches.release_latch(h)
    assert SRV not in e.backend_flow_policies()


def test_listener_latch_created_broken_is_discarded_in_backend() -> None:
    """T2 "(or BROKEN)": the connection's flow is already carried by another peer's SA."""
    e = server(narrow_conflicting_sas=False)
    e.listen(LISTEN)
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(ROGUE), ex.btns_local(SERVER)), 0.0)
    d = e.inbound(SRV, sa, 0.1, initiating=True)
    assert d.reason is DropReason.LATCH_BROKEN and _discarding(e, SRV)


def test_broken_flow_stays_discarded_through_its_hold_then_goes() -> None:
    """A broken latch closed administratively while its flow is in the TIME_WAIT hold: the
    DISCARD stays until the hold ends, then the flow's policy is removed from the backend; a
    key-manager restart without restore ends the holds, and the flows' policies, at once."""
    e = server(time_wait=TimeWaitPolicy(0.01, 0.04, 2.0))  # hold 0.1 s
    other = ex.flow("192.0.2.1", 2049, "192.0.2.2", 40001)
    for f in (SRV, other):
        e.install_sa(ex.narrow_sa(f, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
        e.connect(f)
    e.peer_dead(ex.btns_peer(CLIENT), 0.5)
    e.close_flow(SRV, 1.0)
    e.latches.admin_close(e.latches.find_latch(SRV))
    assert e.latches.latch_for(SRV) is None and _discarding(e, SRV)
    e.poll(1.1)
    assert SRV not in e.backend_flow_policies() and _discarding(e, other)
    e.close_flow(other, 2.0)
    e.restart_key_manager(2.01, restore_latches=False)
    assert e.backend_flow_policies() == {}


def test_broken_latch_with_own_spd_entry_closed_gives_the_entry_back_to_backend() -> None:
    """Optional protection on a BYPASS entry (own PROTECT overlay entry): once the broken latch is
    administratively closed, the flow's own entry governs it again, in the backend too."""
    e = IPsecEngine(ex.nfs_spd(SpdAction.BYPASS), ex.btns_pad(), provisions=[provision(SERVER)])
    out = e.request_protection(CLI, FlowChoice.PROTECT, 0.0)
    assert out.ok and out.latch is not None
    e.peer_dead(ex.btns_peer(SERVER), 1.0)
    assert _discarding(e, CLI)
    e.latches.admin_close(out.latch)
    assert _backend_action(e, CLI) == (SpdAction.PROTECT, EntryOrigin.APPLICATION_REQUEST, None)


def test_update_spd_pushes_the_configured_table_to_the_backend() -> None:
    e = server()
    backend = e.backend
    assert isinstance(backend, InProcessBackend)
    new = ex.nfs_spd(SpdAction.BYPASS)
    e.update_spd(new)
    assert backend.spd == tuple(new) == e.spd.entries
    with pytest.raises(ValueError, match="unique"):
        e.update_spd([*new, new[0]])
    assert backend.spd == tuple(new) == e.spd.entries  # refused: nothing changed anywhere
