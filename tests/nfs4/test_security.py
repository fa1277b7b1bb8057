"""Flavor policy: --sec values, SECINFO preference, advice in errors (RFC 7530 §16.31)."""

from __future__ import annotations

import asyncio

import pytest

from rpclatch.gss.wire import Service
from rpclatch.nfs4.const import rpc_gss_svc_t
from rpclatch.nfs4.errors import Nfs4SecurityError
from rpclatch.nfs4.security import (
    AUTO_ORDER,
    SecFlavor,
    allowed_flavors,
    choose_from_secinfo,
    default_connection_security,
)
from rpclatch.nfs4.types import rpcsec_gss_info, secinfo4
from rpclatch.rpc.messages import AuthFlavor

SYS = secinfo4(AuthFlavor.AUTH_SYS)
KRB5P = SecFlavor.KRB5P.secinfo()
KRB5I = SecFlavor.KRB5I.secinfo()
OTHER_GSS = secinfo4(
    AuthFlavor.RPCSEC_GSS, rpcsec_gss_info(b"\x2b\x06\x01", 0, rpc_gss_svc_t.RPC_GSS_SVC_NONE)
)


def test_flavor_secinfo_round_trip() -> None:
    for f in SecFlavor:
        assert SecFlavor.from_secinfo(f.secinfo()) is f
    assert SecFlavor.from_secinfo(OTHER_GSS) is None
    assert SecFlavor.from_secinfo(secinfo4(AuthFlavor.AUTH_NONE)) is None
    assert KRB5P.flavor_info is not None and KRB5P.flavor_info.service == rpc_gss_svc_t.RPC_GSS_SVC_PRIVACY


def test_kerberos_flavors_are_the_gss_services() -> None:
    """krb5 / krb5i / krb5p are RPCSEC_GSS none / integrity / privacy (RFC 7530 §3.2.1), named by
    rpclatch.gss.wire.Service; the secinfo4 entry carries the same number (RFC 7531 rpc_gss_svc_t)."""
    assert SecFlavor.SYS.service is None and SecFlavor.SYS.gss_service is None
    assert [(f.service, f.value) for f in SecFlavor if f.is_gss] == [
        (Service.NONE, "krb5"),
        (Service.INTEGRITY, "krb5i"),
        (Service.PRIVACY, "krb5p"),
    ]
    for f in SecFlavor:
        info = f.secinfo().flavor_info
        if f.service is None:
            assert info is None
        else:
            assert info is not None and int(info.service) == int(f.service)
            assert f.secinfo().describe() == f.service.sec_name


def test_allowed_flavors() -> None:
    assert allowed_flavors("auto") == AUTO_ORDER
    assert allowed_flavors("krb5i") == (SecFlavor.KRB5I,)
    with pytest.raises(ValueError, match="unknown security flavor"):
        allowed_flavors("krb6")


def test_auto_takes_the_servers_first_supported_choice() -> None:
    assert choose_from_secinfo([OTHER_GSS, SYS, KRB5P], AUTO_ORDER) is SecFlavor.SYS
    assert choose_from_secinfo([KRB5I, SYS], AUTO_ORDER) is SecFlavor.KRB5I


def test_forbidden_flavor_gives_advice() -> None:
    with pytest.raises(Nfs4SecurityError) as ei:
        choose_from_secinfo([KRB5P], (SecFlavor.SYS,), path="/secure", sec="sys")
    assert str(ei.value) == "server requires krb5p for /secure; rerun with --sec krb5p or --sec auto"
    assert ei.value.required == ("krb5p",)


def test_nothing_supported() -> None:
    with pytest.raises(Nfs4SecurityError, match="none of which rpclatch supports"):
        choose_from_secinfo([OTHER_GSS, secinfo4(AuthFlavor.AUTH_NONE)], AUTO_ORDER, path="/x")


def test_default_connection_hook_is_plain_tcp() -> None:
    cs = asyncio.run(default_connection_security("server", 2049, "krb5p"))
    assert cs.sock is None and cs.channel is None and cs.allowed == (SecFlavor.KRB5P,)


def test_prefer_allowed_order() -> None:
    offered = [SYS, KRB5I, KRB5P]
    assert choose_from_secinfo(offered, (SecFlavor.KRB5P, SecFlavor.KRB5I)) is SecFlavor.KRB5I
    assert (
        choose_from_secinfo(offered, (SecFlavor.KRB5P, SecFlavor.KRB5I), prefer_allowed_order=True)
        is SecFlavor.KRB5P
    )
