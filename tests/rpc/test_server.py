"""Sans-IO server (rpclatch.rpc.server): every reply status of RFC 5531 §9, server flavors'
verdicts, coroutine procedures, and the per-connection stream object."""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpclatch.rpc.auth import (
    AuthAccept,
    AuthControlReply,
    AuthDeny,
    AuthDrop,
    AuthGarbage,
    AuthResult,
    ConnectionInfo,
    ServerAuth,
)
from rpclatch.rpc.auth_sys import AuthSysClient, AuthSysParms
from rpclatch.rpc.errors import GarbageArgs
from rpclatch.rpc.messages import (
    NULL_AUTH,
    AcceptedReply,
    AcceptStat,
    AuthStat,
    CallMessage,
    DeniedReply,
    OpaqueAuth,
    RejectStat,
    decode_message,
)
from rpclatch.rpc.record import LAST_FRAGMENT, RecordReassembler, encode_record
from rpclatch.rpc.server import CallContext, PendingReply, RpcDispatcher, RpcServerConnection
from rpclatch.xdr import XdrError

CONN = ConnectionInfo(7, ("192.0.2.1", 700), "tcp")
PROG = 0x20000A99


def raises_value(args: bytes, ctx: CallContext) -> bytes:
    raise ValueError("boom")


def raises_garbage(args: bytes, ctx: CallContext) -> bytes:
    raise GarbageArgs("bad args")


def raises_xdr(args: bytes, ctx: CallContext) -> bytes:
    raise XdrError("short")


def returns_int(args: bytes, ctx: CallContext) -> bytes:
    return 5  # type: ignore[return-value]


def whoami(args: bytes, ctx: CallContext) -> bytes:
    return (ctx.principal or "-").encode().ljust(12, b" ") + struct.pack(">I", ctx.flavor)


async def later(args: bytes, ctx: CallContext) -> bytes:
    await asyncio.sleep(0)
    return args


def dispatcher() -> RpcDispatcher:
    d = RpcDispatcher()
    procs = {
        0: lambda a, c: b"",
        1: lambda a, c: a,
        2: raises_value,
        3: raises_garbage,
        4: raises_xdr,
        5: returns_int,
        6: whoami,
        7: later,
        8: lambda a, c: bytearray(b"abcd"),
    }
    d.add_program(PROG, 2, procs)
    d.add_program(PROG, 4, procs)
    return d


def reply(data: bytes | PendingReply | None) -> AcceptedReply | DeniedReply:
    assert isinstance(data, bytes)
    msg = decode_message(data)
    assert isinstance(msg, AcceptedReply | DeniedReply)
    return msg


def call(
    proc: int, vers: int = 2, args: bytes = b"", prog: int = PROG, xid: int = 77, cred: OpaqueAuth = NULL_AUTH
) -> bytes:
    return CallMessage(xid, prog, vers, proc, cred, NULL_AUTH, args).encode()


def test_success_and_echo() -> None:
    d = dispatcher()
    assert reply(d.dispatch(call(1, args=b"abcd"), CONN, 0.0)) == AcceptedReply(77, results=b"abcd")
    assert reply(d.dispatch(call(8), CONN, 0.0)).results == b"abcd"  # bytearray accepted


def test_prog_unavail_mismatch_proc_unavail() -> None:
    d = dispatcher()
    assert reply(d.dispatch(call(0, prog=PROG + 1), CONN, 0.0)).stat == AcceptStat.PROG_UNAVAIL
    mismatch = reply(d.dispatch(call(0, vers=3), CONN, 0.0))
    assert isinstance(mismatch, AcceptedReply)
    assert mismatch.stat == AcceptStat.PROG_MISMATCH and mismatch.mismatch == (2, 4)
    assert reply(d.dispatch(call(99), CONN, 0.0)).stat == AcceptStat.PROC_UNAVAIL


def test_procedure_errors(caplog: pytest.LogCaptureFixture) -> None:
    d = dispatcher()
    with caplog.at_level(logging.INFO, "rpclatch.rpc.server"):
        assert reply(d.dispatch(call(2), CONN, 0.0)).stat == AcceptStat.SYSTEM_ERR
        assert reply(d.dispatch(call(3), CONN, 0.0)).stat == AcceptStat.GARBAGE_ARGS
        assert reply(d.dispatch(call(4), CONN, 0.0)).stat == AcceptStat.GARBAGE_ARGS
        assert reply(d.dispatch(call(5), CONN, 0.0)).stat == AcceptStat.SYSTEM_ERR
    assert "ValueError: boom" in caplog.text
    assert "not bytes" in caplog.text


def test_rpc_version_mismatch() -> None:
    d = dispatcher()
    bad = CallMessage(5, PROG, 2, 0, rpcvers=3).encode()
    assert reply(d.dispatch(bad, CONN, 0.0)) == DeniedReply(5, RejectStat.RPC_MISMATCH, mismatch=(2, 2))


def test_unknown_flavor_is_auth_badcred() -> None:
    d = dispatcher()
    r = reply(d.dispatch(call(0, cred=OpaqueAuth(390003, b"x")), CONN, 0.0))
    assert r == DeniedReply(77, RejectStat.AUTH_ERROR, auth_stat=AuthStat.AUTH_BADCRED)


def test_auth_sys_principal_reaches_procedure() -> None:
    d = dispatcher()
    cred = AuthSysClient(AuthSysParms(0, "h", 1000, 100)).prepare_call(1, PROG, 2, 6, b"").message.cred
    r = reply(d.dispatch(call(6, cred=cred), CONN, 0.0))
    assert isinstance(r, AcceptedReply) and r.results == b"sys:1000:100" + struct.pack(">I", 1)


def test_non_calls_and_short_records_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    d = dispatcher()
    with caplog.at_level(logging.WARNING):
        assert d.dispatch(AcceptedReply(1).encode(), CONN, 0.0) is None
        assert d.dispatch(b"\0\0\0\1", CONN, 0.0) is None
    assert "not CALL" in caplog.text
    # xid and CALL readable but the header is cut short: GARBAGE_ARGS tells the client.
    assert reply(d.dispatch(b"\0\0\0\1\0\0\0\0", CONN, 0.0)).stat == AcceptStat.GARBAGE_ARGS


def test_malformed_call_header_is_garbage_args() -> None:
    d = dispatcher()
    truncated = call(0)[:30]
    assert reply(d.dispatch(truncated, CONN, 0.0)) == AcceptedReply(77, stat=AcceptStat.GARBAGE_ARGS)


def test_registry() -> None:
    d = dispatcher()
    assert d.programs() == [(PROG, 2), (PROG, 4)]
    d.remove_program(PROG, 4)
    mismatch = reply(d.dispatch(call(0, vers=9), CONN, 0.0))
    assert isinstance(mismatch, AcceptedReply) and mismatch.mismatch == (2, 2)
    d.remove_program(PROG)
    d.remove_program(12345)
    assert d.programs() == []
    assert reply(d.dispatch(call(0), CONN, 0.0)).stat == AcceptStat.PROG_UNAVAIL


class VerdictAuth(ServerAuth):
    """A flavor (number 6) whose verdict is chosen per test; records connection_closed."""

    flavor = 6

    def __init__(self, verdict: AuthResult | Exception) -> None:
        self.verdict = verdict
        self.closed: list[int] = []

    def check_call(self, call: CallMessage, conn: ConnectionInfo, now: float) -> AuthResult:
        if isinstance(self.verdict, Exception):
            raise self.verdict
        return self.verdict

    def connection_closed(self, conn: ConnectionInfo) -> None:
        self.closed.append(conn.conn_id)


GSS = OpaqueAuth(6, b"cred")


def with_flavor(verdict: AuthResult | Exception) -> tuple[RpcDispatcher, VerdictAuth]:
    d = dispatcher()
    auth = VerdictAuth(verdict)
    d.add_flavor(auth)
    return d, auth


def test_flavor_verdicts() -> None:
    d, _ = with_flavor(AuthDeny(AuthStat.RPCSEC_GSS_CREDPROBLEM, "expired"))
    assert reply(d.dispatch(call(0, cred=GSS), CONN, 0.0)) == DeniedReply(
        77, RejectStat.AUTH_ERROR, auth_stat=AuthStat.RPCSEC_GSS_CREDPROBLEM
    )
    d, _ = with_flavor(AuthDrop("replay"))
    assert d.dispatch(call(0, cred=GSS), CONN, 0.0) is None
    d, _ = with_flavor(AuthGarbage("bad checksum"))
    assert reply(d.dispatch(call(0, cred=GSS), CONN, 0.0)).stat == AcceptStat.GARBAGE_ARGS
    d, _ = with_flavor(AuthControlReply(OpaqueAuth(6, b"mic"), b"\0\0\0\1"))
    assert reply(d.dispatch(call(0, cred=GSS), CONN, 0.0)) == AcceptedReply(
        77, OpaqueAuth(6, b"mic"), AcceptStat.SUCCESS, b"\0\0\0\1"
    )
    d, _ = with_flavor(RuntimeError("flavor bug"))
    assert reply(d.dispatch(call(0, cred=GSS), CONN, 0.0)).stat == AcceptStat.SYSTEM_ERR


def test_accept_seals_results_and_error_verifiers() -> None:
    def seal(results: bytes) -> tuple[OpaqueAuth, bytes]:
        return OpaqueAuth(6, b"sealed"), b"W" * 4 + results

    d, _ = with_flavor(AuthAccept(b"ARGS", "alice@EXAMPLE", seal))
    ok = reply(d.dispatch(call(1, cred=GSS), CONN, 0.0))
    assert ok == AcceptedReply(77, OpaqueAuth(6, b"sealed"), AcceptStat.SUCCESS, b"WWWWARGS")
    err = reply(d.dispatch(call(99, cred=GSS), CONN, 0.0))
    assert isinstance(err, AcceptedReply) and err.verf == OpaqueAuth(6, b"sealed")

    def broken_seal(results: bytes) -> tuple[OpaqueAuth, bytes]:
        raise RuntimeError("no context")

    d, _ = with_flavor(AuthAccept(b"ARGS", None, broken_seal))
    err = reply(d.dispatch(call(99, cred=GSS), CONN, 0.0))
    assert isinstance(err, AcceptedReply) and err.verf == NULL_AUTH


def broken_seal_dispatcher() -> RpcDispatcher:
    def broken_seal(results: bytes) -> tuple[OpaqueAuth, bytes]:
        raise RuntimeError("GSS_Wrap failed")

    d, _ = with_flavor(AuthAccept(b"ARGS", None, broken_seal))
    return d


def test_results_the_flavor_cannot_seal_get_no_reply(caplog: pytest.LogCaptureFixture) -> None:
    """RFC 2203 §5.3.3.4.1 / §5.3.3.4.4: no reply (not SYSTEM_ERR), and a log line."""
    d = broken_seal_dispatcher()
    with caplog.at_level(logging.ERROR, "rpclatch.rpc.server"):
        assert d.dispatch(call(1, cred=GSS), CONN, 0.0) is None
        assert d.dispatch_marked(call(1, cred=GSS), CONN, 0.0) is None
    assert "could not seal the results (RuntimeError: GSS_Wrap failed); sending no reply" in caplog.text
    # An awaited procedure: complete() has no reply either.
    pending = d.dispatch(call(7, args=b"abcd", cred=GSS), CONN, 0.0)
    assert isinstance(pending, PendingReply)
    pending.awaitable.close()  # type: ignore[attr-defined]
    assert pending.complete(b"abcd") is None


def test_stream_sends_nothing_for_unsealable_results_and_goes_on() -> None:
    c = RpcServerConnection(broken_seal_dispatcher(), CONN)
    stream = encode_record(call(1, cred=GSS, xid=1)) + encode_record(call(99, cred=GSS, xid=2))
    [pending] = c.receive_data(stream + encode_record(call(7, cred=GSS, xid=3)), 0.0)
    pending.awaitable.close()  # type: ignore[attr-defined]
    c.finish(pending, b"abcd", 0.0)
    assert [(r.xid, r.stat) for r in replies(c)] == [(2, AcceptStat.PROC_UNAVAIL)]  # 1, 3: none
    assert c.in_flight == 0 and not c.closed


def test_coroutine_procedure() -> None:
    d = dispatcher()
    pending = d.dispatch(call(7, args=b"wxyz"), CONN, 0.0)
    assert isinstance(pending, PendingReply) and pending.xid == 77

    async def run() -> bytes:
        return await pending.awaitable

    assert reply(pending.complete(asyncio.run(run()))).results == b"wxyz"
    assert reply(pending.fail(GarbageArgs("x"))).stat == AcceptStat.GARBAGE_ARGS
    assert reply(pending.fail(RuntimeError("x"))).stat == AcceptStat.SYSTEM_ERR


def test_connection_closed_reaches_every_flavor() -> None:
    d, auth = with_flavor(AuthDrop())
    c = RpcServerConnection(d, CONN)
    c.connection_lost()
    c.connection_lost()
    assert auth.closed == [7]


# -- RpcServerConnection ------------------------------------------------------------------------


def replies(conn: RpcServerConnection) -> list[AcceptedReply | DeniedReply]:
    out = []
    for rec in RecordReassembler().feed(conn.data_to_send()):
        msg = decode_message(rec)
        assert isinstance(msg, AcceptedReply | DeniedReply)
        out.append(msg)
    return out


def test_stream_pipelined_calls_and_split_input() -> None:
    c = RpcServerConnection(dispatcher(), CONN)
    stream = b"".join(encode_record(call(1, args=bytes([i]) * 4, xid=i)) for i in range(10))
    for i in range(0, len(stream), 7):
        assert c.receive_data(stream[i : i + 7], 0.0) == []
    got = replies(c)
    assert [r.xid for r in got] == list(range(10))
    assert got[3].results == b"\3\3\3\3"


def test_stream_error_replies_are_record_marked() -> None:
    c = RpcServerConnection(dispatcher(), CONN)
    c.receive_data(encode_record(call(99)) + encode_record(CallMessage(1, 2, 3, 4, rpcvers=5).encode()), 0.0)
    got = replies(c)
    assert got[0].stat == AcceptStat.PROC_UNAVAIL
    assert got[1] == DeniedReply(1, RejectStat.RPC_MISMATCH, mismatch=(2, 2))


def test_stream_small_fragments() -> None:
    c = RpcServerConnection(dispatcher(), CONN, max_fragment=8)
    c.receive_data(encode_record(call(1, args=b"12345678abcdefgh"), 5), 0.0)
    data = c.data_to_send()
    assert struct.unpack_from(">I", data)[0] == 8  # a first, not-last fragment of 8 bytes
    [record] = RecordReassembler().feed(data)
    assert reply(record).results == b"12345678abcdefgh"


def test_stream_pending_calls_and_finish() -> None:
    c = RpcServerConnection(dispatcher(), CONN, idle_timeout=5.0)
    [pending] = c.receive_data(encode_record(call(7, args=b"abcd")), 0.0)
    pending.awaitable.close()  # type: ignore[attr-defined]  # finished by hand below
    assert c.in_flight == 1 and c.next_timer() is None  # no idle timeout while a call runs
    c.finish(pending, b"abcd", 1.0)
    assert c.in_flight == 0 and c.next_timer() == 6.0
    assert replies(c)[0].results == b"abcd"
    [pending] = c.receive_data(encode_record(call(7, args=b"abcd")), 2.0)
    pending.awaitable.close()  # type: ignore[attr-defined]
    c.finish(pending, RuntimeError("x"))
    assert replies(c)[0].stat == AcceptStat.SYSTEM_ERR


def test_stream_record_too_large_closes(caplog: pytest.LogCaptureFixture) -> None:
    c = RpcServerConnection(dispatcher(), CONN, max_record=1024)
    with caplog.at_level(logging.WARNING):
        c.receive_data(struct.pack(">I", LAST_FRAGMENT | 0x7FFFFFFF), 0.0)
    assert c.closed and c.close_reason is not None and "exceeds the limit" in c.close_reason
    assert "closing connection 7" in caplog.text
    assert c.receive_data(encode_record(call(0)), 0.0) == [] and c.data_to_send() == b""


def test_stream_idle_timeout_inside_partial_record() -> None:
    # Bytes that do not complete a call are no activity: the deadline stays 10 s after the start.
    c = RpcServerConnection(dispatcher(), CONN, idle_timeout=10.0, now=100.0)
    c.receive_data(b"\x80\0\0\x40abc", 101.0)
    assert c.next_timer() == 110.0
    c.handle_timer(109.0)
    assert not c.closed
    c.handle_timer(111.0)
    assert c.closed and c.close_reason == "idle for 10 s inside a partial record"
    assert c.next_timer() is None


def test_stream_no_idle_timeout() -> None:
    c = RpcServerConnection(dispatcher(), CONN)
    assert c.next_timer() is None
    c.handle_timer(1e9)
    assert not c.closed


def test_stream_graceful_close_stops_new_calls() -> None:
    c = RpcServerConnection(dispatcher(), CONN)
    c.close()
    assert c.closed and c.close_reason == "server closing"
    assert c.receive_data(encode_record(call(0)), 0.0) == []


def test_stream_graceful_close_answers_the_backlog() -> None:
    c = RpcServerConnection(dispatcher(), CONN, max_output=100)
    stream = b"".join(encode_record(call(1, args=bytes([i]) * 40, xid=i)) for i in range(6))
    c.receive_data(stream, 0.0)
    assert c.backlog == 4
    c.close("server shutting down")
    assert c.closed and not c.done
    assert c.receive_data(encode_record(call(1, xid=99)), 0.0) == []  # nothing new is taken
    got: list[int] = []
    while not c.done:
        got += [r.xid for r in replies(c)]
        c.dispatch_backlog(0.0)
    got += [r.xid for r in replies(c)]
    assert got == list(range(6))


def test_stream_graceful_close_waits_for_calls_in_flight() -> None:
    c = RpcServerConnection(dispatcher(), CONN)
    [pending] = c.receive_data(encode_record(call(7, args=b"abcd")), 0.0)
    pending.awaitable.close()  # type: ignore[attr-defined]
    c.close()
    assert not c.done
    c.finish(pending, b"abcd", 1.0)
    assert c.done and replies(c)[0].results == b"abcd"


def test_stream_error_close_and_connection_lost_drop_the_backlog(caplog: pytest.LogCaptureFixture) -> None:
    c = RpcServerConnection(dispatcher(), CONN, max_output=100, idle_timeout=1.0)
    stream = b"".join(encode_record(call(1, args=bytes([i]) * 40, xid=i)) for i in range(6))
    c.receive_data(stream, 0.0)
    with caplog.at_level(logging.WARNING):
        c.handle_timer(5.0)
    assert c.done and c.backlog == 0 and "4 received calls dropped unanswered" in caplog.text
    c = RpcServerConnection(dispatcher(), CONN, max_output=100)
    c.receive_data(stream, 0.0)
    c.connection_lost()
    assert c.done and c.backlog == 0 and c.dispatch_backlog(0.0) == []


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_any_record_gets_a_reply_or_is_dropped(data: bytes) -> None:
    d = dispatcher()
    out = d.dispatch(data, CONN, 0.0)
    if isinstance(out, PendingReply):
        out.awaitable.close()  # type: ignore[attr-defined]
        return
    if out is not None:
        assert isinstance(decode_message(out), AcceptedReply | DeniedReply)


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_any_stream_bytes_never_crash_the_connection(data: bytes) -> None:
    c = RpcServerConnection(dispatcher(), CONN, max_record=200)
    for p in c.receive_data(data, 0.0):
        p.awaitable.close()  # type: ignore[attr-defined]
    RecordReassembler().feed(c.data_to_send())


def test_stream_output_bound_and_backlog() -> None:
    c = RpcServerConnection(dispatcher(), CONN, max_output=100)
    stream = b"".join(encode_record(call(1, args=bytes([i]) * 40, xid=i)) for i in range(10))
    assert c.receive_data(stream, 0.0) == []
    # Replies of 68 bytes each: dispatching stops once 100 bytes wait to be sent.
    assert c.backlog == 8
    assert [r.xid for r in replies(c)] == [0, 1]
    c.pause_output()
    assert c.dispatch_backlog(0.0) == [] and c.backlog == 8 and c.data_to_send() == b""
    c.resume_output(0.0)
    assert c.backlog == 6
    got: list[int] = []
    while c.backlog or got == []:
        got += [r.xid for r in replies(c)]
        c.dispatch_backlog(0.0)
    got += [r.xid for r in replies(c)]
    assert got == list(range(2, 10))
