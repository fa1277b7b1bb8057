"""TCP segments (RFC 9293 §3.1 header layout) for the simulated reliable byte stream.

The simulated stream is "TCP-like": it uses the real TCP header (so captures decode as TCP in
tshark) but no options, no window scaling and no urgent data.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from rpclatch.netsim.errors import SimWireError
from rpclatch.netsim.ip import PROTO_TCP, IPAddress, internet_checksum, pseudo_header

_TCP = struct.Struct("!HHIIBBHHH")


class Flags(enum.IntFlag):
    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10


@dataclass(frozen=True, slots=True)
class TcpSegment:
    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: Flags
    window: int = 65535
    payload: bytes = b""

    @property
    def seg_len(self) -> int:
        """Sequence space consumed: data plus one for SYN and one for FIN."""
        return len(self.payload) + (1 if self.flags & Flags.SYN else 0) + (1 if self.flags & Flags.FIN else 0)

    def encode(self, src: IPAddress, dst: IPAddress) -> bytes:
        hdr = _TCP.pack(
            self.src_port,
            self.dst_port,
            self.seq & 0xFFFFFFFF,
            self.ack & 0xFFFFFFFF,
            5 << 4,
            int(self.flags),
            self.window,
            0,
            0,
        )
        body = hdr + self.payload
        csum = internet_checksum(pseudo_header(src, dst, PROTO_TCP, len(body)) + body)
        return body[:16] + struct.pack("!H", csum) + body[18:]

    @classmethod
    def decode(cls, data: bytes, src: IPAddress, dst: IPAddress) -> TcpSegment:
        if len(data) < 20:
            raise SimWireError("truncated TCP header")
        sport, dport, seq, ack, off, flags, window, _csum, _urg = _TCP.unpack_from(data)
        hlen = (off >> 4) * 4
        if hlen < 20 or hlen > len(data):
            raise SimWireError(f"bad TCP data offset {hlen}")
        if internet_checksum(pseudo_header(src, dst, PROTO_TCP, len(data)) + data) != 0:
            raise SimWireError("bad TCP checksum")
        return cls(sport, dport, seq, ack, Flags(flags & 0x1F), window, bytes(data[hlen:]))

    def describe(self) -> str:
        names = "".join(
            n
            for f, n in (
                (Flags.SYN, "S"),
                (Flags.FIN, "F"),
                (Flags.RST, "R"),
                (Flags.PSH, "P"),
                (Flags.ACK, "."),
            )
            if self.flags & f
        )
        return (
            f"{self.src_port}>{self.dst_port} [{names}] seq={self.seq} ack={self.ack} len={len(self.payload)}"
        )
