"""One IKE SA as a sans-IO state machine (RFC 7296): datagrams and ``now`` in; datagrams, events
and a timer deadline out.

Shape (as aioquic's ``QuicConnection``): :meth:`IkeSa.initiator` or :meth:`IkeSa.responder`
builds one; then :meth:`receive_datagram`, :meth:`handle_timer`, :meth:`datagrams_to_send`,
:meth:`get_timer`, :meth:`next_event`. Local requests: :meth:`delete`, :meth:`delete_child`,
:meth:`check_liveness`, :meth:`create_child`, :meth:`rekey_child`, :meth:`rekey`.

States and the inputs that move between them are the table :data:`TRANSITIONS`; anything else
raises :class:`IllegalIkeTransition` (a bug, never network input).

Message IDs (§2.3): window size 1 both ways. Our requests are retransmitted (§2.1) until answered,
then the SA fails with ``FailureReason.TIMEOUT``; a retransmitted peer request gets our cached
last response again; anything else out of window is dropped. Every message after IKE_SA_INIT must
pass the SK integrity check before it is looked at, so unauthenticated datagrams never change an
established SA (dropped and counted in :attr:`IkeSa.stats`). Nothing raised by network input
leaves this class.
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric import ed25519

from rpclatch.ipsec.errors import IPsecRemoteError
from rpclatch.ipsec.ike import certs
from rpclatch.ipsec.ike import crypto as c
from rpclatch.ipsec.ike import negotiation as neg
from rpclatch.ipsec.ike import wire as w
from rpclatch.ipsec.ike.config import ChildRequest, Endpoint, IkeConfig
from rpclatch.ipsec.ike.errors import (
    AuthenticationFailed,
    IkeCryptoError,
    IkeDecodeError,
    IkeError,
    IkeExchangeError,
    IkeLocalError,
    InvalidKePayload,
    NoProposalChosen,
    NotifyType,
    TsUnacceptable,
    UnsupportedCriticalPayload,
)
from rpclatch.ipsec.ike.events import (
    ChildProposal,
    ChildSa,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    FailureReason,
    IkeEvent,
    IkePeer,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    IkeSaRekeyFailed,
)
from rpclatch.ipsec.model import (
    CertificatePeer,
    IdType,
    IkeId,
    IkeSaRef,
    Mode,
    NullAuthPeer,
    RawPublicKeyPeer,
    Selector,
)
from rpclatch.ipsec.pad import PadMatch

log = logging.getLogger(__name__)

#: how many times the initiator follows a COOKIE or INVALID_KE_PAYLOAD answer before giving up
MAX_INIT_RETRIES = 3


class IkeState(Enum):
    INIT_SENT = "init-sent"  # initiator: IKE_SA_INIT request out
    AUTH_SENT = "auth-sent"  # initiator: IKE_AUTH request out
    HALF_OPEN = "half-open"  # responder: IKE_SA_INIT answered, waiting for IKE_AUTH
    ESTABLISHED = "established"
    DELETING = "deleting"  # our INFORMATIONAL Delete of the IKE SA is out
    CLOSED = "closed"  # deleted (by either side)
    FAILED = "failed"


class IkeInput(Enum):
    INIT_RETRY = "init-retry"  # COOKIE / INVALID_KE_PAYLOAD: IKE_SA_INIT again
    INIT_DONE = "init-done"
    AUTH_DONE = "auth-done"
    DELETE_SENT = "delete-sent"
    DELETE_DONE = "delete-done"
    PEER_DELETE = "peer-delete"
    FAIL = "fail"


S, I = IkeState, IkeInput  # noqa: E741
TRANSITIONS: dict[tuple[IkeState, IkeInput], IkeState] = {
    (S.INIT_SENT, I.INIT_RETRY): S.INIT_SENT,
    (S.INIT_SENT, I.INIT_DONE): S.AUTH_SENT,
    (S.INIT_SENT, I.FAIL): S.FAILED,
    (S.AUTH_SENT, I.AUTH_DONE): S.ESTABLISHED,
    (S.AUTH_SENT, I.FAIL): S.FAILED,
    (S.HALF_OPEN, I.AUTH_DONE): S.ESTABLISHED,
    (S.HALF_OPEN, I.FAIL): S.FAILED,
    (S.ESTABLISHED, I.DELETE_SENT): S.DELETING,
    (S.ESTABLISHED, I.PEER_DELETE): S.CLOSED,
    (S.ESTABLISHED, I.FAIL): S.FAILED,
    (S.DELETING, I.DELETE_DONE): S.CLOSED,
    (S.DELETING, I.PEER_DELETE): S.CLOSED,
    (S.DELETING, I.FAIL): S.CLOSED,  # no answer to our Delete: it is gone anyway (§1.4.1)
}
del S, I


class IllegalIkeTransition(IkeLocalError):
    """A state change :data:`TRANSITIONS` does not allow (a bug in the core)."""


@dataclass(slots=True)
class IkeStats:
    """Datagrams dropped without an answer, by cause, and retransmissions made."""

    decode_errors: int = 0
    integrity_failures: int = 0
    unexpected: int = 0
    retransmits: int = 0
    responses_resent: int = 0


@dataclass(frozen=True, slots=True)
class _ChildCtx:
    """A CREATE_CHILD_SA of ours for a CHILD_SA: what we asked, our SPI and nonce, and the
    inbound SPI of the CHILD_SA it rekeys (0 for a new one)."""

    request: ChildRequest
    spi: int
    nonce: bytes
    rekeys: int = 0
    dh: c.DhPrivate | None = None


@dataclass(frozen=True, slots=True)
class _IkeRekeyCtx:
    """A CREATE_CHILD_SA of ours rekeying the IKE SA (§1.3.2)."""

    spi: int
    nonce: bytes
    dh: c.DhPrivate


@dataclass(slots=True)
class _Request:
    """An outstanding request of ours (window 1)."""

    kind: str
    exchange: int
    message_id: int
    data: bytes
    sent_at: float
    deadline: float
    tries: int = 0
    child_spi: int = 0
    ctx: _ChildCtx | _IkeRekeyCtx | None = None


@dataclass(slots=True)
class _Queued:
    kind: str
    exchange: int
    inner: list[w.Payload] = field(default_factory=list)
    child_spi: int = 0
    ctx: _ChildCtx | _IkeRekeyCtx | None = None


_P = TypeVar("_P")


def _find(payloads: Sequence[w.Payload], kind: type[_P]) -> _P | None:
    """The first payload of class ``kind``."""
    for x in payloads:
        if isinstance(x, kind):
            return x
    return None


def _find_ts(payloads: Sequence[w.Payload], *, responder: bool) -> w.TsPayload | None:
    """The first TSr (``responder``) or TSi."""
    for x in payloads:
        if isinstance(x, w.TsPayload) and x.responder == responder:
            return x
    return None


def _find_id(payloads: Sequence[w.Payload], *, responder: bool) -> w.IdPayload | None:
    """The first IDr (``responder``) or IDi."""
    for x in payloads:
        if isinstance(x, w.IdPayload) and x.responder == responder:
            return x
    return None


#: SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4): what we accept from a peer
_HASH_NOTIFY = w.NotifyPayload(
    NotifyType.SIGNATURE_HASH_ALGORITHMS,
    struct.pack(
        ">4H",
        w.HashAlgorithm.SHA2_256,
        w.HashAlgorithm.SHA2_384,
        w.HashAlgorithm.SHA2_512,
        w.HashAlgorithm.IDENTITY,
    ),
)


def _random_spi64(entropy: c.Entropy | None = None) -> int:
    """A non-zero IKE SPI (§3.1), from ``entropy`` if given."""
    while True:
        spi = secrets.randbits(64) if entropy is None else int.from_bytes(entropy(8), "big")
        if spi:
            return spi


def random_child_spi(entropy: c.Entropy | None = None) -> int:
    """A random ESP SPI outside the reserved 1..255 (RFC 4303 §2.1), from ``entropy`` if given."""
    if entropy is None:
        return 256 + secrets.randbelow(2**32 - 256)
    return 256 + int.from_bytes(entropy(8), "big") % (2**32 - 256)


class IkeSa:
    """One IKE SA, from IKE_SA_INIT to deletion. Build with :meth:`initiator` / :meth:`responder`."""

    def __init__(self, config: IkeConfig, local: Endpoint, remote: Endpoint, *, initiator: bool) -> None:
        self.config = config
        self.local = local
        self.remote = remote
        self.is_initiator = initiator
        self.state: IkeState = IkeState.INIT_SENT if initiator else IkeState.HALF_OPEN
        self.spi_i = 0
        self.spi_r = 0
        self.stats = IkeStats()
        self.peer: IkePeer | None = None
        self.pad_match: PadMatch | None = None
        self.children: dict[int, ChildSa] = {}
        self.suite: c.IkeSuite | None = None
        self.keys: c.IkeKeys | None = None
        self.created_at = 0.0
        self.nat_local = False
        self.nat_remote = False
        self._events: deque[IkeEvent] = deque()
        self._out: list[tuple[bytes, Endpoint]] = []
        self._nonce_i = b""
        self._nonce_r = b""
        self._dh: c.DhPrivate | None = None
        self._init_request = b""  # RealMessage1 (§2.15)
        self._init_response = b""  # RealMessage2
        self._cookie = b""
        self._init_retries = 0
        self._child_request: ChildRequest | None = None
        self._child_spi = 0
        self._next_mid = 0  # our next request's message ID
        self._pending: _Request | None = None
        self._queue: deque[_Queued] = deque()
        self._peer_mid = 0  # the message ID we expect on the peer's next request
        self._last_response: tuple[int, bytes] | None = None
        self._half_open_deadline: float | None = None
        self._peer_hashes: frozenset[int] = frozenset()
        self._cipher_in: c.SkCipher | None = None
        self._send_initial_contact = False
        #: lifetimes: when each CHILD_SA (by inbound SPI) and the IKE SA are due for a rekey
        self._child_due: dict[int, float] = {}
        self._ike_due: float | None = None
        self._rekeying: set[int] = set()
        #: old CHILD_SA inbound SPI -> lowest nonce of the peer's rekey of it that crossed ours
        self._crossed_rekeys: dict[int, bytes] = {}
        self._last_heard = 0.0
        self.peer_initial_contact = False
        #: the IKE SA that replaced this one after a rekey (§2.18)
        self.successor: IkeSa | None = None
        self._cipher_out: c.SkCipher | None = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def initiator(
        cls,
        config: IkeConfig,
        local: Endpoint,
        remote: Endpoint,
        child: ChildRequest,
        now: float,
        *,
        initial_contact: bool = False,
    ) -> IkeSa:
        """Start an IKE SA whose first CHILD_SA is ``child``; the IKE_SA_INIT request is queued.
        ``initial_contact``: send INITIAL_CONTACT (§2.4) -- only when this host has just started
        and is not a replicated identity."""
        sa = cls(config, local, remote, initiator=True)
        sa._send_initial_contact = initial_contact
        sa.created_at = now
        sa.spi_i = _random_spi64(config.entropy)
        sa._nonce_i = sa._random(config.nonce_len)
        sa._child_request = child
        sa._child_spi = sa.allocate_child_spi()  # now: a bad allocator fails this call, not a later one
        sa._dh = c.DhPrivate(w.DhGroup(config.ike_suites[0].dh), config.entropy)
        sa._send_init(now)
        return sa

    @classmethod
    def responder(
        cls,
        config: IkeConfig,
        local: Endpoint,
        remote: Endpoint,
        message: w.Message,
        datagram: bytes,
        now: float,
        *,
        spi_r: int | None = None,
    ) -> IkeSa:
        """Answer a first IKE_SA_INIT request (the dispatcher checked cookies and limits).

        The result is HALF_OPEN with its answer queued, or FAILED with a stateless error answer
        queued (NO_PROPOSAL_CHOSEN, INVALID_KE_PAYLOAD, INVALID_SYNTAX) and an ``IkeSaFailed`` event;
        the caller keeps only the former."""
        sa = cls(config, local, remote, initiator=False)
        sa.created_at = now
        sa.spi_i = message.header.spi_i
        sa.spi_r = spi_r if spi_r is not None else _random_spi64(config.entropy)
        sa._peer_mid = 1
        try:
            sa._answer_init(message, datagram, now)
        except IkeError as e:
            notify = e.notify or NotifyType.INVALID_SYNTAX
            data = struct.pack(">H", e.group) if isinstance(e, InvalidKePayload) else b""
            hdr = w.Header(sa.spi_i, 0, 0, w.ExchangeType.IKE_SA_INIT, w.Flags.RESPONSE, 0)
            sa._out.append((w.encode_message(hdr, [w.NotifyPayload(notify, data)]), remote))
            sa._fail(
                FailureReason.PROTOCOL_ERROR if notify == NotifyType.INVALID_SYNTAX else _reason(e),
                notify,
                e.reason,
            )
        return sa

    # ------------------------------------------------------------------ public API

    @property
    def ref(self) -> IkeSaRef:
        return IkeSaRef(self.spi_i, self.spi_r)

    @property
    def our_spi(self) -> int:
        return self.spi_i if self.is_initiator else self.spi_r

    @property
    def finished(self) -> bool:
        return self.state in (IkeState.CLOSED, IkeState.FAILED)

    def next_event(self) -> IkeEvent | None:
        return self._events.popleft() if self._events else None

    def allocate_child_spi(self) -> int:
        """A new inbound CHILD_SA SPI: ``IkeConfig.child_spi`` or random. ValueError if the
        allocator returns a value outside 256..2^32-1 (a local error, RFC 4303 §2.1)."""
        alloc = self.config.child_spi
        if alloc is None:
            return random_child_spi(self.config.entropy)
        spi = alloc()
        if not 256 <= spi <= 0xFFFFFFFF:
            raise ValueError(f"IkeConfig.child_spi returned {spi}, not an SPI in 256..2^32-1 (RFC 4303 §2.1)")
        return spi

    def _random(self, n: int) -> bytes:
        entropy = self.config.entropy
        return entropy(n) if entropy is not None else os.urandom(n)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Endpoint]]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        times = []
        if self._pending is not None and not self.finished:
            times.append(self._pending.deadline)
        if self._half_open_deadline is not None and self.state is IkeState.HALF_OPEN:
            times.append(self._half_open_deadline)
        for due in (self._liveness_due(), self._lifetime_due()):
            if due is not None:
                times.append(due)
        return min(times) if times else None

    def _liveness_due(self) -> float | None:
        """When an idle established SA checks its peer (``IkeConfig.liveness_interval``, §1.4)."""
        interval = self.config.liveness_interval
        if interval is None or self.state is not IkeState.ESTABLISHED or self._pending is not None:
            return None
        return max(self._last_heard, self.created_at) + interval

    def handle_timer(self, now: float) -> None:
        rekey = self._lifetime_due()
        if rekey is not None and now >= rekey:
            self._rekey_due(now)
        due = self._liveness_due()
        if due is not None and now >= due:
            self.check_liveness(now)  # its retransmissions fail the SA if the peer is gone
            return
        if (
            self.state is IkeState.HALF_OPEN
            and self._half_open_deadline is not None
            and now >= self._half_open_deadline
        ):
            self._fail(FailureReason.HALF_OPEN_TIMEOUT, None, "no IKE_AUTH request in time")
            return
        req = self._pending
        if req is None or self.finished or now < req.deadline:
            return
        if req.tries >= self.config.retransmit_tries:
            self._pending = None
            if self.state is IkeState.DELETING:
                self._closed(by_peer=False)
                return
            self._fail(
                FailureReason.TIMEOUT, None, f"no answer to {req.kind} after {req.tries} retransmissions"
            )
            return
        req.tries += 1
        self.stats.retransmits += 1
        req.deadline = now + self.config.retransmit_timeout * self.config.retransmit_backoff**req.tries
        self._out.append((req.data, self.remote))

    def delete(self, now: float) -> None:
        """Delete this IKE SA and its children (INFORMATIONAL Delete, §1.4.1)."""
        if self.state is not IkeState.ESTABLISHED:
            raise IkeLocalError(f"cannot delete an IKE SA in state {self.state.value}")
        self._fire(IkeInput.DELETE_SENT)
        self._queue.clear()
        # window 1 (§2.3): an outstanding request is answered first, the Delete goes next
        self._request(
            _Queued("delete-ike", w.ExchangeType.INFORMATIONAL, [w.DeletePayload(w.ProtocolId.IKE)]), now
        )

    def delete_child(self, spi_in: int, now: float) -> None:
        """Delete the CHILD_SA whose inbound SPI is ``spi_in`` (§1.4.1)."""
        if self.state is not IkeState.ESTABLISHED or spi_in not in self.children:
            raise IkeLocalError(f"no established CHILD_SA with inbound SPI {spi_in:#x}")
        payload = w.DeletePayload(w.ProtocolId.ESP, (spi_in.to_bytes(4, "big"),), 4)
        self._request(_Queued("delete-child", w.ExchangeType.INFORMATIONAL, [payload], spi_in), now)

    def check_liveness(self, now: float) -> None:
        """Send an empty INFORMATIONAL request (§1.4); no answer in time fails the SA (TIMEOUT)."""
        if self.state is not IkeState.ESTABLISHED:
            raise IkeLocalError(f"cannot check liveness in state {self.state.value}")
        self._request(_Queued("liveness", w.ExchangeType.INFORMATIONAL), now)

    def abandon(self, now: float) -> None:
        """Forget this IKE SA without an exchange: the peer has shown it lost it (an
        INITIAL_CONTACT on another IKE SA with the same authenticated identity, §2.4). Reports
        ``ChildSaDeleted`` for its children and ``IkeSaDeleted(by_peer=True)``."""
        if self.state not in (IkeState.ESTABLISHED, IkeState.DELETING):
            raise IkeLocalError(f"cannot abandon an IKE SA in state {self.state.value}")
        self._closed(by_peer=True)

    def cancel(self, now: float) -> None:
        """Give up an IKE SA that is not established yet (INIT_SENT, AUTH_SENT, HALF_OPEN) without
        sending anything: retransmissions and timers stop, ``IkeSaFailed(CANCELLED)`` is reported.
        Use :meth:`IkeDispatcher.cancel`, which also stops routing to it."""
        if self.state not in (IkeState.INIT_SENT, IkeState.AUTH_SENT, IkeState.HALF_OPEN):
            raise IkeLocalError(f"cannot cancel an IKE SA in state {self.state.value}")
        self._out.clear()
        self._fail(FailureReason.CANCELLED, None, "cancelled by its owner")

    def peer_unreachable(self, now: float, quoted_spi: int | None = None) -> bool:
        """An ICMP port unreachable came back for a datagram we sent to :attr:`remote`;
        ``quoted_spi`` is the initiator SPI of the IKE header the ICMP message quoted, when it
        quoted that much. The ICMP message is unauthenticated and RFC 7296 §2.4 forbids concluding
        from it that a peer failed (§2.21.4: a hint at most), so it ends only an initiator's
        negotiation that nothing has answered yet -- INIT_SENT, no COOKIE or INVALID_KE_PAYLOAD
        answer received, nothing authenticated, no SA with the peer to lose -- and then only if a
        quoted SPI is ours. Such an SA fails with ``FailureReason.UNREACHABLE`` (no
        retransmission follows) and True is returned; anything else is ignored (False)."""
        if (
            not self.is_initiator
            or self.state is not IkeState.INIT_SENT
            or self._init_retries
            or (quoted_spi is not None and quoted_spi != self.spi_i)
        ):
            return False
        self._out.clear()
        self._fail(FailureReason.UNREACHABLE, None, f"ICMP port unreachable from {self.remote[0]}")
        return True

    def create_child(self, request: ChildRequest, now: float) -> None:
        """Negotiate a further CHILD_SA (CREATE_CHILD_SA, §1.3.1; no PFS)."""
        self._require_established()
        self._request(self._child_exchange(request, rekeys=0), now)

    def rekey_child(self, spi_in: int, now: float, *, pfs_group: int | None = None) -> None:
        """Rekey the CHILD_SA with inbound SPI ``spi_in`` (§1.3.3): same selector, mode and suite.
        The new one is reported with ``ChildSaEstablished.replaces``, then the old one is deleted."""
        self._require_established()
        child = self.children.get(spi_in)
        if child is None:
            raise IkeLocalError(f"no established CHILD_SA with inbound SPI {spi_in:#x}")
        req = ChildRequest(child.selector, child.mode, (child.suite,), pfs_group)
        self._rekeying.add(spi_in)
        self._request(self._child_exchange(req, rekeys=spi_in), now)

    def rekey(self, now: float) -> None:
        """Rekey this IKE SA (§1.3.2) with a fresh key exchange in its current suite. Success is
        ``IkeSaRekeyed`` (the new SA is :attr:`successor`), then this SA is deleted."""
        self._require_established()
        assert self.suite is not None
        ctx = _IkeRekeyCtx(
            _random_spi64(self.config.entropy),
            self._random(self.config.nonce_len),
            c.DhPrivate(w.DhGroup(self.suite.dh), self.config.entropy),
        )
        inner: list[w.Payload] = [
            w.SaPayload(neg.ike_proposals([self.suite], ctx.spi.to_bytes(8, "big"))),
            w.NoncePayload(ctx.nonce),
            w.KePayload(ctx.dh.group, ctx.dh.public_bytes()),
        ]
        self._request(_Queued("rekey-ike", w.ExchangeType.CREATE_CHILD_SA, inner, ctx=ctx), now)

    def receive_datagram(self, data: bytes, addr: Endpoint, now: float) -> None:
        """Process one datagram from ``addr``; never raises for bad input (drops and counts)."""
        try:
            msg = w.decode_message(data)
        except IkeDecodeError as e:
            self.stats.decode_errors += 1
            log.debug("IKE SA %s: undecodable datagram dropped: %s", self.ref, e)
            return
        try:
            self._receive(msg, data, addr, now)
        except IkeError as e:
            self.stats.decode_errors += 1
            log.debug("IKE SA %s: datagram dropped: %s", self.ref, e)

    # ------------------------------------------------------------------ internals: plumbing

    def _fire(self, what: IkeInput) -> None:
        nxt = TRANSITIONS.get((self.state, what))
        if nxt is None:
            raise IllegalIkeTransition(f"{what.value} in state {self.state.value}")
        self.state = nxt

    def _fail(self, reason: FailureReason, notify: int | None, detail: str) -> None:
        if self.finished:
            return
        log.info("IKE SA %s failed: %s (%s) %s", self.ref, reason.value, notify, detail)
        self._drop_children(by_peer=False)
        self._fire(IkeInput.FAIL)
        self._pending = None
        self._queue.clear()
        self._events.append(IkeSaFailed(self.ref, reason, notify, detail))

    def _closed(self, *, by_peer: bool) -> None:
        self._drop_children(by_peer=by_peer)
        self._fire(IkeInput.PEER_DELETE if by_peer else IkeInput.DELETE_DONE)
        self._pending = None
        self._queue.clear()
        self._events.append(IkeSaDeleted(self.ref, by_peer))

    def _drop_children(self, *, by_peer: bool) -> None:
        for child in self.children.values():
            self._events.append(ChildSaDeleted(self.ref, child.spi_in, child.spi_out, by_peer))
        self.children.clear()

    def _flags(self, response: bool) -> int:
        return (w.Flags.INITIATOR if self.is_initiator else 0) | (w.Flags.RESPONSE if response else 0)

    def _seal(self, exchange: int, mid: int, inner: Sequence[w.Payload], *, response: bool) -> bytes:
        assert self.keys is not None
        hdr = w.Header(self.spi_i, self.spi_r, 0, exchange, self._flags(response), mid)
        return self._sk_out().seal(hdr, list(inner))

    def _sk_out(self) -> c.SkCipher:
        if self._cipher_out is None:
            assert self.keys is not None
            self._cipher_out = c.SkCipher.outbound(self.keys, self.is_initiator, self.config.entropy)
        return self._cipher_out

    def _sk_in(self) -> c.SkCipher:
        if self._cipher_in is None:
            assert self.keys is not None
            self._cipher_in = c.SkCipher.inbound(self.keys, self.is_initiator)
        return self._cipher_in

    def _request(self, q: _Queued, now: float) -> None:
        if self._pending is not None:
            self._queue.append(q)
            return
        mid = self._next_mid
        self._next_mid += 1
        data = self._seal(q.exchange, mid, q.inner, response=False)
        self._pending = _Request(
            q.kind, q.exchange, mid, data, now, now + self.config.retransmit_timeout, 0, q.child_spi, q.ctx
        )
        self._out.append((data, self.remote))

    def _request_done(self, now: float) -> None:
        self._pending = None
        if self._queue and self.state in (IkeState.ESTABLISHED, IkeState.DELETING):
            self._request(self._queue.popleft(), now)

    def _respond(self, exchange: int, mid: int, inner: Sequence[w.Payload]) -> None:
        data = self._seal(exchange, mid, inner, response=True)
        self._last_response = (mid, data)
        self._out.append((data, self.remote))

    # ------------------------------------------------------------------ receive path

    def _receive(self, msg: w.Message, data: bytes, addr: Endpoint, now: float) -> None:
        h = msg.header
        if self.finished or h.spi_i != self.spi_i or h.from_initiator == self.is_initiator:
            self.stats.unexpected += 1
            return
        if h.is_response:
            req = self._pending
            if req is None or h.message_id != req.message_id or h.exchange != req.exchange:
                self.stats.unexpected += 1
                return
            if h.exchange == w.ExchangeType.IKE_SA_INIT:
                self._on_init_response(msg, data, now)
                return
            if h.spi_r != self.spi_r:
                self.stats.unexpected += 1
                return
            inner = self._open(msg, data, now)
            if inner is None:
                return
            if h.exchange == w.ExchangeType.IKE_AUTH:
                self._on_auth_response(inner, now)
            elif h.exchange == w.ExchangeType.CREATE_CHILD_SA:
                self._on_create_child_response(req, inner, now)
            else:
                self._on_informational_response(req, inner, now)
            return
        # a request from the peer
        if h.exchange == w.ExchangeType.IKE_SA_INIT:
            if (
                not self.is_initiator
                and h.message_id == 0
                and self._init_response
                and data == self._init_request
            ):
                self.stats.responses_resent += 1
                self._out.append((self._init_response, self.remote))
            else:
                self.stats.unexpected += 1
            return
        if h.spi_r != self.spi_r or self.keys is None:
            self.stats.unexpected += 1
            return
        if h.message_id == self._peer_mid - 1 and self._last_response is not None:
            # a retransmission: the same answer again (§2.1) -- only if it authenticates
            if self._open(msg, data, now) is not None and self._last_response[0] == h.message_id:
                self.stats.responses_resent += 1
                self._out.append((self._last_response[1], self.remote))
            return
        if h.message_id != self._peer_mid:
            self.stats.unexpected += 1
            return
        try:
            inner = self._open(msg, data, now, answer_critical=True)
        except UnsupportedCriticalPayload as e:
            # authenticated, but carries a critical payload we do not know: refuse it (§2.5)
            self._peer_mid += 1
            payload = w.NotifyPayload(
                NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, bytes((e.payload_type & 0xFF,))
            )
            self._respond(h.exchange, h.message_id, [payload])
            return
        if inner is None:
            return
        self._peer_mid += 1
        if h.exchange == w.ExchangeType.IKE_AUTH and self.state is IkeState.HALF_OPEN:
            self._on_auth_request(h.message_id, inner, now)
        elif h.exchange == w.ExchangeType.INFORMATIONAL and self.state in (
            IkeState.ESTABLISHED,
            IkeState.DELETING,
        ):
            self._on_informational_request(h.message_id, inner, now)
        elif h.exchange == w.ExchangeType.CREATE_CHILD_SA and self.state is IkeState.ESTABLISHED:
            self._on_create_child_request(h.message_id, inner, now)
        elif h.exchange == w.ExchangeType.CREATE_CHILD_SA and self.state is IkeState.DELETING:
            self._respond(h.exchange, h.message_id, [w.NotifyPayload(NotifyType.TEMPORARY_FAILURE)])
        else:
            self._respond(h.exchange, h.message_id, [w.NotifyPayload(NotifyType.INVALID_SYNTAX)])

    def _open(
        self, msg: w.Message, data: bytes, now: float, *, answer_critical: bool = False
    ) -> tuple[w.Payload, ...] | None:
        """The verified inner payloads, or None (dropped and counted). With ``answer_critical``
        an unknown critical inner payload raises :class:`UnsupportedCriticalPayload`."""
        sk = msg.payloads[-1] if msg.payloads else None
        if self.keys is None or not isinstance(sk, w.EncryptedPayload):
            self.stats.unexpected += 1
            return None
        try:
            inner = self._sk_in().open(data, sk)
            self._last_heard = now  # authenticated traffic from the peer: it is alive
            return inner
        except IkeCryptoError:
            self.stats.integrity_failures += 1
            log.debug("IKE SA %s: SK payload failed its integrity check; dropped", self.ref)
            return None
        except UnsupportedCriticalPayload:
            self.stats.decode_errors += 1
            self._last_heard = now  # it did authenticate
            if answer_critical:
                raise
            return None
        except IkeDecodeError:
            self.stats.decode_errors += 1
            return None

    # ------------------------------------------------------------------ IKE_SA_INIT

    def _nat_notifies(self, spi_r: int) -> list[w.Payload]:
        src = c.nat_detection_hash(self.spi_i, spi_r, self.local[0].packed, self.local[1])
        dst = c.nat_detection_hash(self.spi_i, spi_r, self.remote[0].packed, self.remote[1])
        return [
            w.NotifyPayload(NotifyType.NAT_DETECTION_SOURCE_IP, src),
            w.NotifyPayload(NotifyType.NAT_DETECTION_DESTINATION_IP, dst),
        ]

    def _check_nat(self, notifies: dict[int, w.NotifyPayload], spi_r: int) -> None:
        src = notifies.get(NotifyType.NAT_DETECTION_SOURCE_IP)
        dst = notifies.get(NotifyType.NAT_DETECTION_DESTINATION_IP)
        if src is not None:
            want = c.nat_detection_hash(self.spi_i, spi_r, self.remote[0].packed, self.remote[1])
            self.nat_remote = src.data != want
        if dst is not None:
            want = c.nat_detection_hash(self.spi_i, spi_r, self.local[0].packed, self.local[1])
            self.nat_local = dst.data != want

    def _read_hashes(self, notifies: dict[int, w.NotifyPayload]) -> None:
        n = notifies.get(NotifyType.SIGNATURE_HASH_ALGORITHMS)
        if n is not None:
            d = n.data[: len(n.data) // 2 * 2]
            self._peer_hashes = frozenset(struct.unpack(f">{len(d) // 2}H", d))

    def _send_init(self, now: float) -> None:
        assert self._dh is not None
        payloads: list[w.Payload] = []
        if self._cookie:
            payloads.append(w.NotifyPayload(NotifyType.COOKIE, self._cookie))
        suites = list(self.config.ike_suites)
        # the suites of the group we send a KE for go first, so the responder picks one (§1.2)
        suites.sort(key=lambda s: s.dh != self._dh.group if self._dh else False)
        payloads += [
            w.SaPayload(neg.ike_proposals(suites)),
            w.KePayload(self._dh.group, self._dh.public_bytes()),
            w.NoncePayload(self._nonce_i),
            *self._nat_notifies(0),
            _HASH_NOTIFY,
        ]
        hdr = w.Header(self.spi_i, 0, 0, w.ExchangeType.IKE_SA_INIT, self._flags(False), 0)
        data = w.encode_message(hdr, payloads)
        self._init_request = data
        self._pending = _Request(
            "IKE_SA_INIT", w.ExchangeType.IKE_SA_INIT, 0, data, now, now + self.config.retransmit_timeout
        )
        self._next_mid = 1
        self._out.append((data, self.remote))

    def _answer_init(self, msg: w.Message, datagram: bytes, now: float) -> None:
        """Responder: choose a proposal, check KE, derive keys, queue the answer."""
        p = msg.payloads
        sa_p = _find(p, w.SaPayload)
        ke = _find(p, w.KePayload)
        nonce = _find(p, w.NoncePayload)
        if (
            msg.header.is_response
            or msg.header.message_id != 0
            or msg.header.spi_r != 0
            or not msg.header.from_initiator
        ):
            raise IkeDecodeError("not a first IKE_SA_INIT request")
        if sa_p is None or ke is None or nonce is None:
            raise IkeDecodeError("IKE_SA_INIT request without SA, KE or Ni")
        answer, suite = neg.choose_ike_proposal(sa_p.proposals, self.config.ike_suites)
        if ke.group != suite.dh:
            raise InvalidKePayload(f"KE for group {ke.group}, chose {suite.dh}", suite.dh)
        notifies = w.notify_payloads(p)
        self._check_nat(notifies, 0)
        self._read_hashes(notifies)
        self._dh = c.DhPrivate(w.DhGroup(suite.dh), self.config.entropy)
        shared = self._dh.shared_secret(ke.data)
        self._nonce_i = nonce.data
        self._nonce_r = self._random(self.config.nonce_len)
        self.suite = suite
        self.keys = c.derive_ike_keys(suite, self._nonce_i, self._nonce_r, shared, self.spi_i, self.spi_r)
        reply: list[w.Payload] = [
            w.SaPayload((answer,)),
            w.KePayload(suite.dh, self._dh.public_bytes()),
            w.NoncePayload(self._nonce_r),
            *self._certreq(),
            *self._nat_notifies(self.spi_r),
            _HASH_NOTIFY,
        ]
        hdr = w.Header(self.spi_i, self.spi_r, 0, w.ExchangeType.IKE_SA_INIT, w.Flags.RESPONSE, 0)
        self._init_request = datagram
        self._init_response = w.encode_message(hdr, reply)
        self._half_open_deadline = now + self.config.half_open_timeout
        self._out.append((self._init_response, self.remote))

    def _on_init_response(self, msg: w.Message, data: bytes, now: float) -> None:
        p = msg.payloads
        notifies = w.notify_payloads(p)
        cookie = notifies.get(NotifyType.COOKIE)
        invalid_ke = notifies.get(NotifyType.INVALID_KE_PAYLOAD)
        if cookie is not None or invalid_ke is not None:
            self._init_retries += 1
            if self._init_retries > MAX_INIT_RETRIES:
                self._fail(FailureReason.PROTOCOL_ERROR, None, "too many COOKIE / INVALID_KE_PAYLOAD answers")
                return
            if cookie is not None:
                if not 1 <= len(cookie.data) <= 64:
                    self.stats.unexpected += 1
                    return
                self._cookie = cookie.data  # §2.6: the same request again, the cookie first
            else:
                assert invalid_ke is not None
                group = int.from_bytes(invalid_ke.data[:2], "big") if len(invalid_ke.data) >= 2 else -1
                if (
                    group not in {s.dh for s in self.config.ike_suites}
                    or self._dh is None
                    or group == self._dh.group
                ):
                    self._fail(
                        FailureReason.INVALID_KE,
                        NotifyType.INVALID_KE_PAYLOAD,
                        f"responder wants group {group}",
                    )
                    return
                # §1.2: retry with the group it asked for
                self._dh = c.DhPrivate(w.DhGroup(group), self.config.entropy)
            self._fire(IkeInput.INIT_RETRY)
            self._send_init(now)
            return
        err = w.error_notify(p)
        if err is not None:
            reason = (
                FailureReason.NO_PROPOSAL_CHOSEN
                if err.notify_type == NotifyType.NO_PROPOSAL_CHOSEN
                else FailureReason.PEER_REFUSED
            )
            self._fail(reason, err.notify_type, f"responder answered {w.notify_name(err.notify_type)}")
            return
        sa_p = _find(p, w.SaPayload)
        ke = _find(p, w.KePayload)
        nonce = _find(p, w.NoncePayload)
        try:
            if (
                sa_p is None
                or ke is None
                or nonce is None
                or len(sa_p.proposals) != 1
                or msg.header.spi_r == 0
            ):
                raise IkeDecodeError("IKE_SA_INIT response without one proposal, KE, Nr and SPIr")
            suite = neg.suite_of_ike_answer(sa_p.proposals[0], self.config.ike_suites)
            assert self._dh is not None
            if ke.group != suite.dh or ke.group != self._dh.group:
                raise IkeDecodeError(f"responder's KE group {ke.group} is not the chosen/sent one")
            shared = self._dh.shared_secret(ke.data)
        except IkeError as e:
            self._fail(
                FailureReason.PROTOCOL_ERROR
                if not isinstance(e, NoProposalChosen)
                else FailureReason.NO_PROPOSAL_CHOSEN,
                e.notify,
                e.reason,
            )
            return
        self.spi_r = msg.header.spi_r
        self._nonce_r = nonce.data
        self._check_nat(notifies, self.spi_r)
        self._read_hashes(notifies)
        self.suite = suite
        self.keys = c.derive_ike_keys(suite, self._nonce_i, self._nonce_r, shared, self.spi_i, self.spi_r)
        self._init_response = data
        self._fire(IkeInput.INIT_DONE)
        self._pending = None
        self._send_auth(now)

    # ------------------------------------------------------------------ IKE_AUTH

    def _our_auth(self, id_payload: w.IdPayload) -> list[w.Payload]:
        """[CERT,] AUTH for our side (§2.15; RFC 7427; RFC 7619 §2.1)."""
        assert self.keys is not None and self.suite is not None
        if self.is_initiator:
            real, nonce, sk_p = self._init_request, self._nonce_r, self.keys.sk_pi
        else:
            real, nonce, sk_p = self._init_response, self._nonce_i, self.keys.sk_pr
        octets = c.signed_octets(real, nonce, self.suite.prf, sk_p, id_payload.body())
        cred = self.config.credentials
        if cred.key is None:
            return [w.AuthPayload(w.AuthMethodId.NULL, c.shared_key_auth(self.suite.prf, sk_p, octets))]
        out: list[w.Payload] = []
        if cred.certificate is not None:
            out.append(w.CertPayload(w.CertEncoding.X509_SIGNATURE, cred.certificate))
        elif cred.send_key:
            assert cred.spki is not None
            out.append(w.CertPayload(w.CertEncoding.RAW_PUBLIC_KEY, cred.spki))
        signature = c.sign(cred.key, octets, deterministic=self.config.entropy is not None)
        out.append(w.AuthPayload(w.AuthMethodId.DIGITAL_SIGNATURE, signature))
        return out

    def _can_sign(self) -> bool:
        key = self.config.credentials.key
        if key is None:
            return True
        need = (
            w.HashAlgorithm.IDENTITY
            if isinstance(key, ed25519.Ed25519PrivateKey)
            else w.HashAlgorithm.SHA2_256
        )
        return need in self._peer_hashes

    def _verify_peer(self, payloads: Sequence[w.Payload]) -> tuple[IkePeer, PadMatch]:
        """Authenticate the peer's ID/AUTH and authorize it by the PAD; raises AuthenticationFailed."""
        assert self.keys is not None and self.suite is not None
        id_p = _find_id(payloads, responder=self.is_initiator)
        auth = _find(payloads, w.AuthPayload)
        if id_p is None or auth is None:
            raise AuthenticationFailed("no ID or AUTH payload")
        if self.is_initiator:
            real, nonce, sk_p = self._init_response, self._nonce_i, self.keys.sk_pr
        else:
            real, nonce, sk_p = self._init_request, self._nonce_r, self.keys.sk_pi
        octets = c.signed_octets(real, nonce, self.suite.prf, sk_p, id_p.body())
        peer: IkePeer
        if auth.method == w.AuthMethodId.NULL:
            if not secrets.compare_digest(auth.data, c.shared_key_auth(self.suite.prf, sk_p, octets)):
                raise AuthenticationFailed("NULL authentication AUTH does not verify")
            id_data = id_p.data if id_p.id_type == IdType.ID_NULL else b""
            peer = NullAuthPeer(self.ref, id_data)
        elif auth.method == w.AuthMethodId.DIGITAL_SIGNATURE:
            peer = self._signature_peer(payloads, id_p, auth, octets)
        else:
            raise AuthenticationFailed(f"unsupported authentication method {auth.method}")
        try:
            match = self.config.pad.authorize(peer)
        except IPsecRemoteError as e:
            raise AuthenticationFailed(e.reason) from None
        return peer, match

    def _signature_peer(
        self, payloads: Sequence[w.Payload], id_p: w.IdPayload, auth: w.AuthPayload, octets: bytes
    ) -> RawPublicKeyPeer | CertificatePeer:
        """RFC 7427 AUTH: the key comes from an X.509 certificate issued by a trust anchor (CERT 4),
        a raw public key (CERT 15, RFC 7670), or the configuration (``peer_keys``)."""
        cert = _find(payloads, w.CertPayload)
        ike_id = id_p.ike_id()
        named = ike_id if ike_id is None or ike_id.id_type != IdType.ID_NULL else None
        peer: RawPublicKeyPeer | CertificatePeer
        if cert is not None and cert.encoding == w.CertEncoding.X509_SIGNATURE:
            clock = self.config.certificate_clock
            peer = certs.validate(cert.data, id_p, self.config.trust_anchors, clock() if clock else None)
        elif cert is not None and cert.encoding == w.CertEncoding.RAW_PUBLIC_KEY:
            peer = RawPublicKeyPeer(cert.data, named)
        elif cert is None and ike_id is not None and ike_id in self.config.peer_keys:
            peer = RawPublicKeyPeer(self.config.peer_keys[ike_id], named)
        else:
            raise AuthenticationFailed(
                "no certificate, raw public key (CERT 15) or configured key for the peer"
            )
        if not c.verify(peer.spki_der, auth.data, octets):
            raise AuthenticationFailed("signature does not verify with the presented key")
        return peer

    def _certreq(self) -> list[w.Payload]:
        """CERTREQ naming our trust anchors (§3.7), if we have any."""
        anchors = self.config.trust_anchors
        return (
            [w.CertReqPayload(w.CertEncoding.X509_SIGNATURE, certs.certreq_data(anchors))] if anchors else []
        )

    def _id_payload(self, responder: bool) -> w.IdPayload:
        ike_id: IkeId = self.config.credentials.ike_id
        return w.IdPayload(int(ike_id.id_type), ike_id.data, responder)

    def _send_auth(self, now: float) -> None:
        assert self._child_request is not None
        if not self._can_sign():
            self._fail(
                FailureReason.LOCAL, None, "the responder does not accept our signature hash (RFC 7427 §4)"
            )
            return
        req = self._child_request
        idi = self._id_payload(responder=False)
        ours, theirs = neg.selector_to_ts(req.selector)
        auth = self._our_auth(idi)  # [CERT,] AUTH
        inner: list[w.Payload] = [idi, *auth[:-1], *self._certreq(), auth[-1]]
        if self._send_initial_contact:
            inner.append(w.NotifyPayload(NotifyType.INITIAL_CONTACT))
        if req.mode is Mode.TRANSPORT:
            inner.append(w.NotifyPayload(NotifyType.USE_TRANSPORT_MODE))
        inner += [
            w.SaPayload(neg.esp_proposals(req.esp_suites or self.config.esp_suites, self._child_spi)),
            w.TsPayload((ours,)),
            w.TsPayload((theirs,), responder=True),
        ]
        self._request(_Queued("IKE_AUTH", w.ExchangeType.IKE_AUTH, inner), now)

    def _on_auth_request(self, mid: int, payloads: tuple[w.Payload, ...], now: float) -> None:
        """Responder: authenticate, authorize, answer with our AUTH and the first CHILD_SA."""
        try:
            peer, match = self._verify_peer(payloads)
            if not self._can_sign():
                raise AuthenticationFailed("the initiator does not accept our signature hash (RFC 7427 §4)")
        except AuthenticationFailed as e:
            self._respond(w.ExchangeType.IKE_AUTH, mid, [w.NotifyPayload(NotifyType.AUTHENTICATION_FAILED)])
            self._fail(FailureReason.AUTHENTICATION_FAILED, NotifyType.AUTHENTICATION_FAILED, e.reason)
            return
        self.peer, self.pad_match = peer, match
        self.peer_initial_contact = NotifyType.INITIAL_CONTACT in w.notify_payloads(payloads)
        idr = self._id_payload(responder=True)
        reply: list[w.Payload] = [idr, *self._our_auth(idr)]
        child: ChildSa | None = None
        try:
            child, child_payloads, _ = self._answer_child(payloads, self._nonce_i, self._nonce_r)
            reply += child_payloads
        except IkeExchangeError as e:
            notify = e.notify or NotifyType.NO_PROPOSAL_CHOSEN
            reply.append(w.NotifyPayload(notify))
            child_err = ChildSaFailed(self.ref, notify, by_peer=False, detail=e.reason)
        self._respond(w.ExchangeType.IKE_AUTH, mid, reply)
        self._fire(IkeInput.AUTH_DONE)
        self._established()
        if child is not None:
            self._add_child(child, now)
            self._events.append(ChildSaEstablished(self.ref, child))
        else:
            self._events.append(child_err)

    def _add_child(self, child: ChildSa, now: float) -> None:
        self.children[child.spi_in] = child
        after = self.config.child_rekey_after
        if after is not None:
            self._child_due[child.spi_in] = now + self._jittered(after, self.config.rekey_jitter)

    def _jittered(self, after: float, jitter: float) -> float:
        return _jittered(after, jitter, self.config.entropy)

    def _lifetime_due(self) -> float | None:
        """The earliest lifetime rekey this SA owes (``IkeConfig.child_rekey_after`` and
        ``ike_rekey_after``), if it is established."""
        if self.state is not IkeState.ESTABLISHED:
            return None
        for spi in [spi for spi in self._child_due if spi not in self.children]:
            del self._child_due[spi]
        times = [t for spi, t in self._child_due.items() if spi not in self._rekeying]
        if self._ike_due is not None:
            times.append(self._ike_due)
        return min(times) if times else None

    def _rekey_due(self, now: float) -> None:
        if self._ike_due is not None and now >= self._ike_due:
            self._ike_due = None  # set again if the rekey fails
            self.rekey(now)
            return
        for spi, due in list(self._child_due.items()):
            if now >= due and spi in self.children and spi not in self._rekeying:
                self.rekey_child(spi, now)

    def _established(self) -> None:
        assert self.peer is not None and self.pad_match is not None and self.suite is not None
        if self.config.ike_rekey_after is not None:
            self._ike_due = self.created_at + self._jittered(
                self.config.ike_rekey_after, self.config.rekey_jitter
            )
        self._events.append(
            IkeSaEstablished(
                self.ref,
                self.peer,
                self.pad_match.entry.name,
                self.pad_match.btns,
                self.is_initiator,
                str(self.suite),
                self.nat_local,
                self.nat_remote,
                self.peer_initial_contact,
            )
        )

    def _child_keys(
        self, suite_bits: int, ni: bytes, nr: bytes, we_initiated: bool, shared: bytes = b""
    ) -> tuple[bytes, bytes]:
        """(inbound key, outbound key) of a CHILD_SA (§2.17; RFC 4106 key || salt): ``ni``/``nr``
        are the nonces of the exchange that made it, "initiator" is that exchange's initiator."""
        assert self.keys is not None and self.suite is not None
        km = c.derive_child_keys(self.suite.prf, self.keys.sk_d, ni, nr, suite_bits // 8 + 4, 0, shared)
        return (km.encr_r2i, km.encr_i2r) if we_initiated else (km.encr_i2r, km.encr_r2i)

    def _unauthenticated_peer(self) -> bool:
        assert self.pad_match is not None
        return self.pad_match.entry.is_unauthenticated or self.pad_match.entry.child_sa.own_address_only

    def _answer_child(
        self,
        payloads: Sequence[w.Payload],
        ni: bytes,
        nr: bytes,
        *,
        pfs: bool = False,
        rekey_of: int | None = None,
    ) -> tuple[ChildSa, list[w.Payload], list[w.Payload]]:
        """Exchange responder: choose the ESP proposal, narrow TSi/TSr, check the PAD's rules,
        ask ``IkeConfig.child_vetter`` (``rekey_of``: inbound SPI of the CHILD_SA rekeyed).
        Returns the child, the answer's [N(USE_TRANSPORT_MODE),] SA, TSi, TSr, and the KEr to put
        after Nr when ``pfs`` (CREATE_CHILD_SA) and the request carried a KE (§1.3.1)."""
        assert self.pad_match is not None
        sa_p = _find(payloads, w.SaPayload)
        tsi = _find_ts(payloads, responder=False)
        tsr = _find_ts(payloads, responder=True)
        if sa_p is None or tsi is None or tsr is None:
            raise NoProposalChosen("CHILD_SA request without SA, TSi or TSr")
        transport = NotifyType.USE_TRANSPORT_MODE in w.notify_payloads(payloads)
        if self.config.mode is Mode.TRANSPORT and not transport:
            raise NoProposalChosen("local policy requires transport mode (USE_TRANSPORT_MODE missing)")
        spi_in = self.allocate_child_spi()
        ke = _find(payloads, w.KePayload) if pfs else None
        answer, suite, spi_out, group = neg.choose_esp_proposal(
            sa_p.proposals, self.config.esp_suites, spi_in, ke.group if ke is not None else None
        )
        pinned = self.remote[0] if self._unauthenticated_peer() else None
        narrowed = neg.narrow(tsi.selectors, tsr.selectors, self.config.policy, peer_addr=pinned)
        try:
            self.config.pad.check_child_sa(self.pad_match, self.remote[0], [narrowed.selector])
        except IPsecRemoteError as e:
            raise TsUnacceptable(e.reason) from None
        mode = Mode.TRANSPORT if transport and self.config.mode is Mode.TRANSPORT else Mode.TUNNEL
        selector = narrowed.selector
        if self.config.child_vetter is not None:
            assert self.peer is not None
            proposal = ChildProposal(
                self.ref,
                self.peer,
                self.local,
                self.remote,
                selector,
                suite,
                mode,
                spi_in,
                spi_out,
                rekey_of,
            )
            selector = self._vet_child(proposal)
        shared = b""
        ke_out: list[w.Payload] = []
        if group is not None and ke is not None:
            dh = c.DhPrivate(w.DhGroup(group), self.config.entropy)
            try:
                shared = dh.shared_secret(ke.data)
            except IkeCryptoError as e:
                raise IkeExchangeError(e.reason, NotifyType.INVALID_SYNTAX) from None
            ke_out = [w.KePayload(group, dh.public_bytes())]
        key_in, key_out = self._child_keys(
            suite.encryption_key_bits, ni, nr, we_initiated=False, shared=shared
        )
        was_narrowed = narrowed.narrowed or selector != narrowed.selector
        child = ChildSa(spi_in, spi_out, suite, mode, selector, key_in, key_out, was_narrowed)
        ours, theirs = neg.selector_to_ts(selector)
        out: list[w.Payload] = []
        if mode is Mode.TRANSPORT:
            out.append(w.NotifyPayload(NotifyType.USE_TRANSPORT_MODE))
        out += [w.SaPayload((answer,)), w.TsPayload((theirs,)), w.TsPayload((ours,), responder=True)]
        return child, out, ke_out

    def _vet_child(self, proposal: ChildProposal) -> Selector:
        """``IkeConfig.child_vetter``'s selector (RFC 5660 §2.3), or raise the refusal:
        TS_UNACCEPTABLE for a new CHILD_SA, NO_PROPOSAL_CHOSEN for a rekey. A selector wider than
        the proposal's, or an exception from the vetter, is a refusal."""
        vetter = self.config.child_vetter
        assert vetter is not None
        try:
            chosen = vetter(proposal)
        except Exception:
            log.exception("IKE SA %s: child vetter raised; CHILD_SA refused", self.ref)
            chosen = None
        if chosen is not None and not neg.contains(proposal.selector, chosen):
            log.warning(
                "IKE SA %s: child vetter answered %s, wider than %s; CHILD_SA refused",
                self.ref,
                chosen,
                proposal.selector,
            )
            chosen = None
        if chosen is None:
            if proposal.rekey_of is not None:
                raise NoProposalChosen("the child vetter refused the CHILD_SA rekey")
            raise TsUnacceptable("the child vetter refused the CHILD_SA")
        return chosen

    def _on_auth_response(self, payloads: tuple[w.Payload, ...], now: float) -> None:
        err = w.error_notify(payloads)
        has_auth = _find(payloads, w.AuthPayload) is not None
        if not has_auth:
            code = err.notify_type if err is not None else NotifyType.AUTHENTICATION_FAILED
            self._fail(FailureReason.PEER_REFUSED, code, f"responder answered {w.notify_name(code)}")
            return
        try:
            self.peer, self.pad_match = self._verify_peer(payloads)
            self.peer_initial_contact = NotifyType.INITIAL_CONTACT in w.notify_payloads(payloads)
        except AuthenticationFailed as e:
            self._fail(FailureReason.AUTHENTICATION_FAILED, NotifyType.AUTHENTICATION_FAILED, e.reason)
            # tell the responder the SA is dead (§2.21.2): a Delete, sent once, not retransmitted
            self._out.append(
                (
                    self._seal(
                        w.ExchangeType.INFORMATIONAL,
                        self._next_mid,
                        [w.DeletePayload(w.ProtocolId.IKE)],
                        response=False,
                    ),
                    self.remote,
                )
            )
            return
        self._fire(IkeInput.AUTH_DONE)
        self._request_done(now)
        self._established()
        if err is not None:
            self._events.append(
                ChildSaFailed(self.ref, err.notify_type, by_peer=True, detail=w.notify_name(err.notify_type))
            )
            return
        try:
            assert self._child_request is not None
            child = self._accept_child(
                payloads, self._child_request, self._child_spi, self._nonce_i, self._nonce_r
            )
        except IkeExchangeError as e:
            notify = e.notify or NotifyType.NO_PROPOSAL_CHOSEN
            self._events.append(ChildSaFailed(self.ref, notify, by_peer=False, detail=e.reason))
            # the responder installed it: delete it (§1.4.1)
            answer = _find(payloads, w.SaPayload)
            if answer is not None and answer.proposals and len(answer.proposals[0].spi) == 4:
                d = w.DeletePayload(w.ProtocolId.ESP, (self._child_spi.to_bytes(4, "big"),), 4)
                self._request(
                    _Queued("delete-child", w.ExchangeType.INFORMATIONAL, [d], self._child_spi), now
                )
            return
        self._add_child(child, now)
        self._events.append(ChildSaEstablished(self.ref, child))

    def _accept_child(
        self,
        payloads: Sequence[w.Payload],
        req: ChildRequest,
        spi_in: int,
        ni: bytes,
        nr: bytes,
        dh: c.DhPrivate | None = None,
    ) -> ChildSa:
        """Exchange initiator: the answer must be one of our suites and within what we asked for."""
        sa_p = _find(payloads, w.SaPayload)
        tsi = _find_ts(payloads, responder=False)
        tsr = _find_ts(payloads, responder=True)
        if sa_p is None or len(sa_p.proposals) != 1 or tsi is None or tsr is None:
            raise NoProposalChosen("CHILD_SA answer without one proposal, TSi and TSr")
        suite, spi_out = neg.esp_answer_suite(
            sa_p.proposals[0], req.esp_suites or self.config.esp_suites, dh.group if dh is not None else None
        )
        shared = b""
        if dh is not None:
            ke = _find(payloads, w.KePayload)
            if ke is None or ke.group != dh.group:
                raise NoProposalChosen("CHILD_SA answer without a KE payload of our group")
            try:
                shared = dh.shared_secret(ke.data)
            except IkeCryptoError as e:
                raise IkeExchangeError(e.reason, NotifyType.INVALID_SYNTAX) from None
        if len(tsi.selectors) != 1 or len(tsr.selectors) != 1:
            raise TsUnacceptable("more than one traffic selector in the answer")
        sel = neg.ts_to_selector(tsi.selectors[0], tsr.selectors[0])
        if not neg.contains(req.selector, sel):
            raise TsUnacceptable(f"answered selector {sel} is not within the requested {req.selector}")
        transport = NotifyType.USE_TRANSPORT_MODE in w.notify_payloads(payloads)
        mode = Mode.TRANSPORT if transport else Mode.TUNNEL
        if mode is not req.mode:
            raise NoProposalChosen(f"responder chose {mode.value} mode, we asked for {req.mode.value}")
        key_in, key_out = self._child_keys(
            suite.encryption_key_bits, ni, nr, we_initiated=True, shared=shared
        )
        return ChildSa(spi_in, spi_out, suite, mode, sel, key_in, key_out, sel != req.selector)

    # ------------------------------------------------------------------ CREATE_CHILD_SA

    def _require_established(self) -> None:
        if self.state is not IkeState.ESTABLISHED:
            raise IkeLocalError(f"IKE SA is {self.state.value}, not established")

    def _child_exchange(self, req: ChildRequest, rekeys: int) -> _Queued:
        dh = c.DhPrivate(w.DhGroup(req.pfs_group), self.config.entropy) if req.pfs_group else None
        ctx = _ChildCtx(req, self.allocate_child_spi(), self._random(self.config.nonce_len), rekeys, dh)
        ours, theirs = neg.selector_to_ts(req.selector)
        inner: list[w.Payload] = []
        if rekeys:
            inner.append(
                w.NotifyPayload(NotifyType.REKEY_SA, b"", w.ProtocolId.ESP, rekeys.to_bytes(4, "big"))
            )
        if req.mode is Mode.TRANSPORT:
            inner.append(w.NotifyPayload(NotifyType.USE_TRANSPORT_MODE))
        inner += [
            w.SaPayload(neg.esp_proposals(req.esp_suites or self.config.esp_suites, ctx.spi, req.pfs_group)),
            w.NoncePayload(ctx.nonce),
            *([w.KePayload(dh.group, dh.public_bytes())] if dh is not None else []),
            w.TsPayload((ours,)),
            w.TsPayload((theirs,), responder=True),
        ]
        return _Queued("create-child", w.ExchangeType.CREATE_CHILD_SA, inner, ctx=ctx)

    def _on_create_child_request(self, mid: int, payloads: tuple[w.Payload, ...], now: float) -> None:
        sa_p = _find(payloads, w.SaPayload)
        nonce = _find(payloads, w.NoncePayload)
        if sa_p is None or nonce is None:
            self._respond(w.ExchangeType.CREATE_CHILD_SA, mid, [w.NotifyPayload(NotifyType.INVALID_SYNTAX)])
            return
        if any(p.protocol == w.ProtocolId.IKE for p in sa_p.proposals):
            self._answer_ike_rekey(mid, payloads, sa_p, nonce.data, now)
            return
        rekey = w.notify_payloads(payloads).get(NotifyType.REKEY_SA)
        old: ChildSa | None = None
        if rekey is not None:
            # the SPI the exchange initiator receives on: our outbound SPI (§1.3.3)
            out_spi = int.from_bytes(rekey.spi, "big") if len(rekey.spi) == 4 else -1
            old = next((ch for ch in self.children.values() if ch.spi_out == out_spi), None)
            if old is None:
                self._respond(
                    w.ExchangeType.CREATE_CHILD_SA,
                    mid,
                    [w.NotifyPayload(NotifyType.CHILD_SA_NOT_FOUND, b"", w.ProtocolId.ESP, rekey.spi)],
                )
                return
        nr = self._random(self.config.nonce_len)
        try:
            rekey_of = old.spi_in if old is not None else None
            child, out, ke_out = self._answer_child(payloads, nonce.data, nr, pfs=True, rekey_of=rekey_of)
        except IkeExchangeError as e:
            notify = e.notify or NotifyType.NO_PROPOSAL_CHOSEN
            data = struct.pack(">H", e.group) if isinstance(e, InvalidKePayload) else b""
            self._respond(w.ExchangeType.CREATE_CHILD_SA, mid, [w.NotifyPayload(notify, data)])
            self._events.append(ChildSaFailed(self.ref, notify, by_peer=False, detail=e.reason))
            return
        at = next(i for i, x in enumerate(out) if isinstance(x, w.SaPayload)) + 1
        out[at:at] = [w.NoncePayload(nr), *ke_out]  # SA, Nr, [KEr,] TSi, TSr (§1.3.1)
        self._respond(w.ExchangeType.CREATE_CHILD_SA, mid, out)
        self._add_child(child, now)
        self._events.append(ChildSaEstablished(self.ref, child, old.spi_in if old is not None else None))
        pending = self._pending
        if (
            old is not None
            and pending is not None
            and isinstance(pending.ctx, _ChildCtx)
            and pending.ctx.rekeys == old.spi_in
        ):
            # both ends are rekeying the same CHILD_SA (§2.8.1): remember the peer's exchange
            self._crossed_rekeys[old.spi_in] = min(nonce.data, nr)

    def _answer_ike_rekey(
        self, mid: int, payloads: tuple[w.Payload, ...], sa_p: w.SaPayload, ni: bytes, now: float
    ) -> None:
        assert self.keys is not None and self.suite is not None
        ke = _find(payloads, w.KePayload)
        if self._pending is not None and self._pending.kind == "rekey-ike":
            # simultaneous rekeys (§2.8.2) are not resolved: refuse, the peer retries later
            self._respond(
                w.ExchangeType.CREATE_CHILD_SA, mid, [w.NotifyPayload(NotifyType.TEMPORARY_FAILURE)]
            )
            return
        try:
            answer, suite = neg.choose_ike_proposal(sa_p.proposals, self.config.ike_suites)
            if len(answer.spi) != 8 or not int.from_bytes(answer.spi, "big"):
                raise NoProposalChosen("IKE rekey proposal without an 8-octet SPI")
            if ke is None or ke.group != suite.dh:
                raise InvalidKePayload(f"KE for group {ke.group if ke else None}, chose {suite.dh}", suite.dh)
            dh = c.DhPrivate(w.DhGroup(suite.dh), self.config.entropy)
            shared = dh.shared_secret(ke.data)
        except IkeError as e:
            notify = e.notify or NotifyType.INVALID_SYNTAX
            data = struct.pack(">H", e.group) if isinstance(e, InvalidKePayload) else b""
            self._respond(w.ExchangeType.CREATE_CHILD_SA, mid, [w.NotifyPayload(notify, data)])
            return
        our_spi = _random_spi64(self.config.entropy)
        nr = self._random(self.config.nonce_len)
        reply: list[w.Payload] = [
            w.SaPayload(
                (w.Proposal(answer.number, answer.protocol, our_spi.to_bytes(8, "big"), answer.transforms),)
            ),
            w.NoncePayload(nr),
            w.KePayload(dh.group, dh.public_bytes()),
        ]
        self._respond(w.ExchangeType.CREATE_CHILD_SA, mid, reply)
        self._successor(
            suite, int.from_bytes(answer.spi, "big"), our_spi, ni, nr, shared, we_initiated=False, now=now
        )

    def _successor(
        self,
        suite: c.IkeSuite,
        spi_i: int,
        spi_r: int,
        ni: bytes,
        nr: bytes,
        shared: bytes,
        *,
        we_initiated: bool,
        now: float,
    ) -> IkeSa:
        """The IKE SA that replaces this one (§2.18): old PRF and SK_d for SKEYSEED, new suite for
        the keys; it takes over the peer and the CHILD_SAs, its message IDs start at 0."""
        assert self.keys is not None and self.suite is not None
        new = IkeSa(self.config, self.local, self.remote, initiator=we_initiated)
        new.state = IkeState.ESTABLISHED  # born established: the rekey exchange authenticated it
        new.created_at = now
        new._last_heard = now
        new.spi_i, new.spi_r = spi_i, spi_r
        new.suite = suite
        seed = c.rekey_skeyseed(self.suite.prf, self.keys.sk_d, shared, ni, nr)
        new.keys = c.keys_from_skeyseed(suite, seed, ni + nr + struct.pack(">QQ", spi_i, spi_r))
        new.peer, new.pad_match = self.peer, self.pad_match
        new.children, self.children = self.children, {}
        new._child_due, self._child_due = self._child_due, {}
        self._ike_due = None  # this SA is being replaced
        if self.config.ike_rekey_after is not None:
            new._ike_due = now + self._jittered(self.config.ike_rekey_after, self.config.rekey_jitter)
        new._nonce_i, new._nonce_r = ni, nr
        new._peer_hashes = self._peer_hashes
        new.nat_local, new.nat_remote = self.nat_local, self.nat_remote
        self.successor = new
        self._events.append(IkeSaRekeyed(self.ref, new.ref))
        return new

    def _on_create_child_response(self, req: _Request, payloads: tuple[w.Payload, ...], now: float) -> None:
        ctx = req.ctx
        err = w.error_notify(payloads)
        nonce = _find(payloads, w.NoncePayload)
        if isinstance(ctx, _IkeRekeyCtx):
            self._on_ike_rekey_response(ctx, payloads, err, nonce, now)
            return
        assert isinstance(ctx, _ChildCtx)
        self._pending = None
        if ctx.rekeys:
            self._rekeying.discard(ctx.rekeys)
            if (err is not None or nonce is None) and ctx.rekeys in self._child_due:
                after = self.config.child_rekey_after or 0.0
                self._child_due[ctx.rekeys] = now + after * self.config.rekey_jitter  # try again soon
        if err is not None or nonce is None:
            code = err.notify_type if err is not None else NotifyType.INVALID_SYNTAX
            self._events.append(
                ChildSaFailed(self.ref, code, by_peer=err is not None, detail=w.notify_name(code))
            )
            lost = self.children.get(ctx.rekeys) if code == NotifyType.CHILD_SA_NOT_FOUND else None
            if lost is not None:
                # §2.25: the peer has no such CHILD_SA: drop ours silently, negotiate it afresh
                del self.children[lost.spi_in]
                self._events.append(ChildSaDeleted(self.ref, lost.spi_in, lost.spi_out, by_peer=True))
                fresh = ChildRequest(lost.selector, lost.mode, (lost.suite,), ctx.request.pfs_group)
                self._queue.appendleft(self._child_exchange(fresh, rekeys=0))
            self._request_done(now)
            return
        try:
            child = self._accept_child(payloads, ctx.request, ctx.spi, ctx.nonce, nonce.data, ctx.dh)
        except IkeExchangeError as e:
            notify = e.notify or NotifyType.NO_PROPOSAL_CHOSEN
            self._events.append(ChildSaFailed(self.ref, notify, by_peer=False, detail=e.reason))
            d = w.DeletePayload(w.ProtocolId.ESP, (ctx.spi.to_bytes(4, "big"),), 4)
            self._queue.appendleft(_Queued("delete-child", w.ExchangeType.INFORMATIONAL, [d], ctx.spi))
            self._request_done(now)
            return
        self._add_child(child, now)
        self._events.append(ChildSaEstablished(self.ref, child, ctx.rekeys or None))
        doomed = []
        if ctx.rekeys and ctx.rekeys in self.children:
            doomed.append(ctx.rekeys)
        theirs = self._crossed_rekeys.pop(ctx.rekeys, None) if ctx.rekeys else None
        if theirs is not None and min(ctx.nonce, nonce.data) < theirs:
            # §2.8.1: of two crossed rekeys, the SA made with the lowest of the four nonces is
            # redundant, and its creator -- us -- closes it
            doomed.append(child.spi_in)
        for spi in reversed(doomed):
            d = w.DeletePayload(w.ProtocolId.ESP, (spi.to_bytes(4, "big"),), 4)
            self._queue.appendleft(_Queued("delete-child", w.ExchangeType.INFORMATIONAL, [d], spi))
        self._request_done(now)

    def _retry_ike_rekey(self, now: float) -> None:
        after = self.config.ike_rekey_after
        if after is not None:
            # random, so that two ends whose rekeys crossed do not cross again
            self._ike_due = now + self._jittered(after * self.config.rekey_jitter, 0.5) + 1.0

    def _on_ike_rekey_response(
        self,
        ctx: _IkeRekeyCtx,
        payloads: tuple[w.Payload, ...],
        err: w.NotifyPayload | None,
        nonce: w.NoncePayload | None,
        now: float,
    ) -> None:
        assert self.suite is not None
        self._pending = None
        sa_p = _find(payloads, w.SaPayload)
        ke = _find(payloads, w.KePayload)
        if err is not None:
            self._events.append(IkeSaRekeyFailed(self.ref, err.notify_type, w.notify_name(err.notify_type)))
            self._retry_ike_rekey(now)
            self._request_done(now)
            return
        try:
            if sa_p is None or len(sa_p.proposals) != 1 or nonce is None or ke is None:
                raise IkeDecodeError("IKE rekey answer without one proposal, Nr and KEr")
            answer = sa_p.proposals[0]
            suite = neg.suite_of_ike_answer(answer, [self.suite])
            if len(answer.spi) != 8 or not int.from_bytes(answer.spi, "big") or ke.group != ctx.dh.group:
                raise IkeDecodeError("IKE rekey answer with a bad SPI or KE group")
            shared = ctx.dh.shared_secret(ke.data)
        except IkeError as e:
            self._events.append(IkeSaRekeyFailed(self.ref, e.notify, e.reason))
            self._retry_ike_rekey(now)
            self._request_done(now)
            return
        if self.state is not IkeState.ESTABLISHED:
            # we are deleting this SA anyway; the peer's half of the new one dies with it (§1.4.1)
            self._request_done(now)
            return
        peer_spi = int.from_bytes(answer.spi, "big")
        self._successor(suite, ctx.spi, peer_spi, ctx.nonce, nonce.data, shared, we_initiated=True, now=now)
        self._pending = None
        self.delete(now)  # §1.3.2: the initiator of the rekey deletes the old IKE SA

    # ------------------------------------------------------------------ INFORMATIONAL

    def _on_informational_request(self, mid: int, payloads: tuple[w.Payload, ...], now: float) -> None:
        deletes = [x for x in payloads if isinstance(x, w.DeletePayload)]
        if any(d.protocol == w.ProtocolId.IKE for d in deletes):
            self._respond(w.ExchangeType.INFORMATIONAL, mid, [])
            self._closed(by_peer=True)
            return
        ours: list[bytes] = []
        for d in deletes:
            if d.protocol != w.ProtocolId.ESP:
                continue
            for spi in d.spis:
                out_spi = int.from_bytes(spi, "big")
                child = next((ch for ch in self.children.values() if ch.spi_out == out_spi), None)
                if child is None:
                    continue
                del self.children[child.spi_in]
                ours.append(child.spi_in.to_bytes(4, "big"))
                self._events.append(ChildSaDeleted(self.ref, child.spi_in, child.spi_out, by_peer=True))
        reply: list[w.Payload] = [w.DeletePayload(w.ProtocolId.ESP, tuple(ours), 4)] if ours else []
        self._respond(w.ExchangeType.INFORMATIONAL, mid, reply)

    def _on_informational_response(self, req: _Request, payloads: tuple[w.Payload, ...], now: float) -> None:
        if req.kind == "delete-ike":
            self._closed(by_peer=False)
            return
        if req.kind == "delete-child":
            child = self.children.pop(req.child_spi, None)
            if child is not None:
                self._events.append(ChildSaDeleted(self.ref, child.spi_in, child.spi_out, by_peer=False))
        self._request_done(now)


def _jittered(after: float, jitter: float, entropy: c.Entropy | None = None) -> float:
    """``after`` shortened by a random fraction up to ``jitter``, so that two peers with the same
    lifetimes rarely rekey the same SA at the same moment (RFC 7296 §2.8)."""
    draw = secrets.randbelow(1_000_001) if entropy is None else int.from_bytes(entropy(4), "big") % 1_000_001
    return after * (1.0 - jitter * draw / 1_000_000)


def _reason(e: IkeError) -> FailureReason:
    if isinstance(e, NoProposalChosen):
        return FailureReason.NO_PROPOSAL_CHOSEN
    if isinstance(e, InvalidKePayload):
        return FailureReason.INVALID_KE
    return FailureReason.PROTOCOL_ERROR
