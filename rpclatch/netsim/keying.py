"""The engine's key manager, backed by the simulated host's IKEv2 daemon (RFC 5660 §2.3 key manager).

:class:`IkeKeyManager` is :class:`rpclatch.ipsec.keymgr.StaticKeyManager` (PAD check, latch
vetting, SAD + backend install, LARVAL completion) with the ACQUIRE path replaced by a real IKEv2
exchange over the simulated wire: :meth:`acquire` asks the host's
:class:`~rpclatch.netsim.ike.SimIkeDaemon` to negotiate; its success installs SAs (as initiator
through :meth:`install_sa`; as responder the latch database vets the CHILD_SA with :meth:`vet_sa`
before the answer is sent and :meth:`commit_sa` installs it once established), its failure or
timeout ends the ACQUIRE (LARVAL latch -> CLOSED, the ULP is told "not latched").
"""

from __future__ import annotations

from rpclatch.ipsec.backend import Backend
from rpclatch.ipsec.errors import IPsecError
from rpclatch.ipsec.keymgr import AcquireOutcome, KeyManagerListener, PendingAcquire, StaticKeyManager
from rpclatch.ipsec.latch import LatchDatabase
from rpclatch.ipsec.model import FiveTuple, PeerIdentity, ProtectionPolicy
from rpclatch.ipsec.pad import PeerAuthorizationDatabase
from rpclatch.ipsec.sad import SecurityAssociation, SecurityAssociationDatabase
from rpclatch.netsim.ike import SimIkeDaemon


class IkeKeyManager(StaticKeyManager):
    """Key manager whose negotiations run over the simulated network (see module docstring)."""

    def __init__(
        self,
        sad: SecurityAssociationDatabase,
        pad: PeerAuthorizationDatabase,
        latches: LatchDatabase,
        backend: Backend,
        ike: SimIkeDaemon,
        *,
        listener: KeyManagerListener | None = None,
    ) -> None:
        super().__init__(sad, pad, latches, backend, acquire_timeout=3600.0, listener=listener)
        self.ike = ike
        ike.engine = self

    # -- ACQUIRE over IKEv2 -----------------------------------------------------------------------
    def acquire(self, flow: FiveTuple, policy: ProtectionPolicy, now: float) -> None:
        if flow in self.pending:
            return
        for sa in self.sad.carrying(flow):
            if policy.admits(sa.params):
                return
        self.pending[flow] = PendingAcquire(flow, policy, now, now + self.acquire_timeout, None, None)
        self.ike.request_sa(flow, policy, now)

    def poll(self, now: float) -> None:
        for sa in self.sad.expired(now):
            self.ike.expire_child(sa.sa_id)

    def next_deadline(self) -> float | None:
        times = [
            sa.created_at + sa.lifetime.hard_seconds
            for sa in self.sad
            if sa.lifetime.hard_seconds is not None
        ]
        return min(times) if times else None

    def restart(self, now: float, *, restore_latches: bool) -> None:
        if not restore_latches:
            self.ike.forget_all()
        super().restart(now, restore_latches=restore_latches)

    # -- KmEngine (called by the IKE daemon) ------------------------------------------------------
    def km_install_sa(self, sa: SecurityAssociation, now: float) -> SecurityAssociation | None:
        try:
            return self.install_sa(sa, now)
        except IPsecError:
            return None

    def km_vet_sa(self, sa: SecurityAssociation, now: float) -> SecurityAssociation | None:
        try:
            return self.vet_sa(sa, now)
        except IPsecError:
            return None

    def km_commit_sa(self, sa: SecurityAssociation, now: float) -> SecurityAssociation:
        return self.commit_sa(sa, now)

    def km_remove_sa(self, sa_id: int, now: float) -> None:
        self.delete_sa(sa_id, now)

    def km_setup_failed(self, flow: FiveTuple, *, timeout: bool, detail: str) -> None:
        pend = self.pending.pop(flow, None)
        self.latches.sa_setup_failed(flow, timeout=timeout, detail=detail)
        if pend is not None and self.listener is not None:
            outcome = AcquireOutcome.TIMEOUT if timeout else AcquireOutcome.NO_PEER
            self.listener.acquire_finished(flow, outcome, None, self.ike.now)

    def km_exchange_done(self, flow: FiveTuple, sa: SecurityAssociation) -> None:
        """The exchange for ``flow`` installed ``sa``: end the ACQUIRE (a latch the SA cannot
        serve is failed by the latch database, RFC 5660 §4)."""
        self.negotiation_finished(flow, sa, self.ike.now)

    def km_peer_dead(self, peer: PeerIdentity) -> None:
        self.peer_dead(peer, self.ike.now)
