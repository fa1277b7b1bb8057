"""UDP datagrams (RFC 768) on the simulated wire, checksum included."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from rpclatch.netsim.errors import SimWireError
from rpclatch.netsim.ip import PROTO_UDP, IPAddress, internet_checksum, pseudo_header

_UDP = struct.Struct("!HHHH")


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    src_port: int
    dst_port: int
    payload: bytes

    def encode(self, src: IPAddress, dst: IPAddress) -> bytes:
        length = 8 + len(self.payload)
        if length > 0xFFFF:
            raise SimWireError("UDP datagram too long")
        body = _UDP.pack(self.src_port, self.dst_port, length, 0) + self.payload
        csum = internet_checksum(pseudo_header(src, dst, PROTO_UDP, length) + body) or 0xFFFF
        return body[:6] + struct.pack("!H", csum) + body[8:]

    @classmethod
    def decode(cls, data: bytes, src: IPAddress, dst: IPAddress) -> UdpDatagram:
        if len(data) < 8:
            raise SimWireError("truncated UDP header")
        sport, dport, length, csum = _UDP.unpack_from(data)
        if length < 8 or length > len(data):
            raise SimWireError(f"bad UDP length {length}")
        if csum and internet_checksum(pseudo_header(src, dst, PROTO_UDP, length) + data[:length]) != 0:
            raise SimWireError("bad UDP checksum")
        return cls(sport, dport, bytes(data[8:length]))
