"""rpclatch.nfs4.connection over loopback TCP: a request on a closed connection is known not to
have gone out, and reconnecting goes through the security hook again with fresh credentials."""

from __future__ import annotations

import asyncio

import pytest

from rpclatch.nfs4.connection import Nfs4Connection
from rpclatch.nfs4.errors import RequestNotSent
from rpclatch.nfs4.options import Nfs4Options
from rpclatch.nfs4.security import ConnectionSecurity, SecFlavor
from rpclatch.rpc.aio import RpcStreamClient
from rpclatch.rpc.auth_sys import AuthSysClient
from rpclatch.rpc.errors import RpcConnectionClosed


async def _wait_closed(conn: Nfs4Connection) -> None:
    async with asyncio.timeout(10):
        while not conn.closed:
            await asyncio.sleep(0.01)


def test_a_closed_connection_is_found_before_sending() -> None:
    """A request on a connection the peer already closed raises RequestNotSent (an
    RpcConnectionClosed that tells the client nothing went out, so it may send it elsewhere)."""

    async def main() -> BaseException:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()  # like nfsd going down while the client is idle

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        rpc = await RpcStreamClient.connect_tcp("127.0.0.1", port)
        conn = Nfs4Connection(rpc, "127.0.0.1", ConnectionSecurity((SecFlavor.SYS,)), Nfs4Options(port=port))
        try:
            await _wait_closed(conn)
            with pytest.raises(RpcConnectionClosed) as info:
                await conn.rpc_call(AuthSysClient.for_current_process(), 1, b"")
        finally:
            await conn.close()
            server.close()
            await server.wait_closed()
        return info.value

    assert isinstance(asyncio.run(main()), RequestNotSent)


def test_reconnect_asks_the_hook_again_and_drops_old_credentials() -> None:
    async def main() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)
            if len(accepted) == 1:
                writer.close()  # the first connection is lost; later ones stay up

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        hooked: list[tuple[str, int, str]] = []

        async def hook(host: str, port: int, sec: str) -> ConnectionSecurity:
            hooked.append((host, port, sec))
            return ConnectionSecurity((SecFlavor.SYS,), record={"n": len(hooked)})

        conn = await Nfs4Connection.open("127.0.0.1", Nfs4Options(port=port, sec="sys"), security_hook=hook)
        try:
            first = await conn.auth_for(SecFlavor.SYS)
            assert await conn.auth_for(SecFlavor.SYS) is first
            await _wait_closed(conn)
            assert await conn.reconnect()
            assert not conn.closed and conn.reconnects == 1
            assert hooked == [("127.0.0.1", port, "sys")] * 2 and conn.security.record == {"n": 2}
            assert await conn.auth_for(SecFlavor.SYS) is not first
            assert not await conn.reconnect()  # still up: nothing to do
            assert conn.reconnects == 1
        finally:
            await conn.close()
            for w in accepted:
                w.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_reconnect_gives_up_at_the_deadline() -> None:
    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = await Nfs4Connection.open("127.0.0.1", Nfs4Options(port=port, retry_deadline=0.0))
        server.close()
        await server.wait_closed()  # nobody listens any more: connecting is refused
        try:
            await _wait_closed(conn)
            with pytest.raises(OSError):
                await conn.reconnect()
            assert conn.reconnects == 0
        finally:
            await conn.close()

    asyncio.run(main())
