"""Record marking (RFC 5531 §11): encoder, incremental reassembly, size limits."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpclatch.rpc.errors import RpcProtocolError
from rpclatch.rpc.record import (
    LAST_FRAGMENT,
    RecordError,
    RecordReassembler,
    RecordTooLarge,
    coalesce,
    encode_record,
)


def test_golden_single_fragment() -> None:
    # RFC 5531 §11: bit 31 set (last fragment), length 8.
    assert encode_record(bytes(range(8))).hex() == "80000008" + "0001020304050607"


def test_golden_empty_record() -> None:
    assert encode_record(b"").hex() == "80000000"


def test_golden_split_into_fragments() -> None:
    data = b"abcdefghij"
    assert encode_record(data, max_fragment=4).hex() == (
        "00000004" + b"abcd".hex() + "00000004" + b"efgh".hex() + "80000002" + b"ij".hex()
    )


def test_bad_max_fragment() -> None:
    with pytest.raises(ValueError):
        encode_record(b"abc", max_fragment=0)


def test_reassembles_multi_fragment_record() -> None:
    r = RecordReassembler()
    stream = encode_record(b"hello world", max_fragment=3) + encode_record(b"second")
    assert r.feed(stream) == [b"hello world", b"second"]
    assert not r.in_record and r.buffered == 0


def test_byte_by_byte() -> None:
    r = RecordReassembler()
    stream = encode_record(b"x" * 100, max_fragment=7) + encode_record(b"") + encode_record(b"yz")
    out: list[bytes] = []
    for i in range(len(stream)):
        out += r.feed(stream[i : i + 1])
        if i < 4:
            assert r.in_record
    assert out == [b"x" * 100, b"", b"yz"]


def test_accepts_memoryview_of_reused_buffer() -> None:
    r = RecordReassembler()
    buf = bytearray(64)
    stream = encode_record(b"0123456789")
    buf[:7] = stream[:7]
    assert r.feed(memoryview(buf)[:7]) == []
    buf[:] = bytes(64)  # the caller reuses its buffer: what was kept must have been copied
    buf[: len(stream) - 7] = stream[7:]
    assert r.feed(memoryview(buf)[: len(stream) - 7]) == [b"0123456789"]


def test_announced_2gib_fragment_is_refused_without_buffering() -> None:
    r = RecordReassembler(max_record=1024)
    with pytest.raises(RecordTooLarge) as info:
        r.feed(struct.pack(">I", LAST_FRAGMENT | 0x7FFFFFFF) + b"abc")
    assert info.value.announced == 0x7FFFFFFF
    assert info.value.limit == 1024
    assert r.buffered == 0
    assert isinstance(info.value, RecordError) and isinstance(info.value, RpcProtocolError)


def test_limit_counts_all_fragments_of_a_record() -> None:
    r = RecordReassembler(max_record=10)
    r.feed(struct.pack(">I", 6) + b"abcdef")
    with pytest.raises(RecordTooLarge):
        r.feed(struct.pack(">I", LAST_FRAGMENT | 5))


def test_record_exactly_at_limit() -> None:
    r = RecordReassembler(max_record=10)
    assert r.feed(encode_record(b"0123456789", max_fragment=4)) == [b"0123456789"]


def test_decode_hook_sees_whole_single_fragment_records_only() -> None:
    seen: list[tuple[int, int]] = []

    def decode(buf: bytes | memoryview, start: int, stop: int) -> str | None:
        seen.append((start, stop))
        return "decoded" if bytes(buf[start:stop]) == b"fast" else None

    r = RecordReassembler()
    out = r.feed(encode_record(b"fast") + encode_record(b"slow") + encode_record(b"split", 2), decode)
    assert out == ["decoded", b"slow", b"split"]
    assert len(seen) == 2  # the multi-fragment record is never offered


def test_coalesce_keeps_big_parts() -> None:
    big = bytes(20000)
    parts = coalesce([b"a", b"b", big, b"c"])
    assert parts == [b"ab", big, b"c"]
    assert parts[1] is big
    assert coalesce([]) == []


@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(1, 50), st.data())
@settings(max_examples=200, deadline=None)
def test_roundtrip_any_split(records: list[bytes], max_fragment: int, data: st.DataObject) -> None:
    stream = b"".join(encode_record(r, max_fragment) for r in records)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    r = RecordReassembler(max_record=4096)
    out: list[bytes] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        out += r.feed(stream[prev:cut])
        prev = cut
    assert out == records


@given(st.binary(max_size=2000), st.integers(0, 600))
@settings(max_examples=300, deadline=None)
def test_any_bytes_reassemble_or_raise_record_error(data: bytes, limit: int) -> None:
    r = RecordReassembler(max_record=limit)
    try:
        records = r.feed(data)
    except RecordError:
        return
    assert all(len(rec) <= limit for rec in records)
    assert r.buffered <= len(data)


def test_large_fragments_over_many_reads() -> None:
    # Memory follows what has arrived, never what a header announces (see test_bad_input).
    big = bytes(range(256)) * 1024  # 256 KiB
    stream = (
        encode_record(big) + encode_record(b"tail") + encode_record(big * 2, 100_000) + encode_record(b"end")
    )
    for chunk in (1000, 65536, 100_001, 262144):
        r = RecordReassembler(max_record=1 << 20)
        out: list[bytes] = []
        for i in range(0, len(stream), chunk):
            out += r.feed(memoryview(stream)[i : i + chunk])
            assert r.buffered <= len(stream)
        assert out == [big, b"tail", big * 2, b"end"]
        assert not r.in_record


def test_large_fragment_with_decode_hook() -> None:
    big = b"\xab" * 100_000
    r = RecordReassembler()
    seen: list[int] = []

    def decode(buf: bytes | memoryview, start: int, stop: int) -> bytes | None:
        seen.append(stop - start)
        return b"decoded:" + bytes(buf[start : start + 4])

    stream = encode_record(big)
    assert r.feed(stream[:5000], decode) == []
    assert r.in_record and r.buffered >= 4996
    assert r.feed(stream[5000:], decode) == [b"decoded:\xab\xab\xab\xab"]
    assert seen == [100_000]
