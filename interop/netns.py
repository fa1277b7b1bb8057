"""A host-side network namespace made for one interop run, linked to the server world (a UML tap or a veth).

Traffic between the host side and the guest never leaves this namespace: the tap device lives in it
and both ends use TEST-NET-1 addresses (RFC 5737). The namespace is named after the creating PID so
that a later run can delete namespaces left behind by a run that was killed (:func:`remove_stale`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

NAME_PREFIX = "rlnfs"
#: Server namespaces of the host-kernel world (interop.hostkernel).
SERVER_PREFIX = "rlsrv"
_NAME_RE = re.compile(rf"^(?:{NAME_PREFIX}|{SERVER_PREFIX})-(\d+)-\d+$")
_CLONE_NEWNET = 0x40000000
_counter = 0


class NetnsError(Exception):
    """A namespace or link could not be set up."""


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: Stops nfsd of the namespace it runs in (the nfsd file system is per network namespace).
_STOP_NFSD = (
    "grep -qw nfsd /proc/filesystems || exit 0; mkdir -p /run/rl-nfsd && "
    "mount -t nfsd nfsd /run/rl-nfsd && echo 0 >/run/rl-nfsd/threads; umount /run/rl-nfsd"
)


def netns_exists(name: str) -> bool:
    return (Path("/run/netns") / name).exists()


def stop_nfsd(name: str) -> str:
    """Stop the nfsd threads of namespace ``name`` (a server namespace whose init was killed before
    it could); returns "" or the error text. ``ip netns exec`` gives the mount a private mount ns."""
    proc = subprocess.run(
        ["ip", "netns", "exec", name, "sh", "-c", _STOP_NFSD],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return "" if proc.returncode == 0 else proc.stderr.strip() or f"exit status {proc.returncode}"


def remove_stale() -> list[str]:
    """Delete namespaces of this harness (host-side ``rlnfs-*`` and server ``rlsrv-*``) whose creating
    process no longer exists; return their names."""
    removed: list[str] = []
    run_netns = Path("/run/netns")
    if not run_netns.is_dir():
        return removed
    for entry in run_netns.iterdir():
        match = _NAME_RE.match(entry.name)
        if match and not _pid_alive(int(match.group(1))):
            if entry.name.startswith(SERVER_PREFIX):
                stop_nfsd(entry.name)
            with contextlib.suppress(NetnsError):
                _ip("netns", "del", entry.name)
                removed.append(entry.name)
                log.info("removed stale namespace %s", entry.name)
    return removed


class HostNamespace:
    """A network namespace with one link addressed ``addr/prefix``: a tap device ``link_name`` (for a
    UML guest's ``vec0``), or one end of a veth pair whose other end, ``peer_name``, is moved into the
    namespace ``peer_netns`` (the server namespace of the host-kernel world).

    Use as a context manager or call :meth:`close`; closing twice is harmless.
    """

    def __init__(
        self,
        addr: str,
        prefix: int = 24,
        tap_name: str = "rltap0",
        *,
        peer_netns: str | None = None,
        peer_name: str = "vec0",
    ) -> None:
        global _counter
        _counter += 1
        self.name = f"{NAME_PREFIX}-{os.getpid()}-{_counter}"
        self.addr = addr
        self.link_name = tap_name if peer_netns is None else "eth0"
        self._closed = False
        _ip("netns", "add", self.name)
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            if peer_netns is None:
                _ip("-n", self.name, "tuntap", "add", self.link_name, "mode", "tap")
            else:
                _ip(
                    "-n",
                    self.name,
                    "link",
                    "add",
                    self.link_name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    peer_name,
                    "netns",
                    peer_netns,
                )
            _ip("-n", self.name, "addr", "add", f"{addr}/{prefix}", "dev", self.link_name)
            _ip("-n", self.name, "link", "set", self.link_name, "up")
        except NetnsError:
            self.close()
            raise

    def __enter__(self) -> HostNamespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            _ip("netns", "del", self.name)
        except NetnsError as exc:
            log.warning("could not delete namespace %s: %s", self.name, exc)

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed so that it runs inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
        input_data: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace; output captured as text, never raises on exit status."""
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        return subprocess.run(
            self.wrap(argv),
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            input=input_data,
            check=False,
        )

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Move the *calling thread* into the namespace for the block (setns(2) is per thread).

        Sockets created inside the block (also by libraries such as libkrb5) belong to the namespace
        and keep belonging to it after the block ends.
        """
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        own = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if libc.setns(target, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise NetnsError(f"setns({self.name}): {os.strerror(err)}")
            try:
                yield
            finally:
                if libc.setns(own, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise NetnsError(f"setns back to the original namespace: {os.strerror(err)}")
        finally:
            os.close(target)
            os.close(own)
