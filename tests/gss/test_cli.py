"""The CLI parts of the GSS layer: ``rpclatch realm up`` and ``rpclatch rpc ping/serve --sec krb5*``.

Each test starts the real processes itself and stops them by PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from rpclatch.gss.realm import ThrowawayRealm


def _start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "rpclatch.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


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
        exports = dict(line[len("export "):].split("=", 1) for line in lines if line.startswith("export "))
        tmpdir = os.path.dirname(exports["KRB5_CONFIG"])
        env = {**os.environ, **exports}
        subprocess.run(["kinit", "-c", os.path.join(tmpdir, "cc.test"), "dave"], input="pw-dave-7\n",
                       env=env, capture_output=True, text=True, check=True, timeout=20)
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
    server = _start(["rpc", "serve", "--tcp", "--port", str(port), "--sec", "krb5i"], env)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "server did not start"
                time.sleep(0.1)
        for sec in ("krb5", "krb5i", "krb5p"):
            ping = subprocess.run(
                [sys.executable, "-m", "rpclatch.cli", "rpc", "ping", "127.0.0.1", "rpclatch_test", "1",
                 "--port", str(port), "--sec", sec], env=env, capture_output=True, text=True, timeout=30)
            assert ping.returncode == 0, ping.stderr
            assert "version 1 ready and waiting" in ping.stdout
        # Without credentials: one line saying what is wrong and what to do.
        bad = subprocess.run(
            [sys.executable, "-m", "rpclatch.cli", "rpc", "ping", "127.0.0.1", "rpclatch_test", "1",
             "--port", str(port), "--sec", "krb5i"], env={**env, "KRB5CCNAME": "/nonexistent/cc"},
            capture_output=True, text=True, timeout=30)
        assert bad.returncode == 1
        assert bad.stderr.count("\n") == 1 and "kinit first" in bad.stderr
        # AUTH_NONE is not accepted by a krb5i-only server.
        none = subprocess.run(
            [sys.executable, "-m", "rpclatch.cli", "rpc", "ping", "127.0.0.1", "rpclatch_test", "1",
             "--port", str(port), "--sec", "none"], env=env, capture_output=True, text=True, timeout=30)
        assert none.returncode == 1 and "authentication failed" in none.stderr
    finally:
        _stop(server)


def test_serve_without_keytab_is_a_one_line_user_error() -> None:
    env = {**os.environ, "KRB5_KTNAME": "/nonexistent/keytab", "KRB5_CONFIG": "/nonexistent/krb5.conf"}
    # The installed console script: under ``python -m rpclatch.cli`` the module runs as __main__,
    # whose UserError is another class than rpclatch.cli.UserError.
    script = os.path.join(os.path.dirname(sys.executable), "rpclatch")
    proc = subprocess.run([script, "rpc", "serve", "--tcp", "--sec", "krb5i"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "KRB5_KTNAME" in proc.stderr
