"""Hooks for an owner (docs/ike.md): ``IkeConfig.entropy``, ``child_spi`` and ``child_vetter``
(RFC 5660 §2.3), ``IkeDispatcher.refusing`` and ``IkeDispatcher.cancel``."""

from __future__ import annotations

import itertools
import logging
import random
import secrets
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from ike_harness import (
    A_ADDR,
    A_POLICY,
    B_ADDR,
    FLOW,
    NFS_POLICY,
    A,
    B,
    Keys,
    Pair,
    btns_pad,
    key_pad,
    make_config,
)

from rpclatch.ipsec.ike import ChildProposal
from rpclatch.ipsec.ike.config import ChildRequest
from rpclatch.ipsec.ike.crypto import SigningKey, spki_of
from rpclatch.ipsec.ike.errors import IkeLocalError, NotifyType
from rpclatch.ipsec.ike.events import (
    ChildSaEstablished,
    ChildSaFailed,
    FailureReason,
    IkeEvent,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
)
from rpclatch.ipsec.ike.negotiation import DEFAULT_IKE_SUITES
from rpclatch.ipsec.ike.sa import IkeSa, IkeState
from rpclatch.ipsec.model import (
    AddressRange,
    FiveTuple,
    IpProto,
    Mode,
    PortRange,
    RawPublicKeyPeer,
    Selector,
)

Maker = Callable[..., Pair]


def _pair(
    keys: Keys,
    make_pair: Maker,
    a_kw: dict[str, object] | None = None,
    b_kw: dict[str, object] | None = None,
    a_key: SigningKey | None = None,
) -> Pair:
    """A (raw key, accepts only B) initiates to B (raw key, BTNS, NFS policy)."""
    a_key = a_key if a_key is not None else keys.a
    return make_pair(
        make_config(a_key, key_pad(keys.b_spki), A_POLICY, **(a_kw or {})),
        make_config(keys.b, btns_pad(), NFS_POLICY, **(b_kw or {})),
    )


def _up(p: Pair, request: ChildRequest | None = None) -> tuple[IkeSa, IkeSa]:
    sa = p.initiate(request)
    p.pump()
    (bsa,) = p.b.sas
    assert sa.state is bsa.state is IkeState.ESTABLISHED
    return sa, bsa


def _clear(p: Pair) -> None:
    p.events_a.clear()
    p.events_b.clear()
    p.wire.clear()


def _one(p: Pair, kind: type, side: str) -> IkeEvent:
    (e,) = p.of(kind, side)
    return e


# ---------------------------------------------------------------------------------------------
# entropy


def _run(keys: Keys, make_pair: Maker, seed: int | None, suite: int, *, ecdsa: bool = False) -> list[object]:
    """IKE_SA_INIT, IKE_AUTH, a CHILD_SA rekey with PFS each way (the second by lifetime), an IKE SA
    rekey: the datagrams and the timers (rekey jitter) seen, in order."""
    entropy = random.Random(seed).randbytes if seed is not None else None
    kw: dict[str, object] = {
        "entropy": entropy,
        "ike_suites": (DEFAULT_IKE_SUITES[suite],),
        "child_rekey_after": 600.0,
    }
    a_key = ec.derive_private_key(12345, ec.SECP256R1()) if ecdsa else None
    p = _pair(keys, make_pair, kw, kw, a_key=a_key)
    group = DEFAULT_IKE_SUITES[suite].dh
    sa, _ = _up(p)
    seen: list[object] = [p.a.get_timer(), p.b.get_timer()]
    (spi,) = sa.children
    sa.rekey_child(spi, p.now, pfs_group=group)
    p.a.poll(sa, p.now)
    p.pump()
    p.advance(600.0)  # the lifetime rekeys
    sa.rekey(p.now)
    p.a.poll(sa, p.now)
    p.pump()
    assert p.of(IkeSaRekeyed, "a") and len(p.of(ChildSaEstablished, "a")) >= 3
    seen += [p.a.get_timer(), p.b.get_timer()]
    return seen + [data for _, data in p.wire]


@pytest.mark.parametrize("suite", [0, 1, 2], ids=["x25519-gcm", "p256-cbc", "modp2048-cbc"])
def test_same_entropy_same_datagrams(keys: Keys, make_pair: Maker, suite: int) -> None:
    first = _run(keys, make_pair, 7, suite)
    assert len(first) > 10
    assert _run(keys, make_pair, 7, suite) == first
    assert _run(keys, make_pair, 8, suite) != first


def test_same_entropy_same_datagrams_with_ecdsa(keys: Keys, make_pair: Maker) -> None:
    # ECDSA signatures are randomized unless deterministic (RFC 6979), which entropy turns on
    assert _run(keys, make_pair, 7, 0, ecdsa=True) == _run(keys, make_pair, 7, 0, ecdsa=True)


def test_default_entropy_differs_every_run(keys: Keys, make_pair: Maker) -> None:
    assert _run(keys, make_pair, None, 0) != _run(keys, make_pair, None, 0)


@pytest.mark.parametrize("suite", [0, 1, 2], ids=["x25519-gcm", "p256-cbc", "modp2048-cbc"])
def test_entropy_is_the_only_source(
    keys: Keys, make_pair: Maker, suite: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``entropy`` set nothing reaches os.urandom or secrets' generator."""

    def boom(*_args: object) -> object:
        raise AssertionError("the core drew randomness outside IkeConfig.entropy")

    make = make_pair

    def patched(*args: object, **kw: object) -> Pair:
        p = make(*args, **kw)  # the dispatchers' cookie secrets come from os.urandom
        monkeypatch.setattr("os.urandom", boom)
        for name in ("randbits", "randbelow", "token_bytes", "choice"):
            monkeypatch.setattr(secrets, name, boom)
        return p

    assert _run(keys, patched, 7, suite)


# ---------------------------------------------------------------------------------------------
# child_spi


def test_child_spi_allocator_in_both_roles(keys: Keys, make_pair: Maker) -> None:
    a_spis, b_spis = itertools.count(0x1000), itertools.count(0x2000)
    p = _pair(keys, make_pair, {"child_spi": lambda: next(a_spis)}, {"child_spi": lambda: next(b_spis)})
    sa, bsa = _up(p)
    assert list(sa.children) == [0x1000] and list(bsa.children) == [0x2000]
    assert sa.children[0x1000].spi_out == 0x2000
    _clear(p)
    # a created child, A initiating
    sa.create_child(ChildRequest(Selector.for_flow(FiveTuple.of(A_ADDR, 40001, B_ADDR, 2049, 6))), p.now)
    p.a.poll(sa, p.now)
    p.pump()
    assert set(sa.children) == {0x1000, 0x1001} and set(bsa.children) == {0x2000, 0x2001}
    # rekeys, B initiating then A initiating
    bsa.rekey_child(0x2000, p.now)
    p.b.poll(bsa, p.now)
    p.pump()
    assert set(sa.children) == {0x1001, 0x1002} and set(bsa.children) == {0x2001, 0x2002}
    sa.rekey_child(0x1001, p.now)
    p.a.poll(sa, p.now)
    p.pump()
    assert set(sa.children) == {0x1002, 0x1003} and set(bsa.children) == {0x2002, 0x2003}
    assert sa.children[0x1003].spi_out == 0x2003


@pytest.mark.parametrize("bad", [0, 1, 255, 2**32])
def test_child_spi_out_of_range_is_a_local_error(keys: Keys, make_pair: Maker, bad: int) -> None:
    spis = iter([0x1000, bad])
    p = _pair(keys, make_pair, {"child_spi": lambda: next(spis)})
    sa, _ = _up(p)
    _clear(p)
    with pytest.raises(ValueError, match="RFC 4303"):
        sa.create_child(ChildRequest(Selector.for_flow(FLOW)), p.now)
    p.a.poll(sa, p.now)
    assert p.a.datagrams_to_send(p.now) == [] and sa.state is IkeState.ESTABLISHED


def test_child_spi_out_of_range_when_initiating(keys: Keys, make_pair: Maker) -> None:
    p = _pair(keys, make_pair, {"child_spi": lambda: 255})
    with pytest.raises(ValueError, match="RFC 4303"):
        p.initiate()
    assert not p.a.sas and p.a.datagrams_to_send(p.now) == [] and p.a.get_timer() is None


def test_child_spi_out_of_range_on_the_responder(keys: Keys, make_pair: Maker) -> None:
    p = _pair(keys, make_pair, b_kw={"child_spi": lambda: 7})
    with pytest.raises(ValueError, match="RFC 4303"):
        _up(p)


# ---------------------------------------------------------------------------------------------
# child_vetter

#: A asks for all TCP between A and B; B's policy narrows it to B's port 2049
WIDE = ChildRequest(Selector(AddressRange.single(A_ADDR), AddressRange.single(B_ADDR), IpProto.TCP))


def _vetted(
    keys: Keys, make_pair: Maker, vetter: Callable[[ChildProposal], Selector | None]
) -> tuple[Pair, list[ChildProposal]]:
    seen: list[ChildProposal] = []

    def record(proposal: ChildProposal) -> Selector | None:
        seen.append(proposal)
        return vetter(proposal)

    a_seen: list[ChildProposal] = []

    def a_record(proposal: ChildProposal) -> Selector:
        a_seen.append(proposal)
        return proposal.selector

    p = _pair(keys, make_pair, {"child_vetter": a_record}, {"child_vetter": record})
    p.a_seen = a_seen  # type: ignore[attr-defined]
    return p, seen


def test_vetter_accepts_unchanged(keys: Keys, make_pair: Maker) -> None:
    p, seen = _vetted(keys, make_pair, lambda prop: prop.selector)
    sa, bsa = _up(p)
    (prop,) = seen
    ea, eb = _one(p, ChildSaEstablished, "a"), _one(p, ChildSaEstablished, "b")
    assert isinstance(ea, ChildSaEstablished) and isinstance(eb, ChildSaEstablished)
    assert isinstance(prop.peer, RawPublicKeyPeer) and prop.peer.spki_der == spki_of(keys.a)
    peer = RawPublicKeyPeer(keys.a_spki, prop.peer.ike_id)
    suite = eb.child.suite
    spis = (eb.child.spi_in, eb.child.spi_out)
    assert spis == (ea.child.spi_out, ea.child.spi_in)  # the SPIs the vetter saw are the SA's
    assert prop == ChildProposal(bsa.ref, peer, B, A, eb.child.selector, suite, Mode.TRANSPORT, *spis, None)
    assert ea.child.selector == Selector.for_flow(FLOW) and not ea.child.narrowed
    assert p.a_seen == []  # type: ignore[attr-defined]  # the vetter is the exchange responder's
    # a rekey by A: rekey_of is B's inbound SPI of the old CHILD_SA
    _clear(p)
    (old,) = sa.children
    sa.rekey_child(old, p.now)
    p.a.poll(sa, p.now)
    p.pump()
    assert seen[1].rekey_of == eb.child.spi_in and seen[1].selector == eb.child.selector
    assert len(p.of(ChildSaEstablished, "a")) == 1 and len(bsa.children) == 1
    # a child B asks A for: A's vetter sees it, with B as the peer
    _clear(p)
    flow = FiveTuple.of(B_ADDR, 2049, A_ADDR, 40002, IpProto.TCP)
    bsa.create_child(ChildRequest(Selector.for_flow(flow)), p.now)
    p.b.poll(bsa, p.now)
    p.pump()
    (a_prop,) = p.a_seen  # type: ignore[attr-defined]
    assert isinstance(a_prop.peer, RawPublicKeyPeer) and a_prop.peer.spki_der == keys.b_spki
    assert a_prop.selector == Selector.for_flow(flow.reversed()) and a_prop.rekey_of is None
    assert (a_prop.local, a_prop.remote, a_prop.ike_sa) == (A, B, sa.ref)


def test_vetter_narrows(keys: Keys, make_pair: Maker) -> None:
    def narrow(prop: ChildProposal) -> Selector:
        s = prop.selector
        return Selector(s.local, s.remote, s.proto, s.local_ports, PortRange.single(40000))

    p, seen = _vetted(keys, make_pair, narrow)
    _up(p, WIDE)
    (prop,) = seen
    # what B's policy narrowed to: B's port 2049, any port of A
    assert prop.selector == Selector(
        AddressRange.single(B_ADDR), AddressRange.single(A_ADDR), IpProto.TCP, PortRange.single(2049)
    )
    ea, eb = _one(p, ChildSaEstablished, "a"), _one(p, ChildSaEstablished, "b")
    assert isinstance(ea, ChildSaEstablished) and isinstance(eb, ChildSaEstablished)
    assert eb.child.selector == narrow(prop) and eb.child.narrowed
    assert ea.child.selector == Selector.for_flow(FLOW) and ea.child.narrowed  # TSi/TSr carried it


def _refused_in_auth(p: Pair, notify: int) -> None:
    sa, bsa = _up(p)
    assert isinstance(_one(p, IkeSaEstablished, "a"), IkeSaEstablished)
    fa, fb = _one(p, ChildSaFailed, "a"), _one(p, ChildSaFailed, "b")
    assert isinstance(fa, ChildSaFailed) and fa.notify == notify and fa.by_peer
    assert isinstance(fb, ChildSaFailed) and fb.notify == notify and not fb.by_peer
    assert not sa.children and not bsa.children and not p.of(ChildSaEstablished, "a")


def test_vetter_refuses_the_first_child(keys: Keys, make_pair: Maker) -> None:
    p, seen = _vetted(keys, make_pair, lambda prop: None)
    _refused_in_auth(p, NotifyType.TS_UNACCEPTABLE)
    assert len(seen) == 1


def test_vetter_answering_wider_is_a_refusal(
    keys: Keys, make_pair: Maker, caplog: pytest.LogCaptureFixture
) -> None:
    p, _ = _vetted(keys, make_pair, lambda prop: Selector())
    with caplog.at_level(logging.WARNING, "rpclatch.ipsec.ike.sa"):
        _refused_in_auth(p, NotifyType.TS_UNACCEPTABLE)
    assert "wider" in caplog.text


def test_vetter_raising_is_a_refusal(keys: Keys, make_pair: Maker, caplog: pytest.LogCaptureFixture) -> None:
    def vetter(prop: ChildProposal) -> Selector:
        raise RuntimeError("latch database unavailable")

    p, _ = _vetted(keys, make_pair, vetter)
    with caplog.at_level(logging.ERROR, "rpclatch.ipsec.ike.sa"):
        _refused_in_auth(p, NotifyType.TS_UNACCEPTABLE)
    assert "latch database unavailable" in caplog.text


def test_vetter_refuses_a_created_child(keys: Keys, make_pair: Maker) -> None:
    p, seen = _vetted(
        keys, make_pair, lambda prop: None if prop.selector.remote_ports.low == 40001 else prop.selector
    )
    sa, bsa = _up(p)
    _clear(p)
    sa.create_child(ChildRequest(Selector.for_flow(FiveTuple.of(A_ADDR, 40001, B_ADDR, 2049, 6))), p.now)
    p.a.poll(sa, p.now)
    p.pump()
    fa = _one(p, ChildSaFailed, "a")
    assert isinstance(fa, ChildSaFailed) and fa.notify == NotifyType.TS_UNACCEPTABLE and fa.by_peer
    assert len(sa.children) == len(bsa.children) == 1 and len(seen) == 2


def test_vetter_refuses_a_rekey(keys: Keys, make_pair: Maker) -> None:
    p, seen = _vetted(keys, make_pair, lambda prop: None if prop.rekey_of is not None else prop.selector)
    sa, bsa = _up(p)
    (old,) = sa.children
    (b_old,) = bsa.children
    _clear(p)
    sa.rekey_child(old, p.now)
    p.a.poll(sa, p.now)
    p.pump()
    fa = _one(p, ChildSaFailed, "a")
    assert isinstance(fa, ChildSaFailed) and fa.notify == NotifyType.NO_PROPOSAL_CHOSEN and fa.by_peer
    assert list(sa.children) == [old] and list(bsa.children) == [b_old]  # the old pair stays
    assert seen[-1].rekey_of == b_old


# ---------------------------------------------------------------------------------------------
# refusing and cancel


def test_refusing_answers_no_proposal_chosen_and_keeps_nothing(btns_pair: Pair) -> None:
    p = btns_pair
    p.b.refusing = True
    sa = p.initiate()
    p.pump()
    fa = _one(p, IkeSaFailed, "a")
    assert isinstance(fa, IkeSaFailed) and fa.reason is FailureReason.NO_PROPOSAL_CHOSEN
    assert fa.notify == NotifyType.NO_PROPOSAL_CHOSEN and sa.state is IkeState.FAILED
    assert p.b.stats.refused_inits == 1 and not p.b.sas and p.b.half_open_count == 0
    assert p.events_b == [] and p.b.get_timer() is None
    p.b.refusing = False
    _up(p)


def test_cancel_initiator_in_init_sent(btns_pair: Pair) -> None:
    p = btns_pair
    sa = p.initiate()
    ((init, _),) = p.a.datagrams_to_send(p.now)
    p.b.receive_datagram(init, A, p.now)
    ((answer, _),) = p.b.datagrams_to_send(p.now)
    p.a.cancel(sa, p.now)
    p._drain()
    assert p.events_a == [IkeSaFailed(sa.ref, FailureReason.CANCELLED, None, "cancelled by its owner")]
    assert p.a.datagrams_to_send(p.now) == [] and p.a.get_timer() is None and not p.a.sas
    p.a.receive_datagram(answer, B, p.now)  # too late
    assert p.a.stats.unknown_spi == 1 and p.a.datagrams_to_send(p.now) == []
    p.advance(100.0)  # nothing is retransmitted
    assert p.wire == [] and len(p.events_a) == 1


def test_cancel_initiator_in_auth_sent(btns_pair: Pair) -> None:
    p = btns_pair
    sa = p.initiate()
    ((init, _),) = p.a.datagrams_to_send(p.now)
    p.b.receive_datagram(init, A, p.now)
    ((answer, _),) = p.b.datagrams_to_send(p.now)
    p.a.receive_datagram(answer, B, p.now)
    ((auth, _),) = p.a.datagrams_to_send(p.now)
    assert sa.state is IkeState.AUTH_SENT
    p.a.cancel(sa, p.now)
    p.b.receive_datagram(auth, A, p.now)
    ((auth_answer, _),) = p.b.datagrams_to_send(p.now)
    p.a.receive_datagram(auth_answer, B, p.now)
    p._drain()
    assert p.a.stats.unknown_spi == 1 and p.a.datagrams_to_send(p.now) == [] and not p.a.sas
    assert [type(e) for e in p.events_a] == [IkeSaFailed]
    fa = p.events_a[0]
    assert isinstance(fa, IkeSaFailed) and fa.reason is FailureReason.CANCELLED
    assert p.a.get_timer() is None


def test_cancel_responder_half_open(btns_pair: Pair) -> None:
    p = btns_pair
    p.initiate()
    ((init, _),) = p.a.datagrams_to_send(p.now)
    p.b.receive_datagram(init, A, p.now)
    ((answer, _),) = p.b.datagrams_to_send(p.now)
    (bsa,) = p.b.sas
    assert bsa.state is IkeState.HALF_OPEN
    p.b.cancel(bsa, p.now)
    p._drain()
    assert p.events_b == [IkeSaFailed(bsa.ref, FailureReason.CANCELLED, None, "cancelled by its owner")]
    assert not p.b.sas and p.b.half_open_count == 0 and p.b.get_timer() is None
    assert p.b.datagrams_to_send(p.now) == []
    p.a.receive_datagram(answer, B, p.now)
    ((auth, _),) = p.a.datagrams_to_send(p.now)
    p.b.receive_datagram(auth, A, p.now)  # for the forgotten SA
    assert p.b.stats.unknown_spi == 1 and p.b.datagrams_to_send(p.now) == []


def test_cancel_established_or_foreign_sa_is_refused(btns_pair: Pair, make_pair: Maker, keys: Keys) -> None:
    p = btns_pair
    sa, bsa = _up(p)
    for dispatcher, ike_sa in ((p.a, sa), (p.b, bsa)):
        with pytest.raises(IkeLocalError):
            dispatcher.cancel(ike_sa, p.now)
        assert ike_sa.state is IkeState.ESTABLISHED
    other = _pair(keys, make_pair)
    stranger = other.initiate()
    with pytest.raises(IkeLocalError):
        p.a.cancel(stranger, p.now)
    assert stranger.state is IkeState.INIT_SENT
