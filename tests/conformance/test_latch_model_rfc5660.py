"""Conformance: RFC 5660 connection latching (+ RFC 5386 / 7619 / 7670 / 5056 parts) at engine level.

Ids are LATCH-nn; each test's marker names the RFC section it checks.
Covered HERE (engine level, no packets on a wire): LATCH-01 (engine part: nothing sendable while
LARVAL), 02, 03, 04, 05, 06, 07, 08, 09, 10, 11, 12, 13, 14, 15, 16, 17, 19, 20, 21, 22, 23, 24,
25, 26.
Left to tests/conformance/test_latch_sim_*.py (H4, packets on the simulated wire): LATCH-01 (capture
shows the first SYN only after child SAs exist), LATCH-18 (simultaneous open), and the wire-level
views of 02/03/11/19.
"""

from __future__ import annotations

import pytest

from rpclatch.ipsec import examples as ex
from rpclatch.ipsec.channel_binding import CB_PREFIX, LatchChannel, RpcRole, decode_binding_data
from rpclatch.ipsec.decisions import DropReason, OutboundVerdict
from rpclatch.ipsec.engine import Approach, EngineConfig, FlowChoice, IPsecEngine
from rpclatch.ipsec.errors import (
    ChannelBindingUnavailable,
    ChildSaRefused,
    IkeNotify,
    LatchConflict,
    LatchExists,
    PeerNotAuthorized,
    PolicyRefused,
)
from rpclatch.ipsec.keymgr import SaProvision
from rpclatch.ipsec.latch import Alert, AlertReason, BrokenDisposition, LatchState
from rpclatch.ipsec.model import (
    AddressRange,
    AuthMethod,
    IdType,
    IkeId,
    IkeSaRef,
    NullAuthPeer,
    ProtectionParams,
    Selector,
    ThreeTuple,
)
from rpclatch.ipsec.pad import (
    ChildSaAuthorization,
    IdPattern,
    PadEntry,
    PeerAuthorizationDatabase,
    PublicKeyPattern,
)
from rpclatch.ipsec.sad import SecurityAssociation
from rpclatch.ipsec.spd import EntryOrigin, SpdAction
from rpclatch.ipsec.ulp import UlpBreak, UlpBreakReason, UlpLatch

SERVER, CLIENT, ROGUE = 1, 2, 3
SRV = ex.flow("192.0.2.1", 2049, "192.0.2.2", 40000)
CLI = SRV.reversed()
LISTEN = ThreeTuple.of("192.0.2.1", 2049, 6)
conf = pytest.mark.conformance


def server(**cfg: object) -> IPsecEngine:
    return IPsecEngine(ex.nfs_spd(), ex.btns_pad(), config=EngineConfig(**cfg))  # type: ignore[arg-type]


def latched_server(alerts: list[Alert], **cfg: object) -> tuple[IPsecEngine, int]:
    e = server(**cfg)
    e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    return e, e.connect(SRV, on_alert=alerts.append)


def prov(delay: float = 0.0, **kw: object) -> SaProvision:
    return SaProvision(
        AddressRange.single("192.0.2.1"),
        ex.btns_peer(SERVER),
        AddressRange.single("192.0.2.1").first,
        ex.btns_local(CLIENT),
        ProtectionParams(),
        IkeSaRef(5, 6),
        setup_delay=delay,
        **kw,  # type: ignore[arg-type]
    )


@conf(id="LATCH-01", rfc="RFC 5660 §2")
def test_latch_01_nothing_sent_before_established() -> None:
    e = IPsecEngine(ex.nfs_spd(), ex.btns_pad(), provisions=[prov(1.0)])
    e.connect(CLI, now=0.0)
    assert not e.outbound(CLI, 0.0, initiating=True).sendable
    assert not e.inbound(CLI, None, 0.5).accepted
    e.poll(1.0)
    assert e.outbound(CLI, 1.0, initiating=True).verdict is OutboundVerdict.PROTECT


@conf(id="LATCH-02", rfc="RFC 5660 §2, §2.3")
def test_latch_02_no_cleartext_after_spd_bypass() -> None:
    e, _ = latched_server([])
    e.update_spd(ex.nfs_spd(SpdAction.BYPASS))
    d = e.outbound(SRV, 1.0)
    assert d.verdict is OutboundVerdict.DISCARD and d.reason is DropReason.LATCH_BROKEN


@conf(id="LATCH-03", rfc="RFC 5660 §2")
def test_latch_03_no_cleartext_or_mismatched_sa_delivered() -> None:
    e, _ = latched_server([])
    e.latches.narrow_conflicting_sas = True
    assert e.inbound(SRV, None, 1.0).reason is DropReason.LATCHED_FLOW_CLEARTEXT
    other = ex.flow("192.0.2.1", 2049, "192.0.2.2", 40001)
    rogue = e.install_sa(ex.narrow_sa(other, ex.btns_peer(ROGUE), ex.btns_local(SERVER)), 1.0)
    assert not e.inbound(SRV, rogue, 1.0).accepted


@conf(id="LATCH-04", rfc="RFC 5660 §2, §2.3")
def test_latch_04_inquire_returns_everything_immutable() -> None:
    e = IPsecEngine(ex.nfs_spd(), ex.btns_pad(cert_net=ex.NET))
    peer = ex.cert_peer("b.example", 5)
    e.install_sa(ex.narrow_sa(SRV, peer, ex.btns_local(SERVER)), 0.0)
    info = e.latches.inquire_latch(e.connect(SRV))
    p = info.params
    assert info.state is LatchState.ESTABLISHED and p is not None
    assert p.protection and p.mode and p.qop.suite is not None and p.local == ex.btns_local(SERVER)
    assert p.peer == peer and p.peer.certificate_der and p.peer.trust_anchor == "CA-X"  # type: ignore[union-attr]
    with pytest.raises(AttributeError):
        p.peer = ex.btns_peer(ROGUE)  # type: ignore[misc]


@conf(id="LATCH-05", rfc="RFC 5660 §2.1")
def test_latch_05_wide_sas_indeterminate_qop() -> None:
    e = server()
    wide = Selector(local=ex.NET, remote=ex.NET, proto=6)
    e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER), selectors=(wide,)), 0.0)
    assert e.latches.inquire_latch(e.connect(SRV)).qop_indeterminate


@conf(id="LATCH-06", rfc="RFC 5660 §2.3")
def test_latch_06_listener_twice_and_alert_on_new_connection() -> None:
    e = server()
    alerts: list[Alert] = []
    lh = e.listen(LISTEN, on_alert=alerts.append)
    with pytest.raises(LatchExists):
        e.listen(LISTEN)
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    e.inbound(SRV, sa, 0.0, initiating=True)
    assert alerts[0].listener == lh and alerts[0].key == SRV and alerts[0].new_state is LatchState.ESTABLISHED
    assert alerts[0].reason is AlertReason.NEW_CONNECTION
    assert e.latches.inquire_latch(lh).state is LatchState.LISTENER


@conf(id="LATCH-07", rfc="RFC 5660 §2.3")
def test_latch_07_empty_sad_triggers_ike_failure_reported() -> None:
    e = IPsecEngine(ex.nfs_spd(), ex.btns_pad(), config=EngineConfig(acquire_timeout=2.0))
    alerts: list[Alert] = []
    h = e.connect(CLI, on_alert=alerts.append, now=0.0)
    assert CLI in e.key_manager.pending and e.latches.inquire_latch(h).state is LatchState.LARVAL
    e.poll(2.0)
    assert alerts[-1].new_state is LatchState.CLOSED
    assert alerts[-1].reason in (AlertReason.SA_SETUP_FAILED, AlertReason.SA_SETUP_TIMEOUT)


@conf(id="LATCH-08", rfc="RFC 5660 §2.3")
def test_latch_08_conflicting_sa_prevents_creation() -> None:
    e = server(narrow_conflicting_sas=False)
    e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(ROGUE), ex.btns_local(SERVER)), 0.0)
    with pytest.raises(LatchConflict):
        e.connect(SRV)


@conf(id="LATCH-09", rfc="RFC 5660 §2.3")
def test_latch_09_narrow_or_break_with_alert_before_install() -> None:
    alerts: list[Alert] = []
    e, h = latched_server(alerts)
    wide = Selector(local=ex.NET, remote=ex.NET, proto=6)
    got = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(ROGUE), ex.btns_local(SERVER), selectors=(wide,)), 1.0)
    assert got is not None and not got.carries(SRV) and alerts == []
    seen_in_sad: list[bool] = []
    before = len(e.sad)

    def on_alert(a: Alert) -> None:
        seen_in_sad.append(len(e.sad) > before)
        alerts.append(a)

    e.latches.set_alert_callback(h, on_alert)
    rogue = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(ROGUE), ex.btns_local(SERVER)), 2.0)
    assert rogue is not None and alerts[-1].new_state is LatchState.BROKEN
    assert seen_in_sad == [False]  # the holder heard of it before the SA was accepted


@conf(id="LATCH-10", rfc="RFC 5660 §2.2, §2.3, §5.5(a)")
def test_latch_10_broken_drops_both_ways_then_recovers() -> None:
    alerts: list[Alert] = []
    e, h = latched_server(alerts, narrow_conflicting_sas=False)
    e.latches.set_disposition(h, BrokenDisposition.WAIT)
    rogue = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(ROGUE), ex.btns_local(SERVER)), 1.0)
    good = next(sa for sa in e.sad if sa.peer == ex.btns_peer(CLIENT))
    assert e.outbound(SRV, 1.0).reason is DropReason.LATCH_BROKEN
    assert e.inbound(SRV, good, 1.0).reason is DropReason.LATCH_BROKEN
    assert rogue is not None
    e.delete_sa(rogue.sa_id, 2.0)
    assert alerts[-1].new_state is LatchState.ESTABLISHED and alerts[-1].disposition is BrokenDisposition.WAIT
    assert e.inbound(SRV, good, 2.0).accepted and e.outbound(SRV, 2.0).verdict is OutboundVerdict.PROTECT


@conf(id="LATCH-11", rfc="RFC 5660 §5.5")
def test_latch_11_default_disposition_is_reset() -> None:
    alerts: list[Alert] = []
    e, _ = latched_server(alerts, narrow_conflicting_sas=False)
    e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(ROGUE), ex.btns_local(SERVER)), 1.0)
    assert alerts[-1].new_state is LatchState.BROKEN and alerts[-1].disposition is BrokenDisposition.RESET


@conf(id="LATCH-12", rfc="RFC 5660 §2.2, §2.3")
def test_latch_12_admin_close() -> None:
    alerts: list[Alert] = []
    e, h = latched_server(alerts)
    e.latches.admin_close(h)
    assert alerts[-1].new_state is LatchState.CLOSED and alerts[-1].reason is AlertReason.ADMIN_CLOSE


@conf(id="LATCH-13", rfc="RFC 5660 §2.3, §3.1")
def test_latch_13_spd_change_break_or_pin_not_surviving_restart() -> None:
    alerts: list[Alert] = []
    e, h = latched_server(alerts)
    assert e.update_spd(ex.nfs_spd(SpdAction.BYPASS)) == [h]
    alerts2: list[Alert] = []
    e2, h2 = latched_server(alerts2, pin_on_spd_change=True)
    assert e2.update_spd(ex.nfs_spd(SpdAction.BYPASS)) == []
    assert e2.latches.inquire_latch(h2).state is LatchState.ESTABLISHED
    e2.restart_key_manager(1.0, restore_latches=True)
    assert all(x.origin is not EntryOrigin.PINNED_LATCH for x in e2.spd.overlay_entries().values())


@conf(id="LATCH-14", rfc="RFC 5660 §3.1, §2")
def test_latch_14_optional_protection_and_unprivileged_bypass_refused() -> None:
    e = IPsecEngine(ex.nfs_spd(SpdAction.BYPASS), ex.btns_pad(), provisions=[prov()])
    out = e.request_protection(CLI, FlowChoice.PROTECT, 0.0)
    entry = e.spd.overlay_entry(CLI)
    assert (
        out.ok
        and out.latch is not None
        and entry is not None
        and entry.selectors == (Selector.for_flow(CLI),)
    )
    e2 = IPsecEngine(ex.nfs_spd(), ex.btns_pad())
    with pytest.raises(PolicyRefused):
        e2.request_protection(CLI, FlowChoice.BYPASS, 0.0)


@conf(id="LATCH-15", rfc="RFC 5660 §2, §2.3")
def test_latch_15_restart_closes_and_forgets_dynamic_policy() -> None:
    alerts: list[Alert] = []
    e, _ = latched_server(alerts, pin_on_spd_change=True)
    e.update_spd(ex.nfs_spd(SpdAction.BYPASS))
    e.restart_key_manager(1.0, restore_latches=False)
    assert alerts[-1].reason is AlertReason.KEY_MANAGER_RESTART and len(e.latches) == 0
    assert e.spd.overlay_entries() == {} and e.backend_flow_policies() == {}


@conf(id="LATCH-16", rfc="RFC 5660 §2.6")
def test_latch_16_peer_id_store_corruption_closes() -> None:
    alerts: list[Alert] = []
    e, _ = latched_server(alerts)
    ref = next(iter(e.peer_ids._store))
    e.peer_ids._store[ref] = ex.btns_peer(ROGUE)
    assert e.check_peer_id_store() and alerts[-1].reason is AlertReason.PEER_ID_STORE_CORRUPTED
    assert alerts[-1].new_state is LatchState.CLOSED


@conf(id="LATCH-17", rfc="RFC 5660 §2, §6.5")
def test_latch_17_dpd_breaks_forever() -> None:
    alerts: list[Alert] = []
    e, h = latched_server(alerts)
    e.peer_dead(ex.btns_peer(CLIENT), 1.0)
    e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 2.0)
    assert (
        e.latches.inquire_latch(h).state is LatchState.BROKEN and alerts[-1].reason is AlertReason.PEER_DEAD
    )


@conf(id="LATCH-19", rfc="RFC 5660 §2.3, §5.1 (derived)")
def test_latch_19_time_wait_linger_and_fresh_latch() -> None:
    e = server()
    e.listen(LISTEN)
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    first = e.inbound(SRV, sa, 0.0, initiating=True).latch
    e.close_flow(SRV, 1.0)
    assert e.inbound(SRV, None, 1.01).reason is DropReason.LATCHED_FLOW_CLEARTEXT
    again = e.inbound(SRV, sa, 1.02, initiating=True).latch
    assert again is not None and again != first


@conf(id="LATCH-20", rfc="RFC 5386 §2")
def test_latch_20_pad_order_no_fallthrough_single_wildcard() -> None:
    btns = PadEntry("any", PublicKeyPattern(), AuthMethod.RAW_PUBLIC_KEY, ChildSaAuthorization((ex.NET,)))
    named = PadEntry(
        "q",
        IdPattern(IdType.ID_FQDN, b"q.example"),
        AuthMethod.CERTIFICATE,
        ChildSaAuthorization((AddressRange.single("192.0.2.10"),)),
        frozenset({"CA-X"}),
    )
    pad = PeerAuthorizationDatabase([btns, named])
    assert pad.entries == (named, btns)
    with pytest.raises(ValueError):
        pad.append(PadEntry("any2", PublicKeyPattern(), AuthMethod.RAW_PUBLIC_KEY, ChildSaAuthorization()))
    impostor = ex.cert_peer("q.example", 9, anchor="CA-EVIL")
    with pytest.raises(PeerNotAuthorized) as err:
        pad.authorize(impostor)
    assert err.value.notify is IkeNotify.AUTHENTICATION_FAILED
    assert pad.authorize(ex.btns_peer(4)).btns


@conf(id="LATCH-21", rfc="RFC 5386 §2, §3.3")
def test_latch_21_btns_only_on_btns_ok() -> None:
    e = IPsecEngine(ex.nfs_spd(btns_ok=False), ex.btns_pad())
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    assert e.inbound(SRV, sa, 0.0).reason is DropReason.SA_NOT_BTNS_OK
    e2 = server()
    sa2 = e2.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    assert e2.inbound(SRV, sa2, 0.0).accepted
    assert e2.outbound(ex.flow("192.0.2.1", 22, "192.0.2.2", 5000), 0.0).verdict is OutboundVerdict.BYPASS


@conf(id="LATCH-22", rfc="RFC 5386 §2")
def test_latch_22_btns_ts_overlapping_non_btns_rejected() -> None:
    q_net = AddressRange.single("192.0.2.10")
    e = IPsecEngine(ex.nfs_spd(), ex.btns_pad(cert_net=q_net))
    q_flow = ex.flow("192.0.2.1", 2049, "192.0.2.10", 40000)
    with pytest.raises(ChildSaRefused) as err:
        e.install_sa(ex.narrow_sa(q_flow, ex.btns_peer(ROGUE), ex.btns_local(SERVER)), 0.0)
    assert err.value.notify is IkeNotify.TS_UNACCEPTABLE


@conf(id="LATCH-23", rfc="RFC 7619 §2, §2.2, §2.5")
def test_latch_23_null_auth_rules() -> None:
    with pytest.raises(PeerNotAuthorized):  # a PAD that requires authentication refuses NULL
        PeerAuthorizationDatabase(ex.btns_pad()).authorize(ex.null_peer(1))
    pad = PeerAuthorizationDatabase(ex.null_pad())
    with pytest.raises(PeerNotAuthorized):
        pad.authorize(NullAuthPeer(IkeSaRef(1, 2), id_data=b"x"))
    m = pad.authorize(ex.null_peer(1))
    own = AddressRange.single("192.0.2.2").first
    pad.check_child_sa(m, own, [Selector.for_flow(SRV)])
    with pytest.raises(ChildSaRefused):
        pad.check_child_sa(m, own, [Selector(local=ex.NET, remote=AddressRange.single("192.0.2.53"))])


@conf(id="LATCH-24", rfc="RFC 7619 §2.2 + RFC 5660 §2 (derived)")
def test_latch_24_null_auth_new_ike_sa_breaks_and_no_cb() -> None:
    e = IPsecEngine(ex.nfs_spd(), ex.null_pad(), config=EngineConfig(narrow_conflicting_sas=False))
    alerts: list[Alert] = []
    local = ex.LocalIdentity(IkeId(IdType.ID_NULL), AuthMethod.NULL)
    e.install_sa(ex.narrow_sa(SRV, ex.null_peer(100), local), 0.0)
    h = e.connect(SRV, on_alert=alerts.append)
    e.install_sa(ex.narrow_sa(SRV, ex.null_peer(100), local), 1.0)  # rekey within the same IKE SA
    assert e.latches.inquire_latch(h).state is LatchState.ESTABLISHED
    e.install_sa(ex.narrow_sa(SRV, ex.null_peer(200), local), 2.0)  # a new IKE SA: unknown peer
    assert alerts[-1].new_state is LatchState.BROKEN
    e2 = IPsecEngine(ex.nfs_spd(), ex.null_pad())
    e2.install_sa(ex.narrow_sa(SRV, ex.null_peer(100), local), 0.0)
    with pytest.raises(ChannelBindingUnavailable):
        LatchChannel.for_latch(e2.latches, e2.connect(SRV), RpcRole.SERVER)


@conf(id="LATCH-25", rfc="RFC 7670 §3; RFC 5056 §2.1")
def test_latch_25_raw_key_peer_id_is_spki_and_cb_tracks_keys() -> None:
    def cb(client_key: int, server_key: int) -> bytes:
        e = server()
        e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(client_key), ex.btns_local(server_key)), 0.0)
        h = e.connect(SRV)
        info = e.latches.inquire_latch(h)
        assert info.params is not None and info.params.peer.public_key == ex.spki(client_key)
        return LatchChannel.for_latch(e.latches, h, RpcRole.SERVER).channel_bindings()

    base = cb(2, 1)
    assert cb(2, 1) == base and cb(4, 1) != base and cb(2, 4) != base


@conf(id="LATCH-26", rfc="RFC 5056 §2.1; RFC 5660 §2.1")
def test_latch_26_cb_prefix_and_same_at_both_ends_regardless_of_ike_role() -> None:
    srv = server()
    cli = server()
    # the server's SA records the client as IKE initiator, the client's the opposite; irrelevant
    srv.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER), ike_sa=IkeSaRef(1, 2)), 0.0)
    cli.install_sa(ex.narrow_sa(CLI, ex.btns_peer(SERVER), ex.btns_local(CLIENT), ike_sa=IkeSaRef(2, 1)), 0.0)
    a = LatchChannel.for_latch(srv.latches, srv.connect(SRV), RpcRole.SERVER).channel_bindings()
    b = LatchChannel.for_latch(cli.latches, cli.connect(CLI), RpcRole.CLIENT).channel_bindings()
    assert a == b and a.startswith(CB_PREFIX.encode("ascii") + b":")
    assert decode_binding_data(a[len(CB_PREFIX) + 1 :]) == (ex.spki(CLIENT), ex.spki(SERVER))


# -- approach 1 (RFC 5660 §2.4 informative model): the engine tells the TCB latches about §2 conflicts


def tcb_latched(
    breaks: list[UlpBreak], approach: Approach = Approach.ULP, **cfg: object
) -> tuple[IPsecEngine, UlpLatch, SecurityAssociation]:
    e = IPsecEngine(ex.nfs_spd(), ex.btns_pad(), config=EngineConfig(approach, **cfg))  # type: ignore[arg-type]
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    assert sa is not None
    tcb = UlpLatch(e, SRV, on_break=breaks.append)
    assert tcb.inbound(e.inbound(SRV, sa, 0.0, initiating=True)).deliver  # the SYN's tag latches
    return e, tcb, sa


# Approach-1 (TCB latch) tests: ids LATCH-A1-nn.
@conf(id="LATCH-A1-01", rfc="RFC 5660 §2, §2.4")
def test_latch_a1_01_approach1_conflicting_sa_breaks_tcb_latch_before_install() -> None:
    breaks: list[UlpBreak] = []
    e, tcb, sa = tcb_latched(breaks)
    seen_sad: list[int] = []
    tcb.on_break = lambda b: (seen_sad.append(len(e.sad)), breaks.append(b))  # type: ignore[func-returns-value]
    rogue = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(ROGUE), ex.btns_local(SERVER)), 1.0)
    assert rogue is not None
    assert seen_sad == [1]  # the application was told while only the latched SA was in the SAD
    assert [(b.reason, b.offending.peer if b.offending else None) for b in breaks] == [
        (UlpBreakReason.CONFLICTING_SA, ex.btns_peer(ROGUE))
    ]
    # nothing of the flow moves any more, whoever asks (the ULP, or the host answering with a RST)
    assert tcb.outbound(1.0).reason is DropReason.ULP_LATCH_BROKEN
    assert e.outbound(SRV, 1.0).reason is DropReason.LATCH_BROKEN
    assert not e.inbound(SRV, sa, 1.0).accepted and not e.inbound(SRV, rogue, 1.0).accepted
    # the DISCARD entry is torn down with the flow (RFC 5660 §2: dynamic policy dies with it)
    tcb.close(2.0)
    e.poll(2.0 + 300.0)
    assert e.spd.overlay_entry(SRV) is None


# formerly LATCH-28 (see above)
@conf(id="LATCH-A1-02", rfc="RFC 5660 §2, §2.3, §2.4")
def test_latch_a1_02_approach1_spd_change_breaks_or_pins_tcb_latch_not_surviving_restart() -> None:
    breaks: list[UlpBreak] = []
    e, _tcb, _sa = tcb_latched(breaks)
    e.update_spd(ex.nfs_spd(SpdAction.BYPASS))
    assert e.last_spd_breaks == [SRV] and [b.reason for b in breaks] == [UlpBreakReason.SPD_CHANGE]
    assert not e.outbound(SRV, 1.0).sendable  # never cleartext on the latched flow
    pinned_breaks: list[UlpBreak] = []
    e2, tcb2, sa2 = tcb_latched(pinned_breaks, pin_on_spd_change=True)
    e2.update_spd(ex.nfs_spd(SpdAction.BYPASS))
    overlay = e2.spd.overlay_entry(SRV)
    assert pinned_breaks == [] and overlay is not None and overlay.origin is EntryOrigin.PINNED_LATCH
    assert tcb2.outbound(1.0).sa is sa2
    # a key-manager restart never keeps the pin; unpinned, the TCB latch conflicts and breaks
    e2.restart_key_manager(2.0, restore_latches=True)
    assert all(x.origin is not EntryOrigin.PINNED_LATCH for x in e2.spd.overlay_entries().values())
    assert [b.reason for b in pinned_breaks] == [UlpBreakReason.SPD_CHANGE]


# -- RFC 5660 §2: the local identity is a latched parameter, in both approaches -------------------------


@pytest.mark.parametrize("approach", [Approach.ULP, Approach.POLICY], ids=["approach1", "approach2"])
@conf(id="LATCH-LOCAL-01", rfc="RFC 5660 §2 (local identity), §2.3, §2.4")
def test_latch_local_01_other_local_id_same_peer_is_a_conflict(approach: Approach) -> None:
    other_local = ex.btns_local(ROGUE)
    if approach is Approach.ULP:
        breaks: list[UlpBreak] = []
        e, tcb, _sa = tcb_latched(breaks, narrow_conflicting_sas=False)
        e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), other_local), 1.0)
        assert [b.reason for b in breaks] == [UlpBreakReason.CONFLICTING_SA]
        assert tcb.outbound(1.0).reason is DropReason.ULP_LATCH_BROKEN
    else:
        alerts: list[Alert] = []
        e, _h = latched_server(alerts, narrow_conflicting_sas=False)
        e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), other_local), 1.0)
        assert [(a.new_state, a.reason) for a in alerts] == [(LatchState.BROKEN, AlertReason.CONFLICTING_SA)]
        assert e.outbound(SRV, 1.0).reason is DropReason.LATCH_BROKEN
