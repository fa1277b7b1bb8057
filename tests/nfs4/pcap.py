"""A minimal libpcap writer for tests: RPC records over one TCP connection to port 2049, so that
Wireshark/tshark's RPC + NFS dissectors can check our encodings independently."""

from __future__ import annotations

import struct
from pathlib import Path

from rpclatch.nfs4.const import NFS4_PROGRAM, NFSPROC4_COMPOUND
from rpclatch.rpc.messages import AcceptedReply, CallMessage

CLIENT = (bytes([192, 0, 2, 1]), 40000)
SERVER = (bytes([192, 0, 2, 2]), 2049)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _frame(src: tuple[bytes, int], dst: tuple[bytes, int], seq: int, ack: int, payload: bytes) -> bytes:
    tcp = struct.pack(">HHIIBBHHH", src[1], dst[1], seq, ack, 5 << 4, 0x18, 65535, 0, 0) + payload
    pseudo = src[0] + dst[0] + struct.pack(">BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack(">H", _checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, src[0], dst[0])
    ip = ip[:10] + struct.pack(">H", _checksum(ip)) + ip[12:]
    eth = b"\x02\0\0\0\0\x02" + b"\x02\0\0\0\0\x01" + b"\x08\x00"
    return eth + ip + tcp


def write_rpc_pcap(path: Path, exchanges: list[tuple[int, bytes, bytes]]) -> None:
    """``exchanges``: (minorversion-agnostic) pairs of COMPOUND4args / COMPOUND4res bytes, each as
    (xid, args, results); written as call/reply records with consistent TCP sequence numbers."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    cseq, sseq = 1000, 5000
    t = 0
    for xid, args, results in exchanges:
        for src, dst, msg in (
            (CLIENT, SERVER, CallMessage(xid, NFS4_PROGRAM, 4, NFSPROC4_COMPOUND, args=args).encode()),
            (SERVER, CLIENT, AcceptedReply(xid, results=results).encode()),
        ):
            rec = struct.pack(">I", 0x80000000 | len(msg)) + msg
            if src is CLIENT:
                frame = _frame(src, dst, cseq, sseq, rec)
                cseq += len(rec)
            else:
                frame = _frame(src, dst, sseq, cseq, rec)
                sseq += len(rec)
            t += 1
            out.append(struct.pack("<IIII", t, 0, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))
