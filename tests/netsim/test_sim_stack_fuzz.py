"""Bad network input never crashes a simulated host's stack (house rule): random frames, random
IP payloads, ESP with a live SPI and garbage inside, forged TCP on a latched flow, random IKEv2
datagrams (some with the header of a live IKE SA)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpclatch.ipsec.engine import Approach
from rpclatch.netsim.ikev2 import IKE_PORT
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
    st.tuples(st.just("ike"), st.binary(max_size=300), st.integers(0, 7)),
    st.tuples(st.just("ike-sa"), st.binary(max_size=300), st.integers(0, 2**16 - 1)),
)


@SETTINGS
@given(st.sampled_from([Approach.ULP, Approach.POLICY]), st.lists(frames, min_size=1, max_size=8))
def test_hostile_frames_never_crash_and_never_reach_the_app(approach: Approach, items: list) -> None:  # type: ignore[type-arg]
    lab, client, server = _lab(approach)
    b = lab.b
    src, dst = lab.a.address, b.address
    live_spis = list(lab.stack(b).ike.by_spi_in)
    ike_sas = [sa for end in lab.stack(b).ike.endpoints.values() for sa in end.dispatcher.sas]
    assert live_spis and ike_sas
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
            if kind == "ike":
                payload = body
            else:  # RFC 7296 §3.1 header of B's IKE SA (flags, exchange type, message ID fuzzed)
                sa = ike_sas[n % len(ike_sas)]
                hdr = sa.spi_i.to_bytes(8, "big") + sa.spi_r.to_bytes(8, "big")
                hdr += bytes((body[0] if body else 0, 0x20, 34 + n % 4, (n >> 2) & 0x38))
                hdr += (n >> 8).to_bytes(4, "big") + (28 + len(body)).to_bytes(4, "big")
                payload = hdr + body
            dgram = UdpDatagram(IKE_PORT, IKE_PORT, payload).encode(src, dst)
            frame = IpPacket(src, dst, PROTO_UDP, dgram).encode()
        b.iface.receive(frame)
    lab.net.run_for(1.0)
    assert bytes(server.received) == b""  # type: ignore[attr-defined]
    assert server.state is StreamState.ESTABLISHED  # type: ignore[attr-defined]
    lab.send(client, b"ok")  # type: ignore[arg-type]
    assert bytes(server.received) == b"ok"  # type: ignore[attr-defined]
