"""The ESP receive path of a simulated host: anti-replay (RFC 4303 §3.4.3), ICV failures
(§3.4.4.1), unknown SPIs, sequence-number exhaustion (§3.3.3)."""

from __future__ import annotations

from rpclatch.ipsec.engine import Approach
from rpclatch.netsim.ip import PROTO_ESP, IpPacket
from rpclatch.netsim.stream import StreamState
from rpclatch.netsim.testing.lab import Lab
from rpclatch.netsim.testing.wireview import flow_packets


def _established() -> tuple[Lab, object, object]:
    lab = Lab.build(approach=Approach.POLICY)
    client, server = lab.open()
    assert client.state is StreamState.ESTABLISHED and server is not None
    return lab, client, server


def test_replayed_esp_packet_is_dropped_and_data_not_duplicated() -> None:
    lab, client, server = _established()
    lab.send(client, b"once")  # type: ignore[arg-type]
    data = [
        p
        for p in flow_packets(lab.net.hub, client.flow)  # type: ignore[attr-defined]
        if p.sender == "a" and p.segment is not None and p.segment.payload == b"once"
    ]
    m = lab.attacker("m", ipsec=False)
    m.inject(IpPacket.decode(data[0].record.frame))
    lab.net.run_for(0.5)
    assert bytes(server.received) == b"once"  # type: ignore[attr-defined]
    assert any("replayed ESP" in d.reason for d in lab.stack(lab.b).drops)


def test_tampered_esp_fails_icv_and_unknown_spi_is_dropped() -> None:
    lab, client, server = _established()
    lab.send(client, b"intact")  # type: ignore[arg-type]
    frame = [p for p in flow_packets(lab.net.hub, client.flow) if p.sender == "a"][-1].record.frame  # type: ignore[attr-defined]
    pkt = IpPacket.decode(frame)
    body = bytearray(pkt.payload)
    body[4:8] = (0xFFFFFF00).to_bytes(4, "big")  # a fresh sequence number, so replay check passes
    body[-1] ^= 1  # ICV no longer verifies
    m = lab.attacker("m", ipsec=False)
    m.inject(IpPacket(pkt.src, pkt.dst, PROTO_ESP, bytes(body)))
    m.inject(IpPacket(pkt.src, pkt.dst, PROTO_ESP, (0x99999).to_bytes(4, "big") + bytes(body[4:])))
    lab.net.run_for(0.5)
    reasons = [d.reason for d in lab.stack(lab.b).drops]
    assert any("ICV" in r for r in reasons) and any("unknown SPI" in r for r in reasons)
    assert bytes(server.received) == b"intact"  # type: ignore[attr-defined]
    lab.send(client, b"+more")  # type: ignore[arg-type]
    assert bytes(server.received) == b"intact+more"  # the window did not move on the forgery


def test_sequence_number_exhaustion_stops_output() -> None:
    lab, client, server = _established()
    for keys in lab.stack(lab.a).ike.children.values():
        keys.seq_out = 0xFFFFFFFF
    client.send(b"too late")  # type: ignore[attr-defined]
    lab.net.run_for(0.5)
    assert bytes(server.received) == b""  # type: ignore[attr-defined]
    assert any("exhausted" in d.reason for d in lab.stack(lab.a).drops)
