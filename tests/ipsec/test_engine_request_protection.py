"""IPsecEngine.request_protection: what a refused or failed decision leaves behind.

A decision that did not happen leaves no trace (RFC 5660 §3.1 optional protection, docs/design.md
BYPASS-OR-PROTECT): for every way the call can refuse or fail, the SPD (configured and overlay),
the PAD and its latching templates and clones, the latch database, the SAD, the key manager's
pending negotiations and the backend's flow policies are exactly what they were before the call.
"""

from __future__ import annotations

from typing import Any

import pytest

from rpclatch.ipsec import examples as ex
from rpclatch.ipsec.backend import FlowPolicy, InProcessBackend, SocketPolicy
from rpclatch.ipsec.decisions import DropReason, OutboundVerdict
from rpclatch.ipsec.engine import Approach, EngineConfig, FlowChoice, IPsecEngine
from rpclatch.ipsec.errors import LatchConflict, PolicyRefused
from rpclatch.ipsec.keymgr import AcquireOutcome, SaProvision
from rpclatch.ipsec.latch import LatchRequest, LatchState
from rpclatch.ipsec.model import AddressRange, IkeSaRef, ProtectionParams, ProtectionPolicy
from rpclatch.ipsec.spd import EntryOrigin, SpdAction

SERVER, CLIENT, ROGUE = 1, 2, 3
CLI = ex.flow("192.0.2.2", 40000, "192.0.2.1", 2049)  # the client's view of an NFS connection


def provision(peer_seed: int = SERVER, **kw: Any) -> SaProvision:
    return SaProvision(
        remote=AddressRange.single("192.0.2.1"),
        peer=ex.btns_peer(peer_seed),
        peer_addr=AddressRange.single("192.0.2.1").first,
        local=ex.btns_local(CLIENT),
        params=ProtectionParams(),
        ike_sa=IkeSaRef(7, 8),
        **kw,
    )


def engine(
    action: SpdAction = SpdAction.BYPASS_OR_PROTECT,
    *,
    approach: Approach = Approach.POLICY,
    provisions: tuple[SaProvision, ...] = (provision(),),
    narrow_conflicting_sas: bool = True,
    backend: InProcessBackend | None = None,
) -> IPsecEngine:
    return IPsecEngine(
        ex.nfs_spd(action),
        ex.btns_pad(),
        config=EngineConfig(approach=approach, narrow_conflicting_sas=narrow_conflicting_sas),
        provisions=provisions,
        backend=backend,
    )


class BackendDown(Exception):
    """What :class:`FailingBackend` raises (a kernel refusing a policy, a dead netlink socket)."""


class FailingBackend(InProcessBackend):
    """The in-process datapath, refusing the next flow or socket policy when told to."""

    fail_flow = False
    fail_socket = False

    def install_flow_policy(self, policy: FlowPolicy) -> None:
        if self.fail_flow:
            raise BackendDown(f"flow policy {policy.flow}")
        super().install_flow_policy(policy)

    def install_socket_policy(self, policy: SocketPolicy) -> None:
        if self.fail_socket:
            raise BackendDown(f"socket policy {policy.socket_id}")
        super().install_socket_policy(policy)


def conflicting_sas(e: IPsecEngine) -> None:
    """Two peers' SAs both carry CLI: any latch on it is a conflict (RFC 5660 §2.3)."""
    e.install_sa(ex.narrow_sa(CLI, ex.btns_peer(SERVER), ex.btns_local(CLIENT)), 0.0)
    e.install_sa(ex.narrow_sa(CLI, ex.btns_peer(ROGUE), ex.btns_local(CLIENT)), 0.0)


def state(e: IPsecEngine) -> dict[str, object]:
    """Everything a request_protection call may touch, as plain values."""
    return {
        "spd": e.spd.entries,
        "spd overlay": e.spd.overlay_entries(),
        "pad": e.pad.entries,
        "pad listener templates": dict(e.pad_layer.listener_templates),
        "pad flow templates": dict(e.pad_layer.flow_templates),
        "pad clones": dict(e.pad_layer.clones),
        "pad holds": dict(e.pad_layer.holds),
        "latches": {
            latch.handle: (latch.key, latch.state, latch.params, latch.request) for latch in e.latches
        },
        "sad": sorted(sa.sa_id for sa in e.sad),
        "acquires": {flow: (p.policy, p.deadline) for flow, p in e.key_manager.pending.items()},
        "backend flow policies": dict(e.backend_flow_policies()),
        "backend socket policies": dict(e.backend.socket_policies),  # type: ignore[attr-defined]
        "pending outcomes": dict(e._outcome_cbs),
    }


# -- refusals before anything changes ------------------------------------------------------------


@pytest.mark.parametrize("broken", [False, True])
def test_bypass_refused_on_a_latched_flow(broken: bool) -> None:
    e = engine()
    assert e.request_protection(CLI, FlowChoice.PROTECT, 0.0).ok
    if broken:
        e.peer_dead(ex.btns_peer(SERVER), 0.5)  # RFC 5660 §2: DPD breaks the latch for good
        latch = e.latches.latch_for(CLI)
        assert latch is not None and latch.state is LatchState.BROKEN
    before = state(e)
    with pytest.raises(PolicyRefused):
        e.request_protection(CLI, FlowChoice.BYPASS, 1.0, privileged=True)
    assert state(e) == before


@pytest.mark.parametrize("approach", list(Approach))
def test_bypass_refused_on_a_flow_decided_protect(approach: Approach) -> None:
    e = engine(approach=approach)
    out = e.request_protection(CLI, FlowChoice.PROTECT, 0.0)
    assert out.ok
    if out.latch is not None:
        e.latches.release_latch(out.latch)  # the decision outlives the latch
    before = state(e)
    assert before["spd overlay"] != {}
    with pytest.raises(PolicyRefused):
        e.request_protection(CLI, FlowChoice.BYPASS, 1.0)
    assert state(e) == before


@pytest.mark.parametrize("choice", list(FlowChoice))
@pytest.mark.parametrize("action", [SpdAction.DISCARD, None])
def test_refused_where_the_spd_discards(choice: FlowChoice, action: SpdAction | None) -> None:
    if action is None:  # no entry at all: RFC 4301 §4.4.1 default DISCARD
        e = IPsecEngine(ex.nfs_spd()[:1], ex.btns_pad(), provisions=[provision()])
        flow = ex.flow("192.0.2.2", 40000, "192.0.2.1", 22)
    else:
        e = engine(action)
        flow = CLI
    before = state(e)
    with pytest.raises(PolicyRefused):
        e.request_protection(flow, choice, 0.0, privileged=True)
    assert state(e) == before


@pytest.mark.parametrize("approach", list(Approach))
def test_unprivileged_bypass_of_a_protect_entry_refused(approach: Approach) -> None:
    e = engine(SpdAction.PROTECT, approach=approach)
    before = state(e)
    with pytest.raises(PolicyRefused):
        e.request_protection(CLI, FlowChoice.BYPASS, 0.0)
    assert state(e) == before


# -- latch creation fails after the flow's own entry was changed (approach 2) ---------------------


def test_conflicting_sas_undo_the_protect_clone() -> None:
    e = engine(narrow_conflicting_sas=False)
    conflicting_sas(e)
    before = state(e)
    with pytest.raises(LatchConflict):
        e.request_protection(CLI, FlowChoice.PROTECT, 0.0, on_outcome=lambda _: None)
    assert state(e) == before
    assert e.outbound(CLI, 0.0).reason is DropReason.BOP_UNDECIDED  # still undecided


def test_conflicting_sas_restore_an_earlier_bypass_decision() -> None:
    e = engine(narrow_conflicting_sas=False)
    assert e.request_protection(CLI, FlowChoice.BYPASS, 0.0).ok
    conflicting_sas(e)
    before = state(e)
    bypass = e.spd.overlay_entry(CLI)
    assert bypass is not None and bypass.action is SpdAction.BYPASS
    with pytest.raises(LatchConflict):
        e.request_protection(CLI, FlowChoice.PROTECT, 1.0)
    assert state(e) == before
    assert e.backend_flow_policies()[CLI] == FlowPolicy(CLI, bypass, None)
    assert e.outbound(CLI, 1.0).verdict is OutboundVerdict.BYPASS


def test_unsuitable_sas_undo_optional_protection() -> None:
    e = engine(SpdAction.BYPASS)
    e.install_sa(ex.narrow_sa(CLI, ex.btns_peer(SERVER), ex.btns_local(CLIENT)), 0.0)
    before = state(e)
    with pytest.raises(LatchConflict):  # the SA in place is SERVER's, not the one asked for
        e.request_protection(CLI, FlowChoice.PROTECT, 0.0, request=LatchRequest(peer=ex.btns_peer(ROGUE)))
    assert state(e) == before
    assert e.outbound(CLI, 0.0).verdict is OutboundVerdict.BYPASS


def test_conflict_restores_a_privileged_bypass_of_a_protect_entry() -> None:
    e = engine(SpdAction.PROTECT, narrow_conflicting_sas=False)
    assert e.request_protection(CLI, FlowChoice.BYPASS, 0.0, privileged=True).ok
    conflicting_sas(e)
    before = state(e)
    with pytest.raises(LatchConflict):
        e.request_protection(CLI, FlowChoice.PROTECT, 1.0)
    assert state(e) == before
    assert e.outbound(CLI, 1.0).verdict is OutboundVerdict.BYPASS


def test_conflict_undoes_a_policy_clone_on_a_protect_entry() -> None:
    e = engine(SpdAction.PROTECT, narrow_conflicting_sas=False)
    conflicting_sas(e)
    before = state(e)
    with pytest.raises(LatchConflict):
        e.request_protection(CLI, FlowChoice.PROTECT, 0.0, policy=ProtectionPolicy())
    assert state(e) == before
    assert e.spd.overlay_entry(CLI) is None


# -- IKE fails before the call returns ------------------------------------------------------------


@pytest.mark.parametrize("approach", list(Approach))
def test_ike_refused_at_once_withdraws_the_clone(approach: Approach) -> None:
    e = engine(approach=approach, provisions=(provision(refuse=True),))
    before = state(e)
    out = e.request_protection(CLI, FlowChoice.PROTECT, 0.0)
    assert not out.ok and not out.pending and out.acquire is AcquireOutcome.NO_PEER
    assert state(e) == before  # the PROTECT clone went with the failed negotiation
    assert e.outbound(CLI, 0.0).reason is DropReason.BOP_IKE_FAILED
    assert e.request_protection(CLI, FlowChoice.BYPASS, 0.0).ok  # the application decides again


# -- successes, for the record of what they change ------------------------------------------------


@pytest.mark.parametrize("approach", list(Approach))
def test_protect_on_a_template_installs_one_clone(approach: Approach) -> None:
    e = engine(approach=approach)
    out = e.request_protection(CLI, FlowChoice.PROTECT, 0.0)
    clone = e.spd.overlay_entry(CLI)
    assert out.ok and clone is not None
    assert clone.action is SpdAction.PROTECT and clone.origin is EntryOrigin.TEMPLATE_CLONE
    assert clone.template == "nfs"
    assert (out.latch is not None) is (approach is Approach.POLICY)
    assert state(e)["pending outcomes"] == {}


def test_bypass_of_a_larval_latch_releases_it_and_the_negotiation() -> None:
    e = engine(provisions=(provision(setup_delay=1.0),))
    first = e.request_protection(CLI, FlowChoice.PROTECT, 0.0)
    assert first.pending and CLI in e.key_manager.pending
    assert e.request_protection(CLI, FlowChoice.BYPASS, 0.5).ok
    assert len(e.latches) == 0 and CLI not in e.key_manager.pending
    entry = e.spd.overlay_entry(CLI)
    assert entry is not None and entry.action is SpdAction.BYPASS
    assert e.backend_flow_policies()[CLI] == FlowPolicy(CLI, entry, None)


def test_socket_policy_follows_the_decision() -> None:
    e = engine()
    assert e.request_protection(CLI, FlowChoice.BYPASS, 0.0, socket_id=5).ok
    sockets = e.backend.socket_policies  # type: ignore[attr-defined]
    assert sockets[5].entry.action is SpdAction.BYPASS
    e2 = engine()
    assert e2.request_protection(CLI, FlowChoice.PROTECT, 0.0, socket_id=5).ok
    assert e2.backend.socket_policies[5].entry == e2.spd.overlay_entry(CLI)  # type: ignore[attr-defined]


def test_refused_request_on_a_held_flow_still_ends_the_hold() -> None:
    """The request is a new-flow trigger on the 5-tuple: the held flow ends first (docs/design.md,
    TIME_WAIT hold), whether or not the new decision is then refused."""
    e = engine(SpdAction.PROTECT)
    h = e.connect(CLI, now=0.0)
    assert e.latches.get(h) is not None
    e.close_flow(CLI, 1.0)
    assert CLI in e.pad_layer.holds
    with pytest.raises(PolicyRefused):
        e.request_protection(CLI, FlowChoice.BYPASS, 1.5)
    assert CLI not in e.pad_layer.holds and len(e.latches) == 0


# -- the backend fails while the decision is pushed to it -------------------------------------------


@pytest.mark.parametrize("choice", list(FlowChoice))
@pytest.mark.parametrize("step", ["flow", "socket"])
def test_a_backend_failure_midway_is_undone(choice: FlowChoice, step: str) -> None:
    backend = FailingBackend()
    e = engine(backend=backend)
    before = state(e)
    backend.fail_flow, backend.fail_socket = step == "flow", step == "socket"
    with pytest.raises(BackendDown):
        e.request_protection(CLI, choice, 0.0, socket_id=5, on_outcome=lambda _: None)
    assert state(e) == before
    assert e.outbound(CLI, 0.0).reason is DropReason.BOP_UNDECIDED  # still undecided
    backend.fail_flow = backend.fail_socket = False
    assert e.request_protection(CLI, choice, 0.0, socket_id=5).ok  # and decidable again


def test_a_backend_failure_restores_an_earlier_bypass_decision() -> None:
    backend = FailingBackend()
    e = engine(backend=backend)
    assert e.request_protection(CLI, FlowChoice.BYPASS, 0.0).ok
    before = state(e)
    backend.fail_socket = True
    with pytest.raises(BackendDown):
        e.request_protection(CLI, FlowChoice.PROTECT, 1.0, socket_id=5)
    assert state(e) == before
    assert e.outbound(CLI, 1.0).verdict is OutboundVerdict.BYPASS


def test_a_refused_latch_leaves_no_socket_policy() -> None:
    e = engine(narrow_conflicting_sas=False)
    conflicting_sas(e)
    before = state(e)
    with pytest.raises(LatchConflict):
        e.request_protection(CLI, FlowChoice.PROTECT, 0.0, socket_id=5)
    assert state(e) == before
    assert e.backend.socket_policies == {}  # type: ignore[attr-defined]


def test_bypass_over_a_pending_protect_forgets_its_outcome_callback() -> None:
    """The application gave up on the PROTECT: its callback is not kept, and not called when the
    time the negotiation would have taken has passed."""
    e = engine(provisions=(provision(setup_delay=1.0),))
    outcomes: list[object] = []
    assert e.request_protection(CLI, FlowChoice.PROTECT, 0.0, on_outcome=outcomes.append).pending
    assert e.request_protection(CLI, FlowChoice.BYPASS, 0.5).ok
    assert state(e)["pending outcomes"] == {}
    e.poll(2.0)
    assert outcomes == []
