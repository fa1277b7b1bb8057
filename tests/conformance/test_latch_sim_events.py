"""RFC 5660 latch events on the simulated network: listener alerts, conflicts, BROKEN handling,
restarts, DPD, simultaneous open, NULL auth, channel-binding symmetry (RFC 5660 §2, §2.3, §4;
RFC 5386 §2; RFC 7619 §2; RFC 5056 §2.1)."""

from __future__ import annotations

import pytest

from rpclatch.ipsec import examples
from rpclatch.ipsec.engine import Approach
from rpclatch.ipsec.errors import LatchExists
from rpclatch.ipsec.latch import AlertReason, BrokenDisposition, LatchRequest, LatchState
from rpclatch.ipsec.model import AddressRange, FiveTuple, NullAuthPeer, Selector, ThreeTuple
from rpclatch.ipsec.ulp import UlpBreakReason
from rpclatch.netsim.ike import host_to_host
from rpclatch.netsim.stack import ConnLatch
from rpclatch.netsim.stream import StreamEventKind, StreamState
from rpclatch.netsim.testing.lab import Lab
from rpclatch.netsim.testing.wireview import cleartext_after, flow_packets, leaked

BOTH = pytest.mark.parametrize("approach", [Approach.ULP, Approach.POLICY], ids=["approach1", "approach2"])


@pytest.mark.conformance(id="LATCH-06", rfc="RFC 5660 §2.3 (T1, T2)")
def test_listener_latch_alerts_its_holder_on_each_new_connection() -> None:
    lab = Lab.build()
    lst = lab.listen()
    assert lst.latch is not None
    with pytest.raises(LatchExists):
        lab.stack(lab.b).engine.listen(ThreeTuple(lab.b.address, 2049, 6))
    _c1, s1 = lab.open(local_port=41000)
    _c2, s2 = lab.open(local_port=41001)
    assert s1 is not None and s2 is not None
    news = [a for a in lst.alerts if a.reason is AlertReason.NEW_CONNECTION]
    assert [a.key for a in news] == [s1.flow, s2.flow]
    assert all(a.listener == lst.latch and a.new_state is LatchState.ESTABLISHED for a in news)
    # the listener itself stays LISTENER
    info = lab.stack(lab.b).engine.latches.inquire_latch(lst.latch)
    assert info.state is LatchState.LISTENER


@pytest.mark.conformance(id="LATCH-08", rfc="RFC 5660 §2.3")
def test_latch_creation_fails_while_conflicting_sas_exist() -> None:
    lab = Lab.build()
    lab.listen()
    c = lab.attacker("c")
    c.claim_address(lab.b.address)
    # C (claiming B's address) gets host-to-host SAs with A first; then B takes its address back
    lab.stack(c).ike.initiate(lab.b.address, lab.a.address, (host_to_host(lab.b.address, lab.a.address),))
    lab.net.run_for(0.5)
    lab.b.claim_address(lab.b.address)
    # B also negotiates host-to-host SAs with A: two SAs with different peers now carry a->b:2049
    lab.stack(lab.b).ike.narrow = False
    h2h = host_to_host(lab.b.address, lab.a.address)
    lab.stack(lab.b).ike.initiate(lab.b.address, lab.a.address, (h2h,))
    lab.net.run_for(0.5)
    assert len({sa.peer for sa in lab.stack(lab.a).engine.sad}) == 2
    client, _server = lab.open(local_port=42000)
    assert client.kinds() == [StreamEventKind.FAILED] and "not latched" in str(client.events[0].detail)
    assert flow_packets(lab.net.hub, client.flow) == []


@pytest.mark.conformance(id="LATCH-09", rfc="RFC 5660 §2.3")
def test_conflicting_proposal_narrowed_or_breaks_with_alert_first() -> None:
    lab = Lab.build()
    client, server = lab.open(local_port=43000)
    assert server is not None
    c = lab.attacker("c")
    c.claim_address(lab.b.address)
    ike_c = lab.stack(c).ike
    # 1. narrowable: a host-to-host proposal is narrowed around the latched 5-tuple
    ike_c.initiate(lab.b.address, lab.a.address, (host_to_host(lab.b.address, lab.a.address),))
    lab.net.run_for(0.5)
    assert lab.stack(lab.a).latch_state(client) is LatchState.ESTABLISHED
    narrowed = [
        sa
        for sa in lab.stack(lab.a).engine.sad
        if sa.remote_addr == lab.b.address and sa.peer != client.channel.params.peer
    ]
    assert narrowed and not narrowed[0].carries(client.flow)
    # 2. not narrowable: the exact 5-tuple -> BROKEN, ALERT delivered before the SA is installed
    sad = lab.stack(lab.a).engine.sad
    seen: list[int] = []
    prev = client.on_event

    def spy(conn, ev):  # type: ignore[no-untyped-def]
        if ev.kind is StreamEventKind.LATCH:
            seen.append(len(sad))
        if prev:
            prev(conn, ev)

    client.on_event = spy
    before = len(sad)
    ike_c.initiate(lab.b.address, lab.a.address, (Selector.for_flow(client.flow.reversed()),))
    lab.net.run_for(0.5)
    assert seen == [before] and len(sad) == before + 1
    assert client.latch_info.alerts[-1].reason is AlertReason.CONFLICTING_SA  # type: ignore[union-attr]


@pytest.mark.conformance(id="LATCH-10", rfc="RFC 5660 §2.2, §2.3, §5.5 (a)")
def test_wait_disposition_suspends_then_resumes() -> None:
    lab = Lab.build()
    lab.listen(disposition=BrokenDisposition.WAIT)
    client, server = lab.open(local_port=44000, request=LatchRequest(disposition=BrokenDisposition.WAIT))
    assert server is not None
    c = lab.attacker("c")
    c.claim_address(lab.a.address)
    lab.stack(c).ike.initiate(lab.a.address, lab.b.address, (Selector.for_flow(client.flow),))
    lab.net.run_for(0.5)
    assert lab.stack(lab.b).latch_state(server) is LatchState.BROKEN
    assert server.state is StreamState.ESTABLISHED
    c.release_address(lab.a.address)
    lab.a.claim_address(lab.a.address)
    t_broken = lab.net.now
    client.send(b"during break")
    lab.net.run_for(1.0)
    assert bytes(server.received) == b""  # input dropped while BROKEN
    sent_by_b = [p for p in flow_packets(lab.net.hub, client.flow) if p.sender == "b" and p.time >= t_broken]
    assert sent_by_b == []  # and nothing sent
    # the conflict goes away (C's SA deleted): back to ESTABLISHED, retransmission delivers
    for sa in list(lab.stack(lab.b).engine.sad):
        if sa.peer != server.channel.params.peer:
            lab.stack(lab.b).ike.remove_child(sa.sa_id)
    lab.net.run_for(3.0)
    assert lab.stack(lab.b).latch_state(server) is LatchState.ESTABLISHED
    assert bytes(server.received) == b"during break"
    assert not server.channel.is_up()  # a channel that broke once needs a new binding


@BOTH
@pytest.mark.conformance(id="LATCH-15", rfc="RFC 5660 §2, §2.3")
def test_key_manager_restart_closes_latches_and_clears_dynamic_policy(approach: Approach) -> None:
    lab = Lab.build(
        approach=approach,
        spd=examples.nfs_spd(
            __import__("rpclatch.ipsec.spd", fromlist=["SpdAction"]).SpdAction.BYPASS_OR_PROTECT
        ),
    )
    client, server = lab.open(protect=True)
    assert server is not None
    eng = lab.stack(lab.a).engine
    assert eng.spd.overlay_entry(client.flow) is not None
    eng.restart_key_manager(lab.net.now, restore_latches=False)
    assert eng.spd.overlay_entries() == {} and len(eng.sad) == 0
    if approach is Approach.POLICY:
        assert client.state is StreamState.CLOSED and client.kinds()[-1] is StreamEventKind.RESET
    assert leaked(lab.net.hub, client.flow, {"a", "b"}) == []


@pytest.mark.conformance(id="LATCH-16", rfc="RFC 5660 §2.6")
def test_peer_id_store_corruption_closes_latches() -> None:
    lab = Lab.build()
    client, _server = lab.open()
    eng = lab.stack(lab.a).engine
    store = eng.peer_ids._store
    ref = next(iter(store))
    store[ref] = NullAuthPeer(__import__("rpclatch.ipsec.model", fromlist=["IkeSaRef"]).IkeSaRef(1, 2))
    closed = eng.check_peer_id_store()
    assert closed and client.state is StreamState.CLOSED and client.kinds()[-1] is StreamEventKind.RESET


@BOTH
@pytest.mark.conformance(id="LATCH-17", rfc="RFC 5660 §2, §6.5")
def test_dpd_peer_dead_breaks_all_latches_with_that_peer(approach: Approach) -> None:
    lab = Lab.build(approach=approach)
    c1, _ = lab.open(local_port=45000)
    c2, _ = lab.open(local_port=45001)
    other, _ = lab.open(4000, local_port=45002)  # bypassed flow: not latched, unaffected
    lab.stack(lab.a).ike.start_dpd(interval=0.5, max_misses=2)
    lab.stack(lab.b).ike.mode = __import__("rpclatch.netsim.ike", fromlist=["IkeMode"]).IkeMode.ABSENT
    lab.net.run_for(5.0)
    for conn in (c1, c2):
        assert conn.kinds()[-1] is StreamEventKind.RESET
        cl = conn.latch_info
        assert isinstance(cl, ConnLatch)
        if approach is Approach.POLICY:
            assert any(a.reason is AlertReason.PEER_DEAD for a in cl.alerts)
        else:  # the TCB latch was broken through UlpLatch.break_latch, so the app was told why
            assert [b.reason for b in cl.ulp_breaks] == [UlpBreakReason.PEER_DEAD]
    assert other.state is StreamState.ESTABLISHED


@pytest.mark.parametrize("equal", [True, False], ids=["equal-params", "unequal-params"])
@pytest.mark.conformance(id="LATCH-18", rfc="RFC 5660 §4")
def test_simultaneous_open(equal: bool) -> None:
    lab = Lab.build()
    if not equal:
        from rpclatch.ipsec.model import AES_GCM_128, AES_GCM_256, ProtectionPolicy

        lab.stack(lab.a).ike.key_bits = 256
        lab.stack(lab.b).ike.key_bits = 128
        req_a = LatchRequest(policy=ProtectionPolicy(suites=(AES_GCM_256,)))
        req_b = LatchRequest(policy=ProtectionPolicy(suites=(AES_GCM_128,)))
    else:
        req_a = req_b = None
    ca = lab.a.connect(lab.b.address, 2049, local_port=2049, request=req_a)
    cb = lab.b.connect(lab.a.address, 2049, local_port=2049, request=req_b)
    lab.net.run_for(5.0)
    both = [ca.state is StreamState.ESTABLISHED, cb.state is StreamState.ESTABLISHED]
    if equal:
        assert all(both)
        ca.send(b"x")
        lab.net.run_for(0.5)
        assert bytes(cb.received) == b"x"
    else:
        assert not all(both)
        assert StreamEventKind.FAILED in ca.kinds() + cb.kinds()  # the app is told
        # ... by the latch database, with the reason: the negotiated SAs cannot serve the latch
        latches = [c.latch_info for c in (ca, cb) if isinstance(c.latch_info, ConnLatch)]
        reasons = [a.reason for cl in latches for a in cl.alerts]
        assert AlertReason.SA_UNSUITABLE in reasons
    f = FiveTuple(lab.a.address, 2049, lab.b.address, 2049, 6)
    assert cleartext_after(lab.net.hub, f, 0.0) == []


@pytest.mark.conformance(id="LATCH-22", rfc="RFC 5386 §2")
def test_btns_peer_ts_overlapping_non_btns_entry_is_rejected_on_the_wire() -> None:
    from rpclatch.ipsec.model import AuthMethod, IdType
    from rpclatch.ipsec.pad import ChildSaAuthorization, IdPattern, PadEntry, PublicKeyPattern

    net = AddressRange.network("192.0.2.0/24")
    pad = [
        PadEntry(
            "servers",
            IdPattern(IdType.ID_FQDN, b"srv.example"),
            AuthMethod.CERTIFICATE,
            ChildSaAuthorization((AddressRange.network("192.0.2.0/30"),)),
            frozenset({"CA-X"}),
        ),
        PadEntry("btns-any", PublicKeyPattern(), AuthMethod.RAW_PUBLIC_KEY, ChildSaAuthorization((net,))),
    ]
    lab = Lab.build(pad=pad)
    client, server = lab.open()
    # A's own address (192.0.2.1) is inside the non-BTNS entry's range: its BTNS proposal is refused
    assert client.kinds() == [StreamEventKind.FAILED] and server is None
    assert any("TS_UNACCEPTABLE" in text for _, text in lab.stack(lab.a).ike.events)


@pytest.mark.conformance(id="LATCH-23", rfc="RFC 7619 §2, §2.2, §2.5")
def test_null_auth_refused_where_authentication_is_required() -> None:
    lab = Lab.build(client_credentials="null")  # server PAD: BTNS keys only
    client, server = lab.open()
    assert client.kinds() == [StreamEventKind.FAILED] and server is None
    assert any("AUTHENTICATION_FAILED" in text for _, text in lab.stack(lab.a).ike.events)


@pytest.mark.conformance(id="LATCH-24", rfc="RFC 7619 §2.2/§2.3; RFC 5660 §2")
def test_null_auth_latch_breaks_on_new_ike_sa_and_offers_no_binding() -> None:
    lab = Lab.build(pad=examples.null_pad(), client_credentials="null", server_credentials="null")
    client, server = lab.open(local_port=46000)
    assert client.state is StreamState.ESTABLISHED and server is not None
    assert client.channel is None and client.latch_info.binding_unavailable  # type: ignore[union-attr]
    # the same NULL peer (same address, same daemon) makes a *new* IKE SA for the 5-tuple
    lab.stack(lab.a).ike.initiate(lab.a.address, lab.b.address, (Selector.for_flow(client.flow),))
    lab.net.run_for(0.5)
    assert StreamEventKind.RESET in server.kinds()


@pytest.mark.conformance(id="LATCH-26", rfc="RFC 5056 §2.1; RFC 5660 §2.1")
def test_binding_is_identical_at_both_ends_whoever_initiated_ike() -> None:
    lab = Lab.build()
    lab.stack(lab.a).ike.narrow = False
    c1, s1 = lab.open(local_port=47000)  # A initiated IKE
    lab2 = Lab.build(seed=1)
    lab2.stack(lab2.b).ike.initiate(
        lab2.b.address, lab2.a.address, (host_to_host(lab2.b.address, lab2.a.address),)
    )
    lab2.net.run_for(0.5)
    c2, s2 = lab2.open(local_port=47000)  # B initiated IKE; A reuses the SAs
    assert len(lab2.stack(lab2.a).ike.ike_sas) == 1
    for c, s in ((c1, s1), (c2, s2)):
        assert c.channel is not None and s is not None and s.channel is not None
        assert c.channel.binding_data == s.channel.binding_data
    assert c1.channel.binding_data == c2.channel.binding_data  # same keys, same roles -> same CB


@BOTH
@pytest.mark.conformance(id="LATCH-10c", rfc="RFC 5660 §5.5 (c); RFC 1122 §4.2.3.9")
def test_LATCH_10c_icmp_unreachable_disposition_is_a_soft_error(approach: Approach) -> None:
    """Disposition (c): the BROKEN latch acts as an ICMP destination unreachable. As for TCP's soft
    ICMP errors the connection is not reset; the application gets a SOFT_ERROR event (and
    ``soft_error``), and no data flows in either direction while the latch is BROKEN."""
    lab = Lab.build(approach=approach)
    lab.listen(disposition=BrokenDisposition.ICMP_UNREACHABLE)
    client, server = lab.open(
        local_port=44100, request=LatchRequest(disposition=BrokenDisposition.ICMP_UNREACHABLE)
    )
    assert server is not None and server.soft_error is None
    c = lab.attacker("c")
    c.claim_address(lab.a.address)
    lab.stack(c).ike.initiate(lab.a.address, lab.b.address, (Selector.for_flow(client.flow),))
    lab.net.run_for(0.5)
    assert lab.stack(lab.b).latch_state(server) is LatchState.BROKEN
    soft = [e for e in server.events if e.kind is StreamEventKind.SOFT_ERROR]
    assert len(soft) == 1 and "unreachable" in soft[0].detail
    assert server.soft_error == soft[0].detail
    # not reset: the connection is still open (unlike the default, LATCH-09/§5.5 (b))
    assert server.state is StreamState.ESTABLISHED and StreamEventKind.RESET not in server.kinds()
    c.release_address(lab.a.address)
    lab.a.claim_address(lab.a.address)
    t_broken = lab.net.now
    client.send(b"during break")
    server.send(b"reply during break")
    lab.net.run_for(1.0)
    assert bytes(server.received) == b""  # input dropped while BROKEN
    sent_by_b = [p for p in flow_packets(lab.net.hub, client.flow) if p.sender == "b" and p.time >= t_broken]
    assert sent_by_b == []  # and nothing sent
    assert server.state is StreamState.ESTABLISHED


@pytest.mark.conformance(id="LATCH-10d", rfc="RFC 5660 §5.5 (c), §2.3 (T5)")
def test_LATCH_10d_soft_error_clears_when_the_latch_is_established_again() -> None:
    lab = Lab.build()
    lab.listen(disposition=BrokenDisposition.ICMP_UNREACHABLE)
    client, server = lab.open(local_port=44101)
    assert server is not None
    c = lab.attacker("c")
    c.claim_address(lab.a.address)
    lab.stack(c).ike.initiate(lab.a.address, lab.b.address, (Selector.for_flow(client.flow),))
    lab.net.run_for(0.5)
    assert server.soft_error is not None
    c.release_address(lab.a.address)
    lab.a.claim_address(lab.a.address)
    client.send(b"during break")
    for sa in list(lab.stack(lab.b).engine.sad):
        if sa.peer != server.channel.params.peer:
            lab.stack(lab.b).ike.remove_child(sa.sa_id)
    lab.net.run_for(3.0)
    assert lab.stack(lab.b).latch_state(server) is LatchState.ESTABLISHED and server.soft_error is None
    assert bytes(server.received) == b"during break"
