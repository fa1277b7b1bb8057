"""open_socket(): sockets in a test network namespace, made without fork() and without moving the
calling thread."""

from __future__ import annotations

import fcntl
import ipaddress
import itertools
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from types import FrameType

import pytest

from rpclatch.ipsec.xfrm.netlink import (
    NETLINK_XFRM,
    Action,
    Dir,
    PolicyId,
    PolicyInfo,
    XfrmError,
    XfrmEventSocket,
    XfrmSocket,
)
from rpclatch.ipsec.xfrm.netlink import Selector as XfrmSelector
from rpclatch.ipsec.xfrm.netns import netns_path, open_socket

pytestmark = pytest.mark.root

SIOCGSKNS = 0x894C  # <linux/sockios.h>: an fd of the socket's network namespace
_ids = itertools.count(1)

# os.fork() calls in this process while _FORKS["watch"] is set (at-fork hooks cannot be removed,
# so one hook for the module). pyroute2's netns helpers fork through os.fork(); subprocess does not
# run these hooks (it execs at once), so test helpers may start commands.
_FORKS = {"watch": 0, "count": 0}


def _count_fork() -> None:
    if _FORKS["watch"]:
        _FORKS["count"] += 1


os.register_at_fork(before=_count_fork)


def _ns_inode_of(sock: socket.socket) -> int:
    fd = fcntl.ioctl(sock.fileno(), SIOCGSKNS)
    try:
        return os.fstat(fd).st_ino
    finally:
        os.close(fd)


def _thread_ns_inode() -> int:
    return os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net").st_ino


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 'ip' is not installed")
    name = f"rlnetns-{os.getpid()}-{next(_ids)}"
    subprocess.run(["ip", "netns", "add", name], capture_output=True, check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def test_socket_belongs_to_the_namespace_and_the_caller_stays(netns: str) -> None:
    target = os.stat(netns_path(netns)).st_ino
    mine = _thread_ns_inode()
    assert target != mine
    _FORKS["watch"] += 1
    try:
        before = _FORKS["count"]
        socks = [
            open_socket(netns, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_XFRM),
            open_socket(netns, socket.AF_INET, socket.SOCK_STREAM),
            open_socket(netns, socket.AF_INET6, socket.SOCK_DGRAM),
        ]
        forks = _FORKS["count"] - before
    finally:
        _FORKS["watch"] -= 1
    try:
        assert [_ns_inode_of(s) for s in socks] == [target] * 3
        assert _thread_ns_inode() == mine
        assert forks == 0
        with open_socket(None, socket.AF_INET, socket.SOCK_DGRAM) as here:
            assert _ns_inode_of(here) == mine
    finally:
        for s in socks:
            s.close()


def test_path_form_and_bare_name() -> None:
    assert netns_path("blue") == "/var/run/netns/blue"
    assert netns_path("/proc/1/ns/net") == "/proc/1/ns/net"
    own = f"/proc/self/task/{threading.get_native_id()}/ns/net"
    with open_socket(own, socket.AF_INET, socket.SOCK_DGRAM) as s:
        assert _ns_inode_of(s) == _thread_ns_inode()


def test_missing_namespace_is_an_error_and_is_not_created() -> None:
    name = f"rlnetns-{os.getpid()}-missing"
    with pytest.raises(XfrmError, match=re.escape(f"network namespace {name!r}")):
        open_socket(name, socket.AF_INET, socket.SOCK_DGRAM)
    assert not os.path.exists(netns_path(name))


def test_a_file_that_is_no_namespace_is_refused() -> None:
    with pytest.raises(XfrmError, match="cannot enter network namespace"):
        open_socket("/proc/self/status", socket.AF_INET, socket.SOCK_DGRAM)


# -- the conditions of a full test run ------------------------------------------------------------


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.mark.timeout(120)
def test_xfrm_sockets_with_threads_children_and_a_sigterm_handler(netns: str) -> None:
    """What the UML guest / KDC fixtures leave in the pytest process when tests/ipsec runs after
    them: a console-tail thread that holds its lock while it works, a thread busy with I/O, a child
    process, and a SIGTERM handler that raises KeyboardInterrupt (interop.world installs one while
    a guest is up). Then XFRM sockets are opened and used in a test namespace 150 times.

    With pyroute2's forked helpers (the code before) this hangs: the helper is stopped with SIGTERM
    and waited for without a timeout; when the signal hits it before its exit, the inherited
    handler raises in the helper, which leaves pyroute2 as a copy of this test and runs the
    ``finally`` below, blocking on the tail's lock (held at fork time by a thread the copy does
    not have). The timeout marker then fails the test. Now no socket needs a fork."""
    stop = threading.Event()
    lock = threading.Lock()

    def tail() -> None:
        while not stop.is_set():
            with lock:
                time.sleep(0.002)

    def busy_io() -> None:
        while not stop.is_set():
            with open("/proc/self/stat", "rb") as f:
                f.read()
            logging.getLogger("rpclatch.test.busy").debug("tick")

    threads = [threading.Thread(target=fn, daemon=True) for fn in (tail, busy_io, busy_io)]
    for t in threads:
        t.start()
    child = subprocess.Popen(["sleep", "300"])
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    a, b = ipaddress.IPv4Address("192.0.2.1"), ipaddress.IPv4Address("192.0.2.2")
    _FORKS["watch"] += 1
    before = _FORKS["count"]
    try:
        for i in range(150):
            sel = XfrmSelector.exact(a, 41000 + i, b, 2049, 6)
            with XfrmSocket(netns) as xs:
                xs.add_policy(PolicyInfo(sel, Dir.OUT, Action.BLOCK, 7))
                assert [(p.info.sel, p.info.priority) for p in xs.policies()] == [(sel, 7)]
                assert xs.delete_policy(PolicyId(sel, Dir.OUT)) is True
            events = XfrmEventSocket(netns)
            try:
                assert events.receive() == []
            finally:
                events.close()
    finally:
        forks = _FORKS["count"] - before
        _FORKS["watch"] -= 1
        signal.signal(signal.SIGTERM, old)
        with lock:  # a teardown that takes the tail's lock, as a harness's close() may
            stop.set()
        for t in threads:
            t.join(5)
        child.kill()
        child.wait()
    assert forks == 0
