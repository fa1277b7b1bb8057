"""RFC 5660 latching on the simulated network: basic conformance items, asserted on
the simulated wire, for both designs of docs/design.md (approach 1 = ULP tags, approach 2 =
LD/PAD latching) unless an item is specific to one.

Wire oracle: ``wireview`` decrypts every ESP frame with the exported keys; "leaked" means a
payload byte of the flow readable by a host other than the two ends.
"""

from __future__ import annotations

import pytest

from rpclatch.ipsec import examples
from rpclatch.ipsec.engine import Approach, EngineConfig
from rpclatch.ipsec.latch import LatchState
from rpclatch.ipsec.model import FiveTuple, RawPublicKeyPeer
from rpclatch.ipsec.spd import EntryOrigin, SpdAction
from rpclatch.netsim.errors import SimLocalError
from rpclatch.netsim.ike import IkeMode
from rpclatch.netsim.stack import ConnLatch
from rpclatch.netsim.stream import StreamEventKind, StreamState
from rpclatch.netsim.tcp import Flags
from rpclatch.netsim.testing.lab import Lab
from rpclatch.netsim.testing.wireview import cleartext_after, flow_packets, leaked

BOTH = pytest.mark.parametrize("approach", [Approach.ULP, Approach.POLICY], ids=["approach1", "approach2"])


def _pair(approach: Approach, **kw: object) -> tuple[Lab, object, object]:
    lab = Lab.build(approach=approach, **kw)  # type: ignore[arg-type]
    client, server = lab.open()
    assert client.state is StreamState.ESTABLISHED and server is not None
    return lab, client, server


@BOTH
@pytest.mark.conformance(id="LATCH-01", rfc="RFC 5660 §2")
def test_no_packet_leaves_before_the_latch_exists(approach: Approach) -> None:
    lab = Lab.build(approach=approach, server_ike=IkeMode.SLOW)
    lab.stack(lab.b).ike.slow_delay = 1.0  # the server's key manager answers after 1 s
    lab.listen()
    client = lab.a.connect(lab.b.address, 2049, local_port=33333)
    lab.net.run_for(0.5)
    assert client.state is StreamState.CLOSED and not client.events  # waiting for the latch
    # an inbound packet for the flow arriving before the latch exists is dropped
    m = lab.attacker("m", ipsec=False)
    f = client.flow
    m.inject_tcp(
        f.remote_addr, f.remote_port, f.local_addr, f.local_port, seq=7, ack=1, flags=Flags.SYN | Flags.ACK
    )
    lab.net.run_for(0.1)
    assert [d for d in lab.stack(lab.a).drops if d.flow == f]
    lab.net.run_until(lambda: client.is_open, 10.0)
    server = lab.listeners[2049].accepted[0] if lab.listeners[2049].accepted else None
    assert client.state is StreamState.ESTABLISHED and server is not None
    assert bytes(client.received) == b"" and client.irs != 7
    wire = [p for p in flow_packets(lab.net.hub, client.flow) if p.sender in ("a", "b")]
    # B's answer to IKE_AUTH carries the CHILD_SA (B answers late retransmissions again later)
    auth_answered = min(p.time for p in _ike(lab) if p.sender == "b" and _is_auth_response(p))
    first = wire[0]
    assert first.segment is not None and first.segment.flags == Flags.SYN
    assert first.protected and first.time >= auth_answered  # SYN only after the child SAs exist
    assert all(p.protected for p in wire)
    assert lab.stack(lab.a).latch_state(client) is LatchState.ESTABLISHED


def _ike(lab: Lab) -> list:  # type: ignore[type-arg]
    from rpclatch.netsim.testing.wireview import decode_wire

    return [p for p in decode_wire(lab.net.hub) if p.ike]


def _is_auth_response(p) -> bool:  # type: ignore[no-untyped-def]
    from rpclatch.ipsec.ike.wire import ExchangeType, Header

    header = Header.decode(p.record.packet().payload[8:])
    return header.exchange == ExchangeType.IKE_AUTH and header.is_response


@BOTH
@pytest.mark.conformance(id="LATCH-02", rfc="RFC 5660 §2, §2.3")
def test_spd_change_to_bypass_never_sends_cleartext(approach: Approach) -> None:
    lab, client, server = _pair(approach)
    t0 = lab.net.now
    for host in (lab.a, lab.b):
        lab.stack(host).engine.update_spd(examples.nfs_spd(SpdAction.BYPASS))
    # REQUIRED behaviour: the latch breaks at once (RFC 5660 §2, §2.3), default disposition = reset
    # (§5.5): the application sees a reset and cannot send anything. Approach 1: the engine
    # re-checks the TCB latches it watches the same way.
    assert StreamEventKind.RESET in client.kinds() and StreamEventKind.RESET in server.kinds()
    with pytest.raises(SimLocalError):
        client.send(b"after the policy change")
    lab.net.run_for(2.0)
    assert flow_packets(lab.net.hub, client.flow)[-1].time < t0 + 1e-9
    assert cleartext_after(lab.net.hub, client.flow, t0) == []
    assert leaked(lab.net.hub, client.flow, {"a", "b"}) == []


@BOTH
@pytest.mark.conformance(id="LATCH-02b", rfc="RFC 5660 §2.3 (OPTIONAL pinning), §2.4")
def test_spd_change_with_pinning_keeps_the_flow_protected(approach: Approach) -> None:
    lab = Lab.build(approach=approach, config=EngineConfig(pin_on_spd_change=True))
    client, server = lab.open()
    assert server is not None and client.state is StreamState.ESTABLISHED
    t0 = lab.net.now
    for host in (lab.a, lab.b):
        assert lab.stack(host).engine.update_spd(examples.nfs_spd(SpdAction.BYPASS)) == []
        pinned = lab.stack(host).engine.spd.overlay_entry(client.flow if host is lab.a else server.flow)
        assert pinned is not None and pinned.origin is EntryOrigin.PINNED_LATCH
    client.send(b"after the policy change")
    lab.net.run_for(1.0)
    server.send(b"reply")
    lab.net.run_for(1.0)
    # the TCB / LD latch keeps its SA (the "logical SPD update", incidental in §2.4's model)
    assert bytes(server.received) == b"after the policy change" and bytes(client.received) == b"reply"
    assert lab.stack(lab.a).latch_state(client) is LatchState.ESTABLISHED
    assert cleartext_after(lab.net.hub, client.flow, t0) == []
    assert leaked(lab.net.hub, client.flow, {"a", "b"}) == []


@BOTH
@pytest.mark.conformance(id="LATCH-03", rfc="RFC 5660 §2")
def test_inbound_cleartext_never_reaches_the_application(approach: Approach) -> None:
    lab, client, server = _pair(approach)
    c = lab.attacker(ipsec=False)
    flow = server.flow
    # the attacker knows the exact sequence numbers (worst case: on-path observer)
    c.inject_tcp(
        flow.remote_addr,
        flow.remote_port,
        flow.local_addr,
        flow.local_port,
        seq=server.rcv_nxt,
        ack=server.snd_nxt,
        flags=Flags.ACK | Flags.PSH,
        payload=b"FORGED",
    )
    c.inject_tcp(
        flow.remote_addr,
        flow.remote_port,
        flow.local_addr,
        flow.local_port,
        seq=server.rcv_nxt,
        flags=Flags.RST,
    )
    lab.net.run_for(0.5)
    assert bytes(server.received) == b"" and server.state is StreamState.ESTABLISHED
    reasons = {d.reason for d in lab.stack(lab.b).drops if d.flow == flow}
    assert reasons & {"cleartext-on-latched-flow", "cleartext-on-protect-entry"}
    lab.send(client, b"genuine")
    assert bytes(server.received) == b"genuine"


@BOTH
@pytest.mark.conformance(id="LATCH-07", rfc="RFC 5660 §2.3")
def test_ike_absent_means_not_latched_and_nothing_on_the_wire(approach: Approach) -> None:
    lab = Lab.build(approach=approach, server_ike=IkeMode.ABSENT)
    client, server = lab.open(timeout=30)
    assert client.state is StreamState.CLOSED and server is None
    assert client.kinds() == [StreamEventKind.FAILED]
    assert "not latched" in str(client.events[0].detail)
    cl = client.latch_info
    assert isinstance(cl, ConnLatch) and cl.not_latched_reason is not None
    assert flow_packets(lab.net.hub, client.flow) == []  # not a single TCP segment
    assert len(_ike(lab)) >= 2 and all(p.sender == "a" for p in _ike(lab))


@BOTH
@pytest.mark.conformance(id="LATCH-07b", rfc="RFC 5660 §2.3, §3.1")
def test_ike_refused_then_app_falls_back_to_bypass(approach: Approach) -> None:
    lab = Lab.build(
        approach=approach, server_ike=IkeMode.REFUSE, spd=examples.nfs_spd(SpdAction.BYPASS_OR_PROTECT)
    )
    client, server = lab.open(protect=True)
    assert client.kinds() == [StreamEventKind.FAILED] and server is None
    client2, server2 = lab.open(protect=False)
    assert client2.state is StreamState.ESTABLISHED and server2 is not None
    assert lab.stack(lab.a).latch_state(client2) is None and client2.channel is None
    lab.send(client2, b"clear")
    wire = flow_packets(lab.net.hub, client2.flow)
    assert wire and not any(p.protected for p in wire)  # BYPASS clone: cleartext by choice
    assert bytes(server2.received) == b"clear"


@BOTH
@pytest.mark.conformance(id="LATCH-11", rfc="RFC 5660 §5.5")
def test_default_broken_disposition_is_reset(approach: Approach) -> None:
    lab, client, server = _pair(approach)
    c = lab.attacker()
    # C claims the server's address and negotiates SAs for exactly the latched 5-tuple with A
    c.claim_address(lab.b.address)
    lab.stack(c).ike.initiate(lab.b.address, lab.a.address, (_exact(client.flow.reversed()),))
    lab.net.run_for(1.0)
    # both approaches: the conflicting SA breaks the latch, the default disposition resets (§5.5 (b))
    assert StreamEventKind.RESET in client.kinds()
    assert client.kinds()[-2:] == [StreamEventKind.LATCH, StreamEventKind.RESET]
    with pytest.raises(SimLocalError):
        client.send(b"still to B?")
    lab.net.run_for(1.0)
    assert leaked(lab.net.hub, client.flow, {"a", "b"}) == []
    assert b"still" not in bytes(server.received)


def _exact(flow: FiveTuple):  # type: ignore[no-untyped-def]
    from rpclatch.ipsec.model import Selector

    return Selector.for_flow(flow)


@pytest.mark.conformance(id="LATCH-12", rfc="RFC 5660 §2.3")
def test_admin_close_acts_as_peer_reset() -> None:
    lab, client, _server = _pair(Approach.POLICY)
    cl = client.latch_info
    assert isinstance(cl, ConnLatch) and cl.handle is not None
    lab.stack(lab.a).engine.latches.admin_close(cl.handle, "operator")
    assert client.state is StreamState.CLOSED and client.kinds()[-1] is StreamEventKind.RESET
    with pytest.raises(Exception, match="cannot send"):
        client.send(b"x")
    assert client.channel is not None and not client.channel.is_up()


@BOTH
@pytest.mark.conformance(id="LATCH-14", rfc="RFC 5660 §3.1")
def test_bypass_or_protect_clones(approach: Approach) -> None:
    lab = Lab.build(approach=approach, spd=examples.nfs_spd(SpdAction.BYPASS_OR_PROTECT))
    client, server = lab.open(protect=True)
    assert client.state is StreamState.ESTABLISHED and server is not None
    for host, flow in ((lab.a, client.flow), (lab.b, server.flow)):
        clone = lab.stack(host).engine.spd.overlay_entry(flow)
        assert clone is not None and clone.action is SpdAction.PROTECT
        assert clone.selectors[0].is_single_flow
    lab.send(client, b"protected")
    assert all(p.protected for p in flow_packets(lab.net.hub, client.flow))
    # the server's BYPASS-OR-PROTECT template decided per flow: a cleartext flow gets a BYPASS clone
    _clear, server2 = lab.open(protect=False)
    assert server2 is not None
    clone2 = lab.stack(lab.b).engine.spd.overlay_entry(server2.flow)
    assert clone2 is not None and clone2.action is SpdAction.BYPASS
    # a cleartext segment injected into the PROTECT-decided flow is dropped
    c = lab.attacker(ipsec=False)
    f = server.flow
    c.inject_tcp(
        f.remote_addr,
        f.remote_port,
        f.local_addr,
        f.local_port,
        seq=server.rcv_nxt,
        ack=server.snd_nxt,
        flags=Flags.ACK,
        payload=b"downgrade",
    )
    lab.net.run_for(0.2)
    assert bytes(server.received) == b"protected"


@pytest.mark.conformance(id="LATCH-14b", rfc="RFC 5660 §3.1")
def test_unprivileged_bypass_of_protect_port_is_refused() -> None:
    lab = Lab.build()
    client, server = lab.open(protect=False)
    assert client.kinds() == [StreamEventKind.FAILED] and server is None
    assert "privileged" in str(client.events[0].detail)
    assert flow_packets(lab.net.hub, client.flow) == []


@BOTH
@pytest.mark.conformance(id="LATCH-21", rfc="RFC 5386 §2, §3.3")
def test_btns_ok_port_is_protected_other_ports_bypass(approach: Approach) -> None:
    lab = Lab.build(approach=approach)
    nfs, _ = lab.open(2049)
    other, _ = lab.open(4000)
    lab.send(nfs, b"nfs")
    lab.send(other, b"other")
    assert all(p.protected for p in flow_packets(lab.net.hub, nfs.flow))
    assert not any(p.protected for p in flow_packets(lab.net.hub, other.flow))
    assert lab.stack(lab.a).latch_state(other) is None


@BOTH
@pytest.mark.conformance(id="LATCH-25", rfc="RFC 7670 §3; RFC 5386")
def test_latched_peer_is_the_peer_spki(approach: Approach) -> None:
    lab, client, server = _pair(approach)
    for conn, peer_host in ((client, lab.b), (server, lab.a)):
        channel = conn.channel
        assert channel is not None
        peer = channel.params.peer
        assert isinstance(peer, RawPublicKeyPeer)
        assert peer.spki_der == lab.stack(peer_host).ike.credentials.spki
    assert client.channel.binding_data == server.channel.binding_data
    assert client.channel.binding_prefix == server.channel.binding_prefix


@BOTH
@pytest.mark.conformance(id="LATCH-19", rfc="RFC 5660 §2.3, §5.1 (TIME_WAIT-like hold, derived)")
def test_time_wait_hold_and_fresh_latch_on_reuse(approach: Approach) -> None:
    lab = Lab.build(approach=approach, msl=1.0)
    client, server = lab.open(local_port=40000)
    assert server is not None
    lab.send(client, b"one")
    client.close()
    lab.net.run_for(0.2)
    server.close()
    lab.net.run_for(0.2)
    assert client.state is StreamState.TIME_WAIT
    t0 = lab.net.now
    # a late cleartext segment for the 5-tuple during the hold is dropped
    c = lab.attacker(ipsec=False)
    f = client.flow
    c.inject_tcp(
        f.remote_addr,
        f.remote_port,
        f.local_addr,
        f.local_port,
        seq=client.rcv_nxt,
        ack=client.snd_nxt,
        flags=Flags.FIN | Flags.ACK,
    )
    lab.net.run_for(0.2)
    drops = [d for d in lab.stack(lab.a).drops if d.flow == f and d.time >= t0]
    assert drops, "late cleartext segment was not judged against the held latch"
    assert client.state is StreamState.TIME_WAIT and StreamEventKind.RESET not in client.kinds()
    lab.net.run_for(3.0)
    assert client.state is StreamState.CLOSED
    # reuse of the same 5-tuple: a fresh latch (new handle / new channel object)
    client2, _server2 = lab.open(local_port=40000)
    assert client2.flow == client.flow and client2.state is StreamState.ESTABLISHED
    assert client2.channel is not None and client2.channel is not client.channel
    assert cleartext_after(lab.net.hub, f, 0.0, {"a", "b"}) == []


@pytest.mark.conformance(id="LATCH-04", rfc="RFC 5660 §2, §2.3")
def test_inquire_latch_over_the_wire() -> None:
    lab, client, _server = _pair(Approach.POLICY)
    info = lab.stack(lab.a).latch_of(client)
    assert info is not None and info.state is LatchState.ESTABLISHED and info.params is not None
    assert info.params.qop.determinate and info.params.qop.suite is not None
    assert info.params.peer_addr == lab.b.address
    assert info.params.local.spki_der == lab.stack(lab.a).ike.credentials.spki


@pytest.mark.conformance(id="LATCH-05", rfc="RFC 5660 §2.1")
def test_wide_sas_make_qop_indeterminate() -> None:
    lab = Lab.build()
    lab.stack(lab.a).ike.narrow = False  # host-to-host child SAs
    client, _server = lab.open()
    info = lab.stack(lab.a).latch_of(client)
    assert info is not None and info.qop_indeterminate
    assert info.params is not None and info.params.qop.suite is None


@pytest.mark.conformance(id="LATCH-13", rfc="RFC 5660 §2.3, §3.1")
def test_pinned_logical_spd_entry_keeps_latch_until_restart() -> None:
    cfg = EngineConfig(approach=Approach.POLICY, pin_on_spd_change=True)
    lab = Lab.build(config=cfg)
    client, server = lab.open()
    t0 = lab.net.now
    for host in (lab.a, lab.b):
        assert lab.stack(host).engine.update_spd(examples.nfs_spd(SpdAction.BYPASS)) == []
    lab.send(client, b"still protected")
    assert bytes(server.received) == b"still protected"
    assert cleartext_after(lab.net.hub, client.flow, t0) == []
    assert lab.stack(lab.a).latch_state(client) is LatchState.ESTABLISHED
    eng = lab.stack(lab.a).engine
    assert eng.spd.overlay_entry(client.flow) is not None
    # the pin must not survive a key-manager restart: restored latch now conflicts -> BROKEN
    eng.restart_key_manager(lab.net.now, restore_latches=True)
    assert eng.spd.overlay_entry(client.flow) is None
    assert lab.stack(lab.a).latch_state(client) in (LatchState.BROKEN, LatchState.CLOSED)
