"""The rpclatch test program 0x20000A11 v1: NULL, ECHO, SINK, SOURCE."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpclatch.rpc.auth import ConnectionInfo
from rpclatch.rpc.errors import GarbageArgs
from rpclatch.rpc.messages import AcceptedReply, AcceptStat, CallMessage, decode_message
from rpclatch.rpc.server import CallContext, RpcDispatcher
from rpclatch.rpc.testprog import (
    PROC_ECHO,
    PROC_SOURCE,
    RPCLATCH_TEST_PROG,
    RPCLATCH_TEST_VERS,
    SOURCE_MAX,
    add_test_program,
    decode_opaque,
    encode_opaque,
    proc_echo,
    proc_null,
    proc_sink,
    proc_source,
)
from rpclatch.xdr import XdrError

CTX = CallContext(CallMessage(1, RPCLATCH_TEST_PROG, 1, 0), ConnectionInfo(1, None, "tcp"), None, 0.0)


def test_numbers() -> None:
    assert RPCLATCH_TEST_PROG == 0x20000A11 and RPCLATCH_TEST_VERS == 1


def test_opaque_golden() -> None:
    assert encode_opaque(b"abcde").hex() == "00000005" + b"abcde".hex() + "000000"
    assert encode_opaque(b"").hex() == "00000000"
    assert decode_opaque(bytes.fromhex("0000000261620000")) == b"ab"


@given(st.binary(max_size=100))
@settings(max_examples=300, deadline=None)
def test_decode_opaque_any_bytes(data: bytes) -> None:
    try:
        value = decode_opaque(data)
    except XdrError:
        return
    assert len(encode_opaque(value)) == len(data)


@given(st.binary(max_size=100))
def test_opaque_roundtrip(data: bytes) -> None:
    assert decode_opaque(encode_opaque(data)) == data


def test_procedures() -> None:
    assert proc_null(b"", CTX) == b""
    arg = encode_opaque(b"hello")
    assert proc_echo(arg, CTX) is arg  # the same bytes back, not a copy
    assert proc_sink(encode_opaque(b"x" * 1001), CTX) == (1001).to_bytes(4, "big")
    assert proc_source((6).to_bytes(4, "big"), CTX) == encode_opaque(bytes(6))


@pytest.mark.parametrize(
    "proc,args",
    [
        (proc_null, b"\0\0\0\0"),
        (proc_echo, b"\0\0"),
        (proc_echo, b"\0\0\0\5abcd"),  # opaque longer than the arguments
        (proc_echo, encode_opaque(b"ab") + b"\0\0\0\0"),  # trailing bytes
        (proc_sink, b""),
        (proc_source, b""),
        (proc_source, (SOURCE_MAX + 1).to_bytes(4, "big")),
    ],
)
def test_garbage(proc: object, args: bytes) -> None:
    with pytest.raises(GarbageArgs):
        proc(args, CTX)  # type: ignore[operator]


def test_served_by_dispatcher() -> None:
    d = RpcDispatcher()
    add_test_program(d)
    conn = ConnectionInfo(1, None, "tcp")
    echo = CallMessage(3, RPCLATCH_TEST_PROG, 1, PROC_ECHO, args=encode_opaque(b"hi")).encode()
    r = d.dispatch(echo, conn, 0.0)
    assert isinstance(r, bytes) and decode_message(r) == AcceptedReply(3, results=encode_opaque(b"hi"))
    big = CallMessage(4, RPCLATCH_TEST_PROG, 1, PROC_SOURCE, args=(2**32 - 1).to_bytes(4, "big")).encode()
    r = d.dispatch(big, conn, 0.0)
    assert isinstance(r, bytes) and decode_message(r) == AcceptedReply(4, stat=AcceptStat.GARBAGE_ARGS)
