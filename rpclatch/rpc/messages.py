"""ONC RPC v2 message structures (RFC 5531 §9) as frozen dataclasses, and their one decoder.

Procedure arguments and results are carried as already-encoded XDR bytes: the RPC layer never
interprets them, the program (or an auth flavor's wrapping, RFC 2203 §5.3.2) does.

:func:`decode_message` (and :func:`decode_call`/:func:`decode_reply` for a record whose
``msg_type`` is already known) is the only decoder of these messages. Apart from the two
``opaque_auth`` bodies the headers have a fixed layout, so it reads them with :mod:`struct` at
known offsets; it takes ``bytes`` or a view of a receive buffer and copies out only what it keeps.
The per-call encoders are in :mod:`rpclatch.rpc.wire`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from rpclatch.xdr import Encoder, XdrError

RPC_VERSION = 2

#: RFC 5531 §12.1: "By convention, procedure 0 of any RPC protocol should have the same semantics"
#: as PINGPROC_NULL (no arguments, no results); RPCSEC_GSS control messages travel on it (RFC 2203
#: §5.2.1, §5.3.1).
PROC_NULL = 0

#: RFC 5531 §8.2: "opaque body<400>".
MAX_AUTH_BYTES = 400


class MsgType(IntEnum):
    """``msg_type`` (RFC 5531 §9)."""

    CALL = 0
    REPLY = 1


class ReplyStat(IntEnum):
    """``reply_stat`` (RFC 5531 §9)."""

    MSG_ACCEPTED = 0
    MSG_DENIED = 1


class AcceptStat(IntEnum):
    """``accept_stat`` (RFC 5531 §9)."""

    SUCCESS = 0
    PROG_UNAVAIL = 1
    PROG_MISMATCH = 2
    PROC_UNAVAIL = 3
    GARBAGE_ARGS = 4
    SYSTEM_ERR = 5


class RejectStat(IntEnum):
    """``reject_stat`` (RFC 5531 §9)."""

    RPC_MISMATCH = 0
    AUTH_ERROR = 1


class AuthStat(IntEnum):
    """``auth_stat`` (RFC 5531 §9, RFC 2203 §5.3.3.3)."""

    AUTH_OK = 0
    AUTH_BADCRED = 1
    AUTH_REJECTEDCRED = 2
    AUTH_BADVERF = 3
    AUTH_REJECTEDVERF = 4
    AUTH_TOOWEAK = 5
    AUTH_INVALIDRESP = 6
    AUTH_FAILED = 7
    AUTH_KERB_GENERIC = 8
    AUTH_TIMEEXPIRE = 9
    AUTH_TKT_FILE = 10
    AUTH_DECODE = 11
    AUTH_NET_ADDR = 12
    RPCSEC_GSS_CREDPROBLEM = 13
    RPCSEC_GSS_CTXPROBLEM = 14


class AuthFlavor(IntEnum):
    """``auth_flavor`` numbers (RFC 5531 §8.2, RFC 2203 §5)."""

    AUTH_NONE = 0
    AUTH_SYS = 1
    AUTH_SHORT = 2
    AUTH_DH = 3
    RPCSEC_GSS = 6


@dataclass(frozen=True, slots=True)
class OpaqueAuth:
    """``opaque_auth`` (RFC 5531 §8.2): a flavor number and at most 400 bytes of body."""

    flavor: int
    body: bytes = b""

    def __post_init__(self) -> None:
        if len(self.body) > MAX_AUTH_BYTES:
            raise XdrError(f"opaque_auth body of {len(self.body)} bytes exceeds {MAX_AUTH_BYTES}")

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.flavor).opaque(self.body, MAX_AUTH_BYTES)


NULL_AUTH = OpaqueAuth(AuthFlavor.AUTH_NONE, b"")


@dataclass(frozen=True, slots=True)
class CallMessage:
    """An RPC call (RFC 5531 §9 ``call_body``) with its raw argument bytes.

    ``header_len`` is the length of the encoded header from ``xid`` through the credential; RFC 2203
    §5.3.1 computes the RPCSEC_GSS verifier as a MIC over exactly those bytes. ``header`` holds
    those bytes as received when :func:`decode_call` decoded a call with a credential other
    than AUTH_NONE and a verifier other than an empty AUTH_NONE one (so a verifier can be checked
    without re-encoding), else b"" (it is not an ``__init__`` argument, so ``dataclasses.replace``
    never carries stale bytes over).
    """

    xid: int
    prog: int
    vers: int
    proc: int
    cred: OpaqueAuth = NULL_AUTH
    verf: OpaqueAuth = NULL_AUTH
    args: bytes = b""
    rpcvers: int = RPC_VERSION
    header_len: int = field(default=0, compare=False)
    header: bytes = field(default=b"", init=False, compare=False, repr=False)

    def encode_header_through_cred(self) -> bytes:
        """Encoded ``xid .. cred`` (the bytes RFC 2203 §5.3.1 signs)."""
        enc = Encoder()
        enc.uint32(self.xid).uint32(MsgType.CALL).uint32(self.rpcvers)
        enc.uint32(self.prog).uint32(self.vers).uint32(self.proc)
        self.cred.encode_into(enc)
        return enc.to_bytes()

    def encode(self) -> bytes:
        enc = Encoder()
        enc.raw(self.encode_header_through_cred())
        self.verf.encode_into(enc)
        return enc.to_bytes() + self.args


@dataclass(frozen=True, slots=True)
class AcceptedReply:
    """``accepted_reply`` (RFC 5531 §9).

    ``results`` holds the encoded procedure results for SUCCESS; ``mismatch`` the (low, high)
    version range for PROG_MISMATCH; other statuses carry nothing.
    """

    xid: int
    verf: OpaqueAuth = NULL_AUTH
    stat: AcceptStat = AcceptStat.SUCCESS
    results: bytes = b""
    mismatch: tuple[int, int] | None = None

    def encode(self) -> bytes:
        enc = Encoder()
        enc.uint32(self.xid).uint32(MsgType.REPLY).uint32(ReplyStat.MSG_ACCEPTED)
        self.verf.encode_into(enc)
        enc.uint32(self.stat)
        if self.stat == AcceptStat.PROG_MISMATCH:
            low, high = self.mismatch or (0, 0)
            enc.uint32(low).uint32(high)
        head = enc.to_bytes()
        return head + self.results if self.stat == AcceptStat.SUCCESS else head


@dataclass(frozen=True, slots=True)
class DeniedReply:
    """``rejected_reply`` (RFC 5531 §9): RPC_MISMATCH with a version range, or AUTH_ERROR."""

    xid: int
    stat: RejectStat
    mismatch: tuple[int, int] | None = None
    auth_stat: AuthStat | None = None

    def encode(self) -> bytes:
        enc = Encoder()
        enc.uint32(self.xid).uint32(MsgType.REPLY).uint32(ReplyStat.MSG_DENIED).uint32(self.stat)
        if self.stat == RejectStat.RPC_MISMATCH:
            low, high = self.mismatch or (RPC_VERSION, RPC_VERSION)
            enc.uint32(low).uint32(high)
        else:
            enc.uint32(self.auth_stat if self.auth_stat is not None else AuthStat.AUTH_FAILED)
        return enc.to_bytes()


ReplyMessage = AcceptedReply | DeniedReply
RpcMessage = CallMessage | AcceptedReply | DeniedReply


Buffer = bytes | memoryview

_WORD = struct.Struct(">I")
_TWO_WORDS = struct.Struct(">II")
_THREE_WORDS = struct.Struct(">III")
# xid, msg_type, rpcvers, prog, vers, proc, cred flavor, cred length (RFC 5531 §9 call_body).
_CALL_HEAD = struct.Struct(">IIIIIIII")

_AUTH_NONE = int(AuthFlavor.AUTH_NONE)
_CALL = int(MsgType.CALL)
_REPLY = int(MsgType.REPLY)
_MSG_ACCEPTED = int(ReplyStat.MSG_ACCEPTED)
_MSG_DENIED = int(ReplyStat.MSG_DENIED)
_ACCEPT_STATS = {int(s): s for s in AcceptStat}
_REJECT_STATS = {int(s): s for s in RejectStat}
_AUTH_STATS = {int(s): s for s in AuthStat}

_new_object = object.__new__
# The slot descriptors of the frozen dataclasses (their __set__ writes the slot directly).
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


def _check_auth_length(n: int, pos: int, end: int) -> int:
    """The offset after an ``opaque body<400>`` of ``n`` bytes starting at ``pos`` (RFC 5531 §8.2,
    padded to 4 bytes, RFC 4506 §4.10)."""
    if n > MAX_AUTH_BYTES:
        raise XdrError(f"opaque length {n} exceeds limit {MAX_AUTH_BYTES}")
    stop = pos + ((n + 3) & ~3)
    if stop > end:
        raise XdrError(f"fixed opaque of {n} bytes overruns buffer ({end - pos} left)")
    return stop


def _read_auth(data: Buffer, pos: int, end: int) -> tuple[OpaqueAuth, int]:
    """The ``opaque_auth`` at ``data[pos:end]`` and the offset after it."""
    if end - pos < 8:
        raise XdrError(f"truncated opaque_auth at offset {pos}")
    flavor, n = _TWO_WORDS.unpack_from(data, pos)
    pos += 8
    stop = _check_auth_length(n, pos, end)
    if n == 0 and flavor == _AUTH_NONE:
        return NULL_AUTH, stop
    return opaque_auth(flavor, bytes(data[pos : pos + n])), stop


def decode_call(data: Buffer, start: int = 0, end: int | None = None) -> CallMessage:
    """The ``call_body`` (RFC 5531 §9) in the record ``data[start:end]``, which starts with
    ``xid, CALL``; ``rpcvers`` is returned, not checked (the server answers RPC_MISMATCH).

    When both the credential and the verifier carry something, the received bytes from ``xid``
    through the credential are kept in ``header``: an RPCSEC_GSS verifier is a MIC over exactly
    those bytes (RFC 2203 §5.3.1), padding included."""
    if end is None:
        end = len(data)
    if end - start < 32:
        raise XdrError("truncated call header")
    xid, _mtype, rpcvers, prog, vers, proc, cflavor, clen = _CALL_HEAD.unpack_from(data, start)
    header_len = _check_auth_length(clen, start + 32, end) - start
    verf, pos = _read_auth(data, start + header_len, end)
    args = bytes(data[pos:end])
    if clen == 0 and cflavor == _AUTH_NONE:
        return CallMessage(xid, prog, vers, proc, NULL_AUTH, verf, args, rpcvers, header_len)
    if verf is NULL_AUTH:  # an empty AUTH_NONE verifier signs nothing: no header bytes to keep
        cred = opaque_auth(cflavor, bytes(data[start + 32 : start + 32 + clen]))
        return CallMessage(xid, prog, vers, proc, cred, verf, args, rpcvers, header_len)
    header = bytes(data[start : start + header_len])
    call = CallMessage(
        xid, prog, vers, proc, opaque_auth(cflavor, header[32 : 32 + clen]), verf, args, rpcvers, header_len
    )
    _set_call_header(call, header)
    return call


def decode_reply(data: Buffer, start: int = 0, end: int | None = None) -> ReplyMessage:
    """The ``reply_body`` (RFC 5531 §9) in the record ``data[start:end]``, which starts with
    ``xid, REPLY``. Bytes after a reply other than SUCCESS are ignored."""
    if end is None:
        end = len(data)
    if end - start < 12:
        raise XdrError("truncated reply header")
    xid, _mtype, reply_stat = _THREE_WORDS.unpack_from(data, start)
    if reply_stat == _MSG_ACCEPTED:
        verf, pos = _read_auth(data, start + 12, end)
        if end - pos < 4:
            raise XdrError(f"truncated accept_stat at offset {pos - start}")
        (astat,) = _WORD.unpack_from(data, pos)
        pos += 4
        if astat == 0:
            return AcceptedReply(xid, verf, AcceptStat.SUCCESS, bytes(data[pos:end]))
        accept = _ACCEPT_STATS.get(astat)
        if accept is None:
            raise XdrError(f"unknown AcceptStat value {astat}")
        if accept == AcceptStat.PROG_MISMATCH:
            if end - pos < 8:
                raise XdrError("truncated mismatch_info")
            return AcceptedReply(xid, verf, accept, b"", _TWO_WORDS.unpack_from(data, pos))
        return AcceptedReply(xid, verf, accept)
    if reply_stat != _MSG_DENIED:
        raise XdrError(f"unknown ReplyStat value {reply_stat}")
    if end - start < 16:
        raise XdrError("truncated reject_stat")
    (rstat,) = _WORD.unpack_from(data, start + 12)
    reject = _REJECT_STATS.get(rstat)
    if reject is None:
        raise XdrError(f"unknown RejectStat value {rstat}")
    if reject == RejectStat.RPC_MISMATCH:
        if end - start < 24:
            raise XdrError("truncated mismatch_info")
        return DeniedReply(xid, reject, mismatch=_TWO_WORDS.unpack_from(data, start + 16))
    if end - start < 20:
        raise XdrError("truncated auth_stat")
    (auth_stat,) = _WORD.unpack_from(data, start + 16)
    auth = _AUTH_STATS.get(auth_stat)
    if auth is None:
        raise XdrError(f"unknown AuthStat value {auth_stat}")
    return DeniedReply(xid, reject, auth_stat=auth)


def message_type(data: Buffer) -> int | None:
    """The ``msg_type`` word of a record (0 CALL, 1 REPLY, other = invalid), None if too short."""
    return _WORD.unpack_from(data, 4)[0] if len(data) >= 8 else None


def decode_message(data: Buffer) -> RpcMessage:
    """Decode one RPC message (one reassembled record). Raises :class:`XdrError` if malformed."""
    mtype = message_type(data)
    if mtype is None:
        raise XdrError("truncated message header")
    if mtype == _CALL:
        return decode_call(data)
    if mtype == _REPLY:
        return decode_reply(data)
    raise XdrError(f"unknown MsgType value {mtype}")


def peek_xid(data: bytes) -> int | None:
    """The xid of a record, or None if it is too short to have one (used to log bad records)."""
    return _WORD.unpack_from(data)[0] if len(data) >= 4 else None
