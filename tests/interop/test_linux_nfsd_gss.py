"""RPCSEC_GSS (rpclatch.gss) against the Linux nfsd (gssproxy + MIT KDC in the guest).

Linux speaks RPCSEC_GSS v1 only: a v2 INIT is refused with AUTH_BADCRED and our client falls back
to a fresh v1 context (RFC 5403 §4; Linux answers AUTH_BADCRED where the RFC says
AUTH_REJECTEDCRED). Then DATA calls with each service (krb5 = none, krb5i = integrity, krb5p =
privacy), and the failures a user must be told clearly about: the KDC down, a service principal
the server has no key for, an unknown principal.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

import pytest

from interop.capture import read_fields
from interop.world import NFS_PORT, SERVER_ADDR, NfsdWorld
from rpclatch.gss.client import GssClientAuth, VersionPolicy
from rpclatch.gss.errors import GssError, VersionNotSupported
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.wire import Service
from rpclatch.rpc.aio import RpcStreamClient
from rpclatch.rpc.auth import ClientAuth
from rpclatch.rpc.errors import RpcConnectionClosed

pytestmark = [pytest.mark.uml, pytest.mark.root]

NFS_PROGRAM = 100003
RpcCall = Callable[[ClientAuth, int, bytes], Awaitable[bytes]]
SERVICES = {"krb5": Service.NONE, "krb5i": Service.INTEGRITY, "krb5p": Service.PRIVACY}


async def _with_client(fn: Callable[[RpcCall], Awaitable[None]]) -> None:
    client = await RpcStreamClient.connect_tcp(SERVER_ADDR, NFS_PORT, timeout=20)
    try:
        await fn(lambda auth, proc, args: client.call(NFS_PROGRAM, 4, proc, args, auth=auth))
    finally:
        await client.close()


def _fresh_ccache(guest: NfsdWorld, name: str) -> None:
    path = guest.run_dir / f"host-{name}.ccache"
    path.unlink(missing_ok=True)
    os.environ["KRB5CCNAME"] = f"FILE:{path}"


def test_v2_init_refused_with_badcred_then_v1_context(
    nfsd_guest: NfsdWorld, caplog: pytest.LogCaptureFixture
) -> None:
    auth = GssClientAuth(
        GssapiProvider(), nfsd_guest.service_name, service=Service.INTEGRITY, versions=VersionPolicy.PREFER_V2
    )

    async def body(rpc_call: RpcCall) -> None:
        await auth.establish(rpc_call)
        assert auth.version == 1 and auth.established
        assert await auth.call(rpc_call, 0, b"") == b""

    caplog.set_level(logging.INFO, logger="rpclatch.gss")
    with (
        nfsd_guest.capture("gss-v2-fallback", bpf="tcp port 2049", snaplen=0) as pcap,
        nfsd_guest.in_host_netns("alice"),
    ):
        asyncio.run(_with_client(body))
    auth.close()
    assert any("AUTH_BADCRED" in r.getMessage() for r in caplog.records)
    rows = read_fields(
        pcap,
        ("rpc.msgtyp", "rpc.authgss.version", "rpc.authgss.procedure", "rpc.state_auth", "rpc.authgss.major"),
        "rpc",
    )
    calls = [(v, p) for t, v, p, _, _ in rows if t == "0"]
    denied = [s for t, _, _, s, _ in rows if t == "1" and s]
    assert calls[:2] == [("2", "1"), ("1", "1")], rows  # v2 INIT, then v1 INIT
    assert denied[:1] == ["1"], rows  # AUTH_BADCRED
    assert any(t == "1" and m == "0" for t, _, _, _, m in rows), rows  # v1 INIT: GSS_S_COMPLETE
    assert ("1", "0") in calls  # a v1 DATA call


@pytest.mark.parametrize("sec", ["krb5", "krb5i", "krb5p"])
def test_null_data_call_with_each_service(nfsd_guest: NfsdWorld, sec: str) -> None:
    auth = GssClientAuth(
        GssapiProvider(), nfsd_guest.service_name, service=SERVICES[sec], versions=VersionPolicy.V1_ONLY
    )

    async def body(rpc_call: RpcCall) -> None:
        await auth.establish(rpc_call)
        for _ in range(3):
            assert await auth.call(rpc_call, 0, b"") == b""

    with (
        nfsd_guest.capture(f"gss-null-{sec}", bpf="tcp port 2049", snaplen=0) as pcap,
        nfsd_guest.in_host_netns("bob"),
    ):
        asyncio.run(_with_client(body))
    auth.close()
    rows = read_fields(
        pcap,
        ("rpc.authgss.procedure", "rpc.authgss.service", "rpc.authgss.seqnum"),
        "rpc.msgtyp == 0 && rpc.authgss.procedure == 0",
    )
    assert [(svc, seq) for _, svc, seq in rows] == [(str(int(SERVICES[sec])), str(n)) for n in (1, 2, 3)]


def test_require_v2_does_not_fall_back(nfsd_guest: NfsdWorld) -> None:
    auth = GssClientAuth(GssapiProvider(), nfsd_guest.service_name, versions=VersionPolicy.REQUIRE_V2)

    async def body(rpc_call: RpcCall) -> None:
        await auth.establish(rpc_call)

    with nfsd_guest.in_host_netns("alice"), pytest.raises(VersionNotSupported) as info:
        asyncio.run(_with_client(body))
    assert "AUTH_BADCRED" in str(info.value)
    assert auth.version is None


def test_unknown_service_principal_is_a_local_gss_error(nfsd_guest: NfsdWorld) -> None:
    auth = GssClientAuth(
        GssapiProvider(), f"nfs@nosuchhost.{nfsd_guest.config.domain}", versions=VersionPolicy.V1_ONLY
    )

    async def body(rpc_call: RpcCall) -> None:
        await auth.establish(rpc_call)

    with nfsd_guest.in_host_netns("alice"), pytest.raises(GssError) as info:
        asyncio.run(_with_client(body))
    assert "not found" in str(info.value).lower(), str(info.value)


def test_service_principal_without_server_key_fails_cleanly(nfsd_guest: NfsdWorld) -> None:
    # nfs/wrong.rpclatch.test exists in the KDC but not in the server's keytab
    auth = GssClientAuth(
        GssapiProvider(), f"nfs@wrong.{nfsd_guest.config.domain}", versions=VersionPolicy.V1_ONLY
    )

    async def body(rpc_call: RpcCall) -> None:
        await asyncio.wait_for(auth.establish(rpc_call), 60)

    # Linux (gssproxy cannot accept the token) answers nothing and closes the connection
    with nfsd_guest.in_host_netns("alice"), pytest.raises(RpcConnectionClosed):
        asyncio.run(_with_client(body))
    assert not auth.established


def test_kdc_stopped_is_a_clear_error(nfsd_guest: NfsdWorld) -> None:
    nfsd_guest.stop_kdc()
    try:
        auth = GssClientAuth(GssapiProvider(), nfsd_guest.service_name, versions=VersionPolicy.V1_ONLY)

        async def body(rpc_call: RpcCall) -> None:
            await auth.establish(rpc_call)

        with nfsd_guest.in_host_netns("bob"), pytest.raises(GssError) as info:
            _fresh_ccache(nfsd_guest, "bob-nokdc")
            asyncio.run(_with_client(body))
        assert "kdc" in str(info.value).lower(), str(info.value)
    finally:
        nfsd_guest.start_kdc()
