"""Fast encode/decode of RPC message headers (RFC 5531 §9) for the call/reply hot path.

The structures and the general decoder live in :mod:`rpclatch.rpc.messages` (over xdrlib3). The
headers of calls and replies are fixed-layout apart from the two ``opaque_auth`` bodies, so here
they are read and written with :mod:`struct` and slices, which is several times faster. The
functions accept and reject exactly what :func:`rpclatch.rpc.messages.decode_message` does (a
property test checks this) and raise :class:`rpclatch.xdr.XdrError` on malformed input.
"""

from __future__ import annotations

import struct

from rpclatch.rpc.messages import (
    MAX_AUTH_BYTES,
    NULL_AUTH,
    AcceptedReply,
    AcceptStat,
    AuthFlavor,
    AuthStat,
    CallMessage,
    DeniedReply,
    MsgType,
    OpaqueAuth,
    RejectStat,
    ReplyMessage,
    RpcMessage,
)
from rpclatch.xdr import XdrError

_I = struct.Struct(">I")
_II = struct.Struct(">II")
_CALL_HEAD = struct.Struct(">IIIIIIII")  # xid, CALL, rpcvers, prog, vers, proc, cred flavor, len
_REPLY_HEAD = struct.Struct(">IIIII")  # xid, REPLY, MSG_ACCEPTED, verf flavor, verf len
_ACCEPTED_NULL_VERF_SUCCESS = struct.Struct(">IIIIII")  # ... + AUTH_NONE, 0, SUCCESS
_ZERO_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")

_CALL = int(MsgType.CALL)
_REPLY = int(MsgType.REPLY)
_AUTH_NONE = int(AuthFlavor.AUTH_NONE)
_ACCEPT_STATS = {int(s): s for s in AcceptStat}
_REJECT_STATS = {int(s): s for s in RejectStat}
_AUTH_STATS = {int(s): s for s in AuthStat}


def _auth_bytes(auth: OpaqueAuth) -> bytes:
    body = auth.body
    n = len(body)
    if not n:
        return _II.pack(auth.flavor, 0)
    return _II.pack(auth.flavor, n) + body + _ZERO_PAD[n & 3]


def encode_call(msg: CallMessage) -> bytes:
    """``msg.encode()``, faster. The args must already be XDR (a multiple of 4 bytes)."""
    cred = msg.cred
    head = _CALL_HEAD.pack(msg.xid, _CALL, msg.rpcvers, msg.prog, msg.vers, msg.proc,
                           cred.flavor, len(cred.body))
    cbody = cred.body
    verf = msg.verf
    if not cbody and verf.flavor == _AUTH_NONE and not verf.body:
        return head + b"\0\0\0\0\0\0\0\0" + msg.args
    return b"".join((head, cbody, _ZERO_PAD[len(cbody) & 3], _auth_bytes(verf), msg.args))


def encode_success(xid: int, verf: OpaqueAuth, results: bytes) -> bytes:
    """An accepted SUCCESS reply carrying ``results`` (RFC 5531 §9 ``accepted_reply``)."""
    if verf.flavor == _AUTH_NONE and not verf.body:
        return _ACCEPTED_NULL_VERF_SUCCESS.pack(xid, _REPLY, 0, 0, 0, 0) + results
    return b"".join((_II.pack(xid, _REPLY), b"\0\0\0\0", _auth_bytes(verf), b"\0\0\0\0", results))


def _read_auth(data: bytes, pos: int, end: int) -> tuple[OpaqueAuth, int]:
    if end - pos < 8:
        raise XdrError(f"truncated opaque_auth at offset {pos}")
    flavor, n = _II.unpack_from(data, pos)
    if n > MAX_AUTH_BYTES:
        raise XdrError(f"opaque length {n} exceeds limit {MAX_AUTH_BYTES}")
    pos += 8
    stop = pos + ((n + 3) & ~3)
    if stop > end:
        raise XdrError(f"fixed opaque of {n} bytes overruns buffer ({end - pos} left)")
    if n == 0 and flavor == _AUTH_NONE:
        return NULL_AUTH, stop
    return OpaqueAuth(flavor, data[pos:pos + n]), stop


def decode_call_body(data: bytes) -> CallMessage:
    """Decode a record known to start with ``xid, CALL`` (see :func:`decode_message`)."""
    end = len(data)
    if end < 32:
        raise XdrError("truncated call header")
    xid, _m, rpcvers, prog, vers, proc, cflavor, clen = _CALL_HEAD.unpack_from(data, 0)
    if clen > MAX_AUTH_BYTES:
        raise XdrError(f"opaque length {clen} exceeds limit {MAX_AUTH_BYTES}")
    header_len = 32 + ((clen + 3) & ~3)
    if header_len > end:
        raise XdrError(f"fixed opaque of {clen} bytes overruns buffer ({end - 32} left)")
    cred = NULL_AUTH if clen == 0 and cflavor == _AUTH_NONE else OpaqueAuth(cflavor, data[32:32 + clen])
    verf, pos = _read_auth(data, header_len, end)
    return CallMessage(xid, prog, vers, proc, cred, verf, data[pos:], rpcvers, header_len)


def decode_reply_body(data: bytes) -> ReplyMessage:
    """Decode a record known to start with ``xid, REPLY`` (see :func:`decode_message`)."""
    end = len(data)
    if end < 12:
        raise XdrError("truncated reply header")
    xid, _m, stat = struct.unpack_from(">III", data, 0)
    if stat == 0:
        verf, pos = _read_auth(data, 12, end)
        if end - pos < 4:
            raise XdrError(f"truncated accept_stat at offset {pos}")
        (astat,) = _I.unpack_from(data, pos)
        pos += 4
        if astat == 0:
            return AcceptedReply(xid, verf, AcceptStat.SUCCESS, data[pos:])
        accept = _ACCEPT_STATS.get(astat)
        if accept is None:
            raise XdrError(f"unknown AcceptStat value {astat}")
        if accept == AcceptStat.PROG_MISMATCH:
            if end - pos < 8:
                raise XdrError("truncated mismatch_info")
            return AcceptedReply(xid, verf, accept, b"", _II.unpack_from(data, pos))
        return AcceptedReply(xid, verf, accept)
    if stat != 1:
        raise XdrError(f"unknown ReplyStat value {stat}")
    if end < 16:
        raise XdrError("truncated reject_stat")
    (rstat,) = _I.unpack_from(data, 12)
    reject = _REJECT_STATS.get(rstat)
    if reject is None:
        raise XdrError(f"unknown RejectStat value {rstat}")
    if reject == RejectStat.RPC_MISMATCH:
        if end < 24:
            raise XdrError("truncated mismatch_info")
        return DeniedReply(xid, reject, mismatch=_II.unpack_from(data, 16))
    if end < 20:
        raise XdrError("truncated auth_stat")
    (astat,) = _I.unpack_from(data, 16)
    auth = _AUTH_STATS.get(astat)
    if auth is None:
        raise XdrError(f"unknown AuthStat value {astat}")
    return DeniedReply(xid, reject, auth_stat=auth)


def message_type(data: bytes) -> int | None:
    """The ``msg_type`` word of a record (0 CALL, 1 REPLY, other = invalid), None if too short."""
    return _I.unpack_from(data, 4)[0] if len(data) >= 8 else None


def decode_message(data: bytes) -> RpcMessage:
    """Same as :func:`rpclatch.rpc.messages.decode_message`, using the fast paths above."""
    mtype = message_type(data)
    if mtype is None:
        raise XdrError("truncated message header")
    if mtype == _CALL:
        return decode_call_body(data)
    if mtype == _REPLY:
        return decode_reply_body(data)
    raise XdrError(f"unknown MsgType value {mtype}")
