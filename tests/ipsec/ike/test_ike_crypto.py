"""rpclatch.ipsec.ike.crypto: known answers from independent sources, key layout, SK payload, AUTH."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from rpclatch.ipsec.ike import crypto as c
from rpclatch.ipsec.ike import wire as w
from rpclatch.ipsec.ike.errors import IkeDecodeError, IntegrityCheckFailed, InvalidKeyExchange

H = bytes.fromhex

# -- key exchange ------------------------------------------------------------------------------


def test_x25519_rfc7748_section_6_1() -> None:
    alice = c.DhPrivate.from_private_bytes(
        w.DhGroup.CURVE25519, H("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    )
    bob_pub = H("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    assert alice.public_bytes() == H("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert alice.shared_secret(bob_pub) == H(
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
    )


def test_ecp256_rfc5903_section_8_1() -> None:
    i = c.DhPrivate.from_private_bytes(
        w.DhGroup.ECP_256, H("C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433")
    )
    gi = H(
        "DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180"
        "5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3"
    )
    gr = H(
        "D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63"
        "56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB"
    )
    assert i.public_bytes() == gi  # RFC 5903 §7: x || y, no point-format octet
    assert i.shared_secret(gr) == H("D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE")


def test_modp2048_both_sides_agree_and_pad_to_the_modulus() -> None:
    a = c.DhPrivate.from_private_bytes(w.DhGroup.MODP_2048, (3).to_bytes(32, "big"))
    b = c.DhPrivate.from_private_bytes(w.DhGroup.MODP_2048, (5).to_bytes(32, "big"))
    assert a.public_bytes() == (8).to_bytes(256, "big")  # 2^3, padded to 256 octets
    assert (
        a.shared_secret(b.public_bytes()) == b.shared_secret(a.public_bytes()) == (2**15).to_bytes(256, "big")
    )


@pytest.mark.parametrize(
    ("group", "bad"),
    [
        (w.DhGroup.CURVE25519, bytes(31)),
        (w.DhGroup.CURVE25519, bytes(32)),  # all-zero shared secret (small-order point)
        (w.DhGroup.ECP_256, bytes(64)),  # not on the curve
        (w.DhGroup.ECP_256, bytes(65)),
        (w.DhGroup.MODP_2048, (1).to_bytes(256, "big")),
        (w.DhGroup.MODP_2048, (c.MODP_2048_P - 1).to_bytes(256, "big")),
    ],
)
def test_invalid_public_values_are_refused(group: w.DhGroup, bad: bytes) -> None:
    with pytest.raises(InvalidKeyExchange):
        c.DhPrivate(group).shared_secret(bad)


# -- PRF ---------------------------------------------------------------------------------------


def test_prf_hmac_sha256_rfc4231_test_cases_1_and_2() -> None:
    assert c.prf(5, b"\x0b" * 20, b"Hi There") == H(
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    )
    assert c.prf(5, b"Jefe", b"what do ya want for nothing?") == H(
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


def test_prf_plus_is_the_rfc7296_chain() -> None:
    k, s = b"key", b"seed"
    t1 = hmac.new(k, s + b"\x01", hashlib.sha256).digest()
    t2 = hmac.new(k, t1 + s + b"\x02", hashlib.sha256).digest()
    t3 = hmac.new(k, t2 + s + b"\x03", hashlib.sha256).digest()
    assert c.prf_plus(5, k, s, 70) == (t1 + t2 + t3)[:70]


def test_ike_keys_layout_gcm_and_cbc() -> None:
    ni, nr, g = b"N" * 32, b"R" * 32, b"G" * 32
    gcm = c.IkeSuite(w.EncrId.ENCR_AES_GCM_16, 256, 5, w.IntegId.NONE, 31)
    keys = c.derive_ike_keys(gcm, ni, nr, g, 1, 2)
    seed = c.prf(5, ni + nr, g)
    km = c.prf_plus(5, seed, ni + nr + (1).to_bytes(8, "big") + (2).to_bytes(8, "big"), 32 * 3 + 36 * 2)
    assert keys.sk_d == km[:32] and keys.sk_ai == keys.sk_ar == b""
    assert keys.sk_ei == km[32:68] and keys.sk_er == km[68:104]  # 32-octet key + 4-octet salt
    assert keys.sk_pi == km[104:136] and keys.sk_pr == km[136:168]
    cbc = c.IkeSuite(w.EncrId.ENCR_AES_CBC, 256, 5, w.IntegId.AUTH_HMAC_SHA2_256_128, 19)
    k2 = c.derive_ike_keys(cbc, ni, nr, g, 1, 2)
    assert [len(x) for x in (k2.sk_d, k2.sk_ai, k2.sk_ar, k2.sk_ei, k2.sk_er, k2.sk_pi, k2.sk_pr)] == [
        32,
        32,
        32,
        32,
        32,
        32,
        32,
    ]
    assert k2.sk_d == keys.sk_d  # same prf+ stream, first block


def test_child_keymat_order_initiator_to_responder_first() -> None:
    km = c.prf_plus(5, b"d" * 32, b"ni" + b"nr", 2 * 36)
    keys = c.derive_child_keys(5, b"d" * 32, b"ni", b"nr", 36, 0)
    assert keys.encr_i2r == km[:36] and keys.encr_r2i == km[36:]
    assert keys.integ_i2r == keys.integ_r2i == b""


# -- SK payload ---------------------------------------------------------------------------------

GCM_SUITE = c.IkeSuite(w.EncrId.ENCR_AES_GCM_16, 256, 5, w.IntegId.NONE, 31)
CBC_SUITE = c.IkeSuite(w.EncrId.ENCR_AES_CBC, 256, 5, w.IntegId.AUTH_HMAC_SHA2_256_128, 14)
INNER: tuple[w.Payload, ...] = (w.IdPayload(13, b""), w.AuthPayload(13, bytes(32)), w.NoncePayload(bytes(16)))
HDR = w.Header(1, 2, 0, w.ExchangeType.IKE_AUTH, w.Flags.INITIATOR, 1)


def _open(suite: c.IkeSuite, data: bytes) -> tuple[w.Payload, ...]:
    keys = c.derive_ike_keys(suite, b"n" * 32, b"m" * 32, b"g" * 32, 1, 2)
    msg = w.decode_message(data)
    sk = msg.payloads[-1]
    assert isinstance(sk, w.EncryptedPayload)
    return c.SkCipher.inbound(keys, initiator=False).open(data, sk)


@pytest.mark.parametrize("suite", [GCM_SUITE, CBC_SUITE])
def test_sk_roundtrip(suite: c.IkeSuite) -> None:
    keys = c.derive_ike_keys(suite, b"n" * 32, b"m" * 32, b"g" * 32, 1, 2)
    data = c.SkCipher.outbound(keys, initiator=True).seal(HDR, INNER)
    assert w.decode_message(data).header.length == len(data)
    assert _open(suite, data) == INNER


def test_sk_gcm_matches_rfc5282_construction() -> None:
    """Independent rebuild: nonce = salt || IV, AAD = header .. SK generic header, ICV 16."""
    keys = c.derive_ike_keys(GCM_SUITE, b"n" * 32, b"m" * 32, b"g" * 32, 1, 2)
    iv = bytes(range(8))
    data = c.SkCipher.outbound(keys, initiator=True).seal(HDR, INNER, iv=iv)
    first, plain = w.encode_payloads(list(INNER))
    aad = data[:32]
    assert aad[28] == first and data[32:40] == iv
    expect = AESGCM(keys.sk_ei[:32]).encrypt(keys.sk_ei[32:] + iv, plain + b"\0", aad)
    assert data[40:] == expect


@pytest.mark.parametrize("suite", [GCM_SUITE, CBC_SUITE])
def test_sk_tamper_anywhere_fails_integrity(suite: c.IkeSuite) -> None:
    keys = c.derive_ike_keys(suite, b"n" * 32, b"m" * 32, b"g" * 32, 1, 2)
    data = c.SkCipher.outbound(keys, initiator=True).seal(HDR, INNER)
    for i in (0, 20, 29, 33, len(data) // 2, len(data) - 1):
        bad = bytearray(data)
        bad[i] ^= 1
        try:
            msg = w.decode_message(bytes(bad))
        except IkeDecodeError:
            continue
        sk = msg.payloads[-1]
        assert isinstance(sk, w.EncryptedPayload)
        with pytest.raises(IntegrityCheckFailed):
            c.SkCipher.inbound(keys, initiator=False).open(bytes(bad), sk)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([GCM_SUITE, CBC_SUITE]), st.integers(0, 200), st.data())
def test_fuzz_truncated_or_mutated_sk_raises_only_typed_errors(
    suite: c.IkeSuite, cut: int, data: st.DataObject
) -> None:
    keys = c.derive_ike_keys(suite, b"n" * 32, b"m" * 32, b"g" * 32, 1, 2)
    raw = bytearray(c.SkCipher.outbound(keys, initiator=True).seal(HDR, INNER))
    raw = raw[: max(32, len(raw) - cut)]
    raw[24:28] = len(raw).to_bytes(4, "big")
    sk_len = len(raw) - 28
    raw[30:32] = sk_len.to_bytes(2, "big")
    if data.draw(st.booleans()):
        i = data.draw(st.integers(28, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    try:
        msg = w.decode_message(bytes(raw))
        sk = msg.payloads[-1]
        if isinstance(sk, w.EncryptedPayload):
            c.SkCipher.inbound(keys, initiator=False).open(bytes(raw), sk)
    except (IkeDecodeError, IntegrityCheckFailed):
        pass


# -- AUTH ---------------------------------------------------------------------------------------


def test_ed25519_and_ecdsa_signatures_verify_only_with_their_key() -> None:
    for key in (ed25519.Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP256R1())):
        other = ed25519.Ed25519PrivateKey.generate()
        data = c.sign(key, b"octets")
        assert c.verify(c.spki_of(key), data, b"octets")
        assert not c.verify(c.spki_of(key), data, b"octetz")
        assert not c.verify(c.spki_of(other), data, b"octets")
        assert not c.verify(c.spki_of(key), data[:-1], b"octets")
        assert not c.verify(b"not der", data, b"octets")
        assert not c.verify(c.spki_of(key), b"", b"octets")


@pytest.mark.parametrize(
    ("oid_der", "hash_alg"),
    [
        ("300a06082a8648ce3d040302", hashes.SHA256),
        ("300a06082a8648ce3d040303", hashes.SHA384),
        ("300a06082a8648ce3d040304", hashes.SHA512),
    ],
)
def test_ecdsa_p256_signatures_verify_with_each_announced_hash(oid_der: str, hash_alg: type) -> None:
    # RFC 7427 §4: we announce SHA2-256/384/512, so a peer may sign with any of them (libreswan's
    # initiator uses SHA2-512); the AUTH data is made here by cryptography directly, not by c.sign
    key = ec.generate_private_key(ec.SECP256R1())
    alg = H(oid_der)
    data = bytes((len(alg),)) + alg + key.sign(b"octets", ec.ECDSA(hash_alg()))
    assert c.verify(c.spki_of(key), data, b"octets")
    assert not c.verify(c.spki_of(key), data, b"octetz")
    # the hash named in the AlgorithmIdentifier is the one used: a SHA-384 signature labelled SHA-512 fails
    mislabelled = (
        bytes((len(alg),))
        + H("300a06082a8648ce3d040304" if hash_alg is not hashes.SHA512 else "300a06082a8648ce3d040302")
        + data[1 + len(alg) :]
    )
    assert not c.verify(c.spki_of(key), mislabelled, b"octets")


def test_rfc7427_auth_data_layout() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    data = c.sign(key, b"x")
    assert data[0] == 7 and data[1:8] == H("300506032b6570") and len(data) == 8 + 64
    ecd = c.sign(ec.generate_private_key(ec.SECP256R1()), b"x")
    assert ecd[0] == 12 and ecd[1:13] == H("300a06082a8648ce3d040302")


def test_shared_key_auth_formula() -> None:
    octets = b"m1" + b"nr" + c.prf(5, b"skp", b"\x0d\0\0\0")
    assert c.signed_octets(b"m1", b"nr", 5, b"skp", b"\x0d\0\0\0") == octets
    inner = hmac.new(b"skp", b"Key Pad for IKEv2", hashlib.sha256).digest()
    assert c.shared_key_auth(5, b"skp", octets) == hmac.new(inner, octets, hashlib.sha256).digest()


def test_nat_detection_hash() -> None:
    expect = hashlib.sha1(
        (1).to_bytes(8, "big") + bytes(8) + bytes([192, 0, 2, 1]) + (500).to_bytes(2, "big")
    )
    assert c.nat_detection_hash(1, 0, bytes([192, 0, 2, 1]), 500) == expect.digest()
