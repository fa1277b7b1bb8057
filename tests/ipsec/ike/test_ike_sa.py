"""rpclatch.ipsec.ike.sa + dispatcher: every exchange and failure between an in-process initiator
(A) and responder (B) over a fake clock."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from ike_harness import (
    A_ADDR,
    A_POLICY,
    B_ADDR,
    FLOW,
    NFS_POLICY,
    B,
    Keys,
    Pair,
    btns_pad,
    key_pad,
    make_config,
    null_pad,
)

from rpclatch.ipsec.ike import wire as w
from rpclatch.ipsec.ike.config import ChildRequest
from rpclatch.ipsec.ike.crypto import IkeSuite, spki_of
from rpclatch.ipsec.ike.dispatcher import IkeDispatcher
from rpclatch.ipsec.ike.errors import NotifyType
from rpclatch.ipsec.ike.events import (
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    FailureReason,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
)
from rpclatch.ipsec.ike.negotiation import DEFAULT_IKE_SUITES
from rpclatch.ipsec.ike.sa import TRANSITIONS, IkeSa, IkeState
from rpclatch.ipsec.model import (
    AES_GCM_128,
    AES_GCM_256,
    AddressRange,
    FiveTuple,
    IkeId,
    IpProto,
    Mode,
    NullAuthPeer,
    PortRange,
    RawPublicKeyPeer,
    Selector,
)

GCM_X25519, CBC_ECP256, CBC_MODP2048 = DEFAULT_IKE_SUITES


def _key_id(spki: bytes) -> IkeId:
    """The default ID of raw-key credentials: ID_KEY_ID = SHA-256 of the SPKI."""
    return IkeId.key_id(hashlib.sha256(spki).digest())


def _children(p: Pair) -> tuple[ChildSaEstablished, ChildSaEstablished]:
    (ca,) = p.of(ChildSaEstablished, "a")
    (cb,) = p.of(ChildSaEstablished, "b")
    assert isinstance(ca, ChildSaEstablished) and isinstance(cb, ChildSaEstablished)
    return ca, cb


def test_btns_handshake_establishes_both_sides_with_the_peer_keys(btns_pair: Pair, keys: Keys) -> None:
    sa = btns_pair.initiate()
    btns_pair.pump()
    assert sa.state is IkeState.ESTABLISHED
    (ea,) = btns_pair.of(IkeSaEstablished, "a")
    (eb,) = btns_pair.of(IkeSaEstablished, "b")
    assert isinstance(ea, IkeSaEstablished) and isinstance(eb, IkeSaEstablished)
    assert ea.peer == RawPublicKeyPeer(keys.b_spki, _key_id(keys.b_spki))
    assert ea.pad_entry == "known" and ea.initiator
    assert eb.peer == RawPublicKeyPeer(keys.a_spki, _key_id(keys.a_spki))
    assert eb.pad_entry == "btns" and eb.btns and not eb.initiator
    assert ea.ike_sa == eb.ike_sa
    assert ea.suite == str(GCM_X25519)
    assert not (ea.nat_local or ea.nat_remote or eb.nat_local or eb.nat_remote)
    ca, cb = _children(btns_pair)
    assert ca.child.spi_in == cb.child.spi_out and ca.child.spi_out == cb.child.spi_in
    assert ca.child.key_out == cb.child.key_in and ca.child.key_in == cb.child.key_out
    assert len(ca.child.key_in) == 36 and ca.child.key_in != ca.child.key_out
    assert ca.child.mode is cb.child.mode is Mode.TRANSPORT
    assert ca.child.suite == AES_GCM_256
    assert ca.child.selector == Selector.for_flow(FLOW)
    assert cb.child.selector == Selector.for_flow(FLOW.reversed())
    assert not ca.child.narrowed and not cb.child.narrowed


def test_events_come_in_order_ike_then_child(btns_pair: Pair) -> None:
    btns_pair.initiate()
    btns_pair.pump()
    assert [type(e) for e in btns_pair.events_a] == [IkeSaEstablished, ChildSaEstablished]
    assert [type(e) for e in btns_pair.events_b] == [IkeSaEstablished, ChildSaEstablished]


def test_wire_carries_the_expected_exchanges(btns_pair: Pair) -> None:
    btns_pair.initiate()
    btns_pair.pump()
    msgs = [w.decode_message(d) for _, d in btns_pair.wire]
    assert [(m.header.exchange, m.header.is_response) for m in msgs] == [
        (w.ExchangeType.IKE_SA_INIT, False),
        (w.ExchangeType.IKE_SA_INIT, True),
        (w.ExchangeType.IKE_AUTH, False),
        (w.ExchangeType.IKE_AUTH, True),
    ]
    init = msgs[0]
    types = {p.notify_type for p in init.payloads if isinstance(p, w.NotifyPayload)}
    assert {
        NotifyType.NAT_DETECTION_SOURCE_IP,
        NotifyType.NAT_DETECTION_DESTINATION_IP,
        NotifyType.SIGNATURE_HASH_ALGORITHMS,
    } <= types
    assert isinstance(msgs[2].payloads[-1], w.EncryptedPayload)


def test_null_auth_both_sides(make_pair: Callable[..., Pair]) -> None:
    p = make_pair(make_config(None, null_pad(), A_POLICY), make_config(None, null_pad(), NFS_POLICY))
    sa = p.initiate()
    p.pump()
    (ea,) = p.of(IkeSaEstablished, "a")
    (eb,) = p.of(IkeSaEstablished, "b")
    assert isinstance(ea, IkeSaEstablished) and isinstance(eb, IkeSaEstablished)
    assert ea.peer == NullAuthPeer(sa.ref) and eb.peer == NullAuthPeer(sa.ref)
    _children(p)
    init_auth = w.decode_message(p.wire[2][1])
    assert init_auth.header.exchange == w.ExchangeType.IKE_AUTH


def test_ecdsa_p256_and_the_cbc_ecp256_suite(make_pair: Callable[..., Pair]) -> None:
    ka, kb = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    p = make_pair(
        make_config(ka, key_pad(spki_of(kb)), A_POLICY, ike_suites=(CBC_ECP256,)),
        make_config(kb, key_pad(spki_of(ka)), NFS_POLICY, ike_suites=(CBC_ECP256,)),
    )
    p.initiate()
    p.pump()
    (ea,) = p.of(IkeSaEstablished, "a")
    assert isinstance(ea, IkeSaEstablished) and ea.suite == str(CBC_ECP256)
    _children(p)


def test_modp2048_suite(keys: Keys, make_pair: Callable[..., Pair]) -> None:
    p = make_pair(
        make_config(keys.a, key_pad(keys.b_spki), A_POLICY, ike_suites=(CBC_MODP2048,)),
        make_config(keys.b, btns_pad(), NFS_POLICY, ike_suites=(CBC_MODP2048,)),
    )
    p.initiate()
    p.pump()
    (ea,) = p.of(IkeSaEstablished, "a")
    assert isinstance(ea, IkeSaEstablished) and ea.suite == str(CBC_MODP2048)


def test_aes_gcm_128_child(keys: Keys, make_pair: Callable[..., Pair]) -> None:
    p = make_pair(
        make_config(keys.a, key_pad(keys.b_spki), A_POLICY),
        make_config(keys.b, btns_pad(), NFS_POLICY, esp_suites=(AES_GCM_128,)),
    )
    p.initiate()
    p.pump()
    ca, cb = _children(p)
    assert ca.child.suite == cb.child.suite == AES_GCM_128 and len(ca.child.key_in) == 20


# -- authentication failures -----------------------------------------------------------------


def test_wrong_key_is_refused_by_the_responder(keys: Keys, make_pair: Callable[..., Pair]) -> None:
    stranger = ed25519.Ed25519PrivateKey.generate()
    p = make_pair(
        make_config(stranger, key_pad(keys.b_spki), A_POLICY),
        make_config(keys.b, key_pad(keys.a_spki), NFS_POLICY),
    )
    sa = p.initiate()
    p.pump()
    (fa,) = p.of(IkeSaFailed, "a")
    (fb,) = p.of(IkeSaFailed, "b")
    assert isinstance(fa, IkeSaFailed) and isinstance(fb, IkeSaFailed)
    assert fa.reason is FailureReason.PEER_REFUSED and fa.notify == NotifyType.AUTHENTICATION_FAILED
    assert fb.reason is FailureReason.AUTHENTICATION_FAILED
    assert (
        sa.state is IkeState.FAILED
        and not p.of(ChildSaEstablished, "a")
        and not p.of(ChildSaEstablished, "b")
    )


def test_wrong_responder_key_is_refused_by_the_initiator(keys: Keys, make_pair: Callable[..., Pair]) -> None:
    expected = ed25519.Ed25519PrivateKey.generate()
    p = make_pair(
        make_config(keys.a, key_pad(spki_of(expected)), A_POLICY),
        make_config(keys.b, btns_pad(), NFS_POLICY),
    )
    p.initiate()
    p.pump()
    (fa,) = p.of(IkeSaFailed, "a")
    assert isinstance(fa, IkeSaFailed) and fa.reason is FailureReason.AUTHENTICATION_FAILED
    # the initiator told the responder, which deletes its SA
    assert p.of(IkeSaDeleted, "b")
    assert not p.a.sas and not p.b.sas


def test_bad_signature_is_refused(keys: Keys, make_pair: Callable[..., Pair]) -> None:
    """A presents its key but signs with another one."""
    p = make_pair(
        make_config(keys.a, key_pad(keys.b_spki), A_POLICY), make_config(keys.b, btns_pad(), NFS_POLICY)
    )
    sa = p.initiate()
    real = sa._our_auth

    def forged(id_payload: w.IdPayload) -> list[w.Payload]:
        out = real(id_payload)
        return [
            w.CertPayload(15, spki_of(ed25519.Ed25519PrivateKey.generate()))
            if isinstance(x, w.CertPayload)
            else x
            for x in out
        ]

    sa._our_auth = forged  # type: ignore[method-assign]
    p.pump()
    (fb,) = p.of(IkeSaFailed, "b")
    assert isinstance(fb, IkeSaFailed) and fb.reason is FailureReason.AUTHENTICATION_FAILED
    assert "signature" in fb.detail
    assert p.of(IkeSaFailed, "a")


def test_null_auth_refused_where_only_keys_are_accepted(keys: Keys, make_pair: Callable[..., Pair]) -> None:
    p = make_pair(
        make_config(None, key_pad(keys.b_spki), A_POLICY), make_config(keys.b, btns_pad(), NFS_POLICY)
    )
    p.initiate()
    p.pump()
    (fb,) = p.of(IkeSaFailed, "b")
    assert isinstance(fb, IkeSaFailed) and fb.reason is FailureReason.AUTHENTICATION_FAILED


# -- proposals -------------------------------------------------------------------------------


def test_no_proposal_chosen(keys: Keys, make_pair: Callable[..., Pair]) -> None:
    p = make_pair(
        make_config(keys.a, key_pad(keys.b_spki), A_POLICY, ike_suites=(GCM_X25519,)),
        make_config(keys.b, btns_pad(), NFS_POLICY, ike_suites=(CBC_MODP2048,)),
    )
    p.initiate()
    p.pump()
    (fa,) = p.of(IkeSaFailed, "a")
    assert isinstance(fa, IkeSaFailed)
    assert fa.reason is FailureReason.NO_PROPOSAL_CHOSEN and fa.notify == NotifyType.NO_PROPOSAL_CHOSEN
    assert p.b.stats.refused_inits == 1 and not p.b.sas


def test_invalid_ke_payload_retry_with_the_responders_group(
    keys: Keys, make_pair: Callable[..., Pair]
) -> None:
    p = make_pair(
        make_config(keys.a, key_pad(keys.b_spki), A_POLICY),  # KE for group 31 first
        make_config(keys.b, btns_pad(), NFS_POLICY, ike_suites=(CBC_ECP256,)),
    )
    sa = p.initiate()
    p.pump()
    assert sa.state is IkeState.ESTABLISHED
    notes = [
        n.data
        for _, d in p.wire
        for n in w.decode_message(d).payloads
        if isinstance(n, w.NotifyPayload) and n.notify_type == NotifyType.INVALID_KE_PAYLOAD
    ]
    assert notes == [(19).to_bytes(2, "big")]
    (ea,) = p.of(IkeSaEstablished, "a")
    assert isinstance(ea, IkeSaEstablished) and ea.suite == str(CBC_ECP256)


def test_invalid_ke_for_a_group_we_do_not_have_fails(keys: Keys, make_pair: Callable[..., Pair]) -> None:
    # B prefers ECP-256, A offers ECP-256 only in a suite B refuses? Force: A offers GCM/31 and CBC/19,
    # B supports CBC/19 only, but answer INVALID_KE for a group A lacks by tampering the answer.
    p = make_pair(
        make_config(keys.a, key_pad(keys.b_spki), A_POLICY),
        make_config(keys.b, btns_pad(), NFS_POLICY, ike_suites=(CBC_ECP256,)),
    )

    def rewrite(src: object, data: bytes) -> bytes:
        m = w.decode_message(data)
        if m.header.is_response and m.header.exchange == w.ExchangeType.IKE_SA_INIT:
            return w.encode_message(
                m.header, [w.NotifyPayload(NotifyType.INVALID_KE_PAYLOAD, (21).to_bytes(2, "big"))]
            )
        return data

    p.tamper = rewrite  # type: ignore[assignment]
    p.initiate()
    p.pump()
    (fa,) = p.of(IkeSaFailed, "a")
    assert isinstance(fa, IkeSaFailed) and fa.reason is FailureReason.INVALID_KE


def test_esp_no_proposal_chosen_keeps_the_ike_sa(keys: Keys, make_pair: Callable[..., Pair]) -> None:
    p = make_pair(
        make_config(keys.a, key_pad(keys.b_spki), A_POLICY, esp_suites=(AES_GCM_128,)),
        make_config(keys.b, btns_pad(), NFS_POLICY, esp_suites=(AES_GCM_256,)),
    )
    sa = p.initiate()
    p.pump()
    assert sa.state is IkeState.ESTABLISHED
    (fa,) = p.of(ChildSaFailed, "a")
    (fb,) = p.of(ChildSaFailed, "b")
    assert isinstance(fa, ChildSaFailed) and fa.notify == NotifyType.NO_PROPOSAL_CHOSEN and fa.by_peer
    assert isinstance(fb, ChildSaFailed) and not fb.by_peer


def test_responder_requiring_transport_refuses_tunnel(keys: Keys, make_pair: Callable[..., Pair]) -> None:
    p = make_pair(
        make_config(keys.a, key_pad(keys.b_spki), A_POLICY), make_config(keys.b, btns_pad(), NFS_POLICY)
    )
    p.initiate(ChildRequest(Selector.for_flow(FLOW), mode=Mode.TUNNEL))
    p.pump()
    (fa,) = p.of(ChildSaFailed, "a")
    assert isinstance(fa, ChildSaFailed) and fa.notify == NotifyType.NO_PROPOSAL_CHOSEN


# -- traffic selectors --------------------------------------------------------------------------


def test_narrowing_to_exactly_what_policy_allows(btns_pair: Pair) -> None:
    wide = Selector(AddressRange.single(A_ADDR), AddressRange.single(B_ADDR))  # any protocol, any ports
    btns_pair.initiate(ChildRequest(wide))
    btns_pair.pump()
    ca, cb = _children(btns_pair)
    want = Selector(
        AddressRange.single(A_ADDR),
        AddressRange.single(B_ADDR),
        IpProto.TCP,
        remote_ports=PortRange.single(2049),
    )
    assert ca.child.selector == want and ca.child.narrowed
    assert cb.child.selector == Selector(
        AddressRange.single(B_ADDR),
        AddressRange.single(A_ADDR),
        IpProto.TCP,
        local_ports=PortRange.single(2049),
    )


def test_ts_unacceptable_outside_policy(btns_pair: Pair) -> None:
    ssh = FiveTuple.of(A_ADDR, 40000, B_ADDR, 22, IpProto.TCP)
    sa = btns_pair.initiate(ChildRequest(Selector.for_flow(ssh)))
    btns_pair.pump()
    assert sa.state is IkeState.ESTABLISHED
    (fa,) = btns_pair.of(ChildSaFailed, "a")
    assert isinstance(fa, ChildSaFailed) and fa.notify == NotifyType.TS_UNACCEPTABLE and fa.by_peer


def test_unauthenticated_peer_is_narrowed_to_its_own_address(btns_pair: Pair) -> None:
    claim = Selector(
        AddressRange.network("192.0.2.0/24"),
        AddressRange.single(B_ADDR),
        IpProto.TCP,
        remote_ports=PortRange.single(2049),
    )
    btns_pair.initiate(ChildRequest(claim))
    btns_pair.pump()
    ca, _cb = _children(btns_pair)
    assert ca.child.selector.local == AddressRange.single(A_ADDR) and ca.child.narrowed


def test_unauthenticated_peer_never_gets_another_address(btns_pair: Pair) -> None:
    other = FiveTuple.of("192.0.2.99", 40000, B_ADDR, 2049, IpProto.TCP)
    btns_pair.initiate(ChildRequest(Selector.for_flow(other)))
    btns_pair.pump()
    (fa,) = btns_pair.of(ChildSaFailed, "a")
    assert isinstance(fa, ChildSaFailed) and fa.notify == NotifyType.TS_UNACCEPTABLE
    assert not btns_pair.of(ChildSaEstablished, "b")


def test_initiator_refuses_an_answer_outside_its_request(btns_pair: Pair) -> None:
    """B answers for the flow on the wire; A's request is swapped under it, so A must refuse."""
    sa = btns_pair.initiate()
    other = ChildRequest(Selector.for_flow(FiveTuple.of(A_ADDR, 40001, B_ADDR, 2049, IpProto.TCP)))

    def swap(src: object, data: bytes) -> bytes:
        if w.decode_message(data).header.exchange == w.ExchangeType.IKE_AUTH:
            sa._child_request = other
        return data

    btns_pair.tamper = swap  # type: ignore[assignment]
    btns_pair.pump()
    (fa,) = btns_pair.of(ChildSaFailed, "a")
    assert isinstance(fa, ChildSaFailed) and fa.notify == NotifyType.TS_UNACCEPTABLE and not fa.by_peer
    # and deletes what the responder installed
    assert btns_pair.of(ChildSaDeleted, "b")
    assert sa.state is IkeState.ESTABLISHED


# -- cookies, half-open limit ------------------------------------------------------------------


def test_cookie_under_load(keys: Keys, make_pair: Callable[..., Pair]) -> None:
    p = make_pair(
        make_config(keys.a, key_pad(keys.b_spki), A_POLICY),
        make_config(keys.b, btns_pad(), NFS_POLICY),
        cookie_threshold=0,
    )
    sa = p.initiate()
    p.pump()
    assert sa.state is IkeState.ESTABLISHED and p.b.stats.cookies_sent == 1
    first_payloads = [w.decode_message(d).payloads[0] for src, d in p.wire if src != B][:2]
    assert not isinstance(first_payloads[0], w.NotifyPayload)
    assert (
        isinstance(first_payloads[1], w.NotifyPayload) and first_payloads[1].notify_type == NotifyType.COOKIE
    )


def test_cookie_answer_keeps_no_state(keys: Keys, make_pair: Callable[..., Pair]) -> None:
    p = make_pair(
        make_config(keys.a, key_pad(keys.b_spki), A_POLICY),
        make_config(keys.b, btns_pad(), NFS_POLICY),
        cookie_threshold=0,
    )
    p.initiate()
    for data, _ in p.a.datagrams_to_send(p.now):
        p.b.receive_datagram(data, (A_ADDR, 500), p.now)
    assert not p.b.sas and p.b.half_open_count == 0


def test_half_open_limit_drops_new_inits(keys: Keys, make_pair: Callable[..., Pair]) -> None:
    p = make_pair(
        make_config(keys.a, key_pad(keys.b_spki), A_POLICY),
        make_config(keys.b, btns_pad(), NFS_POLICY),
        half_open_limit=1,
        cookie_threshold=10,
    )
    p.initiate()
    p.initiate()
    for data, _ in p.a.datagrams_to_send(p.now):
        p.b.receive_datagram(data, (A_ADDR, 500), p.now)
    assert p.b.half_open_count == 1 and p.b.stats.half_open_dropped == 1


def test_half_open_timeout(btns_pair: Pair) -> None:
    btns_pair.tamper = lambda src, d: (
        None if w.decode_message(d).header.exchange == w.ExchangeType.IKE_AUTH else d
    )
    btns_pair.initiate()
    btns_pair.pump()
    assert btns_pair.b.half_open_count == 1
    btns_pair.advance(31)
    (fb,) = btns_pair.of(IkeSaFailed, "b")
    assert isinstance(fb, IkeSaFailed) and fb.reason is FailureReason.HALF_OPEN_TIMEOUT
    assert btns_pair.b.half_open_count == 0


# -- retransmission -----------------------------------------------------------------------------


def test_lost_response_is_resent_from_cache(btns_pair: Pair) -> None:
    dropped = []

    def drop_first_auth_response(src: object, data: bytes) -> bytes | None:
        m = w.decode_message(data)
        if m.header.exchange == w.ExchangeType.IKE_AUTH and m.header.is_response and not dropped:
            dropped.append(data)
            return None
        return data

    btns_pair.tamper = drop_first_auth_response  # type: ignore[assignment]
    sa = btns_pair.initiate()
    btns_pair.pump()
    assert sa.state is IkeState.AUTH_SENT
    btns_pair.advance(1.0)
    assert sa.state is IkeState.ESTABLISHED
    assert sa.stats.retransmits == 1
    (bsa,) = btns_pair.b.sas
    assert bsa.stats.responses_resent == 1
    assert len(btns_pair.of(ChildSaEstablished, "b")) == 1  # processed once


def test_lost_init_response_is_resent(btns_pair: Pair) -> None:
    dropped: list[bytes] = []

    def drop(src: object, data: bytes) -> bytes | None:
        m = w.decode_message(data)
        if m.header.exchange == w.ExchangeType.IKE_SA_INIT and m.header.is_response and not dropped:
            dropped.append(data)
            return None
        return data

    btns_pair.tamper = drop  # type: ignore[assignment]
    sa = btns_pair.initiate()
    btns_pair.pump()
    btns_pair.advance(1.0)
    assert sa.state is IkeState.ESTABLISHED and len(btns_pair.b.sas) == 1


def test_retransmit_with_backoff_then_timeout(btns_pair: Pair) -> None:
    btns_pair.tamper = lambda src, d: None
    sa = btns_pair.initiate()
    start = btns_pair.now
    sent: list[float] = []
    btns_pair.pump()
    while not sa.finished:
        t = sa.get_timer()
        assert t is not None
        btns_pair.now = t
        btns_pair.a.handle_timer(t)
        if btns_pair.a.datagrams_to_send(t):
            sent.append(t - start)
    assert sent == [1.0, 3.0, 7.0, 15.0, 31.0]
    assert btns_pair.now - start == 63.0
    btns_pair.pump()
    (fa,) = btns_pair.of(IkeSaFailed, "a")
    assert isinstance(fa, IkeSaFailed) and fa.reason is FailureReason.TIMEOUT
    assert not btns_pair.a.sas


# -- tampering ----------------------------------------------------------------------------------


def test_tampered_sk_is_dropped_and_counted_then_retransmission_succeeds(btns_pair: Pair) -> None:
    hit: list[int] = []

    def flip(src: object, data: bytes) -> bytes:
        m = w.decode_message(data)
        if m.header.exchange == w.ExchangeType.IKE_AUTH and not m.header.is_response and not hit:
            hit.append(1)
            b = bytearray(data)
            b[-5] ^= 0x40
            return bytes(b)
        return data

    btns_pair.tamper = flip  # type: ignore[assignment]
    sa = btns_pair.initiate()
    btns_pair.pump()
    (bsa,) = btns_pair.b.sas
    assert bsa.stats.integrity_failures == 1 and bsa.state is IkeState.HALF_OPEN
    btns_pair.advance(1.0)
    assert sa.state is IkeState.ESTABLISHED and bsa.state is IkeState.ESTABLISHED


@pytest.mark.parametrize("cut", [1, 10, 17, 40])
def test_truncated_sk_never_raises(btns_pair: Pair, cut: int) -> None:
    sa = btns_pair.initiate()
    btns_pair.pump()
    assert sa.state is IkeState.ESTABLISHED
    sa.check_liveness(btns_pair.now)
    ((data, _),) = sa.datagrams_to_send(btns_pair.now)
    short = bytearray(data[:-cut])
    short[24:28] = len(short).to_bytes(4, "big")
    btns_pair.b.receive_datagram(bytes(short), (A_ADDR, 500), btns_pair.now)
    (bsa,) = btns_pair.b.sas
    assert bsa.stats.integrity_failures + bsa.stats.decode_errors + btns_pair.b.stats.decode_errors >= 1
    assert bsa.state is IkeState.ESTABLISHED
    btns_pair.b.receive_datagram(data, (A_ADDR, 500), btns_pair.now)  # the real one still works
    btns_pair.pump()
    assert sa.state is IkeState.ESTABLISHED and sa._pending is None


def test_unauthenticated_delete_does_not_touch_an_established_sa(btns_pair: Pair) -> None:
    sa = btns_pair.initiate()
    btns_pair.pump()
    (bsa,) = btns_pair.b.sas
    forged = w.encode_message(
        w.Header(sa.spi_i, sa.spi_r, 0, w.ExchangeType.INFORMATIONAL, w.Flags.INITIATOR, 2),
        [w.EncryptedPayload(w.PayloadType.DELETE, bytes(48))],
    )
    btns_pair.b.receive_datagram(forged, (A_ADDR, 500), btns_pair.now)
    assert bsa.state is IkeState.ESTABLISHED and bsa.stats.integrity_failures == 1


# -- delete, liveness ---------------------------------------------------------------------------


def _established(p: Pair) -> IkeSa:
    sa = p.initiate()
    p.pump()
    assert sa.state is IkeState.ESTABLISHED
    return sa


def test_delete_ike_sa_from_initiator(btns_pair: Pair) -> None:
    sa = _established(btns_pair)
    sa.delete(btns_pair.now)
    btns_pair.a.poll(sa, btns_pair.now)
    btns_pair.pump()
    assert sa.state is IkeState.CLOSED
    assert btns_pair.of(IkeSaDeleted, "a") == [IkeSaDeleted(sa.ref, by_peer=False)]
    assert btns_pair.of(IkeSaDeleted, "b") == [IkeSaDeleted(sa.ref, by_peer=True)]
    assert len(btns_pair.of(ChildSaDeleted, "a")) == len(btns_pair.of(ChildSaDeleted, "b")) == 1
    assert not btns_pair.a.sas and not btns_pair.b.sas


def test_delete_ike_sa_from_responder(btns_pair: Pair) -> None:
    sa = _established(btns_pair)
    (bsa,) = btns_pair.b.sas
    bsa.delete(btns_pair.now)
    btns_pair.b.poll(bsa, btns_pair.now)
    btns_pair.pump()
    assert sa.state is IkeState.CLOSED and bsa.state is IkeState.CLOSED
    assert btns_pair.of(IkeSaDeleted, "a") == [IkeSaDeleted(sa.ref, by_peer=True)]


@pytest.mark.parametrize("side", ["a", "b"])
def test_delete_child_both_ways(btns_pair: Pair, side: str) -> None:
    sa = _established(btns_pair)
    (bsa,) = btns_pair.b.sas
    who, disp = (sa, btns_pair.a) if side == "a" else (bsa, btns_pair.b)
    (spi,) = who.children
    who.delete_child(spi, btns_pair.now)
    disp.poll(who, btns_pair.now)
    btns_pair.pump()
    assert not sa.children and not bsa.children
    (da,) = btns_pair.of(ChildSaDeleted, "a")
    (db,) = btns_pair.of(ChildSaDeleted, "b")
    assert isinstance(da, ChildSaDeleted) and isinstance(db, ChildSaDeleted)
    assert da.spi_in == db.spi_out and da.by_peer == (side == "b") and db.by_peer == (side == "a")
    assert sa.state is bsa.state is IkeState.ESTABLISHED


def test_liveness_answered(btns_pair: Pair) -> None:
    sa = _established(btns_pair)
    sa.check_liveness(btns_pair.now)
    btns_pair.a.poll(sa, btns_pair.now)
    btns_pair.pump()
    assert sa._pending is None and sa.state is IkeState.ESTABLISHED


def test_dead_peer_fails_the_sa_and_its_children(btns_pair: Pair) -> None:
    sa = _established(btns_pair)
    btns_pair.tamper = lambda src, d: None
    sa.check_liveness(btns_pair.now)
    btns_pair.a.poll(sa, btns_pair.now)
    btns_pair.advance(100)
    (fa,) = btns_pair.of(IkeSaFailed, "a")
    assert isinstance(fa, IkeSaFailed) and fa.reason is FailureReason.TIMEOUT
    assert len(btns_pair.of(ChildSaDeleted, "a")) == 1


def test_requests_queue_behind_the_window(btns_pair: Pair) -> None:
    sa = _established(btns_pair)
    sa.check_liveness(btns_pair.now)
    (spi,) = sa.children
    sa.delete_child(spi, btns_pair.now)
    btns_pair.a.poll(sa, btns_pair.now)
    assert len(btns_pair.wire) == 4
    btns_pair.pump()
    assert not sa.children and sa._pending is None


def test_local_misuse_raises_local_error(btns_pair: Pair) -> None:
    from rpclatch.ipsec.ike.errors import IkeLocalError

    sa = btns_pair.initiate()
    with pytest.raises(IkeLocalError):
        sa.delete(btns_pair.now)
    with pytest.raises(IkeLocalError):
        sa.check_liveness(btns_pair.now)
    btns_pair.pump()
    with pytest.raises(IkeLocalError):
        sa.delete_child(12345, btns_pair.now)


def test_transition_table_is_closed() -> None:
    assert all(isinstance(k[0], IkeState) and isinstance(v, IkeState) for k, v in TRANSITIONS.items())
    assert not any(k[0] in (IkeState.CLOSED, IkeState.FAILED) for k in TRANSITIONS)


def test_garbage_to_the_dispatcher_never_raises(btns_pair: Pair) -> None:
    sa = _established(btns_pair)
    junk = [
        b"",
        b"\0" * 27,
        b"\xff" * 28,
        sa.spi_i.to_bytes(8, "big") + sa.spi_r.to_bytes(8, "big") + b"\x2e\x20\x25\x08" + bytes(8),
    ]
    for j in junk:
        btns_pair.b.receive_datagram(j, (ipaddress.IPv4Address("198.51.100.7"), 500), btns_pair.now)
    assert sa.state is IkeState.ESTABLISHED


def test_suite_order_of_the_init_puts_the_ke_group_first() -> None:
    assert isinstance(GCM_X25519, IkeSuite) and GCM_X25519.dh == 31


# -- INITIAL_CONTACT ---------------------------------------------------------------------------


def _restart_a(p: Pair, initial_contact: bool) -> IkeSa:
    """A forgets everything (a reboot) and connects again with the same configuration."""
    p.a = IkeDispatcher(p.a.config, p.a.local)
    sa = p.a.initiate(B, ChildRequest(Selector.for_flow(FLOW)), p.now, initial_contact=initial_contact)
    p.pump()
    assert sa.state is IkeState.ESTABLISHED
    return sa


def test_initial_contact_removes_the_stale_sa_of_the_same_key(btns_pair: Pair) -> None:
    old = _established(btns_pair)
    (b_old,) = btns_pair.b.sas
    btns_pair.events_b.clear()
    new = _restart_a(btns_pair, initial_contact=True)
    assert b_old.state is IkeState.CLOSED
    (est,) = btns_pair.of(IkeSaEstablished, "b")
    assert isinstance(est, IkeSaEstablished) and est.initial_contact and est.ike_sa == new.ref
    assert btns_pair.of(IkeSaDeleted, "b") == [IkeSaDeleted(old.ref, by_peer=True)]
    assert len(btns_pair.of(ChildSaDeleted, "b")) == 1
    assert [x.ref for x in btns_pair.b.sas] == [new.ref]


def test_without_initial_contact_the_old_sa_stays(btns_pair: Pair) -> None:
    _established(btns_pair)
    _restart_a(btns_pair, initial_contact=False)
    assert len(btns_pair.b.sas) == 2 and not btns_pair.of(IkeSaDeleted, "b")


def test_initial_contact_from_a_null_peer_only_triggers_a_liveness_check(
    make_pair: Callable[..., Pair],
) -> None:
    p = make_pair(make_config(None, null_pad(), A_POLICY), make_config(None, null_pad(), NFS_POLICY))
    old = _established(p)
    (b_old,) = p.b.sas
    _restart_a(p, initial_contact=True)
    assert b_old.state is IkeState.ESTABLISHED  # RFC 7619 §2.3: not deleted on the peer's word
    p.advance(100)  # the liveness check goes to the restarted A, which does not know that SA
    assert b_old.state is IkeState.FAILED
    (f,) = p.of(IkeSaFailed, "b")
    assert isinstance(f, IkeSaFailed) and f.ike_sa == old.ref and f.reason is FailureReason.TIMEOUT


def test_unknown_critical_payload_inside_sk_is_refused_with_its_type(btns_pair: Pair) -> None:
    sa = _established(btns_pair)
    (bsa,) = btns_pair.b.sas
    data = sa._seal(
        w.ExchangeType.INFORMATIONAL,
        sa._next_mid,
        [w.UnknownPayload(222, b"x", critical=True)],
        response=False,
    )
    btns_pair.b.receive_datagram(data, (A_ADDR, 500), btns_pair.now)
    ((out, _),) = btns_pair.b.datagrams_to_send(btns_pair.now)
    msg = w.decode_message(out)
    sk = msg.payloads[-1]
    assert isinstance(sk, w.EncryptedPayload) and msg.header.is_response
    assert sa.keys is not None
    from rpclatch.ipsec.ike.crypto import SkCipher

    inner = SkCipher.inbound(sa.keys, True).open(out, sk)
    assert inner == (w.NotifyPayload(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD, bytes((222,))),)
    assert bsa.state is IkeState.ESTABLISHED


def test_delete_waits_for_the_outstanding_request(btns_pair: Pair) -> None:
    """Window 1 (§2.3): a Delete asked for while a liveness check is out goes after its answer."""
    sa = _established(btns_pair)
    (bsa,) = btns_pair.b.sas
    sa.check_liveness(btns_pair.now)
    sa.delete(btns_pair.now)
    btns_pair.a.poll(sa, btns_pair.now)
    btns_pair.pump()
    assert sa.state is bsa.state is IkeState.CLOSED
    assert sa.stats.unexpected == bsa.stats.unexpected == 0 and sa.stats.retransmits == 0


# -- automatic liveness (IkeConfig.liveness_interval) -----------------------------------------


def _dpd_pair(keys: Keys, make_pair: Callable[..., Pair]) -> Pair:
    return make_pair(
        make_config(keys.a, key_pad(keys.b_spki), A_POLICY, liveness_interval=10.0),
        make_config(keys.b, btns_pad(), NFS_POLICY, liveness_interval=10.0),
    )


def test_idle_sas_check_liveness_and_stay_up(keys: Keys, make_pair: Callable[..., Pair]) -> None:
    p = _dpd_pair(keys, make_pair)
    sa = _established(p)
    (bsa,) = p.b.sas
    p.wire.clear()
    p.advance(10.5)
    infos = [w.decode_message(d).header for _, d in p.wire]
    assert infos and all(h.exchange == w.ExchangeType.INFORMATIONAL for h in infos)
    assert sum(1 for h in infos if not h.is_response) >= 1
    assert sa.state is bsa.state is IkeState.ESTABLISHED
    p.advance(100)
    assert sa.state is bsa.state is IkeState.ESTABLISHED


def test_idle_sa_with_a_dead_peer_fails(keys: Keys, make_pair: Callable[..., Pair]) -> None:
    p = _dpd_pair(keys, make_pair)
    sa = _established(p)
    p.tamper = lambda src, d: None
    p.advance(10 + 63 + 1)
    (fa,) = p.of(IkeSaFailed, "a")
    assert isinstance(fa, IkeSaFailed) and fa.reason is FailureReason.TIMEOUT and fa.ike_sa == sa.ref
    assert len(p.of(ChildSaDeleted, "a")) == 1


def test_ipv6_endpoints_and_selectors(keys: Keys) -> None:
    a6, b6 = ipaddress.IPv6Address("2001:db8::1"), ipaddress.IPv6Address("2001:db8::2")
    policy = (Selector(AddressRange.single(b6), None, IpProto.TCP, PortRange.single(2049)),)
    pa = IkeDispatcher(
        make_config(keys.a, key_pad(keys.b_spki), (Selector(AddressRange.single(a6)),)), (a6, 500)
    )
    pb = IkeDispatcher(make_config(keys.b, btns_pad(), policy), (b6, 500))
    p = Pair(pa, pb)
    flow = FiveTuple.of(a6, 40000, b6, 2049, IpProto.TCP)
    sa = pa.initiate((b6, 500), ChildRequest(Selector.for_flow(flow)), p.now)
    p.pump()
    assert sa.state is IkeState.ESTABLISHED
    (ea,) = p.of(IkeSaEstablished, "a")
    assert isinstance(ea, IkeSaEstablished) and not (ea.nat_local or ea.nat_remote)
    ca, cb = _children(p)
    assert ca.child.selector == Selector.for_flow(flow) and cb.child.selector == Selector.for_flow(
        flow.reversed()
    )


# -- ICMP port unreachable (an unauthenticated hint, RFC 7296 §2.4, §2.21.4) ----------------------


def _first_init(p: Pair) -> tuple[IkeSa, bytes]:
    sa = p.initiate()
    ((data, to),) = p.a.datagrams_to_send(p.now)
    assert to == B
    return sa, data


def test_port_unreachable_fails_an_unanswered_ike_sa_init(btns_pair: Pair) -> None:
    sa, data = _first_init(btns_pair)
    # the ICMP message quoted the whole datagram (a Linux host does): the SPI is ours
    assert btns_pair.a.peer_unreachable(B, data, btns_pair.now) == 1
    btns_pair.pump()
    (fa,) = btns_pair.of(IkeSaFailed, "a")
    assert isinstance(fa, IkeSaFailed) and fa.reason is FailureReason.UNREACHABLE and fa.ike_sa == sa.ref
    assert fa.reason is not FailureReason.TIMEOUT
    assert sa.state is IkeState.FAILED and not btns_pair.a.sas
    assert btns_pair.a.stats.unreachable_failed == 1
    # no retransmission follows, and no timer is left
    assert btns_pair.a.get_timer() is None
    btns_pair.advance(10)
    assert btns_pair.a.datagrams_to_send(btns_pair.now) == []


def test_port_unreachable_quoting_only_the_udp_header_fails_every_unanswered_init_to_it(
    btns_pair: Pair,
) -> None:
    first, _ = _first_init(btns_pair)
    second, _ = _first_init(btns_pair)
    # RFC 792's minimum quote: the IP header and 8 octets, the UDP header -- no IKE SPI
    assert btns_pair.a.peer_unreachable(B, b"", btns_pair.now) == 2
    assert first.state is second.state is IkeState.FAILED


def test_port_unreachable_is_ignored_unless_it_matches_our_spi_and_destination(btns_pair: Pair) -> None:
    sa, data = _first_init(btns_pair)
    other_spi = bytes(x ^ 0xFF for x in data[:8]) + data[8:]
    assert btns_pair.a.peer_unreachable(B, other_spi, btns_pair.now) == 0
    assert btns_pair.a.peer_unreachable((B_ADDR, 4500), data, btns_pair.now) == 0
    assert btns_pair.a.peer_unreachable((ipaddress.ip_address("192.0.2.9"), 500), b"", btns_pair.now) == 0
    assert sa.state is IkeState.INIT_SENT and btns_pair.a.stats.unreachable_ignored == 3
    # the negotiation carries on as if nothing happened
    btns_pair.b.receive_datagram(data, sa.local, btns_pair.now)
    btns_pair.pump()
    assert sa.state is IkeState.ESTABLISHED


def test_port_unreachable_never_ends_an_established_or_answered_sa(btns_pair: Pair) -> None:
    sa = btns_pair.initiate()
    btns_pair.pump()
    assert sa.state is IkeState.ESTABLISHED
    (bsa,) = btns_pair.b.sas
    spi = sa.spi_i.to_bytes(8, "big")
    assert btns_pair.a.peer_unreachable(B, spi, btns_pair.now) == 0
    assert btns_pair.a.peer_unreachable(B, b"", btns_pair.now) == 0
    # nor a responder's SA, whatever it quotes
    assert btns_pair.b.peer_unreachable(sa.local, spi, btns_pair.now) == 0
    btns_pair.pump()
    assert sa.state is IkeState.ESTABLISHED and bsa.state is IkeState.ESTABLISHED
    assert btns_pair.of(IkeSaFailed, "a") == [] and btns_pair.of(IkeSaFailed, "b") == []
    # AUTH_SENT: the responder answered IKE_SA_INIT from that address, so the ICMP is not believed
    btns_pair.tamper = lambda src, d: (
        None if w.decode_message(d).header.exchange == w.ExchangeType.IKE_AUTH else d
    )
    second = btns_pair.initiate()
    btns_pair.pump()
    assert second.state is IkeState.AUTH_SENT
    assert btns_pair.a.peer_unreachable(B, second.spi_i.to_bytes(8, "big"), btns_pair.now) == 0
    assert second.state is IkeState.AUTH_SENT


def test_port_unreachable_after_a_cookie_answer_is_ignored(
    keys: Keys, make_pair: Callable[..., Pair]
) -> None:
    p = make_pair(
        make_config(keys.a, key_pad(keys.b_spki), A_POLICY),
        make_config(keys.b, btns_pad(), NFS_POLICY),
        cookie_threshold=0,
    )
    sa, data = _first_init(p)
    p.b.receive_datagram(data, sa.local, p.now)
    ((cookie, _),) = p.b.datagrams_to_send(p.now)
    p.a.receive_datagram(cookie, B, p.now)
    ((retry, _),) = p.a.datagrams_to_send(p.now)
    # the responder has answered from B: an ICMP claiming nobody listens there is not believed
    assert sa.state is IkeState.INIT_SENT
    assert p.a.peer_unreachable(B, retry, p.now) == 0
    assert sa.state is IkeState.INIT_SENT
