"""Hostile and broken clients against the asyncio server (RFC 5531 §11 record marking): each gets a
clear outcome — a GARBAGE_ARGS reply, a closed connection, or an idle timeout — memory stays
bounded, and a well-behaved client on another connection is served throughout."""

from __future__ import annotations

import asyncio
import logging
import resource
import struct
import tracemalloc

import pytest

from rpclatch.rpc import testprog as tp
from rpclatch.rpc.aio import RpcServer, RpcStreamClient
from rpclatch.rpc.messages import AcceptedReply, AcceptStat, CallMessage, decode_message
from rpclatch.rpc.record import LAST_FRAGMENT, RecordReassembler, encode_record
from rpclatch.rpc.server import RpcDispatcher

FLOOD = 1000
# Generous: the flood (and tracemalloc) can keep the loop busy, and a well-behaved client whose
# bytes wait unread in its socket meanwhile must not be mistaken for an idle one.
IDLE = 3.0


def ensure_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """True if the server closes (EOF or reset) within ``within`` seconds, reading and dropping
    anything it sends first."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


async def read_records(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    r = RecordReassembler()
    out: list[bytes] = []
    async with asyncio.timeout(10):
        while len(out) < count:
            data = await reader.read(65536)
            assert data, "connection closed before the expected replies"
            out += r.feed(data)
    return out


def test_hostile_clients(caplog: pytest.LogCaptureFixture) -> None:
    ensure_fd_limit(2 * FLOOD + 256)
    caplog.set_level(logging.WARNING, "rpclatch.rpc.server")

    async def body() -> None:
        d = RpcDispatcher()
        tp.add_test_program(d)
        server = RpcServer(d, max_connections=FLOOD + 20, idle_timeout=IDLE)
        port = await server.listen_tcp(backlog=2048)
        good = await RpcStreamClient.connect_tcp("127.0.0.1", port, timeout=30)
        served = 0
        stop = asyncio.Event()

        async def well_behaved() -> None:
            nonlocal served
            while not stop.is_set():
                payload = served.to_bytes(4, "big") * 256
                assert await tp.echo(good, payload) == payload
                served += 1
                await asyncio.sleep(0.005)  # keeps calling, so it is never idle

        good_task = asyncio.create_task(well_behaved())
        try:
            # 1. A fragment header announcing 2 GiB: refused before anything is buffered, closed.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(struct.pack(">I", LAST_FRAGMENT | 0x7FFFFFFF) + b"A" * 1000)
            assert await closed_by_server(reader, 5)
            writer.close()

            # 2. Garbage records: a call cut short gets GARBAGE_ARGS; records that are not calls
            #    are dropped; a procedure given bad arguments answers GARBAGE_ARGS; the connection
            #    keeps working.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            short_call = struct.pack(">IIII", 0x11, 0, 2, tp.RPCLATCH_TEST_PROG)
            bad_args = CallMessage(0x12, tp.RPCLATCH_TEST_PROG, 1, tp.PROC_ECHO, args=b"\xff" * 4).encode()
            writer.write(
                encode_record(short_call)
                + encode_record(b"\x01\x02\x03")
                + encode_record(b"\0\0\0\x13\0\0\0\7junkjunk")
                + encode_record(bad_args)
                + encode_record(CallMessage(0x14, tp.RPCLATCH_TEST_PROG, 1, 0).encode())
            )
            replies = [decode_message(r) for r in await read_records(reader, 3)]
            assert replies == [
                AcceptedReply(0x11, stat=AcceptStat.GARBAGE_ARGS),
                AcceptedReply(0x12, stat=AcceptStat.GARBAGE_ARGS),
                AcceptedReply(0x14),
            ]
            writer.close()

            # 3. Half a record, then silence: closed by the idle timeout.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(struct.pack(">I", LAST_FRAGMENT | 100) + b"half")
            assert not await closed_by_server(reader, IDLE / 3)
            assert await closed_by_server(reader, IDLE + 5)
            writer.close()

            # 4. A thousand connections at once, each with an announced 1 MiB record of which
            #    only 1000 bytes arrive: all held within the connection limit, none buffers more
            #    than it sent, all closed by the idle timeout.
            tracemalloc.start()
            conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            try:
                conns += await asyncio.gather(
                    *(asyncio.open_connection("127.0.0.1", port) for _ in range(FLOOD))
                )
                for _, w in conns:
                    w.write(struct.pack(">I", LAST_FRAGMENT | 1 << 20) + b"x" * 1000)
                await asyncio.sleep(0.2)
                assert len(server.connections) >= FLOOD // 2
                outcomes = await asyncio.gather(*(closed_by_server(r, IDLE + 20) for r, _ in conns))
                _current, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
                for _, w in conns:
                    w.close()
            assert all(outcomes), f"{outcomes.count(False)} flood connections were never closed"
            # Bounded: about 1 MB of partial records plus per-connection bookkeeping.
            assert peak < 64 * 1024 * 1024, f"peak traced memory {peak} bytes"
        finally:
            stop.set()
            try:
                await good_task
            finally:
                await good.close()
                await server.close()
        assert served > 20  # the well-behaved client was answered all along

    asyncio.run(asyncio.wait_for(body(), 120))
    text = caplog.text
    assert "exceeds the limit" in text
    assert "inside a partial record" in text


def test_udp_garbage_datagrams() -> None:
    """Datagrams that are not calls are dropped, broken calls get GARBAGE_ARGS, and the server
    keeps answering good calls."""

    async def body() -> None:
        d = RpcDispatcher()
        tp.add_test_program(d)
        async with RpcServer(d) as server:
            port = await server.listen_udp()
            loop = asyncio.get_running_loop()
            replies: asyncio.Queue[bytes] = asyncio.Queue()

            class Peer(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: object) -> None:
                    replies.put_nowait(data)

            transport, _ = await loop.create_datagram_endpoint(Peer, remote_addr=("127.0.0.1", port))
            try:
                for junk in (b"", b"\x01", bytes(7), b"\xff" * 100, AcceptedReply(9).encode()):
                    transport.sendto(junk)
                transport.sendto(struct.pack(">IIII", 0x21, 0, 2, tp.RPCLATCH_TEST_PROG))  # cut short
                transport.sendto(CallMessage(0x22, tp.RPCLATCH_TEST_PROG, 1, 0).encode())
                got = []
                async with asyncio.timeout(10):
                    while len(got) < 2:
                        got.append(decode_message(await replies.get()))
                assert got == [AcceptedReply(0x21, stat=AcceptStat.GARBAGE_ARGS), AcceptedReply(0x22)]
                await asyncio.sleep(0.1)
                assert replies.empty()  # nothing for the junk
            finally:
                transport.close()

    asyncio.run(asyncio.wait_for(body(), 60))


def test_pipelining_client_that_does_not_read() -> None:
    """300 SOURCE calls of 1 MiB each sent at once by a client that reads nothing: the server
    produces replies only as fast as the socket takes them (memory stays bounded), answers all of
    them in order once the client reads, and keeps serving other clients meanwhile."""
    calls = 300
    size = 1024 * 1024

    async def body() -> None:
        d = RpcDispatcher()
        tp.add_test_program(d)
        async with RpcServer(d, idle_timeout=60) as server:
            port = await server.listen_tcp()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                tracemalloc.start()
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
                    await asyncio.sleep(1.0)
                    async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as other:
                        assert await tp.echo(other, b"still served") == b"still served"
                    _current, peak = tracemalloc.get_traced_memory()
                finally:
                    tracemalloc.stop()
                # Without backpressure the server would hold ~300 MiB of replies here.
                assert peak < 48 * 1024 * 1024, f"peak traced memory {peak} bytes"
                rec = RecordReassembler(max_record=2 * size)
                xids: list[int] = []
                async with asyncio.timeout(60):
                    while len(xids) < calls:
                        data = await reader.read(1 << 20)
                        assert data, "server closed early"
                        for r in rec.feed(data):
                            msg = decode_message(r)
                            assert isinstance(msg, AcceptedReply) and len(msg.results) == size + 4
                            xids.append(msg.xid)
                assert xids == list(range(calls))
            finally:
                writer.close()

    asyncio.run(asyncio.wait_for(body(), 120))
