"""Fast encode/decode of RPC message headers (RFC 5531 §9) for the call/reply hot path.

The structures and the general decoder live in :mod:`rpclatch.rpc.messages` (over xdrlib3). The
headers of calls and replies are fixed-layout apart from the two ``opaque_auth`` bodies, so here
they are read and written with :mod:`struct` and slices, which is several times faster. The
functions accept and reject exactly what :func:`rpclatch.rpc.messages.decode_message` does (a
property test checks this) and raise :class:`rpclatch.xdr.XdrError` on malformed input.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

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
_ACCEPT_STATS = {int(s): s for s in AcceptStat}
_REJECT_STATS = {int(s): s for s in RejectStat}
_AUTH_STATS = {int(s): s for s in AuthStat}


_new_object = object.__new__
# The slot descriptors of the frozen dataclass (their __set__ writes the slot directly).
_set_auth_flavor: Callable[[OpaqueAuth, int], None] = OpaqueAuth.__dict__["flavor"].__set__
_set_auth_body: Callable[[OpaqueAuth, bytes], None] = OpaqueAuth.__dict__["body"].__set__


_set_call_header: Callable[[CallMessage, bytes], None] = CallMessage.__dict__["header"].__set__


def opaque_auth(flavor: int, body: bytes) -> OpaqueAuth:
    """``OpaqueAuth(flavor, body)`` for a ``body`` already known to be at most
    :data:`MAX_AUTH_BYTES` long (a decoder checked it, or it has a fixed small size): the
    per-call paths skip the dataclass ``__init__``/``__post_init__`` (half the cost). The result is
    an ordinary, equal, frozen OpaqueAuth."""
    auth: OpaqueAuth = _new_object(OpaqueAuth)
    _set_auth_flavor(auth, flavor)
    _set_auth_body(auth, body)
    return auth


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


def encode_call_marked(msg: CallMessage) -> tuple[bytes, bytes]:
    """``msg`` record-marked as one last fragment (RFC 5531 §11), as two buffers to send in order:
    fragment header + call header, then the arguments (uncopied)."""
    cred = msg.cred
    cbody = cred.body
    verf = msg.verf
    args = msg.args
    if not cbody and cred.flavor == _AUTH_NONE and verf.flavor == _AUTH_NONE and not verf.body:
        return _MARKED_CALL_NULL_AUTH.pack(_LAST_FRAGMENT | (40 + len(args)), msg.xid, _CALL,
                                           msg.rpcvers, msg.prog, msg.vers, msg.proc,
                                           0, 0, 0, 0), args
    # One pack for the fragment header and the fixed call words (the lengths are known up front).
    n = len(cbody)
    vbody = verf.body
    m = len(vbody)
    if not m and verf.flavor == _AUTH_NONE:  # e.g. RPCSEC_GSS channel_prot (RFC 5403 §3.4)
        size = 40 + ((n + 3) & ~3) + len(args)
        return (_MARKED_CALL_HEAD.pack(_LAST_FRAGMENT | size, msg.xid, _CALL, msg.rpcvers, msg.prog,
                                       msg.vers, msg.proc, cred.flavor, n)
                + cbody + _NULL_VERF_PAD[n & 3]), args
    size = 40 + ((n + 3) & ~3) + ((m + 3) & ~3) + len(args)
    head = b"".join((_MARKED_CALL_HEAD.pack(_LAST_FRAGMENT | size, msg.xid, _CALL, msg.rpcvers,
                                            msg.prog, msg.vers, msg.proc, cred.flavor, n),
                     cbody, _ZERO_PAD[n & 3], _II.pack(verf.flavor, m), vbody, _ZERO_PAD[m & 3]))
    return head, args


def encode_success(xid: int, verf: OpaqueAuth, results: bytes) -> bytes:
    """An accepted SUCCESS reply carrying ``results`` (RFC 5531 §9 ``accepted_reply``)."""
    if verf.flavor == _AUTH_NONE and not verf.body:
        return _ACCEPTED_NULL_VERF_SUCCESS.pack(xid, _REPLY, 0, 0, 0, 0) + results
    return b"".join((_II.pack(xid, _REPLY), b"\0\0\0\0", _auth_bytes(verf), b"\0\0\0\0", results))


def encode_success_marked(xid: int, verf: OpaqueAuth, results: bytes) -> tuple[bytes, bytes]:
    """:func:`encode_success` record-marked as one fragment, as (header buffer, results)."""
    if verf.flavor == _AUTH_NONE and not verf.body:
        return _MARKED_NULL_VERF_SUCCESS.pack(_LAST_FRAGMENT | (24 + len(results)), xid, _REPLY,
                                              0, 0, 0, 0), results
    head = b"".join((_II.pack(xid, _REPLY), b"\0\0\0\0", _auth_bytes(verf), b"\0\0\0\0"))
    return _I.pack(_LAST_FRAGMENT | (len(head) + len(results))) + head, results


Buffer = bytes | memoryview


def _read_auth(data: Buffer, pos: int, end: int) -> tuple[OpaqueAuth, int]:
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
    return opaque_auth(flavor, bytes(data[pos:pos + n])), stop


def decode_call_body(data: Buffer, start: int = 0, end: int | None = None) -> CallMessage:
    """Decode the record ``data[start:end]``, known to start with ``xid, CALL`` (see
    :func:`decode_message`). ``data`` may be a view of a receive buffer: only the pieces kept
    (credential, verifier, arguments) are copied out."""
    if end is None:
        end = len(data)
    if end - start < 32:
        raise XdrError("truncated call header")
    xid, _m, rpcvers, prog, vers, proc, cflavor, clen = _CALL_HEAD.unpack_from(data, start)
    if clen > MAX_AUTH_BYTES:
        raise XdrError(f"opaque length {clen} exceeds limit {MAX_AUTH_BYTES}")
    header_len = 32 + ((clen + 3) & ~3)
    if start + header_len > end:
        raise XdrError(f"fixed opaque of {clen} bytes overruns buffer ({end - start - 32} left)")
    if clen == 0 and cflavor == _AUTH_NONE:
        verf, pos = _read_auth(data, start + header_len, end)
        return CallMessage(xid, prog, vers, proc, NULL_AUTH, verf, bytes(data[pos:end]), rpcvers,
                           header_len)
    verf, pos = _read_auth(data, start + header_len, end)
    if verf is NULL_AUTH:  # an AUTH_NONE verifier signs nothing: no header bytes to keep
        cred = opaque_auth(cflavor, bytes(data[start + 32:start + 32 + clen]))
        return CallMessage(xid, prog, vers, proc, cred, verf, bytes(data[pos:end]), rpcvers, header_len)
    # Keep the received xid .. cred bytes: an RPCSEC_GSS verifier is a MIC over them (§5.3.1).
    header = bytes(data[start:start + header_len])
    cred = opaque_auth(cflavor, header[32:32 + clen])
    call = CallMessage(xid, prog, vers, proc, cred, verf, bytes(data[pos:end]), rpcvers, header_len)
    _set_call_header(call, header)
    return call


def decode_reply_body(data: Buffer, start: int = 0, end: int | None = None) -> ReplyMessage:
    """Decode the record ``data[start:end]``, known to start with ``xid, REPLY`` (see
    :func:`decode_message`); like :func:`decode_call_body` it accepts a view."""
    if end is None:
        end = len(data)
    if end - start < 12:
        raise XdrError("truncated reply header")
    xid, _m, stat = _III.unpack_from(data, start)
    if stat == 0:
        verf, pos = _read_auth(data, start + 12, end)
        if end - pos < 4:
            raise XdrError(f"truncated accept_stat at offset {pos - start}")
        (astat,) = _I.unpack_from(data, pos)
        pos += 4
        if astat == 0:
            return AcceptedReply(xid, verf, AcceptStat.SUCCESS, bytes(data[pos:end]))
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
    if end - start < 16:
        raise XdrError("truncated reject_stat")
    (rstat,) = _I.unpack_from(data, start + 12)
    reject = _REJECT_STATS.get(rstat)
    if reject is None:
        raise XdrError(f"unknown RejectStat value {rstat}")
    if reject == RejectStat.RPC_MISMATCH:
        if end - start < 24:
            raise XdrError("truncated mismatch_info")
        return DeniedReply(xid, reject, mismatch=_II.unpack_from(data, start + 16))
    if end - start < 20:
        raise XdrError("truncated auth_stat")
    (astat,) = _I.unpack_from(data, start + 16)
    auth = _AUTH_STATS.get(astat)
    if auth is None:
        raise XdrError(f"unknown AuthStat value {astat}")
    return DeniedReply(xid, reject, auth_stat=auth)


def fast_call(data: Buffer, start: int, end: int) -> CallMessage | None:
    """The call in ``data[start:end]`` if it is a well-formed RPC v2 CALL, else None (the caller
    then takes the general path with the record's bytes). Used on receive buffers directly."""
    if end - start < 40:
        return None
    _xid, mtype, rpcvers = _III.unpack_from(data, start)
    if mtype != _CALL or rpcvers != 2:
        return None
    try:
        return decode_call_body(data, start, end)
    except XdrError:
        return None


def fast_reply(data: Buffer, start: int, end: int) -> ReplyMessage | None:
    """The reply in ``data[start:end]`` if it is a well-formed REPLY, else None."""
    if end - start < 12 or _I.unpack_from(data, start + 4)[0] != _REPLY:
        return None
    try:
        return decode_reply_body(data, start, end)
    except XdrError:
        return None


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
