"""AUTH_NONE and AUTH_SYS (RFC 5531 §10 and appendix A)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpclatch.rpc.auth import AuthAccept, AuthDeny, ConnectionInfo
from rpclatch.rpc.auth_sys import (
    AuthNoneClient,
    AuthNoneServer,
    AuthSysClient,
    AuthSysParms,
    AuthSysServer,
    parse_sys_principal,
    sys_principal,
)
from rpclatch.rpc.errors import AuthVerifierError
from rpclatch.rpc.messages import NULL_AUTH, AcceptedReply, AuthFlavor, AuthStat, CallMessage, OpaqueAuth
from rpclatch.xdr import XdrError

CONN = ConnectionInfo(1, ("127.0.0.1", 1000), "tcp")

# stamp 0x12345678, machinename "host", uid 1000, gid 100, gids <100, 200> (RFC 5531 appendix A).
AUTH_SYS_HEX = "1234567800000004686f7374000003e8000000640000000200000064000000c8"


def test_golden_authsys_parms() -> None:
    parms = AuthSysParms(0x12345678, "host", 1000, 100, (100, 200))
    assert parms.encode().hex() == AUTH_SYS_HEX
    assert AuthSysParms.decode(bytes.fromhex(AUTH_SYS_HEX)) == parms


def test_machinename_padding_and_limits() -> None:
    parms = AuthSysParms(1, "abcde", 0, 0)
    enc = parms.encode()
    assert len(enc) == 4 + 4 + 8 + 4 + 4 + 4
    assert AuthSysParms.decode(enc) == parms
    with pytest.raises(XdrError):
        AuthSysParms(1, "x" * 256, 0, 0).encode()
    with pytest.raises(XdrError):
        AuthSysParms(1, "h", 0, 0, tuple(range(17))).encode()
    with pytest.raises(XdrError):
        AuthSysParms.decode(enc + b"\0\0\0\0")  # trailing bytes
    too_many = bytes.fromhex("0000000100000000000000000000000000000011") + bytes(68)
    with pytest.raises(XdrError):
        AuthSysParms.decode(too_many)


@given(st.binary(max_size=400))
@settings(max_examples=500, deadline=None)
def test_any_credential_decodes_or_raises_xdr_error(data: bytes) -> None:
    try:
        parms = AuthSysParms.decode(data)
    except XdrError:
        return
    assert len(parms.gids) <= 16
    assert len(parms.machinename.encode()) <= 255
    assert parms.encode() == data


@given(
    st.integers(0, 2**32 - 1),
    st.text(max_size=60),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.lists(st.integers(0, 2**32 - 1), max_size=16),
)
@settings(max_examples=200, deadline=None)
def test_roundtrip(stamp: int, name: str, uid: int, gid: int, gids: list[int]) -> None:
    parms = AuthSysParms(stamp, name, uid, gid, tuple(gids))
    assert AuthSysParms.decode(parms.encode()) == parms


def test_client_flavors_build_calls() -> None:
    none = AuthNoneClient().prepare_call(1, 2, 3, 4, b"args")
    assert none.message == CallMessage(1, 2, 3, 4, NULL_AUTH, NULL_AUTH, b"args")
    sysc = AuthSysClient(AuthSysParms(0, "h", 5, 6))
    msg = sysc.prepare_call(1, 2, 3, 4, b"").message
    assert msg.cred.flavor == AuthFlavor.AUTH_SYS and msg.verf == NULL_AUTH
    assert AuthSysParms.decode(msg.cred.body).uid == 5


def test_for_current_process() -> None:
    import os

    auth = AuthSysClient.for_current_process()
    assert auth.parms.uid == os.getuid() and auth.parms.gid == os.getgid()
    assert len(auth.parms.gids) <= 16


def test_client_reply_verifier_checks() -> None:
    auth = AuthNoneClient()
    prepared = auth.prepare_call(1, 2, 3, 4, b"")
    assert auth.accept_reply(prepared, AcceptedReply(1, results=b"r")) == b"r"
    assert auth.accept_reply(prepared, AcceptedReply(1, OpaqueAuth(AuthFlavor.AUTH_SHORT, b"s"))) == b""
    with pytest.raises(AuthVerifierError):
        auth.accept_reply(prepared, AcceptedReply(1, OpaqueAuth(AuthFlavor.RPCSEC_GSS, b"x")))
    assert auth.on_auth_error(prepared, AuthStat.AUTH_BADCRED) is False


def test_server_none() -> None:
    server = AuthNoneServer()
    ok = server.check_call(CallMessage(1, 2, 3, 4, args=b"a"), CONN, 0.0)
    assert isinstance(ok, AuthAccept) and ok.args == b"a" and ok.principal is None
    assert ok.seal(b"res") == (NULL_AUTH, b"res")
    bad = server.check_call(CallMessage(1, 2, 3, 4, OpaqueAuth(0, b"junk")), CONN, 0.0)
    assert isinstance(bad, AuthDeny) and bad.stat == AuthStat.AUTH_BADCRED


def test_server_sys() -> None:
    server = AuthSysServer()
    parms = AuthSysParms(0, "client", 1000, 100, (4, 5))
    call = CallMessage(1, 2, 3, 4, OpaqueAuth(AuthFlavor.AUTH_SYS, parms.encode()), args=b"x")
    ok = server.check_call(call, CONN, 0.0)
    assert isinstance(ok, AuthAccept) and ok.principal == "sys:1000:100"
    assert parse_sys_principal(ok.principal) == (1000, 100)
    assert AuthSysServer.parse(call) == parms
    garbage = server.check_call(CallMessage(1, 2, 3, 4, OpaqueAuth(AuthFlavor.AUTH_SYS, b"\0\0")), CONN, 0.0)
    assert isinstance(garbage, AuthDeny) and garbage.stat == AuthStat.AUTH_BADCRED
    badverf = CallMessage(1, 2, 3, 4, OpaqueAuth(AuthFlavor.AUTH_SYS, parms.encode()), OpaqueAuth(6, b"v"))
    denied = server.check_call(badverf, CONN, 0.0)
    assert isinstance(denied, AuthDeny) and denied.stat == AuthStat.AUTH_BADVERF


def test_principal_helpers() -> None:
    assert sys_principal(AuthSysParms(0, "", 1, 2)) == "sys:1:2"
    assert parse_sys_principal("krb5:alice") is None
    assert parse_sys_principal("sys:a:2") is None
