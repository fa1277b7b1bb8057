"""The key-manager daemon, embeddable: IKE endpoint + latch service + control core + AF_UNIX server.

``daemon = await KeydDaemon.start(config, ike_sock, socket_path, backend=..., keys=...)`` runs it
on the current event loop (tests and the demo start it in-process; ``rpclatch ipsec keyd`` runs
one per host or network namespace); ``await daemon.close()`` stops it and removes what it
installed.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path

from rpclatch.ipsec.backend import Backend
from rpclatch.ipsec.ike.config import Endpoint, IkeConfig
from rpclatch.ipsec.ike.dispatcher import IkeDispatcher
from rpclatch.ipsec.ike.udp import IkeUdpEndpoint, NegotiatedKeys
from rpclatch.ipsec.keyd.core import KeydCore, KeydLimits
from rpclatch.ipsec.keyd.protocol import ErrorCode
from rpclatch.ipsec.keyd.server import KeydServer
from rpclatch.ipsec.keyd.service import IKE_PORT, IkeLatchService, LatchEvents
from rpclatch.ipsec.model import IPAddress


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

    async def close(self) -> None:
        await self.server.close()
        self.service.close()
        self.endpoint.close()
