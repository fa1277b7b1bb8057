"""Approach 1: UlpLatch in a transport control block, pTokens for datagram applications."""

from __future__ import annotations

from rpclatch.ipsec import examples as ex
from rpclatch.ipsec.decisions import CLEARTEXT, DropReason, OutboundVerdict, PacketTag
from rpclatch.ipsec.engine import Approach, EngineConfig, IPsecEngine
from rpclatch.ipsec.model import AES_GCM_128, IpProto, ProtectionParams, Selector
from rpclatch.ipsec.spd import EntryOrigin, SpdAction
from rpclatch.ipsec.ulp import (
    DatagramLatching,
    MismatchPolicy,
    UlpBreak,
    UlpBreakReason,
    UlpLatch,
    UlpLatchState,
)

SERVER, CLIENT, ROGUE = 1, 2, 3
SRV = ex.flow("192.0.2.1", 2049, "192.0.2.2", 40000)


def eng(action: SpdAction = SpdAction.PROTECT) -> IPsecEngine:
    e = IPsecEngine(ex.nfs_spd(action), ex.btns_pad(), approach=Approach.ULP)
    e.latches.narrow_conflicting_sas = False
    return e


def test_engine_in_ulp_mode_holds_no_latch_and_tags() -> None:
    e = eng()
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    d = e.inbound(SRV, sa, 0.0, initiating=True)
    assert d.accepted and d.latch is None and d.tag is not None and d.tag.sa_id == sa.sa_id if sa else False
    assert len(e.latches) == 0


def test_records_first_packet_and_drops_other_peer() -> None:
    e = eng()
    # the rogue's SA is already there when the flow latches (so it is no conflict news later)
    rogue = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(ROGUE), ex.btns_local(SERVER)), 0.0)
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    tcb = UlpLatch(e, SRV)
    assert tcb.inbound(e.inbound(SRV, sa, 0.0, initiating=True)).deliver
    assert tcb.state is UlpLatchState.LATCHED and tcb.protected
    v = tcb.inbound(e.inbound(SRV, rogue, 1.0))
    assert not v.deliver and v.reason is DropReason.ULP_TAG_MISMATCH
    assert tcb.state is UlpLatchState.LATCHED  # MismatchPolicy.DROP: imaginary BROKEN
    # the engine would pick either SA; "protect like so" only uses the latched peer's
    out = tcb.outbound(1.0)
    assert out.verdict is OutboundVerdict.PROTECT and out.sa == sa


def test_rekey_with_same_peer_and_qop_is_accepted() -> None:
    e = eng()
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    tcb = UlpLatch(e, SRV)
    tcb.inbound(e.inbound(SRV, sa, 0.0, initiating=True))
    assert sa is not None
    e.delete_sa(sa.sa_id, 1.0)
    sa2 = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 1.0)
    assert tcb.inbound(e.inbound(SRV, sa2, 1.1)).deliver


def test_qop_change_breaks_with_break_policy() -> None:
    e = eng()
    breaks: list[UlpBreak] = []
    weaker = e.install_sa(
        ex.narrow_sa(
            SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER), params=ProtectionParams(suite=AES_GCM_128)
        ),
        0.0,
    )
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    tcb = UlpLatch(e, SRV, on_mismatch=MismatchPolicy.BREAK, on_break=breaks.append)
    tcb.inbound(e.inbound(SRV, sa, 0.0, initiating=True))
    assert not tcb.inbound(e.inbound(SRV, weaker, 1.0)).deliver
    assert tcb.state is UlpLatchState.BROKEN and breaks[0].offending.sa_id == (
        weaker.sa_id if weaker else None
    )
    assert breaks[0].reason is UlpBreakReason.TAG_MISMATCH
    assert tcb.outbound(1.0).reason is DropReason.ULP_LATCH_BROKEN
    # the engine itself now discards the broken flow's packets (exact-5-tuple DISCARD entry)
    assert tcb.inbound(e.inbound(SRV, sa, 1.0)).reason is DropReason.LATCH_BROKEN
    assert e.outbound(SRV, 1.0).reason is DropReason.LATCH_BROKEN
    assert tcb.check_inbound(PacketTag.of_sa(sa)).reason is DropReason.ULP_LATCH_BROKEN


def test_refuses_to_send_when_latched_sa_gone() -> None:
    e = eng()
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(ROGUE), ex.btns_local(SERVER)), 0.0)
    tcb = UlpLatch(e, SRV)
    d = tcb.outbound(0.0, initiating=True)
    assert d.verdict is OutboundVerdict.PROTECT and d.sa is sa
    assert sa is not None
    e.delete_sa(sa.sa_id, 1.0)
    # only the other peer's SA is left: "protect this like so" is impossible, the packet is not sent
    assert tcb.outbound(1.0).reason is DropReason.ULP_CANNOT_PROTECT_AS_LATCHED


def test_conflicting_sa_installed_later_breaks_the_tcb_latch() -> None:
    # RFC 5660 §2: an SA added to the SAD that is not congruent with an established channel is a
    # conflict; the engine tells the TCB latch (approach 1) before the SA is installed
    e = eng()
    breaks: list[UlpBreak] = []
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    tcb = UlpLatch(e, SRV, on_break=breaks.append)  # MismatchPolicy.DROP: packets alone never break it
    assert tcb.inbound(e.inbound(SRV, sa, 0.0, initiating=True)).deliver
    assert e.ulp_latches() == [tcb]
    # a rekey (same peer, same QoP) is congruent: nothing happens
    e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 1.0)
    assert tcb.state is UlpLatchState.LATCHED and breaks == []
    sad_size = len(e.sad)
    rogue = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(ROGUE), ex.btns_local(SERVER)), 2.0)
    assert rogue is not None and len(e.sad) == sad_size + 1
    assert tcb.state is UlpLatchState.BROKEN and e.ulp_latches() == []
    assert [(b.reason, b.offending.sa_id if b.offending else None) for b in breaks] == [
        (UlpBreakReason.CONFLICTING_SA, rogue.sa_id)
    ]
    assert tcb.outbound(2.0).reason is DropReason.ULP_LATCH_BROKEN


def test_wide_conflicting_sa_is_narrowed_around_the_tcb_latch() -> None:
    e = IPsecEngine(ex.nfs_spd(), ex.btns_pad(), approach=Approach.ULP)  # narrowing on (default)
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    tcb = UlpLatch(e, SRV)
    tcb.inbound(e.inbound(SRV, sa, 0.0, initiating=True))
    host_to_host = Selector(ex.AddressRange.single(SRV.local_addr), ex.AddressRange.single(SRV.remote_addr))
    wide = e.install_sa(
        ex.narrow_sa(SRV, ex.btns_peer(ROGUE), ex.btns_local(SERVER), selectors=(host_to_host,)), 1.0
    )
    assert wide is not None and not wide.carries(SRV)  # narrowed around the latched flow
    other = ex.flow("192.0.2.1", 2049, "192.0.2.2", 40001)
    assert wide.carries(other)
    assert tcb.state is UlpLatchState.LATCHED


def test_spd_change_breaks_the_tcb_latch_unless_pinned() -> None:
    for pin in (False, True):
        e = IPsecEngine(ex.nfs_spd(), ex.btns_pad(), config=EngineConfig(Approach.ULP, pin_on_spd_change=pin))
        breaks: list[UlpBreak] = []
        sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
        tcb = UlpLatch(e, SRV, on_break=breaks.append)
        tcb.inbound(e.inbound(SRV, sa, 0.0, initiating=True))
        assert e.update_spd(ex.nfs_spd(SpdAction.PROTECT)) == [] and breaks == []  # same policy: fine
        e.update_spd(ex.nfs_spd(SpdAction.BYPASS))
        if pin:
            pinned = e.spd.overlay_entry(SRV)
            assert pinned is not None and pinned.origin is EntryOrigin.PINNED_LATCH and breaks == []
            assert tcb.outbound(1.0).sa is sa and tcb.inbound(e.inbound(SRV, sa, 1.0)).deliver
            assert e.last_spd_breaks == []
            e.update_spd(ex.nfs_spd(SpdAction.PROTECT))  # back to PROTECT: the pin goes away
            assert e.spd.overlay_entry(SRV) is None
            tcb.close(2.0)
        else:
            assert [b.reason for b in breaks] == [UlpBreakReason.SPD_CHANGE] and e.last_spd_breaks == [SRV]
            assert tcb.state is UlpLatchState.BROKEN
            assert tcb.outbound(1.0).reason is DropReason.ULP_LATCH_BROKEN


def test_cleartext_latch_and_require_protection() -> None:
    e = eng(SpdAction.BYPASS)
    tcb = UlpLatch(e, SRV)
    assert tcb.outbound(0.0, initiating=True).verdict is OutboundVerdict.BYPASS and tcb.tag is CLEARTEXT
    strict = UlpLatch(e, ex.flow("192.0.2.1", 2049, "192.0.2.2", 40001), require_protection=True)
    assert strict.outbound(0.0).reason is DropReason.ULP_PROTECTION_REQUIRED
    assert strict.check_inbound(CLEARTEXT).reason is DropReason.ULP_PROTECTION_REQUIRED
    tcb.close(1.0)
    assert tcb.outbound(1.0).reason is DropReason.ULP_LATCH_CLOSED


def test_connected_udp_latches_like_tcp() -> None:
    e = IPsecEngine(
        [
            ex.SpdEntry(
                "udp", (Selector(proto=IpProto.UDP),), SpdAction.PROTECT, ex.ProtectionPolicy(), btns_ok=True
            )
        ],
        ex.btns_pad(),
        approach=Approach.ULP,
    )
    e.latches.narrow_conflicting_sas = False
    f = ex.flow("192.0.2.1", 5353, "192.0.2.2", 5353, IpProto.UDP)
    sa = e.install_sa(ex.narrow_sa(f, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    sock = UlpLatch(e, f)
    assert sock.inbound(e.inbound(f, sa, 0.0)).deliver
    rogue = e.install_sa(ex.narrow_sa(f, ex.btns_peer(ROGUE), ex.btns_local(SERVER)), 0.0)
    assert not sock.inbound(e.inbound(f, rogue, 0.1)).deliver


def test_ptokens_on_recvmsg_sendmsg() -> None:
    e = eng()
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    sock = DatagramLatching(e)
    got = sock.recvmsg(e.inbound(SRV, sa, 0.0))
    assert got.deliver and got.ptoken is not None
    tok = got.ptoken
    assert tok.privacy_protected and tok.integrity_protected and not tok.tunnel_mode
    assert tok.peer == ex.btns_peer(CLIENT)
    assert sock.sendmsg(SRV, tok, 0.1).sa == sa
    other = ex.flow("192.0.2.1", 2049, "192.0.2.9", 40000)
    e.install_sa(ex.narrow_sa(other, ex.btns_peer(ROGUE), ex.btns_local(SERVER)), 0.0)
    assert sock.sendmsg(other, tok, 0.1).reason is DropReason.ULP_CANNOT_PROTECT_AS_LATCHED
    assert not sock.recvmsg(e.inbound(SRV, None, 0.2)).deliver


def test_break_latch_from_outside_event() -> None:
    e = eng()
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    breaks: list[UlpBreak] = []
    tcb = UlpLatch(e, SRV, on_break=breaks.append)
    assert not tcb.break_latch()  # not latched yet: nothing happens
    assert tcb.state is UlpLatchState.UNLATCHED and breaks == []
    tcb.inbound(e.inbound(SRV, sa, 0.0, initiating=True))
    # the default MismatchPolicy.DROP does not matter: outside events break the latch
    assert tcb.break_latch(UlpBreakReason.PEER_DEAD, detail="3 DPD probes unanswered")
    assert tcb.state is UlpLatchState.BROKEN and breaks[0].offending is None
    assert breaks[0].reason is UlpBreakReason.PEER_DEAD and breaks[0].detail == "3 DPD probes unanswered"
    assert not tcb.break_latch()
    assert len(breaks) == 1


def test_protect_like_prefers_the_tags_own_sa_over_an_older_equivalent() -> None:
    # an older child SA with the same peer and QoP is still in the SAD (rekey overlap); the latch
    # was made on the newer one, which the peer certainly holds keys for: output uses that one
    e = eng()
    old = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    new = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 1.0)
    assert old is not None and new is not None and e.sad.carrying(SRV)[0] is old
    tcb = UlpLatch(e, SRV)
    assert tcb.inbound(e.inbound(SRV, new, 1.0, initiating=True)).deliver
    out = tcb.outbound(1.0)
    assert out.verdict is OutboundVerdict.PROTECT and out.sa is new
    # once the tag's SA is gone, an equivalent SA still serves the latch
    e.delete_sa(new.sa_id, 2.0)
    out = tcb.outbound(2.0)
    assert out.verdict is OutboundVerdict.PROTECT and out.sa is old


def test_engine_peer_dead_breaks_the_tcb_latches_of_that_peer_only() -> None:
    e = eng()
    breaks: list[UlpBreak] = []
    other = ex.flow("192.0.2.1", 2049, "192.0.2.3", 40000)
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    sa_other = e.install_sa(ex.narrow_sa(other, ex.btns_peer(ROGUE), ex.btns_local(SERVER)), 0.0)
    dead_peer = UlpLatch(e, SRV, on_break=breaks.append)
    alive_peer = UlpLatch(e, other, on_break=breaks.append)
    dead_peer.inbound(e.inbound(SRV, sa, 0.0, initiating=True))
    alive_peer.inbound(e.inbound(other, sa_other, 0.0, initiating=True))
    e.peer_dead(ex.btns_peer(CLIENT), 1.0)
    assert [(b.flow, b.reason) for b in breaks] == [(SRV, UlpBreakReason.PEER_DEAD)]
    assert dead_peer.state is UlpLatchState.BROKEN and alive_peer.state is UlpLatchState.LATCHED


def test_optionally_protected_tcb_latch_survives_a_bypass_policy_but_not_losing_protection() -> None:
    # the peer protected a flow the local SPD bypasses (optional protection, RFC 5660 §3.1): an SPD
    # update that still bypasses it changes nothing for the channel; once the policy protected
    # the flow, going back to BYPASS is a conflict (§2.3 "would now be bypassed")
    e = eng(SpdAction.BYPASS)
    breaks: list[UlpBreak] = []
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    tcb = UlpLatch(e, SRV, require_protection=True, on_break=breaks.append)
    assert tcb.inbound(e.inbound(SRV, sa, 0.0, initiating=True)).deliver and tcb.protected
    e.update_spd(ex.nfs_spd(SpdAction.BYPASS))
    assert breaks == [] and tcb.latched
    e.update_spd(ex.nfs_spd(SpdAction.PROTECT))
    assert breaks == [] and tcb.latched
    e.update_spd(ex.nfs_spd(SpdAction.BYPASS))
    assert [b.reason for b in breaks] == [UlpBreakReason.SPD_CHANGE]


def test_steady_state_check_reuses_one_verdict_and_still_checks_every_tag() -> None:
    e = eng()
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    tcb = UlpLatch(e, SRV)
    assert tcb.inbound(e.inbound(SRV, sa, 0.0, initiating=True)).deliver
    a, b = tcb.inbound(e.inbound(SRV, sa, 0.1)), tcb.inbound(e.inbound(SRV, sa, 0.2))
    assert a.deliver and a is b and a.tag is tcb.tag  # no allocation per packet on the hot path
    assert not tcb.inbound(e.inbound(SRV, None, 0.3)).deliver  # cleartext still refused
    assert not tcb.check_inbound(CLEARTEXT).deliver


# -- RFC 5660 §2: the local identity is latched too (issue #10 item 15) -----------------------------

OTHER_LOCAL = 9


def test_tag_with_other_local_id_is_not_the_same_protection() -> None:
    a = PacketTag.of_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)))
    rekey = PacketTag.of_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)))
    other = PacketTag.of_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(OTHER_LOCAL)))
    assert a.local == ex.btns_local(SERVER)
    assert a.same_protection(rekey) and not a.same_protection(other)


def test_sa_with_other_local_id_breaks_the_tcb_latch_and_its_packets_are_dropped() -> None:
    e = eng()
    breaks: list[UlpBreak] = []
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    tcb = UlpLatch(e, SRV, on_break=breaks.append)
    assert tcb.inbound(e.inbound(SRV, sa, 0.0, initiating=True)).deliver
    other = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(OTHER_LOCAL)), 1.0)
    assert other is not None
    assert tcb.state is UlpLatchState.BROKEN
    assert [(b.reason, b.offending.local if b.offending else None) for b in breaks] == [
        (UlpBreakReason.CONFLICTING_SA, ex.btns_local(OTHER_LOCAL))
    ]
    # a TCB latched while both SAs exist (so no conflict news) still refuses the other local ID
    flow2 = ex.flow("192.0.2.1", 2049, "192.0.2.2", 40001)
    e2 = eng()
    first = e2.install_sa(ex.narrow_sa(flow2, ex.btns_peer(CLIENT), ex.btns_local(SERVER)), 0.0)
    second = e2.install_sa(ex.narrow_sa(flow2, ex.btns_peer(CLIENT), ex.btns_local(OTHER_LOCAL)), 0.0)
    tcb2 = UlpLatch(e2, flow2)
    assert tcb2.inbound(e2.inbound(flow2, first, 0.0, initiating=True)).deliver
    v = tcb2.inbound(e2.inbound(flow2, second, 1.0))
    assert not v.deliver and v.reason is DropReason.ULP_TAG_MISMATCH
    out = tcb2.outbound(1.0)  # "protect like so": only the SA with the latched local ID
    assert out.verdict is OutboundVerdict.PROTECT and out.sa == first


def _latched_on_template_clone_then_policy_bypasses() -> tuple[IPsecEngine, UlpLatch, list[UlpBreak]]:
    """A TCB latch made on a BYPASS-OR-PROTECT template's PROTECT clone (the flow's first packet
    came protected), then the configured SPD changes to BYPASS: the clone still governs the flow,
    so the latch stays intact -- until the clone goes away."""
    e = eng(SpdAction.BYPASS_OR_PROTECT)
    breaks: list[UlpBreak] = []
    wide = Selector(local=ex.NET, remote=ex.NET, proto=6)
    sa = e.install_sa(ex.narrow_sa(SRV, ex.btns_peer(CLIENT), ex.btns_local(SERVER), selectors=(wide,)), 0.0)
    tcb = UlpLatch(e, SRV, require_protection=True, on_break=breaks.append)
    assert tcb.inbound(e.inbound(SRV, sa, 0.0, initiating=True)).deliver and tcb.protected
    clone = e.spd.overlay_entry(SRV)
    assert clone is not None and clone.origin is EntryOrigin.TEMPLATE_CLONE
    e.update_spd(ex.nfs_spd(SpdAction.BYPASS))
    assert tcb.latched and breaks == [] and e.ulp_latches() == [tcb]
    return e, tcb, breaks


def _assert_broken_and_discarded(e: IPsecEngine, tcb: UlpLatch, breaks: list[UlpBreak], now: float) -> None:
    # RFC 5660 §2.3: the SPD would now bypass a flow latched to an SA -> the latch breaks, and
    # nothing of the flow goes out (or comes in) in the clear
    assert tcb.state is UlpLatchState.BROKEN and e.ulp_latches() == []
    assert [b.reason for b in breaks] == [UlpBreakReason.SPD_CHANGE]
    discard = e.spd.overlay_entry(SRV)
    assert discard is not None and discard.origin is EntryOrigin.BROKEN_LATCH
    assert e.backend_flow_policies()[SRV].entry.action is SpdAction.DISCARD
    assert e.outbound(SRV, now).verdict is OutboundVerdict.DISCARD
    assert not e.inbound(SRV, None, now).accepted
    assert not e.inbound(SRV, None, now, initiating=True).accepted


def test_key_manager_restart_drops_the_clone_under_a_tcb_latch_and_breaks_it() -> None:
    e, tcb, breaks = _latched_on_template_clone_then_policy_bypasses()
    e.restart_key_manager(1.0, restore_latches=False)  # the overlay (and so the clone) is volatile
    _assert_broken_and_discarded(e, tcb, breaks, 1.0)


def test_new_flow_on_a_closed_5_tuple_drops_the_clone_under_a_tcb_latch_and_breaks_it() -> None:
    e, tcb, breaks = _latched_on_template_clone_then_policy_bypasses()
    e.close_flow(SRV, 1.0)  # the engine's flow ended (its clone is held), the TCB latch is still live
    # a new initiating packet on the 5-tuple supersedes the held flow: its clone goes, and the
    # cleartext packet must not be accepted on a 5-tuple whose TCB is latched to an SA
    assert not e.inbound(SRV, None, 2.0, initiating=True).accepted
    _assert_broken_and_discarded(e, tcb, breaks, 2.0)


def test_end_of_hold_drops_the_clone_under_a_tcb_latch_and_breaks_it() -> None:
    e, tcb, breaks = _latched_on_template_clone_then_policy_bypasses()
    e.close_flow(SRV, 1.0)
    deadline = e.next_deadline()
    assert deadline is not None
    e.poll(deadline + 1.0)  # the hold ends: the clone goes
    _assert_broken_and_discarded(e, tcb, breaks, deadline + 1.0)


def test_tcb_latch_closed_normally_leaves_nothing_behind() -> None:
    e, tcb, breaks = _latched_on_template_clone_then_policy_bypasses()
    tcb.close(1.0)
    deadline = e.next_deadline()
    assert deadline is not None
    e.poll(deadline + 1.0)
    assert breaks == [] and e.spd.overlay_entry(SRV) is None and SRV not in e.backend_flow_policies()
    assert e.inbound(SRV, None, deadline + 1.0, initiating=True).accepted  # a new cleartext flow: BYPASS
