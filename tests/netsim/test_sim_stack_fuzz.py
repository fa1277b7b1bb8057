"""Bad network input never crashes a simulated host's stack (house rule): random frames, random
IP payloads, ESP with a live SPI and garbage inside, forged TCP on a latched flow, random SIKE."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpclatch.ipsec.engine import Approach
from rpclatch.netsim.ike_wire import SIKE_PORT
from rpclatch.netsim.ip import PROTO_ESP, PROTO_TCP, PROTO_UDP, IpPacket
from rpclatch.netsim.stream import StreamState
from rpclatch.netsim.tcp import Flags, TcpSegment
from rpclatch.netsim.testing.lab import Lab
from rpclatch.netsim.udp import UdpDatagram

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _lab(approach: Approach) -> tuple[Lab, object, object]:
    lab = Lab.build(approach=approach)
    client, server = lab.open()
    assert client.state is StreamState.ESTABLISHED and server is not None
    return lab, client, server


frames = st.one_of(
    st.tuples(st.just("raw"), st.binary(max_size=120), st.integers(0, 0)),
    st.tuples(st.just("ip"), st.binary(max_size=120), st.sampled_from([PROTO_TCP, PROTO_UDP, PROTO_ESP, 99])),
    st.tuples(st.just("esp"), st.binary(max_size=120), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("tcp"), st.binary(max_size=40), st.integers(0, 0x1F)),
    st.tuples(st.just("sike"), st.binary(max_size=300), st.integers(1, 5)),
)


@SETTINGS
@given(st.sampled_from([Approach.ULP, Approach.POLICY]), st.lists(frames, min_size=1, max_size=8))
def test_hostile_frames_never_crash_and_never_reach_the_app(approach: Approach, items: list) -> None:  # type: ignore[type-arg]
    lab, client, server = _lab(approach)
    b = lab.b
    src, dst = lab.a.address, b.address
    live_spis = list(lab.stack(b).sike.by_spi_in)
    for kind, body, n in items:
        if kind == "raw":
            frame = body
        elif kind == "ip":
            frame = IpPacket(src, dst, n, body).encode()
        elif kind == "esp":
            spi = live_spis[n % len(live_spis)] if live_spis else 0x1000
            frame = IpPacket(src, dst, PROTO_ESP, spi.to_bytes(4, "big") + body).encode()
        elif kind == "tcp":
            f = server.flow  # type: ignore[attr-defined]
            seg = TcpSegment(
                f.remote_port,
                f.local_port,
                server.rcv_nxt,
                server.snd_nxt,  # type: ignore[attr-defined]
                Flags(n),
                payload=body,
            )
            frame = IpPacket(src, dst, PROTO_TCP, seg.encode(src, dst)).encode()
        else:
            payload = n.to_bytes(4, "big") + body
            dgram = UdpDatagram(SIKE_PORT, SIKE_PORT, payload).encode(src, dst)
            frame = IpPacket(src, dst, PROTO_UDP, dgram).encode()
        b.iface.receive(frame)
    lab.net.run_for(1.0)
    assert bytes(server.received) == b""  # type: ignore[attr-defined]
    assert server.state is StreamState.ESTABLISHED  # type: ignore[attr-defined]
    lab.send(client, b"ok")  # type: ignore[arg-type]
    assert bytes(server.received) == b"ok"  # type: ignore[attr-defined]
