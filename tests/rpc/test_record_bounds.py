"""What record reassembly (RFC 5531 §11) may hold per connection, in both directions: the
payload of the record in progress plus at most one fragment header, whatever the fragmentation,
and zero-length non-last fragments are counted and refused after a few (issue #10 item 1).

These are sans-IO tests with buffer accounting (and tracemalloc for what bookkeeping would cost);
the loopback tests with hostile raw-socket peers are in test_hostile_peers.py.
"""

from __future__ import annotations

import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpclatch.rpc.auth import ConnectionInfo
from rpclatch.rpc.client import CallFailed, CallHandle, ConnectionFailed, RpcClientConnection
from rpclatch.rpc.errors import RpcProtocolError
from rpclatch.rpc.messages import AcceptedReply, CallMessage
from rpclatch.rpc.record import (
    DEFAULT_MAX_RECORD,
    RecordError,
    RecordReassembler,
    encode_record,
)
from rpclatch.rpc.server import RpcDispatcher, RpcServerConnection
from rpclatch.rpc.testprog import RPCLATCH_TEST_PROG, add_test_program

EMPTY = struct.pack(">I", 0)  # a zero-length fragment that is not the last of its record
CHUNK = 256 * 1024  # what the asyncio shells read at a time


def empty_fragments(n: int) -> bytes:
    return EMPTY * n


def tiny_fragments(payload: bytes, size: int = 2) -> bytes:
    """``payload`` record-marked as ``size``-byte fragments."""
    return encode_record(payload, max_fragment=size)


def feed_in_chunks(r: RecordReassembler, stream: bytes) -> tuple[list[bytes], int]:
    """Feed ``stream`` as the shells would; return the records and the peak of ``r.buffered``."""
    out: list[bytes] = []
    most = 0
    view = memoryview(stream)
    for i in range(0, len(stream), CHUNK):
        out += r.feed(view[i : i + CHUNK])
        most = max(most, r.buffered)
    return out, most


# -- the reassembler --------------------------------------------------------------------------


def test_a_few_empty_fragments_are_fine_and_the_count_is_per_record() -> None:
    r = RecordReassembler()
    stream = (empty_fragments(8) + encode_record(b"abc")) * 3
    assert r.feed(stream) == [b"abc"] * 3
    assert not r.in_record and r.buffered == 0
    # Eight empty ones, then a real fragment, then the last one: still one record.
    assert r.feed(empty_fragments(8) + struct.pack(">I", 2) + b"ab" + encode_record(b"cd")) == [b"abcd"]


def test_too_many_empty_fragments_raise_a_record_error() -> None:
    from rpclatch.rpc.record import TooManyEmptyFragments

    r = RecordReassembler()
    assert r.feed(empty_fragments(8)) == []
    assert r.in_record and r.buffered == 0
    with pytest.raises(TooManyEmptyFragments) as info:
        r.feed(EMPTY)
    assert isinstance(info.value, RecordError) and isinstance(info.value, RpcProtocolError)
    assert info.value.limit == 8
    assert r.buffered == 0 and not r.in_record
    # Limit configurable; one at a time or all at once.
    r = RecordReassembler(max_empty_fragments=2)
    with pytest.raises(TooManyEmptyFragments):
        r.feed(empty_fragments(3) + encode_record(b"x"))


def test_empty_fragment_flood_is_refused_at_once() -> None:
    """The issue's attack: 48 MiB of zero words (empty non-last fragments) were all kept."""
    r = RecordReassembler()
    chunk = bytes(CHUNK)  # zero words: empty non-last fragments
    with pytest.raises(RecordError):
        for _ in range(8 * 1024 * 1024 // CHUNK):
            r.feed(chunk)
    assert r.buffered == 0


def _rss_peak_reset() -> bool:
    """Reset the peak RSS of this process (VmHWM) if the kernel lets us (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise LookupError(field)


def test_4_mib_record_in_2_byte_fragments_costs_a_small_factor_of_the_limit() -> None:
    """A 4 MiB record as 2-byte fragments cost ~114 MiB of RSS (~28x the limit) when each
    fragment was kept as an object; now the record in progress is one bytearray."""
    limit = DEFAULT_MAX_RECORD
    payload = bytes(range(256)) * (4 * 1024 * 1024 // 256)
    stream = tiny_fragments(payload, 2)
    r = RecordReassembler(limit)
    if not _rss_peak_reset():
        pytest.skip("cannot reset the peak RSS (/proc/self/clear_refs)")
    before = _proc_status("VmRSS")
    out, most = feed_in_chunks(r, stream)
    growth = _proc_status("VmHWM") - before
    assert out == [payload]
    assert most <= len(payload) + 4  # the payload so far plus at most one header
    # The record in progress (bytearray growth ~1/8) plus the completed copy: about 2x.
    assert growth < 4 * limit, f"peak RSS grew by {growth} bytes for a {limit}-byte limit"


@pytest.mark.parametrize("fragment", [1, 2, 3, 64])
def test_record_in_tiny_fragments_allocates_no_bookkeeping(fragment: int) -> None:
    """The same with tracemalloc (exact, but slow: a smaller record)."""
    payload = bytes(range(256)) * (512 * 1024 // 256)
    stream = tiny_fragments(payload, fragment)
    r = RecordReassembler()
    tracemalloc.start()
    try:
        out, most = feed_in_chunks(r, stream)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out == [payload]
    assert most <= len(payload) + 4
    # The record in progress (bytearray growth ~1/8), the completed copy and one input chunk.
    assert peak < 2.5 * len(payload) + 2 * CHUNK + 65536, f"peak {peak} for {len(payload)} bytes"


def test_buffered_never_exceeds_the_limit_plus_one_header() -> None:
    limit = 10_000
    r = RecordReassembler(limit)
    # A record growing to exactly the limit in odd fragments, fed a few bytes at a time.
    stream = tiny_fragments(b"y" * limit, 7) + tiny_fragments(b"z" * 33, 5)
    out: list[bytes] = []
    for i in range(0, len(stream), 13):
        out += r.feed(stream[i : i + 13])
        assert r.buffered <= limit + 4
    assert out == [b"y" * limit, b"z" * 33]


@given(
    st.lists(st.tuples(st.integers(0, 12), st.binary(max_size=40)), min_size=1, max_size=6),
    st.integers(1, 16),
    st.integers(0, 10),
    st.data(),
)
@settings(max_examples=300, deadline=None)
def test_fuzz_empty_fragment_counting(
    records: list[tuple[int, bytes]], max_fragment: int, max_empty: int, data: st.DataObject
) -> None:
    """Records preceded by some empty non-last fragments, cut anywhere: reassembled exactly
    while no record has more than ``max_empty`` of them, a RecordError at the first that does;
    ``buffered`` never above the limit plus one header."""
    limit = 200
    stream = b"".join(empty_fragments(n) + encode_record(payload, max_fragment) for n, payload in records)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    r = RecordReassembler(limit, max_empty_fragments=max_empty)
    expected: list[bytes] = []
    for n, payload in records:
        if n > max_empty:
            break
        expected.append(payload)
    must_fail = len(expected) < len(records)
    out: list[bytes] = []
    prev = 0
    try:
        for cut in [*cuts, len(stream)]:
            out += r.feed(stream[prev:cut])
            prev = cut
            assert r.buffered <= limit + 4
    except RecordError:
        assert must_fail
        assert out == expected[: len(out)]
        assert r.buffered == 0
        return
    assert not must_fail
    assert out == expected


# -- server and client connections use it -----------------------------------------------------


def server_conn(**kw: int) -> RpcServerConnection:
    d = RpcDispatcher()
    add_test_program(d)
    return RpcServerConnection(d, ConnectionInfo(3, ("192.0.2.9", 1000), "tcp"), **kw)


def test_server_connection_closes_on_empty_fragment_flood() -> None:
    c = server_conn()
    assert c.receive_data(bytes(CHUNK), 0.0) == []
    assert c.closed and c.close_reason is not None
    assert c.data_to_send() == b""
    assert c.receive_data(encode_record(CallMessage(1, RPCLATCH_TEST_PROG, 1, 0).encode()), 0.0) == []


def test_server_connection_buffers_at_most_the_record_limit() -> None:
    """A call record sent as 2-byte fragments: the connection's reassembly holds the payload so
    far and nothing per fragment, and the call is still answered."""
    call = CallMessage(5, RPCLATCH_TEST_PROG, 1, 2, args=struct.pack(">I", 40_000) + b"s" * 40_000)
    stream = tiny_fragments(call.encode(), 2)
    c = server_conn()
    for i in range(0, len(stream), 4096):
        c.receive_data(stream[i : i + 4096], 0.0)
        assert c.buffered_input <= len(call.encode()) + 4
    [reply] = RecordReassembler().feed(c.data_to_send())
    assert reply[:4] == struct.pack(">I", 5)


def client_with_call() -> tuple[RpcClientConnection, CallHandle]:
    client = RpcClientConnection(first_xid=100)
    handle = client.send_call(RPCLATCH_TEST_PROG, 1, 0, b"", None, 0.0)
    client.data_to_send()
    return client, handle


def test_client_connection_fails_on_empty_fragment_flood_from_the_server() -> None:
    client, handle = client_with_call()
    events = client.receive_data(bytes(CHUNK))
    assert [type(e) for e in events] == [CallFailed, ConnectionFailed]
    assert isinstance(events[0], CallFailed) and events[0].handle is handle
    assert isinstance(events[-1], ConnectionFailed) and isinstance(events[-1].error, RecordError)
    assert client.closed and client.buffered_input == 0


def test_client_connection_bounds_a_reply_in_tiny_fragments() -> None:
    """A hostile server sending a 1 MiB reply as 2-byte fragments: the client holds the payload
    so far, and the (legal) reply still completes the call."""
    client, _ = client_with_call()
    reply = AcceptedReply(100, results=b"r" * (1024 * 1024)).encode()
    stream = tiny_fragments(reply, 2)
    tracemalloc.start()
    try:
        events = []
        most = 0
        view = memoryview(stream)
        for i in range(0, len(stream), CHUNK):
            events += client.receive_data(view[i : i + CHUNK])
            most = max(most, client.buffered_input)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert most <= len(reply) + 4
    assert peak < 4 * len(reply) + 2 * CHUNK, f"peak {peak} for a {len(reply)}-byte reply"
    assert len(events) == 1 and not isinstance(events[0], CallFailed | ConnectionFailed)
