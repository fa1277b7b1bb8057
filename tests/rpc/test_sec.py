"""--sec name registry (rpclatch.rpc.sec)."""

from __future__ import annotations

import pytest

from rpclatch.rpc import sec
from rpclatch.rpc.auth_sys import AuthNoneClient, AuthNoneServer, AuthSysClient, AuthSysServer


def test_builtin_names() -> None:
    names = sec.sec_names()
    assert names[:2] == ["none", "sys"]
    assert isinstance(sec.client_auth_for_sec("none"), AuthNoneClient)
    assert isinstance(sec.client_auth_for_sec("sys"), AuthSysClient)


def test_server_list_deduplicates_by_flavor() -> None:
    auths = sec.server_auths_for_sec(["sys", "none", "sys"])
    assert [type(a) for a in auths] == [AuthSysServer, AuthNoneServer]


def test_unknown_name() -> None:
    with pytest.raises(sec.UnknownSec, match="unknown security flavor 'nope'"):
        sec.client_auth_for_sec("nope")


def test_register_extension() -> None:
    choice = sec.SecChoice(
        "test-only", "for this test", lambda o: AuthNoneClient(), lambda o: [AuthNoneServer()]
    )
    sec.register_sec(choice)
    try:
        assert "test-only" in sec.sec_names()
        assert sec.get_sec("test-only") is choice
    finally:
        sec._REGISTRY.pop("test-only")
