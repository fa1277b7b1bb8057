"""Robustness probes (ROB-nn): malformed record marking and credentials that any RPC server should
survive (RFC 5531 §8.2, §11; RFC 2203 §5.3.3.3).

They are gentle and bounded -- a few hundred bytes each, on their own connection -- because the
server may be someone else's. After each, the server must still know a context made before the
probe (a legitimate call on that context's own connection succeeds: it did not restart) and still
serve new clients (a new connection gets a context and a legitimate call through). The first context
keeps its connection because RFC 2203 does not make a context usable on other connections, and
gssrpc and libtirpc bind it to the one it was made on (docs/interop.md). Over UDP only ROB-03 (the
truncated credentials, in a datagram) runs; the others probe record marking, which is TCP's.
"""

from __future__ import annotations

import struct

from rpclatch.conformance.model import Finding, Group, Level, Outcome
from rpclatch.conformance.probe import ClientContext, Connection, NoContext, Session, auth_bytes
from rpclatch.conformance.registry import case
from rpclatch.gss.wire import RPCSEC_GSS_VERS_1, GssProc, Service, encode_cred
from rpclatch.rpc.messages import PROC_NULL, AcceptStat, AuthFlavor, AuthStat, MsgType
from rpclatch.rpc.record import LAST_FRAGMENT, MAX_FRAGMENT, encode_record

G = Group.ROB
MUST = Level.MUST
_U32 = struct.Struct(">I")
#: Zero-length non-last fragments sent by ROB-02.
EMPTY_FRAGMENTS = 64


async def _ready(s: Session) -> ClientContext:
    """A working context on the session's connection, made before the probe."""
    ctx = await s.context()
    problem = await s.fresh_call(ctx)
    if problem is not None:
        raise NoContext(f"a legitimate call fails before the probe: {problem}")
    return ctx


async def _survived(s: Session, ctx: ClientContext, probe: Connection | None, what: str, got: str) -> Finding:
    """Close the probe connection (None: the probe closed it itself); then a legitimate call on
    ``ctx`` (on its own connection) and one on a new context on a new connection must succeed."""
    closed = probe is not None and (probe.closed or await probe.wait_closed(min(s.config.drop_wait, 0.2)))
    if probe is not None:
        probe.close()
    problem = await s.fresh_call(ctx)
    if problem is not None:
        return Finding(Outcome.FAIL, f"after {what}, the context made before fails: {problem}", got)
    conn = await s.new_connection()
    try:
        fresh = await s.context(conn=conn)
    except NoContext as exc:
        return Finding(Outcome.FAIL, f"after {what}, a new context fails: {exc}", got)
    problem = await s.fresh_call(fresh, conn=conn)
    if problem is not None:
        return Finding(Outcome.FAIL, f"after {what}, a call on a new connection fails: {problem}", got)
    how = (
        "the probe closed its connection"
        if probe is None
        else "the probe datagrams were refused or dropped"
        if probe.proto == "udp"
        else "the server closed the probe connection"
        if closed
        else "the probe connection stayed open"
    )
    return Finding(Outcome.PASS, f"{how}; the context made before and a new one both work", got)


def _raw_call(
    s: Session, xid: int, cred_flavor: int, cred_words: bytes, declared: int | None = None
) -> bytes:
    """A NULL call whose credential body is ``cred_words`` (length field ``declared`` if given)."""
    c = s.config
    head = _U32.pack(xid) + _U32.pack(MsgType.CALL) + _U32.pack(2)
    head += _U32.pack(c.prog) + _U32.pack(c.vers) + _U32.pack(PROC_NULL)
    length = len(cred_words) if declared is None else declared
    return head + _U32.pack(cred_flavor) + _U32.pack(length) + cred_words


@case(
    "ROB-01",
    G,
    "RFC 5531 §11",
    MUST,
    "an oversized record mark does not take the server down",
    sends="on a new connection: a fragment header announcing 2**31-1 bytes and 64 bytes of it",
    expects="the server drops that connection (or waits); the server still serves old and new contexts",
)
async def rob_01(s: Session) -> Finding:
    s.require_stream()
    ctx = await _ready(s)
    probe = await s.new_connection()
    await probe.send_raw(_U32.pack(LAST_FRAGMENT | MAX_FRAGMENT) + bytes(64))
    return await _survived(s, ctx, probe, "an oversized record mark", "2**31-1 announced, 64 sent")


@case(
    "ROB-02",
    G,
    "RFC 5531 §11",
    MUST,
    "zero-length fragments do not take the server down",
    sends=f"on a new connection: {EMPTY_FRAGMENTS} zero-length non-last fragments, then a valid call",
    expects="the server answers the call or drops the connection; old and new contexts still work",
)
async def rob_02(s: Session) -> Finding:
    s.require_stream()
    ctx = await _ready(s)
    probe = await s.new_connection()
    prepared = s.data_call(ctx)
    await probe.send_raw(_U32.pack(0) * EMPTY_FRAGMENTS)
    reply = await probe.call(prepared.xid, prepared.message, s.config.drop_wait)
    return await _survived(s, ctx, probe, "zero-length fragments", f"the call after them: {reply.describe()}")


@case(
    "ROB-03",
    G,
    "RFC 2203 §5.3.3.3; RFC 5531 §8.2",
    MUST,
    "truncated RPCSEC_GSS credentials are refused and do not take the server down",
    sends="a call whose credential is 12 bytes of rpc_gss_cred_t; one whose credential length says 400 but "
    "the record ends after 8",
    expects="neither executed (AUTH_BADCRED, or GARBAGE/drop for the second); old and new contexts "
    "still work",
)
async def rob_03(s: Session) -> Finding:
    ctx = await _ready(s)
    probe = await s.new_connection()
    got = []
    cred = encode_cred(RPCSEC_GSS_VERS_1, GssProc.RPCSEC_GSS_DATA, 1, Service.NONE, ctx.handle)
    verf = auth_bytes(int(AuthFlavor.AUTH_NONE), b"")
    for xid, message in (
        (xid1 := s.next_xid(), _raw_call(s, xid1, int(AuthFlavor.RPCSEC_GSS), cred[:12]) + verf),
        (xid2 := s.next_xid(), _raw_call(s, xid2, int(AuthFlavor.RPCSEC_GSS), cred[:8], declared=400)),
    ):
        reply = await probe.call(xid, message, s.config.drop_wait)
        got.append(reply.describe())
        if reply.accept_stat() is AcceptStat.SUCCESS:
            return Finding(Outcome.FAIL, "a call with a truncated credential was executed", "; ".join(got))
        if probe.closed:
            break
    finding = await _survived(s, ctx, probe, "truncated credentials", "; ".join(got))
    if finding.outcome is Outcome.PASS and not got[0].endswith(AuthStat.AUTH_BADCRED.name):
        return Finding(
            Outcome.PASS,
            finding.reason + " (the 12-byte credential was not answered AUTH_BADCRED)",
            finding.got,
        )
    return finding


@case(
    "ROB-04",
    G,
    "RFC 5531 §11",
    MUST,
    "a record cut off by a disconnect does not take the server down",
    sends="on a new connection: a fragment header announcing 1000 bytes, 100 of them, then close",
    expects="a context made before and a new one on a new connection still work",
)
async def rob_04(s: Session) -> Finding:
    s.require_stream()
    ctx = await _ready(s)
    probe = await s.new_connection()
    partial = encode_record(bytes(1000))[:104]
    await probe.send_raw(partial)
    probe.close()
    return await _survived(s, ctx, None, "a truncated record", "1000 announced, 100 sent, closed")
