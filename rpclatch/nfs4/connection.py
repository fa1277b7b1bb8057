"""One TCP connection to an NFSv4 server and the RPC credentials used on it.

The connection is made through a :data:`~rpclatch.nfs4.security.ConnectionSecurityHook` (where
BYPASS-OR-PROTECT plugs in) and made again the same way after it was lost. RPCSEC_GSS contexts
belong to the connection: a handle that may be bound to the old channel must not follow us onto a
new one, so reconnecting starts with none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from rpclatch.nfs4 import const as c
from rpclatch.nfs4.errors import Nfs4SecurityError, RequestNotSent
from rpclatch.nfs4.options import Nfs4Options
from rpclatch.nfs4.security import (
    ConnectionSecurity,
    ConnectionSecurityHook,
    SecFlavor,
    default_connection_security,
)
from rpclatch.rpc.aio import RpcStreamClient
from rpclatch.rpc.auth import ClientAuth
from rpclatch.rpc.auth_sys import AuthSysClient
from rpclatch.rpc.errors import RpcConnectionClosed
from rpclatch.rpc.messages import AuthFlavor

log = logging.getLogger(__name__)

#: Backoff between attempts to connect again while the server restarts: start, cap (seconds).
RECONNECT_BACKOFF = (0.2, 2.0)
#: How long closing waits for the server to destroy one RPCSEC_GSS context.
GSS_DESTROY_TIMEOUT = 5.0


class Nfs4Connection:
    """The RPC connection to ``host`` and one :class:`~rpclatch.rpc.auth.ClientAuth` per flavor
    in use on it. Create with :meth:`open`."""

    def __init__(
        self,
        rpc: RpcStreamClient,
        host: str,
        security: ConnectionSecurity,
        options: Nfs4Options,
        *,
        security_hook: ConnectionSecurityHook = default_connection_security,
        gss_provider: Any = None,
    ) -> None:
        self.rpc = rpc
        self.host = host
        self.security = security
        self.options = options
        self.security_hook = security_hook
        self.gss_target = options.target_for(host)
        self.reconnects = 0  # connections made again after the previous one was lost
        self._gss_provider = gss_provider
        self._auths: dict[SecFlavor, ClientAuth] = {}

    @classmethod
    async def open(
        cls,
        host: str,
        options: Nfs4Options,
        *,
        security_hook: ConnectionSecurityHook = default_connection_security,
        gss_provider: Any = None,
    ) -> Nfs4Connection:
        """Ask ``security_hook`` how to reach ``host`` (its socket, the flavors allowed on it),
        then connect. ``gss_provider``: a ``rpclatch.gss.provider.Provider`` (None: python-gssapi
        with the default credential cache, made when the first Kerberos flavor is used)."""
        security = await security_hook(host, options.port, options.sec)
        rpc = await cls._connect(host, options, security)
        return cls(rpc, host, security, options, security_hook=security_hook, gss_provider=gss_provider)

    @staticmethod
    async def _connect(host: str, options: Nfs4Options, security: ConnectionSecurity) -> RpcStreamClient:
        if security.rpc is not None:  # the hook connected already (e.g. through a latch)
            rpc: RpcStreamClient = security.rpc
            return rpc
        return await RpcStreamClient.connect_tcp(
            host,
            options.port,
            timeout=options.timeout,
            connect_timeout=options.connect_timeout,
            sock=security.sock,
        )

    @property
    def allowed(self) -> tuple[SecFlavor, ...]:
        """The flavors acceptable on this connection, in our order of preference."""
        return self.security.allowed

    @property
    def closed(self) -> bool:
        return self.rpc.closed

    # ---- calls ------------------------------------------------------------------------------------

    async def rpc_call(self, auth: ClientAuth, proc: int, args: bytes) -> bytes:
        """One NFSv4 RPC. Raises :class:`RequestNotSent` when the connection was already closed:
        the check and the send happen in one step of the event loop, so nothing went out."""
        rpc = self.rpc
        if rpc.closed:
            raise RequestNotSent("the connection was closed before the request was sent")
        return await rpc.call(c.NFS4_PROGRAM, c.NFS_V4, proc, args, auth=auth)

    async def null(self) -> None:
        """NFSPROC4_NULL with AUTH_NONE (a reachability check, RFC 7530 §15.1)."""
        await self.rpc.call(c.NFS4_PROGRAM, c.NFS_V4, c.NFSPROC4_NULL, b"")

    async def compound(self, auth: ClientAuth, args: bytes) -> bytes:
        """One NFSPROC4_COMPOUND with ``auth``; the encoded COMPOUND4res comes back."""
        call = getattr(auth, "call", None)
        if call is not None and getattr(auth, "flavor", None) == AuthFlavor.RPCSEC_GSS:
            # RPCSEC_GSS: the flavor's own call() refreshes an expired context once.
            result: bytes = await call(self.rpc_call, c.NFSPROC4_COMPOUND, args)
            return result
        return await self.rpc_call(auth, c.NFSPROC4_COMPOUND, args)

    async def auth_for(self, flavor: SecFlavor) -> ClientAuth:
        """The ClientAuth of ``flavor`` on this connection, made on first use. A Kerberos flavor
        establishes its RPCSEC_GSS context here (v2 first, v1 fallback inside the flavor, RFC 5403
        §4) and binds it to the connection's secure channel when there is one (RFC 5403 §3.3)."""
        auth = self._auths.get(flavor)
        if auth is not None:
            return auth
        ready: ClientAuth | None = self.security.auths.get(flavor)
        if ready is not None:  # established by the hook on this connection (its policy's choice)
            self._auths[flavor] = ready
            return ready
        auth = AuthSysClient.for_current_process() if flavor is SecFlavor.SYS else await self._gss(flavor)
        self._auths[flavor] = auth
        return auth

    async def _gss(self, flavor: SecFlavor) -> ClientAuth:
        from rpclatch.gss.client import GssClientAuth
        from rpclatch.gss.provider import GssapiProvider

        if self._gss_provider is None:
            self._gss_provider = GssapiProvider()
        service = flavor.service
        assert service is not None  # every flavor but SYS is a Kerberos V5 one
        gss = GssClientAuth(self._gss_provider, self.gss_target, service=service)
        try:
            await gss.establish(self.rpc_call)
        except RequestNotSent:
            raise  # an ordinary lost connection, found before the INIT went out
        except RpcConnectionClosed as exc:
            # Linux nfsd (gssproxy) closes the connection without a reply when it cannot accept
            # the INIT token, typically a principal that is not in its keytab.
            raise Nfs4SecurityError(
                "server closed the connection during RPCSEC_GSS context setup: check the GSS "
                f"target (--gss-target nfs@HOST, now {self.gss_target}) and the server's keytab",
                "",
                (flavor.value,),
            ) from exc
        if self.security.channel is not None:
            try:
                await gss.bind_channel(self.rpc_call, self.security.channel)
            except Exception as exc:  # binding is an upgrade; the flavor still protects
                log.warning("RPCSEC_GSS channel binding failed (%s); using %s", exc, flavor.value)
        return gss

    # ---- losing and closing -----------------------------------------------------------------------

    async def reconnect(self) -> bool:
        """Connect again through the security hook after the connection was lost (e.g. a latch
        went BROKEN and the connection was reset, or nfsd restarted), with no RPC credentials
        carried over. Refused connections are tried again with backoff for ``retry_deadline``
        (the server may be restarting). Returns False when the connection is still open (another
        task reconnected already); callers serialise calls."""
        if not self.rpc.closed:
            return False
        log.warning("connection to %s:%d lost; reconnecting", self.host, self.options.port)
        self._drop_auths()
        with contextlib.suppress(Exception):
            await self.rpc.close()
        self._release()
        deadline = time.monotonic() + self.options.retry_deadline
        delay, cap = RECONNECT_BACKOFF
        while True:
            self.security = await self.security_hook(self.host, self.options.port, self.options.sec)
            try:
                self.rpc = await self._connect(self.host, self.options, self.security)
                break
            except OSError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.info(
                    "reconnect to %s:%d failed (%s); again in %.1f s",
                    self.host,
                    self.options.port,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, cap)
        self.reconnects += 1
        return True

    def _release(self) -> None:
        """Tell the hook the connection it decided for is gone (once)."""
        release, self.security.release = self.security.release, None
        if release is not None:
            with contextlib.suppress(Exception):
                release()

    def _drop_auths(self) -> None:
        old, self._auths = self._auths, {}
        for auth in old.values():
            with contextlib.suppress(Exception):
                auth.close()

    async def close(self) -> None:
        """Destroy the RPCSEC_GSS contexts on the server (RFC 2203 §5.4, while the
        connection is up) and close the connection."""
        for auth in self._auths.values():
            destroy = getattr(auth, "destroy", None)
            if destroy is not None and not self.rpc.closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(destroy(self.rpc_call), GSS_DESTROY_TIMEOUT)
        self._drop_auths()
        try:
            await self.rpc.close()
        finally:
            self._release()
