"""How the conformance prober makes and destroys its contexts (rpclatch/conformance/probe.py),
against rpclatch's own server on loopback: the INIT credential names the service the context will
be used with, and every context is destroyed on the connection it was made on. Servers that lock a
context into its INIT service and bind it to its connection (gssrpc, libtirpc: docs/conformance.md)
need both; RFC 2203 §5.2.2 leaves the INIT service undefined, so any value is correct."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from rpclatch.conformance import probe
from rpclatch.conformance.probe import Connection, ProbeConfig, Reply, Session
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import GssProc, Service, decode_cred_fields
from rpclatch.rpc.aio import RpcServer
from rpclatch.rpc.messages import decode_call
from rpclatch.rpc.server import RpcDispatcher
from rpclatch.rpc.testprog import RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, add_test_program

#: (connection, gss_proc, service, seq_num) of every RPCSEC_GSS call the prober sent.
Sent = list[tuple[Connection, GssProc, Service, int]]


def _with_server(
    realm: ThrowawayRealm, monkeypatch: pytest.MonkeyPatch, body: Callable[[Session], Awaitable[None]]
) -> Sent:
    sent: Sent = []
    original = Connection.call

    async def recording_call(self: Connection, xid: int, message: bytes, wait: float) -> Reply:
        call = decode_call(message)
        _, gss_proc, seq, service, _ = decode_cred_fields(call.cred.body)
        sent.append((self, gss_proc, service, seq))
        return await original(self, xid, message, wait)

    monkeypatch.setattr(probe.Connection, "call", recording_call)

    async def run() -> None:
        dispatcher = RpcDispatcher([GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab))])
        add_test_program(dispatcher)
        server = RpcServer(dispatcher)
        port = await server.listen_tcp("127.0.0.1", 0)
        try:
            config = ProbeConfig(
                "127.0.0.1", port, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, target=realm.service_name
            )
            session = Session(config, GssapiProvider(ccache=realm.users["alice"].ccache))
            try:
                await body(session)
            finally:
                await session.close()
        finally:
            await server.close()

    asyncio.run(run())
    return sent


def test_init_names_the_service_the_context_is_used_with(
    realm: ThrowawayRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    async def body(s: Session) -> None:
        default = await s.context()
        privacy = await s.context(service=Service.PRIVACY)
        seen["services"] = (default.service, privacy.service)
        # DATA calls use the context's service unless told otherwise, and they work
        prepared = s.data_call(privacy)
        assert prepared.service is Service.PRIVACY
        assert s.reply_problem(privacy, prepared, await s.send(prepared)) is None
        assert await s.fresh_call(default) is None

    sent = _with_server(realm, monkeypatch, body)
    # the run's service (krb5i by default) for a plain context, the asked one otherwise
    assert seen["services"] == (Service.INTEGRITY, Service.PRIVACY)
    inits = [service for _, proc, service, _ in sent if proc is GssProc.RPCSEC_GSS_INIT]
    assert inits == [Service.INTEGRITY, Service.PRIVACY]


def test_close_destroys_each_context_on_its_own_connection(
    realm: ThrowawayRealm, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Connection] = []

    async def body(s: Session) -> None:
        first = await s.context()
        other = await s.new_connection()
        second = await s.context(conn=other)
        assert first.conn is await s.connection()
        assert second.conn is other
        made.extend([await s.connection(), other])

    sent = _with_server(realm, monkeypatch, body)
    destroys = [(conn, seq) for conn, proc, _, seq in sent if proc is GssProc.RPCSEC_GSS_DESTROY]
    assert [conn for conn, _ in destroys] == made
    inits = [conn for conn, proc, _, _ in sent if proc is GssProc.RPCSEC_GSS_INIT]
    assert inits == made
