"""CREATE_CHILD_SA (RFC 7296 §1.3): more CHILD_SAs, CHILD_SA rekeying, IKE SA rekeying, both ways."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from ike_harness import A_ADDR, A_POLICY, B_ADDR, NFS_POLICY, Keys, Pair, btns_pad, key_pad, make_config

from rpclatch.ipsec.ike import wire as w
from rpclatch.ipsec.ike.config import ChildRequest
from rpclatch.ipsec.ike.crypto import SkCipher, derive_child_keys
from rpclatch.ipsec.ike.errors import NotifyType
from rpclatch.ipsec.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    IkeSaDeleted,
    IkeSaRekeyed,
)
from rpclatch.ipsec.ike.sa import IkeSa, IkeState
from rpclatch.ipsec.model import FiveTuple, IpProto, Selector


def _up(p: Pair) -> tuple[IkeSa, IkeSa]:
    sa = p.initiate()
    p.pump()
    (bsa,) = p.b.sas
    assert sa.state is bsa.state is IkeState.ESTABLISHED
    p.events_a.clear()
    p.events_b.clear()
    p.wire.clear()
    return sa, bsa


def _run(p: Pair, side: str, sa: IkeSa) -> None:
    (p.a if side == "a" else p.b).poll(sa, p.now)
    p.pump()


def _est(p: Pair, side: str) -> ChildSaEstablished:
    (e,) = p.of(ChildSaEstablished, side)
    assert isinstance(e, ChildSaEstablished)
    return e


def test_second_child_from_the_initiator(btns_pair: Pair) -> None:
    sa, bsa = _up(btns_pair)
    (first,) = sa.children.values()
    flow = FiveTuple.of(A_ADDR, 40001, B_ADDR, 2049, IpProto.TCP)
    sa.create_child(ChildRequest(Selector.for_flow(flow)), btns_pair.now)
    _run(btns_pair, "a", sa)
    ea, eb = _est(btns_pair, "a"), _est(btns_pair, "b")
    assert ea.child.selector == Selector.for_flow(flow) and ea.replaces is None
    assert ea.child.spi_in == eb.child.spi_out and ea.child.key_out == eb.child.key_in
    assert ea.child.key_in != first.key_in  # fresh nonces, fresh keys
    assert len(sa.children) == len(bsa.children) == 2
    assert [w.decode_message(d).header.exchange for _, d in btns_pair.wire] == [
        w.ExchangeType.CREATE_CHILD_SA
    ] * 2


def test_child_from_the_responder_side(btns_pair: Pair) -> None:
    _sa, bsa = _up(btns_pair)
    flow = FiveTuple.of(B_ADDR, 2049, A_ADDR, 40002, IpProto.TCP)  # B's view
    bsa.create_child(ChildRequest(Selector.for_flow(flow)), btns_pair.now)
    _run(btns_pair, "b", bsa)
    ea, eb = _est(btns_pair, "a"), _est(btns_pair, "b")
    assert eb.child.selector == Selector.for_flow(flow)
    assert ea.child.selector == Selector.for_flow(flow.reversed())
    assert ea.child.key_in == eb.child.key_out and ea.child.key_out == eb.child.key_in


def test_new_child_outside_policy_is_ts_unacceptable(btns_pair: Pair) -> None:
    sa, _ = _up(btns_pair)
    sa.create_child(ChildRequest(Selector.for_flow(FiveTuple.of(A_ADDR, 1, B_ADDR, 22, 6))), btns_pair.now)
    _run(btns_pair, "a", sa)
    (fa,) = btns_pair.of(ChildSaFailed, "a")
    assert isinstance(fa, ChildSaFailed) and fa.notify == NotifyType.TS_UNACCEPTABLE and fa.by_peer
    assert sa.state is IkeState.ESTABLISHED and len(sa.children) == 1


def _rekey_child(p: Pair, side: str) -> None:
    sa, bsa = _up(p)
    who = sa if side == "a" else bsa
    (old,) = who.children.values()
    who.rekey_child(old.spi_in, p.now)
    _run(p, side, who)
    ea, eb = _est(p, "a"), _est(p, "b")
    mine = ea if side == "a" else eb
    assert mine.replaces == old.spi_in
    assert ea.child.spi_in == eb.child.spi_out and ea.child.key_in == eb.child.key_out
    assert (
        mine.child.selector == old.selector and mine.child.mode is old.mode and mine.child.suite == old.suite
    )
    # the old pair is deleted on both sides, the new one stays
    assert len(p.of(ChildSaDeleted, "a")) == len(p.of(ChildSaDeleted, "b")) == 1
    assert list(sa.children) == [ea.child.spi_in] and list(bsa.children) == [eb.child.spi_in]
    exchanges = [w.decode_message(d).header.exchange for _, d in p.wire]
    assert exchanges == [w.ExchangeType.CREATE_CHILD_SA] * 2 + [w.ExchangeType.INFORMATIONAL] * 2
    rekey = w.decode_message(p.wire[0][1])
    assert rekey.header.exchange == w.ExchangeType.CREATE_CHILD_SA


def test_rekey_child_initiator(btns_pair: Pair) -> None:
    _rekey_child(btns_pair, "a")


def test_rekey_child_responder(btns_pair: Pair) -> None:
    _rekey_child(btns_pair, "b")


def test_rekey_of_a_child_the_peer_does_not_know(btns_pair: Pair) -> None:
    sa, bsa = _up(btns_pair)
    bsa.children.clear()
    (spi,) = sa.children
    old_out = sa.children[spi].spi_out
    sa.rekey_child(spi, btns_pair.now)
    _run(btns_pair, "a", sa)
    (fa,) = btns_pair.of(ChildSaFailed, "a")
    assert isinstance(fa, ChildSaFailed) and fa.notify == NotifyType.CHILD_SA_NOT_FOUND and fa.by_peer
    # §2.25: A drops its copy silently and negotiates the CHILD_SA afresh
    assert btns_pair.of(ChildSaDeleted, "a") == [ChildSaDeleted(sa.ref, spi, old_out, by_peer=True)]
    ea, eb = _est(btns_pair, "a"), _est(btns_pair, "b")
    assert ea.replaces is None and ea.child.spi_in == eb.child.spi_out
    assert spi not in sa.children and len(sa.children) == len(bsa.children) == 1


def _rekey_ike(p: Pair, side: str) -> None:
    sa, bsa = _up(p)
    (child_a,) = sa.children.values()
    who = sa if side == "a" else bsa
    who.rekey(p.now)
    _run(p, side, who)
    assert sa.successor is not None and bsa.successor is not None
    na, nb = sa.successor, bsa.successor
    assert na.ref == nb.ref != sa.ref
    assert p.of(IkeSaRekeyed, "a") == [IkeSaRekeyed(sa.ref, na.ref)]
    assert p.of(IkeSaRekeyed, "b") == [IkeSaRekeyed(sa.ref, na.ref)]
    assert sa.state is bsa.state is IkeState.CLOSED
    assert p.of(IkeSaDeleted, "a") == [IkeSaDeleted(sa.ref, by_peer=side != "a")]
    assert not p.of(ChildSaDeleted, "a") and not p.of(ChildSaDeleted, "b")  # children moved
    assert list(na.children.values()) == [child_a]
    assert na.is_initiator == (side == "a") and nb.is_initiator == (side == "b")
    assert na.keys is not None and sa.keys is not None and na.keys.sk_d != sa.keys.sk_d
    assert {x.our_spi for x in p.a.sas} == {na.our_spi} and {x.our_spi for x in p.b.sas} == {nb.our_spi}
    # the new SA works: message IDs from 0, a liveness check and a new child on it
    na.check_liveness(p.now)
    p.a.poll(na, p.now)
    p.pump()
    assert na._pending is None
    nb.create_child(ChildRequest(Selector.for_flow(FiveTuple.of(B_ADDR, 2049, A_ADDR, 40009, 6))), p.now)
    p.b.poll(nb, p.now)
    p.pump()
    assert len(na.children) == len(nb.children) == 2


def test_rekey_ike_sa_initiator(btns_pair: Pair) -> None:
    _rekey_ike(btns_pair, "a")


def test_rekey_ike_sa_responder(btns_pair: Pair) -> None:
    _rekey_ike(btns_pair, "b")


def test_crossed_child_rekeys_leave_exactly_one_pair(btns_pair: Pair) -> None:
    """Both ends rekey the same CHILD_SA at once (§2.8.1): the pair made with the lowest nonce is
    closed by its creator, the old pair by both rekeys; one pair is left, the same on both sides."""
    sa, bsa = _up(btns_pair)
    (old_a,) = sa.children
    (old_b,) = bsa.children
    sa.rekey_child(old_a, btns_pair.now)
    bsa.rekey_child(old_b, btns_pair.now)
    btns_pair.a.poll(sa, btns_pair.now)
    btns_pair.b.poll(bsa, btns_pair.now)
    btns_pair.pump()
    assert len(btns_pair.of(ChildSaEstablished, "a")) == len(btns_pair.of(ChildSaEstablished, "b")) == 2
    assert len(sa.children) == len(bsa.children) == 1
    ((spi_in, child),) = sa.children.items()
    (other,) = bsa.children.values()
    assert child.spi_out == other.spi_in and other.spi_out == spi_in and child.key_in == other.key_out
    assert old_a not in sa.children and old_b not in bsa.children


@pytest.mark.parametrize("group", [31, 19])
def test_child_with_pfs(btns_pair: Pair, group: int) -> None:
    """CREATE_CHILD_SA with a key exchange (§1.3.1): KEi/KEr, KEYMAT from g^ir | Ni | Nr (§2.17)."""
    sa, bsa = _up(btns_pair)
    flow = FiveTuple.of(A_ADDR, 40003, B_ADDR, 2049, IpProto.TCP)
    sa.create_child(ChildRequest(Selector.for_flow(flow), pfs_group=group), btns_pair.now)
    _run(btns_pair, "a", sa)
    ea, eb = _est(btns_pair, "a"), _est(btns_pair, "b")
    assert ea.child.key_in == eb.child.key_out and ea.child.key_out == eb.child.key_in
    req, resp = (w.decode_message(d) for _, d in btns_pair.wire)
    assert sa.keys is not None and bsa.keys is not None
    inner_req = SkCipher.inbound(bsa.keys, False).open(btns_pair.wire[0][1], req.payloads[-1])  # type: ignore[arg-type]
    inner_resp = SkCipher.inbound(sa.keys, True).open(btns_pair.wire[1][1], resp.payloads[-1])  # type: ignore[arg-type]
    assert [x.group for x in inner_req if isinstance(x, w.KePayload)] == [group]
    assert [x.group for x in inner_resp if isinstance(x, w.KePayload)] == [group]
    nonces = [x.data for x in (*inner_req, *inner_resp) if isinstance(x, w.NoncePayload)]
    without_pfs = derive_child_keys(sa.keys.suite.prf, sa.keys.sk_d, nonces[0], nonces[1], 36, 0)
    assert ea.child.key_out != without_pfs.encr_i2r  # the key exchange went into the keys


def test_rekey_child_with_pfs(btns_pair: Pair) -> None:
    sa, _bsa = _up(btns_pair)
    (old,) = sa.children
    sa.rekey_child(old, btns_pair.now, pfs_group=31)
    _run(btns_pair, "a", sa)
    ea, eb = _est(btns_pair, "a"), _est(btns_pair, "b")
    assert ea.replaces == old and ea.child.key_in == eb.child.key_out
    assert list(sa.children) == [ea.child.spi_in]


def test_child_with_modp2048_pfs(btns_pair: Pair) -> None:
    sa, _ = _up(btns_pair)
    flow = FiveTuple.of(A_ADDR, 40004, B_ADDR, 2049, IpProto.TCP)
    sa.create_child(ChildRequest(Selector.for_flow(flow), pfs_group=14), btns_pair.now)
    _run(btns_pair, "a", sa)
    ea, eb = _est(btns_pair, "a"), _est(btns_pair, "b")
    assert ea.child.key_in == eb.child.key_out


# -- lifetimes (IkeConfig.child_rekey_after / ike_rekey_after) ---------------------------------


def _lifetime_pair(make_pair: Callable[..., Pair], keys: Keys, *, both: bool, **kw: object) -> Pair:
    b_kw = kw if both else {}
    return make_pair(
        make_config(keys.a, key_pad(keys.b_spki), A_POLICY, **kw),
        make_config(keys.b, btns_pad(), NFS_POLICY, **b_kw),
    )


def _consistent(sa: IkeSa, bsa: IkeSa) -> None:
    assert len(sa.children) == len(bsa.children) == 1
    (a,) = sa.children.values()
    (b,) = bsa.children.values()
    assert a.spi_in == b.spi_out and a.spi_out == b.spi_in and a.key_in == b.key_out


def test_child_lifetime_rekeys(make_pair: Callable[..., Pair], keys: Keys) -> None:
    p = _lifetime_pair(make_pair, keys, both=False, child_rekey_after=100.0)
    sa, bsa = _up(p)
    (first,) = sa.children
    p.advance(101)
    (ea,) = p.of(ChildSaEstablished, "a")
    assert isinstance(ea, ChildSaEstablished) and ea.replaces == first
    _consistent(sa, bsa)
    p.advance(100)
    assert len(p.of(ChildSaEstablished, "a")) == 2
    _consistent(sa, bsa)


def test_child_lifetimes_on_both_ends(make_pair: Callable[..., Pair], keys: Keys) -> None:
    p = _lifetime_pair(make_pair, keys, both=True, child_rekey_after=100.0)
    sa, bsa = _up(p)
    p.advance(1000)
    assert len(p.of(ChildSaEstablished, "a")) >= 10
    _consistent(sa, bsa)


def test_ike_lifetime_rekeys_and_the_new_sa_rekeys_again(make_pair: Callable[..., Pair], keys: Keys) -> None:
    p = _lifetime_pair(make_pair, keys, both=False, ike_rekey_after=100.0)
    sa, _bsa = _up(p)
    p.advance(101)
    assert sa.successor is not None and sa.state is IkeState.CLOSED
    p.advance(100)
    new = sa.successor
    assert new.successor is not None and new.state is IkeState.CLOSED
    (na,) = p.a.sas
    (nb,) = p.b.sas
    assert na.ref == nb.ref == new.successor.ref
    _consistent(na, nb)
    assert len(p.of(IkeSaRekeyed, "a")) == 2
