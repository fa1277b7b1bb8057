"""IKEv2 cryptography over ``cryptography``: key exchange, PRF and prf+, key derivation, the SK
payload, and the AUTH payload's signatures.

* Key exchange (RFC 7296 §3.4): group 31 Curve25519 (RFC 8031: 32-octet u-coordinate), group 19
  ECP-256 (RFC 5903 §7: x || y, the shared secret is x), group 14 MODP-2048 (RFC 3526; values and
  the shared secret padded to the modulus length, RFC 7296 §2.14). MODP is computed with Python's
  ``pow`` (``cryptography`` deprecates finite-field DH); it is not constant-time, which is why
  it is only offered for peers whose defaults need it.
* PRF_HMAC_SHA2_256/384/512 (RFC 4868) and prf+ (RFC 7296 §2.13).
* SKEYSEED and SK_d, SK_ai, SK_ar, SK_ei, SK_er, SK_pi, SK_pr (§2.14); an AEAD cipher has no SK_a*
  and its SK_e* carry the 4-octet salt after the key (RFC 5282 §7.1).
* CHILD_SA KEYMAT (§2.17): initiator->responder keys first; ESP AES-GCM-16 keys are key || 4-octet
  salt (RFC 4106 §8.1).
* SK payload (§3.14): AES-GCM-16 per RFC 5282 (8-octet explicit IV, nonce = salt || IV, AAD =
  IKE header through the SK generic header, 16-octet ICV) and AES-CBC + AUTH_HMAC_SHA2_256_128
  (random 16-octet IV, ICV = HMAC over the message up to the ICV, truncated to 16 octets).
* Signatures (RFC 7427): Ed25519 (RFC 8420, hash "identity") and ECDSA P-256 with SHA-256; the
  AUTH data is the ASN.1 length octet, the AlgorithmIdentifier DER, and the signature.

:class:`IkeKeys` is a plain record, so a test can build one from keys captured elsewhere (a
strongSwan log, a Wireshark IKEv2 decryption table) and open real messages with it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rpclatch.ipsec.ike.errors import IkeCryptoError, IntegrityCheckFailed, InvalidKeyExchange
from rpclatch.ipsec.ike.wire import (
    GENERIC_LEN,
    HEADER_LEN,
    DhGroup,
    EncrId,
    EncryptedPayload,
    Header,
    IntegId,
    Payload,
    PayloadType,
    PrfId,
    decode_payloads,
    encode_payloads,
)

# ---------------------------------------------------------------------------------------------
# key exchange

#: RFC 3526 §3, the 2048-bit MODP group (generator 2)
MODP_2048_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F"
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510"
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
#: private exponent size for MODP-2048 (twice the group's ~112-bit strength, with margin)
MODP_EXPONENT_BITS = 320


#: length of a KE payload's key-exchange data per group
KE_LENGTH = {DhGroup.CURVE25519: 32, DhGroup.ECP_256: 64, DhGroup.MODP_2048: 256}
#: the order of the P-256 base point (SEC 2 §2.4.2)
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

#: a source of random octets (``IkeConfig.entropy``): n -> n octets
Entropy = Callable[[int], bytes]


class DhPrivate:
    """One side's ephemeral key-exchange secret for ``group``, from ``entropy`` if given (else
    the library's / the OS's generator)."""

    def __init__(self, group: DhGroup, entropy: Entropy | None = None) -> None:
        self.group = group
        self._x: x25519.X25519PrivateKey | ec.EllipticCurvePrivateKey | int
        if entropy is None:
            if group is DhGroup.CURVE25519:
                self._x = x25519.X25519PrivateKey.generate()
            elif group is DhGroup.ECP_256:
                self._x = ec.generate_private_key(ec.SECP256R1())
            else:
                self._x = secrets.randbits(MODP_EXPONENT_BITS) | (1 << (MODP_EXPONENT_BITS - 1))
        elif group is DhGroup.CURVE25519:
            self._x = x25519.X25519PrivateKey.from_private_bytes(entropy(32))  # clamped by X25519
        elif group is DhGroup.ECP_256:
            while not (d := int.from_bytes(entropy(32), "big") % P256_ORDER):
                pass  # pragma: no cover - probability 2^-256
            self._x = ec.derive_private_key(d, ec.SECP256R1())
        else:
            x = int.from_bytes(entropy(MODP_EXPONENT_BITS // 8), "big")
            self._x = x | (1 << (MODP_EXPONENT_BITS - 1))

    @classmethod
    def from_private_bytes(cls, group: DhGroup, secret: bytes) -> DhPrivate:
        """A fixed secret (known-answer tests): 32-octet X25519 scalar, P-256 scalar, MODP exponent."""
        self = cls.__new__(cls)
        self.group = group
        if group is DhGroup.CURVE25519:
            self._x = x25519.X25519PrivateKey.from_private_bytes(secret)
        elif group is DhGroup.ECP_256:
            self._x = ec.derive_private_key(int.from_bytes(secret, "big"), ec.SECP256R1())
        else:
            self._x = int.from_bytes(secret, "big")
        return self

    def public_bytes(self) -> bytes:
        """The KE payload's data (RFC 7296 §3.4, RFC 5903 §7, RFC 8031 §2)."""
        k = self._x
        if isinstance(k, x25519.X25519PrivateKey):
            return k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        if isinstance(k, ec.EllipticCurvePrivateKey):
            point = k.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
            return point[1:]
        return pow(2, k, MODP_2048_P).to_bytes(256, "big")

    def shared_secret(self, peer: bytes) -> bytes:
        """g^ir; raises :class:`InvalidKeyExchange` for an invalid peer value."""
        if len(peer) != KE_LENGTH[self.group]:
            raise InvalidKeyExchange(f"KE data of {len(peer)} octets for group {self.group.value}")
        k = self._x
        try:
            if isinstance(k, x25519.X25519PrivateKey):
                return k.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
            if isinstance(k, ec.EllipticCurvePrivateKey):
                pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + peer)
                return k.exchange(ec.ECDH(), pub)
            y = int.from_bytes(peer, "big")
            if not 1 < y < MODP_2048_P - 1:
                raise InvalidKeyExchange("MODP public value out of range")
            return pow(y, k, MODP_2048_P).to_bytes(256, "big")
        except ValueError as e:
            raise InvalidKeyExchange(f"invalid public value for group {self.group.value}: {e}") from None


# ---------------------------------------------------------------------------------------------
# PRF and key derivation

_HASH_NAMES: dict[int, str] = {
    PrfId.PRF_HMAC_SHA2_256: "sha256",
    PrfId.PRF_HMAC_SHA2_384: "sha384",
    PrfId.PRF_HMAC_SHA2_512: "sha512",
}
PRF_KEY_LEN = {PrfId.PRF_HMAC_SHA2_256: 32, PrfId.PRF_HMAC_SHA2_384: 48, PrfId.PRF_HMAC_SHA2_512: 64}
_HASH_LEN: dict[int, int] = {int(k): v for k, v in PRF_KEY_LEN.items()}


def prf(prf_id: int, key: bytes, data: bytes) -> bytes:
    """PRF_HMAC_SHA2_* (RFC 4868 §2.1: HMAC with the full-length output)."""
    return hmac.digest(key, data, _HASH_NAMES[prf_id])


def prf_plus(prf_id: int, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ (RFC 7296 §2.13): T1 | T2 | ..., Tn = prf(K, Tn-1 | S | n), n < 256.

    The HMAC is keyed once and copied for each block (the key schedule is the same for all)."""
    blocks = -(-length // _HASH_LEN[prf_id])
    if blocks > 255:
        raise IkeCryptoError("prf+ asked for more than 255 blocks")
    keyed = hmac.new(key, digestmod=_HASH_NAMES[prf_id])
    out: list[bytes] = []
    t = b""
    for n in range(1, blocks + 1):
        h = keyed.copy()
        h.update(t + seed + bytes((n,)))
        t = h.digest()
        out.append(t)
    return b"".join(out)[:length]


def encr_key_len(encr: int, key_bits: int) -> int:
    """Octets of keying material for an encryption transform: AES-GCM adds a 4-octet salt."""
    base = key_bits // 8
    if encr in (EncrId.ENCR_AES_GCM_16, EncrId.ENCR_AES_GCM_12, EncrId.ENCR_AES_GCM_8):
        return base + 4
    return base


def is_aead(encr: int) -> bool:
    return encr in (EncrId.ENCR_AES_GCM_16, EncrId.ENCR_AES_GCM_12, EncrId.ENCR_AES_GCM_8)


INTEG_KEY_LEN = {IntegId.NONE: 0, IntegId.AUTH_HMAC_SHA2_256_128: 32}


@dataclass(frozen=True, slots=True)
class IkeSuite:
    """A negotiated IKE SA suite (one transform of each type, RFC 7296 §3.3)."""

    encr: int
    encr_bits: int
    prf: int
    integ: int
    dh: int

    def __str__(self) -> str:
        return _suite_name(self.encr, self.encr_bits, self.prf, self.integ, self.dh)


@functools.lru_cache(maxsize=64)
def _suite_name(encr: int, encr_bits: int, prf_id: int, integ: int, dh: int) -> str:
    integ_name = "" if integ == IntegId.NONE else f"/{IntegId(integ).name}"
    return f"{EncrId(encr).name}-{encr_bits}{integ_name}/{PrfId(prf_id).name}/{DhGroup(dh).name}"


@dataclass(frozen=True, slots=True)
class IkeKeys:
    """The seven IKE SA keys (RFC 7296 §2.14) and the suite that uses them."""

    suite: IkeSuite
    sk_d: bytes
    sk_ai: bytes
    sk_ar: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes


def skeyseed(prf_id: int, nonce_i: bytes, nonce_r: bytes, shared: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 §2.14)."""
    return prf(prf_id, nonce_i + nonce_r, shared)


def derive_ike_keys(
    suite: IkeSuite, nonce_i: bytes, nonce_r: bytes, shared: bytes, spi_i: int, spi_r: int
) -> IkeKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)."""
    seed = skeyseed(suite.prf, nonce_i, nonce_r, shared)
    return keys_from_skeyseed(suite, seed, nonce_i + nonce_r + struct.pack(">QQ", spi_i, spi_r))


def keys_from_skeyseed(suite: IkeSuite, seed: bytes, prf_seed: bytes) -> IkeKeys:
    prf_len = PRF_KEY_LEN[PrfId(suite.prf)]
    a = INTEG_KEY_LEN[IntegId(suite.integ)]
    e = encr_key_len(suite.encr, suite.encr_bits)
    km = prf_plus(suite.prf, seed, prf_seed, 3 * prf_len + 2 * a + 2 * e)
    parts: list[bytes] = []
    pos = 0
    for n in (prf_len, a, a, e, e, prf_len, prf_len):
        parts.append(km[pos : pos + n])
        pos += n
    return IkeKeys(suite, *parts)


def rekey_skeyseed(prf_id: int, old_sk_d: bytes, shared: bytes, nonce_i: bytes, nonce_r: bytes) -> bytes:
    """SKEYSEED of a rekeyed IKE SA = prf(SK_d (old), g^ir (new) | Ni | Nr) (RFC 7296 §2.18)."""
    return prf(prf_id, old_sk_d, shared + nonce_i + nonce_r)


@dataclass(frozen=True, slots=True)
class ChildKeys:
    """ESP keys of one CHILD_SA (RFC 7296 §2.17), per direction; ``*_integ`` empty for AEAD."""

    encr_i2r: bytes
    integ_i2r: bytes
    encr_r2i: bytes
    integ_r2i: bytes


def derive_child_keys(
    prf_id: int,
    sk_d: bytes,
    nonce_i: bytes,
    nonce_r: bytes,
    encr_len: int,
    integ_len: int,
    shared: bytes = b"",
) -> ChildKeys:
    """KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr); initiator->responder encryption then
    integrity key first, then the other direction (RFC 7296 §2.17)."""
    km = prf_plus(prf_id, sk_d, shared + nonce_i + nonce_r, 2 * (encr_len + integ_len))
    e, a = encr_len, integ_len
    return ChildKeys(km[:e], km[e : e + a], km[e + a : 2 * e + a], km[2 * e + a : 2 * e + 2 * a])


# ---------------------------------------------------------------------------------------------
# SK payload (RFC 7296 §3.14, RFC 5282)

GCM_IV_LEN = 8
ICV_LEN = 16
CBC_IV_LEN = 16


@dataclass(frozen=True, slots=True)
class SkCipher:
    """One direction's SK protection: ``encr_key`` (with salt for GCM) and ``integ_key``; IVs
    come from ``entropy`` if given, else ``os.urandom``."""

    encr: int
    encr_key: bytes
    integ_key: bytes = b""
    entropy: Entropy | None = field(default=None, repr=False, compare=False)
    _aead: AESGCM | None = field(init=False, default=None, repr=False, compare=False)
    _salt: bytes = field(init=False, default=b"", repr=False, compare=False)

    def __post_init__(self) -> None:
        if is_aead(self.encr):
            object.__setattr__(self, "_aead", AESGCM(self.encr_key[:-4]))
            object.__setattr__(self, "_salt", self.encr_key[-4:])

    @classmethod
    def outbound(cls, keys: IkeKeys, initiator: bool, entropy: Entropy | None = None) -> SkCipher:
        """The keys for messages we send (initiator: SK_ei/SK_ai)."""
        if initiator:
            return cls(keys.suite.encr, keys.sk_ei, keys.sk_ai, entropy)
        return cls(keys.suite.encr, keys.sk_er, keys.sk_ar, entropy)

    @classmethod
    def inbound(cls, keys: IkeKeys, initiator: bool) -> SkCipher:
        return cls.outbound(keys, not initiator)

    def seal(
        self, header: Header, inner: list[Payload] | tuple[Payload, ...], iv: bytes | None = None
    ) -> bytes:
        """Encode a whole message whose payloads are ``inner`` inside one SK payload."""
        first, plain = encode_payloads(inner)
        random = self.entropy or os.urandom
        aead = self._aead
        if aead is not None:
            iv = iv if iv is not None else random(GCM_IV_LEN)
            padded = plain + b"\0"  # pad length 0 (RFC 5282 §3: no block alignment needed)
            sk_len = GENERIC_LEN + GCM_IV_LEN + len(padded) + ICV_LEN
            aad = _sk_header(header, HEADER_LEN + sk_len, first, sk_len)
            return aad + iv + aead.encrypt(self._salt + iv, padded, aad)
        iv = iv if iv is not None else random(CBC_IV_LEN)
        pad = (-(len(plain) + 1)) % 16
        padded = plain + bytes(pad) + bytes((pad,))
        sk_len = GENERIC_LEN + CBC_IV_LEN + len(padded) + ICV_LEN
        enc = Cipher(algorithms.AES(self.encr_key), modes.CBC(iv)).encryptor()
        ct = enc.update(padded) + enc.finalize()
        msg = _sk_header(header, HEADER_LEN + sk_len, first, sk_len) + iv + ct
        return msg + hmac.new(self.integ_key, msg, "sha256").digest()[:ICV_LEN]

    def open(self, datagram: bytes, sk: EncryptedPayload) -> tuple[Payload, ...]:
        """Verify and decrypt the SK payload that ends ``datagram``; returns the inner payloads.

        Raises :class:`IntegrityCheckFailed` or :class:`IkeDecodeError` (bad inner chain)."""
        body = sk.body
        sk_start = len(datagram) - len(body) - GENERIC_LEN
        if sk_start < HEADER_LEN:
            raise IntegrityCheckFailed("SK payload position inconsistent")
        aead = self._aead
        if aead is not None:
            if len(body) < GCM_IV_LEN + ICV_LEN + 1:
                raise IntegrityCheckFailed("SK payload too short for AES-GCM")
            iv, ct = body[:GCM_IV_LEN], body[GCM_IV_LEN:]
            aad = datagram[: sk_start + GENERIC_LEN]
            try:
                plain = aead.decrypt(self._salt + iv, ct, aad)
            except InvalidTag:
                raise IntegrityCheckFailed("AES-GCM ICV does not verify") from None
        else:
            if len(body) < CBC_IV_LEN + 16 + ICV_LEN or (len(body) - CBC_IV_LEN - ICV_LEN) % 16:
                raise IntegrityCheckFailed("SK payload length not a whole number of AES blocks")
            mac = hmac.new(self.integ_key, datagram[:-ICV_LEN], "sha256").digest()[:ICV_LEN]
            if not hmac.compare_digest(mac, datagram[-ICV_LEN:]):
                raise IntegrityCheckFailed("HMAC-SHA2-256-128 ICV does not verify")
            iv, ct = body[:CBC_IV_LEN], body[CBC_IV_LEN:-ICV_LEN]
            dec = Cipher(algorithms.AES(self.encr_key), modes.CBC(iv)).decryptor()
            plain = dec.update(ct) + dec.finalize()
        pad = plain[-1]
        if pad + 1 > len(plain):
            raise IntegrityCheckFailed("SK pad length exceeds the plaintext")
        return decode_payloads(sk.first, plain[: len(plain) - pad - 1])


_SK_HEADER = struct.Struct(">QQBBBBIIBBH")


def _sk_header(header: Header, total: int, first: int, sk_len: int) -> bytes:
    """The IKE header (next payload SK, length ``total``) and the SK generic payload header: the
    AAD of an AEAD (RFC 5282 §5.1)."""
    return _SK_HEADER.pack(
        header.spi_i,
        header.spi_r,
        PayloadType.SK,
        header.version,
        header.exchange,
        header.flags,
        header.message_id,
        total,
        first,
        0,
        sk_len,
    )


# ---------------------------------------------------------------------------------------------
# AUTH (RFC 7296 §2.15, RFC 7427, RFC 7619)

KEY_PAD = b"Key Pad for IKEv2"

#: RFC 8420 §2: AlgorithmIdentifier of Ed25519 (OID 1.3.101.112, no parameters)
ALG_ED25519 = bytes.fromhex("300506032b6570")
#: RFC 7427 Appendix A.3.1: ecdsa-with-SHA256 (OID 1.2.840.10045.4.3.2, no parameters)
ALG_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
#: RFC 7427 Appendix A.3.2/A.3.3: ecdsa-with-SHA384 and -SHA512 (OIDs 1.2.840.10045.4.3.3 / .4).
#: We sign with SHA-256, but SIGNATURE_HASH_ALGORITHMS announces SHA2-384 and SHA2-512 too
#: (RFC 7427 §4), so a peer may sign with either: libreswan's initiator picks SHA2-512.
ALG_ECDSA_SHA384 = bytes.fromhex("300a06082a8648ce3d040303")
ALG_ECDSA_SHA512 = bytes.fromhex("300a06082a8648ce3d040304")
_ECDSA_HASHES: dict[bytes, type[hashes.HashAlgorithm]] = {
    ALG_ECDSA_SHA256: hashes.SHA256,
    ALG_ECDSA_SHA384: hashes.SHA384,
    ALG_ECDSA_SHA512: hashes.SHA512,
}

SigningKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
_ED25519_PREFIX = bytes((len(ALG_ED25519),)) + ALG_ED25519


def signed_octets(real_message: bytes, peer_nonce: bytes, prf_id: int, sk_p: bytes, id_body: bytes) -> bytes:
    """``RealMessage | Nonce(peer) | prf(SK_p, RestOfIDPayload)`` (RFC 7296 §2.15)."""
    return real_message + peer_nonce + prf(prf_id, sk_p, id_body)


def shared_key_auth(prf_id: int, secret: bytes, octets: bytes) -> bytes:
    """``prf(prf(secret, "Key Pad for IKEv2"), octets)`` (RFC 7296 §2.15); with secret = SK_pi
    or SK_pr this is the NULL authentication AUTH (RFC 7619 §2.1)."""
    return prf(prf_id, prf(prf_id, secret, KEY_PAD), octets)


def spki_of(key: SigningKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign(key: SigningKey, octets: bytes, *, deterministic: bool = False) -> bytes:
    """RFC 7427 §3 AUTH data: length of the AlgorithmIdentifier, it, then the signature.
    Ed25519 is deterministic; ECDSA is too with ``deterministic`` (RFC 6979), else its nonce
    comes from OpenSSL."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return _ED25519_PREFIX + key.sign(octets)
    if not isinstance(key.curve, ec.SECP256R1):
        raise IkeCryptoError(f"unsupported ECDSA curve {key.curve.name}")
    algorithm = ec.ECDSA(hashes.SHA256(), deterministic_signing=deterministic)
    return bytes((len(ALG_ECDSA_SHA256),)) + ALG_ECDSA_SHA256 + key.sign(octets, algorithm)


def _load_public_key(spki: bytes) -> PublicKeyTypes | None:
    """The key of a DER SubjectPublicKeyInfo, None if it is not one."""
    try:
        return serialization.load_der_public_key(spki)
    except (ValueError, TypeError):
        return None


#: parsed SPKIs of up to 1 KiB, bounded: a peer presents the same key at every handshake, and
#: key objects are immutable (only the parsing is saved; every signature is verified)
_public_key = functools.lru_cache(maxsize=256)(_load_public_key)


def verify(spki: bytes, auth_data: bytes, octets: bytes) -> bool:
    """Verify an RFC 7427 signature made by the key ``spki``; False on any mismatch or bad data."""
    if not auth_data:
        return False
    n = auth_data[0]
    if len(auth_data) < 1 + n:
        return False
    alg, sig = auth_data[1 : 1 + n], auth_data[1 + n :]
    pub = _public_key(spki) if len(spki) <= 1024 else _load_public_key(spki)
    if pub is None:
        return False
    try:
        if alg == ALG_ED25519 and isinstance(pub, ed25519.Ed25519PublicKey):
            pub.verify(sig, octets)
            return True
        ecdsa_hash = _ECDSA_HASHES.get(alg)
        if ecdsa_hash is not None and isinstance(pub, ec.EllipticCurvePublicKey):
            if not isinstance(pub.curve, ec.SECP256R1):
                return False
            pub.verify(sig, octets, ec.ECDSA(ecdsa_hash()))
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


def nat_detection_hash(spi_i: int, spi_r: int, addr: bytes, port: int) -> bytes:
    """SHA-1(SPIi | SPIr | IP | Port) of NAT_DETECTION_*_IP (RFC 7296 §2.23)."""
    return hashlib.sha1(struct.pack(">QQ", spi_i, spi_r) + addr + struct.pack(">H", port)).digest()
