"""One simulated host's IKEv2 endpoint: the sans-IO core (:mod:`rpclatch.ipsec.ike`) driven over
the simulator's UDP port 500, its clock and its scheduler (RFC 7296 §2: IKE over UDP 500).

:class:`SimIkeEndpoint` is a thin shell, like the asyncio one in ``rpclatch.ipsec.ike.udp``:
datagrams from UDP 500 go into :meth:`IkeDispatcher.receive_datagram` with ``now`` from the
simulator clock; what the core wants sent is put on the simulated wire as IP/UDP packets; its
single timer deadline is kept armed on the :class:`Scheduler`; its events go to ``on_event``.

Fail fast (the BYPASS-OR-PROTECT fallback needs it): when the network reports the peer
unreachable (ICMP port unreachable, or the peer is known to have no IKE), :meth:`unreachable`
cancels the IKE SAs to that peer that are still being set up (``IkeDispatcher.cancel``): they
report ``IkeSaFailed(CANCELLED)`` at once and stop retransmitting, instead of waiting out the
retransmission schedule.

Wireshark: :meth:`decryption_rows` gives the ``ikev2_decryption_table`` rows of every IKE SA
this endpoint has keyed (RFC 7296 §2.14 keys), so a capture's ISAKMP payloads can be decrypted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from rpclatch.ipsec.ike import ChildRequest, IkeConfig, IkeDispatcher, IkeEvent, IkeSa, IkeState
from rpclatch.ipsec.ike.export import ikev2_decryption_row
from rpclatch.ipsec.model import IPAddress
from rpclatch.netsim.clock import Scheduler, Timer
from rpclatch.netsim.ip import PROTO_UDP, IpPacket
from rpclatch.netsim.udp import UdpDatagram

log = logging.getLogger(__name__)

#: IKE's UDP port (RFC 7296 §2)
IKE_PORT = 500

#: an initiator's IKE SA before it is authenticated (what :meth:`SimIkeEndpoint.unreachable` cancels)
_SETTING_UP = frozenset({IkeState.INIT_SENT, IkeState.AUTH_SENT})


def sim_ike_config(config: IkeConfig) -> IkeConfig:
    """``config`` with the simulator's short retransmission schedule: 0.5 s doubled twice, then
    one more timeout (3.5 s in all) instead of the RFC-style default of tens of seconds."""
    return replace(config, retransmit_timeout=0.5, retransmit_backoff=2.0, retransmit_tries=2)


class SimIkeEndpoint:
    """An :class:`IkeDispatcher` on ``address``:500 of the simulated network (module docstring).

    ``send`` puts an IP packet on the wire; ``on_event`` gets ``(sa, event)`` for every core event."""

    def __init__(
        self,
        scheduler: Scheduler,
        address: IPAddress,
        config: IkeConfig,
        *,
        send: Callable[[IpPacket], None],
        on_event: Callable[[IkeSa, IkeEvent], None],
    ) -> None:
        self.scheduler = scheduler
        self.address = address
        # the cookie secret from the network's RNG too: a simulated run is reproducible
        self.dispatcher = IkeDispatcher(
            config, (address, IKE_PORT), cookie_secret=scheduler.rng.randbytes(32)
        )
        self._send_packet = send
        self._on_event = on_event
        self._timer: Timer | None = None
        self._keyed: dict[tuple[int, int], str] = {}
        self._dispatching = False

    # -- local requests ---------------------------------------------------------------------
    def initiate(self, peer: IPAddress, request: ChildRequest, *, initial_contact: bool = False) -> IkeSa:
        """Start an IKE SA and its first CHILD_SA with ``peer``:500."""
        sa = self.dispatcher.initiate(
            (peer, IKE_PORT), request, self.scheduler.now, initial_contact=initial_contact
        )
        self._pump()
        return sa

    def poll(self, sa: IkeSa) -> None:
        """Collect what a local request on ``sa`` (delete, create_child, rekey ...) produced."""
        self.dispatcher.poll(sa, self.scheduler.now)
        self._pump()

    def unreachable(self, peer: IPAddress) -> list[IkeSa]:
        """``peer`` has no IKE (ICMP port unreachable, or known absent): cancel the IKE SAs to it
        that are not established yet; each reports ``IkeSaFailed(CANCELLED)`` at once."""
        now = self.scheduler.now
        cancelled = [sa for sa in self.dispatcher.sas if sa.remote[0] == peer and sa.state in _SETTING_UP]
        for sa in cancelled:
            log.info("ike %s: %s unreachable, IKE SA %016x given up", self.address, peer, sa.spi_i)
            self.dispatcher.cancel(sa, now)
        self._pump()
        return cancelled

    # -- the simulated wire -----------------------------------------------------------------
    def datagram(self, src: IPAddress, src_port: int, payload: bytes) -> None:
        """A UDP datagram for port 500 arrived from ``src``:``src_port``."""
        self.dispatcher.receive_datagram(payload, (src, src_port), self.scheduler.now)
        self._pump()

    def decryption_rows(self) -> list[str]:
        """``ikev2_decryption_table`` rows of the IKE SAs keyed so far (module docstring)."""
        self._note_keys()
        return list(self._keyed.values())

    # -- internals --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the endpoint's timer (its owner forgets it, e.g. a daemon restart)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _pump(self) -> None:
        now = self.scheduler.now
        for data, (dst, dport) in self.dispatcher.datagrams_to_send(now):
            dgram = UdpDatagram(IKE_PORT, dport, data)
            self._send_packet(IpPacket(self.address, dst, PROTO_UDP, dgram.encode(self.address, dst)))
        self._note_keys()
        if not self._dispatching:
            # an event handler may call back into the endpoint (a new initiate, a delete): the
            # events that produces are delivered by this loop, in order, not by a nested one
            self._dispatching = True
            try:
                while (item := self.dispatcher.next_event()) is not None:
                    self._on_event(*item)
            finally:
                self._dispatching = False
        self._arm()

    def _note_keys(self) -> None:
        for sa in self.dispatcher.sas:
            if sa.keys is not None and (sa.spi_i, sa.spi_r) not in self._keyed:
                try:
                    row = ikev2_decryption_row(sa.spi_i, sa.spi_r, sa.keys)
                except KeyError:
                    log.info("ike %s: suite of IKE SA %016x has no Wireshark name", self.address, sa.spi_i)
                    continue
                self._keyed[(sa.spi_i, sa.spi_r)] = row

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.dispatcher.get_timer()
        if deadline is not None:
            self._timer = self.scheduler.call_at(max(deadline, self.scheduler.now), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.dispatcher.handle_timer(self.scheduler.now)
        self._pump()
