"""Key manager (RFC 5660 §2.3 "the component that manages the SAD"), sans-IO.

:class:`KeyManager` is the interface the engine drives; :class:`StaticKeyManager` implements it
with static keying. It sits between the PAD (:mod:`rpclatch.ipsec.pad`), the Latch Database
(:mod:`rpclatch.ipsec.latch`), the SAD and the datapath backend. ACQUIRE (RFC 4301 §5.1 step 3c)
is :meth:`KeyManager.acquire`; it ends with :meth:`KeyManagerListener.acquire_finished`
(INSTALLED, NO_PEER or TIMEOUT). Nothing reads a clock: ``now`` is always passed in and
:meth:`KeyManager.poll` runs timers.
"""

from __future__ import annotations

import abc
import itertools
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Protocol

from rpclatch.ipsec.backend import Backend
from rpclatch.ipsec.errors import IPsecError
from rpclatch.ipsec.latch import LatchDatabase, SaRequester
from rpclatch.ipsec.model import (
    AddressRange,
    FiveTuple,
    IkeSaRef,
    IPAddress,
    LocalIdentity,
    PeerIdentity,
    ProtectionParams,
    ProtectionPolicy,
    Selector,
)
from rpclatch.ipsec.pad import PeerAuthorizationDatabase
from rpclatch.ipsec.sad import Lifetime, SecurityAssociation, SecurityAssociationDatabase


class AcquireOutcome(Enum):
    INSTALLED = "installed"
    NO_PEER = "no-peer"  # nobody to negotiate with (no IKE at the peer, refused proposal)
    TIMEOUT = "timeout"  # IKE did not finish in time
    #: SAs were made but do not meet the waiting latch's parameters (RFC 5660 §4: with different
    #: parameters requested on the two ends the latch must fail); the LD has failed the latch
    UNSUITABLE = "unsuitable"


@dataclass(frozen=True, slots=True)
class SaProvision:
    """A statically keyed peer: what an ACQUIRE for a flow to ``remote`` will produce.

    ``narrow`` makes per-5-tuple SAs (PFP on every selector, RFC 5660 §2.1); otherwise the SA gets
    ``selectors`` -- unless the ACQUIRE's policy asks for narrow SAs (``ProtectionPolicy.narrow``,
    the default), which wins. ``setup_delay`` is the virtual time the "negotiation" takes; a delay longer than
    the acquire timeout models an IKE timeout (e.g. no IKE daemon at the peer). ``refuse`` models a
    peer that answers and refuses (NO_PROPOSAL_CHOSEN, AUTHENTICATION_FAILED) after ``setup_delay``.
    """

    remote: AddressRange
    peer: PeerIdentity
    peer_addr: IPAddress
    local: LocalIdentity
    params: ProtectionParams
    ike_sa: IkeSaRef
    narrow: bool = True
    selectors: tuple[Selector, ...] = ()
    setup_delay: float = 0.0
    refuse: bool = False
    lifetime: Lifetime = field(default_factory=Lifetime)


@dataclass(slots=True)
class PendingAcquire:
    flow: FiveTuple
    policy: ProtectionPolicy
    started: float
    deadline: float
    ready_at: float | None
    provision: SaProvision | None


class KeyManagerListener(Protocol):
    def acquire_finished(
        self, flow: FiveTuple, outcome: AcquireOutcome, sa: SecurityAssociation | None, now: float
    ) -> None: ...

    def vet_child_sa(self, sa: SecurityAssociation, now: float) -> SecurityAssociation | None:
        """``sa`` passed the PAD and the LD and is about to enter the SAD: vet it against latches
        the LD does not hold (approach 1's TCB latches) -- narrow it around them, or break them
        now. Returns the SA to install (possibly narrowed), None if narrowing left nothing."""


class KeyManager(abc.ABC):
    """Key-manager interface the engine drives."""

    @abc.abstractmethod
    def install_sa(self, sa: SecurityAssociation, now: float) -> SecurityAssociation | None:
        """Authorize, vet against latches, and install an SA; returns the installed (possibly
        narrowed) SA, or None if narrowing left nothing. ``sa_id`` 0 means "assign one"; ``reqid``
        0 means "assign the peer's reqid". Raises ChildSaRefused / PeerNotAuthorized.

        Every SA takes this path, whether it comes from an ACQUIRE or directly:

        1. PAD: authorize the peer and its traffic selectors (RFC 4301 §4.4.3.4, RFC 5386 §2,
           RFC 7619);
        2. LD: narrow the proposal or break conflicting latches, alerting holders before
           acceptance (RFC 5660 §2.3);
        3. SAD + backend install; 4. LD: LARVAL latches that were waiting become ESTABLISHED."""

    @abc.abstractmethod
    def delete_sa(self, sa_id: int, now: float) -> SecurityAssociation | None:
        """Remove an SA (expiry, IKE Delete)."""

    @abc.abstractmethod
    def acquire(self, flow: FiveTuple, policy: ProtectionPolicy, now: float) -> None:
        """ACQUIRE: start child SAs (and an IKE SA if needed) for ``flow``. Idempotent per flow."""

    @abc.abstractmethod
    def poll(self, now: float) -> None:
        """Run timers: finish negotiations due by ``now``, time out the rest, expire SAs."""

    @abc.abstractmethod
    def next_deadline(self) -> float | None:
        """Earliest virtual time at which :meth:`poll` has work, or None."""

    @abc.abstractmethod
    def restart(self, now: float, *, restore_latches: bool) -> None:
        """Key-manager restart (RFC 5660 §2): latches restored or CLOSED; pending ACQUIREs fail."""

    @abc.abstractmethod
    def peer_dead(self, peer: PeerIdentity, now: float) -> None:
        """IKE DPD concluded ``peer`` is dead: delete its SAs, break its latches irremediably."""


class StaticKeyManager(KeyManager, SaRequester):
    """Static keying: SAs come from :class:`SaProvision` records configured in advance (what a
    peer would agree to) and are installed on ACQUIRE after ``setup_delay`` of virtual time, or
    installed directly with :meth:`install_sa` (the simulated network's IKE does that)."""

    def __init__(
        self,
        sad: SecurityAssociationDatabase,
        pad: PeerAuthorizationDatabase,
        latches: LatchDatabase,
        backend: Backend,
        *,
        provisions: tuple[SaProvision, ...] = (),
        acquire_timeout: float = 5.0,
        listener: KeyManagerListener | None = None,
    ) -> None:
        self.sad = sad
        self.pad = pad
        self.latches = latches
        self.backend = backend
        self.provisions = list(provisions)
        self.acquire_timeout = acquire_timeout
        self.listener = listener
        self.pending: dict[FiveTuple, PendingAcquire] = {}
        self._reqids: dict[PeerIdentity, int] = {}
        self._reqid_counter = itertools.count(1)
        self._spis = itertools.count(0x1000)
        latches.requester = self

    def add_provision(self, provision: SaProvision) -> None:
        self.provisions.append(provision)

    def reqid_for(self, peer: PeerIdentity) -> int:
        """One reqid per peer identity: XFRM policies pin flows to a peer's SAs by reqid."""
        rid = self._reqids.get(peer)
        if rid is None:
            rid = self._reqids[peer] = next(self._reqid_counter)
        return rid

    # -- SAs ---------------------------------------------------------------------------------

    def install_sa(self, sa: SecurityAssociation, now: float) -> SecurityAssociation | None:
        vetted = self.vet_sa(sa, now)
        return None if vetted is None else self.commit_sa(vetted, now)

    def vet_sa(self, sa: SecurityAssociation, now: float) -> SecurityAssociation | None:
        """Steps 1 and 2 of :meth:`install_sa` without installing (an IKE responder vets a CHILD_SA
        before answering, RFC 5660 §2.3): the SA to install with :meth:`commit_sa` (ids assigned,
        possibly narrowed), or None. Conflicting latches are broken and alerted here."""
        match = self.pad.authorize(sa.peer)
        self.pad.check_child_sa(match, sa.remote_addr, sa.traffic_selectors)
        changes: dict[str, object] = {"btns": match.btns}
        if sa.sa_id == 0:
            changes["sa_id"] = self.sad.next_sa_id()
        if sa.reqid == 0:
            changes["reqid"] = self.reqid_for(sa.peer)
        sa = replace(sa, **changes)  # type: ignore[arg-type]
        verdict = self.latches.vet_child_sa(sa)
        if verdict.sa is None:
            return None
        sa = verdict.sa
        if self.listener is not None:
            vetted = self.listener.vet_child_sa(sa, now)
            if vetted is None:
                return None
            sa = vetted
        return sa

    def commit_sa(self, sa: SecurityAssociation, now: float) -> SecurityAssociation:
        """Steps 3 and 4 of :meth:`install_sa` for an SA :meth:`vet_sa` returned."""
        self.sad.add(sa)
        self.backend.install_sa(sa)
        self.latches.sa_installed(sa, now)
        for flow in [f for f in self.pending if sa.carries(f)]:
            self.negotiation_finished(flow, sa, now)
        return sa

    def negotiation_finished(self, flow: FiveTuple, sa: SecurityAssociation, now: float) -> None:
        """A negotiation for ``flow`` ended with ``sa`` installed (which may not even carry the
        flow, e.g. when narrowed around another latch). Ends the flow's ACQUIRE: INSTALLED, or
        UNSUITABLE if the flow's latch is still LARVAL -- the LD then fails that latch
        (:meth:`LatchDatabase.negotiation_finished`, RFC 5660 §4)."""
        pend = self.pending.pop(flow, None)
        unsuitable = self.latches.negotiation_finished(flow, f"negotiated {sa} does not suit the latch")
        if pend is not None and self.listener is not None:
            outcome = AcquireOutcome.UNSUITABLE if unsuitable else AcquireOutcome.INSTALLED
            self.listener.acquire_finished(flow, outcome, sa, now)

    def delete_sa(self, sa_id: int, now: float) -> SecurityAssociation | None:
        sa = self.sad.remove(sa_id)
        if sa is None:
            return None
        self.backend.remove_sa(sa)
        self.latches.sa_removed(sa)
        return sa

    # -- ACQUIRE -----------------------------------------------------------------------------

    def request_sa(self, flow: FiveTuple, policy: ProtectionPolicy, now: float) -> None:
        self.acquire(flow, policy, now)

    def acquire(self, flow: FiveTuple, policy: ProtectionPolicy, now: float) -> None:
        if flow in self.pending:
            return
        prov = next(
            (p for p in self.provisions if p.remote.contains(flow.remote_addr) and policy.admits(p.params)),
            None,
        )
        ready_at = None if prov is None else now + prov.setup_delay
        self.pending[flow] = PendingAcquire(flow, policy, now, now + self.acquire_timeout, ready_at, prov)
        if prov is None:
            # nobody to negotiate with: fail after the timeout, as a real IKE initiator would
            return
        if prov.setup_delay <= 0:
            self.poll(now)

    def poll(self, now: float) -> None:
        for sa in self.sad.expired(now):
            self.delete_sa(sa.sa_id, now)
        for flow, pend in list(self.pending.items()):
            if flow not in self.pending:
                continue  # resolved by an SA installed earlier in this loop
            if pend.ready_at is not None and pend.ready_at <= now and pend.ready_at <= pend.deadline:
                assert pend.provision is not None
                if pend.provision.refuse:
                    del self.pending[flow]
                    if self.listener is not None:
                        self.listener.acquire_finished(flow, AcquireOutcome.NO_PEER, None, now)
                    continue
                self._install_from(pend, now)
            elif pend.deadline <= now:
                del self.pending[flow]
                outcome = AcquireOutcome.NO_PEER if pend.provision is None else AcquireOutcome.TIMEOUT
                if self.listener is not None:
                    self.listener.acquire_finished(flow, outcome, None, now)

    def _install_from(self, pend: PendingAcquire, now: float) -> None:
        prov = pend.provision
        assert prov is not None
        # RFC 5660 §2.1: a request for a specific QoP SHOULD imply narrow SAs
        narrow = prov.narrow or pend.policy.narrow or not prov.selectors
        selectors = (Selector.for_flow(pend.flow),) if narrow else prov.selectors
        sa = SecurityAssociation(
            sa_id=0,
            spi_in=next(self._spis),
            spi_out=next(self._spis),
            local_addr=pend.flow.local_addr,
            remote_addr=prov.peer_addr,
            traffic_selectors=selectors,
            peer=prov.peer,
            local=prov.local,
            params=prov.params,
            ike_sa=prov.ike_sa,
            lifetime=prov.lifetime,
            created_at=now,
        )
        try:
            installed = self.install_sa(sa, now)
        except IPsecError:  # the PAD refused the provisioned peer: the negotiation failed
            self.pending.pop(pend.flow, None)
            if self.listener is not None:
                self.listener.acquire_finished(pend.flow, AcquireOutcome.NO_PEER, None, now)
            return
        if installed is None:
            self.pending.pop(pend.flow, None)
            if self.listener is not None:
                self.listener.acquire_finished(pend.flow, AcquireOutcome.NO_PEER, None, now)
        elif pend.flow in self.pending:  # installed, but narrowed so that it misses the flow
            self.negotiation_finished(pend.flow, installed, now)

    def next_deadline(self) -> float | None:
        times: list[float] = []
        for pend in self.pending.values():
            times.append(pend.deadline)
            if pend.ready_at is not None:
                times.append(pend.ready_at)
        for sa in self.sad:
            if sa.lifetime.hard_seconds is not None:
                times.append(sa.created_at + sa.lifetime.hard_seconds)
        return min(times) if times else None

    # -- lifecycle ---------------------------------------------------------------------------

    def restart(self, now: float, *, restore_latches: bool) -> None:
        pending = list(self.pending)
        self.pending.clear()
        self.latches.key_manager_restarted(restore=restore_latches)
        for flow in pending:
            self.latches.sa_setup_failed(flow, timeout=False, detail="key manager restarted")
            if self.listener is not None:
                self.listener.acquire_finished(flow, AcquireOutcome.NO_PEER, None, now)

    def peer_dead(self, peer: PeerIdentity, now: float) -> None:
        self.latches.peer_dead(peer)
        for sa in self.sad.with_peer(peer):
            self.delete_sa(sa.sa_id, now)
