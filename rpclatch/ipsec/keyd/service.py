"""A :class:`~rpclatch.ipsec.keyd.core.LatchService` backed by the IKE UDP endpoint.

CREATE_CONNECTION_LATCH starts an IKE SA towards the flow's remote address whose first CHILD_SA
is requested for exactly that 5-tuple (``Selector.for_flow``, RFC 4301 §4.4.1.2 PFP); the endpoint
installs the negotiated SAs and per-flow policies in its backend (XFRM on a real host). The
latch is ESTABLISHED when the CHILD_SA is, and BROKEN when that CHILD_SA or its IKE SA goes away
(RFC 5660 §2.3). FIND_LATCH finds the installed CHILD_SA that a peer negotiated for an accepted
connection. Results reach the core through the three callbacks of :class:`LatchEvents`.

Optional protection (RFC 5660 §3.1, BYPASS-OR-PROTECT): an accepted connection under a LISTENER
latch that FIND_LATCH finds unprotected gets a BYPASS latch for its exact 5-tuple (INQUIRE_LATCH
answers ``qop.protocol`` ``BYPASS``). While it lives, and for :attr:`IkeLatchService.hold`
seconds after it is released, a CHILD_SA a peer proposes for that 5-tuple is a conflict and is
refused (RFC 5660 §2.3): the one place is :meth:`IkeLatchService.vet_child`, the responder's
child acceptance (``IkeConfig.child_vetter``). A released latch is held TIME_WAIT-like the same
way: its SAs and kernel policies stay until the hold ends (so the connection's FIN exchange still
travels in ESP), and a CHILD_SA for its 5-tuple from another peer is refused meanwhile. When the
hold ends, the 5-tuple is sealed under an exact DISCARD policy before its SAs go, for the rest of
TCP's TIME_WAIT (:data:`DEFAULT_TIME_WAIT`), so that a late segment of the closed connection is
dropped rather than sent in clear; a new connection's SA on the same 5-tuple lifts the seal.

A latched flow never falls back to the clear (RFC 5660 §2.3: a BROKEN latch's packets are
dropped): the endpoint's datapath is wrapped (:class:`LatchGuardBackend`) so that when the last SA
pair of an ESTABLISHED latch's 5-tuple is removed -- peer DELETE, IKE SA failure -- an exact
5-tuple DISCARD policy is installed first, in the same call; it stays until the latch is released
and its hold has ended. A CHILD_SA rekey moves the latch to the new pair (no break).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rpclatch.ipsec.backend import Backend, FlowPolicy, SocketPolicy
from rpclatch.ipsec.channel_binding import encode_binding_data
from rpclatch.ipsec.ike.config import ChildRequest, Endpoint
from rpclatch.ipsec.ike.errors import IkeError
from rpclatch.ipsec.ike.events import (
    ChildProposal,
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
from rpclatch.ipsec.sad import SecurityAssociation, narrow_flow
from rpclatch.ipsec.spd import EntryOrigin, SpdAction, SpdEntry

log = logging.getLogger(__name__)

IKE_PORT = 500
#: Seconds a released latch (and a BYPASS record) is held, TIME_WAIT-like (see the module docstring).
DEFAULT_HOLD = 2.0
#: Seconds after its release that a protected flow's 5-tuple stays under DISCARD once its SAs are
#: gone: TCP's TIME_WAIT on Linux (TCP_TIMEWAIT_LEN, 2 MSL), so that a late segment of the closed
#: connection (a retransmitted FIN, its ACK) is dropped rather than sent in clear
DEFAULT_TIME_WAIT = 60.0
#: At most this many 5-tuples sealed so at once (each is two kernel policies); past it a released
#: flow is not sealed, with a log line (the table is fed by connection churn)
MAX_SEALED = 16384


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
    #: an unprotected accepted connection's BYPASS record (RFC 5660 §3.1)
    bypass: bool = False


@dataclass(frozen=True, slots=True)
class _Held:
    """A released latch's 5-tuple, held until ``until`` (TIME_WAIT-like)."""

    flow: FiveTuple
    bypass: bool
    peer_spki: bytes | None
    until: float


_FAILURE_CODES = {
    FailureReason.AUTHENTICATION_FAILED: ErrorCode.PEER_REFUSED,
    FailureReason.TIMEOUT: ErrorCode.IKE_TIMEOUT,
    FailureReason.UNREACHABLE: ErrorCode.IKE_UNREACHABLE,
}


class LatchGuardBackend(Backend):
    """The endpoint's datapath with one addition: removing the last SA pair of a latched 5-tuple
    installs an exact DISCARD policy for it first (see the module docstring). ``latched(flow)``
    says whether an ESTABLISHED latch holds ``flow``; ``others(sa)`` whether another installed SA
    pair still carries the narrow flow of ``sa`` (a CHILD_SA rekey)."""

    def __init__(
        self,
        inner: Backend,
        latched: Callable[[FiveTuple], bool],
        others: Callable[[SecurityAssociation], bool],
    ) -> None:
        self.inner = inner
        self.latched = latched
        self.others = others
        #: 5-tuples of broken latches under a DISCARD policy of ours
        self.blocked: set[FiveTuple] = set()
        #: 5-tuples of released protected latches under DISCARD for the rest of TCP's TIME_WAIT
        #: (:meth:`seal`), each with the token of its seal
        self.sealed: dict[FiveTuple, int] = {}
        self.max_sealed = MAX_SEALED
        self._seals = itertools.count(1)
        self._unsealed_for_room = 0

    def install_sa(self, sa: SecurityAssociation) -> None:
        flow = narrow_flow(sa)
        if flow is not None and self.sealed.pop(flow, None) is not None and flow not in self.blocked:
            # a new connection on the 5-tuple of a closed one: its SAs decide now
            self.inner.remove_flow_policy(flow)
        self.inner.install_sa(sa)

    def remove_sa(self, sa: SecurityAssociation) -> None:
        flow = narrow_flow(sa)
        if flow is not None and flow not in self.blocked and self.latched(flow) and not self.others(sa):
            self.block(flow)
            log.warning("latched flow %s lost its SAs: DISCARD until the latch is released", flow)
        self.inner.remove_sa(sa)

    def block(self, flow: FiveTuple) -> None:
        """Put ``flow`` under an exact DISCARD policy of ours (nothing of it sent or accepted,
        RFC 5660 §2.3). It sits in the flow layer, above any SA's pinned policies: an SA
        installed later for the same 5-tuple (a conflicting one) does not lift it."""
        if flow not in self.blocked:
            if self.sealed.pop(flow, None) is None:
                self._discard(flow)
            self.blocked.add(flow)

    def seal(self, flow: FiveTuple) -> int | None:
        """Put a released protected flow, whose SAs are about to go, under DISCARD until
        :meth:`unseal` (the rest of TCP's TIME_WAIT): a late segment of the closed connection is
        dropped, never sent in clear. Unlike :meth:`block`, an SA installed later for the same
        5-tuple (a new connection) lifts it. Returns the seal's token, or None when the flow is
        blocked already or :attr:`max_sealed` are sealed (then logged)."""
        if flow in self.blocked or flow in self.sealed:
            return None
        if len(self.sealed) >= self.max_sealed:
            self._unsealed_for_room += 1
            if self._unsealed_for_room == 1 or self._unsealed_for_room % 1000 == 0:
                log.warning(
                    "%d released flows not sealed for TIME_WAIT: %d already are (limit)",
                    self._unsealed_for_room,
                    len(self.sealed),
                )
            return None
        token = next(self._seals)
        self._discard(flow)
        self.sealed[flow] = token
        return token

    def unseal(self, flow: FiveTuple, token: int) -> None:
        """End the seal ``token`` of ``flow`` (no-op if it was lifted or replaced meanwhile)."""
        if self.sealed.get(flow) == token:
            del self.sealed[flow]
            self.inner.remove_flow_policy(flow)

    def _discard(self, flow: FiveTuple) -> None:
        entry = SpdEntry.flow_entry(flow, SpdAction.DISCARD, None, EntryOrigin.PINNED_LATCH)
        self.inner.install_flow_policy(FlowPolicy(flow, entry, None))

    def unblock(self, flow: FiveTuple) -> None:
        if flow in self.blocked:
            self.blocked.discard(flow)
            self.inner.remove_flow_policy(flow)

    def install_flow_policy(self, policy: FlowPolicy) -> None:
        self.inner.install_flow_policy(policy)

    def remove_flow_policy(self, flow: FiveTuple) -> None:
        self.inner.remove_flow_policy(flow)

    @property
    def flow_policies(self) -> Mapping[FiveTuple, FlowPolicy]:
        return self.inner.flow_policies

    def install_spd(self, entries: Iterable[SpdEntry]) -> None:
        self.inner.install_spd(entries)

    def install_socket_policy(self, policy: SocketPolicy) -> None:
        self.inner.install_socket_policy(policy)

    def remove_socket_policy(self, socket_id: int) -> None:
        self.inner.remove_socket_policy(socket_id)

    def reset(self) -> None:
        self.blocked.clear()
        self.sealed.clear()
        self.inner.reset()

    def __getattr__(self, name: str) -> Any:
        """Everything else is the wrapped datapath's (e.g. ``InProcessBackend.sas``)."""
        return getattr(self.inner, name)


class IkeLatchService:
    """Latches over one :class:`IkeUdpEndpoint` (see the module docstring)."""

    def __init__(
        self,
        endpoint: IkeUdpEndpoint,
        events: LatchEvents,
        *,
        local_spki: bytes | None,
        peer_endpoint: Callable[[IPAddress], Endpoint] = lambda addr: (addr, IKE_PORT),
        hold: float = DEFAULT_HOLD,
        time_wait: float = DEFAULT_TIME_WAIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.events = events
        self.local_spki = local_spki
        self.peer_endpoint = peer_endpoint
        self.hold = hold
        self.time_wait = time_wait
        self.clock = clock
        self._ids = itertools.count(1)
        self.latches: dict[int, _Latch] = {}
        self.held: list[_Held] = []
        self._timers: set[asyncio.TimerHandle] = set()
        # the responder's child acceptance asks vet_child (composed with a vetter already set)
        config = endpoint.dispatcher.config
        previous = config.child_vetter

        def vetter(proposal: ChildProposal) -> Selector | None:
            chosen = self.vet_child(proposal)
            return chosen if chosen is None or previous is None else previous(proposal)

        endpoint.dispatcher.config = dataclasses.replace(config, child_vetter=vetter)
        self.guard: LatchGuardBackend | None = None
        if endpoint.backend is not None:
            self.guard = LatchGuardBackend(endpoint.backend, self._latched, self._carried_elsewhere)
            endpoint.backend = self.guard

    def _latched(self, flow: FiveTuple) -> bool:
        return any(
            latch.flow == flow and latch.state == "ESTABLISHED" and not latch.bypass
            for latch in self.latches.values()
        )

    def _carried_elsewhere(self, sa: SecurityAssociation) -> bool:
        flow = narrow_flow(sa)
        return any(
            inst.sad_entry.sa_id != sa.sa_id and narrow_flow(inst.sad_entry) == flow
            for inst in self.endpoint.installed.values()
        )

    def close(self) -> None:
        for latch in self.latches.values():
            if latch.task is not None:
                latch.task.cancel()
        self.latches.clear()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self.held.clear()
        if self.guard is not None:
            for flow in list(self.guard.blocked):
                self.guard.unblock(flow)
            for flow, token in list(self.guard.sealed.items()):
                self.guard.unseal(flow, token)

    # ------------------------------------------------------------------ conflicts (RFC 5660 §2.3)

    def _prune(self) -> None:
        now = self.clock()
        self.held = [h for h in self.held if h.until > now]

    def vet_child(self, proposal: ChildProposal) -> Selector | None:
        """``IkeConfig.child_vetter``: the conflict rules of RFC 5660 §2.3 for a new CHILD_SA of
        peer P (its selector already narrowed by the PAD, RFC 5386 §3.1). The 5-tuples it may
        not take from others: those of a BYPASS record (live or held), of a latch held by
        another peer (live -- LARVAL, ESTABLISHED or BROKEN -- or held after release), and of
        an installed narrow CHILD_SA of another peer (a latch in the making: FIND_LATCH may not
        have asked for it yet).

        - A selector wider than such a 5-tuple is narrowed around it (§2.3 SHOULD; RFC 7296
          §2.9: the answer is a subset of the proposal).
        - A selector that is exactly the 5-tuple of an ESTABLISHED or BROKEN latch of another
          peer cannot be narrowed: the latch goes BROKEN, its flow is put under DISCARD, and its
          holder is ALERTed, all before this returns and so before the SA is accepted and
          installed (§2.3 MUST); the SA is then accepted. Its pinned policies sit below the
          DISCARD, which lasts until the latch is released and its hold has ended, so nothing
          of the flow ever travels under the newcomer's keys (the holder resets, §5.5 (b)).
        - Exactly the 5-tuple of anything else (a BYPASS record, a LARVAL, held or not yet
          found latch): refused (None: TS_UNACCEPTABLE), there is no holder to tell.

        Rekeys of our own CHILD_SAs pass."""
        if proposal.rekey_of is not None:
            return proposal.selector
        self._prune()
        spki = proposal.peer.spki_der if isinstance(proposal.peer, RawPublicKeyPeer) else None
        # (5-tuple, the live latch to break if the proposal is exactly it, what it is)
        taken: list[tuple[FiveTuple, int | None, str]] = []
        for handle, latch in self.latches.items():
            if latch.flow is None or not (latch.bypass or latch.peer_spki != spki):
                continue
            breakable = not latch.bypass and latch.state in ("ESTABLISHED", "BROKEN")
            what = "BYPASS record" if latch.bypass else f"{latch.state} latch of another peer"
            taken.append((latch.flow, handle if breakable else None, what))
        taken += [
            (h.flow, None, "held BYPASS record" if h.bypass else "held latch of another peer")
            for h in self.held
            if h.bypass or h.peer_spki != spki
        ]
        latched = {latch.flow for latch in self.latches.values()}
        for inst in self.endpoint.installed.values():
            peer = inst.sad_entry.peer
            flow = narrow_flow(inst.sad_entry)
            if flow is None or flow in latched:
                continue  # a latched flow's SAs are its latch's (above)
            if (peer.spki_der if isinstance(peer, RawPublicKeyPeer) else None) != spki:
                taken.append((flow, None, "CHILD_SA of another peer not yet latched"))
        selector = proposal.selector
        to_break: list[int] = []
        for flow, holder, what in taken:
            if not selector.matches(flow):
                continue
            pieces = selector.exclude(flow)
            if pieces:
                log.info("CHILD_SA for %s narrowed around the %s of %s (RFC 5660 §2.3)", selector, what, flow)
                selector = pieces[0]
            elif holder is not None:
                to_break.append(holder)
            else:
                log.warning("CHILD_SA for %s refused: the %s of %s (RFC 5660 §2.3)", selector, what, flow)
                return None
        for handle in to_break:
            self._break(handle, f"conflicting CHILD_SA of peer {_fingerprint(spki)} (RFC 5660 §2.3)")
        return selector

    def _break(self, handle: int, reason: str) -> None:
        """ESTABLISHED -> BROKEN for a conflict (RFC 5660 §2.3): DISCARD the flow, then ALERT."""
        latch = self.latches[handle]
        assert latch.flow is not None
        if self.guard is not None:
            self.guard.block(latch.flow)
        if latch.state == "BROKEN":
            return  # already broken (and its holder told)
        if latch.task is not None:
            latch.task.cancel()
            latch.task = None
        latch.state = "BROKEN"
        log.warning("latch %d on %s BROKEN: %s", handle, latch.flow, reason)
        self.events.broken(handle, reason)

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
        remote = self.peer_endpoint(flow.remote_addr)
        # RFC 7296 §2.4: the first IKE SA with a peer carries INITIAL_CONTACT, so that a peer
        # still holding the SAs of a crashed predecessor of this key manager deletes them (a
        # latch must never stay ESTABLISHED on lost state, RFC 5660 §2.3)
        first = not any(sa.remote[0] == remote[0] for sa in self.endpoint.dispatcher.sas)
        try:
            sa = self.endpoint.initiate(remote, ChildRequest(Selector.for_flow(flow)), initial_contact=first)
        except (IkeError, ValueError) as exc:
            raise ServiceRefusal(ErrorCode.POLICY_REFUSED, str(exc)) from None
        handle = next(self._ids)
        latch = _Latch(flow, None, initiator=True, ike_sa=sa.ref)
        self.latches[handle] = latch
        latch.task = asyncio.ensure_future(self._follow(handle, latch))
        return handle

    def find(self, flow: FiveTuple) -> int | None:
        """The latch of the CHILD_SA negotiated for ``flow``; for an unprotected ``flow`` under a
        LISTENER latch, a new BYPASS latch (RFC 5660 §3.1); else None."""
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
        if any(_listens(latch.listener, flow) for latch in self.latches.values()):
            handle = next(self._ids)
            self.latches[handle] = _Latch(flow, None, initiator=False, state="ESTABLISHED", bypass=True)
            return handle
        return None

    def inquire(self, latch: int) -> LatchInfo | None:
        state = self.latches.get(latch)
        if state is None:
            return None
        qop: dict[str, Any] = {}
        if state.bypass:
            qop = {"protocol": "BYPASS"}
        elif state.child is not None:
            qop = {
                "protocol": "ESP",
                "suite": str(state.child.suite),
                "mode": str(state.child.mode.name),
                "confidentiality": state.child.suite.encryption is not None,
            }
        bindings = None
        if state.peer_spki and self.local_spki and state.state == "ESTABLISHED":
            client, server = (
                (self.local_spki, state.peer_spki) if state.initiator else (state.peer_spki, self.local_spki)
            )
            bindings = encode_binding_data(client, server)
        return LatchInfo(state.state, state.flow, state.peer_spki, qop, bindings)

    def release(self, latch: int) -> None:
        """Forget the latch; an ESTABLISHED one is held for :attr:`hold` seconds first (its
        5-tuple stays a conflict, and the IKE SA we initiated for it -- with its kernel SAs and
        policies -- is deleted only when the hold ends). When the hold of a protected one ends,
        its 5-tuple is sealed (DISCARD) before its SAs go, until :attr:`time_wait` seconds after
        the release (TCP's TIME_WAIT: a late FIN or ACK of the closed connection is dropped, not
        sent in clear)."""
        state = self.latches.pop(latch, None)
        if state is None:
            return
        if state.task is not None:
            state.task.cancel()
        established = state.state == "ESTABLISHED"
        if established and state.flow is not None and self.hold > 0:
            self.held.append(_Held(state.flow, state.bypass, state.peer_spki, self.clock() + self.hold))
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        guard, flow = self.guard, state.flow
        if guard is not None and flow is not None and flow in guard.blocked:
            # a BROKEN latch's DISCARD outlives it by the hold (stray segments of the flow)
            if self.hold > 0 and loop is not None:
                self._later(loop, lambda: guard.unblock(flow))
            else:
                guard.unblock(flow)
        ref = state.ike_sa if state.initiator else None
        if established and self.hold > 0 and loop is not None:
            seal = not state.bypass and self.time_wait > self.hold

            def hold_ended() -> None:
                if seal and guard is not None and flow is not None:
                    token = guard.seal(flow)
                    if token is not None:
                        self._later(loop, lambda: guard.unseal(flow, token), self.time_wait - self.hold)
                if ref is not None:
                    self._delete(ref)

            self._later(loop, hold_ended)
        elif ref is not None:
            self._delete(ref)

    def _later(
        self, loop: asyncio.AbstractEventLoop, action: Callable[[], None], delay: float | None = None
    ) -> None:
        """Run ``action`` when the hold ends (or after ``delay`` seconds)."""

        def run() -> None:
            self._timers.discard(timer)
            action()

        timer = loop.call_later(self.hold if delay is None else delay, run)
        self._timers.add(timer)

    def _delete(self, ref: IkeSaRef) -> None:
        sa = self._sa(ref)
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
                "peer": "BYPASS"
                if latch.bypass
                else "-"
                if latch.peer_spki is None
                else spki_fingerprint(latch.peer_spki)[:16],
            }
            for handle, latch in sorted(self.latches.items())
        ]
        self._prune()
        now = self.clock()
        held = [
            {"flow": str(h.flow), "bypass": h.bypass, "seconds_left": round(h.until - now, 3)}
            for h in self.held
        ]
        sealed = 0 if self.guard is None else len(self.guard.sealed)
        return {
            "ike_sas": ike,
            "child_sas": children,
            "latches": latches,
            "held": held,
            "time_wait_sealed": sealed,
        }

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
        ref = latch.ike_sa

        seen = len(self.endpoint.events)

        def gone(event_ref: IkeSaRef, event: IkeEvent) -> bool:
            spi_in = latch.child.spi_in if latch.child is not None else None
            if isinstance(event, IkeSaRekeyed):  # the CHILD_SAs move to the new IKE SA (§2.18)
                return event.old == ref
            if event_ref != ref:
                return False
            if isinstance(event, ChildSaEstablished):  # a CHILD_SA rekey replaces the pair (§2.8)
                return event.replaces is not None and event.replaces == spi_in
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
            if isinstance(event, ChildSaEstablished):
                latch.child = event.child
                continue
            break
        latch.state = "BROKEN"
        self.events.broken(handle, type(event).__name__)


def _fingerprint(spki: bytes | None) -> str:
    return "(no raw key)" if spki is None else spki_fingerprint(spki)[:16]


def _listens(listener: Listener | None, flow: FiveTuple) -> bool:
    """``flow`` (local-oriented) arrived on ``listener``'s 3-tuple (RFC 5660 §5.1)."""
    return (
        listener is not None
        and listener.proto == flow.proto
        and listener.local_port == flow.local_port
        and (listener.local_addr is None or listener.local_addr == flow.local_addr)
    )
