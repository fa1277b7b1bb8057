"""The ``rpclatch rpc`` commands, in-process through rpclatch.cli.main() and as a subprocess for
the one-line error format and Ctrl-C handling."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from rpclatch.cli import main
from rpclatch.commands.rpc import describe_error, parse_program, program_names, read_rpc_names
from rpclatch.rpc import testprog as tp
from rpclatch.rpc.aio import RpcServer
from rpclatch.rpc.errors import RpcAcceptError, RpcAuthError, RpcMismatchError, RpcTimeout
from rpclatch.rpc.messages import AcceptStat, AuthStat
from rpclatch.rpc.sec import server_auths_for_sec
from rpclatch.rpc.server import RpcDispatcher

PROG = tp.RPCLATCH_TEST_PROG
RPCINFO = shutil.which("rpcinfo") or "/usr/sbin/rpcinfo"


@contextmanager
def server_thread(
    versions: tuple[int, ...] = (1,),
    sec: tuple[str, ...] = ("none", "sys"),
) -> Iterator[tuple[int, int]]:
    """The test program (at ``versions``) on 127.0.0.1 TCP and UDP, in its own thread and loop."""
    ready: list[tuple[int, int]] = []
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        d = RpcDispatcher(server_auths_for_sec(sec))
        for v in versions:
            d.add_program(PROG, v, tp.TEST_PROCEDURES)
        async with RpcServer(d) as server:
            ready.append((await server.listen_tcp(), await server.listen_udp()))
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def run_cli(
    *args: str,
    timeout: float = 60,
    env_extra: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("RPCLATCH_DEBUG", None)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "rpclatch.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_ping_tcp_and_udp_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    with server_thread() as (tcp, udp):
        assert main(["rpc", "ping", "127.0.0.1", str(PROG), "1", "--port", str(tcp)]) == 0
        assert main(["rpc", "ping", "127.0.0.1", "rpclatch_test", "1", "--port", str(udp), "--udp"]) == 0
        assert main(["rpc", "ping", "127.0.0.1", hex(PROG), "1", "--port", str(tcp), "--sec", "sys"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"program {PROG} version 1 ready and waiting"] * 3


def test_ping_without_version_tries_the_servers_range(capsys: pytest.CaptureFixture[str]) -> None:
    with server_thread((2, 3)) as (tcp, _udp):
        assert main(["rpc", "ping", "127.0.0.1", str(PROG), "--port", str(tcp)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"program {PROG} version 2 ready and waiting",
        f"program {PROG} version 3 ready and waiting",
    ]


def test_ping_version_mismatch_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with server_thread((2, 3, 4)) as (tcp, _udp):
        assert main(["rpc", "ping", "127.0.0.1", str(PROG), "9", "--port", str(tcp)]) == 1
    err = capsys.readouterr().err
    assert err == f"rpclatch: error: 127.0.0.1: program {PROG} version 9 not available (server has 2..4)\n"


def test_ping_refused_and_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        s.bind(("127.0.0.1", 0))  # bound but not listening: refused
        u.bind(("127.0.0.1", 0))  # bound but never answers: timeout
        refused = s.getsockname()[1]
        assert main(["rpc", "ping", "127.0.0.1", "100003", "4", "--port", str(refused)]) == 1
        assert (
            main(
                [
                    "rpc",
                    "ping",
                    "127.0.0.1",
                    "100003",
                    "4",
                    "--udp",
                    "--timeout",
                    "0.3",
                    "--port",
                    str(u.getsockname()[1]),
                ]
            )
            == 1
        )
    err = capsys.readouterr().err.splitlines()
    assert (
        err[0] == f"rpclatch: error: 127.0.0.1: connection refused on port {refused} "
        "(is the service running?)"
    )
    assert err[1].startswith("rpclatch: error: 127.0.0.1: no reply within 0.3 s")
    assert len(err) == 2


def test_bad_arguments_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rpc", "ping", "127.0.0.1", "no-such-program", "1", "--port", "1"]) == 2
    assert main(["rpc", "ping", "127.0.0.1", "100003", "1", "--port", "1", "--sec", "bogus"]) == 2
    assert main(["rpc", "ping", "127.0.0.1", "99999999999", "1", "--port", "1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3
    assert (
        err[0] == "rpclatch: error: unknown RPC program 'no-such-program'; "
        "give a number or a name from /etc/rpc"
    )
    # More flavors may be registered (RPCSEC_GSS): only the start of the list is fixed.
    assert err[1].startswith("rpclatch: error: unknown security flavor 'bogus' (choose from none, sys")
    assert err[2] == "rpclatch: error: program number 99999999999 out of range (0..4294967295)"
    with pytest.raises(SystemExit):
        main(["rpc", "ping", "127.0.0.1", "1", "--port", "70000"])


def test_program_names() -> None:
    names = read_rpc_names()
    assert names["nfs"] == 100003 and names["portmapper"] == 100000 and names["rpcbind"] == 100000
    assert parse_program("nfs") == 100003 and parse_program("0x20000A11") == PROG
    assert program_names()[100003] == "nfs"


def test_describe_error_lines() -> None:
    assert describe_error("h", RpcAcceptError(AcceptStat.PROG_UNAVAIL), 5, 1) == "h: program 5 not available"
    assert "procedure not available" in describe_error("h", RpcAcceptError(AcceptStat.PROC_UNAVAIL), 5, 1)
    assert "SYSTEM_ERR" in describe_error("h", RpcAcceptError(AcceptStat.SYSTEM_ERR), 5, 1)
    assert "RPC version 2" in describe_error("h", RpcMismatchError(3, 3))
    assert "AUTH_TOOWEAK" in describe_error("h", RpcAuthError(AuthStat.AUTH_TOOWEAK))
    assert describe_error("h", RpcTimeout("x"), timeout=2.0).startswith("h: no reply within 2 s")
    assert (
        describe_error("h", socket.gaierror(-2, "Name or service not known"))
        == "h: cannot resolve host name (Name or service not known)"
    )
    assert "\n" not in describe_error("h", OSError(113, "No route to host"))


def test_unknown_host_one_line() -> None:
    result = run_cli("rpc", "ping", "no-such-host.invalid", "100003", "4", "--port", "2049")
    assert result.returncode == 1
    assert result.stderr.startswith("rpclatch: error: no-such-host.invalid: cannot resolve host name (")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_rpcbind_lookup_dump_and_mismatch_subprocess(rpcbind: object) -> None:
    # The portmapper itself is always registered: ping it through GETPORT, by name.
    result = run_cli("rpc", "ping", "127.0.0.1", "portmapper", "2")
    assert (result.returncode, result.stdout) == (0, "program 100000 version 2 ready and waiting\n")
    result = run_cli("rpc", "ping", "127.0.0.1", str(0x3FFFFFF0), "1")
    assert result.returncode == 1
    assert (
        result.stderr == f"rpclatch: error: 127.0.0.1: program {0x3FFFFFF0} version 1 is not registered "
        "with rpcbind for tcp (use --port to call it directly)\n"
    )
    result = run_cli("rpc", "ping", "127.0.0.1", "100000", "9")
    assert result.returncode == 1
    assert (
        result.stderr == "rpclatch: error: 127.0.0.1: program 100000 version 9 not available "
        "(server has 2..4)\n"
    )
    result = run_cli("rpc", "ping", "127.0.0.1", "100000", "--udp")
    assert result.stdout.splitlines() == [f"program 100000 version {v} ready and waiting" for v in (2, 3, 4)]
    dump = run_cli("rpc", "dump", "127.0.0.1")
    assert dump.returncode == 0
    theirs = subprocess.run([RPCINFO, "-p", "127.0.0.1"], capture_output=True, text=True, check=True).stdout

    def rows(text: str) -> set[tuple[str, ...]]:
        return {tuple(line.split()[:4]) for line in text.splitlines()[1:]}

    assert dump.stdout.splitlines()[0] == theirs.splitlines()[0]
    assert rows(dump.stdout) == rows(theirs)


def test_serve_register_and_ctrl_c(rpcbind: object) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rpclatch.cli", "rpc", "serve", "--register"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith(f"serving program {PROG} version 1 on tcp 127.0.0.1:"), first
        port = int(first.split("tcp 127.0.0.1:")[1].split(",")[0])
        listed = subprocess.run(
            [RPCINFO, "-p", "127.0.0.1"], capture_output=True, text=True, check=True
        ).stdout
        assert any(line.split()[:4] == [str(PROG), "1", "tcp", str(port)] for line in listed.splitlines())
        assert any(line.split()[:4] == [str(PROG), "1", "udp", str(port)] for line in listed.splitlines())
        ping = run_cli("rpc", "ping", "127.0.0.1", str(PROG), "1")  # found through rpcbind
        assert ping.stdout == f"program {PROG} version 1 ready and waiting\n"
        ping = run_cli("rpc", "ping", "127.0.0.1", str(PROG), "1", "--udp")
        assert ping.stdout == f"program {PROG} version 1 ready and waiting\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.strip().endswith("stopped") and "Traceback" not in err
    listed = subprocess.run([RPCINFO, "-p", "127.0.0.1"], capture_output=True, text=True, check=True).stdout
    assert not any(line.split()[:2] == [str(PROG), "1"] for line in listed.splitlines())


def test_serve_port_in_use_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        result = run_cli("rpc", "serve", "--tcp", "--port", str(s.getsockname()[1]))
    assert result.returncode == 1
    assert result.stderr.startswith("rpclatch: error: 127.0.0.1: cannot listen on port")
    assert result.stderr.count("\n") == 1


def test_program_names_without_etc_rpc(tmp_path: Path) -> None:
    missing = tmp_path / "no-rpc-file"
    assert read_rpc_names(missing)["nfs"] == 100003
    assert program_names(missing)[100000] == "portmapper"
    custom = tmp_path / "rpc"
    custom.write_text("# comment\nmyprog 400000 alias1\nnfs 100003\nbroken line\n")
    assert read_rpc_names(custom)["alias1"] == 400000
    assert program_names(custom)[400000] == "myprog"


@contextmanager
def closed_loopback_port() -> Iterator[int]:
    """A loopback TCP port that refuses connections: bound (so nobody else takes it), never listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def test_dump_and_register_without_rpcbind_one_line(tmp_path: Path) -> None:
    """Runs whether or not an rpcbind is up: the CLI is pointed at a closed port and a missing socket,
    through the options and through the environment."""
    missing = tmp_path / "no-rpcbind.sock"
    with closed_loopback_port() as port:
        refused = f"rpclatch: error: 127.0.0.1: connection refused on port {port} (is rpcbind running?)\n"
        dump = run_cli("rpc", "dump", "127.0.0.1", "--rpcbind-port", str(port))
        assert (dump.returncode, dump.stdout, dump.stderr) == (1, "", refused)
        dump = run_cli("rpc", "dump", "127.0.0.1", env_extra={"RPCLATCH_RPCBIND_PORT": str(port)})
        assert (dump.returncode, dump.stdout, dump.stderr) == (1, "", refused)
        ping = run_cli("rpc", "ping", "127.0.0.1", "nfs", "4", env_extra={"RPCLATCH_RPCBIND_PORT": str(port)})
        assert (ping.returncode, ping.stderr) == (
            1,
            f"rpclatch: error: 127.0.0.1: connection refused on "
            f"port {port} (is rpcbind running? use --port)\n",
        )
        ping = run_cli("rpc", "ping", "127.0.0.1", "nfs", "4", "--rpcbind-port", str(port))
        assert (ping.returncode, ping.stderr) == (
            1,
            f"rpclatch: error: 127.0.0.1: connection refused on "
            f"port {port} (is rpcbind running? use --port)\n",
        )
    bad = run_cli("rpc", "dump", "127.0.0.1", env_extra={"RPCLATCH_RPCBIND_PORT": "http"})
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "RPCLATCH_RPCBIND_PORT" in bad.stderr
    for how in (("--rpcbind-socket", str(missing)), ()):
        serve = run_cli(
            "rpc",
            "serve",
            "--register",
            *how,
            env_extra={} if how else {"RPCLATCH_RPCBIND_SOCKET": str(missing)},
        )
        assert serve.returncode == 1 and serve.stderr.count("\n") == 1, serve.stderr
        assert serve.stderr.startswith(
            f"rpclatch: error: cannot register with the local rpcbind ({missing}): rpcbind: "
        ), serve.stderr
        assert "Traceback" not in serve.stderr and not missing.exists()
    helps = run_cli("rpc", "serve", "--help").stdout + run_cli("rpc", "ping", "--help").stdout
    assert "RPCLATCH_RPCBIND_SOCKET" in helps and "RPCLATCH_RPCBIND_PORT" in helps


def test_ping_with_a_flavor_the_server_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    with server_thread(sec=("sys",)) as (tcp, _udp):
        assert main(["rpc", "ping", "127.0.0.1", str(PROG), "1", "--port", str(tcp), "--sec", "sys"]) == 0
        assert main(["rpc", "ping", "127.0.0.1", str(PROG), "1", "--port", str(tcp)]) == 1
    captured = capsys.readouterr()
    assert captured.out == f"program {PROG} version 1 ready and waiting\n"
    assert captured.err == "rpclatch: error: 127.0.0.1: authentication failed: AUTH_BADCRED\n"


def signal_storm(proc: subprocess.Popen[str], limit: float = 30.0) -> None:
    """SIGTERM, then SIGTERM again every 2 ms until ``proc`` exits: repeated signals land while it
    cleans up (``timeout`` signals the process and then its whole process group)."""
    deadline = time.monotonic() + limit
    while proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.002)


def test_serve_register_survives_repeated_sigterm(rpcbind: object) -> None:
    """Issue #10 item 19: the cleanup (closing, rpcbind unregistration) runs to its end whatever
    signals arrive meanwhile, and the process exits normally."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rpclatch.cli", "rpc", "serve", "--register"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "(registered with rpcbind)" in first, first
        signal_storm(proc)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listed = subprocess.run(
            [RPCINFO, "-p", "127.0.0.1"], capture_output=True, text=True, check=True
        ).stdout
        stale = any(line.split()[:2] == [str(PROG), "1"] for line in listed.splitlines())
        if stale:  # clean up after a failed run: the registration is ours
            subprocess.run([RPCINFO, "-d", str(PROG), "1"], capture_output=True, check=False)
    assert (proc.returncode, out.strip().splitlines()[-1]) == (0, "stopped"), err
    assert "Traceback" not in err
    assert not stale


def test_serve_write_timeout_aborts_a_client_that_never_reads() -> None:
    """`rpc serve --write-timeout 1`: a client that asks for big SOURCE replies and never reads
    them is cut off after a second (issue #10 item 2), and the server keeps serving others."""
    from rpclatch.rpc.messages import CallMessage
    from rpclatch.rpc.record import encode_record
    from rpclatch.rpc.testprog import PROC_SOURCE

    proc = subprocess.Popen(
        [sys.executable, "-m", "rpclatch.cli", "rpc", "serve", "--tcp", "--write-timeout", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        port = int(first.split("tcp 127.0.0.1:")[1].split(";")[0].split(",")[0])
        with socket.create_connection(("127.0.0.1", port)) as slow:
            calls = (
                CallMessage(i, PROG, 1, PROC_SOURCE, args=struct.pack(">I", 16 << 20)).encode()
                for i in range(4)
            )
            slow.sendall(b"".join(encode_record(c) for c in calls))
            time.sleep(4)  # well past the write timeout, without reading a byte
            ping = run_cli("rpc", "ping", "127.0.0.1", str(PROG), "1", "--port", str(port))
            assert ping.returncode == 0, ping.stderr
            slow.settimeout(30)
            closed = False
            try:
                while slow.recv(1 << 20):
                    pass
                closed = True
            except ConnectionResetError:
                closed = True
            assert closed
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "took no reply bytes for 1 s" in err, err
