"""A pair of network namespaces joined by a veth (192.0.2.1/24 <-> 192.0.2.2/24, TEST-NET-1) for
the host-kernel XFRM tests; made per test and always removed. Skips unless root with ``ip``."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

A_ADDR = "192.0.2.1"
B_ADDR = "192.0.2.2"
_ids = itertools.count(1)


@dataclass(frozen=True)
class NsPair:
    a: str
    b: str

    def run(self, ns: str, *argv: str) -> str:
        proc = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True)
        return proc.stdout

    def ip(self, ns: str, *argv: str) -> str:
        proc = subprocess.run(["ip", "-n", ns, *argv], capture_output=True, text=True, check=True)
        return proc.stdout

    def xfrm_stat(self, ns: str) -> dict[str, int]:
        out = self.run(ns, "cat", "/proc/net/xfrm_stat")
        return {k: int(v) for k, v in (line.split() for line in out.splitlines() if line.strip())}


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], capture_output=True, text=True, check=True)


@pytest.fixture
def ns_pair() -> Iterator[NsPair]:
    if os.geteuid() != 0:
        pytest.skip("XFRM tests need root (network namespaces, xfrm_user)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 'ip' is not installed")
    n = next(_ids)
    pair = NsPair(f"rlxfrm-{os.getpid()}-{n}a", f"rlxfrm-{os.getpid()}-{n}b")
    made: list[str] = []
    try:
        for ns in (pair.a, pair.b):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("-n", pair.a, "link", "add", "xa", "type", "veth", "peer", "name", "xb", "netns", pair.b)
        for ns, ifname, addr in ((pair.a, "xa", A_ADDR), (pair.b, "xb", B_ADDR)):
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
            _ip("-n", ns, "link", "set", ifname, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield pair
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
