"""``rpclatch rpc serve --ipsec bypass-or-protect`` and ``rpclatch rpc ping --sec auto`` as
subprocesses, against two key-manager daemons running in a thread of this process (loopback UDP,
in-process datapath; the UML interop test runs them on kernel ESP), with a real KDC."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.ipsec.backend import InProcessBackend
from rpclatch.ipsec.ike.config import Credentials, IkeConfig
from rpclatch.ipsec.keyd.daemon import KeydDaemon
from rpclatch.ipsec.model import AddressRange, AuthMethod, IPAddress, IpProto, Selector
from rpclatch.ipsec.pad import ChildSaAuthorization, PadEntry, PeerAuthorizationDatabase, PublicKeyPattern
from rpclatch.rpc.testprog import RPCLATCH_TEST_PROG

A_ADDR = ipaddress.ip_address("127.0.0.1")
B_ADDR = ipaddress.ip_address("127.0.0.2")


@contextmanager
def keyds(tmp: Path, *, server: bool = True) -> Iterator[tuple[Path, Path]]:
    """Client and server keyd sockets (the server's keyd closed again unless ``server``)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()
    errors: list[BaseException] = []

    async def main() -> None:
        pad = PeerAuthorizationDatabase(
            [
                PadEntry(
                    "btns",
                    PublicKeyPattern(),
                    AuthMethod.RAW_PUBLIC_KEY,
                    ChildSaAuthorization(own_address_only=True),
                )
            ]
        )
        socks = {addr: socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for addr in (A_ADDR, B_ADDR)}
        for addr, sock in socks.items():
            sock.bind((str(addr), 0))
        ports = {addr: sock.getsockname()[1] for addr, sock in socks.items()}

        def resolve(addr: IPAddress) -> tuple[IPAddress, int]:
            return (addr, ports[addr])

        daemons = []
        try:
            for addr, name, policy in (
                (A_ADDR, "a", ()),
                (B_ADDR, "b", (Selector(AddressRange.single(B_ADDR), None, IpProto.TCP),)),
            ):
                config = IkeConfig(Credentials.raw_key(ed25519.Ed25519PrivateKey.generate()), pad, policy)
                daemons.append(
                    await KeydDaemon.start(
                        config,
                        socks[addr],
                        tmp / f"{name}.sock",
                        backend=InProcessBackend(),
                        peer_endpoint=resolve,
                    )
                )
            if not server:
                await daemons.pop().close()
                (tmp / "b.sock").unlink(missing_ok=True)
        except BaseException as exc:
            errors.append(exc)
            ready.set()
            raise
        ready.set()
        await stop.wait()
        for daemon in daemons:
            await daemon.close()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait(30)
    assert not errors, errors
    try:
        yield tmp / "a.sock", tmp / "b.sock"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def _env(realm: ThrowawayRealm) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RPCLATCH_DEBUG", None)
    env.update(realm.env)
    env["KRB5_KTNAME"] = realm.keytab
    env["KRB5CCNAME"] = realm.default_user.ccache
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rpclatch.cli", *args]


@contextmanager
def serve(realm: ThrowawayRealm, keyd: Path) -> Iterator[int]:
    proc = subprocess.Popen(
        _cli(
            "-v",
            "rpc",
            "serve",
            "--host",
            str(B_ADDR),
            "--tcp",
            "--sec",
            "krb5p",
            "--principal",
            realm.service_name,
            "--ipsec",
            "bypass-or-protect",
            "--keyd",
            str(keyd),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(realm),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(rf"tcp {re.escape(str(B_ADDR))}:(\d+) under bypass-or-protect", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        yield int(match.group(1))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def ping(realm: ThrowawayRealm, keyd: Path, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cli(
            "-v",
            "rpc",
            "ping",
            str(B_ADDR),
            str(RPCLATCH_TEST_PROG),
            "1",
            "--port",
            str(port),
            "--sec",
            "auto",
            "--target",
            realm.service_name,
            "--keyd",
            str(keyd),
            *extra,
        ),
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(realm),
    )


def test_serve_bypass_or_protect_and_ping_auto_latched_bound(realm: ThrowawayRealm, tmp_path: Path) -> None:
    with keyds(tmp_path) as (a_sock, b_sock), serve(realm, b_sock) as port:
        result = ping(realm, a_sock, port)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"program {RPCLATCH_TEST_PROG} version 1 ready and waiting (channel_prot)\n"
    row = [line for line in result.stderr.splitlines() if "rpclatch: security: row" in line]
    assert len(row) == 1, result.stderr
    assert "(LATCHED_BINDING_CONF, BOUND)" in row[0] and "latched and bound" in row[0], row


def test_ping_auto_without_the_servers_key_manager_falls_back(realm: ThrowawayRealm, tmp_path: Path) -> None:
    with keyds(tmp_path, server=False) as (a_sock, _b), socket.socket() as blocker:
        # the server runs without a key manager at all: a plain krb5p server
        blocker.bind((str(B_ADDR), 0))
        port = blocker.getsockname()[1]
        blocker.close()
        proc = subprocess.Popen(
            _cli(
                "rpc",
                "serve",
                "--host",
                str(B_ADDR),
                "--port",
                str(port),
                "--tcp",
                "--sec",
                "krb5p",
                "--principal",
                realm.service_name,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=_env(realm),
        )
        try:
            assert proc.stdout is not None and "serving" in proc.stdout.readline()
            result = ping(realm, a_sock, port, "--ike-timeout", "0.5", "--fallback", "krb5p")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
            assert proc.stdout is not None
            proc.stdout.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"program {RPCLATCH_TEST_PROG} version 1 ready and waiting (krb5p)\n"
    row = [line for line in result.stderr.splitlines() if "rpclatch: security: row" in line]
    assert len(row) == 1 and "(NOT_LATCHED, NOT_ATTEMPTED)" in row[0], result.stderr
    assert "IKE_UNREACHABLE" in row[0], row


def test_missing_keyd_socket_is_one_line_naming_keyd(tmp_path: Path) -> None:
    missing = tmp_path / "none.sock"
    for argv in (
        [
            "rpc",
            "ping",
            "127.0.0.1",
            "rpclatch_test",
            "1",
            "--port",
            "9",
            "--sec",
            "auto",
            "--keyd",
            str(missing),
        ],
        ["rpc", "serve", "--ipsec", "bypass-or-protect", "--keyd", str(missing)],
    ):
        result = subprocess.run(_cli(*argv), capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, result
        assert result.stderr.count("\n") == 1 and "--keyd" in result.stderr, result.stderr
        assert str(missing) in result.stderr and "Traceback" not in result.stderr


def test_keyd_without_its_mode_is_a_usage_error() -> None:
    for argv in (
        ["rpc", "ping", "127.0.0.1", "rpclatch_test", "1", "--port", "9", "--keyd", "/x"],
        ["rpc", "ping", "127.0.0.1", "rpclatch_test", "1", "--port", "9", "--gss-version", "1"],
        ["rpc", "serve", "--keyd", "/x"],
        ["rpc", "ping", "127.0.0.1", "rpclatch_test", "1", "--port", "9", "--sec", "auto", "--udp"],
    ):
        result = subprocess.run(_cli(*argv), capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result
        assert result.stderr.count("\n") == 1, result.stderr
