"""Approach 1's TCB latches, watched for RFC 5660 §2 conflicts from outside the packet path.

A :class:`~rpclatch.ipsec.ulp.UlpLatch` lives in a transport control block, not in the Latch
Database, so the LD's conflict rules (RFC 5660 §2.3) do not reach it by themselves. Once such a
latch is latched to an SA, :class:`UlpLatchWatch` gives it the LD's treatment. The engine owns one
watch and forwards the :class:`~rpclatch.ipsec.ulp.UlpEngine` calls of its TCB latches to it.
"""

from __future__ import annotations

from rpclatch.ipsec.backend import Backend, FlowPolicy
from rpclatch.ipsec.decisions import PacketTag
from rpclatch.ipsec.latch import LatchDatabase
from rpclatch.ipsec.model import FiveTuple, PeerIdentity, ProtectionPolicy, Selector
from rpclatch.ipsec.sad import SecurityAssociation, narrow_flow
from rpclatch.ipsec.spd import EntryOrigin, SecurityPolicyDatabase, SpdAction, SpdEntry
from rpclatch.ipsec.ulp import UlpBreakReason, UlpLatch


class UlpLatchWatch:
    """The TCB latches of protected flows an engine watches, by flow (approach 1).

    ``spd``, ``backend`` and ``latches`` are the engine's own: the watch installs and removes the
    per-flow SPD overlays (BROKEN_LATCH discards, PINNED_LATCH pins) and the matching backend flow
    policies, and leaves a flow alone when an LD latch governs it.

    - a child SA that would carry the flow without being congruent with the latched tag (other
      peer, local ID or QoP) is narrowed around the flow (``narrow_conflicting_sas``, SHOULD) or
      breaks the latch before it is installed (:meth:`vet_child_sa`);
    - after an SPD change, a flow the SPD no longer protects as latched breaks, or keeps its
      protection through an exact-5-tuple PINNED_LATCH entry with ``pin_on_spd_change``
      (OPTIONAL, §2.3; §2.4 calls this logical SPD update incidental to the model)
      (:meth:`recheck`); the same check, unpinned, runs when a flow's own overlay entry (the
      template clone or optional protection it latched under) goes away -- hold ended, flow
      superseded, IKE failed, key-manager restart -- since the configured SPD then governs it
      (:meth:`own_entry_removed`);
    - IKE DPD declaring the latched peer dead breaks it (:meth:`break_with`);
    - a broken latch's flow gets an exact-5-tuple DISCARD entry until the flow ends
      (:meth:`broken`)."""

    __slots__ = ("_backend", "_latches", "_policy_protected", "_spd", "_watched", "pin_on_spd_change")

    def __init__(
        self,
        spd: SecurityPolicyDatabase,
        backend: Backend,
        latches: LatchDatabase,
        *,
        pin_on_spd_change: bool,
    ) -> None:
        self._spd = spd
        self._backend = backend
        self._latches = latches
        self.pin_on_spd_change = pin_on_spd_change
        self._watched: dict[FiveTuple, UlpLatch] = {}
        #: watched flows the configured SPD protected (when latched or at the last SPD check); the
        #: others were protected optionally on a BYPASS entry (§3.1, §2.4)
        self._policy_protected: set[FiveTuple] = set()

    def __contains__(self, flow: object) -> bool:
        return flow in self._watched

    def __bool__(self) -> bool:
        return bool(self._watched)

    def latches(self) -> list[UlpLatch]:
        """The TCB latches currently watched."""
        return list(self._watched.values())

    def watch(self, ulp: UlpLatch) -> None:
        """``ulp`` just latched its flow to an SA: from now on conflicts break it (class docstring)."""
        self._watched[ulp.flow] = ulp
        tag = ulp.tag
        entry = self._spd.lookup_configured(ulp.flow, btns_peer=tag.btns if tag is not None else False)
        if entry is not None and entry.action in (SpdAction.PROTECT, SpdAction.BYPASS_OR_PROTECT):
            self._policy_protected.add(ulp.flow)
        else:  # protected although policy bypasses the flow: optional protection (RFC 5660 §3.1)
            self._policy_protected.discard(ulp.flow)

    def unwatch(self, ulp: UlpLatch) -> None:
        if self._watched.get(ulp.flow) is ulp:
            del self._watched[ulp.flow]
            self._policy_protected.discard(ulp.flow)

    def broken(self, ulp: UlpLatch) -> None:
        """``ulp`` broke (any reason). Its flow gets an exact-5-tuple DISCARD entry (origin
        BROKEN_LATCH) until the flow ends and its hold runs out, so that nothing of the flow is
        sent or accepted any more -- not even the host's own RST answers to segments of the dead
        connection, which would otherwise go out under whatever SA policy picks (approach 2's
        BROKEN latch in the LD does the same job)."""
        self.unwatch(ulp)
        flow = ulp.flow
        if self._latches.latch_for(flow) is not None:
            return  # an LD latch (approach 2 used alongside) governs the flow
        entry = SpdEntry.flow_entry(flow, SpdAction.DISCARD, None, EntryOrigin.BROKEN_LATCH)
        self._spd.install_overlay(flow, entry)
        self._backend.install_flow_policy(FlowPolicy(flow, entry, None))

    def vet_child_sa(self, sa: SecurityAssociation) -> SecurityAssociation | None:
        """``sa`` passed the LD and is about to be installed (RFC 5660 §2.3 for TCB latches): if it
        would carry a watched flow without being congruent with its latched tag (other peer, local
        ID or QoP), a wider SA is narrowed to exclude such flows (``narrow_conflicting_sas``,
        SHOULD); otherwise those TCB latches break now (CONFLICTING_SA), before any packet under
        the SA can arrive. Returns the SA to install."""
        if not self._watched:
            return sa
        flow = narrow_flow(sa)
        if flow is not None:
            hit = self._watched.get(flow)
            candidates = [hit] if hit is not None else []
        else:
            candidates = [u for f, u in self._watched.items() if sa.carries(f)]
        tag = PacketTag.of_sa(sa)
        hits = [u for u in candidates if u.tag is not None and not u.tag.same_protection(tag)]
        if not hits:
            return sa
        if self._latches.narrow_conflicting_sas and flow is None:
            selectors: tuple[Selector, ...] = sa.traffic_selectors
            for ulp in hits:
                selectors = tuple(piece for sel in selectors for piece in sel.exclude(ulp.flow))
            if selectors:
                return sa.narrowed(selectors)
        for ulp in hits:
            ulp.break_latch(UlpBreakReason.CONFLICTING_SA, offending=tag, detail=f"conflicting {sa}")
        return sa

    def recheck(self, *, allow_pin: bool) -> list[FiveTuple]:
        """RFC 5660 §2 after an SPD change: a TCB latch whose flow the SPD would now bypass,
        discard or protect otherwise breaks -- or, with ``pin_on_spd_change`` and ``allow_pin``,
        keeps its protection through an exact-5-tuple PINNED_LATCH entry. Returns the flows broken."""
        return [f for f, u in list(self._watched.items()) if self._recheck(f, u, allow_pin=allow_pin)]

    def own_entry_removed(self, flow: FiveTuple) -> bool:
        """``flow``'s own overlay entry (template clone, optional protection) just went away: its
        hold ended, a new flow superseded it, IKE failed, or the key manager restarted. A TCB
        latch watched on it is now governed by the configured SPD and is re-checked against it as
        after an SPD change (RFC 5660 §2.3), without pinning -- the flow's own entry is what a pin
        would have kept, and it is gone on purpose. Returns True if the latch broke (its flow is
        then discarded, :meth:`broken`). The caller removes the backend flow policy first."""
        ulp = self._watched.get(flow)
        return ulp is not None and self._recheck(flow, ulp, allow_pin=False)

    def _recheck(self, flow: FiveTuple, ulp: UlpLatch, *, allow_pin: bool) -> bool:
        """One watched flow of :meth:`recheck`; True if its latch broke."""
        tag = ulp.tag
        if tag is None or tag.params is None:
            return False
        overlay = self._spd.overlay_entry(flow)
        if overlay is not None and overlay.origin is not EntryOrigin.PINNED_LATCH:
            return False  # the flow's own entry (optional protection / template clone) governs it
        entry = self._spd.lookup_configured(flow, btns_peer=tag.btns)
        if entry is not None and entry.action is SpdAction.BYPASS:
            # "would now be bypassed" conflicts only for a flow the policy used to protect; a
            # flow protected optionally on a BYPASS entry sees no change
            ok = flow not in self._policy_protected
        else:
            ok = (
                entry is not None
                and entry.action in (SpdAction.PROTECT, SpdAction.BYPASS_OR_PROTECT)
                and entry.protection is not None
                and _policy_admits_tag(entry.protection, tag)
                and (entry.btns_ok or not tag.btns)  # RFC 5386 §2
            )
            if ok:
                self._policy_protected.add(flow)
        if ok:
            if overlay is not None:  # the pin is no longer needed
                self._spd.remove_overlay(flow)
                self._backend.remove_flow_policy(flow)
            return False
        if allow_pin and self.pin_on_spd_change:
            if overlay is None:
                params = tag.params
                policy = ProtectionPolicy(params.protocol, params.mode, (params.suite,), 0, tag.narrow)
                pinned = SpdEntry.flow_entry(
                    flow, SpdAction.PROTECT, policy, EntryOrigin.PINNED_LATCH, btns_ok=tag.btns
                )
                self._spd.install_overlay(flow, pinned)
            return False
        if overlay is not None:
            self._spd.remove_overlay(flow)
            self._backend.remove_flow_policy(flow)
        detail = entry.name if entry is not None else "no entry"
        return ulp.break_latch(UlpBreakReason.SPD_CHANGE, detail=f"SPD now: {detail}")

    def pinned_flows(self) -> list[FiveTuple]:
        """Watched flows held by a PINNED_LATCH entry (taken before a key-manager restart)."""
        return [
            f
            for f, e in self._spd.overlay_entries().items()
            if e.origin is EntryOrigin.PINNED_LATCH and f in self._watched
        ]

    def unpin(self, flows: list[FiveTuple]) -> None:
        """After a key-manager restart (RFC 5660 §2): TCB latches live on in the ULP, but pinned
        entries never survive; remove the pins of ``flows`` and re-check them unpinned."""
        for flow in flows:
            if self._spd.remove_overlay(flow) is not None or flow in self._backend.flow_policies:
                self._backend.remove_flow_policy(flow)
        if flows:
            self.recheck(allow_pin=False)

    def break_with(self, peer: PeerIdentity, reason: UlpBreakReason, detail: str = "") -> list[FiveTuple]:
        """Break every watched TCB latch latched to ``peer`` (e.g. DPD declared it dead). Returns
        their flows."""
        hit = [u for u in self._watched.values() if u.tag is not None and u.tag.peer == peer]
        return [u.flow for u in hit if u.break_latch(reason, detail=detail)]


def _policy_admits_tag(policy: ProtectionPolicy, tag: PacketTag) -> bool:
    """Does an SPD entry's policy still admit the protection a TCB latch latched?"""
    p = tag.params
    return (
        p is not None and policy.protocol is p.protocol and policy.mode is p.mode and p.suite in policy.suites
    )
