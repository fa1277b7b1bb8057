"""Judging a reply against what the RFC expects: a named refusal, a silent discard, GARBAGE_ARGS.

Each returns a :class:`~rpclatch.conformance.model.Finding`: the expected answer PASSes, an
accepted (executed) request FAILs, and a refusal other than the one the RFC names is a WARN (the
security property holds, the client just learns the wrong thing).
"""

from __future__ import annotations

from rpclatch.conformance.model import Finding, Outcome
from rpclatch.conformance.probe import ClientContext, Prepared, Reply, ReplyKind, Session, verifier_problem
from rpclatch.rpc.messages import AcceptedReply, AcceptStat, AuthStat


def refused(reply: Reply, want: AuthStat, what: str) -> Finding:
    """``what`` must be refused with MSG_DENIED / AUTH_ERROR / ``want``."""
    got = reply.describe()
    if reply.accept_stat() is AcceptStat.SUCCESS:
        return Finding(Outcome.FAIL, f"{what} was accepted", got)
    if reply.auth_stat() is want:
        return Finding(Outcome.PASS, f"{what} refused with {want.name}", got)
    if reply.silent:
        return Finding(Outcome.WARN, f"{what} silently dropped; the RFC names {want.name}", got)
    return Finding(Outcome.WARN, f"{what} refused, but with {got}, not {want.name}", got)


def garbage(ctx: ClientContext, prepared: Prepared, reply: Reply, what: str) -> Finding:
    """``what`` must get MSG_ACCEPTED / GARBAGE_ARGS (RFC 2203 §5.3.3.1, §5.3.3.4.2-3)."""
    got = reply.describe()
    stat = reply.accept_stat()
    if stat is AcceptStat.SUCCESS:
        return Finding(Outcome.FAIL, f"{what} was accepted", got)
    if reply.auth_stat() is AuthStat.AUTH_TOOWEAK:
        return Finding(
            Outcome.NOT_SUPPORTED, f"the server refuses {prepared.service.sec_name} (AUTH_TOOWEAK)", got
        )
    if stat is AcceptStat.GARBAGE_ARGS:
        assert isinstance(reply.message, AcceptedReply)
        note = verifier_problem(ctx, prepared.seq, reply.message)
        return Finding(Outcome.PASS, f"{what} answered GARBAGE_ARGS" + (f" ({note})" if note else ""), got)
    if reply.silent:
        return Finding(Outcome.WARN, f"{what} silently dropped; the RFC names GARBAGE_ARGS", got)
    return Finding(Outcome.WARN, f"{what} refused with {got}, not GARBAGE_ARGS", got)


async def discarded(session: Session, ctx: ClientContext, reply: Reply, what: str) -> Finding:
    """``what`` must be silently discarded (RFC 2203 §5.3.3.1); a legitimate call afterwards must
    still succeed (so the silence was a discard, not a dead server)."""
    got = reply.describe()
    if reply.accept_stat() is AcceptStat.SUCCESS:
        return Finding(Outcome.FAIL, f"{what} was executed", got)
    if not reply.silent:
        return Finding(Outcome.WARN, f"{what} answered instead of silently discarded", got)
    problem = await session.fresh_call(ctx)
    if problem is not None:
        return Finding(
            Outcome.FAIL, f"{what} got no reply, nor did a legitimate call after it: {problem}", got
        )
    closed = " (the server closed the connection)" if reply.kind is ReplyKind.CLOSED else ""
    return Finding(Outcome.PASS, f"{what} silently discarded{closed}; the next call succeeds", got)
