"""Independent RPCSEC_GSS v1 servers for the interop tests: MIT kadmind (its RPC library is MIT's
gssrpc) and a small libtirpc server (``tirpc_gss_server.c`` next to this file, built with gcc).

Both run as child processes on 127.0.0.1 only, against the session's shared throwaway realm
(:func:`rpclatch.gss.realm.shared_realm`: libkrb5 reads ``KRB5_CONFIG`` from the environment, so a
second realm in the same process would point some callers at the wrong KDC). Each helper is a
context manager that stops its process by PID and removes what it created, also when start-up
fails half way. :func:`missing_tools` names what is not installed, for a skip reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rpclatch.gss.realm import ThrowawayRealm

HERE = Path(__file__).resolve().parent
TIRPC_SOURCE = HERE / "tirpc_gss_server.c"

KADMIND = "/usr/sbin/kadmind"
KADMIN_LOCAL = "/usr/sbin/kadmin.local"
TIRPC_HEADERS = (
    "/usr/include/tirpc/rpc/svc_auth_gss.h",
    "/usr/include/tirpc/rpc/rpcsec_gss.h",
    "/usr/include/gssapi/gssapi.h",
)

#: How long a peer may take to come up (a bound on waiting, not a timing assertion).
_START_TIMEOUT = 60.0


class PeerError(Exception):
    """An interop peer could not be built or started (its log is in the message)."""


def missing_tools(*, kadmind: bool = False, tirpc: bool = False) -> list[str]:
    """What is missing to run the kadmind and/or libtirpc peers here (empty: all there).

    kadmind comes from Debian's krb5-admin-server, the headers from libtirpc-dev and libkrb5-dev.
    """
    missing: list[str] = []
    if kadmind:
        missing += [p for p in (KADMIND, KADMIN_LOCAL) if not os.access(p, os.X_OK)]
    if tirpc:
        if shutil.which("gcc") is None:
            missing.append("gcc")
        missing += [h for h in TIRPC_HEADERS if not os.path.exists(h)]
    return missing


def _free_tcp_port() -> int:
    """A loopback TCP port that was free a moment ago (kadmind binds it itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM our child by its PID, SIGKILL it if it does not exit."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_for_log(proc: subprocess.Popen[bytes], log: Path, marker: str, what: str) -> str:
    """Poll ``log`` until it contains ``marker``; PeerError if the process exits first."""
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        if marker in text:
            return text
        if proc.poll() is not None:
            raise PeerError(f"{what} exited with {proc.returncode} before it was ready:\n{text}")
        if time.monotonic() > deadline:
            raise PeerError(f"{what} not ready after {_START_TIMEOUT:.0f}s:\n{text}")
        time.sleep(0.05)


# -- MIT kadmind -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kadmind:
    """A running kadmind: RPC program 2112 (KADM) version 2 on ``127.0.0.1:port``."""

    port: int
    #: Host-based name of the service principal kadmind accepts (``kadmin/<host>``).
    target: str
    #: A principal that exists only for these tests (its string attributes carry the echo data).
    scratch_principal: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _kadmin_local(realm: ThrowawayRealm, query: str) -> str:
    proc = subprocess.run(
        [KADMIN_LOCAL, "-q", query],
        env={**os.environ, **realm.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise PeerError(f"kadmin.local -q {query!r} failed: {proc.stderr}")
    return proc.stdout + proc.stderr


def _ensure_principal(realm: ThrowawayRealm, principal: str, flags: str) -> None:
    if f"Principal: {principal}" in _kadmin_local(realm, f"getprinc {principal}"):
        return
    _kadmin_local(realm, f"addprinc {flags} {principal}")
    if f"Principal: {principal}" not in _kadmin_local(realm, f"getprinc {principal}"):
        raise PeerError(f"could not create {principal}")


def _kdc_conf(base: str, realm_name: str, relations: dict[str, str], log: Path) -> str:
    """The realm's kdc.conf (k5test's layout: one relation per line) with ``relations`` set in
    the realm's section and kadmind logging to ``log``."""
    out: list[str] = []
    in_realm = False
    for line in base.splitlines():
        key = line.strip().partition(" = ")[0]
        if line.strip() == f"{realm_name} = {{":
            in_realm = True
            out.append(line)
            out += [f"\t\t{k} = {v}" for k, v in relations.items()]
            continue
        if in_realm and line.strip() == "}":
            in_realm = False
        if in_realm and key in relations:
            continue
        if key == "admin_server":
            line = f"\tadmin_server = FILE:{log}"
        out.append(line)
    return "\n".join(out) + "\n"


@contextlib.contextmanager
def running_kadmind(realm: ThrowawayRealm, workdir: Path, admin: str) -> Iterator[Kadmind]:
    """kadmind -nofork on the realm's database, listening on 127.0.0.1 only.

    Adds ``kadmin/<host>`` (kadmind accepts any ``kadmin/*`` service principal of its realm but
    ``kadmin/history``; ``kadmin/admin`` is DISALLOW_TGT_BASED, so a TGT alone cannot reach it) and
    a key-less scratch principal to the realm, and grants ``admin`` (a principal name) every
    kadmin privilege in an ACL of its own. Its profile (``KRB5_KDC_PROFILE``) is a file in
    ``workdir``: the realm's kdc.conf with the ports, listen addresses, ACL and log replaced.
    """
    target_princ = f"kadmin/{realm.hostname}@{realm.realm}"
    scratch = f"rpclatch-interop-strings@{realm.realm}"
    _ensure_principal(realm, target_princ, "-randkey")
    _ensure_principal(realm, scratch, "-nokey")
    workdir.mkdir(parents=True, exist_ok=True)
    acl = workdir / "kadm5.acl"
    acl.write_text(f"{admin} *\n")
    log = workdir / "kadmind.log"
    port, kpasswd_port = _free_tcp_port(), _free_tcp_port()
    conf = workdir / "kdc.conf"
    conf.write_text(
        _kdc_conf(
            Path(realm.env["KRB5_KDC_PROFILE"]).read_text(),
            realm.realm,
            {
                "acl_file": str(acl),
                "kadmind_port": str(port),
                "kadmind_listen": f"127.0.0.1:{port}",
                "kpasswd_port": str(kpasswd_port),
                "kpasswd_listen": f"127.0.0.1:{kpasswd_port}",
                "iprop_enable": "false",
            },
            log,
        )
    )
    env = {**os.environ, **realm.env, "KRB5_KDC_PROFILE": str(conf)}
    console = workdir / "kadmind.console"
    with console.open("wb") as out:
        proc = subprocess.Popen(
            [KADMIND, "-nofork"], env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        _wait_for_log(proc, console, "starting...", "kadmind")
        yield Kadmind(port, f"kadmin@{realm.hostname}", scratch, log)
    finally:
        _stop(proc)


# -- libtirpc svcauth_gss ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TirpcServer:
    """A running ``tirpc_gss_server`` on ``127.0.0.1:port``; its per-call lines are in ``log``."""

    port: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def call_lines(self) -> list[dict[str, str]]:
        """The ``CALL``/``DESTROY`` lines of the log as key=value dicts (plus ``kind``)."""
        lines = []
        for line in self.log_text().splitlines():
            kind, _, rest = line.partition(" ")
            if kind in ("CALL", "DESTROY"):
                fields = dict(item.split("=", 1) for item in rest.split())
                fields["kind"] = kind
                lines.append(fields)
        return lines


def build_tirpc_server(out_dir: Path) -> Path:
    """Compile ``tirpc_gss_server.c`` into ``out_dir``; PeerError with gcc's output on failure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / "tirpc_gss_server"
    cmd = [
        "gcc",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-O1",
        "-I/usr/include/tirpc",
        "-o",
        str(binary),
        str(TIRPC_SOURCE),
        "-ltirpc",
        "-lgssapi_krb5",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise PeerError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    return binary


@contextlib.contextmanager
def running_tirpc_server(
    binary: Path,
    realm: ThrowawayRealm,
    workdir: Path,
    *,
    service: str,
    prog: int,
    vers: int,
    bufsize: int = 0,
) -> Iterator[TirpcServer]:
    """Run the libtirpc server for host-based ``service`` (its key from the realm's keytab,
    ``KRB5_KTNAME``); ``bufsize`` is svc_vc_create's send/receive buffer size (0: libtirpc's
    default)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"tirpc-{bufsize}.log"
    port_file = workdir / f"tirpc-{bufsize}.port"
    with log.open("wb") as err, port_file.open("wb") as out:
        proc = subprocess.Popen(
            [str(binary), service, str(prog), str(vers), str(bufsize)],
            env={**os.environ, **realm.env},
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    try:
        try:
            text = _wait_for_log(proc, port_file, "\n", "tirpc_gss_server")
        except PeerError as exc:
            raise PeerError(f"{exc}\n{log.read_text(errors='replace')}") from None
        word, _, value = text.strip().partition(" ")
        if word != "PORT" or not value.isdigit():
            raise PeerError(f"tirpc_gss_server printed {text!r}, not 'PORT <n>'")
        yield TirpcServer(int(value), log)
    finally:
        _stop(proc)
