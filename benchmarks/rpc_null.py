"""ONC RPC over loopback TCP: rpclatch client+server against a minimal raw asyncio baseline.

Figures (each beside a baseline measured in the same run, same process, same event loop):

* ``rpc.null.inflight1``  — NULL calls/s, one call in flight;
* ``rpc.null.inflight32`` — NULL calls/s, 32 calls in flight (32 coroutines each awaiting its call);
* ``rpc.echo64k``         — ECHO of 64 KiB, MB/s of payload (one call in flight).

Baseline: a raw asyncio record-marking client/server exchanging byte-identical messages (the
client sends the exact call records rpclatch would send, the server answers with the exact reply
record rpclatch would send, patching only the xid); the client side also awaits one future per
message from the same number of coroutines, so the ratio isolates rpclatch's RPC layer cost.

Usage: ``python benchmarks/rpc_null.py [--seconds S]``. Prints ``BENCH name value=... unit=...
baseline=... ratio=...`` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import time
from collections.abc import Awaitable, Callable

from rpclatch.rpc.aio import RpcServer, RpcStreamClient
from rpclatch.rpc.messages import NULL_AUTH, CallMessage
from rpclatch.rpc.server import RpcDispatcher
from rpclatch.rpc.testprog import (
    PROC_ECHO,
    PROC_NULL,
    RPCLATCH_TEST_PROG,
    RPCLATCH_TEST_VERS,
    add_test_program,
    encode_opaque,
)
from rpclatch.rpc.wire import encode_success

_HDR = struct.Struct(">I")


# -- baseline ----------------------------------------------------------------------------------


class _RawServer(asyncio.Protocol):
    """Record-marking echo of a fixed reply: parse fragment headers, answer each record."""

    def __init__(self, reply_body: bytes) -> None:
        self.reply_tail = reply_body[4:]  # everything after the xid
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out = []
        pos = 0
        n = len(buf)
        tail = self.reply_tail
        header = _HDR.pack(0x80000000 | (len(tail) + 4))
        while n - pos >= 4:
            length = _HDR.unpack_from(buf, pos)[0] & 0x7FFFFFFF
            if n - pos - 4 < length:
                break
            out.append(header)
            out.append(bytes(buf[pos + 4:pos + 8]))  # the xid
            out.append(tail)
            pos += 4 + length
        del buf[:pos]
        if out:
            self.transport.write(b"".join(out))


class _RawClient(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiting: dict[bytes, asyncio.Future[bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            length = _HDR.unpack_from(buf, pos)[0] & 0x7FFFFFFF
            if n - pos - 4 < length:
                break
            record = bytes(buf[pos + 4:pos + 4 + length])
            pos += 4 + length
            fut = self.waiting.pop(record[:4], None)
            if fut is not None:
                fut.set_result(record)
        del buf[:pos]

    def call(self, record: bytes) -> asyncio.Future[bytes]:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting[record[4:8]] = fut
        self.transport.write(record)
        return fut


def _call_record(xid: int, proc: int, args: bytes) -> bytes:
    body = CallMessage(xid, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, proc, NULL_AUTH, NULL_AUTH, args).encode()
    return _HDR.pack(0x80000000 | len(body)) + body


# -- measurement -------------------------------------------------------------------------------


async def _measure(workers: int, seconds: float, one_call: Callable[[int], Awaitable[None]]) -> float:
    """Calls per second with ``workers`` coroutines calling in a loop for ``seconds``."""
    stop = False
    count = 0

    async def worker(w: int) -> None:
        nonlocal count
        i = w
        while not stop:
            await one_call(i)
            i += workers
            count += 1

    tasks = [asyncio.create_task(worker(w)) for w in range(workers)]
    await asyncio.sleep(seconds / 5)  # warm-up
    start_count, start = count, time.perf_counter()
    await asyncio.sleep(seconds)
    done, elapsed = count - start_count, time.perf_counter() - start
    stop = True
    await asyncio.gather(*tasks)
    return done / elapsed


async def _rpclatch_rate(workers: int, seconds: float, proc: int, args: bytes) -> float:
    dispatcher = RpcDispatcher()
    add_test_program(dispatcher)
    server = RpcServer(dispatcher)
    port = await server.listen_tcp("127.0.0.1", 0)
    client = await RpcStreamClient.connect_tcp("127.0.0.1", port)
    try:
        async def one(_i: int) -> None:
            await client.call(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, proc, args)

        return await _measure(workers, seconds, one)
    finally:
        await client.close()
        await server.close()


async def _baseline_rate(workers: int, seconds: float, proc: int, args: bytes) -> float:
    loop = asyncio.get_running_loop()
    results = args if proc == PROC_ECHO else b""
    reply = encode_success(0, NULL_AUTH, results)
    srv = await loop.create_server(lambda: _RawServer(reply), "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    _t, proto = await loop.create_connection(_RawClient, "127.0.0.1", port)
    template = _call_record(0, proc, args)
    head, tail = template[:4], template[8:]
    pack = _HDR.pack
    try:
        async def one(i: int) -> None:
            # Minimal: the pre-built record with this call's xid patched in.
            await proto.call(b"".join((head, pack(i & 0xFFFFFFFF), tail)))

        return await _measure(workers, seconds, one)
    finally:
        proto.transport.close()
        srv.close()
        await srv.wait_closed()


def _line(name: str, value: float, baseline: float, unit: str) -> str:
    return f"BENCH {name} value={value:.1f} unit={unit} baseline={baseline:.1f} ratio={value / baseline:.3f}"


async def _pair(rounds: int, workers: int, seconds: float, proc: int, args: bytes) -> tuple[float, float]:
    """Best of ``rounds`` alternating runs of rpclatch and the baseline (the machine is shared, so
    the best run is the least disturbed one)."""
    ours: list[float] = []
    base: list[float] = []
    for r in range(rounds):
        if r % 2:
            ours.append(await _rpclatch_rate(workers, seconds, proc, args))
            base.append(await _baseline_rate(workers, seconds, proc, args))
        else:
            base.append(await _baseline_rate(workers, seconds, proc, args))
            ours.append(await _rpclatch_rate(workers, seconds, proc, args))
    return max(ours), max(base)


async def main(seconds: float, rounds: int) -> None:
    for name, workers in (("rpc.null.inflight1", 1), ("rpc.null.inflight32", 32)):
        ours, base = await _pair(rounds, workers, seconds, PROC_NULL, b"")
        print(_line(name, ours, base, "calls/s"), flush=True)
    payload = encode_opaque(bytes(range(256)) * 256)  # 64 KiB
    mb = 65536 / 1e6
    ours, base = await _pair(rounds, 1, seconds, PROC_ECHO, payload)
    print(_line("rpc.echo64k", ours * mb, base * mb, "MB/s"), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="measuring time per run")
    parser.add_argument("--rounds", type=int, default=4, help="runs per figure and side (best is kept)")
    opts = parser.parse_args()
    asyncio.run(main(opts.seconds, opts.rounds))
