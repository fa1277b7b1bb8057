"""The CLI parts of the GSS layer: ``rpclatch realm up`` and ``rpclatch rpc ping/serve --sec krb5*``.

Each test starts the real processes itself and stops them by PID.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from rpclatch.cli import build_parser
from rpclatch.commands.rpc import DEFAULT_MAX_REQUESTS_PER_CONTEXT
from rpclatch.gss.client import GssClientAuth, rpc_call_via
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import Service
from rpclatch.rpc.aio import RpcServer, RpcStreamClient
from rpclatch.rpc.errors import RpcAuthError
from rpclatch.rpc.sec import server_auths_for_sec
from rpclatch.rpc.server import RpcDispatcher
from rpclatch.rpc.testprog import RPCLATCH_TEST_PROG as PROG
from rpclatch.rpc.testprog import add_test_program


def _start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rpclatch.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def test_realm_up_prints_exports_and_cleans_up_on_ctrl_c() -> None:
    proc = _start(["realm", "up", "--user", "dave", "--password", "pw-dave-7"])
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        while not lines or lines[-1] != "# running until Ctrl-C":
            line = proc.stdout.readline()
            assert line, f"realm up ended early: {proc.stderr.read() if proc.stderr else ''}"
            lines.append(line.rstrip("\n"))
        exports = dict(line[len("export ") :].split("=", 1) for line in lines if line.startswith("export "))
        tmpdir = os.path.dirname(exports["KRB5_CONFIG"])
        env = {**os.environ, **exports}
        subprocess.run(
            ["kinit", "-c", os.path.join(tmpdir, "cc.test"), "dave"],
            input="pw-dave-7\n",
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=20,
        )
    finally:
        rc, _, err = _stop(proc)
    assert rc == 0, err
    assert not os.path.exists(tmpdir)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_rpc_ping_and_serve_with_sec_krb5(realm: ThrowawayRealm) -> None:
    env = {**os.environ, **realm.env}
    port = _free_port()
    # The floor is the weakest service listed (krb5 here, though krb5i comes first): krb5 and every
    # stronger service (krb5i, krb5p) are served.
    server = _start(["rpc", "serve", "--tcp", "--port", str(port), "--sec", "krb5i", "--sec", "krb5"], env)
    try:
        _wait_listening(server, port)
        for sec in ("krb5", "krb5i", "krb5p"):
            ping = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "rpclatch.cli",
                    "rpc",
                    "ping",
                    "127.0.0.1",
                    "rpclatch_test",
                    "1",
                    "--port",
                    str(port),
                    "--sec",
                    sec,
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert ping.returncode == 0, ping.stderr
            assert "version 1 ready and waiting" in ping.stdout
        # Without credentials: one line saying what is wrong and what to do.
        bad = subprocess.run(
            [
                sys.executable,
                "-m",
                "rpclatch.cli",
                "rpc",
                "ping",
                "127.0.0.1",
                "rpclatch_test",
                "1",
                "--port",
                str(port),
                "--sec",
                "krb5i",
            ],
            env={**env, "KRB5CCNAME": "/nonexistent/cc"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert bad.returncode == 1
        assert bad.stderr.count("\n") == 1 and "kinit first" in bad.stderr
        # AUTH_NONE is not accepted by an RPCSEC_GSS-only server.
        none = subprocess.run(
            [
                sys.executable,
                "-m",
                "rpclatch.cli",
                "rpc",
                "ping",
                "127.0.0.1",
                "rpclatch_test",
                "1",
                "--port",
                str(port),
                "--sec",
                "none",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert none.returncode == 1 and "authentication failed" in none.stderr
    finally:
        _stop(server)


def test_serve_without_keytab_is_a_one_line_user_error() -> None:
    env = {**os.environ, "KRB5_KTNAME": "/nonexistent/keytab", "KRB5_CONFIG": "/nonexistent/krb5.conf"}
    # The installed console script: under ``python -m rpclatch.cli`` the module runs as __main__,
    # whose UserError is another class than rpclatch.cli.UserError.
    script = os.path.join(os.path.dirname(sys.executable), "rpclatch")
    proc = subprocess.run(
        [script, "rpc", "serve", "--tcp", "--sec", "krb5i"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "KRB5_KTNAME" in proc.stderr


# -- --target / --principal (issue #10 item 17) ------------------------------------------------------


@pytest.fixture(scope="module")
def rpctest_realm() -> Iterator[ThrowawayRealm]:
    """A realm of its own whose keytab also holds rpctest/<host>: a server under a principal other
    than the nfs/<host> every default points at. Used by child processes only (never activated)."""
    with ThrowawayRealm(["carol"], extra_services=("rpctest",)) as realm:
        yield realm


def _wait_listening(server: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
            time.sleep(0.1)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in env.items() if k != "RPCLATCH_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "rpclatch.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_ping_target_must_match_the_servers_principal(rpctest_realm: ThrowawayRealm) -> None:
    env = {**os.environ, **rpctest_realm.env}
    host = rpctest_realm.hostname
    port = _free_port()
    server = _start(
        ["rpc", "serve", "--port", str(port), "--sec", "krb5i", "--principal", f"rpctest@{host}"], env
    )
    try:
        _wait_listening(server, port)
        ping = ("rpc", "ping", "127.0.0.1", "rpclatch_test", "1", "--port", str(port))
        for extra in (("--sec", "krb5i"), ("--sec", "krb5p", "--udp")):
            ok = _cli(*ping, *extra, "--target", f"rpctest@{host}", env=env)
            assert (ok.returncode, ok.stdout, ok.stderr) == (
                0,
                f"program {PROG} version 1 ready and waiting\n",
                "",
            )
        # The default target (nfs@...) has a key in the KDC but not at this server.
        wrong = _cli(*ping, "--sec", "krb5i", "--target", f"nfs@{host}", env=env)
        assert (wrong.returncode, wrong.stdout) == (1, "")
        assert wrong.stderr == (
            f"rpclatch: error: 127.0.0.1: the server does not accept nfs@{host}: it "
            "serves under another principal (fix --target)\n"
        )
        unknown = _cli(*ping, "--sec", "krb5i", "--target", f"nosuch@{host}", env=env)
        assert (unknown.returncode, unknown.stderr) == (
            1,
            f"rpclatch: error: 127.0.0.1: the KDC knows no service principal for nosuch@{host} "
            "(fix --target)\n",
        )
        # The nfs client says the same about its --target (alias --gss-target).
        nfs = _cli(
            "nfs",
            "ls",
            "127.0.0.1:/",
            "--port",
            str(port),
            "--sec",
            "krb5",
            "--timeout",
            "10",
            "--target",
            f"nosuch@{host}",
            env=env,
        )
        assert (nfs.returncode, nfs.stderr) == (
            2,
            f"rpclatch: error: 127.0.0.1: the KDC knows no service principal for nosuch@{host} "
            "(fix --target)\n",
        )
        nfs = _cli(
            "nfs",
            "ls",
            "127.0.0.1:/",
            "--port",
            str(port),
            "--sec",
            "krb5",
            "--timeout",
            "10",
            "--gss-target",
            f"nfs@{host}",
            env=env,
        )
        assert (nfs.returncode, nfs.stderr) == (
            2,
            f"rpclatch: error: 127.0.0.1:{port} does not accept nfs@{host}: it serves under another "
            "principal (fix --target)\n",
        )
        # Malformed values: one line naming the option, what is wrong and the form to use.
        for args, line in (
            (
                (*ping, "--sec", "krb5i", "--target", "rpctest"),
                "--target 'rpctest' has no host: give SERVICE@HOST (e.g. --target nfs@server.example)",
            ),
            (
                (*ping, "--sec", "krb5i", "--target", f"rpctest/{host}@{rpctest_realm.realm}"),
                f"--target 'rpctest/{host}@{rpctest_realm.realm}' looks like a Kerberos principal name; give "
                f"the host-based service name SERVICE@HOST instead (--target rpctest@{host})",
            ),
            (
                (*ping, "--target", f"rpctest@{host}"),
                "--target names an RPCSEC_GSS principal: use it with --sec krb5, krb5i or krb5p",
            ),
            (
                ("nfs", "ls", "127.0.0.1:/", "--port", str(port), "--target", "@x"),
                "--target '@x' has no service before the '@': give SERVICE@HOST (e.g. --target "
                "nfs@server.example)",
            ),
            (
                ("rpc", "serve", "--sec", "krb5i", "--principal", "rpctest@"),
                "--principal 'rpctest@' has no host after the '@': give SERVICE@HOST (e.g. --principal "
                "nfs@server.example)",
            ),
            (
                ("rpc", "serve", "--principal", f"rpctest@{host}"),
                "--principal names an RPCSEC_GSS principal: use it with --sec krb5, krb5i or krb5p",
            ),
        ):
            bad = _cli(*args, env=env)
            assert (bad.returncode, bad.stdout, bad.stderr) == (2, "", f"rpclatch: error: {line}\n"), args
        # A principal without a key in the keytab: refused at start-up, one line.
        nokey = _cli("rpc", "serve", "--sec", "krb5i", "--principal", f"other@{host}", env=env)
        assert nokey.returncode == 2 and nokey.stderr.count("\n") == 1
        assert nokey.stderr.startswith(f"rpclatch: error: cannot accept RPCSEC_GSS as other@{host}: ")
    finally:
        rc, _, err = _stop(server)
    assert rc == 0 and "Traceback" not in err, err


# -- UDP ping destroys its context (issue #10 item 18) --------------------------------------------


def test_udp_krb5i_ping_exits_cleanly_and_destroys_its_context(realm: ThrowawayRealm) -> None:
    """The server runs in this process (the realm is activated here), so its context table can be
    read: the ping made a context (the server accepts krb5i only) and DESTROYed it (RFC 2203 §5.4)."""
    auths = server_auths_for_sec(["krb5i"])
    gss = next(a for a in auths if isinstance(a, GssServerAuth))
    dispatcher = RpcDispatcher(auths)
    add_test_program(dispatcher)
    ready: list[int] = []
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        async with RpcServer(dispatcher) as server:
            ready.append(await server.listen_udp("127.0.0.1", 0))
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        assert started.wait(10)
        ping = _cli(
            "rpc",
            "ping",
            "127.0.0.1",
            "rpclatch_test",
            "1",
            "--udp",
            "--sec",
            "krb5i",
            "--port",
            str(ready[0]),
            env={**os.environ, **realm.env},
        )
        assert (ping.returncode, ping.stdout, ping.stderr) == (
            0,
            f"program {PROG} version 1 ready and waiting\n",
            "",
        )
        assert gss.context_count() == 0
        # Without --sec krb5i nothing gets in, so the ping above did make a context.
        refused = _cli(
            "rpc",
            "ping",
            "127.0.0.1",
            "rpclatch_test",
            "1",
            "--udp",
            "--port",
            str(ready[0]),
            env={**os.environ, **realm.env},
        )
        assert refused.returncode == 1 and "authentication failed" in refused.stderr
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


# -- the RFC 5403 §9 (a) cap in rpc serve (issue #10 item 14) -------------------------------------


def test_serve_caps_requests_per_context(realm: ThrowawayRealm) -> None:
    """``rpc serve`` has the cap on by default; ``--max-requests-per-context N`` reaches the server:
    the (N+1)th request on one context is answered CTXPROBLEM and a refreshed context goes on; 0
    turns the cap off."""
    assert (
        build_parser().parse_args(["rpc", "serve"]).max_requests_per_context
        == DEFAULT_MAX_REQUESTS_PER_CONTEXT
        == 2**20
    )

    async def calls(port: int, n: int) -> list[str]:
        auth = GssClientAuth(GssapiProvider(), realm.service_name, service=Service.INTEGRITY)
        client = await RpcStreamClient.connect_tcp("127.0.0.1", port, auth=auth, timeout=20)
        outcomes = []
        try:
            await auth.establish(rpc_call_via(client, PROG, 1))
            for _ in range(n):
                try:
                    await client.call(PROG, 1, 0, b"")
                    outcomes.append("ok")
                except RpcAuthError as exc:
                    outcomes.append(exc.stat.name)
                    await auth.call(rpc_call_via(client, PROG, 1), 0, b"")  # refreshes, then calls
                    outcomes.append("refreshed")
        finally:
            auth.close()
            await client.close()
        return outcomes

    for cap, expected in (("3", ["ok"] * 3 + ["RPCSEC_GSS_CTXPROBLEM", "refreshed"]), ("0", ["ok"] * 5)):
        port = _free_port()
        server = _start(
            [
                "rpc",
                "serve",
                "--tcp",
                "--port",
                str(port),
                "--sec",
                "krb5i",
                "--max-requests-per-context",
                cap,
            ],
            {**os.environ, **realm.env},
        )
        try:
            _wait_listening(server, port)
            assert asyncio.run(calls(port, 5 if cap == "0" else 4)) == expected
        finally:
            rc, _, err = _stop(server)
        assert rc == 0, err
    bad = _cli("rpc", "serve", "--sec", "krb5i", "--max-requests-per-context", "-1", env=dict(os.environ))
    assert (bad.returncode, bad.stderr) == (
        2,
        "rpclatch: error: --max-requests-per-context -1: give a count of requests, or 0 for no cap\n",
    )


# -- repeated SIGTERM during cleanup (issue #10 item 19) --------------------------------------------


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
        return [int(p) for p in fh.read().split()]


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_realm_up_survives_repeated_sigterm() -> None:
    """``timeout`` signals the process and then its group: whatever signals arrive while the realm
    is stopping, the KDC is stopped, every file removed, and the exit is clean."""
    proc = _start(["realm", "up"])
    kdcs: list[int] = []
    tmpdir = ""
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not lines or lines[-1] != "# running until Ctrl-C":
            line = proc.stdout.readline()
            assert line, f"realm up ended early: {proc.stderr.read() if proc.stderr else ''}"
            lines.append(line.rstrip("\n"))
        exports = dict(line[len("export ") :].split("=", 1) for line in lines if line.startswith("export "))
        tmpdir = os.path.dirname(exports["KRB5_CONFIG"])
        kdcs = _children(proc.pid)  # the KDC (ours to clean up should the command fail to)
        assert kdcs
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.002)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        leftover = [pid for pid in kdcs if _running(pid)]
        for pid in leftover:
            os.kill(pid, signal.SIGKILL)
        left_files = bool(tmpdir) and os.path.exists(tmpdir)
        if left_files:
            shutil.rmtree(tmpdir, ignore_errors=True)
    assert (proc.returncode, err.splitlines()[-1:]) == (0, ["# realm stopped and removed"]), err
    assert not leftover and not left_files
