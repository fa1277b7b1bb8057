"""SPD (RFC 4301 §4.4.1): ordering, overlay, cache invalidation, entry validation."""

from __future__ import annotations

import pytest

from rpclatch.ipsec import examples as ex
from rpclatch.ipsec.model import IpProto, PortRange, ProtectionPolicy, Selector
from rpclatch.ipsec.spd import EntryOrigin, SecurityPolicyDatabase, SpdAction, SpdEntry

F = ex.flow("192.0.2.1", 2049, "192.0.2.2", 40000)


def test_first_match_wins_and_no_match_is_none() -> None:
    deny = SpdEntry(
        "deny-2049", (Selector(proto=IpProto.TCP, local_ports=PortRange.single(2049)),), SpdAction.DISCARD
    )
    spd = SecurityPolicyDatabase([deny, *ex.nfs_spd()])
    assert spd.lookup(F) is deny
    only_nfs = SecurityPolicyDatabase(ex.nfs_spd()[:1])
    assert only_nfs.lookup(ex.flow("192.0.2.1", 22, "192.0.2.2", 5000)) is None


def test_replace_entries_invalidates_cache() -> None:
    spd = SecurityPolicyDatabase(ex.nfs_spd())
    first = spd.lookup(F)
    assert first is not None and first.action is SpdAction.PROTECT
    spd.replace_entries(ex.nfs_spd(SpdAction.BYPASS))
    second = spd.lookup(F)
    assert second is not None and second.action is SpdAction.BYPASS and spd.generation == 1


def test_overlay_sits_above_configured_and_is_volatile() -> None:
    spd = SecurityPolicyDatabase(ex.nfs_spd(SpdAction.BYPASS))
    pin = SpdEntry.flow_entry(F, SpdAction.PROTECT, ProtectionPolicy(), EntryOrigin.APPLICATION_REQUEST)
    spd.install_overlay(F, pin)
    assert spd.lookup(F) is pin
    lc = spd.lookup_configured(F)
    assert lc is not None and lc.action is SpdAction.BYPASS
    spd.clear_volatile()
    assert spd.lookup(F) is not pin


def test_overlay_validation() -> None:
    spd = SecurityPolicyDatabase()
    other = ex.flow("192.0.2.1", 2049, "192.0.2.3", 1)
    with pytest.raises(ValueError):
        spd.install_overlay(other, SpdEntry.flow_entry(F, SpdAction.BYPASS, None, EntryOrigin.TEMPLATE_CLONE))
    with pytest.raises(ValueError):
        spd.install_overlay(F, SpdEntry("x", (Selector(),), SpdAction.BYPASS))


def test_entry_validation() -> None:
    with pytest.raises(ValueError):
        SpdEntry("p", (Selector(),), SpdAction.PROTECT)  # PROTECT needs a policy
    with pytest.raises(ValueError):
        SpdEntry("b", (Selector(),), SpdAction.BYPASS, ProtectionPolicy())
    with pytest.raises(ValueError):
        SpdEntry("e", (), SpdAction.BYPASS)
    with pytest.raises(ValueError):
        SecurityPolicyDatabase([SpdEntry("a", (Selector(),), SpdAction.BYPASS)] * 2)  # duplicate names
    with pytest.raises(ValueError):
        SecurityPolicyDatabase([SpdEntry.flow_entry(F, SpdAction.BYPASS, None, EntryOrigin.PINNED_LATCH)])


def test_policy_admits() -> None:
    from rpclatch.ipsec.model import AES_CBC_SHA256, Mode, ProtectionParams

    pol = ProtectionPolicy()
    assert pol.admits(ProtectionParams())
    assert not pol.admits(ProtectionParams(suite=AES_CBC_SHA256))
    assert not pol.admits(ProtectionParams(mode=Mode.TUNNEL))
    assert not pol.admits(ProtectionParams(replay_window=0))
    assert pol.admits(pol.preferred)
