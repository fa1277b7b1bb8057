"""The attack scenarios A1-A17 of docs/design.md on the simulated network, both latching designs
where the scenario applies. Every test asserts on the simulated wire: no payload byte of a latched
flow is readable by a host other than its two ends, nothing is sent in the clear after latching,
and the application sees the documented outcome (mostly: a reset, RFC 5660 §5.5 (b))."""

from __future__ import annotations

import pytest

from rpclatch.ipsec import examples
from rpclatch.ipsec.engine import Approach, EngineConfig
from rpclatch.ipsec.ike import NotifyType
from rpclatch.ipsec.ike import wire as ikewire
from rpclatch.ipsec.ike.crypto import SkCipher
from rpclatch.ipsec.latch import AlertReason, LatchState
from rpclatch.ipsec.model import (
    AddressRange,
    AuthMethod,
    FiveTuple,
    IdType,
    IpProto,
    PortRange,
    ProtectionPolicy,
    RawPublicKeyPeer,
    Selector,
)
from rpclatch.ipsec.pad import (
    ChildSaAuthorization,
    IdMatch,
    IdPattern,
    PadEntry,
    PublicKeyPattern,
)
from rpclatch.ipsec.spd import EntryOrigin, SpdAction, SpdEntry
from rpclatch.ipsec.ulp import UlpBreakReason
from rpclatch.netsim.errors import SimLocalError
from rpclatch.netsim.ike import host_to_host
from rpclatch.netsim.stack import ConnLatch
from rpclatch.netsim.stream import StreamEvent, StreamEventKind, StreamState
from rpclatch.netsim.tcp import Flags
from rpclatch.netsim.testing.lab import Lab
from rpclatch.netsim.testing.wireview import (
    cleartext_after,
    decode_wire,
    leaked,
)

BOTH = pytest.mark.parametrize("approach", [Approach.ULP, Approach.POLICY], ids=["approach1", "approach2"])
NET = AddressRange.network("192.0.2.0/24")


def _rfc5660_example_spd() -> list[SpdEntry]:
    """RFC 5660 §2.3.2: PROTECT(ESP) TCP ports 1-5000 within 192.0.2/24; everything else BYPASS."""
    ports = PortRange(1, 5000)
    return [
        SpdEntry(
            "tcp-1-5000",
            (
                Selector(NET, NET, IpProto.TCP, local_ports=ports),
                Selector(NET, NET, IpProto.TCP, remote_ports=ports),
            ),
            SpdAction.PROTECT,
            ProtectionPolicy(),
        ),
        SpdEntry("rest", (Selector(),), SpdAction.BYPASS),
    ]


def _ca_pad() -> list[PadEntry]:
    """RFC 5660 §2.3.2 / Figure 3: any certificate from CA X may claim any address in 192.0.2/24."""
    return [
        PadEntry(
            "ca-x",
            IdPattern(IdType.ID_FQDN, b"example", IdMatch.SUFFIX),
            AuthMethod.CERTIFICATE,
            ChildSaAuthorization((NET,)),
            frozenset({"CA-X"}),
        )
    ]


def _ca_lab(approach: Approach) -> Lab:
    lab = Lab.build(approach=approach, spd=_rfc5660_example_spd(), pad=_ca_pad())
    ca = lab.net.ca("CA-X")
    for host, name in ((lab.a, "a.example"), (lab.b, "b.example")):
        st = lab.stack(host)
        st.ike.credentials = lab.net.credentials("cert", ca=ca, subject=name)
        st.ike.anchors = {"CA-X": ca}
    lab.ca = ca  # type: ignore[attr-defined]
    return lab


def _cert_attacker(lab: Lab, name: str = "c", addr: str = "192.0.2.66"):  # type: ignore[no-untyped-def]
    ca = lab.ca  # type: ignore[attr-defined]
    c = lab.attacker(name, addr, credentials=lab.net.credentials("cert", ca=ca, subject=f"{name}.example"))
    lab.stack(c).ike.anchors = {"CA-X": ca}
    return c


def _record_sad_size_at_alert(conn, stack) -> list[int]:  # type: ignore[no-untyped-def]
    sizes: list[int] = []
    previous = conn.on_event

    def spy(c, ev: StreamEvent) -> None:  # type: ignore[no-untyped-def]
        if ev.kind is StreamEventKind.LATCH:
            sizes.append(len(stack.engine.sad))
        if previous is not None:
            previous(c, ev)

    conn.on_event = spy
    return sizes


# -- A1 / A2: aggregated PAD, address claim -------------------------------------------------------


@BOTH
@pytest.mark.conformance(id="LATCH-A01", rfc="RFC 5660 §2.3.2, §1, §2.3")
def test_a1_co_tenant_claims_server_address_exact_ts_breaks_client_latch(approach: Approach) -> None:
    lab = _ca_lab(approach)
    client, server = lab.open(4000, local_port=32800)
    assert client.state is StreamState.ESTABLISHED and server is not None
    lab.send(client, b"before")
    c = _cert_attacker(lab)
    sizes = _record_sad_size_at_alert(client, lab.stack(lab.a))
    sad_before = len(lab.stack(lab.a).engine.sad)
    c.claim_address(lab.b.address)
    lab.stack(c).ike.initiate(lab.b.address, lab.a.address, (Selector.for_flow(client.flow.reversed()),))
    lab.net.run_for(0.5)
    c.inject_protected(
        lab.b.address,
        4000,
        lab.a.address,
        32800,
        seq=client.rcv_nxt,
        ack=client.snd_nxt,
        flags=Flags.ACK | Flags.PSH,
        payload=b"FROM-C",
    )
    lab.net.run_for(0.5)
    assert b"FROM-C" not in bytes(client.received)
    assert leaked(lab.net.hub, client.flow, {"a", "b"}) == []
    assert cleartext_after(lab.net.hub, client.flow, 0.0) == []
    # ALERT before the conflicting SA was accepted (RFC 5660 §2.3), then reset (§5.5 (b)); in
    # approach 1 the engine tells the TCB latch (RFC 5660 §2: a non-congruent SA is a conflict)
    assert sizes and sizes[0] == sad_before
    assert client.kinds()[-2:] == [StreamEventKind.LATCH, StreamEventKind.RESET]
    cl = client.latch_info
    assert isinstance(cl, ConnLatch)
    if approach is Approach.ULP:
        assert [b.reason for b in cl.ulp_breaks] == [UlpBreakReason.CONFLICTING_SA]
        assert cl.channel is not None and not cl.channel.is_up()
    else:
        assert any(a.reason is AlertReason.CONFLICTING_SA for a in cl.alerts)


@BOTH
@pytest.mark.conformance(id="LATCH-A01b", rfc="RFC 5660 §2.3 (narrowing, RFC 7296 §2.9)")
def test_a1_wide_proposal_is_narrowed_and_latch_survives(approach: Approach) -> None:
    lab = _ca_lab(approach)
    client, server = lab.open(4000, local_port=32800)
    assert server is not None
    c = _cert_attacker(lab)
    c.claim_address(lab.b.address)
    lab.stack(c).ike.initiate(lab.b.address, lab.a.address, (host_to_host(lab.b.address, lab.a.address),))
    lab.net.run_for(0.5)
    c_sas = [sa for sa in lab.stack(lab.a).engine.sad if sa.peer != client.channel.params.peer]
    assert c_sas
    # narrowed around the latch: by the LD (approach 2), by the engine for the TCB latch (approach 1)
    assert not any(sa.carries(client.flow) for sa in c_sas)
    assert lab.stack(lab.a).latch_state(client) is LatchState.ESTABLISHED
    c.inject_protected(
        lab.b.address,
        4000,
        lab.a.address,
        32800,
        seq=client.rcv_nxt,
        ack=client.snd_nxt,
        flags=Flags.ACK | Flags.PSH,
        payload=b"FROM-C",
    )
    lab.net.run_for(0.5)
    assert bytes(client.received) == b""
    c.release_address(lab.b.address)
    lab.b.claim_address(lab.b.address)  # B re-announces itself (gratuitous ARP)
    lab.send(client, b"still B", settle=3.0)
    assert bytes(server.received) == b"still B"
    assert leaked(lab.net.hub, client.flow, {"a", "b"}) == []


@pytest.mark.conformance(id="LATCH-A02", rfc="RFC 5660 §2.3.2")
def test_a2_co_tenant_impersonates_client_to_server() -> None:
    lab = _ca_lab(Approach.POLICY)
    client, server = lab.open(4000, local_port=32800)
    assert server is not None and server.channel is not None and server.channel.is_up()
    c = _cert_attacker(lab)
    c.claim_address(lab.a.address)
    lab.stack(c).ike.initiate(lab.a.address, lab.b.address, (Selector.for_flow(client.flow),))
    lab.net.run_for(0.5)
    assert StreamEventKind.RESET in server.kinds()
    assert not server.channel.is_up()  # channel_prot bound to it must stop (RFC 5403 §3.4)
    assert leaked(lab.net.hub, client.flow, {"a", "b"}) == []


# -- A3: BTNS peer asserts another BTNS peer's address ---------------------------------------------


@BOTH
@pytest.mark.conformance(id="LATCH-A03", rfc="RFC 5386 §3.1; RFC 5660 §2.3")
def test_a3_rogue_btns_peer_claims_client_address(approach: Approach) -> None:
    lab = Lab.build(approach=approach)
    client, server = lab.open(local_port=33000)
    assert server is not None
    lab.send(client, b"hello")
    r = lab.attacker("r")
    r.claim_address(lab.a.address)
    lab.stack(r).ike.initiate(lab.a.address, lab.b.address, (Selector.for_flow(client.flow),))
    lab.net.run_for(0.5)
    server.send(b"secret reply") if server.is_open else None
    lab.net.run_for(1.0)
    assert leaked(lab.net.hub, client.flow, {"a", "b"}) == []
    if approach is Approach.POLICY:
        assert StreamEventKind.RESET in server.kinds()
    # R's own new connection gets its own latch with R's key
    rconn = r.connect(lab.b.address, 2049, local_addr="192.0.2.66")
    lab.net.run_for(1.0)
    assert rconn.state is StreamState.ESTABLISHED and rconn.channel is not None
    new_server = lab.listeners[2049].accepted[-1]
    assert new_server.flow.remote_addr == r.addresses[0]
    peer = new_server.channel.params.peer
    assert isinstance(peer, RawPublicKeyPeer) and peer.spki_der == lab.stack(r).ike.credentials.spki


# -- A4 / A5: PAD refuses unauthenticated address claims --------------------------------------------


@pytest.mark.conformance(id="LATCH-A04", rfc="RFC 5386 §2, §3.1; RFC 4301 §4.4.3.4")
def test_a4_btns_node_cannot_claim_a_non_btns_peers_address() -> None:
    q_net = AddressRange.network("192.0.2.128/25")
    pad = [
        PadEntry(
            "q",
            IdPattern(IdType.ID_FQDN, b"q.example"),
            AuthMethod.CERTIFICATE,
            ChildSaAuthorization((q_net,)),
            frozenset({"CA-X"}),
        ),
        PadEntry("btns-any", PublicKeyPattern(), AuthMethod.RAW_PUBLIC_KEY, ChildSaAuthorization((NET,))),
    ]
    lab = Lab.build(pad=pad)
    rogue = lab.attacker("r")
    q_addr = "192.0.2.130"
    rogue.claim_address(q_addr)
    results: list[object] = []
    daemon = lab.stack(rogue).ike
    spi = daemon.initiate(
        rogue.addresses[-1],
        lab.b.address,
        (host_to_host(rogue.addresses[-1], lab.b.address),),
        on_done=lambda sa, why: results.append((sa, why)),
    )
    (ike_sa,) = [sa for sa in daemon.endpoints[rogue.addresses[-1]].dispatcher.sas if sa.spi_i == spi]
    lab.net.run_for(1.0)
    assert results and results[0][0] is None and "TS_UNACCEPTABLE" in str(results[0][1])
    assert len(lab.stack(lab.b).engine.sad) == 0
    assert any("refused by us: TS_UNACCEPTABLE" in text for _, text in lab.stack(lab.b).ike.events)
    # on the wire: B's IKE_AUTH answer (decrypted with the IKE SA's keys) refuses the CHILD_SA
    # with TS_UNACCEPTABLE and carries no SA or TS payload (RFC 7296 §1.2)
    assert ike_sa.keys is not None
    answers = []
    for p in decode_wire(lab.net.hub):
        if not (p.ike and p.sender == "b"):
            continue
        data = p.record.packet().payload[8:]  # type: ignore[union-attr]
        msg = ikewire.decode_message(data)
        if msg.header.exchange == ikewire.ExchangeType.IKE_AUTH:
            sk = msg.payloads[-1]
            assert isinstance(sk, ikewire.EncryptedPayload)
            answers.append(SkCipher.inbound(ike_sa.keys, True).open(data, sk))
    assert answers
    for inner in answers:
        assert NotifyType.TS_UNACCEPTABLE in ikewire.notify_payloads(inner)
        assert not any(isinstance(x, ikewire.SaPayload | ikewire.TsPayload) for x in inner)


@pytest.mark.conformance(id="LATCH-A05", rfc="RFC 7619 §2.5")
def test_a5_null_auth_peer_cannot_claim_third_party_traffic() -> None:
    lab = Lab.build(pad=examples.null_pad(), client_credentials="null", server_credentials="null")
    n = lab.attacker("n", credentials=lab.net.credentials("null"), pad=examples.null_pad())
    results: list[object] = []
    dns = "192.0.2.1"  # a third party's address (the client's)
    lab.stack(n).ike.initiate(
        n.addresses[0],
        lab.b.address,
        (Selector(AddressRange.network("192.0.2.0/26"), AddressRange.single(lab.b.address)),),
        on_done=lambda sa, why: results.append((sa, why)),
    )
    lab.net.run_for(1.0)
    assert results and results[0][0] is None
    assert not any(
        sa.carries(FiveTuple.of(lab.b.address, 53, dns, 53, IpProto.UDP))
        for sa in lab.stack(lab.b).engine.sad
    )
    # its own address is fine: host-to-host only
    lab.stack(n).ike.initiate(
        n.addresses[0],
        lab.b.address,
        (host_to_host(n.addresses[0], lab.b.address),),
        on_done=lambda sa, why: results.append((sa, why)),
    )
    lab.net.run_for(1.0)
    assert results[-1][0] is not None


# -- A6: address reuse ---------------------------------------------------------------------------------


@pytest.mark.conformance(id="LATCH-A06", rfc="RFC 4301 §4.4.2; RFC 5387 §2.1.1; RFC 5660 §2.3")
def test_a6_address_reuse_breaks_the_old_latch() -> None:
    lab = Lab.build()
    client, server = lab.open(local_port=34000)
    assert server is not None
    addr1 = lab.a.address
    lab.a.release_address(addr1)  # A leaves the network
    c = lab.attacker("c", "192.0.2.67")
    c.claim_address(addr1)  # DHCP hands A's address to C
    lab.stack(c).ike.initiate(addr1, lab.b.address, (Selector.for_flow(client.flow),))
    lab.net.run_for(0.5)
    assert (
        lab.stack(lab.b).latch_state(server) is LatchState.CLOSED or StreamEventKind.RESET in server.kinds()
    )
    assert any(a.reason is AlertReason.CONFLICTING_SA for a in server.latch_info.alerts)  # type: ignore[union-attr]
    assert leaked(lab.net.hub, client.flow, {"a", "b"}) == []


# -- A7: policy reconfiguration mid-flow --------------------------------------------------------------------


@BOTH
@pytest.mark.conformance(id="LATCH-A07", rfc="RFC 5660 §1, §2.3")
def test_a7_policy_switched_to_bypass_mid_flow_breaks_the_latch(approach: Approach) -> None:
    """REQUIRED: the admin's switch of 2049 to BYPASS while data is in flight breaks the latch
    (ALERT / TCB break, reset by default) and not one segment of the flow goes out in the clear."""
    lab = Lab.build(approach=approach)
    client, server = lab.open(local_port=34700)
    assert server is not None
    lab.send(client, b"before the change")
    assert bytes(server.received) == b"before the change"
    client.send(b"in flight when the admin acts" * 50)
    t0 = lab.net.now
    broken = lab.stack(lab.a).engine.update_spd(examples.nfs_spd(SpdAction.BYPASS))
    breaks = lab.stack(lab.a).engine.last_spd_breaks
    assert broken or client.flow in breaks
    cl = client.latch_info
    assert isinstance(cl, ConnLatch) and (
        any(a.new_state.value == "BROKEN" for a in cl.alerts) or cl.ulp_breaks
    )
    assert StreamEventKind.RESET in client.kinds()
    lab.net.run_for(2.0)
    assert cleartext_after(lab.net.hub, client.flow, t0) == []
    assert leaked(lab.net.hub, client.flow, {"a", "b"}) == []
    with pytest.raises(SimLocalError):
        client.send(b"after the change")


@pytest.mark.conformance(id="LATCH-A07b", rfc="RFC 5660 §2.3 (OPTIONAL logical 5-tuple entry)")
def test_a7_pinned_latch_survives_the_change_until_restart() -> None:
    """OPTIONAL: a logical 5-tuple PROTECT entry keeps the latch ESTABLISHED through the change
    (data keeps flowing, protected); the entry is gone after a key-manager restart."""
    lab = Lab.build(config=EngineConfig(approach=Approach.POLICY, pin_on_spd_change=True))
    client, server = lab.open(local_port=34701)
    assert server is not None
    t0 = lab.net.now
    assert lab.stack(lab.a).engine.update_spd(examples.nfs_spd(SpdAction.BYPASS)) == []
    pinned = lab.stack(lab.a).engine.spd.overlay_entry(client.flow)
    assert pinned is not None and pinned.origin is EntryOrigin.PINNED_LATCH
    lab.send(client, b"still latched")
    assert bytes(server.received) == b"still latched"
    assert lab.stack(lab.a).latch_state(client) is LatchState.ESTABLISHED
    assert cleartext_after(lab.net.hub, client.flow, t0) == []
    assert leaked(lab.net.hub, client.flow, {"a", "b"}) == []
    eng = lab.stack(lab.a).engine
    eng.restart_key_manager(lab.net.now, restore_latches=True)
    assert eng.spd.overlay_entry(client.flow) is None
    assert lab.stack(lab.a).latch_state(client) is not LatchState.ESTABLISHED


# -- A8: cleartext injection -----------------------------------------------------------------------------


@BOTH
@pytest.mark.conformance(id="LATCH-A08", rfc="RFC 5660 §2; RFC 5387 §2.2.1")
def test_a8_cleartext_rst_and_data_injection_are_dropped(approach: Approach) -> None:
    lab = Lab.build(approach=approach)
    client, server = lab.open()
    assert server is not None
    m = lab.attacker("m", ipsec=False)
    m.sniff()
    f = client.flow
    for flags, payload in ((Flags.RST, b""), (Flags.ACK | Flags.PSH, b"evil"), (Flags.FIN | Flags.ACK, b"")):
        m.inject_tcp(
            f.remote_addr,
            f.remote_port,
            f.local_addr,
            f.local_port,
            seq=client.rcv_nxt,
            ack=client.snd_nxt,
            flags=flags,
            payload=payload,
        )
    lab.net.run_for(0.5)
    assert client.state is StreamState.ESTABLISHED and bytes(client.received) == b""
    lab.send(server, b"real")
    assert bytes(client.received) == b"real"
    assert any(r.sender == "a" for r in m.sniffed)  # the attacker did see the (encrypted) flow
    assert leaked(lab.net.hub, f, {"a", "b"}) == []


# -- A9: concatenated-SA MITM (the latch is with M; the binding shows it) ----------------------------------


@pytest.mark.conformance(id="LATCH-A09", rfc="RFC 5387 §1.2, §5.3; RFC 5403 §2")
def test_a9_btns_mitm_latches_but_binding_differs() -> None:
    lab = Lab.build()
    genuine, gserver = lab.open(local_port=35000)
    assert gserver is not None and genuine.channel is not None and gserver.channel is not None
    assert genuine.channel.binding_data == gserver.channel.binding_data
    m = lab.attacker("m")
    m.listen(2049, addr="192.0.2.2")
    m.claim_address(lab.b.address)  # M sits in front of B
    mitm = lab.a.connect(lab.b.address, 2049, local_port=35001)
    lab.net.run_for(1.0)
    assert mitm.state is StreamState.ESTABLISHED and mitm.channel is not None
    peer = mitm.channel.params.peer
    assert isinstance(peer, RawPublicKeyPeer) and peer.spki_der == lab.stack(m).ike.credentials.spki
    # the client's view of the channel binding names M's key, not B's: BIND_CHANNEL would fail
    assert mitm.channel.binding_data != genuine.channel.binding_data
    # on the wire: the genuine latched flow's bytes reach nobody but A and B (M may see ESP it
    # cannot open), the flow latched to M is readable by A and M only; nothing in clear after latching
    t0 = lab.net.now
    genuine.send(b"genuine secret")
    mitm.send(b"sent to whoever holds the latch")
    lab.net.run_for(1.0)
    assert leaked(lab.net.hub, genuine.flow, {"a", "b"}) == []
    assert leaked(lab.net.hub, mitm.flow, {"a", "m"}) == []
    assert cleartext_after(lab.net.hub, genuine.flow, 0.0) == []
    assert cleartext_after(lab.net.hub, mitm.flow, 0.0) == []
    # not vacuous: the data was really sent, readable by its latched peer
    assert leaked(lab.net.hub, genuine.flow, {"a"}) and leaked(lab.net.hub, mitm.flow, {"a"})
    assert all(p.time >= t0 for p in leaked(lab.net.hub, mitm.flow, {"a"}))


# -- A10: one-sided latching ----------------------------------------------------------------------------


@pytest.mark.conformance(id="LATCH-A10", rfc="RFC 5660 §6.3")
def test_a10_non_latching_server_cleartext_is_dropped_by_latched_client() -> None:
    lab = Lab.build()
    lab.stack(lab.b).engine.update_spd(examples.nfs_spd(SpdAction.BYPASS))  # server: no protection
    client, _server = lab.open(timeout=5.0)
    assert StreamEventKind.CONNECTED not in client.kinds() and bytes(client.received) == b""
    reasons = {d.reason for d in lab.stack(lab.a).drops if d.flow == client.flow}
    assert reasons & {"cleartext-on-latched-flow", "ULP latch: ulp-requires-protection"}
    assert cleartext_after(lab.net.hub, client.flow, 0.0, {"a"}) == []


# -- A12: SYN / SA expiry race ----------------------------------------------------------------------------


@pytest.mark.conformance(id="LATCH-A12", rfc="RFC 5660 §2.3.1")
def test_a12_syn_whose_sa_expired_is_not_latched_to_a_stale_peer() -> None:
    lab = Lab.build()
    lab.listen()
    expired: list[int] = []

    def expire_in_flight(rec) -> None:  # type: ignore[no-untyped-def]
        # the protected SYN is on the wire: B's SA expires before B processes it
        if rec.sender == "a" and not expired and rec.packet() is not None and rec.packet().proto == 50:
            for sa in lab.stack(lab.b).engine.sad:
                expired.append(sa.sa_id)
                lab.net.scheduler.call_later(0.0001, lab.stack(lab.b).ike.expire_child, sa.sa_id)

    lab.net.hub.taps.append(expire_in_flight)
    client = lab.a.connect(lab.b.address, 2049, local_port=36000)
    lab.net.run_for(0.1)
    assert expired and not lab.listeners[2049].accepted  # no latch with the stale SA
    assert any("unknown SPI" in d.reason for d in lab.stack(lab.b).drops)
    # a different peer takes over A's address and gets SAs for the 5-tuple
    c = lab.attacker("c")
    c.claim_address(lab.a.address)
    cconn = c.connect(lab.b.address, 2049, local_port=36000, local_addr=lab.a.address)
    lab.net.run_for(1.0)
    accepted = lab.listeners[2049].accepted
    assert cconn.state is StreamState.ESTABLISHED and accepted
    peer = accepted[-1].channel.params.peer
    assert isinstance(peer, RawPublicKeyPeer) and peer.spki_der == lab.stack(c).ike.credentials.spki
    assert client.state is not StreamState.ESTABLISHED  # A never got a connection
    assert leaked(lab.net.hub, client.flow, {"a", "b", "c"}) == []


# -- A13: DPD blackhole ---------------------------------------------------------------------------------


@pytest.mark.conformance(id="LATCH-A13", rfc="RFC 5660 §2, §6.5")
def test_a13_dpd_peer_dead_breaks_irremediably() -> None:
    lab = Lab.build()
    client, server = lab.open()
    assert server is not None
    lab.stack(lab.a).ike.start_dpd(interval=1.0, max_misses=3)
    m = lab.attacker("m", ipsec=False)
    m.blackhole(lab.a.address, lab.b.address)
    client.send(b"into the blackhole")
    lab.net.run_for(10.0)
    assert StreamEventKind.RESET in client.kinds()
    assert any(a.reason is AlertReason.PEER_DEAD for a in client.latch_info.alerts)  # type: ignore[union-attr]
    m.stop_dropping()
    lab.net.run_for(5.0)
    assert client.state is StreamState.CLOSED  # never comes back
    # the blackhole read nothing: no byte of the latched flow reached M readably, none in clear
    assert leaked(lab.net.hub, client.flow, {"a", "b"}) == []
    assert cleartext_after(lab.net.hub, client.flow, 0.0) == []
    client2, _server2 = lab.open(local_port=37000)  # a new connection is a new latch
    assert client2.state is StreamState.ESTABLISHED


# -- A14: key-manager restart ---------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize("restore", [False, True], ids=["closed", "restored"])
@pytest.mark.conformance(id="LATCH-A14", rfc="RFC 5660 §2")
def test_a14_key_manager_restart(approach: Approach, restore: bool) -> None:
    lab = Lab.build(approach=approach)
    client, server = lab.open()
    assert server is not None
    t0 = lab.net.now
    lab.stack(lab.a).engine.restart_key_manager(t0, restore_latches=restore)
    lab.net.run_for(0.1)
    if restore:
        lab.send(client, b"after restart")
        assert bytes(server.received) == b"after restart"
        assert lab.stack(lab.a).latch_state(client) is LatchState.ESTABLISHED
    elif approach is Approach.POLICY:
        assert client.kinds()[-1] is StreamEventKind.RESET
        assert lab.stack(lab.a).latch_state(client) is LatchState.CLOSED
    else:
        # approach 1: the latch (peer ID + QoP) lives in the TCB, not in the daemon, so it is not
        # lost: the TCB may only send "like" its latched tag, the new SAs (negotiated with
        # INITIAL_CONTACT, which makes B drop the stale ones) must be with the same peer
        old_spis = {sa.spi_in for sa in lab.stack(lab.b).engine.sad}
        lab.send(client, b"after restart")
        assert bytes(server.received) == b"after restart"
        new_sas = list(lab.stack(lab.a).engine.sad)
        assert new_sas and all(sa.peer == client.channel.params.peer for sa in new_sas)
        assert not old_spis & {sa.spi_in for sa in lab.stack(lab.b).engine.sad}
    assert cleartext_after(lab.net.hub, client.flow, t0, {"a", "b"}) == []


# -- A15: multi-connection peer-ID divergence ----------------------------------------------------------------


@pytest.mark.conformance(id="LATCH-A15", rfc="RFC 5660 §6.3")
def test_a15_second_connection_to_same_address_latches_another_peer() -> None:
    lab = Lab.build()
    first, _ = lab.open(local_port=38000)
    c = lab.attacker("c")
    c.listen(2049, addr="192.0.2.2")
    c.claim_address(lab.b.address)
    second = lab.a.connect(lab.b.address, 2049, local_port=38001)
    lab.net.run_for(1.0)
    assert first.channel is not None and second.channel is not None
    assert first.flow.remote_addr == second.flow.remote_addr
    assert first.channel.params.peer != second.channel.params.peer  # the app must not trunk them
    # each flow's bytes reach only its own latched peer, nothing in clear after latching
    first.send(b"for the first peer")
    second.send(b"for the second peer")
    lab.net.run_for(1.0)
    assert leaked(lab.net.hub, first.flow, {"a", "b"}) == []
    assert leaked(lab.net.hub, second.flow, {"a", "c"}) == []
    assert leaked(lab.net.hub, first.flow, {"a"}) and leaked(lab.net.hub, second.flow, {"a"})
    assert cleartext_after(lab.net.hub, first.flow, 0.0) == []
    assert cleartext_after(lab.net.hub, second.flow, 0.0) == []


# -- A16: SPI collision --------------------------------------------------------------------------------------


@pytest.mark.conformance(id="LATCH-A16", rfc="RFC 4301 §4.4.2")
def test_a16_same_spi_chosen_by_two_clients_does_not_cross_wire() -> None:
    lab = Lab.build()
    d = lab.net.add_host("d", "192.0.2.3")
    lab.net.enable_ipsec(d, spd=lab.spd, pad=lab.pad, credentials=lab.net.credentials("btns"))
    lab.stack(lab.a).ike.spi_override = [0x4242]
    lab.stack(d).ike.spi_override = [0x4242]
    ca, sa_ = lab.open(local_port=39000)
    cd = d.connect(lab.b.address, 2049, local_port=39000)
    lab.net.run_for(1.0)
    sd = lab.listeners[2049].accepted[-1]
    assert sa_ is not None and cd.state is StreamState.ESTABLISHED
    out_spis = {sa.remote_addr: sa.spi_out for sa in lab.stack(lab.b).engine.sad}
    assert out_spis[lab.a.address] == out_spis[d.address] == 0x4242
    sa_.send(b"to A")
    sd.send(b"to D")
    lab.net.run_for(0.5)
    assert bytes(ca.received) == b"to A" and bytes(cd.received) == b"to D"
    assert sa_.channel.params.peer != sd.channel.params.peer
    for conn, name in ((ca, "a"), (cd, "d")):
        assert leaked(lab.net.hub, conn.flow, {name, "b"}) == []


# -- A17: the local identity changes under a latched flow (RFC 5660 §2) ------------------------------------


@BOTH
@pytest.mark.conformance(id="LATCH-A17", rfc="RFC 5660 §2 (local identity), §2.3")
def test_a17_child_sa_asserting_another_local_id_breaks_the_latch(approach: Approach) -> None:
    """RFC 5660 §2 latches "the local ID asserted to the peer" as well as the peer's: when A's key
    manager starts asserting another identity (a new key, a second certificate) and negotiates a
    child SA for a latched flow with the same peer, that SA is not congruent with the latch -- a
    conflict with the same ALERT / break as a peer change, before the SA is accepted."""
    lab = Lab.build(approach=approach)
    client, server = lab.open(local_port=33300)
    assert client.state is StreamState.ESTABLISHED and server is not None
    lab.send(client, b"before")
    stack = lab.stack(lab.a)
    assert client.channel is not None
    latched_local = client.channel.params.local
    latched_peer = client.channel.params.peer
    sizes = _record_sad_size_at_alert(client, stack)
    sad_before = len(stack.engine.sad)
    stack.ike.credentials = lab.net.credentials("btns")  # A now asserts another key
    assert stack.ike.credentials.local_identity() != latched_local
    done: list[object] = []
    stack.ike.initiate(
        lab.a.address,
        lab.b.address,
        (Selector.for_flow(client.flow),),
        on_done=lambda sa, why: done.append(sa),
    )
    lab.net.run_for(0.5)
    new_sa = done[0]
    assert new_sa is not None  # same peer (B's key), other local ID
    assert new_sa.peer == latched_peer and new_sa.local != latched_local  # type: ignore[attr-defined]
    assert sizes and sizes[0] == sad_before  # alerted before the SA was accepted
    assert client.kinds()[-2:] == [StreamEventKind.LATCH, StreamEventKind.RESET]
    cl = client.latch_info
    assert isinstance(cl, ConnLatch)
    if approach is Approach.ULP:
        assert [b.reason for b in cl.ulp_breaks] == [UlpBreakReason.CONFLICTING_SA]
    else:
        assert any(a.reason is AlertReason.CONFLICTING_SA for a in cl.alerts)
    assert not client.channel.is_up()
    assert leaked(lab.net.hub, client.flow, {"a", "b"}) == []
    assert cleartext_after(lab.net.hub, client.flow, 0.0) == []
