"""RFC 5660 §2.3 normative model: the Latch Database (LD), latch state machine and ALERTs.

The LD lives "next to the SAD" in the key manager (RFC 5660 Figure 2). The ULP-facing interface
is exactly the RFC's:

==========================  ==============================================================
RFC 5660 §2.3               here
==========================  ==============================================================
CREATE_LISTENER_LATCH       :meth:`LatchDatabase.create_listener_latch`
CREATE_CONNECTION_LATCH     :meth:`LatchDatabase.create_connection_latch`
RELEASE_LATCH               :meth:`LatchDatabase.release_latch`
FIND_LATCH                  :meth:`LatchDatabase.find_latch`
INQUIRE_LATCH               :meth:`LatchDatabase.inquire_latch`
ALERT                       the ``on_alert`` callback given at creation (an :class:`Alert`)
==========================  ==============================================================

Key-manager-facing hooks implement the conflict rules: :meth:`LatchDatabase.vet_child_sa` (narrow
a conflicting proposal, or break the latch and alert the holder *before* the SA is accepted),
:meth:`LatchDatabase.sa_installed` / :meth:`sa_removed`, :meth:`spd_changed`,
:meth:`peer_dead` (DPD), :meth:`key_manager_restarted` and :meth:`peer_id_store_corrupted`.

State machine (RFC 5660 §2.2 Figure 1 + private LARVAL) is the table :data:`TRANSITIONS`;
:func:`next_state` raises :class:`IllegalTransition` for anything else.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum

from rpclatch.channel import Protection
from rpclatch.ipsec.errors import IllegalTransition, LatchConflict, LatchExists, LatchNotFound, PolicyRefused
from rpclatch.ipsec.model import (
    CipherSuite,
    FiveTuple,
    IkeSaRef,
    IPAddress,
    LocalIdentity,
    Mode,
    PeerIdentity,
    ProtectionPolicy,
    SecurityProtocol,
    Selector,
    ThreeTuple,
)
from rpclatch.ipsec.sad import SecurityAssociation, SecurityAssociationDatabase
from rpclatch.ipsec.spd import EntryOrigin, SecurityPolicyDatabase, SpdAction, SpdEntry

# ---------------------------------------------------------------------------------------------
# State machine


class LatchState(Enum):
    """RFC 5660 §2.2 states, plus the implementation-private LARVAL (§2.3)."""

    LARVAL = "LARVAL"
    LISTENER = "LISTENER"
    ESTABLISHED = "ESTABLISHED"
    BROKEN = "BROKEN"
    CLOSED = "CLOSED"


class LatchEvent(Enum):
    CREATE_LISTENER = "create-listener"  # T1
    CREATE_ESTABLISHED = "create-established"  # T2 / T3 with suitable SAs
    CREATE_BROKEN = "create-broken"  # T2 "(or BROKEN)"
    CREATE_LARVAL = "create-larval"  # T3 with SA setup delayed (§2.3 LARVAL)
    SA_READY = "sa-ready"  # LARVAL -> ESTABLISHED
    SA_FAILED = "sa-failed"  # LARVAL -> CLOSED (SA establishment failed / timed out)
    CONFLICT = "conflict"  # T4 (and further conflicts while BROKEN)
    CONFLICTS_CLEARED = "conflicts-cleared"  # T5
    RELEASE = "release"  # T6 / T7 by the owner
    ADMIN_CLOSE = "admin-close"  # T7 administrative (also KM restart, peer-ID store corruption)


S = LatchState
E = LatchEvent

#: (state or None for "no latch yet", event) -> new state. Anything absent is illegal.
TRANSITIONS: dict[tuple[LatchState | None, LatchEvent], LatchState] = {
    (None, E.CREATE_LISTENER): S.LISTENER,
    (None, E.CREATE_ESTABLISHED): S.ESTABLISHED,
    (None, E.CREATE_BROKEN): S.BROKEN,
    (None, E.CREATE_LARVAL): S.LARVAL,
    (S.LARVAL, E.SA_READY): S.ESTABLISHED,
    (S.LARVAL, E.SA_FAILED): S.CLOSED,
    (S.LARVAL, E.RELEASE): S.CLOSED,
    (S.LARVAL, E.ADMIN_CLOSE): S.CLOSED,
    (S.LISTENER, E.RELEASE): S.CLOSED,
    (S.LISTENER, E.ADMIN_CLOSE): S.CLOSED,
    (S.ESTABLISHED, E.CONFLICT): S.BROKEN,
    (S.BROKEN, E.CONFLICT): S.BROKEN,
    (S.BROKEN, E.CONFLICTS_CLEARED): S.ESTABLISHED,
    (S.ESTABLISHED, E.RELEASE): S.CLOSED,
    (S.BROKEN, E.RELEASE): S.CLOSED,
    (S.ESTABLISHED, E.ADMIN_CLOSE): S.CLOSED,
    (S.BROKEN, E.ADMIN_CLOSE): S.CLOSED,
}


def next_state(state: LatchState | None, event: LatchEvent) -> LatchState:
    """Apply the transition table; raise :class:`IllegalTransition` if it has no entry."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(
            f"latch transition {state.value if state else '(none)'} --{event.value}--> is not allowed"
        ) from None


# ---------------------------------------------------------------------------------------------
# Parameters


class BrokenDisposition(Enum):
    """RFC 5660 §5.5: what a TCP-like ULP does while its latch is BROKEN."""

    RESET = "reset"  # (b) act as if reset by the peer; RECOMMENDED default for TCP
    WAIT = "wait"  # (a) wait for ESTABLISHED again; ULP timeouts still apply
    ICMP_UNREACHABLE = "icmp-unreachable"  # (c) act as ICMP destination unreachable


@dataclass(frozen=True, slots=True)
class LatchRequest:
    """Optional parameters a ULP passes to CREATE_*_LATCH (RFC 5660 §2.3).

    - ``policy``: required protocol/mode/suites; None = whatever the SPD entry demands.
    - ``protection``: minimum type of protection (integrity / +confidentiality).
    - ``peer``: the peer ID the caller expects (SAs with another peer are not used).
    - ``local``: the local ID to assert.
    - ``disposition``: BROKEN handling (RFC 5660 §5.5; RESET is the default for TCP).
    """

    policy: ProtectionPolicy | None = None
    protection: Protection = Protection.INTEGRITY
    peer: PeerIdentity | None = None
    local: LocalIdentity | None = None
    disposition: BrokenDisposition = BrokenDisposition.RESET


DEFAULT_REQUEST = LatchRequest()


@dataclass(frozen=True, slots=True)
class QoP:
    """Latched quality of protection (RFC 5660 §2.1).

    ``determinate`` is True only when the latched SAs are narrow (exactly this flow): then
    ``suites`` holds the single suite in use. When SAs are wider than the flow only a set of suites
    can be latched (those the SPD entry allows) and the QoP MUST be reported as indeterminate.
    """

    suites: frozenset[CipherSuite]
    replay_window: int
    determinate: bool

    @property
    def suite(self) -> CipherSuite | None:
        """The single latched suite, or None when the QoP is indeterminate."""
        if self.determinate and len(self.suites) == 1:
            return next(iter(self.suites))
        return None


@dataclass(frozen=True, slots=True)
class LatchParams:
    """The REQUIRED latched parameters (RFC 5660 §2): type, mode, QoP, local and peer identity.

    ``peer`` carries all available peer-ID information (certificate and trust anchor for
    certificate peers, SPKI for raw keys, the IKE SA for NULL-auth peers), as §2 requires of the
    inquiry API. ``peer_addr`` is the peer's outer address; ``btns`` says the peer was authorized
    by a BTNS PAD entry.
    """

    protocol: SecurityProtocol
    mode: Mode
    protection: Protection
    qop: QoP
    local: LocalIdentity
    peer: PeerIdentity
    peer_addr: IPAddress
    ike_sa: IkeSaRef
    btns: bool

    def congruent(self, sa: SecurityAssociation) -> bool:
        """Is ``sa`` congruent with the latch (same peer, local identity, type, mode, QoP; RFC
        5660 §2)?

        RFC 5660 §2 lists the local identity ("the local ID asserted to the peer") among the
        REQUIRED latched parameters next to the peer's: an SA with the same peer but another local
        ID is not congruent, it is a conflict like a peer change (the channel bindings of RFC 5660
        §5 cover both end-point keys). For NULL-auth peers the identity is the IKE SA instance
        (NullAuthPeer compares it), so a child SA from a new IKE SA is a different peer and not
        congruent.
        """
        p = sa.params
        return (
            sa.peer == self.peer
            and sa.local == self.local
            and p.protocol is self.protocol
            and p.mode is self.mode
            and p.protection == self.protection
            and p.suite in self.qop.suites
            and (p.replay_window > 0) == (self.qop.replay_window > 0)
        )


_QOP_INTERN: dict[QoP, QoP] = {}


def _interned(qop: QoP) -> QoP:
    """Share equal QoP values between latches (100k latches must stay small)."""
    if len(_QOP_INTERN) > 4096:
        _QOP_INTERN.clear()
    return _QOP_INTERN.setdefault(qop, qop)


def params_from_sa(sa: SecurityAssociation, flow: FiveTuple, allowed: ProtectionPolicy | None) -> LatchParams:
    """Derive latch parameters from an SA carrying ``flow`` (RFC 5660 §2.3 T3, §2.1 QoP)."""
    narrow = sa.is_narrow and sa.traffic_selectors[0].matches(flow)
    if narrow or allowed is None:
        suites = frozenset({sa.params.suite})
    else:
        suites = frozenset(s for s in allowed.suites if s.protection == sa.params.protection) | {
            sa.params.suite
        }
    return LatchParams(
        protocol=sa.params.protocol,
        mode=sa.params.mode,
        protection=sa.params.protection,
        qop=_interned(QoP(suites, sa.params.replay_window, determinate=narrow)),
        local=sa.local,
        peer=sa.peer,
        peer_addr=sa.remote_addr,
        ike_sa=sa.ike_sa,
        btns=sa.btns,
    )


# ---------------------------------------------------------------------------------------------
# Alerts


class AlertReason(Enum):
    NEW_CONNECTION = "new-connection-from-listener"  # T2, to the listener's holder
    ESTABLISHED = "sa-established"  # LARVAL -> ESTABLISHED
    SA_SETUP_FAILED = "sa-setup-failed"  # LARVAL -> CLOSED: no SA could be made
    SA_SETUP_TIMEOUT = "sa-setup-timeout"  # LARVAL -> CLOSED: IKE timed out
    #: LARVAL -> CLOSED: the negotiation finished but its SAs cannot serve the latch (other peer or
    #: QoP than requested; §4 simultaneous open with different parameters)
    SA_UNSUITABLE = "negotiated-sa-unsuitable"
    CONFLICTING_SA = "conflicting-child-sa"  # T4
    SPD_CHANGE = "conflicting-spd-change"  # T4
    PEER_DEAD = "dpd-peer-dead"  # T4, irremediable (RFC 5660 §2)
    CONFLICTS_CLEARED = "conflicts-cleared"  # T5
    ADMIN_CLOSE = "administrative-close"  # T7
    KEY_MANAGER_RESTART = "key-manager-restart"  # RFC 5660 §2: restart without restore
    PEER_ID_STORE_CORRUPTED = "peer-id-store-corrupted"  # RFC 5660 §2.6
    RELEASED = "released-by-owner"  # T6/T7 by the owner: told to observers only, never the owner


@dataclass(frozen=True, slots=True)
class Alert:
    """ALERT(latch handle, 5-tuple, new state, [reason]) (RFC 5660 §2.3).

    ``key`` is the latch's 5-tuple (3-tuple for listener latches). ``listener`` is set on T2 alerts
    delivered to a listener's holder. ``disposition`` is the latch's BROKEN disposition.
    """

    handle: int
    key: FiveTuple | ThreeTuple
    old_state: LatchState | None
    new_state: LatchState
    reason: AlertReason
    disposition: BrokenDisposition = BrokenDisposition.RESET
    listener: int | None = None
    detail: str = ""


AlertCallback = Callable[[Alert], None]


# ---------------------------------------------------------------------------------------------
# Latch objects


class Latch:
    """One latch (mutable, slotted: ~100k of them must fit in memory cheaply).

    Conflict bookkeeping: ``conflicting_sas`` (SA ids that conflict with the latch),
    ``spd_conflict`` and ``peer_dead``; the latch is BROKEN iff any is set. ``peer_dead`` is never
    cleared (DPD breaks irremediably, RFC 5660 §2).
    """

    __slots__ = (
        "conflicting_sas",
        "created_at",
        "disposition",
        "handle",
        "key",
        "listener",
        "on_alert",
        "params",
        "peer_dead",
        "request",
        "spd_conflict",
        "state",
    )

    def __init__(
        self,
        handle: int,
        key: FiveTuple | ThreeTuple,
        state: LatchState,
        request: LatchRequest,
        on_alert: AlertCallback | None,
        created_at: float,
        listener: int | None = None,
    ) -> None:
        self.handle = handle
        self.key = key
        self.state = state
        self.request = request
        self.params: LatchParams | None = None
        self.on_alert = on_alert
        self.disposition = request.disposition
        self.conflicting_sas: set[int] | None = None
        self.spd_conflict = False
        self.peer_dead = False
        self.listener = listener
        self.created_at = created_at

    def has_conflicts(self) -> bool:
        return bool(self.conflicting_sas) or self.spd_conflict or self.peer_dead

    def __repr__(self) -> str:
        return f"Latch(#{self.handle} {self.key} {self.state.value})"


@dataclass(frozen=True, slots=True)
class LatchInfo:
    """INQUIRE_LATCH result: state and every latched parameter (RFC 5660 §2, §2.3)."""

    handle: int
    key: FiveTuple | ThreeTuple
    state: LatchState
    params: LatchParams | None
    disposition: BrokenDisposition
    broken_by_sas: frozenset[int]
    broken_by_spd: bool
    peer_dead: bool
    listener: int | None
    created_at: float

    @property
    def qop_indeterminate(self) -> bool:
        return self.params is not None and not self.params.qop.determinate


class SaRequester:
    """What the LD needs from the key manager: start child SAs for a latch (RFC 5660 §2.3 T3)."""

    def request_sa(self, flow: FiveTuple, policy: ProtectionPolicy, now: float) -> None:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class ChildSaVerdict:
    """Result of :meth:`LatchDatabase.vet_child_sa`: the SA to install (possibly narrowed), or
    None if narrowing left nothing; and the latches the SA broke (already alerted)."""

    sa: SecurityAssociation | None
    narrowed: bool
    broke: tuple[int, ...]


class LatchDatabase:
    """The LD (RFC 5660 §2.3). Does not persist (nothing here is ever written anywhere).

    ``pin_on_spd_change`` selects the OPTIONAL behaviour of §2.3 for SPD changes: instead of
    breaking a conflicting latch, logically insert an exact-5-tuple PROTECT entry at the head of
    SPD-S (the SPD overlay, which a restart clears). ``narrow_conflicting_sas`` selects narrowing
    of conflicting child-SA proposals (SHOULD, §2.3) before resorting to breaking latches.
    """

    def __init__(
        self,
        sad: SecurityAssociationDatabase,
        spd: SecurityPolicyDatabase,
        *,
        pin_on_spd_change: bool = False,
        narrow_conflicting_sas: bool = True,
    ) -> None:
        self.sad = sad
        self.spd = spd
        self.pin_on_spd_change = pin_on_spd_change
        self.narrow_conflicting_sas = narrow_conflicting_sas
        self.requester: SaRequester | None = None
        self._handles = itertools.count(1)
        self._latches: dict[int, Latch] = {}
        #: LARVAL latches (waiting for SAs) and, per SA id, the latches that SA is breaking: keep
        #: SA install/removal O(affected latches), not O(all latches)
        self._larval: dict[int, Latch] = {}
        self._broken_by_sa: dict[int, set[int]] = {}
        self._by_flow: dict[FiveTuple, Latch] = {}
        self._listeners: dict[ThreeTuple, Latch] = {}
        #: listeners by (proto, port) for T2 matching (address compared on hit)
        self._listener_ports: dict[tuple[int, int], list[Latch]] = {}
        #: extra ALERT receivers per latch (e.g. a LatchChannel), besides the holder's callback
        self._observers: dict[int, list[AlertCallback]] = {}
        #: hook run when a latch reaches CLOSED (approach 2 removes its PAD clone / backend policy)
        self.on_closed: Callable[[Latch], None] | None = None
        #: hook run when a connection latch gets its parameters, i.e. is created ESTABLISHED or
        #: BROKEN or leaves LARVAL (approach 2 makes its PAD clone and per-flow policy)
        self.on_latched: Callable[[Latch, SecurityAssociation | None], None] | None = None
        #: hook run whenever a connection latch changes state or goes away (the engine drops its
        #: per-flow verdict cache entry for that 5-tuple)
        self.on_flow_changed: Callable[[FiveTuple], None] | None = None
        #: hook run on every state transition of a latch, ``(latch, old_state)``, after the new
        #: state is set and before its holder is ALERTed (approach 2 tells the datapath that a
        #: BROKEN latch's flow is discarded, and undoes that when it is ESTABLISHED again, before
        #: the ULP hears of it; CLOSED latches also reach :attr:`on_closed`)
        self.on_state_changed: Callable[[Latch, LatchState | None], None] | None = None

    # -- ULP interface (RFC 5660 §2.3) ----------------------------------------------------------

    def create_listener_latch(
        self,
        key: ThreeTuple,
        request: LatchRequest | None = None,
        *,
        on_alert: AlertCallback | None = None,
        now: float = 0.0,
    ) -> int:
        """CREATE_LISTENER_LATCH(3-tuple, [params]) -> handle (T1). Raises :class:`LatchExists`."""
        if key in self._listeners:
            raise LatchExists(f"a LISTENER latch for {key} already exists")
        state = next_state(None, E.CREATE_LISTENER)
        latch = Latch(next(self._handles), key, state, request or DEFAULT_REQUEST, on_alert, now)
        self._latches[latch.handle] = latch
        self._listeners[key] = latch
        self._listener_ports.setdefault((key.proto, key.local_port), []).append(latch)
        return latch.handle

    def create_connection_latch(
        self,
        flow: FiveTuple,
        request: LatchRequest | None = None,
        *,
        on_alert: AlertCallback | None = None,
        now: float = 0.0,
        via_sa: SecurityAssociation | None = None,
    ) -> int:
        """CREATE_CONNECTION_LATCH(5-tuple, [params], [peer ID], [local ID]) -> handle (T3).

        ESTABLISHED if suitable SAs exist in the SAD (``via_sa`` names the SA that carried the
        flow's first packet; it is preferred). If none exist the key manager is asked for child
        SAs and the latch is LARVAL; the ALERT callback learns the outcome (ESTABLISHED, or CLOSED
        with SA_SETUP_FAILED / SA_SETUP_TIMEOUT). Raises :class:`LatchExists` if a non-CLOSED
        latch exists for the 5-tuple, :class:`LatchConflict` if conflicting SAs exist,
        :class:`PolicyRefused` if the SPD does not PROTECT the flow.
        """
        if flow in self._by_flow:
            raise LatchExists(f"a latch for {flow} already exists")
        req = request or DEFAULT_REQUEST
        entry = self.spd.lookup(flow)
        policy = self._policy_for(entry, req, flow)
        chosen = self._choose_sa(flow, policy, req, via_sa)
        handle = next(self._handles)
        if chosen is None:
            if self.requester is None:
                raise LatchConflict(f"no SA carries {flow} and no key manager can make one")
            latch = Latch(handle, flow, next_state(None, E.CREATE_LARVAL), req, on_alert, now)
            self._insert(latch)
            self._larval[handle] = latch
            self.requester.request_sa(flow, policy, now)
            return handle
        latch = Latch(handle, flow, next_state(None, E.CREATE_ESTABLISHED), req, on_alert, now)
        latch.params = params_from_sa(chosen, flow, policy)
        self._insert(latch)
        if self.on_latched is not None:
            self.on_latched(latch, chosen)
        return handle

    def release_latch(self, handle: int) -> LatchInfo:
        """RELEASE_LATCH(handle): -> CLOSED, then deleted (T6/T7). Owner-initiated: no ALERT."""
        latch = self._get(handle)
        old = latch.state
        latch.state = next_state(old, E.RELEASE)
        if self.on_flow_changed is not None and isinstance(latch.key, FiveTuple):
            self.on_flow_changed(latch.key)
        info = self._info(latch)
        observers = self._observers.get(handle)
        if observers:
            alert = Alert(handle, latch.key, old, latch.state, AlertReason.RELEASED, latch.disposition)
            for cb in list(observers):
                cb(alert)
        self._delete(latch)
        return info

    def find_latch(self, flow: FiveTuple) -> int:
        """FIND_LATCH(5-tuple) -> handle; raises :class:`LatchNotFound`."""
        latch = self._by_flow.get(flow)
        if latch is None:
            raise LatchNotFound(f"no latch for {flow}")
        return latch.handle

    def find_listener(self, key: ThreeTuple) -> int:
        latch = self._listeners.get(key)
        if latch is None:
            raise LatchNotFound(f"no listener latch for {key}")
        return latch.handle

    def inquire_latch(self, handle: int) -> LatchInfo:
        """INQUIRE_LATCH(handle) -> {state, latched params} (RFC 5660 §2.3)."""
        return self._info(self._get(handle))

    def set_alert_callback(self, handle: int, on_alert: AlertCallback | None) -> None:
        """Register the ALERT closure for a latch (e.g. a TCB taking over a T2-spawned latch)."""
        self._get(handle).on_alert = on_alert

    def add_observer(self, handle: int, on_alert: AlertCallback) -> None:
        """Also deliver this latch's ALERTs to ``on_alert`` (plus a CLOSED alert with reason
        RELEASED when the owner releases it). Used by LatchChannel."""
        self._get(handle)
        self._observers.setdefault(handle, []).append(on_alert)

    def set_disposition(self, handle: int, disposition: BrokenDisposition) -> None:
        """Choose the BROKEN disposition in advance (RFC 5660 §5.5 SHOULD offer this API)."""
        self._get(handle).disposition = disposition

    def admin_close(self, handle: int, detail: str = "") -> None:
        """Administrative close (T7; RFC 5660 §6.2: admins SHOULD be able to break latches)."""
        latch = self._get(handle)
        self._transition(latch, E.ADMIN_CLOSE, AlertReason.ADMIN_CLOSE, detail)
        self._delete(latch)

    # -- lookups used on the packet path ---------------------------------------------------------

    def latch_for(self, flow: FiveTuple) -> Latch | None:
        """O(1) lookup of the live latch holding ``flow`` (or None)."""
        return self._by_flow.get(flow)

    @property
    def by_flow(self) -> Mapping[FiveTuple, Latch]:
        """The live connection latches by 5-tuple, read-only. It is always current (the same
        object for the database's lifetime), so a per-packet caller may keep it and call its
        ``get`` instead of :meth:`latch_for` (one method call less per packet)."""
        return self._by_flow

    def listener_for(self, flow: FiveTuple) -> Latch | None:
        cands = self._listener_ports.get((flow.proto, flow.local_port))
        if not cands:
            return None
        for latch in cands:
            key = latch.key
            assert isinstance(key, ThreeTuple)
            if key.local_addr == flow.local_addr or key.local_addr.is_unspecified:
                return latch
        return None

    def get(self, handle: int) -> Latch | None:
        return self._latches.get(handle)

    def __len__(self) -> int:
        return len(self._latches)

    def __iter__(self) -> Iterator[Latch]:
        return iter(list(self._latches.values()))

    def spawn_from_listener(
        self, listener: Latch, flow: FiveTuple, sa: SecurityAssociation, now: float
    ) -> int:
        """T2: a connection trigger + child SA matching a listener's 3-tuple creates a new
        ESTABLISHED latch (BROKEN if conflicting SAs exist); the listener's holder is alerted."""
        if flow in self._by_flow:
            raise LatchExists(f"a latch for {flow} already exists")
        handle = next(self._handles)
        conflicts = self._conflicting(flow, params_from_sa(sa, flow, None))
        event = E.CREATE_BROKEN if conflicts else E.CREATE_ESTABLISHED
        entry = self.spd.lookup(flow, btns_peer=sa.btns)
        latch = Latch(
            handle, flow, next_state(None, event), listener.request, listener.on_alert, now, listener.handle
        )
        latch.params = params_from_sa(sa, flow, entry.protection if entry is not None else None)
        if conflicts:
            latch.conflicting_sas = set(conflicts)
            for sa_id in conflicts:
                self._broken_by_sa.setdefault(sa_id, set()).add(handle)
        self._insert(latch)
        if self.on_latched is not None:
            self.on_latched(latch, sa)
        self._alert(latch, None, AlertReason.NEW_CONNECTION, listener=listener.handle)
        return handle

    # -- key-manager interface ------------------------------------------------------------------

    def vet_child_sa(self, sa: SecurityAssociation) -> ChildSaVerdict:
        """Check a child-SA proposal against every latch it would conflict with (RFC 5660 §2.3).

        A proposal conflicts with a latch iff its selectors match the latch's 5-tuple and its peer,
        local identity, type of protection or QoP differ from the latched ones (RFC 5660 §2). If
        narrowing is enabled and the selectors can be narrowed to exclude every such 5-tuple, the
        narrowed SA is returned. If not, each conflicting latch goes BROKEN and its holder is
        ALERTed *here, before the SA is accepted* (the caller installs the SA only after this
        returns).
        """
        hits = [
            latch
            for latch in self._latches_matched_by(sa)
            if latch.params is not None and not latch.params.congruent(sa)
        ]
        if not hits:
            return ChildSaVerdict(sa, False, ())
        if self.narrow_conflicting_sas:
            selectors: tuple[Selector, ...] = sa.traffic_selectors
            for latch in hits:
                assert isinstance(latch.key, FiveTuple)
                pieces: list[Selector] = []
                for sel in selectors:
                    pieces.extend(sel.exclude(latch.key))
                selectors = tuple(pieces)
            if selectors:
                return ChildSaVerdict(sa.narrowed(selectors), True, ())
        broke = []
        for latch in hits:
            if latch.conflicting_sas is None:
                latch.conflicting_sas = set()
            latch.conflicting_sas.add(sa.sa_id)
            self._broken_by_sa.setdefault(sa.sa_id, set()).add(latch.handle)
            self._transition(latch, E.CONFLICT, AlertReason.CONFLICTING_SA, f"conflicting {sa}")
            broke.append(latch.handle)
        return ChildSaVerdict(sa, False, tuple(broke))

    def sa_installed(self, sa: SecurityAssociation, now: float) -> None:
        """An SA is now in the SAD: finish LARVAL latches it can serve (LARVAL -> ESTABLISHED)."""
        for latch in list(self._larval.values()):
            if latch.state is not S.LARVAL:
                continue
            flow = latch.key
            assert isinstance(flow, FiveTuple)
            if not sa.carries(flow):
                continue
            entry = self.spd.lookup(flow)
            try:
                policy = self._policy_for(entry, latch.request, flow)
            except PolicyRefused:
                continue
            if not self._sa_suits(sa, policy, latch.request, entry):
                continue
            if self._conflicting(flow, params_from_sa(sa, flow, policy), ignore=sa.sa_id):
                continue
            latch.params = params_from_sa(sa, flow, policy)
            self._transition(latch, E.SA_READY, AlertReason.ESTABLISHED)
            if self.on_latched is not None:
                self.on_latched(latch, sa)

    def sa_setup_failed(self, flow: FiveTuple, *, timeout: bool, detail: str = "") -> None:
        """The key manager could not make SAs for ``flow``: a LARVAL latch goes CLOSED (alerted)."""
        latch = self._by_flow.get(flow)
        if latch is None or latch.state is not S.LARVAL:
            return
        reason = AlertReason.SA_SETUP_TIMEOUT if timeout else AlertReason.SA_SETUP_FAILED
        self._transition(latch, E.SA_FAILED, reason, detail)
        self._delete(latch)

    def negotiation_finished(self, flow: FiveTuple, detail: str = "") -> bool:
        """The key manager's negotiation for ``flow`` ended with SAs installed (each already went
        through :meth:`vet_child_sa` and :meth:`sa_installed`). A latch still LARVAL now cannot be
        served by them -- another peer or QoP than it asked for, or SAs narrowed around the flow;
        RFC 5660 §4: with different parameters requested at the two ends of a simultaneous open
        the latch must fail -- so it goes CLOSED with :attr:`AlertReason.SA_UNSUITABLE` (alerted)
        instead of waiting for SAs nobody is negotiating. Returns True if a latch failed."""
        latch = self._by_flow.get(flow)
        if latch is None or latch.state is not S.LARVAL:
            return False
        self._transition(
            latch, E.SA_FAILED, AlertReason.SA_UNSUITABLE, detail or "negotiated SAs do not suit the latch"
        )
        self._delete(latch)
        return True

    def sa_removed(self, sa: SecurityAssociation) -> None:
        """An SA left the SAD; latches it was breaking may return to ESTABLISHED (T5)."""
        for handle in self._broken_by_sa.pop(sa.sa_id, ()):
            latch = self._latches.get(handle)
            if latch is not None and latch.conflicting_sas and sa.sa_id in latch.conflicting_sas:
                latch.conflicting_sas.discard(sa.sa_id)
                self._maybe_restore(latch)

    def spd_changed(self, *, allow_pin: bool = True) -> list[int]:
        """Re-check every latch after an SPD change (RFC 5660 §2.3): a latch whose flow would now
        be bypassed, discarded or protected differently breaks (REQUIRED), or, with
        ``pin_on_spd_change``, gets an exact-5-tuple PROTECT overlay entry (OPTIONAL). Latches
        whose SPD conflict went away return to ESTABLISHED. Returns the handles broken."""
        broken = []
        for latch in list(self._latches.values()):
            if latch.params is None or not isinstance(latch.key, FiveTuple):
                continue
            flow = latch.key
            overlay = self.spd.overlay_entry(flow)
            if overlay is not None and overlay.origin is not EntryOrigin.PINNED_LATCH:
                continue  # the flow's own entry (optional protection / template clone) governs it
            entry = self.spd.lookup_configured(flow, btns_peer=latch.params.btns)
            ok = (
                entry is not None
                and entry.action in (SpdAction.PROTECT, SpdAction.BYPASS_OR_PROTECT)
                and (entry.protection is not None and _policy_admits_latch(entry.protection, latch.params))
                and (entry.btns_ok or not latch.params.btns)  # RFC 5386 §2
            )
            if ok:
                if overlay is not None:
                    self.spd.remove_overlay(flow)
                if latch.spd_conflict:
                    latch.spd_conflict = False
                    self._maybe_restore(latch)
                continue
            if allow_pin and self.pin_on_spd_change and latch.state is S.ESTABLISHED:
                if overlay is None:
                    self.spd.install_overlay(flow, self._pinned_entry(flow, latch.params))
                continue
            if not latch.spd_conflict:
                latch.spd_conflict = True
                if latch.state in (S.ESTABLISHED, S.BROKEN):
                    self._transition(
                        latch, E.CONFLICT, AlertReason.SPD_CHANGE, entry.name if entry else "no entry"
                    )
                    broken.append(latch.handle)
        return broken

    def peer_dead(self, peer: PeerIdentity) -> list[int]:
        """IKE DPD concluded ``peer`` is dead or rebooted: its latches break irremediably."""
        out = []
        for latch in list(self._latches.values()):
            if latch.params is None or latch.params.peer != peer or latch.peer_dead:
                continue
            if latch.state not in (S.ESTABLISHED, S.BROKEN):
                continue
            latch.peer_dead = True
            self._transition(latch, E.CONFLICT, AlertReason.PEER_DEAD)
            out.append(latch.handle)
        return out

    def key_manager_restarted(self, *, restore: bool) -> list[int]:
        """RFC 5660 §2: after a key-manager restart latches are restored or CLOSED.

        The logical SPD overlay never survives (cleared here in both cases). With ``restore``,
        latches keep their state; those that relied on a pinned entry are re-checked and break
        if the SPD now conflicts. Without, every latch is CLOSED and its holder alerted. Returns
        the handles closed.
        """
        pinned = {f for f, e in self.spd.overlay_entries().items() if e.origin is EntryOrigin.PINNED_LATCH}
        for flow in pinned:
            self.spd.remove_overlay(flow)
        if restore:
            self.spd_changed(allow_pin=False)
            return []
        closed = []
        for latch in list(self._latches.values()):
            self._transition(latch, E.ADMIN_CLOSE, AlertReason.KEY_MANAGER_RESTART)
            self._delete(latch)
            closed.append(latch.handle)
        return closed

    def peer_id_store_corrupted(self) -> list[int]:
        """RFC 5660 §2.6: every ESTABLISHED and BROKEN latch is administratively CLOSED."""
        closed = []
        for latch in list(self._latches.values()):
            if latch.state in (S.ESTABLISHED, S.BROKEN):
                self._transition(latch, E.ADMIN_CLOSE, AlertReason.PEER_ID_STORE_CORRUPTED)
                self._delete(latch)
                closed.append(latch.handle)
        return closed

    # -- internals ----------------------------------------------------------------------------

    def _get(self, handle: int) -> Latch:
        latch = self._latches.get(handle)
        if latch is None:
            raise LatchNotFound(f"no latch with handle {handle}")
        return latch

    def _insert(self, latch: Latch) -> None:
        assert isinstance(latch.key, FiveTuple)
        self._latches[latch.handle] = latch
        self._by_flow[latch.key] = latch

    def _delete(self, latch: Latch) -> None:
        self._latches.pop(latch.handle, None)
        self._observers.pop(latch.handle, None)
        self._larval.pop(latch.handle, None)
        if isinstance(latch.key, FiveTuple):
            if self._by_flow.get(latch.key) is latch:
                del self._by_flow[latch.key]
                if self.on_flow_changed is not None:
                    self.on_flow_changed(latch.key)
            overlay = self.spd.overlay_entry(latch.key)
            if overlay is not None and overlay.origin is EntryOrigin.PINNED_LATCH:
                self.spd.remove_overlay(latch.key)
        else:
            if self._listeners.get(latch.key) is latch:
                del self._listeners[latch.key]
            ports = self._listener_ports.get((latch.key.proto, latch.key.local_port), [])
            if latch in ports:
                ports.remove(latch)
        if self.on_closed is not None:
            self.on_closed(latch)

    def _info(self, latch: Latch) -> LatchInfo:
        return LatchInfo(
            latch.handle,
            latch.key,
            latch.state,
            latch.params,
            latch.disposition,
            frozenset(latch.conflicting_sas or ()),
            latch.spd_conflict,
            latch.peer_dead,
            latch.listener,
            latch.created_at,
        )

    def _transition(self, latch: Latch, event: LatchEvent, reason: AlertReason, detail: str = "") -> None:
        old = latch.state
        latch.state = next_state(old, event)
        if self.on_flow_changed is not None and isinstance(latch.key, FiveTuple):
            self.on_flow_changed(latch.key)
        if old is S.LARVAL:
            self._larval.pop(latch.handle, None)
        if self.on_state_changed is not None:
            self.on_state_changed(latch, old)
        self._alert(latch, old, reason, detail=detail)

    def _alert(
        self,
        latch: Latch,
        old: LatchState | None,
        reason: AlertReason,
        *,
        listener: int | None = None,
        detail: str = "",
    ) -> None:
        observers = self._observers.get(latch.handle)
        if latch.on_alert is None and not observers:
            return
        alert = Alert(latch.handle, latch.key, old, latch.state, reason, latch.disposition, listener, detail)
        if latch.on_alert is not None:
            latch.on_alert(alert)
        if observers and listener is None:
            for cb in list(observers):
                cb(alert)

    def _maybe_restore(self, latch: Latch) -> None:
        if latch.state is S.BROKEN and not latch.has_conflicts():
            self._transition(latch, E.CONFLICTS_CLEARED, AlertReason.CONFLICTS_CLEARED)

    def _policy_for(self, entry: SpdEntry | None, req: LatchRequest, flow: FiveTuple) -> ProtectionPolicy:
        if entry is None or entry.protection is None:
            raise PolicyRefused(
                f"the SPD does not protect {flow} ({'no entry' if entry is None else entry.action.value}); "
                "request optional protection first (RFC 5660 §3.1)"
            )
        if entry.action is SpdAction.BYPASS_OR_PROTECT:
            raise PolicyRefused(f"{flow} matches BYPASS-OR-PROTECT template {entry.name!r}: choose first")
        return req.policy if req.policy is not None else entry.protection

    def _sa_suits(
        self, sa: SecurityAssociation, policy: ProtectionPolicy, req: LatchRequest, entry: SpdEntry | None
    ) -> bool:
        if not policy.admits(sa.params):
            return False
        if sa.btns and not (
            entry is not None and (entry.btns_ok or entry.origin is not EntryOrigin.CONFIGURED)
        ):
            return False
        if req.peer is not None and sa.peer != req.peer:
            return False
        if req.local is not None and sa.local != req.local:
            return False
        return (sa.params.protection & req.protection) == req.protection

    def _choose_sa(
        self,
        flow: FiveTuple,
        policy: ProtectionPolicy,
        req: LatchRequest,
        via_sa: SecurityAssociation | None,
    ) -> SecurityAssociation | None:
        carrying = self.sad.carrying(flow)
        if not carrying:
            return None
        kinds = {_kind(sa) for sa in carrying}
        if len(kinds) > 1:
            raise LatchConflict(
                f"conflicting SAs carry {flow}: " + ", ".join(str(sa) for sa in carrying) + " (RFC 5660 §2.3)"
            )
        entry = self.spd.lookup(flow, btns_peer=carrying[0].btns)
        ordered = ([via_sa] if via_sa is not None and via_sa.sa_id in self.sad else []) + carrying
        for sa in ordered:
            if self._sa_suits(sa, policy, req, entry):
                return sa
        raise LatchConflict(
            f"SAs carrying {flow} do not meet the requested protection; new SAs would conflict with them"
        )

    def _latches_matched_by(self, sa: SecurityAssociation) -> list[Latch]:
        if sa.is_narrow:
            sel = sa.traffic_selectors[0]
            assert sel.local is not None and sel.remote is not None and sel.proto is not None
            flow = FiveTuple(
                sel.local.first, sel.local_ports.low, sel.remote.first, sel.remote_ports.low, sel.proto
            )
            hit = self._by_flow.get(flow)
            return [hit] if hit is not None else []
        return [latch for flow, latch in self._by_flow.items() if sa.carries(flow)]

    def _conflicting(self, flow: FiveTuple, params: LatchParams, ignore: int | None = None) -> list[int]:
        return [sa.sa_id for sa in self.sad.carrying(flow) if sa.sa_id != ignore and not params.congruent(sa)]

    def _pinned_entry(self, flow: FiveTuple, params: LatchParams) -> SpdEntry:
        policy = ProtectionPolicy(
            params.protocol, params.mode, tuple(sorted(params.qop.suites, key=str)), 0, params.qop.determinate
        )
        return SpdEntry.flow_entry(
            flow, SpdAction.PROTECT, policy, EntryOrigin.PINNED_LATCH, btns_ok=params.btns
        )


def _kind(sa: SecurityAssociation) -> tuple[object, ...]:
    """What must be equal for two SAs carrying one flow not to conflict (RFC 5660 §2, §2.3: peer
    and local identity, type of protection, QoP)."""
    p = sa.params
    return (sa.peer, sa.local, p.protocol, p.mode, p.protection, p.suite, p.replay_window > 0)


def _policy_admits_latch(policy: ProtectionPolicy, params: LatchParams) -> bool:
    return (
        policy.protocol is params.protocol
        and policy.mode is params.mode
        and any(s in params.qop.suites for s in policy.suites)
        and all(s in policy.suites for s in params.qop.suites if params.qop.determinate)
    )


class PeerIdStore:
    """Peer identities referenced by strong hash (RFC 5660 §2.6 MAY: refer to large peer IDs by
    a strong hash). :meth:`verify` recomputes every hash; any mismatch means the store is corrupt
    and, per §2.6, every ESTABLISHED/BROKEN latch must be CLOSED (``IPsecEngine`` does that)."""

    def __init__(self) -> None:
        self._store: dict[str, PeerIdentity] = {}
        self._refs: dict[PeerIdentity, str] = {}

    @staticmethod
    def ref_of(peer: PeerIdentity) -> str:
        return hashlib.sha256(repr(peer).encode()).hexdigest()

    def intern(self, peer: PeerIdentity) -> str:
        ref = self._refs.get(peer)
        if ref is None:
            ref = self._refs[peer] = self.ref_of(peer)
            self._store.setdefault(ref, peer)
        return ref

    def resolve(self, ref: str) -> PeerIdentity | None:
        return self._store.get(ref)

    def verify(self) -> bool:
        return all(self.ref_of(peer) == ref for ref, peer in self._store.items())

    def __len__(self) -> int:
        return len(self._store)
