"""The IPsec engine: the one object a host stack calls for every packet, sans-IO
(:class:`IPsecEngine`), with RFC 4301 processing, RFC 5660 latching by either approach
(:class:`Approach`) and BYPASS-OR-PROTECT (docs/design.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from rpclatch.ipsec.backend import Backend, FlowPolicy, InProcessBackend, SocketPolicy
from rpclatch.ipsec.decisions import (
    BYPASS_DECISION,
    CLEARTEXT,
    DropReason,
    InboundDecision,
    InboundVerdict,
    OutboundDecision,
    OutboundVerdict,
    PacketTag,
    discard,
    drop,
)
from rpclatch.ipsec.errors import IPsecLocalError, PolicyRefused
from rpclatch.ipsec.keymgr import AcquireOutcome, SaProvision, StaticKeyManager
from rpclatch.ipsec.latch import (
    AlertCallback,
    Latch,
    LatchDatabase,
    LatchRequest,
    LatchState,
    PeerIdStore,
)
from rpclatch.ipsec.model import (
    CONNECTION_PROTOCOLS,
    FiveTuple,
    PeerIdentity,
    ProtectionPolicy,
    ThreeTuple,
)
from rpclatch.ipsec.pad import PadEntry, PeerAuthorizationDatabase
from rpclatch.ipsec.pad_latching import PadLatchLayer, PadTemplate, TimeWaitPolicy
from rpclatch.ipsec.sad import SecurityAssociation, SecurityAssociationDatabase
from rpclatch.ipsec.spd import EntryOrigin, SecurityPolicyDatabase, SpdAction, SpdEntry
from rpclatch.ipsec.ulp import UlpBreakReason, UlpLatch
from rpclatch.ipsec.ulp_watch import UlpLatchWatch


class Approach(Enum):
    """Where latches live (docs/design.md, "Two places to keep a latch").

    * ``ULP`` (approach 1, RFC 5660 §2.4 informative model): the engine does RFC 4301
      processing and tags every inbound packet with the SA that protected it (or CLEARTEXT). The
      latch lives in the ULP's control block (:class:`rpclatch.ipsec.ulp.UlpLatch`), which passes
      ``like=tag`` to :meth:`IPsecEngine.outbound` ("protect this like so") and checks inbound
      tags. The engine watches latched control blocks for RFC 5660 §2 conflicts (child SAs about
      to be installed, SPD changes) and breaks them as the LD would.
    * ``POLICY`` (approach 2, RFC 5660 §2.3 normative model): latches live in the latch database
      next to the SAD, recorded as cloned PAD entries (:mod:`rpclatch.ipsec.pad_latching`) and
      enforced by the engine on every packet; :meth:`IPsecEngine.listen`,
      :meth:`IPsecEngine.connect` and :meth:`IPsecEngine.close_flow` are the ULP's calls.
    """

    ULP = 1
    POLICY = 2


class FlowChoice(Enum):
    """What an application asks for on a BYPASS-OR-PROTECT (or optional-protection) flow."""

    PROTECT = "protect"
    BYPASS = "bypass"


@dataclass(frozen=True, slots=True)
class ProtectionOutcome:
    """Result of :meth:`IPsecEngine.request_protection`, immediately or via ``on_outcome``.

    ``ok`` False with ``acquire`` TIMEOUT / NO_PEER means IKE failed: the application may retry
    with :attr:`FlowChoice.BYPASS`: what an IKE timeout means is the application's decision, not
    IPsec's (docs/design.md, BYPASS-OR-PROTECT).
    """

    flow: FiveTuple
    choice: FlowChoice
    ok: bool
    pending: bool = False
    latch: int | None = None
    sa: SecurityAssociation | None = None
    acquire: AcquireOutcome | None = None
    detail: str = ""


OutcomeCallback = Callable[[ProtectionOutcome], None]

#: builds the engine's key manager from (sad, pad, latches, backend, listener=engine); the sim
#: passes one that negotiates over the simulated wire (a StaticKeyManager subclass).
KeyManagerFactory = Callable[
    [SecurityAssociationDatabase, PeerAuthorizationDatabase, LatchDatabase, Backend, "IPsecEngine"],
    StaticKeyManager,
]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    approach: Approach = Approach.POLICY
    #: RFC 5660 §2.3 OPTIONAL: pin latched flows with a logical 5-tuple PROTECT entry on SPD change
    pin_on_spd_change: bool = False
    #: RFC 5660 §2.3 SHOULD: narrow conflicting child-SA proposals before breaking latches
    narrow_conflicting_sas: bool = True
    #: RFC 5660 §2 SHOULD latch automatically: initiating outbound packets on PROTECT entries latch
    auto_latch: bool = True
    time_wait: TimeWaitPolicy = field(default_factory=TimeWaitPolicy)
    acquire_timeout: float = 5.0


class IPsecEngine:
    """The IPsec layer of one host, sans-IO: the host stack calls it for every packet::

        engine = IPsecEngine(spd_entries, pad_entries, approach=Approach.POLICY)
        d = engine.outbound(flow, now, initiating=is_syn)  # BYPASS | PROTECT(sa) | DISCARD | NEED_SA
        d = engine.inbound(flow, sa_or_none, now, initiating=is_syn)  # ACCEPT(tag) | DROP(reason)
        engine.poll(now); engine.next_deadline()  # ACQUIRE timeouts, TIME_WAIT holds

    ``flow`` is always local-oriented (:class:`~rpclatch.ipsec.model.FiveTuple`). Nothing here
    reads a clock or does I/O; ``now`` is the caller's time in seconds. Outgoing flows on a
    BYPASS-OR-PROTECT template are decided by :meth:`request_protection`, incoming ones by their
    first packet, in both approaches.

    ``provisions`` configure the default StaticKeyManager; ``key_manager_factory`` replaces it.
    Public attributes: ``spd``, ``pad``, ``sad``, ``latches`` (the LD), ``key_manager``,
    ``backend``, ``pad_layer`` (approach 2 templates/clones), ``config``. The configured SPD is
    pushed to the backend here and on :meth:`update_spd`; a BROKEN latch's flow is discarded
    there too (exact-5-tuple DISCARD flow policy) until it recovers or ends."""

    def __init__(
        self,
        spd_entries: Iterable[SpdEntry] = (),
        pad_entries: Iterable[PadEntry] = (),
        *,
        config: EngineConfig | None = None,
        approach: Approach | None = None,
        backend: Backend | None = None,
        provisions: Iterable[SaProvision] = (),
        key_manager_factory: KeyManagerFactory | None = None,
    ) -> None:
        cfg = config or EngineConfig()
        if approach is not None and approach is not cfg.approach:
            cfg = replace(cfg, approach=approach)
        self.config = cfg
        self.spd = SecurityPolicyDatabase(spd_entries)
        self.pad = PeerAuthorizationDatabase(pad_entries)
        self.sad = SecurityAssociationDatabase()
        self.backend: Backend = backend or InProcessBackend()
        self.backend.install_spd(self.spd.entries)  # the datapath's fallback for unlatched flows
        self.latches = LatchDatabase(
            self.sad,
            self.spd,
            pin_on_spd_change=cfg.pin_on_spd_change,
            narrow_conflicting_sas=cfg.narrow_conflicting_sas,
        )
        factory = key_manager_factory or _static_key_manager(tuple(provisions), cfg.acquire_timeout)
        self.key_manager = factory(self.sad, self.pad, self.latches, self.backend, self)
        self.pad_layer = PadLatchLayer(cfg.time_wait)
        self.peer_ids = PeerIdStore()
        self._tags: dict[int, PacketTag] = {}
        self._outcome_cbs: dict[FiveTuple, tuple[FlowChoice, OutcomeCallback | None]] = {}
        self._bop_failed: dict[FiveTuple, AcquireOutcome] = {}
        self._last_sa: dict[int, int] = {}
        self._by_flow = self.latches.by_flow  # packet-path alias (a read-only live view)
        #: per-flow verdict cache for unlatched flows (see inbound); bounded, cleared when full
        self._flow_cache: dict[FiveTuple, tuple[SecurityAssociation | None, int, int, InboundDecision]] = {}
        self._flow_cache_limit = 1 << 18
        self.latches.on_latched = self._record_latch
        self.latches.on_closed = self._latch_closed
        self.latches.on_state_changed = self._latch_state_changed
        #: flows of BROKEN LD latches whose backend flow policy is the DISCARD pushed for them
        self._broken_flows: set[FiveTuple] = set()
        #: per-flow verdict cache for latched flows: the ACCEPT last given to a non-initiating
        #: packet of an ESTABLISHED latch, valid for that same SA while no SA left the SAD; the LD
        #: drops a flow's entry whenever its latch changes state or goes away. One flat dict so the
        #: steady-state check touches the entry and the decision only (not the Latch object).
        self._verdicts: dict[FiveTuple, InboundDecision] = {}
        self._verdicts_removals = self.sad.removals
        self.latches.on_flow_changed = self._forget_verdict
        #: approach 1: the TCB latches (UlpLatch) of protected flows; they hear about conflicting
        #: SAs and SPD changes (RFC 5660 §2) from the watch since the LD does not hold them
        self.ulp_watch = UlpLatchWatch(
            self.spd, self.backend, self.latches, pin_on_spd_change=cfg.pin_on_spd_change
        )
        self.last_spd_breaks: list[FiveTuple] = []

    @property
    def approach(self) -> Approach:
        return self.config.approach

    # =========================================================================================
    # packet path

    def inbound(
        self,
        flow: FiveTuple,
        protected_by: SecurityAssociation | None,
        now: float,
        *,
        initiating: bool = False,
    ) -> InboundDecision:
        """Judge one received packet of ``flow``; ``protected_by`` is the SA the host's ESP/AH
        layer decapsulated it with, None for cleartext.

        ``initiating`` marks a flow-initiating packet (TCP SYN without ACK, SCTP INIT, the first
        datagram of a connected-UDP flow); only those may create latches or decide templates.

        Two per-flow verdict caches serve non-initiating packets; they stay two because their
        validity rules and their place in the lookup differ:

        * ``_verdicts`` (latched flows): the ACCEPT last given to an ESTABLISHED latch's packet.
          It is consulted *before* the latch lookup (the steady-state packet of a latched flow
          touches only this entry). Valid while the packet's SA is that same SA and no SA left
          the SAD; the LD drops the flow's entry through ``on_flow_changed`` whenever its latch
          changes state or goes away. SPD changes do not invalidate it: they reach a latch only
          through ``LatchDatabase.spd_changed``, whose transitions fire that hook, while a latch
          that stays ESTABLISHED (congruent or pinned) keeps its verdict. Its size is bounded by
          the live latches.
        * ``_flow_cache`` (unlatched flows): any verdict, ACCEPT or DROP, computed from the SPD.
          It is consulted only *after* the latch lookup found no latch, because creating a latch
          fires no per-flow hook (``LatchDatabase._insert``): an entry from before the flow was
          latched must lose to the latch. Valid while the SA (or cleartext) is the same and
          neither the SPD version nor the SAD's removals changed. Unlatched flows have no end
          event, so it is bounded by clearing it when full.

        One dict would have to carry the rule per entry (SPD version or not), check it on the
        latched fast path measured by benchmarks/latch.py, and make latch creation invalidate
        the flow's entry; clearing it when full would also drop latched verdicts.
        """
        if not initiating:
            # fast path: a latched flow's packet under the same SA as its last accepted packet,
            # and no SA left the SAD since (latch state changes drop the entry)
            hit = self._verdicts.get(flow)
            if hit is not None and hit.sa is protected_by and self._verdicts_removals == self.sad.removals:
                return hit
        latch = self._by_flow.get(flow)
        if latch is not None:
            if not initiating:
                return self._inbound_latched(latch, flow, protected_by)
            if flow in self.pad_layer.holds:
                self._supersede(flow)
            else:
                return self._inbound_latched(latch, flow, protected_by)
        elif initiating:
            if flow in self.pad_layer.holds:
                self._supersede(flow)
        else:
            # fast path for unlatched flows: same SA (or cleartext) as the last packet, and neither
            # the SPD nor the SAD lost anything since that packet was judged
            cached = self._flow_cache.get(flow)
            if (
                cached is not None
                and cached[0] is protected_by
                and cached[1] == self.spd.version
                and cached[2] == self.sad.removals
            ):
                return cached[3]
            decision = self._inbound_unlatched(flow, protected_by, now, initiating)
            if len(self._flow_cache) >= self._flow_cache_limit:
                self._flow_cache.clear()
            self._flow_cache[flow] = (protected_by, self.spd.version, self.sad.removals, decision)
            return decision
        return self._inbound_unlatched(flow, protected_by, now, initiating)

    def _forget_verdict(self, flow: FiveTuple) -> None:
        self._verdicts.pop(flow, None)

    def _inbound_unlatched(
        self, flow: FiveTuple, protected_by: SecurityAssociation | None, now: float, initiating: bool
    ) -> InboundDecision:
        sa = protected_by
        if sa is None:
            return self._inbound_cleartext(flow, initiating)
        if not self.sad.holds(sa):
            return drop(DropReason.SA_UNKNOWN)
        if not sa.carries(flow):
            return drop(DropReason.SA_SELECTOR_MISMATCH)
        entry = self.spd.lookup(flow)
        if entry is None:
            return drop(DropReason.NO_POLICY)
        if sa.btns and entry.protection is not None and not entry.btns_ok:
            return drop(DropReason.SA_NOT_BTNS_OK)  # RFC 5386 §2
        action = entry.action
        if action is SpdAction.DISCARD:
            return drop(_discard_reason(entry))
        if action is SpdAction.BYPASS:
            if entry.origin is EntryOrigin.TEMPLATE_CLONE:
                return drop(DropReason.BOP_FLOW_DECIDED_CLEARTEXT)
            return InboundDecision(InboundVerdict.ACCEPT, self._tag(sa))
        assert entry.protection is not None
        if not entry.protection.admits(sa.params):
            return drop(DropReason.SA_POLICY_MISMATCH)
        if action is SpdAction.BYPASS_OR_PROTECT:
            if not initiating:
                return drop(DropReason.BOP_UNDECIDED)
            self._install_clone(flow, entry, SpdAction.PROTECT, sa.reqid)
        handle = None
        if self.approach is Approach.POLICY and initiating and flow.proto in CONNECTION_PROTOCOLS:
            handle = self._latch_incoming(flow, sa, now)
            if handle is not None:
                latch = self.latches.get(handle)
                assert latch is not None
                if latch.state is not LatchState.ESTABLISHED:
                    return drop(DropReason.LATCH_BROKEN, handle)
        return InboundDecision(InboundVerdict.ACCEPT, self._tag(sa), latch=handle)

    def _inbound_cleartext(self, flow: FiveTuple, initiating: bool) -> InboundDecision:
        entry = self.spd.lookup(flow)
        if entry is None:
            return drop(DropReason.NO_POLICY)
        action = entry.action
        if action is SpdAction.BYPASS:
            return InboundDecision(InboundVerdict.ACCEPT, CLEARTEXT)
        if action is SpdAction.DISCARD:
            return drop(_discard_reason(entry))
        if action is SpdAction.PROTECT:
            return drop(DropReason.CLEARTEXT_ON_PROTECTED_FLOW)
        # BYPASS_OR_PROTECT template, flow not decided yet
        if not initiating:
            return drop(DropReason.BOP_UNDECIDED)
        self._install_clone(flow, entry, SpdAction.BYPASS, None)
        return InboundDecision(InboundVerdict.ACCEPT, CLEARTEXT)

    def _inbound_latched(
        self, latch: Latch, flow: FiveTuple, sa: SecurityAssociation | None
    ) -> InboundDecision:
        state = latch.state
        if state is LatchState.ESTABLISHED:
            if sa is None:
                return drop(DropReason.LATCHED_FLOW_CLEARTEXT, latch.handle)
            if not self.sad.holds(sa):
                return drop(DropReason.SA_UNKNOWN, latch.handle)
            if not sa.carries(flow):
                return drop(DropReason.SA_SELECTOR_MISMATCH, latch.handle)
            params = latch.params
            assert params is not None
            if not params.congruent(sa):
                if sa.peer != params.peer:
                    reason = DropReason.LATCH_PEER_MISMATCH
                elif sa.local != params.local:
                    reason = DropReason.LATCH_LOCAL_ID_MISMATCH
                else:
                    reason = DropReason.LATCH_QOP_MISMATCH
                return drop(reason, latch.handle)
            self._last_sa[latch.handle] = sa.sa_id
            accept = InboundDecision(InboundVerdict.ACCEPT, self._tag(sa), latch=latch.handle, sa=sa)
            if self._verdicts_removals != self.sad.removals:
                self._verdicts.clear()
                self._verdicts_removals = self.sad.removals
            self._verdicts[flow] = accept
            return accept
        if state is LatchState.BROKEN:
            return drop(DropReason.LATCH_BROKEN, latch.handle)
        return drop(DropReason.LATCH_LARVAL, latch.handle)

    def outbound(
        self, flow: FiveTuple, now: float, *, initiating: bool = False, like: PacketTag | None = None
    ) -> OutboundDecision:
        """Decide how to send one packet of ``flow``.

        ``like`` (approach 1, RFC 5660 §2.4 (a)) asks "protect this like so": only an SA with the
        same peer, local ID and QoP as the tag may be used (CLEARTEXT: only if policy bypasses the
        flow); otherwise DISCARD(ULP_CANNOT_PROTECT_AS_LATCHED). The PROTECT decision's ``tag`` answers
        §2.4 (b) "how was this protected". NEED_SA means an ACQUIRE is pending.
        """
        latch = self._by_flow.get(flow)
        if latch is not None:
            if initiating and flow in self.pad_layer.holds:
                self._supersede(flow)
            else:
                return self._outbound_latched(latch, flow, now)
        elif initiating and flow in self.pad_layer.holds:
            self._supersede(flow)
        entry = self.spd.lookup(flow)
        if entry is None:
            return discard(DropReason.NO_POLICY)
        action = entry.action
        if action is SpdAction.DISCARD:
            return discard(_discard_reason(entry))
        if like is not None:
            return self._outbound_like(flow, entry, like, now)
        if action is SpdAction.BYPASS:
            return BYPASS_DECISION
        if action is SpdAction.BYPASS_OR_PROTECT:
            failed = self._bop_failed.get(flow)
            return discard(DropReason.BOP_IKE_FAILED if failed else DropReason.BOP_UNDECIDED)
        assert entry.protection is not None
        if (
            self.approach is Approach.POLICY
            and initiating
            and self.config.auto_latch
            and flow.proto in CONNECTION_PROTOCOLS
        ):
            try:
                handle = self.latches.create_connection_latch(flow, now=now)
            except IPsecLocalError:
                # cannot latch (e.g. conflicting SAs): proceed unlatched, as RFC 5660 §2.3 allows a
                # ULP to; a caller that needs the latch uses connect() and gets the error
                handle = None
            if handle is not None:
                latch = self.latches.get(handle)
                assert latch is not None  # just created
                return self._outbound_latched(latch, flow, now)
        sa = self._select_sa(flow, entry)
        if sa is None:
            self.key_manager.acquire(flow, entry.protection, now)
            return OutboundDecision(OutboundVerdict.NEED_SA)
        return OutboundDecision(OutboundVerdict.PROTECT, sa, self._tag(sa))

    def how_would_protect(self, flow: FiveTuple, now: float) -> OutboundDecision:
        """RFC 5660 §2.4 "tell me how you'll protect this outgoing packet", without side effects
        (no ACQUIRE, no latch): NEED_SA here means "an SA would have to be negotiated first"."""
        latch = self._by_flow.get(flow)
        if latch is not None:
            if latch.state is LatchState.BROKEN:
                return discard(DropReason.LATCH_BROKEN, latch.handle)
            if latch.state is LatchState.ESTABLISHED:
                sa = self._latched_sa(latch, flow)
                if sa is not None:
                    return OutboundDecision(OutboundVerdict.PROTECT, sa, self._tag(sa), latch=latch.handle)
            return OutboundDecision(OutboundVerdict.NEED_SA, latch=latch.handle)
        entry = self.spd.lookup(flow)
        if entry is None:
            return discard(DropReason.NO_POLICY)
        if entry.action is SpdAction.BYPASS:
            return BYPASS_DECISION
        if entry.action is SpdAction.DISCARD:
            return discard(_discard_reason(entry))
        if entry.action is SpdAction.BYPASS_OR_PROTECT:
            return discard(DropReason.BOP_UNDECIDED)
        sa = self._select_sa(flow, entry)
        if sa is None:
            return OutboundDecision(OutboundVerdict.NEED_SA)
        return OutboundDecision(OutboundVerdict.PROTECT, sa, self._tag(sa))

    def _outbound_latched(self, latch: Latch, flow: FiveTuple, now: float) -> OutboundDecision:
        state = latch.state
        if state is LatchState.ESTABLISHED:
            sa = self._latched_sa(latch, flow)
            if sa is not None:
                return OutboundDecision(OutboundVerdict.PROTECT, sa, self._tag(sa), latch=latch.handle)
            params = latch.params
            assert params is not None
            # every congruent SA is gone (expired, deleted): ask for new ones; only a congruent SA
            # will be used, so the peer cannot change under the latch.
            entry = self.spd.lookup(flow, btns_peer=params.btns)
            policy = entry.protection if entry is not None and entry.protection is not None else None
            if policy is not None:
                self.key_manager.acquire(flow, policy, now)
            return OutboundDecision(OutboundVerdict.NEED_SA, latch=latch.handle)
        if state is LatchState.BROKEN:
            return discard(DropReason.LATCH_BROKEN, latch.handle)
        return OutboundDecision(OutboundVerdict.NEED_SA, reason=DropReason.LATCH_LARVAL, latch=latch.handle)

    def _latched_sa(self, latch: Latch, flow: FiveTuple) -> SecurityAssociation | None:
        last = self._last_sa.get(latch.handle)
        if last is not None:
            sa = self.sad.get(last)
            if sa is not None:
                return sa
        params = latch.params
        assert params is not None
        for sa in self.sad.carrying(flow):
            if params.congruent(sa):
                self._last_sa[latch.handle] = sa.sa_id
                return sa
        return None

    def _outbound_like(
        self, flow: FiveTuple, entry: SpdEntry, like: PacketTag, now: float
    ) -> OutboundDecision:
        if not like.protected:
            if entry.action is SpdAction.BYPASS:
                return BYPASS_DECISION
            return discard(DropReason.ULP_CANNOT_PROTECT_AS_LATCHED)
        # the tag's own SA first: the peer is known to hold its keys. Another SA with the same
        # protection may be a stale one (e.g. an older child SA the peer has already dropped).
        own = self.sad.get(like.sa_id) if like.sa_id is not None else None
        if own is not None and own.carries(flow):
            tag = self._tag(own)
            if tag.same_protection(like):
                return OutboundDecision(OutboundVerdict.PROTECT, own, tag)
        carrying = self.sad.carrying(flow)
        for sa in carrying:
            if self._tag(sa).same_protection(like):
                return OutboundDecision(OutboundVerdict.PROTECT, sa, self._tag(sa))
        if carrying or entry.protection is None:
            return discard(DropReason.ULP_CANNOT_PROTECT_AS_LATCHED)
        self.key_manager.acquire(flow, entry.protection, now)
        return OutboundDecision(OutboundVerdict.NEED_SA)

    def _select_sa(self, flow: FiveTuple, entry: SpdEntry) -> SecurityAssociation | None:
        policy = entry.protection
        assert policy is not None
        for sa in self.sad.carrying(flow):
            if sa.btns and not entry.btns_ok and entry.origin is EntryOrigin.CONFIGURED:
                continue
            if policy.admits(sa.params):
                return sa
        return None

    def _tag(self, sa: SecurityAssociation) -> PacketTag:
        tag = self._tags.get(sa.sa_id)
        if tag is None:
            if len(self._tags) > 2 * len(self.sad) + 1024:  # SAs removed behind our back
                self._tags.clear()
            tag = self._tags[sa.sa_id] = PacketTag.of_sa(sa)
        return tag

    # =========================================================================================
    # ULP / application calls

    def listen(
        self,
        key: ThreeTuple,
        request: LatchRequest | None = None,
        *,
        on_alert: AlertCallback | None = None,
        now: float = 0.0,
    ) -> int:
        """CREATE_LISTENER_LATCH for a listening socket (RFC 5660 §5.1 ``listen()``), plus the
        3-tuple template PAD entry (approach 2). Returns the listener latch handle; each new
        latched connection is announced to ``on_alert`` (reason NEW_CONNECTION). Only
        connection-like protocols (TCP, connected UDP, SCTP) can be latched this way."""
        _require_connection_protocol(key.proto)
        handle = self.latches.create_listener_latch(key, request, on_alert=on_alert, now=now)
        self.pad_layer.add_template(PadTemplate(key, request or LatchRequest(), handle))
        return handle

    def stop_listening(self, handle: int) -> None:
        info = self.latches.release_latch(handle)
        assert isinstance(info.key, ThreeTuple)
        self.pad_layer.remove_template(info.key)

    def connect(
        self,
        flow: FiveTuple,
        request: LatchRequest | None = None,
        *,
        on_alert: AlertCallback | None = None,
        now: float = 0.0,
    ) -> int:
        """CREATE_CONNECTION_LATCH before the first packet (RFC 5660 §5.1 ``connect()``), plus the
        5-tuple template PAD entry. The latch is ESTABLISHED if suitable SAs exist, else LARVAL
        while the key manager negotiates; ``on_alert`` learns the outcome. Raises
        PolicyRefused / LatchConflict / LatchExists (the ULP then tells the app "not latched").
        Approach 1 keeps latches in the TCB instead (UlpLatch); this call still works there and
        gives the normative-model latch."""
        _require_connection_protocol(flow.proto)
        if flow in self.pad_layer.holds:
            self._supersede(flow)
        handle = self.latches.create_connection_latch(flow, request, on_alert=on_alert, now=now)
        if flow not in self.pad_layer.clones and self.latches.get(handle) is not None:
            self.pad_layer.add_template(PadTemplate(flow, request or LatchRequest(), handle))
        return handle

    def close_flow(self, flow: FiveTuple, now: float) -> None:
        """The ULP's connection ended (TCP CLOSED / UDP disconnect). The flow's latch, PAD clone
        and per-flow SPD clone are held for the TIME_WAIT-like period, then removed by
        :meth:`poll` (RFC 5660 §2.3 release "when no more packets are expected")."""
        latch = self.latches.latch_for(flow)
        if latch is not None and latch.state is LatchState.LARVAL:
            self.latches.release_latch(latch.handle)
            self.key_manager.pending.pop(flow, None)
        self._outcome_cbs.pop(flow, None)
        self._bop_failed.pop(flow, None)
        if self.latches.latch_for(flow) is not None or self.spd.overlay_entry(flow) is not None:
            self.pad_layer.hold(flow, now)

    def request_protection(
        self,
        flow: FiveTuple,
        choice: FlowChoice,
        now: float,
        *,
        request: LatchRequest | None = None,
        on_alert: AlertCallback | None = None,
        on_outcome: OutcomeCallback | None = None,
        privileged: bool = False,
        policy: ProtectionPolicy | None = None,
        socket_id: int | None = None,
    ) -> ProtectionOutcome:
        """Decide an outgoing flow before its first packet (BYPASS-OR-PROTECT, docs/design.md;
        RFC 5660 §3.1 optional protection).

        - On a BYPASS-OR-PROTECT template: PROTECT installs an exact-5-tuple PROTECT clone and (in
          approach 2) creates the connection latch atomically with it; if IKE fails or times out
          the clone is withdrawn and the outcome says so (the app may then choose BYPASS).
          BYPASS installs an exact-5-tuple BYPASS clone.
        - On a plain BYPASS entry: PROTECT is optional protection (allowed, same as above).
        - On a PROTECT entry: BYPASS needs ``privileged`` (§3.1), else PolicyRefused.
        - A flow whose latch is ESTABLISHED or BROKEN can never be switched to BYPASS.

        Every refusal (:class:`PolicyRefused`) comes before anything changes, and a decision that
        fails midway -- a PROTECT whose latch the LD refuses (:class:`LatchConflict` and the
        like), or a backend that raises while the decision is being pushed to it -- is undone
        before the error propagates: a decision that did not happen leaves the SPD, the backend's
        flow and socket policies, the pending outcomes and the latch database as they were. The
        one change that stays is the end of a TIME_WAIT hold on the 5-tuple: the request is a new
        flow there, and the old one is finished first.

        Returns the outcome if known now (``pending`` True otherwise; ``on_outcome`` is called
        when the key manager finishes). With ``socket_id`` the decision is also pushed to the
        backend as a per-socket policy (on Linux: IP_XFRM_POLICY on that socket).
        """
        latch = self.latches.latch_for(flow)
        if latch is not None and flow in self.pad_layer.holds:
            self._supersede(flow)  # a new flow on a 5-tuple in its TIME_WAIT hold
            latch = None
        if latch is not None:
            if choice is FlowChoice.PROTECT:
                return self._latched_outcome(latch, flow)
            if latch.state is not LatchState.LARVAL:
                raise PolicyRefused(f"{flow} is latched; a latched flow never falls back to BYPASS")
        entry = self._decidable_entry(flow, choice, privileged)
        self._bop_failed.pop(flow, None)
        if choice is FlowChoice.BYPASS:
            return self._bypass_flow(flow, entry, latch, socket_id)
        return self._protect_flow(
            flow,
            entry,
            now,
            request=request,
            on_alert=on_alert,
            on_outcome=on_outcome,
            policy=policy,
            socket_id=socket_id,
        )

    def _latched_outcome(self, latch: Latch, flow: FiveTuple) -> ProtectionOutcome:
        """PROTECT asked again for a flow already latched or being latched: nothing changes, the
        answer is the latch's state (RFC 5660 §2.2: ESTABLISHED protects, LARVAL is pending,
        BROKEN stays broken)."""
        choice = FlowChoice.PROTECT
        if latch.state is LatchState.LARVAL:
            return ProtectionOutcome(flow, choice, ok=False, pending=True, latch=latch.handle)
        if latch.state is LatchState.ESTABLISHED:
            return ProtectionOutcome(
                flow, choice, ok=True, latch=latch.handle, sa=self._latched_sa(latch, flow)
            )
        return ProtectionOutcome(
            flow, choice, ok=False, latch=latch.handle, detail=f"latch is {latch.state.value}"
        )

    def _decidable_entry(self, flow: FiveTuple, choice: FlowChoice, privileged: bool) -> SpdEntry:
        """The configured SPD entry an application decision on ``flow`` overrides, after every
        check that may refuse the decision (PolicyRefused), so that a refusal changes nothing.

        RFC 4301 §5: a flow no entry matches is discarded, and so is one a DISCARD entry matches
        (§4.4.1), whatever the application asks. RFC 5660 §3.1: only a privileged caller may
        bypass a PROTECT entry, and the flow's own PROTECT entry counts as one once its
        negotiation is over (while it is pending, BYPASS is the application giving up on it)."""
        current = self.spd.overlay_entry(flow)
        if (
            choice is FlowChoice.BYPASS
            and current is not None
            and current.action is SpdAction.PROTECT
            and flow not in self._outcome_cbs
            and not privileged
        ):
            raise PolicyRefused(f"{flow} was decided PROTECT; it cannot fall back to BYPASS")
        entry = self.spd.lookup_configured(flow)
        if entry is None or entry.action is SpdAction.DISCARD:
            raise PolicyRefused(f"the SPD discards {flow}")
        if choice is FlowChoice.BYPASS and entry.action is SpdAction.PROTECT and not privileged:
            raise PolicyRefused(
                f"bypassing PROTECT entry {entry.name!r} needs a privileged caller (RFC 5660 §3.1)"
            )
        return entry

    def _bypass_flow(
        self, flow: FiveTuple, entry: SpdEntry, larval: Latch | None, socket_id: int | None
    ) -> ProtectionOutcome:
        """BYPASS decision (checked by :meth:`_decidable_entry`): an exact-5-tuple BYPASS entry in
        the SPD overlay, the "logical SPD update" of RFC 5660 §3.1, which decides the flow ahead of
        ``entry`` (the overlay is consulted before the ordered SPD of RFC 4301 §4.4.1). A PROTECT
        attempt still pending is abandoned first: its LARVAL latch released, its negotiation and
        its outcome callback forgotten (the application gave up on it; that stays so if the
        backend then fails the BYPASS, which is undone)."""
        if larval is not None:
            self.latches.release_latch(larval.handle)
        self.key_manager.pending.pop(flow, None)
        self._outcome_cbs.pop(flow, None)
        origin, template = _clone_origin(entry)
        bypass = SpdEntry.flow_entry(flow, SpdAction.BYPASS, None, origin, template=template)
        undo = _Undo()
        try:
            self._replace_own_entry(flow, bypass, undo)
            self._install_socket_policy(socket_id, flow, bypass, undo)
        except BaseException:
            undo.run()
            raise
        return ProtectionOutcome(flow, FlowChoice.BYPASS, ok=True)

    def _install_socket_policy(
        self, socket_id: int | None, flow: FiveTuple, entry: SpdEntry, undo: _Undo
    ) -> None:
        """Push the decision to the backend as ``socket_id``'s per-socket policy (if given), and
        record in ``undo`` how to detach it again."""
        if socket_id is None:
            return
        undo.add(lambda: self.backend.remove_socket_policy(socket_id))
        self.backend.install_socket_policy(SocketPolicy(socket_id, flow, entry, None))

    def _protect_flow(
        self,
        flow: FiveTuple,
        entry: SpdEntry,
        now: float,
        *,
        request: LatchRequest | None,
        on_alert: AlertCallback | None,
        on_outcome: OutcomeCallback | None,
        policy: ProtectionPolicy | None,
        socket_id: int | None,
    ) -> ProtectionOutcome:
        """PROTECT decision (checked by :meth:`_decidable_entry`) over ``entry``.

        The flow's own SPD entry becomes a PROTECT clone carrying the template's BTNS_OK
        (RFC 5386 §2), or goes away when the configured PROTECT entry already protects the flow
        as asked (RFC 4301 §4.4.1). Approach 2 then latches the flow: RFC 5660 §3.1 wants the
        logical SPD update made atomically with the latch, so if the LD refuses the latch
        (IPsecLocalError) or the backend raises, the steps recorded in ``undo`` put the SPD entry
        and its backend policy back, detach the socket policy and forget the pending outcome before
        the error propagates. Approach 1 looks for an SA or starts IKE (RFC 4301 §5.1: outbound
        PROTECT traffic needs an SA)."""
        prot = policy or (request.policy if request is not None else None) or entry.protection
        if prot is None:
            prot = ProtectionPolicy()
        undo = _Undo()
        clone = None
        if entry.action is not SpdAction.PROTECT or policy is not None:
            origin, template = _clone_origin(entry)
            clone = SpdEntry.flow_entry(
                flow, SpdAction.PROTECT, prot, origin, btns_ok=entry.btns_ok, template=template
            )
        try:
            self._replace_own_entry(flow, clone, undo)
            self._install_socket_policy(socket_id, flow, clone or self.spd.lookup(flow) or entry, undo)
            previous_cb = self._outcome_cbs.get(flow)
            self._outcome_cbs[flow] = (FlowChoice.PROTECT, on_outcome)
            undo.add(lambda: self._restore_outcome_cb(flow, previous_cb))
            if self.approach is Approach.POLICY:
                # the LD refuses (IPsecLocalError) before it changes anything: undoing this
                # call's steps is enough
                handle = self.latches.create_connection_latch(flow, request, on_alert=on_alert, now=now)
        except BaseException:
            undo.run()
            raise
        if self.approach is Approach.POLICY:
            return self._protect_outcome_latched(flow, handle)
        return self._protect_outcome_unlatched(flow, entry, prot, now)

    def _replace_own_entry(self, flow: FiveTuple, entry: SpdEntry | None, undo: _Undo) -> None:
        """Make ``entry`` the flow's own SPD overlay entry, or withdraw the one it has (None), and
        record in ``undo`` how to put the previous one back (with its unpinned backend policy)."""
        previous = self.spd.overlay_entry(flow)
        if entry is None and previous is None:
            return

        def restore() -> None:
            if entry is not None:
                self.spd.remove_overlay(flow)
                self.backend.remove_flow_policy(flow)
            if previous is not None:
                self.spd.install_overlay(flow, previous)
                self.backend.install_flow_policy(FlowPolicy(flow, previous, None))

        undo.add(restore)  # first, so that a backend failure below is undone too
        if entry is not None:
            self.spd.install_overlay(flow, entry)
            self.backend.install_flow_policy(FlowPolicy(flow, entry, None))
        else:  # e.g. an earlier privileged BYPASS
            self._remove_own_entry(flow)

    def _restore_outcome_cb(
        self, flow: FiveTuple, previous: tuple[FlowChoice, OutcomeCallback | None] | None
    ) -> None:
        if previous is None:
            self._outcome_cbs.pop(flow, None)
        else:
            self._outcome_cbs[flow] = previous

    def _protect_outcome_latched(self, flow: FiveTuple, handle: int) -> ProtectionOutcome:
        """Approach 2: the outcome of a PROTECT decision is its latch's (RFC 5660 §2.2): ok when
        ESTABLISHED, else pending (LARVAL); a latch already CLOSED failed its negotiation
        (:meth:`acquire_finished` withdrew the clone and recorded why)."""
        choice = FlowChoice.PROTECT
        latch = self.latches.get(handle)
        if latch is not None and latch.state is LatchState.ESTABLISHED:
            self._outcome_cbs.pop(flow, None)
            return ProtectionOutcome(flow, choice, ok=True, latch=handle, sa=self._latched_sa(latch, flow))
        if latch is None:
            self._outcome_cbs.pop(flow, None)
            return ProtectionOutcome(flow, choice, ok=False, acquire=self._bop_failed.get(flow))
        return ProtectionOutcome(flow, choice, ok=False, pending=True, latch=handle)

    def _protect_outcome_unlatched(
        self, flow: FiveTuple, entry: SpdEntry, prot: ProtectionPolicy, now: float
    ) -> ProtectionOutcome:
        """Approach 1: ok if an SA already protects the flow as its SPD entry asks, else ACQUIRE
        one (RFC 4301 §5.1); a negotiation that ends within the call answers at once."""
        choice = FlowChoice.PROTECT
        sa = self._select_sa(flow, self.spd.lookup(flow) or entry)
        if sa is not None:
            self._outcome_cbs.pop(flow, None)
            return ProtectionOutcome(flow, choice, ok=True, sa=sa)
        self.key_manager.acquire(flow, prot, now)
        if flow not in self._outcome_cbs:  # acquire_finished ran within acquire
            sa = self._select_sa(flow, self.spd.lookup(flow) or entry)
            return ProtectionOutcome(
                flow, choice, ok=sa is not None, sa=sa, acquire=self._bop_failed.get(flow)
            )
        return ProtectionOutcome(flow, choice, ok=False, pending=True)

    # -- approach 1: TCB latches ------------------------------------------------------------------

    def watch_ulp_latch(self, ulp: UlpLatch) -> None:
        """UlpEngine: ``ulp`` (a TCB latch) just latched its flow to an SA; from now on RFC 5660 §2
        conflicts break it (:class:`~rpclatch.ipsec.ulp_watch.UlpLatchWatch`). UlpLatch calls this
        itself, and :meth:`unwatch_ulp_latch` when it ends."""
        self.ulp_watch.watch(ulp)

    def unwatch_ulp_latch(self, ulp: UlpLatch) -> None:
        """UlpEngine: ``ulp`` closed."""
        self.ulp_watch.unwatch(ulp)

    def ulp_latch_broken(self, ulp: UlpLatch) -> None:
        """UlpEngine: ``ulp`` broke (any reason); its flow is discarded until it ends
        (:meth:`UlpLatchWatch.broken <rpclatch.ipsec.ulp_watch.UlpLatchWatch.broken>`)."""
        self.ulp_watch.broken(ulp)

    def ulp_latches(self) -> list[UlpLatch]:
        """The TCB latches currently watched (approach 1)."""
        return self.ulp_watch.latches()

    def vet_child_sa(self, sa: SecurityAssociation, now: float) -> SecurityAssociation | None:
        """KeyManagerListener: ``sa`` passed the LD and is about to be installed; approach 1's TCB
        latches get the LD's treatment (:meth:`UlpLatchWatch.vet_child_sa
        <rpclatch.ipsec.ulp_watch.UlpLatchWatch.vet_child_sa>`). Returns the SA to install."""
        return self.ulp_watch.vet_child_sa(sa)

    # =========================================================================================
    # administration, key manager, timers

    def update_spd(self, entries: Iterable[SpdEntry]) -> list[int]:
        """Administrative SPD change; latches are re-checked (RFC 5660 §2.3), the LD's and the
        TCB latches of approach 1 alike. Returns the LD latch handles broken (empty when
        ``pin_on_spd_change`` pinned them instead); :attr:`last_spd_breaks` lists the flows of
        TCB latches broken. The configured table is pushed to the backend
        (:meth:`Backend.install_spd`) first; if it or the SPD refuses the entries, nothing changes."""
        entries = tuple(entries)
        previous = self.spd.entries
        self.spd.replace_entries(entries)  # ValueError (names, origins): nothing changed
        try:
            self.backend.install_spd(entries)  # e.g. XfrmUnsupported: nothing changed here either
        except BaseException:
            self.spd.replace_entries(previous)
            raise
        broken = self.latches.spd_changed()
        self.last_spd_breaks = self.ulp_watch.recheck(allow_pin=True)
        for flow, e in self.spd.overlay_entries().items():
            if e.origin is EntryOrigin.PINNED_LATCH and flow not in self.backend_flow_policies():
                latch = self.latches.latch_for(flow)
                reqid = None
                if latch is not None and latch.params is not None:
                    reqid = self.key_manager.reqid_for(latch.params.peer)
                self.backend.install_flow_policy(FlowPolicy(flow, e, reqid))
        return broken

    def backend_flow_policies(self) -> Mapping[FiveTuple, FlowPolicy]:
        """The per-flow policies the backend holds (any backend: :attr:`Backend.flow_policies`)."""
        return self.backend.flow_policies

    def install_sa(self, sa: SecurityAssociation, now: float) -> SecurityAssociation | None:
        """Install an SA negotiated elsewhere (the sim's IKE): see :meth:`StaticKeyManager.install_sa`."""
        return self.key_manager.install_sa(sa, now)

    def delete_sa(self, sa_id: int, now: float) -> SecurityAssociation | None:
        sa = self.key_manager.delete_sa(sa_id, now)
        self._tags.pop(sa_id, None)
        return sa

    def peer_dead(self, peer: PeerIdentity, now: float) -> None:
        """IKE DPD says ``peer`` is dead: its latches break irremediably (RFC 5660 §2), the LD's
        and the TCB latches of approach 1 alike."""
        self.key_manager.peer_dead(peer, now)
        self.break_ulp_latches_with(peer, UlpBreakReason.PEER_DEAD, f"DPD: {peer} is dead")

    def break_ulp_latches_with(
        self, peer: PeerIdentity, reason: UlpBreakReason, detail: str = ""
    ) -> list[FiveTuple]:
        """Break every watched TCB latch latched to ``peer`` (approach 1; e.g. DPD declared it
        dead). Returns their flows."""
        return self.ulp_watch.break_with(peer, reason, detail)

    def restart_key_manager(self, now: float, *, restore_latches: bool) -> None:
        """RFC 5660 §2 restart: latches restored or CLOSED; pinned SPD entries never survive."""
        pinned_tcbs = self.ulp_watch.pinned_flows()
        self.key_manager.restart(now, restore_latches=restore_latches)
        # TCB latches live on in the ULP, but pinned entries never survive: re-check them unpinned
        self.ulp_watch.unpin(pinned_tcbs)
        if not restore_latches:
            for flow in list(self.spd.overlay_entries()):
                self._remove_own_entry(flow)
            self.pad_layer.clear()  # TIME_WAIT holds too: their flows' policies go now
            self._outcome_cbs.clear()
            self._bop_failed.clear()
            for flow in list(self.backend_flow_policies()):
                if (
                    self.latches.latch_for(flow) is None
                    and flow not in self.ulp_watch
                    and self.spd.overlay_entry(flow) is None  # a TCB latch broken just now
                ):
                    self.backend.remove_flow_policy(flow)
        else:
            for flow, e in dict(self.backend_flow_policies()).items():
                if e.entry.origin is EntryOrigin.PINNED_LATCH:
                    latch = self.latches.latch_for(flow)
                    if latch is not None and latch.state is LatchState.ESTABLISHED:
                        self._install_latched_policy(latch)  # restored latch, pin gone: re-pin by reqid
                    else:
                        self.backend.remove_flow_policy(flow)

    def check_peer_id_store(self) -> list[int]:
        """Verify the peer-ID store (RFC 5660 §2.6); if corrupt, CLOSE every ESTABLISHED/BROKEN
        latch and return their handles."""
        if self.peer_ids.verify():
            return []
        return self.latches.peer_id_store_corrupted()

    def poll(self, now: float) -> None:
        """Run timers: key-manager negotiations/timeouts/expiry, end of TIME_WAIT holds."""
        self.key_manager.poll(now)
        for flow in self.pad_layer.due(now):
            self._finish_flow(flow)

    def next_deadline(self) -> float | None:
        times = [
            t for t in (self.key_manager.next_deadline(), self.pad_layer.next_deadline()) if t is not None
        ]
        return min(times) if times else None

    # -- backend events ------------------------------------------------------------------------

    def backend_acquire(self, flow: FiveTuple, now: float) -> None:
        """A datapath ACQUIRE (XFRM_MSG_ACQUIRE): negotiate SAs for ``flow`` per the SPD."""
        entry = self.spd.lookup(flow)
        if entry is not None and entry.protection is not None and entry.action is SpdAction.PROTECT:
            self.key_manager.acquire(flow, entry.protection, now)

    def backend_expire(self, sa_id: int, hard: bool, now: float) -> None:
        """A datapath EXPIRE (XFRM_MSG_EXPIRE); a hard expiry deletes the SA."""
        if hard:
            self.delete_sa(sa_id, now)

    # -- key-manager listener --------------------------------------------------------------------

    def acquire_finished(
        self, flow: FiveTuple, outcome: AcquireOutcome, sa: SecurityAssociation | None, now: float
    ) -> None:
        """KeyManagerListener: an ACQUIRE ended (UNSUITABLE: the LD already failed the flow's
        LARVAL latch, see LatchDatabase.negotiation_finished)."""
        if outcome is not AcquireOutcome.INSTALLED:
            self.latches.sa_setup_failed(
                flow, timeout=outcome is AcquireOutcome.TIMEOUT, detail=outcome.value
            )
        pending = self._outcome_cbs.pop(flow, None)
        if pending is None:
            return
        choice, cb = pending
        if outcome is AcquireOutcome.INSTALLED:
            latch = self.latches.latch_for(flow)
            result = ProtectionOutcome(flow, choice, ok=True, latch=latch.handle if latch else None, sa=sa)
        else:
            overlay = self.spd.overlay_entry(flow)
            if overlay is not None and overlay.origin in (
                EntryOrigin.TEMPLATE_CLONE,
                EntryOrigin.APPLICATION_REQUEST,
            ):
                self._remove_own_entry(flow)
            self._bop_failed[flow] = outcome
            result = ProtectionOutcome(flow, choice, ok=False, acquire=outcome, detail=f"IKE {outcome.value}")
        if cb is not None:
            cb(result)

    # -- internals -----------------------------------------------------------------------------

    def _latch_incoming(self, flow: FiveTuple, sa: SecurityAssociation, now: float) -> int | None:
        listener = self.latches.listener_for(flow)
        if listener is None:
            return None
        return self.latches.spawn_from_listener(listener, flow, sa, now)

    def _record_latch(self, latch: Latch, sa: SecurityAssociation | None) -> None:
        flow = latch.key
        assert isinstance(flow, FiveTuple) and latch.params is not None
        self.peer_ids.intern(latch.params.peer)
        if sa is not None:
            self._last_sa[latch.handle] = sa.sa_id
        template = self.pad_layer.template_for(flow)
        if template is None:
            template = PadTemplate(flow, latch.request, latch.handle)
        self.pad_layer.clone(template, flow, latch.params.peer, latch.params.peer_addr, latch.handle)
        self.pad_layer.flow_templates.pop(flow, None)
        if latch.state is LatchState.BROKEN:  # T2 "(or BROKEN)": conflicting SAs already exist
            self._discard_broken_flow(flow)
        else:
            self._install_latched_policy(latch)

    def _install_latched_policy(self, latch: Latch) -> None:
        """The backend policy of an ESTABLISHED latch's flow: its SPD entry (the flow's own overlay
        entry, else the configured one), PROTECT pinned to the latched peer's reqid."""
        flow = latch.key
        assert isinstance(flow, FiveTuple) and latch.params is not None
        entry = self.spd.overlay_entry(flow) or self.spd.lookup(flow, btns_peer=latch.params.btns)
        if entry is not None:
            self.backend.install_flow_policy(
                FlowPolicy(flow, entry, self.key_manager.reqid_for(latch.params.peer))
            )
        else:
            self.backend.remove_flow_policy(flow)

    def _discard_broken_flow(self, flow: FiveTuple) -> None:
        """RFC 5660 §2.3: packets of a BROKEN latch's flow are discarded -- "nothing is sent if it
        can't be" -- in the datapath too, not only in this engine's verdicts: a kernel backend
        would otherwise keep carrying the flow under whatever SA matches. An exact-5-tuple DISCARD
        flow policy (both directions, origin BROKEN_LATCH) replaces the latch's pinned one until the
        latch is ESTABLISHED again or goes away."""
        entry = SpdEntry.flow_entry(flow, SpdAction.DISCARD, None, EntryOrigin.BROKEN_LATCH)
        self.backend.install_flow_policy(FlowPolicy(flow, entry, None))
        self._broken_flows.add(flow)

    def _latch_state_changed(self, latch: Latch, old: LatchState | None) -> None:
        """LD hook (before the holder's ALERT): mirror BROKEN / recovered latches in the backend."""
        flow = latch.key
        if not isinstance(flow, FiveTuple) or latch.params is None:
            return
        if latch.state is LatchState.BROKEN:
            if flow not in self._broken_flows:
                self._discard_broken_flow(flow)
        elif latch.state is LatchState.ESTABLISHED and flow in self._broken_flows:
            self._broken_flows.discard(flow)
            self._install_latched_policy(latch)

    def _latch_closed(self, latch: Latch) -> None:
        self._last_sa.pop(latch.handle, None)
        if isinstance(latch.key, FiveTuple):
            flow = latch.key
            was_broken = flow in self._broken_flows
            self._broken_flows.discard(flow)
            if flow not in self.pad_layer.holds:
                self.pad_layer.drop(flow)
                overlay = self.spd.overlay_entry(flow)
                if overlay is None:
                    self.backend.remove_flow_policy(flow)
                elif was_broken:
                    # the flow's own SPD entry governs it again (unlatched, so not pinned)
                    self.backend.install_flow_policy(FlowPolicy(flow, overlay, None))
            # in its TIME_WAIT hold a broken flow stays discarded until the hold ends (_finish_flow)

    def _supersede(self, flow: FiveTuple) -> None:
        """A new flow trigger on a 5-tuple in its TIME_WAIT hold: finish the old flow now, in the
        same step as the new flow is judged (atomic w.r.t. new flow triggers)."""
        self._finish_flow(flow)

    def _finish_flow(self, flow: FiveTuple) -> None:
        self.pad_layer.holds.pop(flow, None)
        latch = self.latches.latch_for(flow)
        if latch is not None:
            self.latches.release_latch(latch.handle)
        self.pad_layer.drop(flow)
        self._remove_own_entry(flow)
        self._bop_failed.pop(flow, None)

    def _remove_own_entry(self, flow: FiveTuple) -> None:
        """Withdraw ``flow``'s own SPD overlay entry and its backend flow policy. A TCB latch still
        watched on the flow (approach 1) was relying on that entry: it is re-checked against the
        configured SPD now governing the flow and breaks if that no longer protects it as latched
        (RFC 5660 §2.3; :meth:`UlpLatchWatch.own_entry_removed
        <rpclatch.ipsec.ulp_watch.UlpLatchWatch.own_entry_removed>`) -- its flow is then
        discarded, never carried in the clear."""
        if self.spd.remove_overlay(flow) is not None or flow in self.backend_flow_policies():
            self.backend.remove_flow_policy(flow)
        if flow in self.ulp_watch:
            self.ulp_watch.own_entry_removed(flow)

    def _install_clone(
        self, flow: FiveTuple, template: SpdEntry, action: SpdAction, reqid: int | None
    ) -> None:
        prot = template.protection if action is SpdAction.PROTECT else None
        clone = SpdEntry.flow_entry(
            flow, action, prot, EntryOrigin.TEMPLATE_CLONE, btns_ok=template.btns_ok, template=template.name
        )
        self.spd.install_overlay(flow, clone)
        self.backend.install_flow_policy(FlowPolicy(flow, clone, reqid))


def _static_key_manager(provisions: tuple[SaProvision, ...], acquire_timeout: float) -> KeyManagerFactory:
    """The default key manager: child SAs come from ``provisions``, without IKE on any wire."""

    def build(
        sad: SecurityAssociationDatabase,
        pad: PeerAuthorizationDatabase,
        latches: LatchDatabase,
        backend: Backend,
        listener: IPsecEngine,
    ) -> StaticKeyManager:
        return StaticKeyManager(
            sad,
            pad,
            latches,
            backend,
            provisions=provisions,
            acquire_timeout=acquire_timeout,
            listener=listener,
        )

    return build


class _Undo:
    """The steps that undo a change in progress, run newest first if the change fails."""

    __slots__ = ("_steps",)

    def __init__(self) -> None:
        self._steps: list[Callable[[], object]] = []

    def add(self, step: Callable[[], object]) -> None:
        self._steps.append(step)

    def run(self) -> None:
        while self._steps:
            self._steps.pop()()


def _clone_origin(template: SpdEntry) -> tuple[EntryOrigin, str | None]:
    """Origin and template name of a flow's own entry decided over the configured ``template``:
    a clone of a BYPASS-OR-PROTECT template, or an application's request (RFC 5660 §3.1)."""
    name = template.name if template.action is SpdAction.BYPASS_OR_PROTECT else None
    return (EntryOrigin.TEMPLATE_CLONE if name else EntryOrigin.APPLICATION_REQUEST), name


def _discard_reason(entry: SpdEntry) -> DropReason:
    """Why a DISCARD entry drops: configured, or the 5-tuple of a broken TCB latch (approach 1)."""
    return DropReason.LATCH_BROKEN if entry.origin is EntryOrigin.BROKEN_LATCH else DropReason.SPD_DISCARD


def _require_connection_protocol(proto: int) -> None:
    """Approach 2 latches connections only (TCP, SCTP, connected UDP; docs/design.md)."""
    if proto not in CONNECTION_PROTOCOLS:
        raise PolicyRefused(
            f"protocol {proto} has no connections to latch; datagram applications use pTokens (approach 1)"
        )
