"""Sockets in another network namespace, without fork().

A socket belongs to the network namespace of the thread that created it, for its whole life.
:func:`open_socket` therefore creates the socket on a short-lived thread of this process that first
enters the target namespace with setns(2) (which moves only the calling *thread*, see setns(2) and
``CLONE_NEWNET``); the thread then ends, so the caller's thread never changes namespace.

Why not pyroute2's ``netns.create_socket``: it forks a helper process
per socket, receives the socket over a unix socket, then stops the helper with SIGTERM and
``waitpid(pid, 0)`` without a timeout. The helper is a fork of the whole Python process: when the
process has a Python SIGTERM handler (e.g. one that raises KeyboardInterrupt for a clean teardown,
as test harnesses install) and SIGTERM arrives while the helper still runs Python code, the handler
runs in the helper, which then leaves pyroute2's code and carries on as a copy of the caller (in
pytest: a second test session tearing down fixtures, where it can block on locks that threads of
the parent held at fork time), while the caller waits for it forever. pyroute2's fork-free
alternatives do not fit either: ``pushns()``/``popns()`` keep the saved namespaces on one
process-wide stack shared by all threads without a lock, and its name lookup creates a missing
namespace (``O_CREAT``) through a forked helper again.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable

from rpclatch.ipsec.xfrm.errors import XfrmError

#: where ``ip netns add NAME`` puts the namespace of a bare name
NETNS_RUN_DIR = "/var/run/netns"
_CLONE_NEWNET = 0x40000000


def netns_path(netns: str) -> str:
    """The file of namespace ``netns``: a bare name lives in /var/run/netns, anything with a slash
    is a path (e.g. /proc/<pid>/ns/net)."""
    return netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)


def _libc_setns() -> Callable[[int, int], None]:
    native = getattr(os, "setns", None)  # Python >= 3.12
    if native is not None:
        return native  # type: ignore[no-any-return]
    libc = ctypes.CDLL(None, use_errno=True)  # the process's own libc (glibc >= 2.14 has setns)
    fn = libc.setns
    fn.argtypes = (ctypes.c_int, ctypes.c_int)
    fn.restype = ctypes.c_int

    def setns(fd: int, nstype: int) -> None:
        if fn(fd, nstype) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return setns


_setns = _libc_setns()


def open_socket(netns: str | None, family: int, type: int, proto: int = 0) -> socket.socket:
    """A new socket ``socket(family, type, proto)`` in network namespace ``netns`` (a name under
    /var/run/netns or a path; None = the caller's namespace). Raises XfrmError when the namespace
    does not exist or cannot be entered, OSError when the socket cannot be made."""
    if netns is None:
        return socket.socket(family, type, proto)
    path = netns_path(netns)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise XfrmError(f"network namespace {netns!r} ({path}): {exc.strerror}") from exc
    result: list[socket.socket] = []
    error: list[BaseException] = []

    def in_namespace() -> None:
        try:
            try:
                _setns(fd, _CLONE_NEWNET)
            except OSError as exc:
                raise XfrmError(f"cannot enter network namespace {netns!r}: {exc.strerror}") from exc
            result.append(socket.socket(family, type, proto))
        except BaseException as exc:  # handed to the caller's thread
            error.append(exc)

    try:
        worker = threading.Thread(target=in_namespace, name=f"netns-socket:{netns}", daemon=True)
        worker.start()
        worker.join()  # setns + socket: nothing in there waits on anything
    finally:
        os.close(fd)
    if error:
        raise error[0]
    return result[0]
