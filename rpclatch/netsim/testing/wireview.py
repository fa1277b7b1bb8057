"""Decode the captured wire fully (ESP decrypted with the exported keys) for assertions and reports.

Tests use this to check RFC 5660 properties *on the simulated wire*: no cleartext segment of a
latched 5-tuple after latching, and no payload byte of a flow delivered to a host other than the
intended peer.
"""

from __future__ import annotations

from dataclasses import dataclass

from rpclatch.ipsec.model import FiveTuple, IpProto
from rpclatch.netsim.errors import SimWireError
from rpclatch.netsim.esp import EspHeader, esp_open
from rpclatch.netsim.ikev2 import IKE_PORT
from rpclatch.netsim.ip import PROTO_ESP, PROTO_TCP, PROTO_UDP, IPAddress
from rpclatch.netsim.link import Hub, WireRecord
from rpclatch.netsim.tcp import TcpSegment


@dataclass(frozen=True, slots=True)
class WirePacket:
    """One captured frame, decoded: ``protected`` if it was ESP (``spi`` set), ``segment`` if the
    (inner) payload is TCP; ``decrypted`` False if an ESP packet's keys were not known; ``ike`` if
    it is a cleartext UDP datagram to the IKE port (500, an IKEv2 message)."""

    record: WireRecord
    src: IPAddress
    dst: IPAddress
    proto: int
    protected: bool
    spi: int | None
    decrypted: bool
    segment: TcpSegment | None
    ike: bool
    readers: frozenset[str] | None  # hosts holding the decryption key (None: cleartext)

    @property
    def time(self) -> float:
        return self.record.time

    @property
    def sender(self) -> str:
        return self.record.sender

    @property
    def receiver(self) -> str | None:
        return self.record.receiver

    @property
    def delivered(self) -> bool:
        return self.record.dropped_by is None and self.record.receiver is not None

    def matches(self, flow: FiveTuple) -> bool:
        """Is this a TCP segment of ``flow`` (either direction)?"""
        seg = self.segment
        if seg is None or flow.proto != IpProto.TCP:
            return False
        fwd = (self.src, seg.src_port, self.dst, seg.dst_port)
        a = (flow.local_addr, flow.local_port, flow.remote_addr, flow.remote_port)
        b = (flow.remote_addr, flow.remote_port, flow.local_addr, flow.local_port)
        return fwd in (a, b)


def decode_wire(hub: Hub) -> list[WirePacket]:
    """Decode every captured frame, decrypting ESP with every key any host registered."""
    keys = {(k.dst, k.keys.spi): k.keys for k in hub.esp_keys}
    out = []
    for rec in hub.wire:
        pkt = rec.packet()
        if pkt is None:
            continue
        proto, payload = pkt.proto, pkt.payload
        protected, spi, decrypted = False, None, True
        if proto == PROTO_ESP:
            protected, decrypted = True, False
            try:
                spi = EspHeader.decode(payload).spi
                k = keys.get((pkt.dst, spi))
                if k is not None:
                    opened = esp_open(k, payload)
                    proto, payload, decrypted = opened.next_header, opened.payload, True
            except SimWireError:
                pass
        seg = None
        if decrypted and proto == PROTO_TCP:
            try:
                seg = TcpSegment.decode(payload, pkt.src, pkt.dst)
            except SimWireError:
                seg = None
        ike = (
            proto == PROTO_UDP
            and not protected
            and len(payload) >= 4
            and int.from_bytes(payload[2:4], "big") == IKE_PORT
        )
        readers = frozenset(hub.key_holders.get((pkt.dst, spi), set())) if spi is not None else None
        out.append(WirePacket(rec, pkt.src, pkt.dst, proto, protected, spi, decrypted, seg, ike, readers))
    return out


def flow_packets(hub: Hub, flow: FiveTuple) -> list[WirePacket]:
    return [p for p in decode_wire(hub) if p.matches(flow)]


def cleartext_after(
    hub: Hub, flow: FiveTuple, t0: float, senders: set[str] | None = None
) -> list[WirePacket]:
    """Cleartext TCP segments of ``flow`` on the wire at or after ``t0`` (optionally only those
    sent by ``senders``): after latching there must be none from the latched hosts."""
    return [
        p
        for p in flow_packets(hub, flow)
        if not p.protected and p.time >= t0 and (senders is None or p.sender in senders)
    ]


def leaked(hub: Hub, flow: FiveTuple, allowed: set[str]) -> list[WirePacket]:
    """Payload-carrying segments of ``flow`` that a host outside ``allowed`` could read: delivered
    to it in the clear, or protected under keys it holds. (An ESP frame that reaches an address
    thief it cannot decrypt is not a leak: that is all IPsec can promise at layer 2.)"""
    out = []
    for p in flow_packets(hub, flow):
        if p.segment is None or not p.segment.payload:
            continue
        if p.readers is None:
            if p.delivered and p.receiver not in allowed:
                out.append(p)
        elif p.readers - allowed:
            out.append(p)
    return out
