"""rpclatch.ipsec.ike.negotiation: proposal choice as other implementations offer them, and
traffic-selector narrowing."""

from __future__ import annotations

import ipaddress

import pytest

from rpclatch.ipsec.ike import negotiation as neg
from rpclatch.ipsec.ike import wire as w
from rpclatch.ipsec.ike.errors import InvalidKePayload, NoProposalChosen, TsUnacceptable
from rpclatch.ipsec.model import (
    AES_GCM_128,
    AES_GCM_256,
    CHACHA20_POLY1305,
    AddressRange,
    CipherSuite,
    IpProto,
    PortRange,
    Selector,
)

T, TT = w.Transform, w.TransformType
GCM, CBC = w.EncrId.ENCR_AES_GCM_16, w.EncrId.ENCR_AES_CBC
V4 = ipaddress.IPv4Address


def _kl(tid: int, bits: int) -> w.Transform:
    return T.with_key_length(TT.ENCR, tid, bits)


def test_one_proposal_with_many_transforms_as_strongswan_sends() -> None:
    """One IKE proposal listing several of each type: we pick a combination we support."""
    offer = w.Proposal(
        1,
        w.ProtocolId.IKE,
        b"",
        (
            _kl(CBC, 128),
            _kl(CBC, 256),
            T(TT.INTEG, w.IntegId.AUTH_HMAC_SHA2_256_128),
            T(TT.INTEG, 2),
            T(TT.PRF, 7),
            T(TT.PRF, w.PrfId.PRF_HMAC_SHA2_256),
            T(TT.DH, 21),
            T(TT.DH, w.DhGroup.ECP_256),
        ),
    )
    answer, suite = neg.choose_ike_proposal([offer], neg.DEFAULT_IKE_SUITES)
    assert suite == neg.DEFAULT_IKE_SUITES[1]  # CBC-256 / SHA2-256 / ECP-256
    assert answer.number == 1 and len(answer.transforms) == 4
    assert neg.suite_of_ike_answer(answer, neg.DEFAULT_IKE_SUITES) == suite


def test_aead_proposal_with_integ_none_is_accepted_and_integ_other_is_not() -> None:
    ok = w.Proposal(1, 1, b"", (_kl(GCM, 256), T(TT.PRF, 5), T(TT.INTEG, 0), T(TT.DH, 31)))
    assert neg.choose_ike_proposal([ok], neg.DEFAULT_IKE_SUITES)[1] == neg.DEFAULT_IKE_SUITES[0]
    bad = w.Proposal(1, 1, b"", (_kl(GCM, 256), T(TT.PRF, 5), T(TT.INTEG, 12), T(TT.DH, 31)))
    with pytest.raises(NoProposalChosen):
        neg.choose_ike_proposal([bad], neg.DEFAULT_IKE_SUITES[:1])


def test_wrong_key_length_is_no_proposal() -> None:
    offer = w.Proposal(1, 1, b"", (_kl(GCM, 192), T(TT.PRF, 5), T(TT.DH, 31)))
    with pytest.raises(NoProposalChosen):
        neg.choose_ike_proposal([offer], neg.DEFAULT_IKE_SUITES)


def test_answer_we_did_not_offer_is_refused() -> None:
    answer = w.Proposal(1, 1, b"", (_kl(GCM, 128), T(TT.PRF, 5), T(TT.DH, 31)))
    with pytest.raises(NoProposalChosen):
        neg.suite_of_ike_answer(answer, neg.DEFAULT_IKE_SUITES)


def test_answer_with_one_transform_with_and_without_key_length_is_refused() -> None:
    # the same ENCR once with and once without a key length: refused (it used to raise TypeError
    # comparing None with an int)
    answer = w.Proposal(1, 1, b"", (_kl(GCM, 256), T(TT.ENCR, GCM), T(TT.PRF, 5), T(TT.DH, 31)))
    with pytest.raises(NoProposalChosen):
        neg.suite_of_ike_answer(answer, neg.DEFAULT_IKE_SUITES)


def _esp(*transforms: w.Transform) -> w.Proposal:
    return w.Proposal(1, w.ProtocolId.ESP, b"\x00\x00\x12\x34", transforms)


def test_esp_with_both_esn_values_and_two_key_lengths() -> None:
    offer = _esp(_kl(GCM, 128), _kl(GCM, 256), T(TT.ESN, 1), T(TT.ESN, 0))
    answer, suite, peer_spi, group = neg.choose_esp_proposal([offer], (AES_GCM_256, AES_GCM_128), 0x5678)
    assert suite == AES_GCM_256 and peer_spi == 0x1234 and group is None
    assert answer.spi == (0x5678).to_bytes(4, "big")
    assert neg.esp_answer_suite(answer, (AES_GCM_256,)) == (AES_GCM_256, 0x5678)


CHACHA = w.EncrId.ENCR_CHACHA20_POLY1305


def test_esp_chacha20_poly1305_has_no_key_length_and_is_chosen_in_the_offer_order() -> None:
    """RFC 7634 §2: ENCR_CHACHA20_POLY1305 (28) carries no Key Length attribute; KEYMAT is 36
    octets per direction (32 key + 4 salt), as for AES-GCM-256."""
    (offer,) = neg.esp_proposals([CHACHA20_POLY1305], 0x1234)
    (encr,) = [t for t in offer.transforms if t.transform_type == TT.ENCR]
    assert (encr.transform_id, encr.attributes) == (28, ())
    # a responder that prefers AES-GCM but also does ChaCha20: the initiator's only proposal wins
    answer, suite, _, _ = neg.choose_esp_proposal([offer], (AES_GCM_256, CHACHA20_POLY1305), 0x5678)
    assert suite == CHACHA20_POLY1305
    assert neg.esp_answer_suite(answer, (CHACHA20_POLY1305,)) == (CHACHA20_POLY1305, 0x5678)
    # offered first among several proposals: chosen first
    offers = neg.esp_proposals([CHACHA20_POLY1305, AES_GCM_256], 1)
    assert neg.choose_esp_proposal(offers, (AES_GCM_256, CHACHA20_POLY1305), 2)[1] == CHACHA20_POLY1305
    # a responder without it: no proposal chosen
    with pytest.raises(NoProposalChosen):
        neg.choose_esp_proposal([offer], (AES_GCM_256, AES_GCM_128), 1)
    # ChaCha20 with a key length is not RFC 7634's transform
    with pytest.raises(NoProposalChosen):
        neg.choose_esp_proposal([_esp(_kl(CHACHA, 256), T(TT.ESN, 0))], (CHACHA20_POLY1305,), 1)
    # the answer must be the transform we offered
    with pytest.raises(NoProposalChosen):
        neg.esp_answer_suite(answer, (AES_GCM_256,))


def test_esp_suites_the_core_cannot_negotiate_are_refused_at_configuration() -> None:
    for suite in (
        CipherSuite("chacha20-poly1305", 128),
        CipherSuite("aes-gcm-16", 192),
        CipherSuite("aes-ccm-16", 128),
    ):
        with pytest.raises(ValueError):
            neg.esp_encr(suite)


def test_esp_esn_only_is_refused() -> None:
    with pytest.raises(NoProposalChosen):
        neg.choose_esp_proposal([_esp(_kl(GCM, 256), T(TT.ESN, 1))], (AES_GCM_256,), 1)


def test_esp_pfs_group_choice() -> None:
    pfs = _esp(_kl(GCM, 256), T(TT.DH, 19), T(TT.DH, 31), T(TT.ESN, 0))
    # no KE: a proposal that requires one is not acceptable
    with pytest.raises(NoProposalChosen):
        neg.choose_esp_proposal([pfs], (AES_GCM_256,), 1)
    # KE in one of the offered groups: chosen, with that group in the answer
    answer, _, _, group = neg.choose_esp_proposal([pfs], (AES_GCM_256,), 1, ke_group=19)
    assert group == 19 and any(t.transform_type == TT.DH and t.transform_id == 19 for t in answer.transforms)
    # KE in another group: INVALID_KE_PAYLOAD naming a group of the proposal we can do
    with pytest.raises(InvalidKePayload) as e:
        neg.choose_esp_proposal([pfs], (AES_GCM_256,), 1, ke_group=14)
    assert e.value.group == 31
    # a proposal allowing NONE as well is fine without a KE
    either = _esp(_kl(GCM, 256), T(TT.DH, 0), T(TT.DH, 31))
    assert neg.choose_esp_proposal([either], (AES_GCM_256,), 1)[3] is None


def test_esp_answer_with_an_unrequested_group_is_refused() -> None:
    answer = neg.esp_proposals([AES_GCM_256], 7, dh=31)[0]
    with pytest.raises(NoProposalChosen):
        neg.esp_answer_suite(answer, (AES_GCM_256,))
    assert neg.esp_answer_suite(answer, (AES_GCM_256,), 31) == (AES_GCM_256, 7)


# -- narrowing ---------------------------------------------------------------------------------

B = AddressRange.single("192.0.2.2")
POLICY = (Selector(B, None, IpProto.TCP, PortRange.single(2049)),)


def _ts(proto: int, lo: int, hi: int, a: str, b: str) -> w.TrafficSelector:
    return w.TrafficSelector(proto, lo, hi, V4(a), V4(b))


def test_narrowing_takes_the_first_intersecting_pair() -> None:
    theirs = [_ts(0, 0, 65535, "0.0.0.0", "255.255.255.255")]
    ours = [_ts(17, 0, 65535, "192.0.2.2", "192.0.2.2"), _ts(0, 0, 65535, "192.0.2.0", "192.0.2.255")]
    r = neg.narrow(theirs, ours, POLICY)
    assert r.narrowed
    assert r.selector == Selector(B, AddressRange.network("0.0.0.0/0"), IpProto.TCP, PortRange.single(2049))


def test_narrowing_pins_an_unauthenticated_peer_to_its_address() -> None:
    theirs = [_ts(6, 0, 65535, "192.0.2.0", "192.0.2.255")]
    ours = [_ts(6, 2049, 2049, "192.0.2.2", "192.0.2.2")]
    r = neg.narrow(theirs, ours, POLICY, peer_addr=V4("192.0.2.1"))
    assert r.selector.remote == AddressRange.single("192.0.2.1")
    with pytest.raises(TsUnacceptable):
        neg.narrow(
            [_ts(6, 0, 65535, "198.51.100.0", "198.51.100.9")], ours, POLICY, peer_addr=V4("192.0.2.1")
        )


def test_different_protocols_in_tsi_and_tsr_do_not_intersect() -> None:
    with pytest.raises(TsUnacceptable):
        neg.narrow(
            [_ts(17, 0, 65535, "192.0.2.1", "192.0.2.1")],
            [_ts(6, 2049, 2049, "192.0.2.2", "192.0.2.2")],
            POLICY,
        )


def test_selector_ts_roundtrip() -> None:
    sel = Selector(
        B, AddressRange.network("198.51.100.0/24"), IpProto.UDP, PortRange(1, 9), PortRange.single(53)
    )
    ours, theirs = neg.selector_to_ts(sel)
    assert neg.ts_to_selector(ours, theirs) == sel
    assert neg.contains(Selector(B, None), sel) and not neg.contains(sel, Selector(B, None))
