"""Fixtures shared by the whole test suite.

``rpcbind``: a running rpcbind (portmap v2 / rpcbind v3-v4 on 127.0.0.1:111 and
/run/rpcbind.sock). If one already answers it is used as is; otherwise the fixture starts
``rpcbind -w -f`` itself and, at the end of the session, stops exactly that process (by PID).
Skips when rpcbind is not installed or we are not root (it must bind port 111).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

RPCBIND_SOCKET = "/run/rpcbind.sock"


@dataclass(frozen=True)
class RpcbindInstance:
    """Where the local rpcbind listens, and the PID of the one we started (None: already running)."""

    host: str
    port: int
    socket_path: str
    started_pid: int | None


def _rpcbind_answers(timeout: float = 0.5) -> bool:
    """True if something accepts connections on both rpcbind's unix socket and TCP port 111."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(RPCBIND_SOCKET)
        with socket.create_connection(("127.0.0.1", 111), timeout=timeout):
            pass
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def rpcbind() -> Iterator[RpcbindInstance]:
    if _rpcbind_answers():
        yield RpcbindInstance("127.0.0.1", 111, RPCBIND_SOCKET, None)
        return
    exe = shutil.which("rpcbind") or ("/usr/sbin/rpcbind" if os.path.exists("/usr/sbin/rpcbind") else None)
    if exe is None:
        pytest.skip("rpcbind is not installed (apt-get install rpcbind)")
    if os.geteuid() != 0:
        pytest.skip("starting rpcbind needs root (it binds port 111)")
    proc = subprocess.Popen([exe, "-w", "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10.0
        while not _rpcbind_answers():
            if proc.poll() is not None:
                # Lost a race with another test session starting one: use theirs.
                if _rpcbind_answers():
                    break
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"rpcbind exited with {proc.returncode}: {err.strip()}")
            if time.monotonic() > deadline:
                pytest.fail("rpcbind did not start listening within 10 s")
            time.sleep(0.05)
        started = proc.pid if proc.poll() is None else None
        yield RpcbindInstance("127.0.0.1", 111, RPCBIND_SOCKET, started)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stderr is not None:
            proc.stderr.close()
