"""interop.sockpolicy: the per-socket policy bytes, checked against the kernel's layout and the
host kernel itself (no UML guest).

The layouts below are written independently from include/uapi/linux/xfrm.h as ctypes structures
(ctypes applies the C alignment rules, so the padding is the compiler's, not ours). As root, the
policies are also handed to the host kernel (it has XFRM) with setsockopt(IP_XFRM_POLICY) inside a
network namespace this test creates, where a global BLOCK policy shows the BYPASS socket policy
overriding it and an ESP template with no SA holding packets back.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from interop import sockpolicy

REPO_ROOT = Path(__file__).resolve().parents[2]


class XfrmAddress(ctypes.Union):
    """``xfrm_address_t``: union { __be32 a4; __be32 a6[4]; struct in6_addr in6; }."""

    _fields_ = [("a4", ctypes.c_uint32), ("a6", ctypes.c_uint32 * 4)]


class XfrmSelector(ctypes.Structure):
    _fields_ = [
        ("daddr", XfrmAddress),
        ("saddr", XfrmAddress),
        ("dport", ctypes.c_uint16),  # __be16
        ("dport_mask", ctypes.c_uint16),
        ("sport", ctypes.c_uint16),
        ("sport_mask", ctypes.c_uint16),
        ("family", ctypes.c_uint16),
        ("prefixlen_d", ctypes.c_uint8),
        ("prefixlen_s", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("ifindex", ctypes.c_int),
        ("user", ctypes.c_uint32),  # __kernel_uid32_t
    ]


class XfrmLifetimeCfg(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "soft_byte_limit",
            "hard_byte_limit",
            "soft_packet_limit",
            "hard_packet_limit",
            "soft_add_expires_seconds",
            "hard_add_expires_seconds",
            "soft_use_expires_seconds",
            "hard_use_expires_seconds",
        )
    ]


class XfrmLifetimeCur(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("bytes", "packets", "add_time", "use_time")]


class XfrmUserpolicyInfo(ctypes.Structure):
    _fields_ = [
        ("sel", XfrmSelector),
        ("lft", XfrmLifetimeCfg),
        ("curlft", XfrmLifetimeCur),
        ("priority", ctypes.c_uint32),
        ("index", ctypes.c_uint32),
        ("dir", ctypes.c_uint8),
        ("action", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("share", ctypes.c_uint8),
    ]


class XfrmId(ctypes.Structure):
    _fields_ = [("daddr", XfrmAddress), ("spi", ctypes.c_uint32), ("proto", ctypes.c_uint8)]


class XfrmUserTmpl(ctypes.Structure):
    _fields_ = [
        ("id", XfrmId),
        ("family", ctypes.c_uint16),
        ("saddr", XfrmAddress),
        ("reqid", ctypes.c_uint32),
        ("mode", ctypes.c_uint8),
        ("share", ctypes.c_uint8),
        ("optional", ctypes.c_uint8),
        ("aalgos", ctypes.c_uint32),
        ("ealgos", ctypes.c_uint32),
        ("calgos", ctypes.c_uint32),
    ]


XFRM_INF = 2**64 - 1
IPPROTO_ESP = 50


def _set_v4(addr: XfrmAddress, ip: str) -> None:
    ctypes.memmove(ctypes.addressof(addr), socket.inet_aton(ip), 4)


def expected_policy(direction: int, action: int) -> bytes:
    info = XfrmUserpolicyInfo()  # zero-filled, padding included
    info.sel.family = socket.AF_INET
    info.lft.soft_byte_limit = info.lft.hard_byte_limit = XFRM_INF
    info.lft.soft_packet_limit = info.lft.hard_packet_limit = XFRM_INF
    info.dir = direction
    info.action = action
    return bytes(info)


def expected_esp_tmpl(src: str, dst: str, reqid: int) -> bytes:
    tmpl = XfrmUserTmpl()
    _set_v4(tmpl.id.daddr, dst)
    tmpl.id.proto = IPPROTO_ESP
    tmpl.family = socket.AF_INET
    _set_v4(tmpl.saddr, src)
    tmpl.reqid = reqid
    tmpl.mode = 0  # XFRM_MODE_TRANSPORT
    tmpl.aalgos = tmpl.ealgos = tmpl.calgos = 0xFFFFFFFF
    return bytes(tmpl)


def test_c_layout_sizes_are_the_kernels() -> None:
    assert ctypes.sizeof(XfrmSelector) == 56 and ctypes.sizeof(XfrmUserpolicyInfo) == 168
    assert ctypes.sizeof(XfrmUserTmpl) == 64


@pytest.mark.parametrize("direction", [sockpolicy.XFRM_POLICY_IN, sockpolicy.XFRM_POLICY_OUT])
@pytest.mark.parametrize("action", [sockpolicy.XFRM_POLICY_ALLOW, 1])  # 1 = XFRM_POLICY_BLOCK
def test_userpolicy_info_is_struct_xfrm_userpolicy_info(direction: int, action: int) -> None:
    assert sockpolicy.userpolicy_info(direction, action) == expected_policy(direction, action)


@pytest.mark.parametrize(
    ("src", "dst", "reqid"),
    [("198.51.100.1", "198.51.100.2", 7), ("203.0.113.250", "192.0.2.3", 0xDEADBEEF)],
)
def test_esp_transport_tmpl_is_struct_xfrm_user_tmpl(src: str, dst: str, reqid: int) -> None:
    assert sockpolicy.esp_transport_tmpl(src, dst, reqid) == expected_esp_tmpl(src, dst, reqid)


# -- the host kernel -------------------------------------------------------------------------------

NS_SRC, NS_DST = "192.0.2.1", "192.0.2.2"

# Runs inside the namespace: one UDP datagram to NS_DST:9 per socket setup; prints the outcomes.
CHILD = f"""
import errno, json, socket
from interop import sockpolicy

def send(setup):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        setup(s)
        s.sendto(b"x", ("{NS_DST}", 9))
        return "sent"
    except OSError as exc:
        return errno.errorcode[exc.errno]
    finally:
        s.close()

def raw(value):
    return lambda s: s.setsockopt(socket.IPPROTO_IP, sockpolicy.IP_XFRM_POLICY, value)

bad_family = bytearray(sockpolicy.userpolicy_info(sockpolicy.XFRM_POLICY_OUT))
bad_family[40] = 0xFF  # sel.family: neither AF_INET nor AF_INET6
print(json.dumps({{
    "global": send(lambda s: None),
    "bypass": send(sockpolicy.set_bypass),
    "esp": send(lambda s: sockpolicy.set_esp(s, "{NS_SRC}", "{NS_DST}", 5)),
    "bad_family": send(raw(bytes(bad_family))),
    "short": send(raw(sockpolicy.userpolicy_info(sockpolicy.XFRM_POLICY_OUT)[:-1])),
}}))
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def blocking_netns() -> Iterator[str]:
    """A namespace with a veth pair (192.0.2.1/24 on one end, no host at .2) and a global SPD
    entry that BLOCKs UDP 192.0.2.1 -> 192.0.2.2:9. Deleted afterwards, also on failure."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespace, setsockopt IP_XFRM_POLICY)")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's ip")
    name = f"rpclatch-sockpol-{os.getpid()}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "link", "add", "sp0", "type", "veth", "peer", "name", "sp1")
        _ip("-n", name, "addr", "add", f"{NS_SRC}/24", "dev", "sp0")
        _ip("-n", name, "link", "set", "sp0", "up")
        _ip("-n", name, "link", "set", "sp1", "up")
        _ip(
            "-n",
            name,
            "xfrm",
            "policy",
            "add",
            "src",
            f"{NS_SRC}/32",
            "dst",
            f"{NS_DST}/32",
            "proto",
            "udp",
            "dport",
            "9",
            "dir",
            "out",
            "action",
            "block",
        )
        yield name
    finally:
        _ip("netns", "del", name)  # takes the veths, the policy and every socket policy with it


def test_host_kernel_accepts_the_socket_policies(blocking_netns: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        ["ip", "netns", "exec", blocking_netns, sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    assert got["global"] == "EPERM"  # the namespace's SPD blocks the flow...
    assert got["bypass"] == "sent"  # ...the BYPASS socket policy was accepted and overrides it
    assert got["esp"] == "EAGAIN"  # accepted; needs an ESP SA (reqid 5) that no one provides
    # the kernel validates what it is given: these are refused (so "accepted" above means something)
    assert got["bad_family"] == "EINVAL" and got["short"] == "EINVAL"
