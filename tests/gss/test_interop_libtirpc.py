"""rpclatch's RPCSEC_GSS client against libtirpc's RPCSEC_GSS v1 acceptor (``svcauth_gss``).

The server is ``tirpc_gss_server.c`` (next to this file), built with gcc against Debian's
libtirpc and run on 127.0.0.1 with the realm's keytab; it serves rpclatch's test program (NULL and
an opaque<> ECHO) and logs, for every call, the service in the call's credential and the service
libtirpc applies to the context (``rpc_gss_getcred``). Each test runs the client over TCP with
krb5, krb5i or krb5p: NULL, ECHO of 1 KiB and 64 KiB, DESTROY.

What libtirpc does that rpclatch has to live with (docs/interop.md has the whole list):

* It locks a context into the service named in the INIT credential: every later reply of the
  context is protected with that service, whatever the DATA credential says. RFC 2203 §5.2.2
  says the INIT service field is undefined and ignored by the server, and §5.3 lets a client
  change the service per request (a server may lock into the service of the *first data*
  message). A client that says ``rpc_gss_svc_none`` at INIT and then calls with krb5i/krb5p gets
  unprotected results back (rpclatch before commit 700dae3: "reply body does not check"). rpclatch
  now puts the service it will use into the INIT credential, as the C clients do; the server's
  log shows ``ctx_svc`` equal to the requested service.
* It answers a version 2 credential with AUTH_BADCRED where RFC 2203 §5.2.3.2 says
  AUTH_REJECTEDCRED (Linux does the same); rpclatch's PREFER_V2 policy takes either as "no v2"
  and creates a fresh v1 context (RFC 5403 §4).
* Its sequence window is small (5 in Debian's 1.3.3) and the context belongs to the connection
  (the handle is 16 bytes copied from its GSS context structure).
* It builds the protected reply body in place in the TCP record buffer (XDR_SETPOS /
  XDR_INLINE on the send stream): a krb5i/krb5p reply larger than the transport's send buffer
  (``svc_vc_create`` sendsize; Debian's default is 64 KiB) goes out corrupted. The server here
  therefore uses a 256 KiB buffer; :func:`test_default_buffer_large_protected_reply` shows that
  with the default one rpclatch rejects such a reply instead of returning wrong bytes.
* On DESTROY it frees the context and then dispatches the call to NULLPROC, whose plain void
  reply carries a MIC(seq) verifier; rpclatch checks that verifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from rpclatch.gss.client import GssClientAuth, VersionPolicy, rpc_call_via
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.wire import RPCSEC_GSS_VERS_1, Service
from rpclatch.rpc.aio import RpcStreamClient
from rpclatch.rpc.auth import ClientAuth
from rpclatch.rpc.errors import AuthVerifierError
from rpclatch.rpc.messages import PROC_NULL
from rpclatch.rpc.testprog import (
    PROC_ECHO,
    RPCLATCH_TEST_PROG,
    RPCLATCH_TEST_VERS,
    decode_opaque,
    encode_opaque,
)

from .interop_peers import TirpcServer, build_tirpc_server, missing_tools, running_tirpc_server

pytestmark = pytest.mark.skipif(
    bool(missing_tools(tirpc=True)),
    reason=f"libtirpc interop needs gcc, libtirpc-dev and libkrb5-dev: missing "
    f"{', '.join(missing_tools(tirpc=True))}",
)

SERVICES = [Service.NONE, Service.INTEGRITY, Service.PRIVACY]
#: svc_vc_create buffer size of the server: big enough for a protected 64 KiB reply.
BIG_BUFFER = 256 * 1024


@pytest.fixture(scope="module")
def tirpc_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tirpc_server(tmp_path_factory.mktemp("tirpc-build"))


def _server(
    binary: Path, realm: ThrowawayRealm, workdir: Path, bufsize: int
) -> contextlib.AbstractContextManager[TirpcServer]:
    return running_tirpc_server(
        binary,
        realm,
        workdir,
        service=realm.service_name,
        prog=RPCLATCH_TEST_PROG,
        vers=RPCLATCH_TEST_VERS,
        bufsize=bufsize,
    )


@pytest.fixture()
def tirpc(tirpc_binary: Path, realm: ThrowawayRealm, tmp_path: Path) -> Iterator[TirpcServer]:
    with _server(tirpc_binary, realm, tmp_path, BIG_BUFFER) as server:
        yield server


def _auth(realm: ThrowawayRealm, service: Service) -> GssClientAuth:
    return GssClientAuth(
        GssapiProvider(ccache=realm.users["alice"].ccache),
        realm.service_name,
        service=service,
        versions=VersionPolicy.PREFER_V2,
    )


async def _echo(client: RpcStreamClient, auth: GssClientAuth, payload: bytes) -> bytes:
    results = await client.call(
        RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, encode_opaque(payload), auth=auth
    )
    return decode_opaque(results)


@pytest.mark.parametrize("service", SERVICES, ids=["krb5", "krb5i", "krb5p"])
def test_null_echo_destroy(realm: ThrowawayRealm, tirpc: TirpcServer, service: Service) -> None:
    """NULL, ECHO 1 KiB and 64 KiB and DESTROY on one context; the server saw the service."""
    payloads = [os.urandom(1024), os.urandom(64 * 1024)]

    async def run() -> None:
        auth = _auth(realm, service)
        async with await RpcStreamClient.connect_tcp("127.0.0.1", tirpc.port) as client:
            call = rpc_call_via(client, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS)
            await auth.establish(call)
            assert auth.version == RPCSEC_GSS_VERS_1  # libtirpc refuses v2 (AUTH_BADCRED)
            assert await client.call(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_NULL, auth=auth) == b""
            for payload in payloads:
                assert await _echo(client, auth, payload) == payload
            await auth.destroy(call)
            assert not auth.established

    asyncio.run(run())
    lines = tirpc.call_lines()
    svc = str(int(service))
    principal = realm.users["alice"].principal
    assert [(d["kind"], d["proc"], d.get("len")) for d in lines] == [
        ("CALL", str(PROC_NULL), "-1"),
        ("CALL", str(PROC_ECHO), "1024"),
        ("CALL", str(PROC_ECHO), str(64 * 1024)),
        ("DESTROY", "0", None),
    ]
    for d in lines:
        assert d["cred_svc"] == svc, d
    for d in lines[:3]:
        # the service libtirpc recorded at INIT and applies to the whole context
        assert d["ctx_svc"] == svc, d
        assert d["principal"] == principal, d


@pytest.mark.parametrize("service", [Service.INTEGRITY, Service.PRIVACY], ids=["krb5i", "krb5p"])
def test_pipelined_calls_beyond_the_window(
    realm: ThrowawayRealm, tirpc: TirpcServer, service: Service
) -> None:
    """50 calls in flight at once against a sequence window of 5: on one connection they arrive
    in the order they were numbered, so none falls behind the window."""
    payloads = [os.urandom(512) for _ in range(50)]

    async def run() -> None:
        auth = _auth(realm, service)
        async with await RpcStreamClient.connect_tcp("127.0.0.1", tirpc.port) as client:
            call = rpc_call_via(client, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS)
            await auth.establish(call)
            assert auth.seq_window is not None and auth.seq_window < len(payloads)
            futures = [
                client.call_nowait(
                    RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, encode_opaque(p), auth=auth
                )
                for p in payloads
            ]
            results = await asyncio.gather(*futures)
            assert [decode_opaque(r) for r in results] == payloads
            await auth.destroy(call)

    asyncio.run(run())
    assert len([d for d in tirpc.call_lines() if d["kind"] == "CALL"]) == len(payloads)


def test_every_service_on_one_connection(realm: ThrowawayRealm, tirpc: TirpcServer) -> None:
    """Three contexts, one per service, one after the other on the same connection (libtirpc
    keeps one context per connection; DESTROY frees it for the next INIT)."""
    payload = os.urandom(4096)

    async def run() -> None:
        async with await RpcStreamClient.connect_tcp("127.0.0.1", tirpc.port) as client:
            call = rpc_call_via(client, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS)
            for service in SERVICES:
                auth = _auth(realm, service)
                await auth.establish(call)
                for _ in range(8):  # more calls than the server's sequence window of 5
                    assert await _echo(client, auth, payload) == payload
                await auth.destroy(call)

    asyncio.run(run())
    ctx_svcs = [d["ctx_svc"] for d in tirpc.call_lines() if d["kind"] == "CALL"]
    assert ctx_svcs == ["1"] * 8 + ["2"] * 8 + ["3"] * 8


@pytest.mark.parametrize("service", [Service.INTEGRITY, Service.PRIVACY], ids=["krb5i", "krb5p"])
def test_default_buffer_large_protected_reply(
    tirpc_binary: Path, realm: ThrowawayRealm, tmp_path: Path, service: Service
) -> None:
    """With libtirpc's default svc_vc buffer, a protected 64 KiB reply is built past the end
    of the record buffer and goes out corrupted (libtirpc's xdr_rpc_gss_wrap_data seeks back in
    the send stream). rpclatch must never hand such a reply to the caller: it either gets the
    right bytes (a libtirpc that fixed this) or an AuthVerifierError; small calls still work."""
    big, small = os.urandom(64 * 1024), os.urandom(1024)
    outcome: list[str] = []

    async def run(port: int) -> None:
        auth = _auth(realm, service)
        async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as client:
            await auth.establish(rpc_call_via(client, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS))
            assert await _echo(client, auth, small) == small
            try:
                echoed = await _echo(client, auth, big)
            except AuthVerifierError:
                outcome.append("rejected")
            else:
                assert echoed == big
                outcome.append("echoed")

    with _server(tirpc_binary, realm, tmp_path, 0) as server:
        asyncio.run(run(server.port))
        # the request itself arrived whole: the server unwrapped all 64 KiB
        assert [d["len"] for d in server.call_lines()] == ["1024", str(64 * 1024)]
    assert outcome in (["rejected"], ["echoed"])


@pytest.mark.parametrize("service", SERVICES, ids=["krb5", "krb5i", "krb5p"])
def test_context_of_another_connection_is_refreshed(
    realm: ThrowawayRealm, tirpc: TirpcServer, service: Service
) -> None:
    """libtirpc keeps a context with the connection that created it: on a second connection the
    handle is unknown, the server answers RPCSEC_GSS_CREDPROBLEM (RFC 2203 §5.3.3.3) and the
    client creates a fresh context there and resends the call."""
    payload = os.urandom(2048)

    async def run() -> None:
        auth = _auth(realm, service)
        async with await RpcStreamClient.connect_tcp("127.0.0.1", tirpc.port) as first:
            await auth.establish(rpc_call_via(first, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS))
            assert await _echo(first, auth, payload) == payload
        async with await RpcStreamClient.connect_tcp("127.0.0.1", tirpc.port) as second:
            call = rpc_call_via(second, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS)
            sent: list[str] = []  # what went over the second connection, in order

            async def recording_call(flavor: ClientAuth, proc: int, args: bytes) -> bytes:
                sent.append("data" if flavor is auth else "control")
                return await call(flavor, proc, args)

            results = await auth.call(recording_call, PROC_ECHO, encode_opaque(payload))
            assert decode_opaque(results) == payload
            # the call, CREDPROBLEM, context creation (INIT) on this connection, the call again
            assert sent[0] == "data" and sent[-1] == "data" and "control" in sent[1:-1], sent
            await auth.destroy(call)

    asyncio.run(run())
    calls = [d for d in tirpc.call_lines() if d["kind"] == "CALL"]
    assert [(d["len"], d["ctx_svc"]) for d in calls] == [("2048", str(int(service)))] * 2
