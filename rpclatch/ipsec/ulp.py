"""Approach 1 of docs/design.md: the latch held by the ULP ("intimate interfaces").

RFC 5660 §2.4 (informative model): IPsec tags every inbound packet with the SA that protected it
(``InboundDecision.tag``: a :class:`~rpclatch.ipsec.decisions.PacketTag`, or CLEARTEXT); on output
the ULP either asks "how will you protect this" (the PROTECT decision's tag) or says "protect this
like so" (``IPsecEngine.outbound(..., like=tag)``). The ULP records the latch in its control block
from the flow's first packet and enforces it on every later one.

- :class:`UlpLatch` is what a transport control block (TCP TCB, connected-UDP socket) embeds.
- :class:`PToken` and :class:`DatagramLatching` give the same power to datagram applications on
  unconnected sockets through ``recvmsg`` / ``sendmsg`` ancillary data ("pTokens", BTNS abstract
  API): the application records and enforces the latch itself.

Both reach the IPsec layer only through the :class:`UlpEngine` protocol declared here (which
``IPsecEngine`` implements), so this module does not import the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from rpclatch.channel import Protection
from rpclatch.ipsec.decisions import (
    CLEARTEXT,
    DropReason,
    InboundDecision,
    InboundVerdict,
    OutboundDecision,
    OutboundVerdict,
    PacketTag,
    discard,
)
from rpclatch.ipsec.latch import BrokenDisposition
from rpclatch.ipsec.model import FiveTuple, Mode, PeerIdentity
from rpclatch.ipsec.sad import SecurityAssociationDatabase


class UlpLatchState(Enum):
    UNLATCHED = "unlatched"  # no packet of the flow yet
    LATCHED = "latched"
    BROKEN = "broken"  # only with MismatchPolicy.BREAK
    CLOSED = "closed"


class MismatchPolicy(Enum):
    """What a :class:`UlpLatch` does with a packet whose tag differs from the latched one. There
    is no explicit BROKEN state in the RFC's model (RFC 5660 §2.4): the packet is either dropped
    (an "imaginary BROKEN", DROP, the default) or breaks the latch with an application alert
    (BREAK)."""

    DROP = "drop"  # drop the packet, keep the latch (RFC 5660 §2.4 "imaginary BROKEN")
    BREAK = "break"  # drop the packet, break the latch, alert the application


class UlpBreakReason(Enum):
    """Why a :class:`UlpLatch` broke. Values match the approach-2 ALERT reasons for the same events."""

    TAG_MISMATCH = "inbound-tag-differs-from-latched-tag"  # §2.4: a mismatching packet, BREAK policy
    CONFLICTING_SA = "conflicting-child-sa"  # §2: an SA not congruent with the latch now carries the flow
    SPD_CHANGE = "conflicting-spd-change"  # §2: the SPD no longer protects the flow as latched
    PEER_DEAD = "dpd-peer-dead"  # §2: IKE DPD says the latched peer is dead or rebooted


@dataclass(frozen=True, slots=True)
class UlpVerdict:
    """What the ULP does with an inbound packet: deliver it, or drop it for ``reason``."""

    deliver: bool
    reason: DropReason | None = None
    tag: PacketTag | None = None


@dataclass(frozen=True, slots=True)
class UlpBreak:
    """Told to the application when a :class:`UlpLatch` breaks (MismatchPolicy.BREAK)."""

    flow: FiveTuple
    latched: PacketTag
    offending: PacketTag | None  # None when the break came from outside (e.g. DPD "peer dead")
    disposition: BrokenDisposition
    reason: UlpBreakReason = UlpBreakReason.TAG_MISMATCH
    detail: str = ""


class UlpEngine(Protocol):
    """What a :class:`UlpLatch` (and :class:`DatagramLatching`) needs from the IPsec layer under
    it; :class:`rpclatch.ipsec.engine.IPsecEngine` implements it. ``sad`` holds the SA a latched
    tag names (the channel of a TCB latch takes its parameters from it)."""

    sad: SecurityAssociationDatabase

    def outbound(
        self, flow: FiveTuple, now: float, *, initiating: bool = False, like: PacketTag | None = None
    ) -> OutboundDecision:
        """Decide how to send one packet of ``flow``; ``like`` asks "protect this like so" (RFC 5660
        §2.4 (a)); a PROTECT decision's ``tag`` answers §2.4 (b) "how was this protected"."""
        ...

    def close_flow(self, flow: FiveTuple, now: float) -> None:
        """The connection ended: hold the flow's per-flow state for the TIME_WAIT-like period."""
        ...

    def watch_ulp_latch(self, ulp: UlpLatch) -> None:
        """``ulp`` latched its flow to an SA: from now on RFC 5660 §2 conflicts break it."""
        ...

    def unwatch_ulp_latch(self, ulp: UlpLatch) -> None:
        """``ulp`` closed: stop watching it."""
        ...

    def ulp_latch_broken(self, ulp: UlpLatch) -> None:
        """``ulp`` broke: stop watching it and discard its flow until the flow ends."""
        ...


class UlpLatch:
    """A latch recorded in a transport control block (RFC 5660 §2.4).

    Usage by a host stack (the engine must run ``Approach.ULP``, or at least not hold the flow in
    its own latch database)::

        latch = UlpLatch(engine, flow)
        d = latch.outbound(now, initiating=True)   # first packet: records the feedback tag
        v = latch.inbound(engine.inbound(flow, sa, now))   # every received packet
        if not v.deliver: drop (v.reason)

    ``require_protection`` makes cleartext unacceptable (the application asked for a channel):
    a cleartext first packet is dropped instead of latching "cleartext".

    RFC 5660 §2 conflicts reach a TCB latch from outside the packet path: once latched to an SA it
    asks the engine to watch it (:mod:`rpclatch.ipsec.ulp_watch`), which narrows a wider
    conflicting child SA around it or breaks it before such an SA is installed, and re-checks it
    on SPD changes (break, or pin with ``pin_on_spd_change``); IKE DPD breaks it too. Those breaks
    go through :meth:`break_latch` whatever the :class:`MismatchPolicy`, with a
    :class:`UlpBreakReason`; after a break the engine DISCARDs the flow's 5-tuple until the flow's
    hold ends.
    """

    __slots__ = (
        "_deliver",
        "disposition",
        "engine",
        "flow",
        "observers",
        "on_break",
        "on_mismatch",
        "require_protection",
        "state",
        "tag",
    )

    def __init__(
        self,
        engine: UlpEngine,
        flow: FiveTuple,
        *,
        require_protection: bool = False,
        on_mismatch: MismatchPolicy = MismatchPolicy.DROP,
        on_break: Callable[[UlpBreak], None] | None = None,
        disposition: BrokenDisposition = BrokenDisposition.RESET,
    ) -> None:
        self.engine = engine
        self.flow = flow
        self.require_protection = require_protection
        self.on_mismatch = on_mismatch
        self.on_break = on_break
        self.disposition = disposition
        self.state = UlpLatchState.UNLATCHED
        self.tag: PacketTag | None = None
        #: extra break/close listeners (e.g. a LatchChannel), besides the application's on_break
        self.observers: list[Callable[[UlpLatch], None]] | None = None
        self._deliver: UlpVerdict | None = None  # cached "deliver" verdict for the latched tag

    @property
    def latched(self) -> bool:
        return self.state is UlpLatchState.LATCHED

    @property
    def protected(self) -> bool:
        """True if the flow is latched to an SA (not to cleartext)."""
        return self.tag is not None and self.tag.protected

    def inbound(self, decision: InboundDecision) -> UlpVerdict:
        """Judge a packet the engine accepted (or dropped) for this flow."""
        tag = decision.tag
        if decision.verdict is not _ACCEPT or tag is None:
            return UlpVerdict(False, decision.reason)
        return self.check_inbound(tag)

    def check_inbound(self, tag: PacketTag) -> UlpVerdict:
        """Record the tag of the flow's first packet; later ones must match it."""
        state = self.state
        if state is _LATCHED:
            latched = self.tag
            assert latched is not None
            if tag is latched:
                # steady state: the very SA the latch was made with; one shared verdict object
                ok = self._deliver
                if ok is None:
                    ok = self._deliver = UlpVerdict(True, tag=tag)
                return ok
            if tag.same_protection(latched):
                return UlpVerdict(True, tag=tag)
            self._mismatch(tag)
            return UlpVerdict(False, DropReason.ULP_TAG_MISMATCH, tag)
        if state is UlpLatchState.UNLATCHED:
            if self.require_protection and not tag.protected:
                return UlpVerdict(False, DropReason.ULP_PROTECTION_REQUIRED, tag)
            self._latch(tag)
            return UlpVerdict(True, tag=tag)
        if state is UlpLatchState.BROKEN:
            return UlpVerdict(False, DropReason.ULP_LATCH_BROKEN, tag)
        return UlpVerdict(False, DropReason.ULP_LATCH_CLOSED, tag)

    def outbound(self, now: float, *, initiating: bool = False) -> OutboundDecision:
        """Ask the engine how to send the next packet: before the latch exists, record the
        feedback tag of the first sendable decision; afterwards, "protect this like so" — a
        packet that cannot be protected the same way is not sent."""
        state = self.state
        if state is UlpLatchState.LATCHED:
            assert self.tag is not None
            d = self.engine.outbound(self.flow, now, initiating=initiating, like=self.tag)
            if (
                d.verdict is OutboundVerdict.PROTECT
                and d.tag is not None
                and not d.tag.same_protection(self.tag)
            ):
                return discard(DropReason.ULP_CANNOT_PROTECT_AS_LATCHED)
            return d
        if state is UlpLatchState.BROKEN:
            return discard(DropReason.ULP_LATCH_BROKEN)
        if state is UlpLatchState.CLOSED:
            return discard(DropReason.ULP_LATCH_CLOSED)
        d = self.engine.outbound(self.flow, now, initiating=initiating)
        if d.verdict is OutboundVerdict.PROTECT:
            assert d.tag is not None
            self._latch(d.tag)
        elif d.verdict is OutboundVerdict.BYPASS:
            if self.require_protection:
                return discard(DropReason.ULP_PROTECTION_REQUIRED)
            self._latch(CLEARTEXT)
        return d

    def _latch(self, tag: PacketTag) -> None:
        self.tag = tag
        self.state = UlpLatchState.LATCHED
        if tag.protected:
            # an IPsec channel now exists (RFC 5660 §2): the engine tells us about conflicts
            self.engine.watch_ulp_latch(self)

    def close(self, now: float) -> None:
        """The connection is gone: the latch goes with it (and per-flow engine state is held for
        the TIME_WAIT-like period)."""
        if self.state is not UlpLatchState.CLOSED:
            self.state = UlpLatchState.CLOSED
            self.engine.unwatch_ulp_latch(self)
            self.engine.close_flow(self.flow, now)
            self._notify_observers()

    def add_observer(self, callback: Callable[[UlpLatch], None]) -> None:
        """Also call ``callback(latch)`` when this latch breaks or closes."""
        if self.observers is None:
            self.observers = []
        self.observers.append(callback)

    def _notify_observers(self) -> None:
        observers, self.observers = self.observers, None
        for cb in observers or ():
            cb(self)

    def break_latch(
        self,
        reason: UlpBreakReason = UlpBreakReason.PEER_DEAD,
        *,
        offending: PacketTag | None = None,
        detail: str = "",
    ) -> bool:
        """Break a LATCHED latch for good and tell the application (``on_break``) and observers.

        This is the call for events from outside the packet path -- IKE DPD declaring the latched
        peer dead (RFC 5660 §2), a conflicting SA or SPD change the engine reports -- whatever the
        :class:`MismatchPolicy` (that only governs mismatching packets). Returns True if the latch
        broke now; no effect (False) in any other state than LATCHED."""
        if self.state is not UlpLatchState.LATCHED:
            return False
        latched = self.tag
        assert latched is not None
        self.state = UlpLatchState.BROKEN
        self.engine.ulp_latch_broken(self)
        if self.on_break is not None:
            self.on_break(UlpBreak(self.flow, latched, offending, self.disposition, reason, detail))
        self._notify_observers()
        return True

    def _mismatch(self, tag: PacketTag) -> None:
        if self.on_mismatch is MismatchPolicy.BREAK:
            self.break_latch(UlpBreakReason.TAG_MISMATCH, offending=tag)


_ACCEPT = InboundVerdict.ACCEPT
_LATCHED = UlpLatchState.LATCHED


# ---------------------------------------------------------------------------------------------
# pTokens for datagram applications


@dataclass(frozen=True, slots=True)
class PToken:
    """A protection token (BTNS abstract API, IETF 69 "btns-0"): how a datagram was protected.

    Handed to the application with each received datagram (``recvmsg``) and given back on
    ``sendmsg`` to demand the same protection. Attributes follow the pToken of docs/design.md: privacy /
    integrity protection, tunnel mode, and the peer identity (the iToken).
    """

    tag: PacketTag

    @property
    def privacy_protected(self) -> bool:
        return Protection.CONFIDENTIALITY in self.tag.protection

    @property
    def integrity_protected(self) -> bool:
        return Protection.INTEGRITY in self.tag.protection

    @property
    def tunnel_mode(self) -> bool:
        return self.tag.params is not None and self.tag.params.mode is Mode.TUNNEL

    @property
    def peer(self) -> PeerIdentity | None:
        """The iToken: who protected the datagram (None for cleartext)."""
        return self.tag.peer

    def matches(self, other: PToken) -> bool:
        return self.tag.same_protection(other.tag)


@dataclass(frozen=True, slots=True)
class Received:
    """A datagram as ``recvmsg`` hands it to the application: deliverable or not, and its token."""

    deliver: bool
    ptoken: PToken | None
    reason: DropReason | None = None


class DatagramLatching:
    """``recvmsg`` / ``sendmsg`` with pTokens for an unconnected datagram socket.

    The application records a pToken per peer it talks to and passes it back on every send; the
    socket layer checks that output can be protected exactly so (RFC 5660 §5.3 normative-model
    check "the 5-tuple agrees with the application-supplied latch") and refuses otherwise.
    """

    def __init__(self, engine: UlpEngine) -> None:
        self.engine = engine

    def recvmsg(self, decision: InboundDecision) -> Received:
        if not decision.accepted or decision.tag is None:
            return Received(False, None, decision.reason)
        return Received(True, PToken(decision.tag))

    def sendmsg(self, flow: FiveTuple, ptoken: PToken | None, now: float) -> OutboundDecision:
        """Send under ``ptoken`` (None = whatever policy says, and learn the token from the
        returned decision's tag)."""
        if ptoken is None:
            return self.engine.outbound(flow, now)
        d = self.engine.outbound(flow, now, like=ptoken.tag)
        if (
            d.verdict is OutboundVerdict.PROTECT
            and d.tag is not None
            and not d.tag.same_protection(ptoken.tag)
        ):
            return discard(DropReason.ULP_CANNOT_PROTECT_AS_LATCHED)
        return d
