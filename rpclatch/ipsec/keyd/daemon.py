"""The key-manager daemon, embeddable: IKE endpoint + latch service + control core + AF_UNIX server.

``daemon = await KeydDaemon.start(config, ike_sock, socket_path, backend=..., keys=...)`` runs it
on the current event loop (tests and the demo start it in-process; ``rpclatch ipsec keyd`` runs
one per host or network namespace); ``await daemon.close()`` stops it: the control socket goes
(its clients' latches are released), every IKE SA still up is deleted with its peer, and what
the daemon installed is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path

from rpclatch.ipsec.backend import Backend
from rpclatch.ipsec.ike.config import Endpoint, IkeConfig
from rpclatch.ipsec.ike.dispatcher import IkeDispatcher
from rpclatch.ipsec.ike.errors import IkeError
from rpclatch.ipsec.ike.events import IkeEvent, IkeSaDeleted, IkeSaFailed
from rpclatch.ipsec.ike.sa import IkeState
from rpclatch.ipsec.ike.udp import IkeUdpEndpoint, NegotiatedKeys
from rpclatch.ipsec.keyd.core import KeydCore, KeydLimits
from rpclatch.ipsec.keyd.protocol import ErrorCode
from rpclatch.ipsec.keyd.server import KeydServer
from rpclatch.ipsec.keyd.service import IKE_PORT, IkeLatchService, LatchEvents
from rpclatch.ipsec.model import IkeSaRef, IPAddress


class KeydDaemon:
    """One running key-manager daemon (see the module docstring)."""

    def __init__(self, endpoint: IkeUdpEndpoint, service: IkeLatchService, server: KeydServer) -> None:
        self.endpoint = endpoint
        self.service = service
        self.server = server

    @classmethod
    async def start(
        cls,
        config: IkeConfig,
        ike_sock: socket.socket,
        socket_path: Path,
        *,
        backend: Backend | None = None,
        keys: NegotiatedKeys | None = None,
        limits: KeydLimits | None = None,
        peer_endpoint: Callable[[IPAddress], Endpoint] | None = None,
    ) -> KeydDaemon:
        """Start on ``ike_sock`` (a bound UDP socket, usually port 500; the daemon owns it)."""
        host, port = ike_sock.getsockname()[:2]
        local = (ipaddress.ip_address(host), port)
        ike_sock.setblocking(False)
        if backend is not None and keys is None:
            keys = NegotiatedKeys()
        endpoint = await IkeUdpEndpoint.open(
            IkeDispatcher(config, local), ike_sock, backend=backend, keys=keys
        )
        holder: list[KeydServer] = []

        def established(latch: int) -> None:
            holder[0].deliver(holder[0].core.latch_established(latch))

        def failed(latch: int, code: ErrorCode, detail: str) -> None:
            holder[0].deliver(holder[0].core.latch_failed(latch, code, detail))

        def broken(latch: int, detail: str) -> None:
            holder[0].deliver(holder[0].core.latch_broken(latch, detail))

        service = IkeLatchService(
            endpoint,
            LatchEvents(established, failed, broken),
            local_spki=config.credentials.spki,
            peer_endpoint=peer_endpoint or (lambda addr: (addr, IKE_PORT)),
        )
        server = KeydServer(KeydCore(service, limits), socket_path)
        holder.append(server)
        try:
            await server.start()
        except BaseException:
            endpoint.close()
            raise
        return cls(endpoint, service, server)

    async def close(self, grace: float = 1.0) -> None:
        """Stop serving, then delete each IKE SA that is still up with an INFORMATIONAL DELETE
        (RFC 7296 §1.4.1) so that its peer removes its SAs too, waiting at most ``grace`` seconds
        for the answers; finally close the endpoint, which removes every SA and policy it
        installed (also those of an unanswered DELETE)."""
        await self.server.close()
        self.service.close()
        waits = []
        for sa in list(self.endpoint.dispatcher.sas):
            if sa.state not in (IkeState.ESTABLISHED, IkeState.DELETING):
                continue
            if sa.state is IkeState.ESTABLISHED:
                with contextlib.suppress(IkeError):  # e.g. another exchange is still outstanding
                    self.endpoint.delete(sa)

            def gone(ref: IkeSaRef, event: IkeEvent, spi_i: int = sa.spi_i) -> bool:
                return ref.initiator_spi == spi_i and isinstance(event, IkeSaDeleted | IkeSaFailed)

            waits.append(self.endpoint.wait_for(gone, grace))
        if waits:
            await asyncio.gather(*waits, return_exceptions=True)
        self.endpoint.close()
