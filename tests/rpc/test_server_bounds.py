"""What a peer can make the sans-IO server hold, and for how long (RFC 5531 §11; issue #10
items 2-4): unsent replies count against the connection's output budget and a stalled write is
aborted after the write timeout; only complete calls keep a connection from the idle timeout;
over a datagram transport, results that cannot fit are refused before they are built, and the
log line about them is rate-limited. Loopback versions: test_hostile_peers.py."""

from __future__ import annotations

import logging
import struct
import tracemalloc

import pytest

from rpclatch.rpc import testprog as tp
from rpclatch.rpc.auth import ConnectionInfo
from rpclatch.rpc.messages import PROC_NULL, AcceptedReply, AcceptStat, CallMessage, decode_message
from rpclatch.rpc.record import LAST_FRAGMENT, RecordReassembler, encode_record
from rpclatch.rpc.server import RpcDispatcher, RpcServerConnection

CONN = ConnectionInfo(11, ("192.0.2.5", 900), "tcp")
UDP = ConnectionInfo(12, ("192.0.2.5", 901), "udp")
MiB = 1024 * 1024
EMPTY = struct.pack(">I", 0)  # zero-length, not last
EMPTY_LAST = struct.pack(">I", LAST_FRAGMENT)  # an empty record: complete, but not a call


def dispatcher() -> RpcDispatcher:
    d = RpcDispatcher()
    tp.add_test_program(d)
    return d


def source_call(xid: int, n: int) -> bytes:
    return CallMessage(xid, tp.RPCLATCH_TEST_PROG, 1, tp.PROC_SOURCE, args=struct.pack(">I", n)).encode()


def null_call(xid: int) -> bytes:
    return CallMessage(xid, tp.RPCLATCH_TEST_PROG, 1, PROC_NULL).encode()


def take(c: RpcServerConnection) -> list[AcceptedReply]:
    out = []
    for rec in RecordReassembler(max_record=80 * MiB).feed(c.data_to_send()):
        msg = decode_message(rec)
        assert isinstance(msg, AcceptedReply)
        out.append(msg)
    return out


# -- item 2: slow readers ---------------------------------------------------------------------


def test_unsent_output_in_the_transport_counts_against_the_budget() -> None:
    c = RpcServerConnection(dispatcher(), CONN, max_output=1 * MiB, write_timeout=30.0)
    stream = b"".join(encode_record(source_call(i, 4 * MiB)) for i in range(5))
    assert c.receive_data(stream, 0.0) == []
    # One 4 MiB reply is produced; the budget is then spent, the rest wait undispatched.
    assert c.backlog == 4 and c.unsent >= 4 * MiB and c.over_budget
    assert [r.xid for r in take(c)] == [0]
    assert c.unsent == 0
    # The shell handed it to its transport, which holds all but 100 KiB of it.
    c.set_write_buffer(4 * MiB - 100_000, 1.0)
    assert c.unsent == 4 * MiB - 100_000 and c.over_budget
    assert c.dispatch_backlog(1.0) == [] and c.backlog == 4 and c.data_to_send() == b""
    # The peer reads: below the budget again, the next call is dispatched.
    c.set_write_buffer(900_000, 2.0)
    assert not c.over_budget
    c.dispatch_backlog(2.0)
    assert c.backlog == 3 and [r.xid for r in take(c)] == [1]


def test_a_peer_that_stops_reading_is_aborted_after_the_write_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    c = RpcServerConnection(dispatcher(), CONN, idle_timeout=300.0, write_timeout=10.0)
    c.receive_data(encode_record(source_call(1, 8 * MiB)), 0.0)
    take(c)
    c.set_write_buffer(7 * MiB, 0.0)
    assert c.next_timer() == 10.0  # the write deadline, not the idle one
    c.set_write_buffer(6 * MiB, 5.0)  # progress: the deadline moves
    assert c.next_timer() == 15.0
    c.set_write_buffer(6 * MiB, 14.0)  # no progress
    c.handle_timer(14.0)
    assert not c.closed
    with caplog.at_level(logging.WARNING, "rpclatch.rpc.server"):
        c.handle_timer(15.0)
    assert c.aborted and c.closed and c.done
    assert c.close_reason is not None and "took no reply bytes for 10 s" in c.close_reason
    assert "aborting" in caplog.text
    assert c.receive_data(encode_record(null_call(2)), 16.0) == [] and c.data_to_send() == b""


def test_idle_close_does_not_wait_forever_for_unsent_output() -> None:
    """The idle timeout closes the connection; if the peer then never takes the replies still
    in the transport, the write timeout aborts it (it used to wait forever)."""
    c = RpcServerConnection(dispatcher(), CONN, idle_timeout=5.0, write_timeout=20.0)
    c.receive_data(encode_record(null_call(1)), 0.0)
    take(c)
    assert c.next_timer() == 5.0
    c.handle_timer(5.0)
    assert c.closed and c.done and not c.aborted
    # The shell closed the transport, which still holds bytes the peer does not read.
    c.set_write_buffer(300_000, 5.0)
    assert c.next_timer() == 25.0
    c.handle_timer(25.0)
    assert c.aborted
    # The same for a graceful close (server shutdown).
    c = RpcServerConnection(dispatcher(), CONN, write_timeout=20.0)
    c.receive_data(encode_record(source_call(1, MiB)), 0.0)
    take(c)
    c.set_write_buffer(MiB, 0.0)
    c.close("server shutting down")
    assert c.done and c.next_timer() == 20.0
    c.handle_timer(20.0)
    assert c.aborted


def test_output_drained_is_activity_and_the_idle_timer_waits_for_it() -> None:
    c = RpcServerConnection(dispatcher(), CONN, idle_timeout=5.0, write_timeout=20.0)
    c.receive_data(encode_record(source_call(1, MiB)), 0.0)
    take(c)
    c.set_write_buffer(MiB // 2, 0.0)
    c.set_write_buffer(1000, 12.0)  # a slow but steady reader: not idle, not stalled
    c.handle_timer(12.0)
    assert not c.closed and c.next_timer() == 32.0
    c.set_write_buffer(0, 13.0)  # all taken: the idle timer runs from now
    assert c.next_timer() == 18.0


def test_no_write_timeout_keeps_the_old_behaviour() -> None:
    c = RpcServerConnection(dispatcher(), CONN, idle_timeout=5.0)
    c.receive_data(encode_record(null_call(1)), 0.0)
    take(c)
    c.set_write_buffer(100, 0.0)
    assert c.next_timer() == 5.0
    c.handle_timer(5.0)
    assert c.closed and not c.aborted


# -- item 3: only complete calls are activity -------------------------------------------------


def test_empty_fragments_every_few_seconds_do_not_keep_the_connection() -> None:
    """A 4-byte zero-length fragment every 3 s (and an empty record now and then, so that no
    record has too many of them) is no activity: closed at the idle timeout."""
    c = RpcServerConnection(dispatcher(), CONN, idle_timeout=30.0, now=0.0)
    t = 0.0
    sent = 0
    while not c.closed and t < 300:
        t += 3.0
        c.handle_timer(t)
        if c.closed:
            break
        sent += 1
        c.receive_data(EMPTY_LAST if sent % 4 == 0 else EMPTY, t)
    assert c.closed and t == 30.0
    assert c.close_reason is not None and c.close_reason.startswith("idle for 30 s")


def test_a_record_growing_byte_by_byte_does_not_keep_the_connection() -> None:
    c = RpcServerConnection(dispatcher(), CONN, idle_timeout=30.0, now=0.0)
    c.receive_data(struct.pack(">I", LAST_FRAGMENT | 1000), 0.0)
    for t in range(1, 100):
        c.handle_timer(float(t))
        if c.closed:
            break
        c.receive_data(b"x", float(t))
    assert c.closed and c.close_reason == "idle for 30 s inside a partial record"


def test_complete_calls_are_activity() -> None:
    c = RpcServerConnection(dispatcher(), CONN, idle_timeout=30.0, now=0.0)
    for t in range(20, 200, 20):
        c.handle_timer(float(t))
        c.receive_data(encode_record(null_call(t)), float(t))
        assert not c.closed
    assert c.next_timer() == 180.0 + 30.0
    # A call arriving in pieces counts when it is complete.
    rec = encode_record(null_call(1))
    c.receive_data(rec[:10], 200.0)
    assert c.next_timer() == 210.0
    c.receive_data(rec[10:], 205.0)
    assert c.next_timer() == 235.0
    # Records that are not calls do not count.
    c.receive_data(encode_record(AcceptedReply(5).encode()) + encode_record(b""), 220.0)
    assert c.next_timer() == 235.0
    take(c)


# -- item 4: datagram replies capped before they are built -----------------------------------


def test_udp_source_too_large_is_refused_before_building_it(caplog: pytest.LogCaptureFixture) -> None:
    d = dispatcher()
    call = source_call(0x31, 64 * MiB)
    tracemalloc.start()
    try:
        with caplog.at_level(logging.WARNING, "rpclatch.rpc.server"):
            out = d.dispatch(call, UDP, 0.0, max_reply=65507)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(out, bytes)
    assert decode_message(out) == AcceptedReply(0x31, stat=AcceptStat.SYSTEM_ERR)
    assert peak < 1 * MiB, f"peak traced memory {peak} bytes"
    assert "do not fit" in caplog.text
    # What fits is served; the stream (no max_reply) is not limited.
    ok = d.dispatch(source_call(0x32, 65476), UDP, 0.0, max_reply=65507)  # a 65504-byte reply
    assert isinstance(ok, bytes) and len(ok) == 65504
    refused = d.dispatch(source_call(0x33, 65477), UDP, 0.0, max_reply=65507)  # padded: 65508
    assert isinstance(refused, bytes)
    assert decode_message(refused) == AcceptedReply(0x33, stat=AcceptStat.SYSTEM_ERR)
    stream_reply = d.dispatch(source_call(0x34, 100_000), CONN, 0.0)
    assert isinstance(stream_reply, bytes)
    msg = decode_message(stream_reply)
    assert isinstance(msg, AcceptedReply) and len(msg.results) == 100_004


def test_oversize_result_log_lines_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    d = dispatcher()
    with caplog.at_level(logging.WARNING, "rpclatch.rpc.server"):
        for i in range(1000):
            out = d.dispatch(source_call(i, 64 * MiB), UDP, 0.0, max_reply=65507)
            assert isinstance(out, bytes)
    lines = [r for r in caplog.records if "do not fit" in r.getMessage()]
    assert 1 <= len(lines) <= 20


def test_log_limiter_counts_what_it_holds_back(caplog: pytest.LogCaptureFixture) -> None:
    from rpclatch.rpc.server import LogLimiter

    now = [0.0]
    limiter = LogLimiter(burst=3, interval=10.0, clock=lambda: now[0])
    logger = logging.getLogger("rpclatch.test.limiter")
    with caplog.at_level(logging.INFO, "rpclatch.test.limiter"):
        assert [limiter.log(logger, logging.INFO, "line %d", i) for i in range(5)] == [
            True,
            True,
            True,
            False,
            False,
        ]
        now[0] = 10.0
        assert limiter.log(logger, logging.INFO, "line %d", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "line 0",
        "line 1",
        "line 2",
        "2 similar log lines suppressed in the last 10 s",
        "line 5",
    ]
