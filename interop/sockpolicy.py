"""Per-socket IPsec policies (``setsockopt(IP_XFRM_POLICY)``), the kernel's per-connection SPD entry.

A socket policy overrides the global SPD for one socket (``xfrm_sk_policy_lookup`` in
net/xfrm/xfrm_policy.c). The interop suite uses two: BYPASS (no template: the socket sends in
clear even where the global SPD says PROTECT) to check that the Linux server's inbound policy
refuses unprotected NFS, and PROTECT with one ESP transport template (the manually keyed SAs of
the guest) to check that an explicit per-socket policy uses them. The option value is a
``struct xfrm_userpolicy_info`` (168 bytes) followed by ``struct xfrm_user_tmpl`` s (64 bytes each)
of ``<linux/xfrm.h>``; both are encoded by :mod:`rpclatch.ipsec.xfrm.netlink` (:class:`PolicyInfo`,
:class:`Template`), the same code the xfrm backend uses for its own socket policies.
"""

from __future__ import annotations

import ipaddress
import socket

from rpclatch.ipsec.xfrm.netlink import (
    IP_XFRM_POLICY,
    Action,
    Dir,
    PolicyInfo,
    Selector,
    Template,
    XMode,
    encode_templates,
)

XFRM_POLICY_IN = Dir.IN
XFRM_POLICY_OUT = Dir.OUT
XFRM_POLICY_ALLOW = Action.ALLOW
XFRM_MODE_TRANSPORT = XMode.TRANSPORT


def userpolicy_info(direction: int, action: int = XFRM_POLICY_ALLOW) -> bytes:
    """``struct xfrm_userpolicy_info`` with an any-to-any IPv4 selector and no lifetime limits."""
    return PolicyInfo(Selector.any(socket.AF_INET), direction, action).encode()


def esp_transport_tmpl(src: str, dst: str, reqid: int) -> bytes:
    """``struct xfrm_user_tmpl`` asking for an ESP transport-mode SA ``src`` -> ``dst``."""
    tmpl = Template.esp(ipaddress.IPv4Address(src), ipaddress.IPv4Address(dst), reqid)
    return encode_templates([tmpl])


def set_bypass(sock: socket.socket) -> None:
    """This socket's outbound packets skip IPsec whatever the global SPD says."""
    sock.setsockopt(socket.IPPROTO_IP, IP_XFRM_POLICY, userpolicy_info(XFRM_POLICY_OUT))


def set_esp(sock: socket.socket, src: str, dst: str, reqid: int) -> None:
    """This socket's outbound packets need an ESP transport SA ``src`` -> ``dst`` with ``reqid``."""
    sock.setsockopt(
        socket.IPPROTO_IP,
        IP_XFRM_POLICY,
        userpolicy_info(XFRM_POLICY_OUT) + esp_transport_tmpl(src, dst, reqid),
    )
