"""RFC 2203 cases (GSS-nn): context creation, data exchange for each service, the sequence window,
the header and body checks, DESTROY, INIT retransmission and the verifiers of error replies.

Every case makes its own contexts (RPCSEC_GSS v1) on its own connection; the general cases use the
run's service (``--sec``). DATA calls go to the run's procedure with its arguments (``--proc``,
``--args``; NULL by default): the body cases (GSS-10..12) reach servers that unwrap a body only
when the procedure decodes arguments only through a procedure that has some.
"""

from __future__ import annotations

import secrets

from rpclatch.conformance.judge import discarded, garbage, refused
from rpclatch.conformance.model import Finding, Group, Level, Outcome
from rpclatch.conformance.probe import (
    ClientContext,
    Connection,
    NoContext,
    ReplyKind,
    Session,
    verifier_problem,
)
from rpclatch.conformance.registry import case
from rpclatch.gss.errors import GssError, GssMajor
from rpclatch.gss.wire import MAXSEQ, RPCSEC_GSS_VERS_1, GssProc, InitRes, Service
from rpclatch.rpc.messages import PROC_NULL, AcceptedReply, AcceptStat, AuthStat
from rpclatch.xdr import XdrError

G = Group.GSS
MUST = Level.MUST
SHOULD = Level.SHOULD
#: A procedure number no program has (the PROC_UNAVAIL probe of GSS-18).
UNKNOWN_PROC = 1000


async def _working_context(s: Session, conn: Connection | None = None) -> ClientContext:
    """A context on which a legitimate call succeeds (else :class:`NoContext`), on ``conn``
    (default: the session's connection)."""
    ctx = await s.context(conn=conn)
    problem = await s.fresh_call(ctx, conn=conn)
    if problem is not None:
        raise NoContext(f"a legitimate {s.config.service.sec_name} call fails: {problem}")
    return ctx


@case(
    "GSS-01",
    G,
    "§5.2.2, §5.2.3.1",
    MUST,
    "context creation: INIT completes, reply verifier = MIC(seq_window)",
    sends="INIT (v1, NULL procedure, AUTH_NONE verifier) with the Kerberos AP-REQ",
    expects="MSG_ACCEPTED SUCCESS, gss_major COMPLETE, a handle, seq_window > 0, verifier RPCSEC_GSS "
    "= GSS_GetMIC(seq_window)",
)
async def gss_01(s: Session) -> Finding:
    r = await s.init(RPCSEC_GSS_VERS_1, service=s.config.service)
    if r.context is None or r.problem:
        return Finding(Outcome.FAIL, r.problem, r.reply.describe())
    return Finding(
        Outcome.PASS,
        f"handle of {len(r.context.handle)} bytes, seq_window {r.context.seq_window}, verifier verifies",
        r.reply.describe(),
    )


async def _data(s: Session, service: Service) -> Finding:
    ctx = await s.context(service=service)
    prepared = s.data_call(ctx, service=service)
    reply = await s.send(prepared)
    if reply.auth_stat() is AuthStat.AUTH_TOOWEAK:
        return Finding(
            Outcome.NOT_SUPPORTED, f"the server refuses {service.sec_name} (AUTH_TOOWEAK)", reply.describe()
        )
    problem = s.reply_problem(ctx, prepared, reply)
    if problem is not None:
        return Finding(Outcome.FAIL, problem, reply.describe())
    return Finding(
        Outcome.PASS, f"{service.sec_name}: SUCCESS, verifier and results verify", reply.describe()
    )


_DATA_EXPECTS = "SUCCESS, verifier = GSS_GetMIC(seq_num) (§5.3.3.2)"


@case(
    "GSS-02",
    G,
    "§5.3.2.1, §5.3.3.2",
    MUST,
    "DATA with rpc_gss_svc_none (krb5)",
    sends="DATA, service none, header MIC",
    expects=_DATA_EXPECTS,
)
async def gss_02(s: Session) -> Finding:
    return await _data(s, Service.NONE)


@case(
    "GSS-03",
    G,
    "§5.3.2.2, §5.3.3.2",
    MUST,
    "DATA with rpc_gss_svc_integrity (krb5i)",
    sends="DATA, service integrity: rpc_gss_integ_data with the body seq_num and its MIC",
    expects=_DATA_EXPECTS + "; results in rpc_gss_integ_data whose MIC verifies, same seq_num",
)
async def gss_03(s: Session) -> Finding:
    return await _data(s, Service.INTEGRITY)


@case(
    "GSS-04",
    G,
    "§5.3.2.3, §5.3.3.2",
    MUST,
    "DATA with rpc_gss_svc_privacy (krb5p)",
    sends="DATA, service privacy: GSS_Wrap(conf) of seq_num + arguments",
    expects=_DATA_EXPECTS + "; results wrapped with confidentiality, same seq_num",
)
async def gss_04(s: Session) -> Finding:
    return await _data(s, Service.PRIVACY)


@case(
    "GSS-05",
    G,
    "§5.3.3.1",
    MUST,
    "replay of a DATA call is silently discarded",
    sends="a DATA call that succeeded, then the same bytes again (same xid, seq_num and MIC)",
    expects="no reply to the copy; the next fresh call succeeds",
)
async def gss_05(s: Session) -> Finding:
    ctx = await s.context()
    prepared = s.data_call(ctx)
    first = await s.send(prepared)
    problem = s.reply_problem(ctx, prepared, first)
    if problem is not None:
        raise NoContext(f"a legitimate call fails: {problem}")
    again = await s.send(prepared, expect_silence=True)
    if again.kind is ReplyKind.REPLY and again.message == first.message:
        # A second execution would carry a new verifier: every GSS MIC token has its own sequence
        # number (RFC 4121 §4.2.6.1). The same bytes come from a duplicate request cache.
        return Finding(
            Outcome.WARN,
            "the replayed call was answered with a copy of the first reply (the same verifier MIC: "
            "a duplicate request cache, not a second execution); RFC 2203 §5.3.3.1 asks for a "
            "silent discard",
            again.describe(),
        )
    return await discarded(s, ctx, again, "the replayed call")


@case(
    "GSS-06",
    G,
    "§5.3.3.1",
    MUST,
    "seq_num below the window is silently discarded",
    sends="DATA with seq_num seq_window+11, then a fresh DATA with seq_num 1 (valid MIC)",
    expects="no reply to seq_num 1; the next fresh call succeeds",
)
async def gss_06(s: Session) -> Finding:
    ctx = await s.context()
    ctx.seq = ctx.seq_window + 10
    problem = await s.fresh_call(ctx)
    if problem is not None:
        raise NoContext(f"a legitimate call fails: {problem}")
    reply = await s.send(s.data_call(ctx, seq=1), expect_silence=True)
    return await discarded(s, ctx, reply, f"seq_num 1 (window of {ctx.seq_window} ending at {ctx.seq})")


@case(
    "GSS-07",
    G,
    "§5.3.3.1",
    MUST,
    "seq_num far above the window is accepted and moves the window",
    sends="DATA seq_num 1, then seq_num 1 + 1000 * seq_window, then seq_num 2",
    expects="SUCCESS for the jump; seq_num 2 (now below the window) silently discarded",
)
async def gss_07(s: Session) -> Finding:
    ctx = await s.context()
    problem = await s.fresh_call(ctx)
    if problem is not None:
        raise NoContext(f"a legitimate call fails: {problem}")
    ctx.seq = min(1000 * ctx.seq_window, MAXSEQ // 4)
    jump = s.data_call(ctx)
    reply = await s.send(jump)
    problem = s.reply_problem(ctx, jump, reply)
    if problem is not None:
        return Finding(Outcome.FAIL, f"seq_num {jump.seq}: {problem}", reply.describe())
    old = await s.send(s.data_call(ctx, seq=2), expect_silence=True)
    return await discarded(s, ctx, old, f"seq_num 2 after the jump to {jump.seq}")


@case(
    "GSS-08",
    G,
    "§5, §5.3.1, §5.3.3.3",
    MUST,
    "seq_num beyond MAXSEQ is refused with RPCSEC_GSS_CTXPROBLEM",
    sends=f"DATA with seq_num {MAXSEQ + 1:#x} (MAXSEQ + 1), and on another context {MAXSEQ:#x} (MAXSEQ), "
    "valid header MICs",
    expects="MSG_DENIED AUTH_ERROR RPCSEC_GSS_CTXPROBLEM for both (MAXSEQ itself accepted: WARN, the RFC "
    "calls it the maximum value but has clients stay below it)",
)
async def gss_08(s: Session) -> Finding:
    ctx = await _working_context(s)
    above = refused(
        await s.send(s.data_call(ctx, seq=MAXSEQ + 1)), AuthStat.RPCSEC_GSS_CTXPROBLEM, "seq_num MAXSEQ+1"
    )
    if above.outcome is Outcome.FAIL:
        return above
    # The second context gets a connection of its own: RFC 2203 does not ask a server to carry
    # several contexts on one connection, and gssrpc and libtirpc do not (docs/interop.md).
    conn = await s.new_connection()
    ctx = await _working_context(s, conn)
    reply = await s.send(s.data_call(ctx, seq=MAXSEQ), conn=conn)
    # The DESTROY of Session.close must fall in the window: just below MAXSEQ, if MAXSEQ was seen.
    ctx.seq = MAXSEQ - 2
    got = f"MAXSEQ+1: {above.got}; MAXSEQ: {reply.describe()}"
    if reply.accept_stat() is AcceptStat.SUCCESS:
        return Finding(
            Outcome.WARN,
            f"{above.reason}; seq_num MAXSEQ itself accepted (§5 names MAXSEQ the maximum sequence number "
            "value, §5.3.1 has clients start below it)",
            got,
        )
    at = refused(reply, AuthStat.RPCSEC_GSS_CTXPROBLEM, "seq_num MAXSEQ")
    worst = above if above.outcome is Outcome.WARN else at
    if worst.outcome is Outcome.PASS:
        return Finding(Outcome.PASS, "seq_num MAXSEQ and MAXSEQ+1 refused with RPCSEC_GSS_CTXPROBLEM", got)
    return Finding(worst.outcome, worst.reason, got)


@case(
    "GSS-09",
    G,
    "§5.3.3.3, §5.3.3.4.2",
    MUST,
    "header MIC that does not verify: RPCSEC_GSS_CREDPROBLEM",
    sends="DATA whose verifier is the MIC of the header with another xid",
    expects="MSG_DENIED AUTH_ERROR RPCSEC_GSS_CREDPROBLEM",
)
async def gss_09(s: Session) -> Finding:
    ctx = await _working_context(s)
    reply = await s.send(s.data_call(ctx, tamper_header=True))
    return refused(reply, AuthStat.RPCSEC_GSS_CREDPROBLEM, "a call with a tampered header")


#: Why a body case may FAIL with the NULL procedure only.
NULL_BODY_NOTE = (
    " (with procedure 0, NULL: a server that unwraps the body only when the procedure decodes its "
    "arguments accepts it; --proc N --args HEX names one with arguments)"
)


def _body_finding(s: Session, finding: Finding) -> Finding:
    """A body case's finding, with :data:`NULL_BODY_NOTE` on a FAIL of a run calling NULL."""
    if finding.outcome is Outcome.FAIL and s.config.proc == PROC_NULL and not s.config.args:
        return Finding(finding.outcome, finding.reason + NULL_BODY_NOTE, finding.got)
    return finding


@case(
    "GSS-10",
    G,
    "§5.3.3.4.2",
    MUST,
    "integrity checksum that does not verify: GARBAGE_ARGS",
    sends="DATA to the run's procedure with its arguments, service integrity, checksum with its "
    "last octet inverted",
    expects="MSG_ACCEPTED GARBAGE_ARGS",
)
async def gss_10(s: Session) -> Finding:
    ctx = await s.context(service=Service.INTEGRITY)
    prepared = s.data_call(ctx, corrupt_body=True)
    return _body_finding(s, garbage(ctx, prepared, await s.send(prepared), "a tampered integrity body"))


@case(
    "GSS-11",
    G,
    "§5.3.3.1",
    MUST,
    "body seq_num != credential seq_num: GARBAGE_ARGS",
    sends="DATA to the run's procedure with its arguments, service integrity, body seq_num = "
    "credential seq_num + 1000, checksum valid",
    expects="MSG_ACCEPTED GARBAGE_ARGS",
)
async def gss_11(s: Session) -> Finding:
    ctx = await s.context(service=Service.INTEGRITY)
    seq = ctx.next_seq()
    prepared = s.data_call(ctx, seq=seq, body_seq=seq + 1000)
    return _body_finding(s, garbage(ctx, prepared, await s.send(prepared), "a body with another seq_num"))


@case(
    "GSS-12",
    G,
    "§5.3.3.4.3",
    MUST,
    "privacy token that does not unwrap: GARBAGE_ARGS",
    sends="DATA to the run's procedure with its arguments, service privacy, wrap token with its "
    "last octet inverted",
    expects="MSG_ACCEPTED GARBAGE_ARGS",
)
async def gss_12(s: Session) -> Finding:
    ctx = await s.context(service=Service.PRIVACY)
    prepared = s.data_call(ctx, corrupt_body=True)
    return _body_finding(s, garbage(ctx, prepared, await s.send(prepared), "a tampered privacy body"))


@case(
    "GSS-13",
    G,
    "§5.3.3.3",
    MUST,
    "unknown context handle: RPCSEC_GSS_CREDPROBLEM",
    sends="DATA with a random 16-byte handle (header MIC from a real context)",
    expects="MSG_DENIED AUTH_ERROR RPCSEC_GSS_CREDPROBLEM",
)
async def gss_13(s: Session) -> Finding:
    ctx = await s.context()
    handle = secrets.token_bytes(16)
    while handle == ctx.handle:  # pragma: no cover - 2**-128
        handle = secrets.token_bytes(16)
    return refused(
        await s.send(s.data_call(ctx, handle=handle)), AuthStat.RPCSEC_GSS_CREDPROBLEM, "an unknown handle"
    )


@case(
    "GSS-14",
    G,
    "§5.4, §5.3.3.3",
    MUST,
    "a destroyed context is gone: RPCSEC_GSS_CREDPROBLEM",
    sends="DESTROY (valid MIC), then DATA on the destroyed handle",
    expects="DESTROY answered SUCCESS; the DATA call MSG_DENIED AUTH_ERROR RPCSEC_GSS_CREDPROBLEM",
)
async def gss_14(s: Session) -> Finding:
    ctx = await _working_context(s)
    reply = await s.destroy(ctx)
    if reply.accept_stat() is not AcceptStat.SUCCESS:
        return Finding(Outcome.FAIL, "a valid DESTROY was not accepted", reply.describe())
    return refused(await s.send(s.data_call(ctx)), AuthStat.RPCSEC_GSS_CREDPROBLEM, "a call after DESTROY")


@case(
    "GSS-15",
    G,
    "§5.4, §5.3.3.4.2",
    MUST,
    "DESTROY with a bad MIC leaves the context alive",
    sends="DESTROY whose header MIC has its last octet inverted, then a fresh DATA call",
    expects="DESTROY refused (RPCSEC_GSS_CREDPROBLEM); the DATA call succeeds",
)
async def gss_15(s: Session) -> Finding:
    ctx = await _working_context(s)
    bad = s.data_call(
        ctx, gss_proc=GssProc.RPCSEC_GSS_DESTROY, proc=PROC_NULL, service=Service.NONE, corrupt_mic=True
    )
    reply = await s.send(bad)
    if reply.accept_stat() is AcceptStat.SUCCESS:
        return Finding(Outcome.FAIL, "a DESTROY with a bad MIC was accepted", reply.describe())
    problem = await s.fresh_call(ctx)
    if problem is not None:
        return Finding(
            Outcome.FAIL, f"the context did not survive a forged DESTROY: {problem}", reply.describe()
        )
    finding = refused(reply, AuthStat.RPCSEC_GSS_CREDPROBLEM, "the forged DESTROY")
    return Finding(finding.outcome, finding.reason + "; the context still works", finding.got)


@case(
    "GSS-16",
    G,
    "§5.2.2",
    SHOULD,
    "INIT with each service value in the credential; the first DATA call may use another",
    sends="three INITs, each on its own connection, with service none, integrity and privacy in the "
    "credential; on each context a first DATA call with the next service (integrity, privacy, none)",
    expects="each creates a context, and each DATA call succeeds with its own service: §5.2.2 has the "
    "server ignore the service of INIT, §5.3 lets a server lock a context only into the service of its "
    "first DATA call",
)
async def gss_16(s: Session) -> Finding:
    got = []
    bad = []
    for service, data_service in (
        (Service.NONE, Service.INTEGRITY),
        (Service.INTEGRITY, Service.PRIVACY),
        (Service.PRIVACY, Service.NONE),
    ):
        # each on its own connection: RFC 2203 does not ask a server to carry several contexts on
        # one connection, and gssrpc and libtirpc do not (docs/interop.md)
        conn = await s.new_connection()
        r = await s.init(RPCSEC_GSS_VERS_1, service=service, conn=conn)
        got.append(f"{service.sec_name}: {r.reply.describe()}")
        if r.context is None or r.problem:
            bad.append(f"INIT refused with service {service.sec_name} ({r.problem})")
            continue
        prepared = s.data_call(r.context, service=data_service)
        reply = await s.send(prepared, conn=conn)
        problem = s.reply_problem(r.context, prepared, reply)
        if problem is not None:
            got.append(f"{data_service.sec_name} DATA: {reply.describe()}")
            bad.append(f"INIT with {service.sec_name}, then DATA with {data_service.sec_name}: {problem}")
    if bad:
        return Finding(Outcome.FAIL, "; ".join(bad), "; ".join(got))
    return Finding(
        Outcome.PASS,
        "a context for each of none, integrity, privacy; the first DATA call with another service works",
        "; ".join(got),
    )


@case(
    "GSS-17",
    G,
    "§5.2.2, §5.2.3",
    SHOULD,
    "a retransmitted INIT gets the same answer",
    sends="an INIT, then the same bytes again (same xid and AP-REQ)",
    expects="the same rpc_gss_init_res (same handle) both times",
)
async def gss_17(s: Session) -> Finding:
    conn = await s.connection()
    gss, token = s.start_gss()
    xid = s.next_xid()
    message = s.init_message(xid, RPCSEC_GSS_VERS_1, token)
    first = await conn.call(xid, message, s.config.timeout)
    res1 = _init_res(first.message)
    if res1 is None or res1.gss_major != GssMajor.GSS_S_COMPLETE:
        gss.delete()
        raise NoContext(f"INIT fails: {first.describe()}")
    try:
        if not gss.complete:
            gss.step(res1.gss_token or None)
        ctx = s.adopt(RPCSEC_GSS_VERS_1, gss, res1, conn=conn)
    except GssError as exc:
        gss.delete()
        raise NoContext(f"INIT reply token: {exc}") from exc
    second = await conn.call(xid, message, s.config.timeout)
    res2 = _init_res(second.message)
    if res2 == res1:
        return Finding(Outcome.PASS, "identical rpc_gss_init_res", second.describe())
    if res2 is not None and res2.gss_major == GssMajor.GSS_S_COMPLETE:
        return Finding(Outcome.FAIL, "a second, different context for the same AP-REQ", second.describe())
    why = f"gss_major {res2.gss_major:#x}" if res2 is not None else second.describe()
    after = await _after_retransmission(s, ctx)
    return Finding(Outcome.FAIL, f"the retransmission failed ({why}){after}", second.describe())


async def _after_retransmission(s: Session, ctx: ClientContext) -> str:
    """Whether the first context survived the failed retransmission ("" if it did). If it did not
    and the server binds contexts to connections, that connection's context is dead and cannot be
    destroyed; a new INIT on it (seq_num past the dead context's, a value RFC 2203 §5.2.2 leaves
    undefined) replaces it, and :meth:`Session.close` destroys the replacement: libtirpc otherwise
    hands the dead context to a later connection (docs/conformance.md)."""
    conn = ctx.conn
    if conn is None or conn.closed:
        return ""
    problem = await s.fresh_call(ctx, conn=conn)
    if problem is None:
        return ""
    ctx.destroyed = True  # the server no longer has it: nothing to DESTROY
    repair = await s.init(RPCSEC_GSS_VERS_1, service=ctx.service, conn=conn, seq=ctx.seq + 1)
    if repair.context is not None:
        repair.context.seq = ctx.seq + 1
    return f"; the first context no longer works ({problem})"


def _init_res(msg: object) -> InitRes | None:
    if not isinstance(msg, AcceptedReply) or msg.stat != AcceptStat.SUCCESS:
        return None
    try:
        return InitRes.decode(msg.results)
    except XdrError:
        return None


@case(
    "GSS-18",
    G,
    "§5.3.3.2",
    MUST,
    "accepted error replies carry verifier = MIC(seq_num)",
    sends=f"on a krb5i context: DATA to procedure {UNKNOWN_PROC} (PROC_UNAVAIL); DATA with a tampered "
    "integrity body (GARBAGE_ARGS)",
    expects="both MSG_ACCEPTED replies have an RPCSEC_GSS verifier = GSS_GetMIC(seq_num)",
)
async def gss_18(s: Session) -> Finding:
    ctx = await s.context(service=Service.INTEGRITY)
    checked = []
    got = []
    for prepared in (s.data_call(ctx, proc=UNKNOWN_PROC), s.data_call(ctx, corrupt_body=True)):
        reply = await s.send(prepared)
        got.append(reply.describe())
        msg = reply.message
        if not isinstance(msg, AcceptedReply) or msg.stat is AcceptStat.SUCCESS:
            continue
        problem = verifier_problem(ctx, prepared.seq, msg)
        if problem is not None:
            return Finding(Outcome.FAIL, f"{msg.stat.name}: {problem}", "; ".join(got))
        checked.append(msg.stat.name)
    if not checked:
        return Finding(Outcome.OMIT, "the server gave no accepted error reply to check", "; ".join(got))
    return Finding(Outcome.PASS, "verifier verifies on " + ", ".join(checked), "; ".join(got))


@case(
    "GSS-19",
    G,
    "§5.2.3.1, §5.2.3.2",
    MUST,
    "INIT with a garbage token creates no context",
    sends="INIT whose token is not a GSS token",
    expects="gss_major an error (no handle), or a refusal other than CREDPROBLEM/CTXPROBLEM",
)
async def gss_19(s: Session) -> Finding:
    conn = await s.connection()
    xid = s.next_xid()
    reply = await conn.call(
        xid, s.init_message(xid, RPCSEC_GSS_VERS_1, b"\x60\x03not-a-token"), s.config.timeout
    )
    got = reply.describe()
    res = _init_res(reply.message)
    if res is not None:
        if res.gss_major == GssMajor.GSS_S_COMPLETE:
            return Finding(Outcome.FAIL, "a context for a garbage token", got)
        if res.gss_major == GssMajor.GSS_S_CONTINUE_NEEDED:
            return Finding(Outcome.WARN, "CONTINUE_NEEDED for a garbage token (a half-open context)", got)
        return Finding(Outcome.PASS, f"gss_major {res.gss_major:#x}, handle of {len(res.handle)} bytes", got)
    if reply.auth_stat() in (AuthStat.RPCSEC_GSS_CREDPROBLEM, AuthStat.RPCSEC_GSS_CTXPROBLEM):
        return Finding(Outcome.WARN, "refused with a status §5.2.3.2 reserves for data requests", got)
    if reply.silent:
        return Finding(Outcome.WARN, "no answer to a failed INIT", got)
    return Finding(Outcome.PASS, "refused", got)
