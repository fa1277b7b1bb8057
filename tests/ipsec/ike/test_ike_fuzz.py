"""Hypothesis against the whole core: mutated, truncated and replayed datagrams of a real run fed
to established and fresh endpoints never raise, and never change an established IKE SA."""

from __future__ import annotations

import ipaddress

from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ike_harness import A_POLICY, NFS_POLICY, A, B, Pair, btns_pad, make_config

from rpclatch.ipsec.ike.dispatcher import IkeDispatcher
from rpclatch.ipsec.ike.sa import IkeState

KA, KB = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
CA = make_config(KA, btns_pad(), A_POLICY)
CB = make_config(KB, btns_pad(), NFS_POLICY)
STRANGER = (ipaddress.IPv4Address("203.0.113.9"), 500)


def _established() -> Pair:
    p = Pair(IkeDispatcher(CA, A), IkeDispatcher(CB, B))
    sa = p.initiate()
    p.pump()
    sa.check_liveness(p.now)
    p.a.poll(sa, p.now)
    p.pump()
    assert sa.state is IkeState.ESTABLISHED
    return p


_RUN = _established()
MESSAGES = [(src, data) for src, data in _RUN.wire]  # INIT, INIT', AUTH, AUTH', INFO, INFO'


def _mutate(data: bytes, draw: st.DataObject) -> bytes:
    raw = bytearray(data)
    kind = draw.draw(st.sampled_from(["flip", "truncate", "extend", "header"]))
    if kind == "flip":
        for _ in range(draw.draw(st.integers(1, 3))):
            raw[draw.draw(st.integers(0, len(raw) - 1))] ^= draw.draw(st.integers(1, 255))
    elif kind == "truncate":
        raw = raw[: draw.draw(st.integers(0, len(raw) - 1))]
    elif kind == "extend":
        raw += draw.draw(st.binary(min_size=1, max_size=40))
    else:
        raw[draw.draw(st.integers(16, 27))] = draw.draw(st.integers(0, 255))
    return bytes(raw)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(MESSAGES) - 1), st.data())
def test_mutated_datagrams_never_raise_nor_change_established_sas(index: int, data: st.DataObject) -> None:
    p = _established()
    (sa_a,), (sa_b,) = p.a.sas, p.b.sas
    before = (dict(sa_a.children), dict(sa_b.children))
    src, msg = MESSAGES[index]
    bad = _mutate(msg, data)
    for target in (p.a, p.b):
        target.receive_datagram(bad, data.draw(st.sampled_from([src, STRANGER])), p.now)
    p.pump()
    p.advance(data.draw(st.sampled_from([0.0, 1.5, 40.0])))
    assert sa_a.state is IkeState.ESTABLISHED and sa_b.state is IkeState.ESTABLISHED
    assert (sa_a.children, sa_b.children) == before


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(MESSAGES) - 1), st.data())
def test_replayed_datagrams_never_change_established_sas(index: int, data: st.DataObject) -> None:
    """An exact copy of an old message (another SA's, so other keys) is dropped quietly."""
    p = _established()
    (sa_a,), (sa_b,) = p.a.sas, p.b.sas
    src, msg = MESSAGES[index]
    (p.b if src == A else p.a).receive_datagram(msg, src, p.now)
    p.pump()
    assert sa_a.state is IkeState.ESTABLISHED and sa_b.state is IkeState.ESTABLISHED


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_first_messages_to_a_fresh_responder_never_raise(data: st.DataObject) -> None:
    b = IkeDispatcher(CB, B)
    bad = _mutate(MESSAGES[0][1], data)
    b.receive_datagram(bad, A, 1000.0)
    b.datagrams_to_send(1000.0)
    while b.next_event() is not None:
        pass
    b.handle_timer(2000.0)
    assert b.half_open_count <= 1
