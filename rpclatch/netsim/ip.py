"""IPv4 (RFC 791) and IPv6 (RFC 8200) headers for the simulated wire.

Only what the simulation needs: no options, no fragmentation (IPv4 DF is set; fragments and
options are rejected on decode), no extension headers. Packets are real, so tshark decodes them.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from rpclatch.netsim.errors import SimWireError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ESP = 50

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")


def internet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(src: IPAddress, dst: IPAddress, proto: int, length: int) -> bytes:
    """Checksum pseudo-header for TCP/UDP (RFC 793 §3.1, RFC 8200 §8.1)."""
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!BBH", 0, proto, length)
    return src.packed + dst.packed + struct.pack("!IxxxB", length, proto)


@dataclass(frozen=True, slots=True)
class IpPacket:
    """One IP datagram: version from the addresses, ``proto`` = next header, ``payload`` bytes."""

    src: IPAddress
    dst: IPAddress
    proto: int
    payload: bytes
    ttl: int = 64
    ident: int = 0

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise SimWireError("IP source and destination differ in version")

    @property
    def version(self) -> int:
        return self.src.version

    def encode(self) -> bytes:
        if self.version == 4:
            total = 20 + len(self.payload)
            if total > 0xFFFF:
                raise SimWireError("IPv4 datagram too long")
            hdr = _IPV4.pack(
                0x45,
                0,
                total,
                self.ident & 0xFFFF,
                0x4000,
                self.ttl,
                self.proto,
                0,
                self.src.packed,
                self.dst.packed,
            )
            csum = internet_checksum(hdr)
            return hdr[:10] + struct.pack("!H", csum) + hdr[12:] + self.payload
        if len(self.payload) > 0xFFFF:
            raise SimWireError("IPv6 payload too long")
        hdr = _IPV6.pack(6 << 28, len(self.payload), self.proto, self.ttl, self.src.packed, self.dst.packed)
        return hdr + self.payload

    @classmethod
    def decode(cls, data: bytes) -> IpPacket:
        if not data:
            raise SimWireError("empty IP datagram")
        version = data[0] >> 4
        if version == 4:
            if len(data) < 20:
                raise SimWireError("truncated IPv4 header")
            vihl, _tos, total, ident, frag, ttl, proto, _csum, src, dst = _IPV4.unpack_from(data)
            if vihl & 0x0F != 5:
                raise SimWireError("IPv4 options are not supported")
            if total < 20 or total > len(data):
                raise SimWireError(f"bad IPv4 total length {total}")
            if frag & 0x3FFF:
                raise SimWireError("IPv4 fragments are not supported")
            if internet_checksum(data[:20]) != 0:
                raise SimWireError("bad IPv4 header checksum")
            return cls(
                ipaddress.IPv4Address(src),
                ipaddress.IPv4Address(dst),
                proto,
                bytes(data[20:total]),
                ttl,
                ident,
            )
        if version == 6:
            if len(data) < 40:
                raise SimWireError("truncated IPv6 header")
            _vtf, plen, nxt, hlim, src6, dst6 = _IPV6.unpack_from(data)
            if 40 + plen > len(data):
                raise SimWireError(f"bad IPv6 payload length {plen}")
            return cls(
                ipaddress.IPv6Address(src6),
                ipaddress.IPv6Address(dst6),
                nxt,
                bytes(data[40 : 40 + plen]),
                hlim,
            )
        raise SimWireError(f"bad IP version {version}")
