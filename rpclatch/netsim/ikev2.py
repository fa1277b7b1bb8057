"""One simulated host's IKEv2 endpoint: the sans-IO core (:mod:`rpclatch.ipsec.ike`) driven over
the simulator's UDP port 500, its clock and its scheduler (RFC 7296 §2: IKE over UDP 500).

:class:`SimIkeEndpoint` is a thin shell, like the asyncio one in ``rpclatch.ipsec.ike.udp``:
datagrams from UDP 500 go into :meth:`IkeDispatcher.receive_datagram` with ``now`` from the
simulator clock; what the core wants sent is put on the simulated wire as IP/UDP packets; its
single timer deadline is kept armed on the :class:`Scheduler`; its events go to ``on_event``.

Fail fast (the BYPASS-OR-PROTECT fallback needs it): when the network reports the peer
unreachable (ICMP port unreachable, or the peer is known to have no IKE), :meth:`unreachable`
reports the pending IKE SAs to that peer as failed at once, and stops their retransmissions,
instead of waiting out the retransmission schedule. The core has no call to cancel a half-open
IKE SA, so the shell drops the cancelled SA's datagrams and events itself.

Wireshark: :meth:`decryption_rows` gives the ``ikev2_decryption_table`` rows of every IKE SA
this endpoint has keyed (RFC 7296 §2.14 keys), so a capture's ISAKMP payloads can be decrypted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

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
    return IkeConfig(
        config.credentials,
        config.pad,
        config.policy,
        mode=config.mode,
        ike_suites=config.ike_suites,
        esp_suites=config.esp_suites,
        peer_keys=config.peer_keys,
        retransmit_timeout=0.5,
        retransmit_backoff=2.0,
        retransmit_tries=2,
        half_open_timeout=config.half_open_timeout,
        liveness_interval=config.liveness_interval,
        child_rekey_after=config.child_rekey_after,
        ike_rekey_after=config.ike_rekey_after,
        rekey_jitter=config.rekey_jitter,
        trust_anchors=config.trust_anchors,
        certificate_clock=config.certificate_clock,
        nonce_len=config.nonce_len,
    )


class SimIkeEndpoint:
    """An :class:`IkeDispatcher` on ``address``:500 of the simulated network (module docstring).

    ``send`` puts an IP packet on the wire; ``on_event`` gets ``(sa, event)`` for every core event;
    ``on_unreachable`` gets each SA :meth:`unreachable` cancelled."""

    def __init__(
        self,
        scheduler: Scheduler,
        address: IPAddress,
        config: IkeConfig,
        *,
        send: Callable[[IpPacket], None],
        on_event: Callable[[IkeSa, IkeEvent], None],
        on_unreachable: Callable[[IkeSa], None] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.address = address
        self.dispatcher = IkeDispatcher(config, (address, IKE_PORT))
        self._send_packet = send
        self._on_event = on_event
        self._on_unreachable = on_unreachable
        self._timer: Timer | None = None
        #: SAs cancelled by unreachable(), by id() (kept alive so no id is reused while listed)
        self._cancelled: dict[int, IkeSa] = {}
        self._keyed: dict[tuple[int, int], str] = {}

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
        that are not established yet and report them at once (module docstring)."""
        cancelled = [
            sa
            for sa in self.dispatcher.sas
            if sa.remote[0] == peer and sa.state in _SETTING_UP and id(sa) not in self._cancelled
        ]
        for sa in cancelled:
            self._cancelled[id(sa)] = sa
            log.info("ike %s: %s unreachable, IKE SA %016x given up", self.address, peer, sa.spi_i)
            if self._on_unreachable is not None:
                self._on_unreachable(sa)
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
    def _pump(self) -> None:
        now = self.scheduler.now
        dead_spis = {sa.spi_i for sa in self._cancelled.values()}
        for data, (dst, dport) in self.dispatcher.datagrams_to_send(now):
            if int.from_bytes(data[:8], "big") in dead_spis:  # a cancelled SA's (RFC 7296 §3.1 SPIi)
                continue
            dgram = UdpDatagram(IKE_PORT, dport, data)
            self._send_packet(IpPacket(self.address, dst, PROTO_UDP, dgram.encode(self.address, dst)))
        self._note_keys()
        while (item := self.dispatcher.next_event()) is not None:
            sa, event = item
            if id(sa) in self._cancelled:
                continue
            self._on_event(sa, event)
        live = {id(sa) for sa in self.dispatcher.sas}
        self._cancelled = {k: v for k, v in self._cancelled.items() if k in live}
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
