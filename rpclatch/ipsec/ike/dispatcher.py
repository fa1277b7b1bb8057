"""One host's IKE endpoint: maps datagrams to IKE SAs by SPI, answers new IKE_SA_INIT requests,
and defends the responder with cookies and a half-open limit (RFC 7296 §2.6). Sans-IO like
:class:`~rpclatch.ipsec.ike.sa.IkeSa`: ``receive_datagram``, ``datagrams_to_send``, ``get_timer``,
``handle_timer``, ``next_event``.

Routing: a message whose header has the Initiator flag comes from the original initiator, so we
are the responder and our SPI is the responder SPI; without the flag our SPI is the initiator
SPI. A first IKE_SA_INIT request (responder SPI zero) is matched to an existing half-open SA by
(initiator SPI, source address) -- a retransmission -- or makes a new one.

Under load (more than ``cookie_threshold`` half-open SAs) a new IKE_SA_INIT without a valid
COOKIE gets a stateless COOKIE answer (§2.6); above ``half_open_limit`` it is dropped. While
``refusing`` is set, every new IKE_SA_INIT gets a stateless NO_PROPOSAL_CHOSEN (counted in
``stats.refused_inits``). :meth:`IkeDispatcher.cancel` forgets an SA that is not established yet.
:meth:`IkeDispatcher.peer_unreachable` takes an ICMP port unreachable the shell read for one of
our datagrams: it fails only an initiator's IKE_SA_INIT that nothing answered yet
(``FailureReason.UNREACHABLE``), so a client falls back at once instead of after its timeout.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections import deque
from dataclasses import dataclass

from rpclatch.ipsec.ike import wire as w
from rpclatch.ipsec.ike.config import ChildRequest, Endpoint, IkeConfig
from rpclatch.ipsec.ike.errors import IkeDecodeError, IkeLocalError, NotifyType, UnsupportedCriticalPayload
from rpclatch.ipsec.ike.events import IkeEvent, IkeSaEstablished
from rpclatch.ipsec.ike.sa import IkeSa, IkeState, _random_spi64
from rpclatch.ipsec.model import NullAuthPeer

log = logging.getLogger(__name__)

COOKIE_VERSION = b"\x01"


@dataclass(slots=True)
class DispatcherStats:
    decode_errors: int = 0
    unknown_spi: int = 0
    cookies_sent: int = 0
    bad_cookies: int = 0
    half_open_dropped: int = 0
    refused_inits: int = 0
    #: ICMP port unreachable reports that failed a half-open initiator / that changed nothing
    unreachable_failed: int = 0
    unreachable_ignored: int = 0


class IkeDispatcher:
    """All IKE SAs of one local endpoint (see the module docstring). The cookie secret is
    ``cookie_secret`` or ``os.urandom`` (never ``IkeConfig.entropy``)."""

    def __init__(
        self,
        config: IkeConfig,
        local: Endpoint,
        *,
        cookie_threshold: int = 64,
        half_open_limit: int = 1024,
        cookie_secret: bytes | None = None,
    ) -> None:
        self.config = config
        self.local = local
        self.cookie_threshold = cookie_threshold
        self.half_open_limit = half_open_limit
        self.stats = DispatcherStats()
        #: while True, new IKE_SA_INIT requests are refused statelessly (NO_PROPOSAL_CHOSEN)
        self.refusing = False
        self._secret = cookie_secret if cookie_secret is not None else os.urandom(32)
        self._by_spi: dict[int, IkeSa] = {}
        self._half_open: dict[tuple[int, Endpoint], IkeSa] = {}
        self._out: list[tuple[bytes, Endpoint]] = []
        self._events: deque[tuple[IkeSa, IkeEvent]] = deque()
        self._dead: list[IkeSa] = []

    # ------------------------------------------------------------------ API

    @property
    def sas(self) -> tuple[IkeSa, ...]:
        return tuple(self._by_spi.values())

    @property
    def half_open_count(self) -> int:
        return sum(1 for sa in self._half_open.values() if sa.state is IkeState.HALF_OPEN)

    def initiate(
        self, remote: Endpoint, child: ChildRequest, now: float, *, initial_contact: bool = False
    ) -> IkeSa:
        """Start an IKE SA (and its first CHILD_SA) with ``remote``; ``initial_contact`` as in
        :meth:`IkeSa.initiator`."""
        sa = IkeSa.initiator(self.config, self.local, remote, child, now, initial_contact=initial_contact)
        while sa.spi_i in self._by_spi:  # pragma: no cover - 64 random bits
            sa = IkeSa.initiator(self.config, self.local, remote, child, now, initial_contact=initial_contact)
        self._by_spi[sa.spi_i] = sa
        self._collect(sa, now)
        return sa

    def receive_datagram(self, data: bytes, remote: Endpoint, now: float) -> None:
        """Route one datagram; never raises for bad input."""
        try:
            header = w.Header.decode(data)
        except IkeDecodeError:
            self.stats.decode_errors += 1
            return
        if (
            header.from_initiator
            and not header.is_response
            and header.exchange == w.ExchangeType.IKE_SA_INIT
            and header.spi_r == 0
        ):
            self._on_init(data, header, remote, now)
            return
        our_spi = header.spi_r if header.from_initiator else header.spi_i
        sa = self._by_spi.get(our_spi)
        if sa is None:
            # §2.21.4: INVALID_IKE_SPI may be sent, but unprotected answers are an amplification
            # and spoofing vector; this core stays silent and counts
            self.stats.unknown_spi += 1
            return
        sa.receive_datagram(data, remote, now)
        self._collect(sa, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Endpoint]]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> tuple[IkeSa, IkeEvent] | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        times = [t for sa in self._by_spi.values() if (t := sa.get_timer()) is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        for sa in list(self._by_spi.values()):
            t = sa.get_timer()
            if t is not None and t <= now:
                sa.handle_timer(now)
                self._collect(sa, now)

    def cancel(self, sa: IkeSa, now: float) -> None:
        """Forget ``sa``, one of ours not established yet (INIT_SENT, AUTH_SENT, HALF_OPEN),
        without sending anything: it reports ``IkeSaFailed(CANCELLED)`` and is no longer routed
        (a late answer counts as ``unknown_spi``). IkeLocalError for any other SA."""
        if self._by_spi.get(sa.our_spi) is not sa:
            raise IkeLocalError(f"IKE SA {sa.ref} is not one of this endpoint's")
        sa.cancel(now)
        self._collect(sa, now)

    def peer_unreachable(self, remote: Endpoint, quoted: bytes, now: float) -> int:
        """The shell read an ICMP port unreachable for a datagram we sent to ``remote`` (its
        original destination, address and port); ``quoted`` is the part of that datagram's UDP
        payload the ICMP message carried (RFC 792 only guarantees 8 octets of the IP payload, the
        UDP header, so it may be empty). When it holds the 8-octet initiator SPI of the IKE header
        (RFC 7296 §3.1), only our IKE SA with that SPI is concerned; a blind attacker would have to
        guess 64 random bits. Each concerned SA decides (:meth:`IkeSa.peer_unreachable`: only a
        still unanswered IKE_SA_INIT request fails, never an established SA -- §2.4, §2.21.4).
        Returns how many SAs failed; never raises."""
        spi = int.from_bytes(quoted[:8], "big") if len(quoted) >= 8 else None
        if spi is not None:
            sa = self._by_spi.get(spi)
            candidates = [sa] if sa is not None and sa.is_initiator and sa.remote == remote else []
        else:
            candidates = [sa for sa in self._by_spi.values() if sa.is_initiator and sa.remote == remote]
        failed = 0
        for sa in candidates:
            if sa.peer_unreachable(now, spi):
                failed += 1
                self._collect(sa, now)
        if failed:
            self.stats.unreachable_failed += failed
        else:
            self.stats.unreachable_ignored += 1
            log.debug("ICMP port unreachable for %s ignored: no unanswered IKE_SA_INIT of ours", remote)
        return failed

    def poll(self, sa: IkeSa, now: float) -> None:
        """Collect what a local request on ``sa`` (delete, liveness) produced."""
        self._collect(sa, now)

    # ------------------------------------------------------------------ internals

    def _collect(self, sa: IkeSa, now: float) -> None:
        new = sa.successor
        if new is not None and new.our_spi not in self._by_spi and not new.finished:
            self._by_spi[new.our_spi] = new  # an IKE SA rekey (§2.18): route the new SPIs too
        self._out.extend(sa.datagrams_to_send(now))
        contact = False
        while (ev := sa.next_event()) is not None:
            self._events.append((sa, ev))
            contact = contact or (isinstance(ev, IkeSaEstablished) and ev.initial_contact)
        if contact:
            self._initial_contact(sa, now)
        if sa.state is not IkeState.HALF_OPEN:
            self._half_open.pop((sa.spi_i, sa.remote), None)
        if sa.finished:
            self._by_spi.pop(sa.our_spi, None)

    def _initial_contact(self, sa: IkeSa, now: float) -> None:
        """§2.4: the peer of ``sa`` asserts it has no other IKE SA with us. For a peer
        authenticated by a key (raw or in a certificate), the other established SAs with that key are
        abandoned. A
        NULL-authenticated peer's claim proves nothing (RFC 7619 §2.3): the other NULL SAs from
        the same address only get a liveness check, which removes them if they are stale."""
        peer = sa.peer
        for other in list(self._by_spi.values()):
            if other is sa or other.state is not IkeState.ESTABLISHED:
                continue
            same_key = (
                peer is not None
                and other.peer is not None
                and peer.public_key is not None
                and other.peer.public_key == peer.public_key
            )
            null_neighbour = (
                isinstance(peer, NullAuthPeer)
                and isinstance(other.peer, NullAuthPeer)
                and other.remote[0] == sa.remote[0]
            )
            if same_key:
                other.abandon(now)
            elif null_neighbour:
                other.check_liveness(now)
            else:
                continue
            self._collect(other, now)

    def cookie_for(self, spi_i: int, nonce: bytes, remote: Endpoint) -> bytes:
        """§2.6: <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>)."""
        mac = hmac.new(self._secret, nonce + remote[0].packed + spi_i.to_bytes(8, "big"), hashlib.sha256)
        return COOKIE_VERSION + mac.digest()

    def _on_init(self, data: bytes, header: w.Header, remote: Endpoint, now: float) -> None:
        existing = self._half_open.get((header.spi_i, remote))
        if existing is not None:
            existing.receive_datagram(data, remote, now)  # a retransmission: same answer again
            self._collect(existing, now)
            return
        try:
            msg = w.decode_message(data)
        except IkeDecodeError as e:
            self.stats.decode_errors += 1
            # §2.21.1: an unparseable IKE_SA_INIT may be answered with an error notify, unprotected
            notify = e.notify or NotifyType.INVALID_SYNTAX
            hdr = w.Header(header.spi_i, 0, 0, w.ExchangeType.IKE_SA_INIT, w.Flags.RESPONSE, 0)
            data_out = bytes((e.payload_type,)) if isinstance(e, UnsupportedCriticalPayload) else b""
            self._out.append((w.encode_message(hdr, [w.NotifyPayload(notify, data_out)]), remote))
            return
        if self.refusing:
            self.stats.refused_inits += 1
            hdr = w.Header(header.spi_i, 0, 0, w.ExchangeType.IKE_SA_INIT, w.Flags.RESPONSE, 0)
            self._out.append(
                (w.encode_message(hdr, [w.NotifyPayload(NotifyType.NO_PROPOSAL_CHOSEN)]), remote)
            )
            return
        half_open = self.half_open_count
        if half_open >= self.half_open_limit:
            self.stats.half_open_dropped += 1
            log.debug("IKE_SA_INIT from %s dropped: %d half-open SAs", remote, half_open)
            return
        if half_open >= self.cookie_threshold:
            nonce = next((p for p in msg.payloads if isinstance(p, w.NoncePayload)), None)
            if nonce is None:
                self.stats.decode_errors += 1
                return
            want = self.cookie_for(header.spi_i, nonce.data, remote)
            first = msg.payloads[0] if msg.payloads else None
            got = (
                first.data
                if isinstance(first, w.NotifyPayload) and first.notify_type == NotifyType.COOKIE
                else None
            )
            if got is None or not secrets.compare_digest(got, want):
                if got is not None:
                    self.stats.bad_cookies += 1
                self.stats.cookies_sent += 1
                hdr = w.Header(header.spi_i, 0, 0, w.ExchangeType.IKE_SA_INIT, w.Flags.RESPONSE, 0)
                self._out.append((w.encode_message(hdr, [w.NotifyPayload(NotifyType.COOKIE, want)]), remote))
                return
        spi_r = _random_spi64(self.config.entropy)
        while spi_r in self._by_spi:  # pragma: no cover - 64 random bits
            spi_r = _random_spi64(self.config.entropy)
        sa = IkeSa.responder(self.config, self.local, remote, msg, data, now, spi_r=spi_r)
        if sa.finished:
            self.stats.refused_inits += 1
            self._out.extend(sa.datagrams_to_send(now))
            while (ev := sa.next_event()) is not None:
                self._events.append((sa, ev))
            return
        self._by_spi[spi_r] = sa
        self._half_open[(sa.spi_i, remote)] = sa
        self._collect(sa, now)
