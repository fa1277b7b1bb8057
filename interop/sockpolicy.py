"""Per-socket IPsec policies (``setsockopt(IP_XFRM_POLICY)``), the kernel's per-connection SPD entry.

A socket policy overrides the global SPD for one socket (recipes/xfrm-netlink/sockpolicy.py). The
interop suite uses two: BYPASS (no template: the socket sends in clear even where the global SPD
says PROTECT) to check that the Linux server's inbound policy refuses unprotected NFS, and PROTECT
with one ESP transport template (the manually keyed SAs of the guest) to check that an explicit
per-socket policy uses them. Layouts are the x86-64 ``struct xfrm_userpolicy_info`` (168 bytes)
and ``struct xfrm_user_tmpl`` (64 bytes) of ``<linux/xfrm.h>``.
"""

from __future__ import annotations

import socket
import struct

IP_XFRM_POLICY = 17
XFRM_POLICY_IN = 0
XFRM_POLICY_OUT = 1
XFRM_POLICY_ALLOW = 0
XFRM_MODE_TRANSPORT = 0
IPPROTO_ESP = 50
_NO_LIMIT = 2**64 - 1


def _addr(ip: str) -> bytes:
    return socket.inet_aton(ip) + bytes(12)


def userpolicy_info(direction: int, action: int = XFRM_POLICY_ALLOW) -> bytes:
    """``struct xfrm_userpolicy_info`` with an any-to-any IPv4 selector and no lifetime limits."""
    selector = struct.pack("=16s16sHHHHHBBBxxxiI", bytes(16), bytes(16), 0, 0, 0, 0, socket.AF_INET,
                           0, 0, 0, 0, 0)
    lifetime_cfg = struct.pack("=8Q", _NO_LIMIT, _NO_LIMIT, _NO_LIMIT, _NO_LIMIT, 0, 0, 0, 0)
    lifetime_cur = bytes(32)
    tail = struct.pack("=IIBBBBxxxx", 0, 0, direction, action, 0, 0)
    info = selector + lifetime_cfg + lifetime_cur + tail
    assert len(info) == 168, len(info)
    return info


def esp_transport_tmpl(src: str, dst: str, reqid: int) -> bytes:
    """``struct xfrm_user_tmpl`` asking for an ESP transport-mode SA ``src`` -> ``dst``."""
    xfrm_id = struct.pack("=16sIBxxx", _addr(dst), 0, IPPROTO_ESP)
    tmpl = xfrm_id + struct.pack("=Hxx16sIBBBxIII", socket.AF_INET, _addr(src), reqid,
                                 XFRM_MODE_TRANSPORT, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
    assert len(tmpl) == 64, len(tmpl)
    return tmpl


def set_bypass(sock: socket.socket) -> None:
    """This socket's outbound packets skip IPsec whatever the global SPD says."""
    sock.setsockopt(socket.IPPROTO_IP, IP_XFRM_POLICY, userpolicy_info(XFRM_POLICY_OUT))


def set_esp(sock: socket.socket, src: str, dst: str, reqid: int) -> None:
    """This socket's outbound packets need an ESP transport SA ``src`` -> ``dst`` with ``reqid``."""
    sock.setsockopt(socket.IPPROTO_IP, IP_XFRM_POLICY,
                    userpolicy_info(XFRM_POLICY_OUT) + esp_transport_tmpl(src, dst, reqid))
