"""BYPASS-OR-PROTECT for the NFSv4 client's connection hook (``rpclatch nfs ... --sec auto``):
:data:`rpclatch.nfs4.security.ConnectionSecurityHook` runs once per NFS connection, before any NFS
traffic, and answers it from the policy table (:mod:`rpclatch.connect.policy`).

:class:`KernelConnectionSecurity` is the hook with a key manager (``rpclatch ipsec keyd``): each
NFS connection is a :class:`~rpclatch.connect.client.ProtectedConnection` on the kernel world
(:class:`rpclatch.connect.kernel.KernelClientWorld`): bound source port, CREATE_CONNECTION_LATCH
for the exact 5-tuple, connect, RPCSEC_GSS INIT, BIND_CHANNEL, the table's row. The NFS client
then uses that connection and that RPCSEC_GSS context as they are. :func:`connection_security`
is the hook without one: IKE is not attempted, the "not latched" row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from rpclatch.connect.client import ProtectedConnection
from rpclatch.connect.gss import RpcsecGssConnector, RpcsecGssContext
from rpclatch.connect.policy import BindOutcome, ConnectPolicy, LatchOutcome, decide
from rpclatch.connect.record import SecurityRecord
from rpclatch.connect.world import ConnectError, RpcLink
from rpclatch.gss.client import VersionPolicy
from rpclatch.gss.provider import Provider
from rpclatch.gss.wire import Service
from rpclatch.nfs4 import const as c
from rpclatch.nfs4.security import ConnectionSecurity, SecFlavor, default_connection_security

if TYPE_CHECKING:
    from rpclatch.connect.kernel import KernelClientWorld

log = logging.getLogger(__name__)

#: Why the protection request is not made without a key manager: the protection error recorded.
NO_KERNEL_BACKEND = (
    "no key manager to ask (no `rpclatch ipsec keyd` control socket; give one with --keyd); "
    "IKE was not attempted, not latched"
)

#: ``(record, seconds)``: called with each connection's security record and how long connecting took.
RecordCallback = Callable[[SecurityRecord, float], None]


def _allowed(service: Service) -> tuple[SecFlavor, ...]:
    """The flavors for the DATA service the table chose, that one first (the policy's order)."""
    if service is Service.PRIVACY:
        return (SecFlavor.KRB5P, SecFlavor.KRB5I)
    return (SecFlavor.KRB5I, SecFlavor.KRB5P)


class _RecordingConnector(RpcsecGssConnector):
    """:class:`RpcsecGssConnector` that remembers the last context it made: the one the policy
    kept (a row that destroys the context makes a new one after it)."""

    last: RpcsecGssContext | None = None

    async def establish(self, link: RpcLink, *, want_v2: bool) -> RpcsecGssContext:
        ctx = await super().establish(link, want_v2=want_v2)
        self.last = ctx
        return ctx


class KernelConnectionSecurity:
    """The ``--sec auto`` connection hook on real sockets with a key manager (see the module
    docstring). ``world``: the kernel world (started or not; :meth:`close` closes it).
    ``target``: the server's RPCSEC_GSS name. ``policy``: the knobs (its ``port`` is replaced by
    the NFS port). ``provider``: the user's Kerberos credentials. ``gss_versions``: the local
    RPCSEC_GSS version policy (:class:`~rpclatch.connect.gss.RpcsecGssConnector`). ``on_record``
    sees every connection's record; :attr:`records` keeps them.

    The flavor the table chose (krb5p or krb5i, bound to the latch or not) is the one the NFS
    client gets already established; ``allowed`` lists it first, so SECINFO picks it when the
    server offers it. Explicit ``--sec`` values bypass all this (plain TCP)."""

    def __init__(
        self,
        world: KernelClientWorld,
        target: str,
        provider: Provider,
        policy: ConnectPolicy | None = None,
        *,
        gss_versions: VersionPolicy = VersionPolicy.PREFER_V2,
        on_record: RecordCallback | None = None,
    ) -> None:
        self.world = world
        self.target = target
        self.provider = provider
        self.policy = policy or ConnectPolicy()
        self.gss_versions = gss_versions
        self.on_record = on_record
        self.records: list[SecurityRecord] = []
        self.connections: list[ProtectedConnection] = []

    async def __call__(self, host: str, port: int, sec: str) -> ConnectionSecurity:
        if sec != "auto":
            return await default_connection_security(host, port, sec)
        policy = replace(self.policy, port=port)
        connector = _RecordingConnector(
            self.provider, self.target, c.NFS4_PROGRAM, c.NFS_V4, policy.fallback, versions=self.gss_versions
        )
        pc = ProtectedConnection(self.world, connector, policy)
        t0 = time.monotonic()
        try:
            record = await pc.aconnect()
        except ConnectError as exc:
            # a refused or unreachable server is an ordinary socket error to the NFS client (it
            # retries those while reconnecting, and explains them in one line)
            if isinstance(exc.__cause__, OSError):
                raise exc.__cause__ from exc
            raise
        elapsed = time.monotonic() - t0
        self.connections.append(pc)
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record, elapsed)
        link, ctx = pc.link, connector.last
        assert link is not None and ctx is not None
        rpc = getattr(link, "client", None)
        if rpc is None:
            raise ConnectError(f"{type(link).__name__} has no RPC client for the NFS connection")
        auth = ctx.auth(record.gss_service)  # checks the flavor does what the row says
        flavor = SecFlavor(ctx.flavor.service.sec_name)
        return ConnectionSecurity(
            _allowed(ctx.flavor.service),
            rpc=rpc,
            auths={flavor: auth},
            record=record.to_json(),
            prefer_allowed_order=True,
            release=link.close,
        )

    async def close(self) -> None:
        """Close the kernel world (its control connection: what is still latched is released)."""
        await self.world.close()


async def connection_security(
    host: str, port: int, sec: str, policy: ConnectPolicy | None = None
) -> ConnectionSecurity:
    """The connection hook without a key manager: for ``sec == "auto"`` apply the
    BYPASS-OR-PROTECT table; explicit ``--sec`` values are the user's choice and pass through
    unchanged.

    With no key manager to ask (``rpclatch nfs`` without ``--keyd`` and no ``rpclatch ipsec keyd``
    socket at its default path) IKE is not attempted, :data:`NO_KERNEL_BACKEND` is recorded as
    the protection error, and the table's "not latched" row applies: RPCSEC_GSS privacy or
    integrity (krb5p, then krb5i, or the reverse when the policy asks for integrity only) without
    channel binding (:class:`KernelConnectionSecurity` is the hook with one). AUTH_SYS and krb5
    without protection are not offered automatically (the NFS client explains what the server
    wants if it insists on them). The order is the policy's, not the server's:
    ``prefer_allowed_order`` makes the client take the first of ``allowed`` that SECINFO offers,
    so a server listing krb5i before krb5p still gets krb5p when privacy is configured."""
    if sec != "auto":
        return await default_connection_security(host, port, sec)
    pol = policy or ConnectPolicy(port=port)
    latch, bind = LatchOutcome.NOT_LATCHED, BindOutcome.NOT_ATTEMPTED
    decision = decide(latch, bind)
    service = decision.service_for(pol.fallback)
    allowed = _allowed(service)
    record = {
        "peer": f"{host}:{port}",
        "latched": False,
        "latch_outcome": latch.name,
        "bind_outcome": bind.name,
        "bound": False,
        "gss_service": service.sec_name,
        "protection_error": NO_KERNEL_BACKEND if pol.try_ipsec else None,
        "reason": decision.reason,
    }
    return ConnectionSecurity(allowed, record=record, prefer_allowed_order=True)
