"""rpclatch.xdr (RFC 4506) over xdrlib3: typed errors, bounds, golden encodings."""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpclatch.xdr import Decoder, Encoder, XdrError, pad4


class Color(IntEnum):
    RED = 0
    GREEN = 1


def test_golden_encodings() -> None:
    # RFC 4506 §4.1-4.13: big-endian, 4-byte units, zero padding.
    assert Encoder().uint32(1).to_bytes().hex() == "00000001"
    assert Encoder().int32(-1).to_bytes().hex() == "ffffffff"
    assert Encoder().uint64(2**32).to_bytes().hex() == "0000000100000000"
    assert Encoder().int64(-2).to_bytes().hex() == "fffffffffffffffe"
    assert Encoder().boolean(True).to_bytes().hex() == "00000001"
    assert Encoder().opaque(b"abc").to_bytes().hex() == "0000000361626300"
    assert Encoder().fixed(b"abcde").to_bytes().hex() == "6162636465000000"
    assert Encoder().string("h\u00e9").to_bytes().hex() == "0000000368c3a900"
    assert Encoder().raw(b"\1\2\3\4").to_bytes() == b"\1\2\3\4"


def test_encoder_range_checks() -> None:
    for call in (
        lambda: Encoder().uint32(-1),
        lambda: Encoder().uint32(2**32),
        lambda: Encoder().int32(2**31),
        lambda: Encoder().uint64(-1),
        lambda: Encoder().int64(2**63),
        lambda: Encoder().opaque(b"abc", 2),
        lambda: Encoder().fixed(b"abc", 4),
        lambda: Encoder().raw(b"abc"),
        lambda: Encoder().string("abc", 2),
    ):
        with pytest.raises(XdrError):
            call()


def test_decoder_roundtrip_and_position() -> None:
    data = (
        Encoder()
        .uint32(7)
        .int32(-7)
        .uint64(1 << 40)
        .int64(-(1 << 40))
        .boolean(False)
        .opaque(b"xy")
        .string("s")
        .fixed(b"q", 1)
        .uint32(1)
        .to_bytes()
    )
    dec = Decoder(data)
    assert dec.uint32() == 7 and dec.int32() == -7
    assert dec.uint64() == 1 << 40 and dec.int64() == -(1 << 40)
    assert dec.boolean() is False
    assert dec.opaque() == b"xy" and dec.string() == "s" and dec.fixed(1) == b"q"
    assert dec.enum(Color) is Color.GREEN
    assert dec.remaining == 0 and dec.position == len(data)
    dec.done()


def test_decoder_errors() -> None:
    with pytest.raises(XdrError, match="truncated"):
        Decoder(b"\0\0").uint32()
    with pytest.raises(XdrError, match="exceeds limit"):
        Decoder(b"\0\0\0\x10" + bytes(16)).opaque(8)
    with pytest.raises(XdrError, match="overruns"):
        Decoder(b"\0\0\0\x10abcd").opaque()
    with pytest.raises(XdrError, match="bool"):
        Decoder(b"\0\0\0\2").boolean()
    with pytest.raises(XdrError, match="unknown Color"):
        Decoder(b"\0\0\0\7").enum(Color)
    with pytest.raises(XdrError, match="UTF-8"):
        Decoder(b"\0\0\0\1\xff\0\0\0").string()
    with pytest.raises(XdrError, match="trailing"):
        Decoder(b"\0\0\0\0").done()
    with pytest.raises(XdrError, match="items exceeds"):
        Decoder(b"\0\0\0\5").array(lambda: 0, 4)
    with pytest.raises(XdrError, match="overruns"):
        Decoder(b"\0\0\0\4\0\0\0\0").array(lambda: 0, 10)


def test_optional_array_rest_offset() -> None:
    data = Encoder().boolean(True).uint32(5).uint32(2).uint32(8).uint32(9).raw(b"rest").to_bytes()
    dec = Decoder(data)
    assert dec.optional(dec.uint32) == 5
    assert dec.array(dec.uint32, 4) == [8, 9]
    assert dec.rest() == b"rest"
    assert Decoder(data, offset=8).uint32() == 2
    assert Decoder(memoryview(b"\0\0\0\1")).uint32() == 1
    assert pad4(0) == 0 and pad4(1) == 4 and pad4(4) == 4


METHODS: list[Callable[[Decoder], Any]] = [
    Decoder.uint32,
    Decoder.int32,
    Decoder.uint64,
    Decoder.int64,
    Decoder.boolean,
    lambda d: d.enum(Color),
    lambda d: d.fixed(5),
    lambda d: d.opaque(64),
    lambda d: d.string(64),
    lambda d: d.array(d.uint32, 8),
    lambda d: d.optional(d.string),
    Decoder.done,
]


@given(st.binary(max_size=80), st.lists(st.integers(0, len(METHODS) - 1), min_size=1, max_size=6))
@settings(max_examples=500, deadline=None)
def test_any_bytes_decode_or_raise_xdr_error(data: bytes, steps: list[int]) -> None:
    dec = Decoder(data)
    try:
        for i in steps:
            METHODS[i](dec)
    except XdrError:
        return
    assert 0 <= dec.position <= len(data)


@given(st.binary(max_size=100))
def test_opaque_roundtrip(data: bytes) -> None:
    enc = Encoder().opaque(data).to_bytes()
    assert len(enc) == 4 + pad4(len(data))
    dec = Decoder(enc)
    assert dec.opaque() == data
    dec.done()
