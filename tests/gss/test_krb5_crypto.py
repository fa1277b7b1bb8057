"""The AES Kerberos crypto of rpclatch.gss.krb5 against the published test vectors: n-fold
(RFC 3961 Appendix A.1), AES-CTS (RFC 3962 Appendix B), AES DK through string-to-key (RFC 3962
Appendix B: the PBKDF2 output and the key after ``DK(tkey, "kerberos")``), and key derivation,
encryption and checksums of the SHA-2 enctypes (RFC 8009 Appendix A)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpclatch.gss.krb5.cts import AesCts, CtsError
from rpclatch.gss.krb5.enctypes import ENCTYPES, IntegrityError, UnsupportedEnctype, UsageKeys, enctype
from rpclatch.gss.krb5.kdf import dk, kdf_hmac_sha2, nfold


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize(
    "data, bits, expected",
    [
        (b"012345", 64, "be072631276b1955"),
        (b"password", 56, "78a07b6caf85fa"),
        (b"Rough Consensus, and Running Code", 64, "bb6ed30870b7f0e0"),
        (b"password", 168, "59e4a8ca7c0385c3c37b3f6d2000247cb6e6bd5b3e"),
        (b"MASSACHVSETTS INSTITVTE OF TECHNOLOGY", 192, "db3b0d8f0b061e603282b308a50841229ad798fab9540c1b"),
        (b"Q", 168, "518a54a215a8452a518a54a215a8452a518a54a215"),
        (b"ba", 168, "fb25d531ae8974499f52fd92ea9857c4ba24cf297e"),
        (b"kerberos", 64, "6b65726265726f73"),
        (b"kerberos", 128, "6b65726265726f737b9b5b2b93132b93"),
        (b"kerberos", 168, "8372c236344e5f1550cd0747e15d62ca7a5a3bcea4"),
        (b"kerberos", 256, "6b65726265726f737b9b5b2b93132b935c9bdcdad95c9899c4cae4dee6d6cae4"),
    ],
)
def test_nfold_rfc3961_a1(data: bytes, bits: int, expected: str) -> None:
    assert nfold(data, bits // 8) == h(expected)


# RFC 3962 Appendix B: key "chicken teriyaki", zero IV.
CTS_KEY = b"chicken teriyaki"
CTS_PLAIN = b"I would like the General Gau's Chicken, please, and wonton soup."
CTS_VECTORS = [
    (17, "c6353568f2bf8cb4d8a580362da7ff7f97"),
    (31, "fc00783e0efdb2c1d445d4c8eff7ed2297687268d6ecccc0c07b25e25ecfe5"),
    (32, "39312523a78662d5be7fcbcc98ebf5a897687268d6ecccc0c07b25e25ecfe584"),
    (47, "97687268d6ecccc0c07b25e25ecfe584b3fffd940c16a18c1b5549d2f838029e39312523a78662d5be7fcbcc98ebf5"),
    (48, "97687268d6ecccc0c07b25e25ecfe5849dad8bbb96c4cdc03bc103e1a194bbd839312523a78662d5be7fcbcc98ebf5a8"),
    (
        64,
        "97687268d6ecccc0c07b25e25ecfe58439312523a78662d5be7fcbcc98ebf5a8"
        "4807efe836ee89a526730dbc2f7bc8409dad8bbb96c4cdc03bc103e1a194bbd8",
    ),
]


@pytest.mark.parametrize("length, expected", CTS_VECTORS)
def test_aes_cts_rfc3962_appendix_b(length: int, expected: str) -> None:
    cts = AesCts(CTS_KEY)
    assert cts.encrypt(CTS_PLAIN[:length]) == h(expected)
    assert cts.decrypt(h(expected)) == CTS_PLAIN[:length]


def test_aes_cts_one_key_many_messages() -> None:
    """The OpenSSL contexts are reused across messages: each must still start at the zero IV."""
    cts = AesCts(CTS_KEY)
    for _ in range(2):
        for length, expected in CTS_VECTORS + CTS_VECTORS[::-1]:
            assert cts.encrypt(CTS_PLAIN[:length]) == h(expected)
            assert cts.decrypt(h(expected)) == CTS_PLAIN[:length]
    for n in (0, 1, 16, 17, 40):
        confounder, sealed = cts.encrypt_confounded(CTS_PLAIN[:n])
        assert AesCts(CTS_KEY).decrypt(sealed) == confounder + CTS_PLAIN[:n]
        assert cts.decrypt(cts.encrypt_confounded_blind(CTS_PLAIN[:n]))[16:] == CTS_PLAIN[:n]


@given(st.binary(min_size=16, max_size=200))
def test_aes_cts_round_trips_every_length(plain: bytes) -> None:
    cts = AesCts(bytes(range(32)))
    sealed = cts.encrypt(plain)
    assert len(sealed) == len(plain)
    assert cts.decrypt(sealed) == plain


def test_aes_cts_refuses_less_than_a_block() -> None:
    with pytest.raises(CtsError):
        AesCts(CTS_KEY).encrypt(b"short")
    with pytest.raises(CtsError):
        AesCts(CTS_KEY).decrypt(b"short")


# RFC 3962 Appendix B string-to-key: tkey = PBKDF2-HMAC-SHA1(pass, salt, iterations), key =
# DK(tkey, "kerberos") -- a known answer for the AES DK of both key sizes.
@pytest.mark.parametrize(
    "iterations, key128, key256",
    [
        (
            1,
            "42263c6e89f4fc28b8df68ee09799f15",
            "fe697b52bc0d3ce14432ba036a92e65bbb52280990a2fa27883998d72af30161",
        ),
        (
            2,
            "c651bf29e2300ac27fa469d693bdda13",
            "a2e16d16b36069c135d5e9d2e25f896102685618b95914b467c67622225824ff",
        ),
        (
            1200,
            "4c01cd46d632d01e6dbe230a01ed642a",
            "55a6ac740ad17b4846941051e1e8b0a7548d93b0ab30a8bc3ff16280382b8c2a",
        ),
    ],
)
def test_aes_dk_rfc3962_string_to_key(iterations: int, key128: str, key256: str) -> None:
    for size, expected in ((16, key128), (32, key256)):
        tkey = hashlib.pbkdf2_hmac("sha1", b"password", b"ATHENA.MIT.EDUraeburn", iterations, size)
        assert dk(tkey, b"kerberos") == h(expected)


SHA256_BASE = h("3705D96080C17728A0E800EAB6E0D23C")
SHA384_BASE = h("6D404D37FAF79F9DF0D33568D3206698 00EB4836472EA8A026D16B7182460C52")


@pytest.mark.parametrize(
    "number, base, kc, ke, ki",
    [
        (
            19,
            SHA256_BASE,
            "B31A018A48F54776F403E9A396325DC3",
            "9B197DD1E8C5609D6E67C3E37C62C72E",
            "9FDA0E56AB2D85E1569A688696C26A6C",
        ),
        (
            20,
            SHA384_BASE,
            "EF5718BE86CC84963D8BBB5031E9F5C4BA41F28FAF69E73D",
            "56AB22BEE63D82D7BC5227F6773F8EA7A5EB1C825160C38312980C442E5C7E49",
            "69B16514E3CD8E56B82010D5C73012B622C4D00FFC23ED1F",
        ),
    ],
)
def test_sha2_key_derivation_rfc8009(number: int, base: bytes, kc: str, ke: str, ki: str) -> None:
    e = enctype(number)
    assert e.derive(base, 2, 0x99) == h(kc)
    assert e.derive(base, 2, 0xAA) == h(ke)
    assert e.derive(base, 2, 0x55) == h(ki)


PLAINS = [
    "",
    "000102030405",
    "000102030405060708090A0B0C0D0E0F",
    "000102030405060708090A0B0C0D0E0F1011121314",
]
SHA2_ENCRYPTIONS = [
    (
        19,
        SHA256_BASE,
        0,
        "7E5895EAF2672435BAD817F545A37148",
        "EF85FB890BB8472F4DAB20394DCA781DAD877EDA39D50C870C0D5A0A8E48C718",
    ),
    (
        19,
        SHA256_BASE,
        1,
        "7BCA285E2FD4130FB55B1A5C83BC5B24",
        "84D7F30754ED987BAB0BF3506BEB09CFB55402CEF7E6877CE99E247E52D16ED4421DFDF8976C",
    ),
    (
        19,
        SHA256_BASE,
        2,
        "56AB21713FF62C0A1457200F6FA9948F",
        "3517D640F50DDC8AD3628722B3569D2AE07493FA8263254080EA65C1008E8FC295FB4852E7D83E1E7C48C37EEBE6B0D3",
    ),
    (
        19,
        SHA256_BASE,
        3,
        "A7A4E29A4728CE10664FB64E49AD3FAC",
        "720F73B18D9859CD6CCB4346115CD336C70F58EDC0C4437C5573544C31C813BCE1E6D072C186B39A413C2F92CA9B8334A287FFCBFC",
    ),
    (
        20,
        SHA384_BASE,
        0,
        "F764E9FA15C276478B2C7D0C4E5F58E4",
        "41F53FA5BFE7026D91FAF9BE959195A058707273A96A40F0A01960621AC612748B9BBFBE7EB4CE3C",
    ),
    (
        20,
        SHA384_BASE,
        1,
        "B80D3251C1F6471494256FFE712D0B9A",
        "4ED7B37C2BCAC8F74F23C1CF07E62BC7B75FB3F637B9F559C7F664F69EAB7B6092237526EA0D1F61CB20D69D10F2",
    ),
    (
        20,
        SHA384_BASE,
        2,
        "53BF8A0D105265D4E276428624CE5E63",
        "BC47FFEC7998EB91E8115CF8D19DAC4BBBE2E163E87DD37F49BECA92027764F68CF51F14D798C2273F35DF574D1F932E40C4FF255B36A266",
    ),
    (
        20,
        SHA384_BASE,
        3,
        "763E65367E864F02F55153C7E3B58AF1",
        "40013E2DF58E8751957D2878BCD2D6FE101CCFD556CB1EAE79DB3C3EE86429F2B2A602AC86FEF6ECB647D6295FAE077A1FEB517508D2C16B4192E01F62",
    ),
]


@pytest.mark.parametrize("number, base, plain, confounder, cipher", SHA2_ENCRYPTIONS)
def test_sha2_encryption_rfc8009(number: int, base: bytes, plain: int, confounder: str, cipher: str) -> None:
    keys = UsageKeys(enctype(number), base, 2)
    assert keys.encrypt(h(PLAINS[plain]), h(confounder)) == h(cipher)
    assert keys.decrypt(h(cipher)) == h(PLAINS[plain])


@pytest.mark.parametrize(
    "number, base, expected",
    [
        (19, SHA256_BASE, "D78367186643D67B411CBA9139FC1DEE"),
        (20, SHA384_BASE, "45EE791567EEFCA37F4AC1E0222DE80D43C3BFA06699672A"),
    ],
)
def test_sha2_checksum_rfc8009(number: int, base: bytes, expected: str) -> None:
    assert UsageKeys(enctype(number), base, 2).checksum(h(PLAINS[3])) == h(expected)


def test_sha1_checksum_is_the_truncated_hmac_under_dk() -> None:
    """No RFC vector covers the SHA-1 checksum; its definition (RFC 3961 §5.3) restated."""
    import hmac

    key = bytes(range(32))
    kc = dk(key, (23).to_bytes(4, "big") + b"\x99")
    assert (
        UsageKeys(enctype(18), key, 23).checksum(b"body", b"tail")
        == hmac.digest(kc, b"bodytail", "sha1")[:12]
    )


@pytest.mark.parametrize("number", sorted(ENCTYPES))
@settings(max_examples=30)
@given(plain=st.binary(max_size=100), flip=st.integers(min_value=0))
def test_encryption_round_trips_and_rejects_any_flipped_bit(number: int, plain: bytes, flip: int) -> None:
    e = enctype(number)
    keys = UsageKeys(e, bytes(range(e.key_size)), 24)
    sealed = keys.encrypt(plain)
    assert len(sealed) == 16 + len(plain) + e.mac_size
    assert keys.decrypt(sealed) == plain
    bit = flip % (len(sealed) * 8)
    tampered = bytearray(sealed)
    tampered[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(IntegrityError):
        keys.decrypt(bytes(tampered))
    with pytest.raises(IntegrityError):
        keys.decrypt(sealed[: 16 + e.mac_size - 1])


def test_other_enctypes_are_unsupported_and_kdf_bounds() -> None:
    for number in (16, 23, 25, 26):
        with pytest.raises(UnsupportedEnctype):
            enctype(number)
    with pytest.raises(ValueError):
        enctype(18).derive(bytes(16), 1, 0x99)
    with pytest.raises(ValueError):
        kdf_hmac_sha2(bytes(16), b"x", 7, "sha256")
    with pytest.raises(ValueError):
        nfold(b"", 16)
