"""RFC 5403 cases (CB-nn): version 2 negotiation and what BIND_CHANNEL and channel_prot must
refuse without a channel; the cases that need a latched channel to the server run when the run has
one, and are OMITted otherwise.

The prober has no secure channel to the server, so it cannot know the server's channel bindings:
its BIND_CHANNEL requests name a prefix the server cannot have (CB-06) or a hash it should not
implement (CB-07), carry a valid MIC over a made-up hash, and check that whatever comes back is
either a refusal or a MIC-protected negotiation answer (RFC 5403 §3.3), and that the request's
seq_num is handled as a DATA seq_num (replays dropped, a verified request consumes it).

With a key manager (``--keyd``) the channel cases run on connections latched to the server
(:mod:`rpclatch.conformance.latching`): BIND_CHANNEL with the channel's bindings and channel_prot
on it (CB-10), mismatched bindings (CB-11), channel_prot elsewhere (CB-12) and after the channel
is gone (CB-13), hash negotiation with a verifiable HASH_NOTSUPP MIC (CB-16), channel_prot after
the context expired (CB-14) and the shortened lifetime after failed BIND_CHANNELs (CB-15); without
one they OMIT. The client sees a context's lifetime only as its own GSS context reports it (for
Kerberos, the service ticket's end): CB-14 waits for it if it ends within ``expiry_wait``, and
otherwise, like CB-15, first shortens it with failed BIND_CHANNELs (RFC 5403 §9 SHOULD), then
checks that the server honours the shorter lifetime.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import NamedTuple

from rpclatch.channel import Channel
from rpclatch.conformance.judge import refused
from rpclatch.conformance.model import Finding, Group, Level, Outcome
from rpclatch.conformance.probe import (
    ClientContext,
    Connection,
    NoContext,
    Prepared,
    Reply,
    Session,
    auth_bytes,
    gss_call,
)
from rpclatch.conformance.registry import case
from rpclatch.gss.errors import GssError
from rpclatch.gss.wire import (
    HASHES_BY_OID,
    RPCSEC_GSS_VERS_1,
    RPCSEC_GSS_VERS_2,
    SHA256,
    SHA384,
    SHA512,
    BindChanMicInArgs,
    BindChanMicInRes,
    BindChanStatus,
    BindChanVerfArgs,
    BindChanVerfRes,
    GssProc,
    Service,
    channel_bindings_bytes,
    encode_call_header,
    encode_cred,
    normalize_oid,
)
from rpclatch.ipsec.channel_binding import CB_PREFIX
from rpclatch.rpc.messages import PROC_NULL, AcceptedReply, AcceptStat, AuthFlavor, AuthStat
from rpclatch.xdr import XdrError

G = Group.CB
MUST = Level.MUST
SHOULD = Level.SHOULD
#: A channel-binding prefix no channel has (RFC 5056 §2.1 prefixes are registered names).
UNKNOWN_PREFIX = b"x-rpclatch-conformance-no-such-channel"
#: MD5 (RFC 1321; OID 1.2.840.113549.2.5), which no channel-binding hash list should offer.
MD5_OID = bytes.fromhex("2a864886f70d0205")
_FLAVOR_GSS = int(AuthFlavor.RPCSEC_GSS)


def bind_call(
    s: Session,
    ctx: ClientContext,
    *,
    prefix: bytes,
    oid: bytes,
    cb_hash: bytes,
    seq: int | None = None,
    version: int | None = None,
) -> Prepared:
    """A BIND_CHANNEL request (RFC 5403 §3.3): NULL procedure, service none, verifier
    ``rgss2_bind_chan_verf_args`` whose MIC covers the header and ``cb_hash``."""
    c = s.config
    seq = ctx.next_seq() if seq is None else seq
    xid = s.next_xid()
    cred = encode_cred(
        ctx.version if version is None else version,
        GssProc.RPCSEC_GSS_BIND_CHANNEL,
        seq,
        Service.NONE,
        ctx.handle,
    )
    header = encode_call_header(xid, c.prog, c.vers, PROC_NULL, _FLAVOR_GSS, cred)
    mic = ctx.gss.get_mic(header + BindChanMicInArgs(cb_hash).encode())
    verf = auth_bytes(_FLAVOR_GSS, BindChanVerfArgs(prefix, oid, mic).encode())
    return Prepared(xid, seq, Service.NONE, gss_call(xid, c.prog, c.vers, PROC_NULL, cred, verf, b""))


def _made_up_hash(prefix: bytes) -> bytes:
    return hashlib.sha256(prefix + b":" + bytes(32)).digest()


async def _v2_context(s: Session) -> ClientContext:
    return await s.context(RPCSEC_GSS_VERS_2)


def judge_bind(
    ctx: ClientContext, prepared: Prepared, reply: Reply, hashes: tuple[bytes, ...]
) -> tuple[Finding, bool]:
    """A BIND_CHANNEL answer to a request the server cannot satisfy: (finding, whether the answer
    carried a MIC that verified, i.e. the server authenticated the request). OK FAILs (bound to a
    channel that is not there); PREF_NOTSUPP/HASH_NOTSUPP PASS if their reply MIC verifies over
    ``rgss2_bind_chan_MIC_in_res`` with one of ``hashes`` (HASH_NOTSUPP: its hash is under the
    server's first OID of bindings the prober does not know, so only its shape is checked)."""
    got = reply.describe()
    msg = reply.message
    if reply.silent:
        return Finding(Outcome.WARN, "no answer to an authentic BIND_CHANNEL", got), False
    if not isinstance(msg, AcceptedReply):
        if reply.auth_stat() is AuthStat.RPCSEC_GSS_CREDPROBLEM:
            return (
                Finding(
                    Outcome.PASS,
                    "refused with RPCSEC_GSS_CREDPROBLEM: the server cannot check the MIC without a "
                    "channel, so no negotiation answer (and no MIC) is given",
                    got,
                ),
                False,
            )
        return Finding(Outcome.WARN, f"refused with {got}", got), False
    if msg.stat is not AcceptStat.SUCCESS:
        return Finding(Outcome.WARN, f"answered {msg.stat.name}", got), False
    if msg.verf.flavor != _FLAVOR_GSS:
        return Finding(Outcome.FAIL, f"BIND_CHANNEL reply verifier flavor {msg.verf.flavor}", got), False
    try:
        verf = BindChanVerfRes.decode(msg.verf.body)
    except XdrError as exc:
        return Finding(Outcome.FAIL, f"undecodable rgss2_bind_chan_verf_res: {exc}", got), False
    status = verf.res.status
    got = f"{got}: {status.name}"
    if status is BindChanStatus.RGSS2_BIND_CHAN_OK:
        return Finding(Outcome.FAIL, "BIND_CHANNEL OK with bindings the server cannot have", got), True
    if status is BindChanStatus.RGSS2_BIND_CHAN_HASH_NOTSUPP:
        oids = ", ".join(o.hex() for o in verf.res.oid_list)
        return (
            Finding(
                Outcome.PASS,
                f"HASH_NOTSUPP offering {len(verf.res.oid_list)} hash OIDs ({oids}); its MIC covers "
                "the server's own bindings, not checkable without the channel",
                got,
            ),
            True,
        )
    for cb_hash in hashes:
        try:
            ctx.gss.verify_mic(BindChanMicInRes(prepared.seq, cb_hash, verf.res).encode(), verf.mic)
        except GssError:
            continue
        prefixes = ", ".join(p.decode("ascii", "replace") for p in verf.res.pref_list) or "none"
        return Finding(Outcome.PASS, f"PREF_NOTSUPP (supported: {prefixes}), reply MIC verifies", got), True
    return Finding(Outcome.FAIL, "PREF_NOTSUPP whose reply MIC does not verify", got), False


@case(
    "CB-01",
    G,
    "§4; RFC 2203 §5.1",
    MUST,
    "RPCSEC_GSS version 2 INIT: a context, or refused as an unknown version",
    sends="INIT with version 2 in the credential",
    expects="a v2 context, or MSG_DENIED AUTH_ERROR AUTH_REJECTEDCRED (v1-only: NOT-SUPPORTED)",
)
async def cb_01(s: Session) -> Finding:
    r = await s.init(RPCSEC_GSS_VERS_2)
    got = r.reply.describe()
    if r.context is not None and not r.problem:
        return Finding(Outcome.PASS, "version 2 is served", got)
    stat = r.reply.auth_stat()
    if stat is AuthStat.AUTH_REJECTEDCRED:
        return Finding(
            Outcome.NOT_SUPPORTED, "a v1-only server: version 2 refused with AUTH_REJECTEDCRED", got
        )
    if stat is AuthStat.AUTH_BADCRED:
        return Finding(
            Outcome.NOT_SUPPORTED,
            "a v1-only server: version 2 refused with AUTH_BADCRED (RFC 2203 §5.1 names AUTH_REJECTEDCRED)",
            got,
        )
    return Finding(Outcome.FAIL, f"version 2 INIT neither served nor refused as unknown: {r.problem}", got)


@case(
    "CB-02",
    G,
    "§4",
    MUST,
    "version 1 still works after a version 2 attempt (the fallback)",
    sends="INIT version 2, then INIT version 1 and a DATA call on the same connection",
    expects="the v1 context is created and works whatever the v2 answer was",
)
async def cb_02(s: Session) -> Finding:
    v2 = await s.init(RPCSEC_GSS_VERS_2)
    v1 = await s.init(RPCSEC_GSS_VERS_1)
    got = f"v2: {v2.reply.describe()}; v1: {v1.reply.describe()}"
    if v1.context is None or v1.problem:
        return Finding(Outcome.FAIL, f"no v1 context after the v2 attempt: {v1.problem}", got)
    problem = await s.fresh_call(v1.context)
    if problem is not None:
        return Finding(Outcome.FAIL, f"the v1 context does not work: {problem}", got)
    what = "served" if v2.context is not None else "refused"
    return Finding(Outcome.PASS, f"v2 {what}, v1 context works", got)


_VERSION_REFUSALS = (AuthStat.AUTH_BADCRED, AuthStat.AUTH_REJECTEDCRED)


@case(
    "CB-03",
    G,
    "§3.3, §4; RFC 2203 §5.3.3.3",
    MUST,
    "BIND_CHANNEL on a version 1 handle is refused",
    sends="on a v1 handle: BIND_CHANNEL with a v2 credential, and BIND_CHANNEL (gss_proc 4) in a v1 "
    "credential",
    expects="both refused, AUTH_BADCRED (a handle never crosses versions; v1 has no gss_proc 4)",
)
async def cb_03(s: Session) -> Finding:
    ctx = await s.context(RPCSEC_GSS_VERS_1)
    got = []
    worst: Finding | None = None
    for version in (RPCSEC_GSS_VERS_2, RPCSEC_GSS_VERS_1):
        p = bind_call(s, ctx, prefix=CB_PREFIX.encode(), oid=SHA256.oid, cb_hash=bytes(32), version=version)
        reply = await s.send(p)
        got.append(f"v{version} credential: {reply.describe()}")
        if reply.accept_stat() is AcceptStat.SUCCESS:
            return Finding(
                Outcome.FAIL,
                f"BIND_CHANNEL in a v{version} credential on a v1 handle answered",
                "; ".join(got),
            )
        if reply.auth_stat() in _VERSION_REFUSALS:
            continue
        worst = refused(
            reply, AuthStat.AUTH_BADCRED, f"BIND_CHANNEL in a v{version} credential on a v1 handle"
        )
    if worst is not None:
        return Finding(worst.outcome, worst.reason, "; ".join(got))
    return Finding(Outcome.PASS, "both refused (AUTH_BADCRED or AUTH_REJECTEDCRED)", "; ".join(got))


@case(
    "CB-04",
    G,
    "§3.4",
    MUST,
    "channel_prot on a v2 handle never bound is refused",
    sends="DATA with service channel_prot and an AUTH_NONE verifier on an unbound v2 handle",
    expects="refused (MSG_DENIED AUTH_ERROR); never executed",
)
async def cb_04(s: Session) -> Finding:
    ctx = await _v2_context(s)
    reply = await s.send(s.data_call(ctx, service=Service.CHANNEL_PROT))
    got = reply.describe()
    if reply.accept_stat() is AcceptStat.SUCCESS:
        return Finding(Outcome.FAIL, "channel_prot without a bound channel was executed", got)
    if reply.auth_stat() is not None:
        return Finding(Outcome.PASS, f"refused with {reply.auth_stat().name}", got)  # type: ignore[union-attr]
    if reply.silent:
        return Finding(Outcome.WARN, "silently dropped (the client cannot tell why)", got)
    return Finding(Outcome.WARN, f"answered {got}", got)


@case(
    "CB-05",
    G,
    "§3.4; RFC 2203 §5.3.3.3",
    MUST,
    "channel_prot in a version 1 credential is refused",
    sends="DATA with service channel_prot (4) on a v1 handle",
    expects="MSG_DENIED AUTH_ERROR AUTH_BADCRED (an illegal service for v1)",
)
async def cb_05(s: Session) -> Finding:
    ctx = await s.context(RPCSEC_GSS_VERS_1)
    reply = await s.send(s.data_call(ctx, service=Service.CHANNEL_PROT))
    return refused(reply, AuthStat.AUTH_BADCRED, "channel_prot in a v1 credential")


@case(
    "CB-06",
    G,
    "§3.3",
    MUST,
    "BIND_CHANNEL with a prefix the server has no channel for: PREF_NOTSUPP with a verified MIC, or refused",
    sends=f"BIND_CHANNEL, prefix {UNKNOWN_PREFIX.decode()}, SHA-256, MIC over a made-up bindings hash",
    expects="PREF_NOTSUPP whose reply MIC verifies over rgss2_bind_chan_MIC_in_res, or "
    "RPCSEC_GSS_CREDPROBLEM; never OK",
)
async def cb_06(s: Session) -> Finding:
    ctx = await _v2_context(s)
    cb_hash = _made_up_hash(UNKNOWN_PREFIX)
    p = bind_call(s, ctx, prefix=UNKNOWN_PREFIX, oid=SHA256.oid, cb_hash=cb_hash)
    finding, _ = judge_bind(ctx, p, await s.send(p), (b"", cb_hash))
    return finding


@case(
    "CB-07",
    G,
    "§3.3",
    MUST,
    "BIND_CHANNEL with a hash the server does not implement: HASH_NOTSUPP (one or more OIDs), or refused",
    sends=f"BIND_CHANNEL, prefix {CB_PREFIX}, hash OID of MD5, MIC over a made-up bindings hash",
    expects="HASH_NOTSUPP with a non-empty rbcr_oid_list, PREF_NOTSUPP with a verified MIC, or "
    "RPCSEC_GSS_CREDPROBLEM; never OK",
)
async def cb_07(s: Session) -> Finding:
    ctx = await _v2_context(s)
    cb_hash = hashlib.md5(CB_PREFIX.encode() + b":" + bytes(32), usedforsecurity=False).digest()
    p = bind_call(s, ctx, prefix=CB_PREFIX.encode(), oid=MD5_OID, cb_hash=cb_hash)
    finding, _ = judge_bind(ctx, p, await s.send(p), (b"", cb_hash))
    return finding


@case(
    "CB-08",
    G,
    "§3.3; RFC 2203 §5.3.3.1",
    MUST,
    "BIND_CHANNEL with a replayed seq_num is silently discarded",
    sends="a DATA call with seq_num n, then BIND_CHANNEL with seq_num n (valid MIC)",
    expects="no reply to the BIND_CHANNEL (its seq_num is handled as for DATA); the next call succeeds",
)
async def cb_08(s: Session) -> Finding:
    ctx = await _v2_context(s)
    problem = await s.fresh_call(ctx)
    if problem is not None:
        raise NoContext(f"a legitimate call on the v2 handle fails: {problem}")
    p = bind_call(
        s, ctx, prefix=UNKNOWN_PREFIX, oid=SHA256.oid, cb_hash=_made_up_hash(UNKNOWN_PREFIX), seq=ctx.seq
    )
    reply = await s.send(p, expect_silence=True)
    got = reply.describe()
    if reply.silent:
        problem = await s.fresh_call(ctx)
        if problem is not None:
            return Finding(Outcome.FAIL, f"no reply, nor to a legitimate call after it: {problem}", got)
        return Finding(Outcome.PASS, "silently discarded; the next call succeeds", got)
    if isinstance(reply.message, AcceptedReply):
        return Finding(
            Outcome.FAIL, "a BIND_CHANNEL with a used seq_num was answered with a MIC-carrying reply", got
        )
    return Finding(Outcome.WARN, "refused instead of silently discarded", got)


@case(
    "CB-09",
    G,
    "§3.3; RFC 2203 §5.3.3.1",
    MUST,
    "an authenticated BIND_CHANNEL consumes its seq_num",
    sends="BIND_CHANNEL with a fresh seq_num m (unknown prefix), then a DATA call with seq_num m",
    expects="if the BIND_CHANNEL got a MIC-protected answer, the DATA call is silently discarded",
)
async def cb_09(s: Session) -> Finding:
    ctx = await _v2_context(s)
    cb_hash = _made_up_hash(UNKNOWN_PREFIX)
    p = bind_call(s, ctx, prefix=UNKNOWN_PREFIX, oid=SHA256.oid, cb_hash=cb_hash)
    bind_reply = await s.send(p)
    finding, authenticated = judge_bind(ctx, p, bind_reply, (b"", cb_hash))
    data = await s.send(s.data_call(ctx, seq=p.seq), expect_silence=True)
    got = f"BIND_CHANNEL: {finding.got}; DATA: {data.describe()}"
    if authenticated:
        if data.accept_stat() is AcceptStat.SUCCESS:
            return Finding(Outcome.FAIL, "the seq_num of an answered BIND_CHANNEL was accepted again", got)
        if data.silent:
            return Finding(Outcome.PASS, "seq_num consumed by the BIND_CHANNEL", got)
        return Finding(Outcome.WARN, "the reused seq_num was refused rather than discarded", got)
    if bind_reply.silent:
        return Finding(Outcome.WARN, "no answer to the BIND_CHANNEL", got)
    if data.accept_stat() is AcceptStat.SUCCESS:
        return Finding(
            Outcome.PASS, "the refused (unauthenticated) BIND_CHANNEL did not consume its seq_num", got
        )
    if data.silent:
        return Finding(Outcome.PASS, "the refused BIND_CHANNEL consumed its seq_num", got)
    return Finding(Outcome.WARN, f"the DATA call after the BIND_CHANNEL was refused: {data.describe()}", got)


def _bind_status(ctx: ClientContext, prepared: Prepared, reply: Reply, cb_hash: bytes) -> tuple[str, bool]:
    """(what came back, whether it is RGSS2_BIND_CHAN_OK with a reply MIC that verifies over
    ``rgss2_bind_chan_MIC_in_res`` with ``cb_hash``)."""
    msg = reply.message
    if not isinstance(msg, AcceptedReply) or msg.stat is not AcceptStat.SUCCESS:
        return reply.describe(), False
    try:
        verf = BindChanVerfRes.decode(msg.verf.body)
    except XdrError as exc:
        return f"undecodable rgss2_bind_chan_verf_res: {exc}", False
    status = verf.res.status
    try:
        ctx.gss.verify_mic(BindChanMicInRes(prepared.seq, cb_hash, verf.res).encode(), verf.mic)
    except GssError as exc:
        return f"{status.name} whose reply MIC does not verify ({exc})", False
    return status.name, status is BindChanStatus.RGSS2_BIND_CHAN_OK


def _bindings_hash(channel: Channel) -> bytes:
    return SHA256.digest(channel.channel_bindings())


async def _bound(s: Session) -> tuple[Connection, Channel, ClientContext]:
    """A latched connection with a v2 context bound to its channel (else OMIT/NOT-SUPPORTED)."""
    conn, channel = await s.latched_connection()
    ctx = await s.context(RPCSEC_GSS_VERS_2, conn=conn)
    cb_hash = _bindings_hash(channel)
    p = bind_call(s, ctx, prefix=channel.binding_prefix.encode(), oid=SHA256.oid, cb_hash=cb_hash)
    got, ok = _bind_status(ctx, p, await s.send(p, conn=conn), cb_hash)
    if not ok:
        raise NoContext(f"BIND_CHANNEL over the latched connection did not succeed: {got}")
    return conn, channel, ctx


def _channel_prot_refused(reply: Reply, what: str) -> Finding:
    got = reply.describe()
    if reply.accept_stat() is AcceptStat.SUCCESS:
        return Finding(Outcome.FAIL, f"{what} was executed", got)
    stat = reply.auth_stat()
    if stat is not None:
        return Finding(Outcome.PASS, f"{what} refused with {stat.name}", got)
    if reply.silent:
        return Finding(Outcome.WARN, f"{what} silently dropped (the client cannot tell why)", got)
    return Finding(Outcome.WARN, f"{what} answered {got}", got)


@case(
    "CB-10",
    G,
    "§3.3, §3.4",
    MUST,
    "BIND_CHANNEL over a latched channel succeeds; channel_prot works on it",
    sends="on a latched connection: INIT v2, BIND_CHANNEL with the channel's bindings (SHA-256), then "
    "DATA with service channel_prot",
    expects="RGSS2_BIND_CHAN_OK whose reply MIC verifies; the channel_prot call SUCCESS with an AUTH_NONE "
    "verifier",
)
async def cb_10(s: Session) -> Finding:
    conn, channel = await s.latched_connection()
    ctx = await s.context(RPCSEC_GSS_VERS_2, conn=conn)
    cb_hash = _bindings_hash(channel)
    p = bind_call(s, ctx, prefix=channel.binding_prefix.encode(), oid=SHA256.oid, cb_hash=cb_hash)
    got, ok = _bind_status(ctx, p, await s.send(p, conn=conn), cb_hash)
    if not ok:
        return Finding(Outcome.FAIL, f"BIND_CHANNEL with the channel's own bindings: {got}", got)
    data = await s.send(s.data_call(ctx, service=Service.CHANNEL_PROT), conn=conn)
    got = f"BIND_CHANNEL: {got}; channel_prot: {data.describe()}"
    msg = data.message
    if not isinstance(msg, AcceptedReply) or msg.stat is not AcceptStat.SUCCESS:
        return Finding(Outcome.FAIL, "bound, but the channel_prot call was not answered SUCCESS", got)
    if msg.verf.flavor != int(AuthFlavor.AUTH_NONE) or msg.verf.body:
        return Finding(Outcome.FAIL, "channel_prot reply verifier is not AUTH_NONE (§3.4)", got)
    return Finding(Outcome.PASS, f"bound under {channel.binding_prefix}; channel_prot answered", got)


@case(
    "CB-11",
    G,
    "§3.3; RFC 2203 §5.3.3.4.2",
    MUST,
    "BIND_CHANNEL with bindings that do not match the channel fails",
    sends="on a latched connection: BIND_CHANNEL with the channel's data altered in one octet; BIND_CHANNEL "
    "naming SHA-384 with the SHA-256 hash of the right bindings",
    expects="both refused (RPCSEC_GSS_CREDPROBLEM: the MIC does not verify over the server's bindings); "
    "never OK",
)
async def cb_11(s: Session) -> Finding:
    conn, channel = await s.latched_connection()
    ctx = await s.context(RPCSEC_GSS_VERS_2, conn=conn)
    prefix = channel.binding_prefix
    data = channel.bindings()[prefix]
    wrong_data = SHA256.digest(channel_bindings_bytes(prefix, data[:-1] + bytes([data[-1] ^ 0xFF])))
    findings = []
    got = []
    for what, oid, cb_hash in (
        ("altered binding data", SHA256.oid, wrong_data),
        ("a hash computed with another algorithm than named", SHA384.oid, _bindings_hash(channel)),
    ):
        p = bind_call(s, ctx, prefix=prefix.encode(), oid=oid, cb_hash=cb_hash)
        reply = await s.send(p, conn=conn)
        status, ok = _bind_status(ctx, p, reply, cb_hash)
        got.append(f"{what}: {status}")
        if ok or status == BindChanStatus.RGSS2_BIND_CHAN_OK.name:
            return Finding(Outcome.FAIL, f"BIND_CHANNEL with {what} answered OK", "; ".join(got))
        findings.append(refused(reply, AuthStat.RPCSEC_GSS_CREDPROBLEM, f"BIND_CHANNEL with {what}"))
    worst = next((f for f in findings if f.outcome is not Outcome.PASS), None)
    if worst is not None:
        return Finding(worst.outcome, worst.reason, "; ".join(got))
    return Finding(Outcome.PASS, "both mismatches refused with RPCSEC_GSS_CREDPROBLEM", "; ".join(got))


@case(
    "CB-12",
    G,
    "§3.4",
    MUST,
    "channel_prot on another connection than the bound one is refused",
    sends="a v2 handle bound on a latched connection; DATA channel_prot with it on a plain connection and "
    "on a second latched connection",
    expects="both refused; never executed",
)
async def cb_12(s: Session) -> Finding:
    _, _, ctx = await _bound(s)
    findings = []
    plain = await s.new_connection()
    reply = await s.send(s.data_call(ctx, service=Service.CHANNEL_PROT), conn=plain)
    findings.append(_channel_prot_refused(reply, "channel_prot on an unlatched connection"))
    other, _ = await s.latched_connection()
    reply = await s.send(s.data_call(ctx, service=Service.CHANNEL_PROT), conn=other)
    findings.append(_channel_prot_refused(reply, "channel_prot on another latched connection"))
    got = "; ".join(f.got for f in findings)
    for outcome in (Outcome.FAIL, Outcome.WARN):
        for f in findings:
            if f.outcome is outcome:
                return Finding(outcome, f.reason, got)
    return Finding(Outcome.PASS, "; ".join(f.reason for f in findings), got)


@case(
    "CB-13",
    G,
    "§3.4",
    MUST,
    "channel_prot after the bound channel is gone is refused",
    sends="a v2 handle bound on a latched connection; that connection closed (its latch released); DATA "
    "channel_prot with the handle on a new latched connection",
    expects="refused (the binding ended with its channel); never executed",
)
async def cb_13(s: Session) -> Finding:
    conn, _, ctx = await _bound(s)
    conn.close()
    await asyncio.sleep(min(s.config.drop_wait, 0.5))  # let the server see the close
    other, _ = await s.latched_connection()
    reply = await s.send(s.data_call(ctx, service=Service.CHANNEL_PROT), conn=other)
    return _channel_prot_refused(reply, "channel_prot after the bound connection closed")


@case(
    "CB-16",
    G,
    "§3.3",
    MUST,
    "hash negotiation over a latched channel: OK, or HASH_NOTSUPP with a verified MIC and then OK",
    sends="on a latched connection: BIND_CHANNEL with the channel's bindings hashed with SHA-512; on "
    "HASH_NOTSUPP, again with the first hash the server lists",
    expects="OK; or HASH_NOTSUPP with one or more OIDs whose reply MIC verifies over the bindings hashed "
    "with rbcr_oid_list[0], and OK for that hash",
)
async def cb_16(s: Session) -> Finding:
    conn, channel = await s.latched_connection()
    ctx = await s.context(RPCSEC_GSS_VERS_2, conn=conn)
    prefix = channel.binding_prefix.encode()
    cb = channel.channel_bindings()
    p = bind_call(s, ctx, prefix=prefix, oid=SHA512.oid, cb_hash=SHA512.digest(cb))
    reply = await s.send(p, conn=conn)
    got, ok = _bind_status(ctx, p, reply, SHA512.digest(cb))
    if ok:
        return Finding(Outcome.PASS, "SHA-512 accepted: bound", got)
    msg = reply.message
    if not isinstance(msg, AcceptedReply) or msg.stat is not AcceptStat.SUCCESS:
        return refused(reply, AuthStat.RPCSEC_GSS_CREDPROBLEM, "BIND_CHANNEL with SHA-512")
    try:
        verf = BindChanVerfRes.decode(msg.verf.body)
    except XdrError as exc:
        return Finding(Outcome.FAIL, f"undecodable rgss2_bind_chan_verf_res: {exc}", got)
    if verf.res.status is not BindChanStatus.RGSS2_BIND_CHAN_HASH_NOTSUPP:
        return Finding(Outcome.FAIL, f"{verf.res.status.name} for the channel's own prefix", got)
    first = HASHES_BY_OID.get(normalize_oid(verf.res.oid_list[0]))
    if first is None:
        return Finding(
            Outcome.WARN, f"HASH_NOTSUPP listing {verf.res.oid_list[0].hex()} first, a hash unknown here", got
        )
    try:
        ctx.gss.verify_mic(BindChanMicInRes(p.seq, first.digest(cb), verf.res).encode(), verf.mic)
    except GssError:
        return Finding(
            Outcome.FAIL, f"HASH_NOTSUPP whose reply MIC does not verify over the bindings' {first.name}", got
        )
    retry = bind_call(s, ctx, prefix=prefix, oid=first.oid, cb_hash=first.digest(cb))
    again, ok = _bind_status(ctx, retry, await s.send(retry, conn=conn), first.digest(cb))
    got = f"SHA-512: HASH_NOTSUPP (first {first.name}), MIC verifies; {first.name}: {again}"
    if not ok:
        return Finding(Outcome.FAIL, f"BIND_CHANNEL with the offered {first.name} did not bind", got)
    return Finding(Outcome.PASS, f"HASH_NOTSUPP with a verified MIC, then bound with {first.name}", got)


#: Added to every wait for an expiry: the lifetime GSS reports is in whole seconds, and the
#: server needs a moment (and its clock may be a little behind this one).
EXPIRY_SLACK = 2.0
#: At most this many failed BIND_CHANNELs are sent to shorten a context (RFC 5403 §9: with halving,
#: 15 end an 8-hour context).
MAX_BIND_FAILURES = 20


class _Lifetime(NamedTuple):
    """A context's end as the client can tell it: ``client_end`` when its own GSS context ends
    (the ticket's end, on this side's clock), ``client_left`` the seconds until then, and
    ``server_left`` the seconds until the server's context ends at the latest: the ticket's end
    plus the clock-skew allowance its mechanism adds (``--clock-skew``)."""

    client_end: float
    client_left: float
    server_left: float


def _lifetime(s: Session, ctx: ClientContext) -> _Lifetime:
    """The context's :class:`_Lifetime`; NoContext if the mechanism reports it indefinite."""
    ends_at = ctx.ends_at
    if ends_at is None:
        raise NoContext("the GSS mechanism reports an indefinite context lifetime: no expiry to wait for")
    left = ends_at - time.monotonic()
    return _Lifetime(ends_at, left, left + s.config.clock_skew)


def _failures_for(life: _Lifetime, budget: float) -> int | None:
    """The fewest failed BIND_CHANNELs after which the context, its lifetime halved on each
    failure (RFC 5403 §9's example), ends within ``budget`` seconds (slack included), while without
    them it would still be alive a slack later on both sides (the client still makes MICs); None if
    more than :data:`MAX_BIND_FAILURES` would be needed."""
    for k in range(1, MAX_BIND_FAILURES + 1):
        wait = life.server_left / 2**k + EXPIRY_SLACK
        if wait <= budget and wait + EXPIRY_SLACK <= life.client_left:
            return k
    return None


async def _fail_binds(
    s: Session, ctx: ClientContext, conn: Connection, channel: Channel, count: int
) -> tuple[list[str], Finding | None]:
    """``count`` BIND_CHANNELs whose bindings do not match the channel (one octet of its data
    altered): the server cannot verify their MIC (RFC 5403 §9). (what came back, a FAIL if one was
    answered OK). Stops early once the context is refused as gone (its lifetime already spent)."""
    prefix = channel.binding_prefix
    data = channel.bindings()[prefix]
    wrong = SHA256.digest(channel_bindings_bytes(prefix, data[:-1] + bytes([data[-1] ^ 0xFF])))
    seen: dict[str, int] = {}
    for _ in range(count):
        p = bind_call(s, ctx, prefix=prefix.encode(), oid=SHA256.oid, cb_hash=wrong)
        reply = await s.send(p, conn=conn)
        status, ok = _bind_status(ctx, p, reply, wrong)
        if ok or status == BindChanStatus.RGSS2_BIND_CHAN_OK.name:
            return [status], Finding(
                Outcome.FAIL, "BIND_CHANNEL with altered bindings answered OK (see CB-11)", status
            )
        seen[status] = seen.get(status, 0) + 1
        if reply.auth_stat() is AuthStat.RPCSEC_GSS_CTXPROBLEM or reply.silent:
            break
    return [f"{n} x {status}" for status, n in seen.items()], None


async def _sleep_until(deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))


def _expired_refusal(reply: Reply, what: str, when: str) -> Finding:
    """``what`` on an expired context: refused (RPCSEC_GSS_CTXPROBLEM, RFC 2203 §5.3.3.3) PASSes,
    executed FAILs (a SHOULD: WARN), another refusal or none is a WARN."""
    got = reply.describe()
    if reply.accept_stat() is AcceptStat.SUCCESS:
        return Finding(Outcome.FAIL, f"{what} executed {when}", got)
    stat = reply.auth_stat()
    if stat is AuthStat.RPCSEC_GSS_CTXPROBLEM:
        return Finding(Outcome.PASS, f"{what} refused with RPCSEC_GSS_CTXPROBLEM {when}", got)
    if stat is not None:
        return Finding(
            Outcome.PASS,
            f"{what} refused with {stat.name} {when} (RFC 2203 §5.3.3.3 names RPCSEC_GSS_CTXPROBLEM)",
            got,
        )
    if reply.silent:
        return Finding(Outcome.WARN, f"{what} got no answer {when}", got)
    return Finding(Outcome.WARN, f"{what} answered {got} {when}", got)


@case(
    "CB-14",
    G,
    "§9; RFC 2203 §5.3.3.3",
    SHOULD,
    "channel_prot after the context expired is refused",
    sends="a v2 handle bound on a latched connection, channel_prot answered; then, after the context's "
    "end (a lifetime within --expiry-wait is waited for; a longer one is first shortened by failed "
    "BIND_CHANNELs, RFC 5403 §9), channel_prot again, and a krb5i DATA call",
    expects="the channel_prot call after expiry refused (RPCSEC_GSS_CTXPROBLEM): no GSS token is "
    "made for it, so the server must check the lifetime itself",
)
async def cb_14(s: Session) -> Finding:
    conn, channel, ctx = await _bound(s)
    first = await s.send(s.data_call(ctx, service=Service.CHANNEL_PROT), conn=conn)
    if first.accept_stat() is not AcceptStat.SUCCESS:
        raise NoContext(f"channel_prot on the bound connection fails before expiry: {first.describe()}")
    life = _lifetime(s, ctx)
    budget = s.config.expiry_wait
    skew = s.config.clock_skew
    if life.server_left + EXPIRY_SLACK <= budget:
        # The context's own end is near enough to wait for (e.g. a short ticket: kinit -l).
        await _sleep_until(life.client_end + skew + EXPIRY_SLACK)
        reply = await s.send(s.data_call(ctx, service=Service.CHANNEL_PROT), conn=conn)
        return _expired_refusal(
            reply,
            "channel_prot",
            f"{skew + EXPIRY_SLACK:g} s after the ticket's end (clock-skew allowance {skew:g} s)",
        )
    k = _failures_for(life, budget)
    if k is None:
        return Finding(
            Outcome.OMIT,
            f"the server's context has up to {life.server_left:.0f} s left "
            f"(ticket {life.client_left:.0f} s + clock-skew allowance {skew:g} s), more than "
            f"--expiry-wait {budget:g} s, even after {MAX_BIND_FAILURES} halvings (a short ticket, "
            "e.g. kinit -l, lets the case wait for it)",
        )
    got, failed = await _fail_binds(s, ctx, conn, channel, k)
    if failed is not None:
        return failed
    wait = life.server_left / 2**k + EXPIRY_SLACK
    await _sleep_until(time.monotonic() + wait)
    when = f"{wait:.1f} s after {k} failed BIND_CHANNELs"
    prot = await s.send(s.data_call(ctx, service=Service.CHANNEL_PROT), conn=conn)
    data = await s.send(s.data_call(ctx, service=Service.INTEGRITY), conn=conn)
    got.extend((f"channel_prot: {prot.describe()}", f"krb5i DATA: {data.describe()}"))
    summary = "; ".join(got)
    if data.accept_stat() is AcceptStat.SUCCESS:
        if prot.accept_stat() is AcceptStat.SUCCESS:
            return Finding(
                Outcome.OMIT,
                f"the context still works {when}: the server did not shorten its lifetime (see CB-15), "
                f"and its own end is up to {life.server_left:.0f} s away, beyond --expiry-wait {budget:g} s",
                summary,
            )
        return Finding(
            Outcome.OMIT,
            f"channel_prot refused {when} while the context still works: the binding ended, not the "
            "context; expiry not observed",
            summary,
        )
    if prot.accept_stat() is AcceptStat.SUCCESS:
        return Finding(
            Outcome.FAIL,
            f"channel_prot executed {when}, while the context is refused for krb5i ({data.describe()})",
            summary,
        )
    finding = _expired_refusal(prot, "channel_prot", f"on the context ended early ({when})")
    return Finding(finding.outcome, finding.reason, summary)


@case(
    "CB-15",
    G,
    "§9",
    SHOULD,
    "failed BIND_CHANNELs shorten the context lifetime (halving it each time, the RFC's example)",
    sends="on a latched connection: a v2 context, then k BIND_CHANNELs whose bindings do not match "
    "the channel (k: the fewest after which halving ends the context within --expiry-wait); after "
    "that time, a DATA call on it, and one on a context made at the same time without failures",
    expects="the context is refused (RPCSEC_GSS_CTXPROBLEM), the other context still works",
)
async def cb_15(s: Session) -> Finding:
    conn, channel = await s.latched_connection()
    ctx = await s.context(RPCSEC_GSS_VERS_2, conn=conn)
    problem = await s.fresh_call(ctx, conn=conn)
    if problem is not None:
        raise NoContext(f"a legitimate call on the v2 handle fails: {problem}")
    plain = await s.new_connection()
    control = await s.context(conn=plain)
    problem = await s.fresh_call(control, conn=plain)
    if problem is not None:
        raise NoContext(f"a legitimate call on the control context fails: {problem}")
    life = _lifetime(s, ctx)
    budget = s.config.expiry_wait
    k = _failures_for(life, budget)
    if k is None:
        return Finding(
            Outcome.OMIT,
            f"the server's context has up to {life.server_left:.0f} s left "
            f"(the ticket {life.client_left:.0f} s): "
            f"{MAX_BIND_FAILURES} halvings would not end it within --expiry-wait {budget:g} s, or the "
            "ticket ends too soon to tell halving from its own end",
        )
    got, failed = await _fail_binds(s, ctx, conn, channel, k)
    if failed is not None:
        return failed
    wait = life.server_left / 2**k + EXPIRY_SLACK
    await _sleep_until(time.monotonic() + wait)
    when = (
        f"{wait:.1f} s after {k} failed BIND_CHANNELs on a context with up to {life.server_left:.0f} s left"
    )
    reply = await s.send(s.data_call(ctx), conn=conn)
    got.append(f"DATA: {reply.describe()}")
    if reply.accept_stat() is AcceptStat.SUCCESS:
        return Finding(
            Outcome.FAIL,
            f"the context still works {when}: its lifetime was cut by less than half per failure",
            "; ".join(got),
        )
    problem = await s.fresh_call(control, conn=plain)
    got.append(f"control: {problem or 'works'}")
    if problem is not None:
        return Finding(
            Outcome.OMIT,
            f"the context made at the same time without failures ended too ({problem}): the "
            "server's own lifetime is shorter than the ticket's, so the shortening cannot be seen",
            "; ".join(got),
        )
    finding = _expired_refusal(reply, "the context", when)
    if finding.outcome is Outcome.PASS:
        finding = Finding(Outcome.PASS, finding.reason + "; a context without failures still works")
    return Finding(finding.outcome, finding.reason, "; ".join(got))
