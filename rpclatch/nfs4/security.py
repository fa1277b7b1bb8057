"""Choosing the RPC security flavor for NFSv4 (RFC 7530 §3.3, §16.31; RFC 8881 §2.6, §18.45).

Three pieces, each replaceable:

* :class:`SecFlavor` -- the flavors rpclatch can speak (``sys``, ``krb5``, ``krb5i``, ``krb5p``)
  and their secinfo4 triples;
* :func:`allowed_flavors` / :func:`choose_from_secinfo` -- the ``--sec`` policy: which flavors a
  user permits, and which of the server's SECINFO answer (in the server's order of preference) to
  use;
* :class:`ConnectionSecurity` + :data:`ConnectionSecurityHook` -- *the* hook deciding the security
  of one connection before any NFS traffic: which socket to use (e.g. one the BYPASS-OR-PROTECT
  connect latched to an IPsec SA) and which flavors are acceptable on it.
  :func:`default_connection_security` is the plain-TCP version; rpclatch.connect plugs in here.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from rpclatch.gss.wire import Service
from rpclatch.nfs4 import const as c
from rpclatch.nfs4.const import rpc_gss_svc_t
from rpclatch.nfs4.errors import Nfs4SecurityError
from rpclatch.nfs4.types import rpcsec_gss_info, secinfo4
from rpclatch.rpc.messages import AuthFlavor


class SecFlavor(Enum):
    """A security flavor rpclatch's NFSv4 client supports (RFC 7530 §3.2.1.1, Table 2); the
    Kerberos V5 ones are named by their RPCSEC_GSS service (:attr:`rpclatch.gss.wire.Service.sec_name`)."""

    SYS = "sys"
    KRB5 = Service.NONE.sec_name
    KRB5I = Service.INTEGRITY.sec_name
    KRB5P = Service.PRIVACY.sec_name

    @property
    def is_gss(self) -> bool:
        return self is not SecFlavor.SYS

    @property
    def service(self) -> Service | None:
        """The RPCSEC_GSS service of a Kerberos V5 flavor, None for ``sys``."""
        return None if self is SecFlavor.SYS else Service.from_sec_name(self.value)

    @property
    def gss_service(self) -> rpc_gss_svc_t | None:
        """:attr:`service` as NFSv4's ``rpc_gss_svc_t`` (RFC 7531: the same numbers)."""
        service = self.service
        return None if service is None else rpc_gss_svc_t(int(service))

    def secinfo(self) -> secinfo4:
        svc = self.gss_service
        if svc is None:
            return secinfo4(AuthFlavor.AUTH_SYS)
        return secinfo4(AuthFlavor.RPCSEC_GSS, rpcsec_gss_info(c.KRB5_OID, 0, svc))

    @classmethod
    def from_secinfo(cls, entry: secinfo4) -> SecFlavor | None:
        """The flavor a secinfo4 entry names, or None when we cannot speak it."""
        try:
            return cls(entry.describe())
        except ValueError:
            return None


#: ``--sec`` values: ``auto`` lets the server's SECINFO preference decide among these, strongest
#: first when we must guess (NFSv4.0 WRONGSEC at PUTROOTFH, RFC 7530 §16.31.5).
AUTO_ORDER: tuple[SecFlavor, ...] = (SecFlavor.KRB5P, SecFlavor.KRB5I, SecFlavor.KRB5, SecFlavor.SYS)
SEC_CHOICES: tuple[str, ...] = ("auto", *(f.value for f in SecFlavor))


def allowed_flavors(sec: str) -> tuple[SecFlavor, ...]:
    """The flavors a ``--sec`` value permits (``auto`` = all of them)."""
    if sec == "auto":
        return AUTO_ORDER
    try:
        return (SecFlavor(sec),)
    except ValueError:
        raise ValueError(f"unknown security flavor {sec!r}; use one of {', '.join(SEC_CHOICES)}") from None


def acceptable_flavors(
    offered: Sequence[secinfo4], allowed: Sequence[SecFlavor], *, prefer_allowed_order: bool = False
) -> list[SecFlavor]:
    """Flavors both sides accept, best first: the server's SECINFO order (RFC 7530 §16.31.4), or
    the order of ``allowed`` when ``prefer_allowed_order``."""
    supported = [f for f in (SecFlavor.from_secinfo(e) for e in offered) if f is not None]
    if prefer_allowed_order:
        return [f for f in allowed if f in supported]
    return [f for f in supported if f in allowed]


def choose_from_secinfo(
    offered: Sequence[secinfo4],
    allowed: Sequence[SecFlavor],
    *,
    path: str = "",
    sec: str = "auto",
    prefer_allowed_order: bool = False,
) -> SecFlavor:
    """The first entry of the server's SECINFO list (its preference order, RFC 7530 §16.31.4) that
    we support and ``allowed`` permits (or the first of ``allowed`` the server offers, with
    ``prefer_allowed_order``). Raises :class:`Nfs4SecurityError` with advice otherwise."""
    both = acceptable_flavors(offered, allowed, prefer_allowed_order=prefer_allowed_order)
    if both:
        return both[0]
    supported = [f for f in (SecFlavor.from_secinfo(e) for e in offered) if f is not None]
    names = tuple(e.describe() for e in offered)
    where = f" for {path}" if path else ""
    if supported:
        need = supported[0].value
        raise Nfs4SecurityError(
            f"server requires {' or '.join(f.value for f in supported)}{where}; "
            f"rerun with --sec {need} or --sec auto",
            path,
            names,
        )
    raise Nfs4SecurityError(
        f"server offers only {', '.join(names) or 'nothing'}{where}, none of which rpclatch supports",
        path,
        names,
    )


@dataclass
class ConnectionSecurity:
    """What the connection hook decided for one NFS connection.

    ``sock``: an already connected socket to use (None = the client connects by itself).
    ``allowed``: the flavors acceptable on this connection, in our order of preference.
    ``channel``: the secure channel the connection is latched to (``rpclatch.gss.channel.Channel``),
    so that RPCSEC_GSS v2 can bind to it; None for plain TCP.
    ``record``: free-form details for reports (e.g. a ``rpclatch.connect.SecurityRecord``).
    ``prefer_allowed_order``: when SECINFO offers several allowed flavors, take the first in
    ``allowed`` (our order) instead of the server's first (RFC 7530 §16.31.4 order, the default).
    ``rpc``: an RPC client (``rpclatch.rpc.aio.RpcStreamClient``) the hook already connected and
    used, e.g. to run the connect policy's RPCSEC_GSS steps on the latched connection; it is used
    instead of ``sock``. ``auths``: RPCSEC_GSS flavors the hook already established on ``rpc``
    (bound to its channel or not, as the policy decided); the connection uses them as they are.
    ``release``: called once when the connection ends or is replaced (e.g. releases its latch).
    """

    allowed: tuple[SecFlavor, ...]
    sock: socket.socket | None = None
    channel: Any = None
    record: dict[str, Any] = field(default_factory=dict)
    prefer_allowed_order: bool = False
    rpc: Any = None
    auths: dict[SecFlavor, Any] = field(default_factory=dict)
    release: Callable[[], None] | None = None


#: ``hook(host, port, sec) -> ConnectionSecurity``: runs once per connection before NFS traffic.
ConnectionSecurityHook = Callable[[str, int, str], Awaitable[ConnectionSecurity]]


async def default_connection_security(host: str, port: int, sec: str) -> ConnectionSecurity:
    """Plain TCP: no socket of our own, the flavors ``--sec`` allows."""
    return ConnectionSecurity(allowed_flavors(sec))
