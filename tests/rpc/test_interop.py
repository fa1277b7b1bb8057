"""Our server and client against independent implementations: libtirpc's rpcinfo and Wireshark's
RPC dissector (tshark), over loopback."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from rpclatch.rpc import rpcbind as rpcbind_mod
from rpclatch.rpc import testprog as tp
from rpclatch.rpc.aio import RpcServer, RpcStreamClient, RpcUdpClient
from rpclatch.rpc.auth_sys import AuthSysClient
from rpclatch.rpc.errors import RpcAcceptError
from rpclatch.rpc.server import RpcDispatcher

RPCINFO = shutil.which("rpcinfo") or "/usr/sbin/rpcinfo"
TSHARK = shutil.which("tshark")


def unique_prog() -> int:
    return 0x20000A11 + random.randrange(1 << 24, 1 << 26)


async def run_tool(*args: str, timeout: float = 30) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode()


async def serve_registered(d: RpcDispatcher, prog: int, vers: tuple[int, ...]) -> tuple[RpcServer, int, int]:
    server = RpcServer(d)
    tcp = await server.listen_tcp()
    udp = await server.listen_udp()
    for v in vers:
        await rpcbind_mod.register(prog, v, tcp_port=tcp, udp_port=udp, host="127.0.0.1")
    return server, tcp, udp


async def stop_registered(server: RpcServer, prog: int, vers: tuple[int, ...]) -> None:
    for v in vers:
        await rpcbind_mod.unregister(prog, v)
    await server.close()


def test_rpcinfo_pings_our_tcp_and_udp_server(rpcbind: object) -> None:
    """``rpcinfo -T tcp|udp`` (libtirpc) finds our server through rpcbind, calls NULL, reports it
    ready; ``-n PORT -t/-u`` calls the port directly."""
    # The test program's procedures under a program number no concurrent test uses.
    prog = unique_prog()

    async def body() -> None:
        d = RpcDispatcher()
        d.add_program(prog, 1, tp.TEST_PROCEDURES)
        server, tcp, udp = await serve_registered(d, prog, (1,))
        try:
            for netid in ("tcp", "udp"):
                rc, out = await run_tool(RPCINFO, "-T", netid, "127.0.0.1", str(prog), "1")
                assert (rc, out.strip()) == (0, f"program {prog} version 1 ready and waiting")
            for flag, port in (("-t", tcp), ("-u", udp)):
                rc, out = await run_tool(RPCINFO, "-n", str(port), flag, "127.0.0.1", str(prog), "1")
                assert (rc, out.strip()) == (0, f"program {prog} version 1 ready and waiting")
        finally:
            await stop_registered(server, prog, (1,))

    asyncio.run(body())


def test_rpcinfo_sees_our_version_mismatch_range(rpcbind: object) -> None:
    """PROG_MISMATCH carries our lowest..highest version; rpcinfo prints and uses that range."""
    prog = unique_prog()

    async def body() -> None:
        d = RpcDispatcher()
        d.add_program(prog, 1, tp.TEST_PROCEDURES)
        d.add_program(prog, 3, tp.TEST_PROCEDURES)
        server, _tcp, _udp = await serve_registered(d, prog, (1, 3))
        try:
            for netid in ("tcp", "udp"):
                rc, out = await run_tool(RPCINFO, "-T", netid, "127.0.0.1", str(prog), "7")
                assert rc != 0
                assert "low version = 1, high version = 3" in out
                assert f"program {prog} version 7 is not available" in out
            # Without a version rpcinfo asks for the range, then pings each version in it.
            rc, out = await run_tool(RPCINFO, "-t", "127.0.0.1", str(prog))
            assert f"program {prog} version 1 ready and waiting" in out
            assert f"program {prog} version 3 ready and waiting" in out
            assert f"program {prog} version 2 is not available" in out
        finally:
            await stop_registered(server, prog, (1, 3))

    asyncio.run(body())


def _free_port_for_tcp_and_udp() -> int:
    for _ in range(50):
        with socket.socket() as t, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(port)
    raise RuntimeError("no port free for both TCP and UDP")


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (apt-get install tshark)")
@pytest.mark.skipif(os.geteuid() != 0, reason="capturing on lo needs root")
def test_tshark_decodes_our_traffic_without_malformed_packets(tmp_path: Path) -> None:
    assert TSHARK is not None
    port = _free_port_for_tcp_and_udp()
    pcap = tmp_path / "rpc.pcapng"
    calls: list[str] = []

    async def body() -> None:
        cap = await asyncio.create_subprocess_exec(
            TSHARK,
            "-i",
            "lo",
            "-f",
            f"port {port}",
            "-w",
            str(pcap),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            assert cap.stderr is not None
            started = b""
            async with asyncio.timeout(30):
                while b"Capture started" not in started:
                    line = await cap.stderr.readline()
                    if not line:
                        pytest.fail(f"tshark exited: {started.decode(errors='replace')}")
                    started += line
            d = RpcDispatcher()
            tp.add_test_program(d)
            async with RpcServer(d) as server:
                await server.listen_tcp("127.0.0.1", port)
                await server.listen_udp("127.0.0.1", port)
                async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as c:
                    await tp.null(c)
                    await tp.echo(c, b"hello tshark")
                    await tp.echo(c, bytes(range(256)) * 400)  # 100 KiB: many TCP segments
                    await asyncio.gather(*(tp.sink(c, b"x" * i) for i in range(10)))  # pipelined
                    with pytest.raises(RpcAcceptError):
                        await c.call(tp.RPCLATCH_TEST_PROG, 9, 0)
                    await c.call(tp.RPCLATCH_TEST_PROG, 1, 0, auth=AuthSysClient.for_current_process())
                    calls.extend(["tcp"] * 15)
                async with await RpcUdpClient.connect("127.0.0.1", port) as u:
                    await tp.null(u)
                    await tp.echo(u, b"datagram")
                    calls.extend(["udp"] * 2)
            await asyncio.sleep(0.5)  # let the capture catch up
        finally:
            if cap.returncode is None:
                cap.send_signal(signal.SIGINT)
                try:
                    await asyncio.wait_for(cap.wait(), 15)
                except TimeoutError:
                    cap.kill()
                    await cap.wait()
            if cap.stderr is not None:
                await cap.stderr.read()

    asyncio.run(body())
    # Wireshark's RPC heuristics find the records on any port once unknown programs are allowed.
    decode_as = ["-o", "rpc.dissect_unknown_programs:TRUE"]
    fields = subprocess.run(
        [
            TSHARK,
            "-r",
            str(pcap),
            *decode_as,
            "-Y",
            "rpc",
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "rpc.xid",
            "-e",
            "rpc.msgtyp",
            "-e",
            "rpc.program",
            "-e",
            "rpc.replystat",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rows = [line.split("|") for line in fields.splitlines() if line.strip()]
    # One TCP segment may carry several pipelined records: fields then hold comma-separated lists.
    call_xids = {x for r in rows for x, t in zip(r[0].split(","), r[1].split(","), strict=False) if t == "0"}
    reply_xids = {x for r in rows for x, t in zip(r[0].split(","), r[1].split(","), strict=False) if t == "1"}
    assert len(call_xids) == len(calls)
    assert reply_xids == call_xids
    assert all(p == str(tp.RPCLATCH_TEST_PROG) for r in rows if r[2] for p in r[2].split(","))
    malformed = subprocess.run(
        [TSHARK, "-r", str(pcap), *decode_as, "-Y", "_ws.malformed || _ws.expert.severity >= 8388608"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert malformed.strip() == ""
    verbose = subprocess.run(
        [TSHARK, "-r", str(pcap), *decode_as, "-V"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "Remote Procedure Call" in verbose and "Malformed" not in verbose
    assert "Program Version: 9" in verbose and "Accept State: remote can't support version" in verbose
