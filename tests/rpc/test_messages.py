"""RFC 5531 §9 message structures (rpclatch.rpc.messages): encode/decode, bounds, any-bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpclatch.rpc.errors import RpcAcceptError, RpcAuthError, RpcMismatchError
from rpclatch.rpc.messages import (
    MAX_AUTH_BYTES,
    NULL_AUTH,
    AcceptedReply,
    AcceptStat,
    AuthStat,
    CallMessage,
    DeniedReply,
    OpaqueAuth,
    RejectStat,
    decode_message,
    peek_xid,
)
from rpclatch.xdr import XdrError

words = st.integers(0, 0xFFFFFFFF)
auths = st.builds(OpaqueAuth, st.integers(0, 400000), st.binary(max_size=MAX_AUTH_BYTES))
xdr_bytes = st.binary(max_size=64).map(lambda b: b + bytes(-len(b) % 4))


def test_opaque_auth_limit() -> None:
    OpaqueAuth(1, bytes(400))
    with pytest.raises(XdrError):
        OpaqueAuth(1, bytes(401))


def test_header_through_cred_is_what_rpcsec_gss_signs() -> None:
    call = CallMessage(1, 2, 3, 4, OpaqueAuth(6, b"abcdef"), OpaqueAuth(6, b"mic"), b"args")
    encoded = call.encode()
    decoded = decode_message(encoded)
    assert isinstance(decoded, CallMessage)
    assert encoded[: decoded.header_len] == call.encode_header_through_cred()


@given(words, words, words, words, auths, auths, xdr_bytes)
@settings(max_examples=200, deadline=None)
def test_call_roundtrip(
    xid: int, prog: int, vers: int, proc: int, cred: OpaqueAuth, verf: OpaqueAuth, args: bytes
) -> None:
    call = CallMessage(xid, prog, vers, proc, cred, verf, args)
    assert decode_message(call.encode()) == call


@given(words, auths, st.sampled_from(list(AcceptStat)), xdr_bytes, st.tuples(words, words))
@settings(max_examples=200, deadline=None)
def test_accepted_roundtrip(
    xid: int, verf: OpaqueAuth, stat: AcceptStat, results: bytes, mismatch: tuple[int, int]
) -> None:
    reply = AcceptedReply(
        xid,
        verf,
        stat,
        results if stat == AcceptStat.SUCCESS else b"",
        mismatch if stat == AcceptStat.PROG_MISMATCH else None,
    )
    assert decode_message(reply.encode()) == reply


@given(words, st.tuples(words, words), st.sampled_from(list(AuthStat)))
def test_denied_roundtrip(xid: int, mismatch: tuple[int, int], stat: AuthStat) -> None:
    for reply in (
        DeniedReply(xid, RejectStat.RPC_MISMATCH, mismatch=mismatch),
        DeniedReply(xid, RejectStat.AUTH_ERROR, auth_stat=stat),
    ):
        assert decode_message(reply.encode()) == reply


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_any_bytes_decode_or_raise_xdr_error(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except XdrError:
        return
    assert isinstance(msg, CallMessage | AcceptedReply | DeniedReply)
    assert peek_xid(data) == msg.xid


def test_peek_xid_short() -> None:
    assert peek_xid(b"\0\0") is None


def test_error_texts() -> None:
    assert (
        str(RpcAcceptError(AcceptStat.PROG_MISMATCH, (2, 4)))
        == "PROG_MISMATCH (server supports versions 2..4)"
    )
    assert str(RpcMismatchError(3, 5)) == "RPC_MISMATCH (server supports RPC versions 3..5)"
    assert str(RpcAuthError(AuthStat.AUTH_TOOWEAK, "need krb5")) == "AUTH_TOOWEAK: need krb5"
    assert OpaqueAuth(0, b"") == NULL_AUTH
