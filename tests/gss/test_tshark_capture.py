"""Wire check with an independent decoder: tshark dissects our RPCSEC_GSS v1 traffic (INIT, DATA
with none/integrity/privacy, DESTROY) captured on loopback, without a single malformed mark."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rpclatch.gss.channel import InMemoryChannel
from rpclatch.gss.client import GssClientAuth, VersionPolicy, rpc_call_via
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import Service
from rpclatch.rpc.aio import RpcServer, RpcStreamClient
from rpclatch.rpc.auth import ConnectionInfo
from rpclatch.rpc.server import RpcDispatcher
from rpclatch.rpc.testprog import (
    PROC_ECHO,
    RPCLATCH_TEST_PROG,
    RPCLATCH_TEST_VERS,
    add_test_program,
    decode_opaque,
    encode_opaque,
)

pytestmark = [
    pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="capturing on lo needs root"),
]

TSHARK_OPTS = ["-o", "rpc.dissect_unknown_programs:TRUE"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _traffic(realm: ThrowawayRealm, port: int) -> None:
    gss = GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab))
    dispatcher = RpcDispatcher([gss])
    add_test_program(dispatcher)
    server = RpcServer(dispatcher)
    await server.listen_tcp("127.0.0.1", port)
    try:
        for service in (Service.NONE, Service.INTEGRITY, Service.PRIVACY):
            async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as client:
                auth = GssClientAuth(
                    GssapiProvider(ccache=realm.users["alice"].ccache),
                    realm.service_name,
                    service=service,
                    versions=VersionPolicy.V1_ONLY,
                )
                call = rpc_call_via(client, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS)
                await auth.establish(call)
                for i in range(3):
                    payload = b"capture %d" % i
                    res = await client.call(
                        RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, encode_opaque(payload), auth=auth
                    )
                    assert decode_opaque(res) == payload
                await auth.destroy(call)
    finally:
        await server.close(grace=1.0)


def _wait_until_capturing(tshark: subprocess.Popen[bytes], pcap: Path, port: int) -> None:
    """Send UDP probes to ``port`` until the capture file grows: tshark's "Capturing on" line comes
    before the capture really runs, and packets reach the file only when it flushes."""
    start = pcap.stat().st_size if pcap.exists() else 0
    deadline = time.monotonic() + 30
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        while True:
            assert tshark.poll() is None, "tshark exited"
            assert time.monotonic() < deadline, "tshark captured nothing within 30 s"
            probe.sendto(b"probe", ("127.0.0.1", port))
            time.sleep(0.1)
            if pcap.exists() and pcap.stat().st_size > max(start, 400):
                return


def _capture(pcap: Path, port: int, traffic: Callable[[], None]) -> str:
    """Run ``traffic()`` under a tshark capture of ``port``; return tshark's verbose decode."""
    tshark = subprocess.Popen(
        ["tshark", "-i", "lo", "-f", f"port {port}", "-w", str(pcap)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until_capturing(tshark, pcap, port)
        traffic()
        _wait_until_capturing(tshark, pcap, port)  # a later probe landed: the traffic is on file
    finally:
        tshark.send_signal(signal.SIGTERM)
        try:
            tshark.wait(timeout=20)
        except subprocess.TimeoutExpired:
            tshark.kill()
            tshark.wait()
    return subprocess.run(
        ["tshark", "-r", str(pcap), *TSHARK_OPTS, "-V"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def _fields(pcap: Path, *fields: str) -> list[list[str]]:
    cmd = ["tshark", "-r", str(pcap), *TSHARK_OPTS, "-Y", "rpc", "-T", "fields"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout
    return [line.split("\t") for line in out.splitlines()]


def test_tshark_decodes_rpcsec_gss_v1(realm: ThrowawayRealm, tmp_path: Path) -> None:
    port = _free_port()
    pcap = tmp_path / "gss-v1.pcapng"
    verbose = _capture(pcap, port, lambda: asyncio.run(_traffic(realm, port)))
    assert "Malformed" not in verbose
    assert "[Expert Info (Error" not in verbose
    rows = _fields(
        pcap,
        "rpc.msgtyp",
        "rpc.authgss.version",
        "rpc.authgss.procedure",
        "rpc.authgss.service",
        "rpc.authgss.major",
        "rpc.authgss.checksum",
        "rpc.authgss.data",
    )
    assert rows, f"no RPC in {pcap.stat().st_size}-byte capture"
    calls = [r for r in rows if r[0] == "0"]
    replies = [r for r in rows if r[0] == "1"]
    procs = [int(r[2]) for r in calls]
    assert procs.count(1) == 3 and procs.count(3) == 3 and procs.count(0) == 9  # INIT, DESTROY, DATA
    assert {r[1] for r in calls} == {"1"}  # version 1 credentials only
    assert {int(r[3]) for r in calls if r[2] == "0"} == {1, 2, 3}  # none, integrity, privacy
    assert sum(1 for r in replies if r[4] in ("0", "0x00000000")) == 3  # three INIT replies, GSS_S_COMPLETE
    assert any(r[5] for r in calls)  # integrity checksums decoded
    assert any(r[6] for r in calls if r[3] == "3")  # privacy data decoded
    assert len(replies) == len(calls)


async def _v2_traffic(realm: ThrowawayRealm, port: int) -> None:
    cli_ch, srv_ch = InMemoryChannel.pair("x-test", os.urandom(32))

    def on_connection(info: ConnectionInfo, transport: object) -> None:
        info.channel = srv_ch

    dispatcher = RpcDispatcher([GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab))])
    add_test_program(dispatcher)
    server = RpcServer(dispatcher, on_connection=on_connection)
    await server.listen_tcp("127.0.0.1", port)
    try:
        async with await RpcStreamClient.connect_tcp("127.0.0.1", port) as client:
            auth = GssClientAuth(GssapiProvider(ccache=realm.users["alice"].ccache), realm.service_name)
            call = rpc_call_via(client, RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS)
            await auth.establish(call)
            await auth.bind_channel(call, cli_ch)
            for i in range(2):
                await client.call(
                    RPCLATCH_TEST_PROG,
                    RPCLATCH_TEST_VERS,
                    PROC_ECHO,
                    encode_opaque(b"bound %d" % i),
                    auth=auth,
                )
            await auth.destroy(call)
    finally:
        await server.close(grace=1.0)


def test_tshark_decodes_rpcsec_gss_v2_bind_channel_and_channel_prot(
    realm: ThrowawayRealm, tmp_path: Path
) -> None:
    """tshark 3.x/4.x knows v2 only as numbers (proc 4, service 4) but must find nothing malformed."""
    port = _free_port()
    pcap = tmp_path / "gss-v2.pcapng"
    verbose = _capture(pcap, port, lambda: asyncio.run(_v2_traffic(realm, port)))
    assert "Malformed" not in verbose
    assert "[Expert Info (Error" not in verbose
    rows = _fields(
        pcap,
        "rpc.msgtyp",
        "rpc.authgss.version",
        "rpc.authgss.procedure",
        "rpc.authgss.service",
        "rpc.auth.flavor",
    )
    calls = [r for r in rows if r[0] == "0"]
    assert {r[1] for r in calls} == {"2"}
    # INIT carries the service the context is for (krb5i = 2), as C clients send it (RFC 2203 §5.2.2)
    assert [(r[2], r[3]) for r in calls] == [("1", "2"), ("4", "1"), ("0", "4"), ("0", "4"), ("3", "2")]
    # rpc.auth.flavor lists the credential's then the verifier's flavor: channel_prot carries an
    # RPCSEC_GSS credential with an AUTH_NONE verifier (RFC 5403 §3.4), the others two RPCSEC_GSS.
    assert [r[4] for r in calls] == ["6,0", "6,6", "6,0", "6,0", "6,6"]
