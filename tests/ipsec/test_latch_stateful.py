"""Random operation sequences on one engine (approach 2, and approach 1) keep it consistent.

Invariants after every step (and, per packet, the fast paths answer exactly what the full checks
answer):
- the indexes agree (every live latch is found by its key; no CLOSED latch is kept);
- BROKEN iff the latch has a recorded conflict; ESTABLISHED latches have none;
- an ESTABLISHED latch's flow is carried only by SAs congruent with it (RFC 5660 §2.3: no
  conflicting SA coexists with an intact latch), and the engine never accepts cleartext for it;
- the backend mirrors the LD: DISCARD flow policy for BROKEN latches, none for ESTABLISHED ones,
  and no flow policy left without a latch, SPD overlay entry, hold or TCB latch behind it.
"""

from __future__ import annotations

import contextlib

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from rpclatch.ipsec import examples as ex
from rpclatch.ipsec.decisions import InboundVerdict, PacketTag
from rpclatch.ipsec.engine import Approach, EngineConfig, FlowChoice, IPsecEngine
from rpclatch.ipsec.errors import IPsecError
from rpclatch.ipsec.latch import LatchState
from rpclatch.ipsec.model import AES_GCM_128, AES_GCM_256, FiveTuple, ProtectionParams, Selector, ThreeTuple
from rpclatch.ipsec.spd import EntryOrigin, SpdAction
from rpclatch.ipsec.ulp import UlpLatch, UlpLatchState

FLOWS = [ex.flow("192.0.2.1", 2049, "192.0.2.2", 40000 + i) for i in range(3)]
PEERS = [ex.btns_peer(10 + i) for i in range(3)]
WIDE = Selector(local=ex.NET, remote=ex.NET, proto=6)


class LatchMachine(RuleBasedStateMachine):
    approach = Approach.POLICY

    def __init__(self) -> None:
        super().__init__()
        self.e = IPsecEngine(
            ex.nfs_spd(), ex.btns_pad(), config=EngineConfig(approach=self.approach, acquire_timeout=1.0)
        )
        self.now = 0.0

    @rule(f=st.sampled_from(FLOWS), peer=st.sampled_from(PEERS), wide=st.booleans(), strong=st.booleans())
    def install_sa(self, f: FiveTuple, peer: object, wide: bool, strong: bool) -> None:
        params = ProtectionParams(suite=AES_GCM_256 if strong else AES_GCM_128)
        sa = ex.narrow_sa(f, peer, ex.btns_local(1), params=params, selectors=(WIDE,) if wide else None)  # type: ignore[arg-type]
        with contextlib.suppress(IPsecError):
            self.e.install_sa(sa, self.now)

    @rule(data=st.data())
    def delete_sa(self, data: st.DataObject) -> None:
        ids = [sa.sa_id for sa in self.e.sad]
        if ids:
            self.e.delete_sa(data.draw(st.sampled_from(ids)), self.now)

    @rule(f=st.sampled_from(FLOWS))
    def connect(self, f: FiveTuple) -> None:
        with contextlib.suppress(IPsecError):
            self.e.connect(f, now=self.now)

    @rule()
    def listen(self) -> None:
        with contextlib.suppress(IPsecError):
            self.e.listen(ThreeTuple.of("192.0.2.1", 2049, 6), now=self.now)

    @rule(f=st.sampled_from(FLOWS), data=st.data(), initiating=st.booleans())
    def packet_in(self, f: FiveTuple, data: st.DataObject, initiating: bool) -> None:
        sas = self.e.sad.carrying(f)
        sa = data.draw(st.sampled_from([None, *sas]))
        d = self.e.inbound(f, sa, self.now, initiating=initiating)
        latch = self.e.latches.latch_for(f)
        if not initiating:
            # the per-flow / per-latch fast paths answer exactly what the full checks answer
            slow = (
                self.e._inbound_latched(latch, f, sa)
                if latch is not None
                else self.e._inbound_unlatched(f, sa, self.now, False)
            )
            assert d == slow, (d, slow)
        if d.accepted and latch is not None and latch.params is not None:
            # anything delivered on a latched flow came through a congruent SA
            assert sa is not None and latch.state is LatchState.ESTABLISHED and latch.params.congruent(sa)

    @rule(f=st.sampled_from(FLOWS), initiating=st.booleans())
    def packet_out(self, f: FiveTuple, initiating: bool) -> None:
        d = self.e.outbound(f, self.now, initiating=initiating)
        latch = self.e.latches.latch_for(f)
        if d.sendable and latch is not None and latch.params is not None:
            assert d.sa is not None and latch.state is LatchState.ESTABLISHED and latch.params.congruent(d.sa)

    @rule(f=st.sampled_from(FLOWS))
    def close(self, f: FiveTuple) -> None:
        self.e.close_flow(f, self.now)

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        handles = [latch.handle for latch in self.e.latches]
        if handles:
            self.e.latches.release_latch(data.draw(st.sampled_from(handles)))

    @rule(action=st.sampled_from([SpdAction.PROTECT, SpdAction.BYPASS, SpdAction.BYPASS_OR_PROTECT]))
    def change_spd(self, action: SpdAction) -> None:
        self.e.update_spd(ex.nfs_spd(action))

    @rule(f=st.sampled_from(FLOWS), choice=st.sampled_from(list(FlowChoice)), privileged=st.booleans())
    def decide(self, f: FiveTuple, choice: FlowChoice, privileged: bool) -> None:
        with contextlib.suppress(IPsecError):
            self.e.request_protection(f, choice, self.now, privileged=privileged)

    @rule(peer=st.sampled_from(PEERS))
    def dpd(self, peer: object) -> None:
        self.e.peer_dead(peer, self.now)  # type: ignore[arg-type]

    @rule(restore=st.booleans())
    def restart(self, restore: bool) -> None:
        self.e.restart_key_manager(self.now, restore_latches=restore)

    @rule(dt=st.floats(0.0, 2.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.e.poll(self.now)

    @invariant()
    def consistent(self) -> None:
        ld = self.e.latches
        for latch in ld:
            assert latch.state is not LatchState.CLOSED
            if isinstance(latch.key, FiveTuple):
                assert ld.latch_for(latch.key) is latch
            if latch.state is LatchState.BROKEN:
                assert latch.has_conflicts()
            if latch.state is LatchState.ESTABLISHED:
                assert not latch.has_conflicts()
                assert latch.params is not None and isinstance(latch.key, FiveTuple)
                for sa in self.e.sad.carrying(latch.key):
                    assert latch.params.congruent(sa), (latch, sa)
                assert self.e.inbound(latch.key, None, self.now).verdict is InboundVerdict.DROP
                if self.approach is Approach.POLICY:
                    assert latch.key in self.e.pad_layer.clones  # approach 2: the latch is a PAD clone
            if latch.state in (LatchState.ESTABLISHED, LatchState.BROKEN) and isinstance(
                latch.key, FiveTuple
            ):
                overlay = self.e.spd.overlay_entry(latch.key)
                assert overlay is None or overlay.action is SpdAction.PROTECT  # never BYPASS mid-flow
        for flow in self.e.pad_layer.clones:
            assert ld.latch_for(flow) is not None or flow in self.e.pad_layer.holds
        # the datapath mirrors the LD: a BROKEN latch's flow is discarded there too (RFC 5660 §2.3,
        # nothing is sent if it can't be), an ESTABLISHED one's is not; no flow policy outlives
        # every reason for it (latch, own SPD entry, TIME_WAIT hold, watched TCB latch)
        policies = self.e.backend_flow_policies()
        for latch in ld:
            if not isinstance(latch.key, FiveTuple) or latch.params is None:
                continue
            p = policies.get(latch.key)
            if latch.state is LatchState.BROKEN:
                assert p is not None and p.entry.action is SpdAction.DISCARD, (latch, p)
            elif latch.state is LatchState.ESTABLISHED:
                assert p is not None and p.entry.action is not SpdAction.DISCARD, (latch, p)
        for flow in policies:
            assert (
                ld.latch_for(flow) is not None
                or self.e.spd.overlay_entry(flow) is not None
                or flow in self.e.pad_layer.holds
                or any(u.flow == flow for u in self.e.ulp_latches())
            ), (flow, policies[flow])


class UlpEngineMachine(LatchMachine):
    """The same operations with the engine in approach 1 (the LD only holds what connect() and
    request_protection() create; packets are tagged, not latched, by the engine), plus TCB latches
    (UlpLatch) fed the same packets. Extra invariants: the engine watches exactly the TCB latches
    latched to an SA; a watched latch never coexists with a non-congruent SA installed after it
    latched, nor with an SPD that no longer protects its flow as latched (RFC 5660 §2 conflicts
    break it); a broken TCB latch's flow is neither sent nor accepted by the engine until a new
    decision for the 5-tuple is made."""

    approach = Approach.ULP

    def __init__(self) -> None:
        super().__init__()
        self.tcbs: dict[FiveTuple, UlpLatch] = {}
        self.present_at_latch: dict[FiveTuple, set[int]] = {}
        self.policy_protected: dict[FiveTuple, bool] = {}

    @rule(f=st.sampled_from(FLOWS), data=st.data(), initiating=st.booleans())
    def tcb_packet_in(self, f: FiveTuple, data: st.DataObject, initiating: bool) -> None:
        tcb = self.tcbs.get(f)
        if tcb is None:
            tcb = self.tcbs[f] = UlpLatch(self.e, f, require_protection=True)
        sa = data.draw(st.sampled_from([None, *self.e.sad.carrying(f)]))
        was = tcb.state
        v = tcb.inbound(self.e.inbound(f, sa, self.now, initiating=initiating))
        if was is UlpLatchState.UNLATCHED and tcb.latched:
            self.present_at_latch[f] = {x.sa_id for x in self.e.sad.carrying(f)}
            entry = self.e.spd.lookup_configured(f)
            self.policy_protected[f] = entry is not None and entry.action is not SpdAction.BYPASS
        if v.deliver:
            assert sa is not None and tcb.tag is not None and tcb.tag.same_protection(PacketTag.of_sa(sa))

    @rule(f=st.sampled_from(FLOWS))
    def tcb_packet_out(self, f: FiveTuple) -> None:
        tcb = self.tcbs.get(f)
        if tcb is None or not tcb.latched:
            return
        d = tcb.outbound(self.now)
        if d.sendable:
            assert d.tag is not None and tcb.tag is not None and d.tag.same_protection(tcb.tag)

    @rule(f=st.sampled_from(FLOWS))
    def tcb_close(self, f: FiveTuple) -> None:
        tcb = self.tcbs.pop(f, None)
        if tcb is not None:
            tcb.close(self.now)

    @invariant()
    def tcb_latches_hear_conflicts(self) -> None:
        watched = set(map(id, self.e.ulp_latches()))
        for f, tcb in self.tcbs.items():
            latched_to_sa = tcb.state is UlpLatchState.LATCHED and tcb.tag is not None and tcb.tag.protected
            assert (id(tcb) in watched) == latched_to_sa, (tcb.state, tcb.tag)
            if latched_to_sa:
                assert tcb.tag is not None
                for sa in self.e.sad.carrying(f):
                    if sa.sa_id not in self.present_at_latch.get(f, set()):
                        assert tcb.tag.same_protection(PacketTag.of_sa(sa)), (tcb.tag, sa)
                overlay = self.e.spd.overlay_entry(f)
                entry = self.e.spd.lookup_configured(f)
                # latched under a protecting policy: the policy may not have stopped protecting it
                # (latched optionally on a BYPASS entry: a BYPASS entry changes nothing for it)
                if self.policy_protected.get(f):
                    assert overlay is not None or (
                        entry is not None and entry.action in (SpdAction.PROTECT, SpdAction.BYPASS_OR_PROTECT)
                    ), (overlay, entry)
                assert entry is None or entry.action is not SpdAction.DISCARD or overlay is not None
            if tcb.state is UlpLatchState.BROKEN:
                overlay = self.e.spd.overlay_entry(f)
                if overlay is not None and overlay.origin is EntryOrigin.BROKEN_LATCH:
                    assert not self.e.outbound(f, self.now).sendable
                    for sa in [None, *self.e.sad.carrying(f)]:
                        assert not self.e.inbound(f, sa, self.now).accepted


TestLatchMachine = LatchMachine.TestCase
TestLatchMachine.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestUlpEngineMachine = UlpEngineMachine.TestCase
TestUlpEngineMachine.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
