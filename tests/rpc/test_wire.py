"""The per-call encoders (rpclatch.rpc.wire) and the one message decoder
(rpclatch.rpc.messages.decode_message) against golden vectors (RFC 5531 §9 layouts) and each other."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpclatch.rpc import messages, wire
from rpclatch.rpc.messages import (
    NULL_AUTH,
    AcceptedReply,
    AcceptStat,
    AuthFlavor,
    AuthStat,
    CallMessage,
    DeniedReply,
    OpaqueAuth,
    RejectStat,
)
from rpclatch.rpc.record import encode_record
from rpclatch.xdr import XdrError

# A NULL call to portmap v2 with AUTH_NONE, laid out field by field (RFC 5531 §9 call_body).
NULL_CALL_HEX = (
    "01020304"  # xid
    "00000000"  # CALL
    "00000002"  # rpcvers
    "000186a0"  # prog 100000
    "00000002"  # vers
    "00000000"  # proc NULL
    "00000000"
    "00000000"  # cred AUTH_NONE, empty
    "00000000"
    "00000000"  # verf AUTH_NONE, empty
)
# Its SUCCESS reply with no results (RFC 5531 §9 accepted_reply).
NULL_REPLY_HEX = "010203040000000100000000000000000000000000000000"
# PROG_MISMATCH 2..4.
MISMATCH_REPLY_HEX = "0000002a00000001000000000000000000000000000000020000000200000004"
# MSG_DENIED / AUTH_ERROR / AUTH_BADCRED.
AUTH_ERROR_HEX = "0000002a00000001000000010000000100000001"
# MSG_DENIED / RPC_MISMATCH 2..2.
RPC_MISMATCH_HEX = "0000002a0000000100000001000000000000000200000002"


def test_golden_null_call() -> None:
    call = CallMessage(0x01020304, 100000, 2, 0)
    assert wire.encode_call(call).hex() == NULL_CALL_HEX
    assert call.encode().hex() == NULL_CALL_HEX
    decoded = messages.decode_message(bytes.fromhex(NULL_CALL_HEX))
    assert decoded == call
    assert isinstance(decoded, CallMessage) and decoded.header_len == 32


def test_golden_null_reply() -> None:
    assert wire.encode_success(0x01020304, NULL_AUTH, b"").hex() == NULL_REPLY_HEX
    assert messages.decode_message(bytes.fromhex(NULL_REPLY_HEX)) == AcceptedReply(0x01020304)


def test_golden_error_replies() -> None:
    assert messages.decode_message(bytes.fromhex(MISMATCH_REPLY_HEX)) == AcceptedReply(
        42, NULL_AUTH, AcceptStat.PROG_MISMATCH, b"", (2, 4)
    )
    assert (
        AcceptedReply(42, NULL_AUTH, AcceptStat.PROG_MISMATCH, b"", (2, 4)).encode().hex()
        == MISMATCH_REPLY_HEX
    )
    assert messages.decode_message(bytes.fromhex(AUTH_ERROR_HEX)) == DeniedReply(
        42, RejectStat.AUTH_ERROR, auth_stat=AuthStat.AUTH_BADCRED
    )
    assert messages.decode_message(bytes.fromhex(RPC_MISMATCH_HEX)) == DeniedReply(
        42, RejectStat.RPC_MISMATCH, mismatch=(2, 2)
    )


def test_call_with_credentials_and_args() -> None:
    call = CallMessage(
        7, 1, 2, 3, OpaqueAuth(AuthFlavor.AUTH_SYS, b"abcde"), OpaqueAuth(9, b"v"), b"ARGSARGS"
    )
    encoded = wire.encode_call(call)
    assert encoded == call.encode()
    head, args = wire.encode_call_marked(call)
    assert head + args == encode_record(encoded)
    decoded = messages.decode_call(encoded)
    assert decoded == call
    assert decoded.header_len == 32 + 8  # cred body padded to 8
    assert encoded[: decoded.header_len] == call.encode_header_through_cred()


def test_success_with_verifier_marked() -> None:
    verf = OpaqueAuth(6, b"mic-bytes")
    head, results = wire.encode_success_marked(5, verf, b"RSLT")
    plain = wire.encode_success(5, verf, b"RSLT")
    assert head + results == encode_record(plain)
    assert plain == AcceptedReply(5, verf, AcceptStat.SUCCESS, b"RSLT").encode()


def test_decode_from_view_offsets() -> None:
    call = CallMessage(9, 10, 11, 12, args=b"\0\0\0\1")
    buf = bytearray(b"JUNK" + call.encode() + b"TAIL")
    view = memoryview(buf)
    assert wire.fast_call(view, 4, len(buf) - 4) == call
    reply = AcceptedReply(9, results=b"\0\0\0\2")
    rbuf = memoryview(b"XX" + reply.encode())
    assert wire.fast_reply(rbuf, 2, len(rbuf)) == reply


def test_fast_paths_decline_unusual_records() -> None:
    call = CallMessage(1, 2, 3, 4, rpcvers=3).encode()
    assert wire.fast_call(call, 0, len(call)) is None  # rpcvers 3: the server answers RPC_MISMATCH
    assert wire.fast_call(b"\0" * 39, 0, 39) is None
    reply = bytes.fromhex(NULL_REPLY_HEX)
    assert wire.fast_call(reply, 0, len(reply)) is None
    assert wire.fast_reply(bytes.fromhex(NULL_CALL_HEX), 0, 40) is None
    assert wire.fast_reply(b"\0\0\0\1\0\0\0\1\0\0\0\7", 0, 12) is None  # bad reply_stat


@pytest.mark.parametrize("data", [b"", b"\0\0\0\1", b"\0\0\0\1\0\0\0\7", bytes.fromhex(NULL_CALL_HEX)[:-1]])
def test_malformed_raise_xdr_error(data: bytes) -> None:
    with pytest.raises(XdrError):
        messages.decode_message(data)


def _same(data: bytes) -> None:
    """``data`` decodes, or is rejected with XdrError, the same as a record in the middle of a
    receive buffer; a decoded message re-encodes to a record of the same length (calls and SUCCESS
    replies carry the rest as args/results) that decodes to it again."""
    view = memoryview(b"JUNK" + data + b"TAIL")
    mtype = messages.message_type(data)
    decoders = {0: messages.decode_call, 1: messages.decode_reply}
    decode_in_buffer = decoders.get(mtype) if mtype is not None else None
    try:
        msg = messages.decode_message(data)
    except XdrError:
        if decode_in_buffer is not None:
            with pytest.raises(XdrError):
                decode_in_buffer(view, 4, 4 + len(data))
        return
    assert decode_in_buffer is not None and decode_in_buffer(view, 4, 4 + len(data)) == msg
    encoded = msg.encode()
    assert messages.decode_message(encoded) == msg
    if isinstance(msg, CallMessage):
        assert len(encoded) == len(data)
        assert msg.header_len == len(msg.encode_header_through_cred())
        assert wire.fast_call(view, 4, 4 + len(data)) == (msg if msg.rpcvers == 2 else None)
    else:
        if isinstance(msg, AcceptedReply) and msg.stat == AcceptStat.SUCCESS:
            assert len(encoded) == len(data)
        assert wire.fast_reply(view, 4, 4 + len(data)) == msg


@pytest.mark.parametrize(
    "hex_record", [NULL_CALL_HEX, NULL_REPLY_HEX, MISMATCH_REPLY_HEX, AUTH_ERROR_HEX, RPC_MISMATCH_HEX]
)
def test_golden_records_decode_the_same_anywhere_and_roundtrip(hex_record: str) -> None:
    _same(bytes.fromhex(hex_record))


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_any_bytes_decode_the_same_anywhere_and_roundtrip(data: bytes) -> None:
    _same(data)


words = st.integers(0, 0xFFFFFFFF)


@given(
    words,
    st.sampled_from([0, 1, 2]),
    st.sampled_from([0, 1, 5]),
    words,
    st.integers(0, 402),
    st.binary(max_size=40),
)
@settings(max_examples=500, deadline=None)
def test_structured_headers_decode_the_same_anywhere_and_roundtrip(
    xid: int, mtype: int, stat: int, sub: int, auth_len: int, tail: bytes
) -> None:
    # Headers that get past the first words, so the deeper branches are exercised.
    import struct

    data = struct.pack(">IIII", xid, mtype, stat, auth_len) + tail
    _same(data)
    data = struct.pack(">IIIIII", xid, mtype, 2, sub & 0xFF, 0, auth_len) + tail
    _same(data)
    data = struct.pack(">IIIIIII", xid, 1, 0, 0, 0, sub % 7, sub) + tail
    _same(data)
    data = struct.pack(">IIIII", xid, 1, 1, sub % 3, stat) + tail
    _same(data)


@given(
    words,
    words,
    words,
    words,
    st.integers(0, 20),
    st.binary(max_size=400),
    st.integers(0, 20),
    st.binary(max_size=400),
    st.binary(max_size=64).map(lambda b: b + bytes(-len(b) % 4)),
)
@settings(max_examples=200, deadline=None)
def test_call_roundtrip(
    xid: int, prog: int, vers: int, proc: int, cf: int, cred: bytes, vf: int, verf: bytes, args: bytes
) -> None:
    call = CallMessage(xid, prog, vers, proc, OpaqueAuth(cf, cred), OpaqueAuth(vf, verf), args)
    encoded = wire.encode_call(call)
    assert encoded == call.encode()
    assert messages.decode_message(encoded) == call
    _same(encoded)


@given(
    flavor=st.sampled_from([1, 6, 300]),
    cred=st.binary(max_size=400),
    verf=st.binary(max_size=40),
    args=st.binary(max_size=40).map(lambda b: b + b"\0" * (-len(b) % 4)),
    pad=st.integers(1, 2**32 - 1),
)
@settings(max_examples=200)
def test_decoded_calls_keep_the_signed_header_bytes(
    flavor: int, cred: bytes, verf: bytes, args: bytes, pad: int
) -> None:
    """RFC 2203 §5.3.1: the verifier is a MIC over xid .. cred as sent; the decoder keeps exactly
    those bytes (including non-zero padding a sender may have put after the credential body)."""
    msg = CallMessage(9, 0x20000099, 1, 2, OpaqueAuth(flavor, cred), OpaqueAuth(6, verf), args)
    data = bytearray(wire.encode_call(msg))
    if len(cred) % 4:  # non-zero padding bytes are on the wire (the decoder must not re-create them)
        data[32 + len(cred) : 32 + len(cred) + (-len(cred) % 4)] = pad.to_bytes(4, "big")[: -len(cred) % 4]
    decoded = messages.decode_call(bytes(data))
    assert decoded == msg and decoded.header == bytes(data[: decoded.header_len])
    assert decoded.header[: 32 + len(cred)] == msg.encode_header_through_cred()[: 32 + len(cred)]
    null = messages.decode_call(wire.encode_call(CallMessage(9, 1, 1, 0)))
    assert null.header == b""  # AUTH_NONE: nothing kept, nothing signs it


@given(
    flavor=st.sampled_from([0, 1, 6]),
    cred=st.binary(max_size=400),
    vflavor=st.sampled_from([0, 6]),
    verf=st.binary(max_size=400),
    args=st.binary(max_size=64).map(lambda b: b + b"\0" * (-len(b) % 4)),
)
@settings(max_examples=200)
def test_marked_call_is_the_record_of_the_encoded_call(
    flavor: int, cred: bytes, vflavor: int, verf: bytes, args: bytes
) -> None:
    call = CallMessage(0xFFFFFFFF, 100003, 4, 1, OpaqueAuth(flavor, cred), OpaqueAuth(vflavor, verf), args)
    head, rest = wire.encode_call_marked(call)
    assert rest is args and head + rest == encode_record(call.encode())
