"""Sans-IO client (rpclatch.rpc.client): xids, reply matching, deadlines, retransmission, auth
refresh — driven with a fake clock against the sans-IO server."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpclatch.rpc.auth import ClientAuth, ConnectionInfo, PreparedCall
from rpclatch.rpc.auth_sys import AuthNoneClient
from rpclatch.rpc.client import (
    CallCompleted,
    CallFailed,
    ConnectionFailed,
    Event,
    RpcClientConnection,
    RpcDatagramClient,
)
from rpclatch.rpc.errors import (
    AuthVerifierError,
    RpcAcceptError,
    RpcAuthError,
    RpcConnectionClosed,
    RpcMismatchError,
    RpcProtocolError,
    RpcTimeout,
)
from rpclatch.rpc.messages import (
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
from rpclatch.rpc.server import RpcDispatcher, RpcServerConnection
from rpclatch.rpc.testprog import RPCLATCH_TEST_PROG, add_test_program, encode_opaque

PROG = RPCLATCH_TEST_PROG


def server_conn() -> RpcServerConnection:
    d = RpcDispatcher()
    add_test_program(d)
    return RpcServerConnection(d, ConnectionInfo(1, None, "tcp"))


def sent_calls(client: RpcClientConnection) -> list[CallMessage]:
    out = []
    for rec in RecordReassembler().feed(client.data_to_send()):
        msg = decode_message(rec)
        assert isinstance(msg, CallMessage)
        out.append(msg)
    return out


def test_xids_start_anywhere_and_increment() -> None:
    c = RpcClientConnection(first_xid=0xFFFFFFFF)
    h1 = c.send_call(PROG, 1, 0, b"", None, 0.0)
    h2 = c.send_call(PROG, 1, 0, b"", None, 0.0)
    assert (h1.xid, h2.xid) == (0xFFFFFFFF, 0)
    assert [m.xid for m in sent_calls(c)] == [0xFFFFFFFF, 0]
    assert c.outstanding == 2


def test_random_first_xid() -> None:
    xids = {RpcClientConnection().send_call(PROG, 1, 0, b"", None, 0.0).xid for _ in range(8)}
    assert len(xids) > 1


def test_skips_xids_still_outstanding() -> None:
    c = RpcClientConnection(first_xid=5)
    c.send_call(PROG, 1, 0, b"", None, 0.0)  # xid 5
    c._next_xid = 5  # wrapped around while 5 is still outstanding
    assert c.send_call(PROG, 1, 0, b"", None, 0.0).xid == 6


def test_round_trip_and_reply_matching_out_of_order() -> None:
    c = RpcClientConnection()
    s = server_conn()
    h1 = c.send_call(PROG, 1, 1, encode_opaque(b"one"), None, 0.0)
    h2 = c.send_call(PROG, 1, 1, encode_opaque(b"two"), None, 0.0)
    s.receive_data(c.data_to_send(), 0.0)
    replies = RecordReassembler().feed(s.data_to_send())
    events = c.receive_data(encode_record(replies[1]) + encode_record(replies[0]))
    assert events == [CallCompleted(h2, encode_opaque(b"two")), CallCompleted(h1, encode_opaque(b"one"))]
    assert c.outstanding == 0 and h1.done and h2.done
    assert c.receive_data(encode_record(replies[0])) == []  # duplicate: ignored


def test_error_statuses_become_typed_errors() -> None:
    c = RpcClientConnection(first_xid=100)
    handles = [c.send_call(PROG, 1, 0, b"", None, 0.0) for _ in range(6)]
    replies = [
        AcceptedReply(100, stat=AcceptStat.PROG_MISMATCH, mismatch=(2, 4)),
        AcceptedReply(101, stat=AcceptStat.PROC_UNAVAIL),
        DeniedReply(102, RejectStat.RPC_MISMATCH, mismatch=(2, 2)),
        DeniedReply(103, RejectStat.AUTH_ERROR, auth_stat=AuthStat.AUTH_TOOWEAK),
        AcceptedReply(104, OpaqueAuth(6, b"bad")),  # AUTH_NONE client refuses a GSS verifier
        AcceptedReply(105, stat=AcceptStat.GARBAGE_ARGS),
    ]
    events = c.receive_data(b"".join(encode_record(r.encode()) for r in replies))
    assert [type(e) for e in events] == [CallFailed] * 6
    errors = [e.error for e in events if isinstance(e, CallFailed)]
    assert isinstance(errors[0], RpcAcceptError) and errors[0].mismatch == (2, 4)
    assert "server supports versions 2..4" in str(errors[0])
    assert isinstance(errors[1], RpcAcceptError) and errors[1].stat == AcceptStat.PROC_UNAVAIL
    assert isinstance(errors[2], RpcMismatchError) and errors[2].mismatch == (2, 2)
    assert isinstance(errors[3], RpcAuthError) and errors[3].stat == AuthStat.AUTH_TOOWEAK
    assert isinstance(errors[4], AuthVerifierError)
    assert isinstance(errors[5], RpcAcceptError) and errors[5].stat == AcceptStat.GARBAGE_ARGS
    assert [e.handle for e in events if isinstance(e, CallFailed)] == handles


def test_malformed_reply_fails_only_its_call() -> None:
    c = RpcClientConnection(first_xid=7)
    h = c.send_call(PROG, 1, 0, b"", None, 0.0)
    other = c.send_call(PROG, 1, 0, b"", None, 0.0)
    bad = struct.pack(">III", 7, 1, 0) + b"\0\0\0\0\0\0\x01\x90"  # verifier length 400, no body
    events = c.receive_data(encode_record(bad) + encode_record(b"\0\0\0\x63\0\0\0\1\xff"))
    assert len(events) == 1 and isinstance(events[0], CallFailed) and events[0].handle is h
    assert isinstance(events[0].error, RpcProtocolError)
    assert not other.done


def test_calls_are_ignored_by_the_client() -> None:
    c = RpcClientConnection(first_xid=1)
    c.send_call(PROG, 1, 0, b"", None, 0.0)
    assert c.receive_data(encode_record(CallMessage(1, 2, 3, 4).encode())) == []
    assert c.outstanding == 1


def test_deadlines_and_timers() -> None:
    c = RpcClientConnection(default_timeout=10.0)
    assert c.next_timer() is None
    h1 = c.send_call(PROG, 1, 0, b"", None, 0.0, timeout=5.0)
    h2 = c.send_call(PROG, 1, 0, b"", None, 1.0)
    c.send_call(PROG, 1, 0, b"", None, 1.0, timeout=float("inf"))
    assert c.next_timer() == 5.0
    assert c.handle_timer(4.9) == []
    events = c.handle_timer(5.0)
    assert len(events) == 1 and isinstance(events[0], CallFailed) and events[0].handle is h1
    assert isinstance(events[0].error, RpcTimeout)
    assert c.next_timer() == 11.0
    # A reply that arrives after the deadline is ignored.
    assert c.receive_data(encode_record(AcceptedReply(h1.xid).encode())) == []
    assert c.receive_data(encode_record(AcceptedReply(h2.xid).encode())) == [CallCompleted(h2, b"")]
    assert c.next_timer() is None
    assert c.outstanding == 1  # the call without deadline


def test_timer_heap_stays_bounded() -> None:
    c = RpcClientConnection()
    for i in range(5000):
        h = c.send_call(PROG, 1, 0, b"", None, float(i))
        c.receive_data(encode_record(AcceptedReply(h.xid).encode()))
        c.data_to_send()
    assert len(c._timers) < 200


def test_record_error_closes_and_fails_everything() -> None:
    c = RpcClientConnection(max_record=100)
    h = c.send_call(PROG, 1, 0, b"", None, 0.0)
    events = c.receive_data(struct.pack(">I", LAST_FRAGMENT | 0x7FFFFFFF))
    assert isinstance(events[0], CallFailed) and events[0].handle is h
    assert isinstance(events[-1], ConnectionFailed)
    assert c.closed
    with pytest.raises(RpcConnectionClosed):
        c.send_call(PROG, 1, 0, b"", None, 0.0)


def test_connection_lost_fails_outstanding() -> None:
    c = RpcClientConnection()
    h = c.send_call(PROG, 1, 0, b"", None, 0.0)
    events = c.connection_lost()
    assert len(events) == 1 and isinstance(events[0], CallFailed) and events[0].handle is h
    assert isinstance(events[0].error, RpcConnectionClosed)


def test_small_max_fragment_splits_calls() -> None:
    c = RpcClientConnection(max_fragment=16)
    c.send_call(PROG, 1, 1, encode_opaque(b"x" * 100), None, 0.0)
    data = c.data_to_send()
    assert struct.unpack_from(">I", data)[0] == 16  # first fragment, not last
    s = server_conn()
    s.receive_data(data, 0.0)
    [event] = c.receive_data(s.data_to_send())
    assert isinstance(event, CallCompleted) and event.result == encode_opaque(b"x" * 100)


class RefreshingAuth(ClientAuth):
    """Asks for one retry on AUTH_ERROR and counts what it was asked."""

    flavor = 0

    def __init__(self, retry: bool) -> None:
        self.retry = retry
        self.prepared: list[int] = []
        self.errors: list[AuthStat] = []

    def prepare_call(self, xid: int, prog: int, vers: int, proc: int, args: bytes) -> PreparedCall:
        self.prepared.append(xid)
        return AuthNoneClient().prepare_call(xid, prog, vers, proc, args)

    def accept_reply(self, prepared: PreparedCall, reply: AcceptedReply) -> bytes:
        return reply.results

    def on_auth_error(self, prepared: PreparedCall, stat: AuthStat) -> bool:
        self.errors.append(stat)
        return self.retry


def test_auth_error_retries_once_with_new_xid() -> None:
    auth = RefreshingAuth(retry=True)
    c = RpcClientConnection(first_xid=50)
    h = c.send_call(PROG, 1, 0, b"", auth, 0.0)
    c.data_to_send()
    denied = DeniedReply(50, RejectStat.AUTH_ERROR, auth_stat=AuthStat.RPCSEC_GSS_CREDPROBLEM)
    assert c.receive_data(encode_record(denied.encode())) == []
    assert h.xid == 51 and auth.prepared == [50, 51]
    assert [m.xid for m in sent_calls(c)] == [51]
    again = DeniedReply(51, RejectStat.AUTH_ERROR, auth_stat=AuthStat.RPCSEC_GSS_CREDPROBLEM)
    [event] = c.receive_data(encode_record(again.encode()))
    assert isinstance(event, CallFailed) and isinstance(event.error, RpcAuthError)
    assert len(auth.errors) == 1 and auth.prepared == [50, 51]  # not asked again: no 2nd retry


def test_auth_error_without_retry_fails() -> None:
    auth = RefreshingAuth(retry=False)
    c = RpcClientConnection(first_xid=1)
    c.send_call(PROG, 1, 0, b"", auth, 0.0)
    [event] = c.receive_data(
        encode_record(DeniedReply(1, RejectStat.AUTH_ERROR, auth_stat=AuthStat.AUTH_BADCRED).encode())
    )
    assert isinstance(event, CallFailed) and isinstance(event.error, RpcAuthError)


def test_datagram_retransmits_with_backoff_until_deadline() -> None:
    c = RpcDatagramClient(default_timeout=10.0, retransmit_initial=1.0, retransmit_max=4.0, first_xid=9)
    h = c.send_call(PROG, 1, 0, b"", None, 0.0)
    [first] = c.datagrams_to_send()
    sent_at = []
    now = 0.0
    events: list[Event] = []
    while not events:
        when = c.next_timer()
        assert when is not None
        now = when
        events = c.handle_timer(now)
        for d in c.datagrams_to_send():
            assert d == first  # same xid, same bytes
            sent_at.append(now)
    assert sent_at == [1.0, 3.0, 7.0]  # 1, then 2, then 4 (capped) seconds apart
    assert now == 10.0 and isinstance(events[0], CallFailed) and isinstance(events[0].error, RpcTimeout)
    assert h.done


def test_datagram_reply_completes_and_stops_retransmission() -> None:
    c = RpcDatagramClient(retransmit_initial=1.0, first_xid=3)
    h = c.send_call(PROG, 1, 0, b"", None, 0.0)
    c.datagrams_to_send()
    assert c.receive_datagram(AcceptedReply(3, results=b"ok!!").encode()) == [CallCompleted(h, b"ok!!")]
    assert c.next_timer() is None
    assert c.handle_timer(100.0) == [] and c.datagrams_to_send() == []


def test_datagram_auth_refresh_resends() -> None:
    auth = RefreshingAuth(retry=True)
    c = RpcDatagramClient(first_xid=3)
    c.send_call(PROG, 1, 0, b"", auth, 0.0)
    c.datagrams_to_send()
    c.receive_datagram(DeniedReply(3, RejectStat.AUTH_ERROR, auth_stat=AuthStat.AUTH_REJECTEDCRED).encode())
    [resent] = c.datagrams_to_send()
    assert struct.unpack_from(">I", resent)[0] == 4


class CountingAuth(ClientAuth):
    """Each transmission carries its number in the verifier; a reply checks only against the
    transmission whose number it echoes (as an RPCSEC_GSS reply verifier MIC(seq_num) does).
    ``fail_after`` transmissions it refuses to prepare more (sequence numbers exhausted)."""

    flavor = 0

    def __init__(self, fail_after: int | None = None) -> None:
        self.sent = 0
        self.fail_after = fail_after

    def prepare_call(self, xid: int, prog: int, vers: int, proc: int, args: bytes) -> PreparedCall:
        if self.fail_after is not None and self.sent >= self.fail_after:
            raise RuntimeError("no more sequence numbers")
        self.sent += 1
        verf = OpaqueAuth(0, struct.pack(">I", self.sent))
        return PreparedCall(CallMessage(xid, prog, vers, proc, verf=verf, args=args), self.sent)

    def accept_reply(self, prepared: PreparedCall, reply: AcceptedReply) -> bytes:
        if reply.verf.body != struct.pack(">I", prepared.state):
            raise AuthVerifierError("not the reply to this transmission")
        return reply.results


@pytest.mark.parametrize("answered", [1, 2, 3])
def test_datagram_retransmission_is_prepared_afresh_and_any_reply_matches(answered: int) -> None:
    auth = CountingAuth()
    c = RpcDatagramClient(auth, retransmit_initial=1.0, first_xid=70)
    h = c.send_call(PROG, 1, 0, b"", None, 0.0)
    c.handle_timer(1.0)
    c.handle_timer(3.0)
    sent = [decode_message(d) for d in c.datagrams_to_send()]
    assert [m.xid for m in sent] == [70, 70, 70]  # same xid ...
    assert [m.verf.body for m in sent if isinstance(m, CallMessage)] == [  # ... fresh preparation
        struct.pack(">I", n) for n in (1, 2, 3)
    ]
    reply = AcceptedReply(70, OpaqueAuth(0, struct.pack(">I", answered)), results=b"done")
    assert c.receive_datagram(reply.encode()) == [CallCompleted(h, b"done")]


def test_datagram_reply_matching_no_transmission_fails() -> None:
    c = RpcDatagramClient(CountingAuth(), retransmit_initial=1.0, first_xid=70)
    h = c.send_call(PROG, 1, 0, b"", None, 0.0)
    c.handle_timer(1.0)
    reply = AcceptedReply(70, OpaqueAuth(0, struct.pack(">I", 9)), results=b"forged")
    [event] = c.receive_datagram(reply.encode())
    assert isinstance(event, CallFailed) and event.handle is h
    assert isinstance(event.error, AuthVerifierError)


def test_datagram_retransmission_the_flavor_cannot_prepare_fails_the_call() -> None:
    c = RpcDatagramClient(CountingAuth(fail_after=1), retransmit_initial=1.0, first_xid=70)
    h = c.send_call(PROG, 1, 0, b"", None, 0.0)
    [event] = c.handle_timer(1.0)
    assert isinstance(event, CallFailed) and event.handle is h and h.done
    assert "no more sequence numbers" in str(event.error)
    assert c.next_timer() is None


def test_datagram_close() -> None:
    c = RpcDatagramClient()
    h = c.send_call(PROG, 1, 0, b"", None, 0.0)
    [event] = c.close()
    assert isinstance(event, CallFailed) and event.handle is h


def test_datagram_rejects_bad_backoff() -> None:
    with pytest.raises(ValueError):
        RpcDatagramClient(retransmit_initial=2.0, retransmit_max=1.0)


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_reply_bytes_never_crash_the_client(data: bytes) -> None:
    c = RpcClientConnection(first_xid=0, max_record=256)
    c.send_call(PROG, 1, 0, b"", None, 0.0)
    for event in c.receive_data(data):
        assert isinstance(event, CallCompleted | CallFailed | ConnectionFailed)
    d = RpcDatagramClient(first_xid=0)
    d.send_call(PROG, 1, 0, b"", None, 0.0)
    d.receive_datagram(data)


def test_finished_calls_release_their_buffers() -> None:
    # Stale timer entries keep handles alive for a while: they must not keep payloads alive.
    c = RpcClientConnection(first_xid=1)
    h = c.send_call(PROG, 1, 1, encode_opaque(b"x" * 1000), None, 0.0)
    c.receive_data(encode_record(AcceptedReply(1).encode()))
    assert h.done and h.args == b"" and h.prepared is None
    assert any(entry[2] is h for entry in c._timers)  # still referenced by the heap
