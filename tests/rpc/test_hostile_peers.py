"""Hostile peers over loopback against the asyncio shells (issue #10 items 1-4, RFC 5531 §11
and §9): each is cut off with bounded memory and a log line, and a well-behaved peer is served
meanwhile and afterwards. The sans-IO accounting behind them is tested in test_record_bounds.py
and test_server_bounds.py."""

from __future__ import annotations

import asyncio
import logging
import struct
import tracemalloc
from collections.abc import Awaitable, Callable

import pytest

from rpclatch.rpc import testprog as tp
from rpclatch.rpc.aio import MAX_UDP_REPLY, RpcServer, RpcStreamClient, RpcUdpClient
from rpclatch.rpc.errors import RpcAcceptError, RpcProtocolError
from rpclatch.rpc.messages import AcceptedReply, AcceptStat, CallMessage, decode_message
from rpclatch.rpc.record import DEFAULT_MAX_RECORD, LAST_FRAGMENT, RecordReassembler, encode_record
from rpclatch.rpc.server import DEFAULT_MAX_OUTPUT, RpcDispatcher

MiB = 1024 * 1024
EMPTY = struct.pack(">I", 0)  # a zero-length fragment, not the last of its record
EMPTY_LAST = struct.pack(">I", LAST_FRAGMENT)  # an empty record: complete, not a call


def dispatcher() -> RpcDispatcher:
    d = RpcDispatcher()
    tp.add_test_program(d)
    return d


def run(body: Callable[[], Awaitable[None]], limit: float = 90) -> None:
    asyncio.run(asyncio.wait_for(body(), limit))


async def closed_by_peer(reader: asyncio.StreamReader, within: float) -> bool:
    """True if the other side closes (EOF or reset) within ``within`` seconds; what it sends
    first is read and dropped."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(1 << 20):
                pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


def source_call(xid: int, n: int) -> bytes:
    return CallMessage(xid, tp.RPCLATCH_TEST_PROG, 1, tp.PROC_SOURCE, args=struct.pack(">I", n)).encode()


# -- item 1: record reassembly, both directions -----------------------------------------------


def test_server_drops_a_client_sending_empty_fragments(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "rpclatch.rpc.server")

    async def body() -> None:
        async with RpcServer(dispatcher(), idle_timeout=60) as server:
            port = await server.listen_tcp()
            async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as good:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    writer.write(bytes(1 << 20))  # 256 Ki empty non-last fragments
                    assert await closed_by_peer(reader, 20)
                finally:
                    writer.close()
                assert await tp.echo(good, b"still served") == b"still served"
                # A legal call in 2-byte fragments: held within the record limit, and answered.
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    payload = bytes(range(256)) * 256
                    call = CallMessage(
                        9, tp.RPCLATCH_TEST_PROG, 1, tp.PROC_ECHO, args=tp.encode_opaque(payload)
                    ).encode()
                    stream = encode_record(call, max_fragment=2)
                    for i in range(0, len(stream), 60_000):
                        writer.write(stream[i : i + 60_000])
                        await writer.drain()
                        assert all(
                            c.buffered_input <= DEFAULT_MAX_RECORD + 4 for c in server.stream_connections
                        )
                    rec = RecordReassembler()
                    got: list[bytes] = []
                    async with asyncio.timeout(20):
                        while not got:
                            data = await reader.read(1 << 20)
                            assert data
                            got += rec.feed(data)
                    msg = decode_message(got[0])
                    assert isinstance(msg, AcceptedReply) and msg.results == tp.encode_opaque(payload)
                finally:
                    writer.close()
                assert await tp.echo(good, b"and after") == b"and after"

    run(body)
    assert "zero-length fragments" in caplog.text


def test_client_drops_a_server_sending_empty_fragments() -> None:
    """A hostile server answers with a stream of empty fragments: the client fails the call with
    a protocol error and closes, holding nothing; a legitimate server is used fine afterwards."""

    async def body() -> None:
        peer_closed = asyncio.get_running_loop().create_future()

        async def hostile(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1000)  # the call
            try:
                writer.write(bytes(1 << 20))
                await writer.drain()
            except ConnectionError:
                pass
            peer_closed.set_result(await closed_by_peer(reader, 20))
            writer.close()

        evil = await asyncio.start_server(hostile, "127.0.0.1", 0)
        try:
            evil_port = evil.sockets[0].getsockname()[1]
            client = await RpcStreamClient.connect_tcp("127.0.0.1", evil_port, timeout=20)
            try:
                with pytest.raises(RpcProtocolError):
                    await tp.null(client)
                await asyncio.wait_for(client._protocol.lost, 10)
                assert client.closed and client._conn.buffered_input == 0
            finally:
                await client.close()
            assert await asyncio.wait_for(peer_closed, 30)
        finally:
            evil.close()
            await evil.wait_closed()
        async with RpcServer(dispatcher()) as server:
            port = await server.listen_tcp()
            async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as good:
                assert await tp.echo(good, b"fine") == b"fine"

    run(body)


# -- item 2: a client that never reads its replies -------------------------------------------


def test_a_client_that_never_reads_is_aborted_after_the_write_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "rpclatch.rpc.server")
    size = 16 * MiB
    calls = 4

    async def body() -> None:
        async with RpcServer(dispatcher(), idle_timeout=120, write_timeout=1.0) as server:
            port = await server.listen_tcp()
            async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as good:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                me = writer.get_extra_info("sockname")
                try:
                    writer.write(b"".join(encode_record(source_call(i, size)) for i in range(calls)))
                    most_unsent = 0
                    seen = False
                    served = 0
                    async with asyncio.timeout(60):
                        while True:
                            mine = [c for c in server.stream_connections if c.conn.peer == me]
                            if not mine:
                                if seen:
                                    break  # aborted and gone
                            else:
                                seen = True
                                most_unsent = max(most_unsent, mine[0].unsent)
                            assert await tp.echo(good, b"x" * 100) == b"x" * 100  # others are served
                            served += 1
                            await asyncio.sleep(0.05)
                    # The server held at most its budget plus the one reply it was writing.
                    assert 0 < most_unsent <= DEFAULT_MAX_OUTPUT + size + 64 * 1024
                    assert await closed_by_peer(reader, 20)
                finally:
                    writer.close()
                assert served > 0
                assert await tp.echo(good, b"after") == b"after"

    run(body)
    assert "took no reply bytes for 1 s" in caplog.text


# -- item 3: trickling bytes do not hold a connection slot ------------------------------------


def test_empty_fragment_tricklers_cannot_hold_the_connection_slots() -> None:
    """Three peers fill max_connections=3, each sending a 4-byte empty fragment every 0.2 s
    (an empty record every fourth, so no record has too many): none of them makes a call, so the
    idle timeout closes them all and a legitimate client gets a slot."""
    slots = 3

    async def body() -> None:
        async with RpcServer(dispatcher(), max_connections=slots, idle_timeout=1.0) as server:
            port = await server.listen_tcp()
            peers = [await asyncio.open_connection("127.0.0.1", port) for _ in range(slots)]
            stop = asyncio.Event()

            async def trickle(writer: asyncio.StreamWriter) -> None:
                n = 0
                while not stop.is_set() and not writer.is_closing():
                    n += 1
                    try:
                        writer.write(EMPTY_LAST if n % 4 == 0 else EMPTY)
                        await writer.drain()
                    except ConnectionError:
                        return
                    await asyncio.sleep(0.2)

            tasks = [asyncio.create_task(trickle(w)) for _, w in peers]
            try:
                closed = await asyncio.gather(*(closed_by_peer(r, 30) for r, _ in peers))
                assert all(closed), f"{closed.count(False)} tricklers kept their slot"
            finally:
                stop.set()
                await asyncio.gather(*tasks)
                for _, w in peers:
                    w.close()
            async with asyncio.timeout(10):
                while server.connections:
                    await asyncio.sleep(0.05)
            async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as good:
                assert await tp.echo(good, b"a slot") == b"a slot"

    run(body)


# -- item 4: UDP replies capped before they are built -----------------------------------------


def test_udp_source_of_64_mib_is_refused_without_building_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "rpclatch.rpc")
    flood = 300

    async def body() -> None:
        async with RpcServer(dispatcher()) as server:
            port = await server.listen_udp()
            async with await RpcUdpClient.connect("127.0.0.1", port, timeout=10) as c:
                tracemalloc.start()
                try:
                    with pytest.raises(RpcAcceptError) as info:
                        await tp.source(c, 64 * MiB)
                    _current, peak = tracemalloc.get_traced_memory()
                finally:
                    tracemalloc.stop()
                assert info.value.stat == AcceptStat.SYSTEM_ERR
                assert peak < 4 * MiB, f"peak traced memory {peak} bytes"
                # What fits in a datagram is still served.
                assert len(await tp.source(c, MAX_UDP_REPLY - 24 - 8)) == MAX_UDP_REPLY - 32

            # A flood of 44-byte datagrams asking for 64 MiB: each gets a small SYSTEM_ERR, and the
            # log gets a bounded number of lines.
            loop = asyncio.get_running_loop()
            replies: asyncio.Queue[bytes] = asyncio.Queue()

            class Peer(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: object) -> None:
                    replies.put_nowait(data)

            transport, _ = await loop.create_datagram_endpoint(Peer, remote_addr=("127.0.0.1", port))
            try:
                got = 0
                for i in range(flood):
                    transport.sendto(source_call(i, 64 * MiB))
                    if i % 50 == 49:  # let the replies come back (no loss on loopback)
                        async with asyncio.timeout(10):
                            while got <= i:
                                reply = await replies.get()
                                assert len(reply) <= 64
                                msg = decode_message(reply)
                                assert isinstance(msg, AcceptedReply) and msg.stat == AcceptStat.SYSTEM_ERR
                                got += 1
                assert got == flood
            finally:
                transport.close()

    run(body)
    lines = [
        r
        for r in caplog.records
        if "do not fit" in r.getMessage() or "more than a datagram carries" in r.getMessage()
    ]
    assert 1 <= len(lines) <= 25, f"{len(lines)} log lines for {flood + 1} oversize requests"
