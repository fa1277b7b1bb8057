"""The NFS connection hook answers ``--sec auto`` from the policy table."""

from __future__ import annotations

import asyncio

from rpclatch.connect import ConnectPolicy, FallbackService
from rpclatch.connect.nfs import NO_KERNEL_BACKEND, connection_security
from rpclatch.nfs4.security import SecFlavor


def test_auto_prefers_the_configured_gss_protection_and_says_why() -> None:
    sec = asyncio.run(connection_security("192.0.2.20", 2049, "auto"))
    assert sec.allowed == (SecFlavor.KRB5P, SecFlavor.KRB5I)
    assert sec.prefer_allowed_order  # the policy's order wins over the server's SECINFO order
    assert sec.sock is None and sec.channel is None
    assert sec.record["latched"] is False and sec.record["protection_error"] == NO_KERNEL_BACKEND
    assert sec.record["gss_service"] == "krb5p" and "BYPASS" in sec.record["reason"]


def test_auto_with_integrity_configured() -> None:
    pol = ConnectPolicy(fallback=FallbackService.INTEGRITY)
    sec = asyncio.run(connection_security("192.0.2.20", 2049, "auto", pol))
    assert sec.allowed == (SecFlavor.KRB5I, SecFlavor.KRB5P) and sec.prefer_allowed_order


def test_explicit_sec_passes_through() -> None:
    for flavor in SecFlavor:
        sec = asyncio.run(connection_security("192.0.2.20", 2049, flavor.value))
        assert sec.allowed == (flavor,)
