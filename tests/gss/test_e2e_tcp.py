"""RPCSEC_GSS end to end over loopback TCP (and UDP): rpclatch's asyncio RPC client and server, a real KDC.

Every service (krb5, krb5i, krb5p, channel_prot over an in-memory channel), many pipelined calls,
concurrent clients, DESTROY, the v2 -> v1 fallback against a v1-only server, and refresh after the
server forgot a context.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Awaitable, Callable

import pytest

from rpclatch.gss.channel import InMemoryChannel
from rpclatch.gss.client import GssClientAuth, VersionPolicy, rpc_call_via
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import RPCSEC_GSS_VERS_1, RPCSEC_GSS_VERS_2, Service
from rpclatch.rpc.aio import RpcServer, RpcStreamClient
from rpclatch.rpc.auth import ConnectionInfo
from rpclatch.rpc.auth_sys import AuthNoneServer
from rpclatch.rpc.server import RpcDispatcher
from rpclatch.rpc.testprog import (
    PROC_ECHO,
    RPCLATCH_TEST_PROG,
    RPCLATCH_TEST_VERS,
    add_test_program,
    decode_opaque,
    encode_opaque,
)

ServerFactory = Callable[[], GssServerAuth]


async def with_server(
    gss: GssServerAuth,
    body: Callable[[int, collections.deque[InMemoryChannel]], Awaitable[None]],
) -> None:
    """Run ``body(port, channels)``; each accepted connection takes the next channel end from
    ``channels`` (if any) as its latched channel."""
    channels: collections.deque[InMemoryChannel] = collections.deque()

    def on_connection(info: ConnectionInfo, transport: object) -> None:
        info.channel = channels.popleft() if channels else None

    dispatcher = RpcDispatcher([AuthNoneServer(), gss])
    add_test_program(dispatcher)
    server = RpcServer(dispatcher, on_connection=on_connection)
    port = await server.listen_tcp("127.0.0.1", 0)
    try:
        await body(port, channels)
    finally:
        await server.close(grace=1.0)


def gss_server(realm: ThrowawayRealm, **kw: object) -> GssServerAuth:
    return GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab), **kw)  # type: ignore[arg-type]


def gss_client(
    realm: ThrowawayRealm, user: str, service: Service, versions: VersionPolicy = VersionPolicy.PREFER_V2
) -> GssClientAuth:
    return GssClientAuth(
        GssapiProvider(ccache=realm.users[user].ccache),
        realm.service_name,
        service=service,
        versions=versions,
    )


async def echo_many(client: RpcStreamClient, auth: GssClientAuth, n: int, size: int) -> None:
    payloads = [os.urandom(size) for _ in range(n)]
    futures = [
        client.call_nowait(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, encode_opaque(p), auth=auth)
        for p in payloads
    ]  # pipelined: all in flight at once
    results = await asyncio.gather(*futures)
    assert [decode_opaque(r) for r in results] == payloads


@pytest.mark.parametrize("service", [Service.NONE, Service.INTEGRITY, Service.PRIVACY])
def test_every_service_many_calls(realm: ThrowawayRealm, service: Service) -> None:
    gss = gss_server(realm)

    async def body(port: int, channels: collections.deque[InMemoryChannel]) -> None:
        auth = gss_client(realm, "alice", service)
        async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as client:
            call = rpc_call_via(client, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS)
            await auth.establish(call)
            assert auth.version == RPCSEC_GSS_VERS_2
            await echo_many(client, auth, 200, 1024)
            await echo_many(client, auth, 4, 256 * 1024)
            assert gss.context_count() == 1
            await auth.destroy(call)
            assert gss.context_count() == 0

    asyncio.run(with_server(gss, body))


def test_channel_prot_over_tcp_and_break(realm: ThrowawayRealm) -> None:
    gss = gss_server(realm)

    async def body(port: int, channels: collections.deque[InMemoryChannel]) -> None:
        cli_ch, srv_ch = InMemoryChannel.pair("x-test", os.urandom(32))
        channels.append(srv_ch)
        auth = gss_client(realm, "bob", Service.PRIVACY)
        async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as client:
            call = rpc_call_via(client, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS)
            await auth.establish(call)
            await auth.bind_channel(call, cli_ch)
            assert auth.effective_service() == Service.CHANNEL_PROT
            await echo_many(client, auth, 100, 1024)
            srv_ch.break_()  # both ends see it: the client goes back to privacy
            assert auth.effective_service() == Service.PRIVACY
            await echo_many(client, auth, 10, 1024)
        # A second connection has no channel: a bound handle may not use channel_prot there.
        cli2, srv2 = InMemoryChannel.pair("x-test", os.urandom(32))
        channels.append(srv2)
        async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as client2:
            call2 = rpc_call_via(client2, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS)
            await auth.bind_channel(call2, cli2)
            handle = auth.handle or b""
            assert gss.is_bound(handle)
        await asyncio.sleep(0.05)
        assert not gss.is_bound(handle)  # connection 2 closed: binding forgotten

    asyncio.run(with_server(gss, body))


def test_channel_prot_refused_on_unbound_connection_falls_back(realm: ThrowawayRealm) -> None:
    gss = gss_server(realm)

    async def body(port: int, channels: collections.deque[InMemoryChannel]) -> None:
        cli_ch, srv_ch = InMemoryChannel.pair("x-test", os.urandom(32))
        channels.append(srv_ch)
        auth = gss_client(realm, "bob", Service.INTEGRITY)
        async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as client:
            call = rpc_call_via(client, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS)
            await auth.establish(call)
            await auth.bind_channel(call, cli_ch)
            async with await RpcStreamClient.connect_tcp("127.0.0.1", port, timeout=10.0) as other:
                # Not the bound connection: channel_prot refused, each call resent once with
                # integrity (pipelined: all five are refused before the client hears of it).
                await echo_many(other, auth, 5, 100)
                assert auth.effective_service() == Service.INTEGRITY
                assert auth.bound_channel is None

    asyncio.run(with_server(gss, body))


def test_concurrent_clients(realm: ThrowawayRealm) -> None:
    gss = gss_server(realm)

    async def one(port: int, user: str, service: Service) -> None:
        auth = gss_client(realm, user, service)
        async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as client:
            call = rpc_call_via(client, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS)
            await auth.establish(call)
            for _ in range(5):
                await echo_many(client, auth, 20, 512)
            await auth.destroy(call)

    async def body(port: int, channels: collections.deque[InMemoryChannel]) -> None:
        services = [Service.NONE, Service.INTEGRITY, Service.PRIVACY]
        await asyncio.gather(*(one(port, ("alice", "bob")[i % 2], services[i % 3]) for i in range(8)))
        assert gss.context_count() == 0

    asyncio.run(with_server(gss, body))


def test_v1_fallback_and_refresh_over_tcp(realm: ThrowawayRealm) -> None:
    from rpclatch.rpc.messages import AuthStat

    v1_only = gss_server(
        realm, versions=(RPCSEC_GSS_VERS_1,), unsupported_version_stat=AuthStat.AUTH_BADCRED, max_contexts=1
    )

    async def body(port: int, channels: collections.deque[InMemoryChannel]) -> None:
        auth = gss_client(realm, "alice", Service.INTEGRITY)
        other = gss_client(realm, "bob", Service.INTEGRITY)
        async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as client:
            call = rpc_call_via(client, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS)
            await auth.establish(call)
            assert auth.version == RPCSEC_GSS_VERS_1
            await other.establish(call)  # evicts alice's context (table of one)
            args = encode_opaque(b"refreshed")
            assert decode_opaque(await auth.call(call, PROC_ECHO, args)) == b"refreshed"
            assert auth.version == RPCSEC_GSS_VERS_1

    asyncio.run(with_server(v1_only, body))


def test_every_service_over_udp(realm: ThrowawayRealm) -> None:
    from rpclatch.rpc.aio import RpcUdpClient

    gss = gss_server(realm)

    async def main() -> None:
        dispatcher = RpcDispatcher([gss])
        add_test_program(dispatcher)
        server = RpcServer(dispatcher)
        port = await server.listen_udp("127.0.0.1", 0)
        try:
            for service in (Service.NONE, Service.INTEGRITY, Service.PRIVACY):
                async with await RpcUdpClient.connect("127.0.0.1", port, timeout=10.0) as client:
                    auth = gss_client(realm, "alice", service)
                    call = rpc_call_via(client, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS)
                    await auth.establish(call)
                    for i in range(20):
                        payload = os.urandom(100 * i)
                        res = await client.call(
                            RPCLATCH_TEST_PROG,
                            RPCLATCH_TEST_VERS,
                            PROC_ECHO,
                            encode_opaque(payload),
                            auth=auth,
                        )
                        assert decode_opaque(res) == payload
                    await auth.destroy(call)
            assert gss.context_count() == 0
        finally:
            await server.close(grace=1.0)

    asyncio.run(main())


class LossyUdpRelay(asyncio.DatagramProtocol):
    """A real UDP hop between client and server (loopback) that loses the first ``drop_replies``
    reply datagrams: the server executes the call, its answer never arrives."""

    def __init__(self, server_port: int, drop_replies: int) -> None:
        self.server_port = server_port
        self.drop_replies = drop_replies
        self.client_addr: object = None
        self.calls_forwarded = 0
        self.replies_dropped = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.upstream: asyncio.DatagramTransport | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        relay = self

        class Upstream(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                if relay.replies_dropped < relay.drop_replies:
                    relay.replies_dropped += 1
                    return
                assert relay.transport is not None
                relay.transport.sendto(data, relay.client_addr)

        up, _ = await loop.create_datagram_endpoint(Upstream, remote_addr=("127.0.0.1", self.server_port))
        self.upstream = up  # type: ignore[assignment]
        down, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        self.transport = down  # type: ignore[assignment]
        return int(down.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.client_addr = addr
        self.calls_forwarded += 1
        assert self.upstream is not None
        self.upstream.sendto(data)

    def close(self) -> None:
        for t in (self.transport, self.upstream):
            if t is not None:
                t.close()


@pytest.mark.parametrize("service", [Service.NONE, Service.INTEGRITY, Service.PRIVACY])
def test_udp_call_survives_a_lost_reply(realm: ThrowawayRealm, service: Service) -> None:
    """RFC 2203 §5.3.3.1: the retransmission carries a new seq_num, so the server (which executed
    the first transmission and saw its seq_num) does not drop it as a replay."""
    from rpclatch.rpc.aio import RpcUdpClient

    gss = gss_server(realm)

    async def main() -> None:
        dispatcher = RpcDispatcher([gss])
        add_test_program(dispatcher)
        server = RpcServer(dispatcher)
        port = await server.listen_udp("127.0.0.1", 0)
        relay = LossyUdpRelay(port, drop_replies=0)
        relay_port = await relay.start()
        try:
            async with await RpcUdpClient.connect(
                "127.0.0.1", relay_port, timeout=5.0, retransmit_initial=0.2, retransmit_max=0.4
            ) as client:
                auth = gss_client(realm, "alice", service)
                call = rpc_call_via(client, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS)
                await auth.establish(call)
                for _ in range(2):
                    relay.drop_replies = relay.replies_dropped + 1  # lose the next reply
                    before = relay.calls_forwarded
                    payload = os.urandom(300)
                    res = await client.call(
                        RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, encode_opaque(payload), auth=auth
                    )
                    assert decode_opaque(res) == payload
                    assert relay.calls_forwarded - before >= 2  # it took a retransmission
                await auth.destroy(call)
            assert gss.context_count() == 0
        finally:
            relay.close()
            await server.close(grace=1.0)

    asyncio.run(main())


def test_concurrent_calls_share_one_refresh(realm: ThrowawayRealm) -> None:
    gss = gss_server(realm)

    async def body(port: int, channels: collections.deque[InMemoryChannel]) -> None:
        auth = gss_client(realm, "alice", Service.INTEGRITY)
        async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as client:
            call = rpc_call_via(client, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS)
            await auth.establish(call)
            assert gss.drop_all_contexts() == 1  # the server forgets it (as after a restart)
            results = await asyncio.gather(
                *(auth.call(call, PROC_ECHO, encode_opaque(b"%d" % i)) for i in range(10))
            )
            assert [decode_opaque(r) for r in results] == [b"%d" % i for i in range(10)]
            assert gss.context_count() == 1  # one refresh, not ten

    asyncio.run(with_server(gss, body))
