"""ONC RPC v2 message structures (RFC 5531 §9) as frozen dataclasses with encode()/decode().

Procedure arguments and results are carried as already-encoded XDR bytes: the RPC layer never
interprets them, the program (or an auth flavor's wrapping, RFC 2203 §5.3.2) does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from rpclatch.xdr import Decoder, Encoder, XdrError

RPC_VERSION = 2

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

    @classmethod
    def decode_from(cls, dec: Decoder) -> OpaqueAuth:
        flavor = dec.uint32()
        return cls(flavor, dec.opaque(MAX_AUTH_BYTES))


NULL_AUTH = OpaqueAuth(AuthFlavor.AUTH_NONE, b"")


@dataclass(frozen=True, slots=True)
class CallMessage:
    """An RPC call (RFC 5531 §9 ``call_body``) with its raw argument bytes.

    ``header_len`` is the length of the encoded header from ``xid`` through the credential; RFC 2203
    §5.3.1 computes the RPCSEC_GSS verifier as a MIC over exactly those bytes. ``header`` holds
    those bytes as received when :mod:`rpclatch.rpc.wire` decoded a call with a credential other
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

    @classmethod
    def decode_body(cls, xid: int, dec: Decoder) -> CallMessage:
        """Decode after ``xid`` and ``mtype`` have been read."""
        rpcvers = dec.uint32()
        prog, vers, proc = dec.uint32(), dec.uint32(), dec.uint32()
        cred = OpaqueAuth.decode_from(dec)
        header_len = dec.position
        verf = OpaqueAuth.decode_from(dec)
        return cls(xid, prog, vers, proc, cred, verf, dec.rest(), rpcvers, header_len)


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


def decode_reply_body(xid: int, dec: Decoder) -> ReplyMessage:
    stat = dec.enum(ReplyStat)
    if stat == ReplyStat.MSG_ACCEPTED:
        verf = OpaqueAuth.decode_from(dec)
        astat = dec.enum(AcceptStat)
        if astat == AcceptStat.SUCCESS:
            return AcceptedReply(xid, verf, astat, dec.rest())
        if astat == AcceptStat.PROG_MISMATCH:
            return AcceptedReply(xid, verf, astat, b"", (dec.uint32(), dec.uint32()))
        return AcceptedReply(xid, verf, astat)
    rstat = dec.enum(RejectStat)
    if rstat == RejectStat.RPC_MISMATCH:
        return DeniedReply(xid, rstat, mismatch=(dec.uint32(), dec.uint32()))
    return DeniedReply(xid, rstat, auth_stat=dec.enum(AuthStat))


def decode_message(data: bytes) -> RpcMessage:
    """Decode one RPC message (one reassembled record). Raises :class:`XdrError` if malformed."""
    dec = Decoder(data)
    xid = dec.uint32()
    mtype = dec.enum(MsgType)
    if mtype == MsgType.CALL:
        return CallMessage.decode_body(xid, dec)
    return decode_reply_body(xid, dec)


_XID = struct.Struct(">I")


def peek_xid(data: bytes) -> int | None:
    """The xid of a record, or None if it is too short to have one (used to log bad records)."""
    return _XID.unpack_from(data)[0] if len(data) >= 4 else None
