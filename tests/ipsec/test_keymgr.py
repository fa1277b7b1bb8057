"""StaticKeyManager: install path (PAD, latch vetting, SAD, backend), ACQUIRE, expiry, restart."""

from __future__ import annotations

import pytest

from rpclatch.ipsec import examples as ex
from rpclatch.ipsec.backend import InProcessBackend
from rpclatch.ipsec.errors import ChildSaRefused
from rpclatch.ipsec.keymgr import AcquireOutcome, SaProvision, StaticKeyManager
from rpclatch.ipsec.latch import LatchDatabase
from rpclatch.ipsec.model import (
    AddressRange,
    FiveTuple,
    IkeSaRef,
    ProtectionParams,
    ProtectionPolicy,
    Selector,
)
from rpclatch.ipsec.pad import PeerAuthorizationDatabase
from rpclatch.ipsec.sad import Lifetime, SecurityAssociation, SecurityAssociationDatabase
from rpclatch.ipsec.spd import SecurityPolicyDatabase

CLI = ex.flow("192.0.2.2", 40000, "192.0.2.1", 2049)


class Results:
    def __init__(self) -> None:
        self.got: list[tuple[FiveTuple, AcquireOutcome, SecurityAssociation | None]] = []

    def acquire_finished(
        self, flow: FiveTuple, outcome: AcquireOutcome, sa: SecurityAssociation | None, now: float
    ) -> None:
        self.got.append((flow, outcome, sa))

    def vet_child_sa(self, sa: SecurityAssociation, now: float) -> SecurityAssociation | None:
        return sa


def km(*provisions: SaProvision, timeout: float = 5.0) -> tuple[StaticKeyManager, Results, InProcessBackend]:
    sad = SecurityAssociationDatabase()
    ld = LatchDatabase(sad, SecurityPolicyDatabase(ex.nfs_spd()))
    be = InProcessBackend()
    res = Results()
    k = StaticKeyManager(
        sad,
        PeerAuthorizationDatabase(ex.btns_pad()),
        ld,
        be,
        provisions=provisions,
        acquire_timeout=timeout,
        listener=res,
    )
    return k, res, be


def prov(**kw: object) -> SaProvision:
    return SaProvision(
        AddressRange.single("192.0.2.1"),
        ex.btns_peer(1),
        AddressRange.single("192.0.2.1").first,
        ex.btns_local(2),
        ProtectionParams(),
        IkeSaRef(1, 2),
        **kw,  # type: ignore[arg-type]
    )


def test_install_assigns_ids_reqid_btns_and_reaches_backend() -> None:
    k, _, be = km()
    sa = k.install_sa(ex.narrow_sa(CLI, ex.btns_peer(1), ex.btns_local(2)), 0.0)
    assert sa is not None and sa.sa_id > 0 and sa.reqid == k.reqid_for(ex.btns_peer(1)) and sa.btns
    assert be.sas[sa.sa_id] is sa
    k.delete_sa(sa.sa_id, 1.0)
    assert sa.sa_id not in be.sas


def test_install_refused_by_pad() -> None:
    k, _, _ = km()
    bad = ex.narrow_sa(CLI, ex.btns_peer(1), ex.btns_local(2), selectors=(Selector(),))
    with pytest.raises(ChildSaRefused):
        k.install_sa(bad, 0.0)


def test_acquire_installs_narrow_sa_after_delay() -> None:
    k, res, _ = km(prov(setup_delay=1.0))
    k.acquire(CLI, ProtectionPolicy(), 0.0)
    k.acquire(CLI, ProtectionPolicy(), 0.1)  # idempotent
    assert k.next_deadline() == 1.0 and res.got == []
    k.poll(1.0)
    ((flow, outcome, sa),) = res.got
    assert flow == CLI and outcome is AcquireOutcome.INSTALLED and sa is not None and sa.is_narrow


def test_acquire_timeout_and_no_peer() -> None:
    k, res, _ = km(prov(setup_delay=9.0), timeout=2.0)
    k.acquire(CLI, ProtectionPolicy(), 0.0)
    k.poll(2.0)
    assert res.got[-1][1] is AcquireOutcome.TIMEOUT
    k2, res2, _ = km(timeout=2.0)
    k2.acquire(CLI, ProtectionPolicy(), 0.0)
    k2.poll(2.0)
    assert res2.got[-1][1] is AcquireOutcome.NO_PEER
    k3, res3, _ = km(prov(refuse=True), timeout=2.0)
    k3.acquire(CLI, ProtectionPolicy(), 0.0)
    k3.poll(2.0)
    assert res3.got[-1][1] is AcquireOutcome.NO_PEER


def test_sa_hard_expiry_on_poll() -> None:
    k, _, _ = km(prov(lifetime=Lifetime(hard_seconds=30.0)))
    k.acquire(CLI, ProtectionPolicy(), 0.0)
    assert len(k.sad) == 1 and k.next_deadline() == 30.0
    k.poll(30.0)
    assert len(k.sad) == 0


def test_restart_fails_pending_acquires() -> None:
    k, res, _ = km(prov(setup_delay=5.0))
    k.acquire(CLI, ProtectionPolicy(), 0.0)
    k.restart(1.0, restore_latches=False)
    assert res.got[-1][1] is AcquireOutcome.NO_PEER and not k.pending


def test_wide_provision_used_only_when_policy_allows() -> None:
    wide = (Selector(local=ex.NET, remote=ex.NET, proto=6),)
    k, res, _ = km(prov(narrow=False, selectors=wide))
    k.acquire(CLI, ProtectionPolicy(narrow=False), 0.0)
    assert res.got[-1][2] is not None and not res.got[-1][2].is_narrow
    k2, res2, _ = km(prov(narrow=False, selectors=wide))
    k2.acquire(CLI, ProtectionPolicy(), 0.0)  # a specific QoP request implies narrow SAs
    assert res2.got[-1][2] is not None and res2.got[-1][2].is_narrow
