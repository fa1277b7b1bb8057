"""A :class:`~rpclatch.ipsec.keyd.core.LatchService` backed by the IKE UDP endpoint.

CREATE_CONNECTION_LATCH starts an IKE SA towards the flow's remote address whose first CHILD_SA
is requested for exactly that 5-tuple (``Selector.for_flow``, RFC 4301 §4.4.1.2 PFP); the endpoint
installs the negotiated SAs and per-flow policies in its backend (XFRM on a real host). The
latch is ESTABLISHED when the CHILD_SA is, and BROKEN when that CHILD_SA or its IKE SA goes away
(RFC 5660 §2.3). FIND_LATCH finds the installed CHILD_SA that a peer negotiated for an accepted
connection. Results reach the core through the three callbacks of :class:`LatchEvents`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rpclatch.ipsec.channel_binding import encode_binding_data
from rpclatch.ipsec.ike.config import ChildRequest, Endpoint
from rpclatch.ipsec.ike.errors import IkeError
from rpclatch.ipsec.ike.events import (
    ChildSa,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    FailureReason,
    IkeEvent,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
)
from rpclatch.ipsec.ike.sa import IkeSa
from rpclatch.ipsec.ike.udp import IkeUdpEndpoint
from rpclatch.ipsec.keyd.core import LatchInfo, ServiceRefusal
from rpclatch.ipsec.keyd.protocol import MAX_TIMEOUT, ErrorCode, Listener
from rpclatch.ipsec.model import (
    FiveTuple,
    IkeSaRef,
    IPAddress,
    RawPublicKeyPeer,
    Selector,
    spki_fingerprint,
)

log = logging.getLogger(__name__)

IKE_PORT = 500


@dataclass(slots=True)
class LatchEvents:
    """Where the service reports asynchronous results (the daemon wires them to the core)."""

    established: Callable[[int], None]
    failed: Callable[[int, ErrorCode, str], None]
    broken: Callable[[int, str], None]


@dataclass(slots=True)
class _Latch:
    flow: FiveTuple | None
    listener: Listener | None
    initiator: bool
    state: str = "LARVAL"
    ike_sa: IkeSaRef | None = None
    child: ChildSa | None = None
    peer_spki: bytes | None = None
    task: asyncio.Task[None] | None = None


_FAILURE_CODES = {
    FailureReason.AUTHENTICATION_FAILED: ErrorCode.PEER_REFUSED,
    FailureReason.TIMEOUT: ErrorCode.IKE_TIMEOUT,
}


class IkeLatchService:
    """Latches over one :class:`IkeUdpEndpoint` (see the module docstring)."""

    def __init__(
        self,
        endpoint: IkeUdpEndpoint,
        events: LatchEvents,
        *,
        local_spki: bytes | None,
        peer_endpoint: Callable[[IPAddress], Endpoint] = lambda addr: (addr, IKE_PORT),
    ) -> None:
        self.endpoint = endpoint
        self.events = events
        self.local_spki = local_spki
        self.peer_endpoint = peer_endpoint
        self._ids = itertools.count(1)
        self.latches: dict[int, _Latch] = {}

    def close(self) -> None:
        for latch in self.latches.values():
            if latch.task is not None:
                latch.task.cancel()
        self.latches.clear()

    # ------------------------------------------------------------------ LatchService

    def create_listener(self, listener: Listener) -> int:
        for other in self.latches.values():
            if other.listener == listener:
                raise ServiceRefusal(ErrorCode.LATCH_EXISTS, "listener already latched")
        handle = next(self._ids)
        self.latches[handle] = _Latch(None, listener, initiator=False, state="LISTENER")
        return handle

    def start_connection(self, flow: FiveTuple, now: float) -> int:
        if any(latch.flow == flow for latch in self.latches.values()):
            raise ServiceRefusal(ErrorCode.LATCH_EXISTS, "flow already latched")
        try:
            sa = self.endpoint.initiate(
                self.peer_endpoint(flow.remote_addr), ChildRequest(Selector.for_flow(flow))
            )
        except (IkeError, ValueError) as exc:
            raise ServiceRefusal(ErrorCode.POLICY_REFUSED, str(exc)) from None
        handle = next(self._ids)
        latch = _Latch(flow, None, initiator=True, ike_sa=sa.ref)
        self.latches[handle] = latch
        latch.task = asyncio.ensure_future(self._follow(handle, latch))
        return handle

    def find(self, flow: FiveTuple) -> int | None:
        for handle, latch in self.latches.items():
            if latch.flow == flow and latch.state == "ESTABLISHED":
                return handle
        for installed in self.endpoint.installed.values():
            if installed.child.selector.matches(flow):
                ref = installed.sad_entry.ike_sa
                handle = next(self._ids)
                latch = _Latch(flow, None, initiator=False, state="ESTABLISHED", ike_sa=ref)
                latch.child = installed.child
                latch.peer_spki = self._peer_spki(ref)
                self.latches[handle] = latch
                latch.task = asyncio.ensure_future(self._watch(handle, latch))
                return handle
        return None

    def inquire(self, latch: int) -> LatchInfo | None:
        state = self.latches.get(latch)
        if state is None:
            return None
        qop: dict[str, str] = {}
        if state.child is not None:
            qop = {"suite": str(state.child.suite), "mode": str(state.child.mode.name)}
        bindings = None
        if state.peer_spki and self.local_spki and state.state == "ESTABLISHED":
            client, server = (
                (self.local_spki, state.peer_spki) if state.initiator else (state.peer_spki, self.local_spki)
            )
            bindings = encode_binding_data(client, server)
        return LatchInfo(state.state, state.flow, state.peer_spki, qop, bindings)

    def release(self, latch: int) -> None:
        state = self.latches.pop(latch, None)
        if state is None:
            return
        if state.task is not None:
            state.task.cancel()
        if state.initiator and state.ike_sa is not None:
            sa = self._sa(state.ike_sa)
            if sa is not None:
                with contextlib.suppress(IkeError):
                    self.endpoint.delete(sa)

    def status(self) -> dict[str, Any]:
        ike = [
            {"ike_sa": str(sa.ref), "state": sa.state.name, "peer": f"{sa.remote[0]}:{sa.remote[1]}"}
            for sa in self.endpoint.dispatcher.sas
        ]
        children = [
            {
                "ike_sa": str(item.sad_entry.ike_sa),
                "spi_in": f"{spi:#010x}",
                "spi_out": f"{item.child.spi_out:#010x}",
                "selector": str(item.child.selector),
            }
            for spi, item in self.endpoint.installed.items()
        ]
        latches = [
            {
                "latch": handle,
                "state": latch.state,
                "flow": "-" if latch.flow is None else str(latch.flow),
                "peer": "-" if latch.peer_spki is None else spki_fingerprint(latch.peer_spki)[:16],
            }
            for handle, latch in sorted(self.latches.items())
        ]
        return {"ike_sas": ike, "child_sas": children, "latches": latches}

    # ------------------------------------------------------------------ IKE events

    def _sa(self, ref: IkeSaRef) -> IkeSa | None:
        for sa in self.endpoint.dispatcher.sas:
            if sa.ref == ref:
                return sa
        return None

    def _peer_spki(self, ref: IkeSaRef | None) -> bytes | None:
        for event_ref, event in self.endpoint.events:
            if event_ref == ref and isinstance(event, IkeSaEstablished):
                return event.peer.spki_der if isinstance(event.peer, RawPublicKeyPeer) else None
        return None

    async def _follow(self, handle: int, latch: _Latch) -> None:
        assert latch.ike_sa is not None
        spi_i = latch.ike_sa.initiator_spi  # the responder's SPI is not known yet

        def done(event_ref: IkeSaRef, event: IkeEvent) -> bool:
            return event_ref.initiator_spi == spi_i and isinstance(
                event, ChildSaEstablished | ChildSaFailed | IkeSaFailed | IkeSaDeleted
            )

        try:
            event = await self.endpoint.wait_for(done, MAX_TIMEOUT)
        except TimeoutError:
            self.events.failed(handle, ErrorCode.IKE_TIMEOUT, "IKE did not finish")
            return
        if isinstance(event, ChildSaEstablished):
            latch.state = "ESTABLISHED"
            latch.ike_sa = event.ike_sa
            latch.child = event.child
            latch.peer_spki = self._peer_spki(event.ike_sa)
            self.events.established(handle)
            await self._watch(handle, latch)
            return
        latch.state = "BROKEN"
        if isinstance(event, IkeSaFailed):
            code = _FAILURE_CODES.get(event.reason, ErrorCode.IKE_FAILED)
            self.events.failed(handle, code, event.reason.value)
        elif isinstance(event, ChildSaFailed):
            self.events.failed(handle, ErrorCode.POLICY_REFUSED, f"CHILD_SA refused (notify {event.notify})")
        else:
            self.events.failed(handle, ErrorCode.IKE_FAILED, "IKE SA deleted")

    async def _watch(self, handle: int, latch: _Latch) -> None:
        ref, child = latch.ike_sa, latch.child
        spi_in = child.spi_in if child is not None else None

        seen = len(self.endpoint.events)

        def gone(event_ref: IkeSaRef, event: IkeEvent) -> bool:
            if isinstance(event, IkeSaRekeyed):  # the CHILD_SAs move to the new IKE SA (§2.18)
                return event.old == ref
            if event_ref != ref:
                return False
            if isinstance(event, ChildSaDeleted):
                return event.spi_in == spi_in
            return isinstance(event, IkeSaFailed | IkeSaDeleted)

        while True:
            # only events after ``seen``: wait_for also looks at the past ones
            past = {id(e) for _r, e in self.endpoint.events[:seen]}

            def new_and_gone(r: IkeSaRef, e: IkeEvent, past: set[int] = past) -> bool:
                return id(e) not in past and gone(r, e)

            try:
                event = await self.endpoint.wait_for(new_and_gone, 3600)
            except TimeoutError:
                continue
            seen = len(self.endpoint.events)
            if isinstance(event, IkeSaRekeyed):
                ref = latch.ike_sa = event.new
                continue
            break
        latch.state = "BROKEN"
        self.events.broken(handle, type(event).__name__)
