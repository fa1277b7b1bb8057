"""ONC RPC over loopback TCP: rpclatch client+server against a minimal raw asyncio baseline.

Figures (each beside a baseline measured in the same run; client and server are separate
processes over loopback TCP):

* ``rpc.null.inflight1``  — NULL calls/s, one call in flight;
* ``rpc.null.inflight32`` — NULL calls/s, 32 calls in flight (32 coroutines each awaiting its call);
* ``rpc.echo64k``         — ECHO of 64 KiB, MB/s of payload (one call in flight).

Baseline: a raw asyncio record-marking client/server exchanging byte-identical messages (the
client sends the exact call records rpclatch would send, the server answers with the exact reply
record rpclatch would send, patching only the xid). It reads the way rpclatch's shells do
(BufferedProtocol into a preallocated buffer), and its client also awaits one future per message
from the same number of coroutines, so the ratio isolates the cost of rpclatch's RPC layer.

Each run happens in a fresh interpreter (see ``_run_one``); rounds alternate the two sides and the
best of each is kept. Usage: ``python benchmarks/rpc_null.py [--seconds S] [--rounds N]``.
Prints ``BENCH name value=... unit=... baseline=... ratio=...`` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from rpclatch.rpc.aio import RpcServer, RpcStreamClient
from rpclatch.rpc.messages import NULL_AUTH, PROC_NULL, CallMessage
from rpclatch.rpc.server import RpcDispatcher
from rpclatch.rpc.testprog import (
    PROC_ECHO,
    RPCLATCH_TEST_PROG,
    RPCLATCH_TEST_VERS,
    add_test_program,
    encode_opaque,
)
from rpclatch.rpc.wire import encode_success

_HDR = struct.Struct(">I")


# -- baseline ----------------------------------------------------------------------------------


class _RawRecords(asyncio.BufferedProtocol):
    """Minimal record-marking reader: asyncio reads into one preallocated buffer (as rpclatch's
    shells do), fragment headers are parsed in place, a partial record is kept for the next read."""

    def __init__(self) -> None:
        self.recv = memoryview(bytearray(256 * 1024))
        self.partial = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.recv

    def buffer_updated(self, nbytes: int) -> None:
        if self.partial:
            self.partial += self.recv[:nbytes]
            src: bytes | memoryview = bytes(self.partial)
        else:
            src = self.recv[:nbytes]
        pos = 0
        n = len(src)
        while n - pos >= 4:
            length = _HDR.unpack_from(src, pos)[0] & 0x7FFFFFFF
            if n - pos - 4 < length:
                break
            self.on_record(src, pos + 4, pos + 4 + length)
            pos += 4 + length
        self.partial = bytearray(src[pos:])
        self.flush()

    def on_record(self, src: bytes | memoryview, start: int, stop: int) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass


class _RawServer(_RawRecords):
    """Answers every record with a fixed, pre-encoded reply carrying the record's xid."""

    def __init__(self, reply_body: bytes) -> None:
        super().__init__()
        self.reply_tail = reply_body[4:]  # everything after the xid
        self.header = _HDR.pack(0x80000000 | len(reply_body))
        self.out: list[bytes] = []

    def on_record(self, src: bytes | memoryview, start: int, stop: int) -> None:
        self.out.append(self.header + bytes(src[start : start + 4]))
        self.out.append(self.reply_tail)

    def flush(self) -> None:
        if self.out:
            for part in self.out:
                self.transport.write(part)
            self.out.clear()


class _RawClient(_RawRecords):
    def __init__(self) -> None:
        super().__init__()
        self.waiting: dict[bytes, asyncio.Future[bytes]] = {}

    def on_record(self, src: bytes | memoryview, start: int, stop: int) -> None:
        record = bytes(src[start:stop])
        fut = self.waiting.pop(record[:4], None)
        if fut is not None:
            fut.set_result(record)

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


async def _serve(side: str, proc: int, args: bytes) -> None:
    """Serve until stdin closes, after printing the port (the server runs in its own process)."""
    loop = asyncio.get_running_loop()
    if side == "ours":
        dispatcher = RpcDispatcher()
        add_test_program(dispatcher)
        server = RpcServer(dispatcher)
        port = await server.listen_tcp("127.0.0.1", 0)
    else:
        reply = encode_success(0, NULL_AUTH, args if proc == PROC_ECHO else b"")
        raw = await loop.create_server(lambda: _RawServer(reply), "127.0.0.1", 0)
        port = raw.sockets[0].getsockname()[1]
    print(port, flush=True)
    await loop.run_in_executor(None, sys.stdin.read)


async def _rpclatch_rate(port: int, workers: int, seconds: float, proc: int, args: bytes) -> float:
    client = await RpcStreamClient.connect_tcp("127.0.0.1", port)
    try:

        async def one(_i: int) -> None:
            await client.call(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, proc, args)

        return await _measure(workers, seconds, one)
    finally:
        await client.close()


async def _baseline_rate(port: int, workers: int, seconds: float, proc: int, args: bytes) -> float:
    loop = asyncio.get_running_loop()
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


def _line(name: str, value: float, baseline: float, unit: str) -> str:
    return f"BENCH {name} value={value:.1f} unit={unit} baseline={baseline:.1f} ratio={value / baseline:.3f}"


FIGURES = {
    # name: (coroutines in flight, procedure, encoded arguments, unit scale)
    "rpc.null.inflight1": (1, PROC_NULL, b"", 1.0),
    "rpc.null.inflight32": (32, PROC_NULL, b"", 1.0),
    "rpc.echo64k": (1, PROC_ECHO, encode_opaque(bytes(range(256)) * 256), 65536 / 1e6),
}


def _run_one(side: str, figure: str, seconds: float) -> float:
    """One measurement: server and client each in a fresh interpreter of their own (as real RPC
    peers are; and neither side inherits the other's heap state)."""
    cmd = [sys.executable, __file__, "--figure", figure, "--seconds", str(seconds)]
    server = subprocess.Popen(
        [*cmd, "--serve", side], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        out = subprocess.run(
            [*cmd, "--worker", side, "--port", port], capture_output=True, text=True, check=True
        )
        return float(out.stdout.split()[-1])
    finally:
        server.communicate("", timeout=30)


def _pair(rounds: int, figure: str, seconds: float) -> tuple[float, float]:
    """Best of ``rounds`` alternating runs of rpclatch and the baseline (the machine is shared, so
    the best run is the least disturbed one)."""
    ours: list[float] = []
    base: list[float] = []
    for r in range(rounds):
        order = ("ours", "base") if r % 2 else ("base", "ours")
        for side in order:
            (ours if side == "ours" else base).append(_run_one(side, figure, seconds))
    return max(ours), max(base)


async def _worker(side: str, figure: str, seconds: float, port: int) -> float:
    workers, proc, args, scale = FIGURES[figure]
    rate = _rpclatch_rate if side == "ours" else _baseline_rate
    return await rate(port, workers, seconds, proc, args) * scale


def main(seconds: float, rounds: int) -> None:
    for name in FIGURES:
        ours, base = _pair(rounds, name, seconds)
        unit = "MB/s" if name == "rpc.echo64k" else "calls/s"
        print(_line(name, ours, base, unit), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="measuring time per run")
    parser.add_argument("--rounds", type=int, default=4, help="runs per figure and side (best is kept)")
    parser.add_argument("--worker", choices=["ours", "base"], help=argparse.SUPPRESS)
    parser.add_argument("--serve", choices=["ours", "base"], help=argparse.SUPPRESS)
    parser.add_argument("--figure", choices=list(FIGURES), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.serve:
        _w, proc, args, _s = FIGURES[opts.figure]
        asyncio.run(_serve(opts.serve, proc, args))
    elif opts.worker:
        print(asyncio.run(_worker(opts.worker, opts.figure, opts.seconds, opts.port)))
    else:
        main(opts.seconds, opts.rounds)
