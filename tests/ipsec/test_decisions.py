"""Packet tags and decisions (RFC 5660 §2.4 tags)."""

from __future__ import annotations

from dataclasses import replace

from rpclatch.channel import Protection
from rpclatch.ipsec import examples as ex
from rpclatch.ipsec.decisions import (
    BYPASS_DECISION,
    CLEARTEXT,
    DropReason,
    InboundVerdict,
    OutboundVerdict,
    PacketTag,
    discard,
    drop,
)
from rpclatch.ipsec.model import AES_GCM_128, Mode, ProtectionParams

F = ex.flow("192.0.2.1", 2049, "192.0.2.2", 40000)


def test_same_protection_ignores_sa_id_only() -> None:
    sa = replace(ex.narrow_sa(F, ex.btns_peer(2), ex.btns_local(1)), sa_id=5)
    tag = PacketTag.of_sa(sa)
    rekeyed = PacketTag.of_sa(replace(sa, sa_id=6, spi_in=0x9999))
    assert tag.protected and tag.narrow and tag.btns is False and tag.same_protection(rekeyed)
    assert tag.protection == Protection.INTEGRITY | Protection.CONFIDENTIALITY
    assert not tag.same_protection(PacketTag.of_sa(replace(sa, peer=ex.btns_peer(3))))
    assert not tag.same_protection(PacketTag.of_sa(replace(sa, params=ProtectionParams(suite=AES_GCM_128))))
    assert not tag.same_protection(PacketTag.of_sa(replace(sa, params=ProtectionParams(mode=Mode.TUNNEL))))
    assert not tag.same_protection(PacketTag.of_sa(replace(sa, params=ProtectionParams(replay_window=0))))
    assert not tag.same_protection(CLEARTEXT) and CLEARTEXT.same_protection(CLEARTEXT)
    assert CLEARTEXT.protection == Protection.NONE and str(CLEARTEXT) == "cleartext"


def test_decision_helpers() -> None:
    assert BYPASS_DECISION.sendable and BYPASS_DECISION.tag is CLEARTEXT
    d = discard(DropReason.SPD_DISCARD, 3)
    assert d.verdict is OutboundVerdict.DISCARD and not d.sendable and d.latch == 3
    i = drop(DropReason.LATCH_BROKEN)
    assert i.verdict is InboundVerdict.DROP and not i.accepted


def test_drop_reason_values_are_unique() -> None:
    values = [r.value for r in DropReason]
    assert len(values) == len(set(values))
