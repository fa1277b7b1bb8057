"""Encoders of RPC calls and replies (RFC 5531 §9) for the per-call paths, and the record hooks.

The headers of calls and replies are fixed-layout apart from the two ``opaque_auth`` bodies, so
they are written with :mod:`struct` and joins; each encoder produces the same bytes as the
message's ``encode()`` (a property test checks this). Decoding is
:func:`rpclatch.rpc.messages.decode_message` (one decoder); :func:`fast_call` and
:func:`fast_reply` hand it records straight from a receive buffer.
"""

from __future__ import annotations

import struct

from rpclatch.rpc.messages import (
    AuthFlavor,
    Buffer,
    CallMessage,
    MsgType,
    OpaqueAuth,
    ReplyMessage,
    decode_call,
    decode_reply,
)
from rpclatch.xdr import XdrError

_I = struct.Struct(">I")
_II = struct.Struct(">II")
_III = struct.Struct(">III")
_CALL_HEAD = struct.Struct(">IIIIIIII")  # xid, CALL, rpcvers, prog, vers, proc, cred flavor, len
_REPLY_HEAD = struct.Struct(">IIIII")  # xid, REPLY, MSG_ACCEPTED, verf flavor, verf len
_ACCEPTED_NULL_VERF_SUCCESS = struct.Struct(">IIIIII")  # ... + AUTH_NONE, 0, SUCCESS
_MARKED_CALL_NULL_AUTH = struct.Struct(">IIIIIIIIIII")
_MARKED_CALL_HEAD = struct.Struct(">IIIIIIIII")  # fragment header + _CALL_HEAD
_MARKED_NULL_VERF_SUCCESS = struct.Struct(">IIIIIII")
_LAST_FRAGMENT = 0x80000000
_ZERO_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")
_NULL_VERF_PAD = tuple(pad + b"\0" * 8 for pad in _ZERO_PAD)  # credential padding + AUTH_NONE verifier

_CALL = int(MsgType.CALL)
_REPLY = int(MsgType.REPLY)
_AUTH_NONE = int(AuthFlavor.AUTH_NONE)


def _auth_bytes(auth: OpaqueAuth) -> bytes:
    body = auth.body
    n = len(body)
    if not n:
        return _II.pack(auth.flavor, 0)
    return _II.pack(auth.flavor, n) + body + _ZERO_PAD[n & 3]


def encode_call(msg: CallMessage) -> bytes:
    """The bytes of ``msg.encode()``, packed in one go for the per-call path. The args must already
    be XDR (a multiple of 4 bytes)."""
    cred = msg.cred
    head = _CALL_HEAD.pack(
        msg.xid, _CALL, msg.rpcvers, msg.prog, msg.vers, msg.proc, cred.flavor, len(cred.body)
    )
    cbody = cred.body
    verf = msg.verf
    if not cbody and verf.flavor == _AUTH_NONE and not verf.body:
        return head + b"\0\0\0\0\0\0\0\0" + msg.args
    return b"".join((head, cbody, _ZERO_PAD[len(cbody) & 3], _auth_bytes(verf), msg.args))


def encode_call_marked(msg: CallMessage) -> tuple[bytes, bytes]:
    """``msg`` record-marked as one last fragment (RFC 5531 §11), as two buffers to send in order:
    fragment header + call header, then the arguments (uncopied)."""
    cred = msg.cred
    cbody = cred.body
    verf = msg.verf
    args = msg.args
    if not cbody and cred.flavor == _AUTH_NONE and verf.flavor == _AUTH_NONE and not verf.body:
        return _MARKED_CALL_NULL_AUTH.pack(
            _LAST_FRAGMENT | (40 + len(args)),
            msg.xid,
            _CALL,
            msg.rpcvers,
            msg.prog,
            msg.vers,
            msg.proc,
            0,
            0,
            0,
            0,
        ), args
    # One pack for the fragment header and the fixed call words (the lengths are known up front).
    n = len(cbody)
    vbody = verf.body
    m = len(vbody)
    if not m and verf.flavor == _AUTH_NONE:  # e.g. RPCSEC_GSS channel_prot (RFC 5403 §3.4)
        size = 40 + ((n + 3) & ~3) + len(args)
        return (
            _MARKED_CALL_HEAD.pack(
                _LAST_FRAGMENT | size,
                msg.xid,
                _CALL,
                msg.rpcvers,
                msg.prog,
                msg.vers,
                msg.proc,
                cred.flavor,
                n,
            )
            + cbody
            + _NULL_VERF_PAD[n & 3]
        ), args
    size = 40 + ((n + 3) & ~3) + ((m + 3) & ~3) + len(args)
    head = b"".join(
        (
            _MARKED_CALL_HEAD.pack(
                _LAST_FRAGMENT | size,
                msg.xid,
                _CALL,
                msg.rpcvers,
                msg.prog,
                msg.vers,
                msg.proc,
                cred.flavor,
                n,
            ),
            cbody,
            _ZERO_PAD[n & 3],
            _II.pack(verf.flavor, m),
            vbody,
            _ZERO_PAD[m & 3],
        )
    )
    return head, args


def encode_success(xid: int, verf: OpaqueAuth, results: bytes) -> bytes:
    """An accepted SUCCESS reply carrying ``results`` (RFC 5531 §9 ``accepted_reply``)."""
    if verf.flavor == _AUTH_NONE and not verf.body:
        return _ACCEPTED_NULL_VERF_SUCCESS.pack(xid, _REPLY, 0, 0, 0, 0) + results
    return b"".join((_II.pack(xid, _REPLY), b"\0\0\0\0", _auth_bytes(verf), b"\0\0\0\0", results))


def encode_success_marked(xid: int, verf: OpaqueAuth, results: bytes) -> tuple[bytes, bytes]:
    """:func:`encode_success` record-marked as one fragment, as (header buffer, results)."""
    if verf.flavor == _AUTH_NONE and not verf.body:
        return _MARKED_NULL_VERF_SUCCESS.pack(
            _LAST_FRAGMENT | (24 + len(results)), xid, _REPLY, 0, 0, 0, 0
        ), results
    head = b"".join((_II.pack(xid, _REPLY), b"\0\0\0\0", _auth_bytes(verf), b"\0\0\0\0"))
    return _I.pack(_LAST_FRAGMENT | (len(head) + len(results))) + head, results


def fast_call(data: Buffer, start: int, end: int) -> CallMessage | None:
    """The call in ``data[start:end]`` if it is a well-formed RPC v2 CALL, else None (the caller
    then handles the record's bytes itself: RPC_MISMATCH, a logged drop). A record hook of the
    reassembler: it decodes straight from the receive buffer."""
    if end - start < 40:
        return None
    _xid, mtype, rpcvers = _III.unpack_from(data, start)
    if mtype != _CALL or rpcvers != 2:
        return None
    try:
        return decode_call(data, start, end)
    except XdrError:
        return None


def fast_reply(data: Buffer, start: int, end: int) -> ReplyMessage | None:
    """The reply in ``data[start:end]`` if it is a well-formed REPLY, else None (the client
    then handles the record's bytes itself)."""
    if end - start < 12 or _I.unpack_from(data, start + 4)[0] != _REPLY:
        return None
    try:
        return decode_reply(data, start, end)
    except XdrError:
        return None
