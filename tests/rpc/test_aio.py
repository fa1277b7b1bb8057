"""asyncio shells over real loopback sockets: TCP and UDP clients and servers, timeouts,
retransmission, connection limits, idle timeout, graceful shutdown, the on_connection hook."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from rpclatch.rpc import testprog as tp
from rpclatch.rpc.aio import RpcServer, RpcStreamClient, RpcUdpClient
from rpclatch.rpc.auth import AuthAccept, AuthResult, ConnectionInfo, ServerAuth
from rpclatch.rpc.auth_sys import AuthNoneServer, AuthSysClient, AuthSysServer
from rpclatch.rpc.errors import (
    RpcAcceptError,
    RpcAuthError,
    RpcConnectionClosed,
    RpcLocalError,
    RpcTimeout,
)
from rpclatch.rpc.messages import NULL_AUTH, AcceptedReply, AcceptStat, CallMessage, decode_message
from rpclatch.rpc.record import RecordReassembler, encode_record
from rpclatch.rpc.server import CallContext, RpcDispatcher

SLOW_PROG = 0x20000A12


def make_dispatcher(extra: ServerAuth | None = None) -> RpcDispatcher:
    d = RpcDispatcher([AuthNoneServer(), AuthSysServer()] + ([extra] if extra else []))
    tp.add_test_program(d)

    async def slow(args: bytes, ctx: CallContext) -> bytes:
        await asyncio.sleep(int.from_bytes(args[:4], "big") / 1000)
        return args

    def channel_of(args: bytes, ctx: CallContext) -> bytes:
        return tp.encode_opaque(str(ctx.conn.channel).encode())

    def principal(args: bytes, ctx: CallContext) -> bytes:
        return tp.encode_opaque((ctx.principal or "").encode())

    d.add_program(SLOW_PROG, 1, {1: slow, 2: channel_of, 3: principal})
    return d


def ms(n: int) -> bytes:
    return n.to_bytes(4, "big")


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 60))


def test_tcp_calls() -> None:
    async def body() -> None:
        async with RpcServer(make_dispatcher()) as server:
            port = await server.listen_tcp()
            async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as c:
                await tp.null(c)
                assert await tp.echo(c, b"hello") == b"hello"
                assert await tp.sink(c, b"x" * 5000) == 5000
                assert await tp.source(c, 3) == b"\0\0\0"
                big = bytes(range(256)) * 4096  # 1 MiB, many reads
                assert await tp.echo(c, big) == big
                with pytest.raises(RpcAcceptError) as info:
                    await c.call(tp.RPCLATCH_TEST_PROG, 7, 0)
                assert info.value.mismatch == (1, 1)
                with pytest.raises(RpcAcceptError) as info:
                    await c.call(tp.RPCLATCH_TEST_PROG, 1, tp.PROC_SOURCE, ms(0xFFFFFFFF))
                assert info.value.stat == AcceptStat.GARBAGE_ARGS
                assert c.peername[1] == port

    run(body)


def test_tcp_pipelining_out_of_order_replies() -> None:
    async def body() -> None:
        async with RpcServer(make_dispatcher()) as server:
            port = await server.listen_tcp()
            async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as c:
                delays = [50, 10, 30, 0, 20] * 20
                results = await asyncio.gather(*(c.call(SLOW_PROG, 1, 1, ms(d)) for d in delays))
                assert results == [ms(d) for d in delays]
                echoes = await asyncio.gather(*(tp.echo(c, bytes([i]) * i) for i in range(200)))
                assert echoes == [bytes([i]) * i for i in range(200)]

    run(body)


def test_tcp_timeout_and_auth_sys() -> None:
    async def body() -> None:
        async with RpcServer(make_dispatcher()) as server:
            port = await server.listen_tcp()
            auth = AuthSysClient.for_current_process()
            async with await RpcStreamClient.connect_tcp("127.0.0.1", port, auth=auth) as c:
                with pytest.raises(RpcTimeout):
                    await c.call(SLOW_PROG, 1, 1, ms(2000), timeout=0.1)
                who = tp.decode_opaque(await c.call(SLOW_PROG, 1, 3))
                assert who.decode().startswith("sys:")
                # The connection stays usable after a timeout.
                assert await tp.echo(c, b"after") == b"after"

    run(body)


def test_tcp_connect_refused() -> None:
    async def body() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # bound, not listening: connections are refused
            with pytest.raises(ConnectionRefusedError):
                await RpcStreamClient.connect_tcp("127.0.0.1", port)

    run(body)


def test_udp_calls_and_refused() -> None:
    async def body() -> None:
        async with RpcServer(make_dispatcher()) as server:
            port = await server.listen_udp()
            async with await RpcUdpClient.connect("127.0.0.1", port) as c:
                await tp.null(c)
                assert await tp.echo(c, b"datagram") == b"datagram"
                results = await asyncio.gather(*(c.call(SLOW_PROG, 1, 1, ms(i)) for i in range(20)))
                assert results == [ms(i) for i in range(20)]
                assert c.peername[1] == port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        async with await RpcUdpClient.connect("127.0.0.1", dead, timeout=5) as c:
            with pytest.raises(RpcConnectionClosed, match="refused"):
                await tp.null(c)

    run(body)


class _DropFirst(asyncio.DatagramProtocol):
    """A UDP peer that ignores the first copy of each xid and answers the second."""

    def __init__(self) -> None:
        self.seen: dict[bytes, int] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        xid = data[:4]
        self.seen[xid] = self.seen.get(xid, 0) + 1
        if self.seen[xid] == 2 and self.transport is not None:
            reply = xid + b"\0\0\0\1" + b"\0" * 16
            self.transport.sendto(reply, addr)


def test_udp_retransmits() -> None:
    async def body() -> None:
        loop = asyncio.get_running_loop()
        transport, peer = await loop.create_datagram_endpoint(_DropFirst, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        try:
            async with await RpcUdpClient.connect("127.0.0.1", port, retransmit_initial=0.05) as c:
                assert await c.call(1, 2, 3) == b""
                assert list(peer.seen.values()) == [2]
            async with await RpcUdpClient.connect(
                "127.0.0.1", port, timeout=0.3, retransmit_initial=0.05, retransmit_max=0.1
            ) as c:
                # The peer now answers nothing: retransmissions run until the deadline.
                peer.datagram_received = lambda data, addr: None  # type: ignore[method-assign]
                with pytest.raises(RpcTimeout):
                    await c.call(1, 2, 3)
        finally:
            transport.close()

    run(body)


class ChannelAuth(ServerAuth):
    """Accepts AUTH_NONE; records the connections it was told were closed."""

    flavor = 0

    def __init__(self) -> None:
        self.closed: list[ConnectionInfo] = []

    def check_call(self, call: CallMessage, conn: ConnectionInfo, now: float) -> AuthResult:
        return AuthAccept(call.args, None, lambda r: (NULL_AUTH, r))

    def connection_closed(self, conn: ConnectionInfo) -> None:
        self.closed.append(conn)


def test_on_connection_hook_sets_channel_and_close_is_reported() -> None:
    async def body() -> None:
        auth = ChannelAuth()
        seen: list[ConnectionInfo] = []
        closed: list[ConnectionInfo] = []

        def on_connection(info: ConnectionInfo, transport: asyncio.BaseTransport) -> None:
            info.channel = f"latched-{transport.get_extra_info('peername')[1]}"
            seen.append(info)

        server = RpcServer(
            make_dispatcher(auth), on_connection=on_connection, on_connection_closed=closed.append
        )
        port = await server.listen_tcp()
        async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as c:
            local_port = c.transport.get_extra_info("sockname")[1]
            got = tp.decode_opaque(await c.call(SLOW_PROG, 1, 2))
            assert got == f"latched-{local_port}".encode()
            assert [i.channel for i in server.connections] == [got.decode()]
        for _ in range(100):
            if closed:
                break
            await asyncio.sleep(0.01)
        assert closed == seen and auth.closed == seen
        await server.close()

    run(body)


def test_on_connection_failure_closes_connection() -> None:
    async def body() -> None:
        def refuse(info: ConnectionInfo, transport: asyncio.BaseTransport) -> None:
            raise RuntimeError("no latch")

        async with RpcServer(make_dispatcher(), on_connection=refuse) as server:
            port = await server.listen_tcp()
            async with await RpcStreamClient.connect_tcp("127.0.0.1", port, timeout=5) as c:
                with pytest.raises(RpcConnectionClosed):
                    await tp.null(c)

    run(body)


def test_connection_limit() -> None:
    async def body() -> None:
        async with RpcServer(make_dispatcher(), max_connections=2) as server:
            port = await server.listen_tcp()
            a = await RpcStreamClient.connect_tcp("127.0.0.1", port)
            b = await RpcStreamClient.connect_tcp("127.0.0.1", port)
            await tp.null(a)
            await tp.null(b)
            c = await RpcStreamClient.connect_tcp("127.0.0.1", port, timeout=5)
            with pytest.raises(RpcConnectionClosed):
                await tp.null(c)
            await a.close()
            for _ in range(100):
                if len(server.connections) < 2:
                    break
                await asyncio.sleep(0.01)
            d = await RpcStreamClient.connect_tcp("127.0.0.1", port)
            await tp.null(d)  # a slot was freed
            for client in (b, c, d):
                await client.close()

    run(body)


def test_idle_timeout_closes_connection() -> None:
    async def body() -> None:
        async with RpcServer(make_dispatcher(), idle_timeout=0.2) as server:
            port = await server.listen_tcp()
            c = await RpcStreamClient.connect_tcp("127.0.0.1", port)
            await tp.null(c)
            # A call running longer than the idle timeout is not cut off.
            assert await c.call(SLOW_PROG, 1, 1, ms(400)) == ms(400)
            await asyncio.wait_for(c._protocol.lost, 5)  # then the idle connection is closed
            assert c.closed
            await c.close()

    run(body)


def test_graceful_shutdown_answers_in_flight_calls() -> None:
    async def body() -> None:
        server = RpcServer(make_dispatcher())
        port = await server.listen_tcp()
        uport = await server.listen_udp()
        c = await RpcStreamClient.connect_tcp("127.0.0.1", port)
        u = await RpcUdpClient.connect("127.0.0.1", uport, retransmit_initial=5)
        pending = [c.call_nowait(SLOW_PROG, 1, 1, ms(200)) for _ in range(5)]
        upending = u.call_nowait(SLOW_PROG, 1, 1, ms(200))
        await asyncio.sleep(0.05)
        await server.close(grace=5)
        assert await asyncio.gather(*pending) == [ms(200)] * 5
        assert await upending == ms(200)
        with pytest.raises(ConnectionRefusedError):
            await RpcStreamClient.connect_tcp("127.0.0.1", port)
        await c.close()
        await u.close()

    run(body)


def test_graceful_shutdown_answers_calls_waiting_in_the_backlog() -> None:
    """Calls received but held back by output backpressure (the client is not reading yet) are
    answered too when the server shuts down gracefully; then the connection is closed."""
    calls = 40
    size = 1024 * 1024

    async def body() -> None:
        server = RpcServer(make_dispatcher(), idle_timeout=60)
        port = await server.listen_tcp()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                b"".join(
                    encode_record(
                        CallMessage(
                            i, tp.RPCLATCH_TEST_PROG, 1, tp.PROC_SOURCE, args=size.to_bytes(4, "big")
                        ).encode()
                    )
                    for i in range(calls)
                )
            )
            await writer.drain()
            for _ in range(250):  # until the server has read the calls (white-box: its backlog)
                await asyncio.sleep(0.02)
                [proto] = server._protocols
                assert proto.conn is not None
                if proto.conn.backlog >= calls - 10:
                    break
            assert proto.conn.backlog >= calls - 10  # most calls wait undispatched
            closing = asyncio.create_task(server.close(grace=30))
            await asyncio.sleep(0.1)  # the server is closing before the client reads anything
            rec = RecordReassembler(max_record=2 * size)
            xids: list[int] = []
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    break  # closed by the server once everything was answered
                for r in rec.feed(data):
                    msg = decode_message(r)
                    assert isinstance(msg, AcceptedReply) and len(msg.results) == size + 4
                    xids.append(msg.xid)
            assert xids == list(range(calls))
            await closing
        finally:
            writer.close()

    run(body)


def test_accept_socket_and_connect_with_socket() -> None:
    async def body() -> None:
        async with RpcServer(make_dispatcher()) as server:
            left, right = socket.socketpair()
            await server.accept_socket(left)
            async with await RpcStreamClient.connect_tcp("", 0, sock=right) as c:
                assert await tp.echo(c, b"pair") == b"pair"

    run(body)


def test_max_in_flight_backpressure() -> None:
    async def body() -> None:
        async with RpcServer(make_dispatcher(), max_in_flight=2) as server:
            port = await server.listen_tcp()
            async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as c:
                results = await asyncio.gather(*(c.call(SLOW_PROG, 1, 1, ms(20)) for _ in range(10)))
                assert results == [ms(20)] * 10

    run(body)


def test_call_on_closed_client() -> None:
    async def body() -> None:
        async with RpcServer(make_dispatcher()) as server:
            port = await server.listen_tcp()
            c = await RpcStreamClient.connect_tcp("127.0.0.1", port)
            await c.close()
            with pytest.raises(RpcConnectionClosed):
                await tp.null(c)

    run(body)


def test_auth_sys_rejected_when_server_only_takes_none() -> None:
    async def body() -> None:
        d = RpcDispatcher([AuthNoneServer()])
        tp.add_test_program(d)
        async with RpcServer(d) as server:
            port = await server.listen_tcp()
            async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as c:
                with pytest.raises(RpcAuthError, match="AUTH_BADCRED"):
                    await c.call(tp.RPCLATCH_TEST_PROG, 1, 0, auth=AuthSysClient.for_current_process())
                await tp.null(c)  # AUTH_NONE still works

    run(body)


def test_half_close_still_gets_replies() -> None:
    async def body() -> None:
        async with RpcServer(make_dispatcher()) as server:
            port = await server.listen_tcp()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            call = CallMessage(5, SLOW_PROG, 1, 1, args=ms(100)).encode()
            writer.write(encode_record(call))
            writer.write_eof()  # a one-shot client: send, half-close, read the reply
            data = await asyncio.wait_for(reader.read(), 10)  # read() returns at the server's close
            assert data.endswith(ms(100)) and data[4:8] == (5).to_bytes(4, "big")
            writer.close()

    run(body)


def test_large_pipelined_messages_through_partial_writes() -> None:
    """8 MiB records, three at once: the kernel takes part of each write, the rest is queued in
    the transport, later writes go behind it in order."""

    async def body() -> None:
        limit = 32 * 1024 * 1024
        async with RpcServer(make_dispatcher(), max_record=limit) as server:
            port = await server.listen_tcp()
            async with await RpcStreamClient.connect_tcp("127.0.0.1", port, max_record=limit) as c:
                blobs = [bytes([i]) * (8 * 1024 * 1024 + i) for i in range(3)]
                echoed = await asyncio.gather(*(tp.echo(c, b) for b in blobs), tp.echo(c, b"small"))
                assert echoed == [*blobs, b"small"]
                assert len(await tp.source(c, 5 * 1024 * 1024)) == 5 * 1024 * 1024

    run(body)


def test_udp_reply_too_large_for_a_datagram() -> None:
    async def body() -> None:
        async with RpcServer(make_dispatcher()) as server:
            port = await server.listen_udp()
            async with await RpcUdpClient.connect("127.0.0.1", port, timeout=10) as c:
                assert len(await tp.source(c, 60000)) == 60000
                with pytest.raises(RpcAcceptError) as info:
                    await tp.source(c, 70000)
                assert info.value.stat == AcceptStat.SYSTEM_ERR
                with pytest.raises(RpcLocalError, match="use TCP"):
                    await tp.echo(c, bytes(70000))

    run(body)


def test_listen_unix(tmp_path: Path) -> None:
    """A unix-domain stream listener: record-marked calls, transport "unix" with the peer's
    kernel credentials, a stale socket file replaced, the file removed on close."""
    import os

    path = str(tmp_path / "rpc.sock")
    seen: list[ConnectionInfo] = []

    async def body() -> None:
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(path)  # left behind by a crashed server
        stale.close()
        server = RpcServer(make_dispatcher(), on_connection=lambda info, _t: seen.append(info))
        assert await server.listen_unix(path, mode=0o600) == path
        assert server.unix_paths == [path] and (os.stat(path).st_mode & 0o777) == 0o600
        async with await RpcStreamClient.connect_unix(path) as c:
            assert await tp.echo(c, b"over a unix socket") == b"over a unix socket"
            big = bytes(range(256)) * 4096
            assert await tp.echo(c, big) == big
            pending = c.call_nowait(SLOW_PROG, 1, 1, ms(100))
            await asyncio.sleep(0.02)
            await server.close(grace=5)  # graceful: the call in flight is answered
            assert await pending == ms(100)
        assert not os.path.exists(path)

    run(body)
    [info] = seen
    assert info.transport == "unix" and info.peer is None
    assert info.attributes["peer_cred"] == (os.getpid(), os.getuid(), os.getgid())


def test_listen_unix_never_replaces_other_files(tmp_path: Path) -> None:
    path = tmp_path / "not-a-socket"
    path.write_text("precious")

    async def body() -> None:
        async with RpcServer(make_dispatcher()) as server:
            with pytest.raises(FileExistsError):
                await server.listen_unix(str(path))

    run(body)
    assert path.read_text() == "precious"


def test_listen_unix_close_leaves_a_successor_socket_alone(tmp_path: Path) -> None:
    """close() removes the socket file only if it is still the one this server made."""
    import os

    path = str(tmp_path / "rpc.sock")

    async def body() -> None:
        first = RpcServer(make_dispatcher())
        await first.listen_unix(path)
        second = RpcServer(make_dispatcher())
        await second.listen_unix(path)  # replaces the file (as a restarted daemon would)
        await first.close(grace=1)
        assert os.path.exists(path)
        async with await RpcStreamClient.connect_unix(path) as c:
            await tp.null(c)
        await second.close(grace=1)
        assert not os.path.exists(path)

    run(body)
