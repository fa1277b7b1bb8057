"""The TCP-like stream of the simulation over plain IP (no IPsec): handshake, data, loss, close."""

from __future__ import annotations

from rpclatch.ipsec.latch import LatchState
from rpclatch.netsim.ip import PROTO_TCP, IpPacket
from rpclatch.netsim.network import SimNetwork
from rpclatch.netsim.stack import stack_of
from rpclatch.netsim.stream import StreamEventKind, StreamState
from rpclatch.netsim.tcp import Flags, TcpSegment


def _tcp_on_wire(net: SimNetwork) -> list[tuple[str, TcpSegment]]:
    out = []
    for rec in net.wire:
        pkt = rec.packet()
        if pkt is not None and pkt.proto == PROTO_TCP:
            out.append((rec.sender, TcpSegment.decode(pkt.payload, pkt.src, pkt.dst)))
    return out


def test_three_way_handshake_data_and_orderly_close() -> None:
    net = SimNetwork(seed=3)
    a, b = net.add_host("a", "192.0.2.1"), net.add_host("b", "192.0.2.2", msl=1.0)
    lst = b.listen(2049)
    c = a.connect("192.0.2.2", 2049)
    net.run_for(0.05)
    assert c.state is StreamState.ESTABLISHED
    s = lst.accepted[0]
    flags = [seg.flags for _, seg in _tcp_on_wire(net)[:3]]
    assert flags == [Flags.SYN, Flags.SYN | Flags.ACK, Flags.ACK]
    c.send(b"x" * 5000)
    s.send(b"y" * 10)
    net.run_for(0.1)
    assert bytes(s.received) == b"x" * 5000 and bytes(c.received) == b"y" * 10
    c.close()
    net.run_for(0.05)
    s.close()
    net.run_for(0.05)
    assert s.state is StreamState.CLOSED and StreamEventKind.CLOSED in s.kinds()
    assert c.state is StreamState.TIME_WAIT  # active closer holds 2*MSL
    net.run_for(61)
    assert c.state is StreamState.CLOSED and StreamEventKind.RESET not in c.kinds()
    assert not a.connections and not b.connections


def test_retransmission_recovers_from_loss() -> None:
    net = SimNetwork(seed=4)
    a, b = net.add_host("a", "192.0.2.1"), net.add_host("b", "192.0.2.2")
    m = net.add_attacker("m", "192.0.2.66")
    lst = b.listen(2049)
    c = a.connect("192.0.2.2", 2049)
    net.run_for(0.05)
    m.drop("lose data", lambda p: p.dst == b.address and len(p.payload) > 20)
    c.send(b"important")
    net.run_for(0.5)
    assert bytes(lst.accepted[0].received) == b""
    m.stop_dropping()
    net.run_for(2.0)
    assert bytes(lst.accepted[0].received) == b"important"
    dropped = [r for r in net.wire if r.dropped_by]
    assert dropped and all("lose data" in (r.dropped_by or "") for r in dropped)


def test_connect_to_closed_port_is_refused() -> None:
    net = SimNetwork(seed=5)
    a, _b = net.add_host("a", "192.0.2.1"), net.add_host("b", "192.0.2.2")
    c = a.connect("192.0.2.2", 4000)
    net.run_for(0.05)
    assert c.state is StreamState.CLOSED and c.kinds() == [StreamEventKind.REFUSED]


def test_blackhole_times_out() -> None:
    net = SimNetwork(seed=6)
    a, b = net.add_host("a", "192.0.2.1"), net.add_host("b", "192.0.2.2")
    m = net.add_attacker("m", "192.0.2.66")
    b.listen(2049)
    c = a.connect("192.0.2.2", 2049)
    net.run_for(0.05)
    m.blackhole(a.address, b.address)
    c.send(b"lost")
    net.run_for(120)
    assert c.state is StreamState.CLOSED and c.kinds()[-1] is StreamEventKind.TIMEOUT


def test_simultaneous_open() -> None:
    net = SimNetwork(seed=7)
    a, b = net.add_host("a", "192.0.2.1"), net.add_host("b", "192.0.2.2")
    ca = a.connect("192.0.2.2", 5001, local_port=5000)
    cb = b.connect("192.0.2.1", 5000, local_port=5001)
    net.run_for(0.1)
    assert ca.state is StreamState.ESTABLISHED and cb.state is StreamState.ESTABLISHED
    ca.send(b"ping")
    cb.send(b"pong")
    net.run_for(0.1)
    assert bytes(cb.received) == b"ping" and bytes(ca.received) == b"pong"


def test_blind_cleartext_rst_with_wrong_sequence_is_ignored() -> None:
    net = SimNetwork(seed=8)
    a, b = net.add_host("a", "192.0.2.1"), net.add_host("b", "192.0.2.2")
    m = net.add_attacker("m", "192.0.2.66")
    lst = b.listen(2049)
    c = a.connect("192.0.2.2", 2049)
    net.run_for(0.05)
    m.inject_tcp(b.address, 2049, a.address, c.flow.local_port, seq=12345, flags=Flags.RST)
    net.run_for(0.05)
    assert c.state is StreamState.ESTABLISHED
    # an RST at exactly rcv_nxt is honoured (no IPsec here: this is what latching must prevent)
    m.inject_tcp(b.address, 2049, a.address, c.flow.local_port, seq=c.rcv_nxt, flags=Flags.RST)
    net.run_for(0.05)
    assert c.state is StreamState.CLOSED and StreamEventKind.RESET in c.kinds()
    assert lst.accepted[0].state is StreamState.ESTABLISHED


def test_determinism_same_seed_same_wire() -> None:
    def run(seed: int) -> list[bytes]:
        net = SimNetwork(seed=seed)
        a, b = net.add_host("a", "192.0.2.1"), net.add_host("b", "192.0.2.2")
        b.listen(2049)
        c = a.connect("192.0.2.2", 2049)
        net.run_for(0.05)
        c.send(b"abc")
        net.run_for(0.05)
        return [r.frame for r in net.wire]

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_undecodable_frame_is_recorded_and_not_delivered() -> None:
    net = SimNetwork(seed=9)
    a = net.add_host("a", "192.0.2.1")
    assert a.iface.hub is not None
    a.iface.hub.transmit(a.iface, b"\x45garbage")
    assert net.wire[-1].dropped_by == "undecodable"
    pkt = IpPacket(a.address, a.address, PROTO_TCP, b"")
    assert IpPacket.decode(pkt.encode()) == pkt


def test_ipv6_latched_connection() -> None:
    from rpclatch.ipsec import examples
    from rpclatch.ipsec.model import AddressRange, AuthMethod
    from rpclatch.ipsec.pad import ChildSaAuthorization, PadEntry, PublicKeyPattern
    from rpclatch.netsim.testing.wireview import flow_packets

    nets = (AddressRange.network("192.0.2.0/24"), AddressRange.network("2001:db8::/64"))
    pad = [PadEntry("btns-any", PublicKeyPattern(), AuthMethod.RAW_PUBLIC_KEY, ChildSaAuthorization(nets))]
    net = SimNetwork(seed=10)
    a, b = net.add_host("a", "2001:db8::1"), net.add_host("b", "2001:db8::2")
    for h in (a, b):
        net.enable_ipsec(h, spd=examples.nfs_spd(), pad=pad)
    lst = b.listen(2049)
    c = a.connect("2001:db8::2", 2049)
    net.run_for(0.5)
    assert c.state is StreamState.ESTABLISHED and c.channel is not None
    c.send(b"over v6")
    net.run_for(0.5)
    assert bytes(lst.accepted[0].received) == b"over v6"
    wire = flow_packets(net.hub, c.flow)
    assert wire and all(p.protected and p.src.version == 6 for p in wire)


def test_listener_requiring_a_latch_refuses_cleartext_and_releases_state() -> None:
    from rpclatch.ipsec import examples
    from rpclatch.ipsec.spd import SpdAction

    net = SimNetwork(seed=12)
    a, b = net.add_host("a", "192.0.2.1"), net.add_host("b", "192.0.2.2")
    spd = examples.nfs_spd(SpdAction.BYPASS_OR_PROTECT)
    sa = net.enable_ipsec(a, spd=spd, pad=examples.btns_pad())
    sb = net.enable_ipsec(b, spd=spd, pad=examples.btns_pad())
    lst = b.listen(2049, require_latch=True)
    clear = a.connect("192.0.2.2", 2049, protect=False)
    net.run_for(2.0)
    assert not lst.accepted and clear.state is StreamState.CLOSED
    net.run_for(5.0)
    assert sb.engine.latches.latch_for(clear.flow.reversed()) is None
    assert sb.engine.spd.overlay_entry(clear.flow.reversed()) is None  # BYPASS clone withdrawn
    prot = a.connect("192.0.2.2", 2049, protect=True)
    net.run_for(1.0)
    assert prot.state is StreamState.ESTABLISHED and lst.accepted
    assert sa.latch_state(prot) is LatchState.ESTABLISHED


def test_lost_ike_response_is_retransmitted_not_renegotiated() -> None:
    from rpclatch.ipsec import examples

    net = SimNetwork(seed=13)
    a, b = net.add_host("a", "192.0.2.1"), net.add_host("b", "192.0.2.2")
    m = net.add_attacker("m", "192.0.2.66")
    for h in (a, b):
        net.enable_ipsec(h, spd=examples.nfs_spd(), pad=examples.btns_pad())
    lst = b.listen(2049)
    lost: list[float] = []

    def first_response(p: object) -> bool:
        from rpclatch.netsim.ip import IpPacket

        assert isinstance(p, IpPacket)
        if p.src == b.address and p.proto == 17 and not lost:
            lost.append(net.now)
            return True
        return False

    m.drop("lose first IKE response", first_response)
    c = a.connect("192.0.2.2", 2049)
    net.run_for(3.0)
    assert lost and c.state is StreamState.ESTABLISHED and lst.accepted
    b_stack = stack_of(b)
    assert b_stack is not None and len(b_stack.engine.sad) == 1  # one SA pair, not two
    c.send(b"fine")
    net.run_for(0.5)
    assert bytes(lst.accepted[0].received) == b"fine"


def test_network_trace_is_time_ordered_and_shows_alerts() -> None:
    from rpclatch.netsim.testing.lab import Lab

    lab = Lab.build()
    lab.open()
    trace = lab.net.trace()
    times = [float(line.split()[0]) for line in trace]
    assert times == sorted(times)
    assert any("LARVAL -> ESTABLISHED" in line for line in trace)
    assert any("new-connection-from-listener" in line for line in trace)
