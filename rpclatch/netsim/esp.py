"""ESP (RFC 4303) with AES-GCM (RFC 4106), transport mode, for the simulated wire.

Layout (RFC 4303 §2, RFC 4106 §3)::

    SPI (4) | Sequence Number (4) | IV (8) | ciphertext(payload | padding | pad len | next hdr) | ICV (16)

The nonce is salt (4, from the key material) || IV (8); the AAD is SPI || sequence number
(RFC 4106 §5, no ESN). The IV is the 64-bit sequence counter, which RFC 4106 §3.1 allows and keeps
captures deterministic. Keys are real, so tshark decrypts the exported capture.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from rpclatch.netsim.errors import EspAuthError, SimWireError

ICV_LEN = 16
IV_LEN = 8
HEADER_LEN = 8
_HDR = struct.Struct("!II")


@dataclass(frozen=True, slots=True)
class EspKeys:
    """Keying material of one direction of an ESP SA: AES key plus the 4-byte RFC 4106 salt."""

    spi: int
    key: bytes
    salt: bytes

    def __post_init__(self) -> None:
        if len(self.key) not in (16, 24, 32) or len(self.salt) != 4:
            raise ValueError("AES-GCM needs a 16/24/32-byte key and a 4-byte salt")
        if not 256 <= self.spi <= 0xFFFFFFFF:
            raise ValueError("SPI values 0-255 are reserved (RFC 4303 §2.1)")

    @property
    def key_material(self) -> bytes:
        """KEYMAT as used by IKEv2 and by Wireshark's esp_sa table: key || salt."""
        return self.key + self.salt


@dataclass(frozen=True, slots=True)
class EspHeader:
    """The cleartext part of an ESP packet, readable without keys."""

    spi: int
    seq: int

    @classmethod
    def decode(cls, data: bytes) -> EspHeader:
        if len(data) < HEADER_LEN + IV_LEN + ICV_LEN + 4:
            raise SimWireError("truncated ESP packet")
        spi, seq = _HDR.unpack_from(data)
        if spi < 256:
            raise SimWireError(f"reserved ESP SPI {spi}")
        return cls(spi, seq)


def esp_seal(keys: EspKeys, seq: int, next_header: int, payload: bytes) -> bytes:
    """Encrypt ``payload`` into an ESP packet with sequence number ``seq`` (1..2^32-1)."""
    if not 0 < seq <= 0xFFFFFFFF:
        raise SimWireError("ESP sequence number out of range (RFC 4303 §3.3.3: rekey)")
    pad_len = (-(len(payload) + 2)) % 4
    plaintext = payload + bytes(range(1, pad_len + 1)) + bytes([pad_len, next_header])
    header = _HDR.pack(keys.spi, seq)
    iv = struct.pack("!Q", seq)
    sealed = AESGCM(keys.key).encrypt(keys.salt + iv, plaintext, header)
    return header + iv + sealed


@dataclass(frozen=True, slots=True)
class EspPayload:
    seq: int
    next_header: int
    payload: bytes


def esp_open(keys: EspKeys, data: bytes) -> EspPayload:
    """Check the ICV and decrypt; raise :class:`EspAuthError` / :class:`SimWireError`."""
    hdr = EspHeader.decode(data)
    if hdr.spi != keys.spi:
        raise SimWireError("ESP SPI does not match the SA")
    iv = data[HEADER_LEN : HEADER_LEN + IV_LEN]
    try:
        plaintext = AESGCM(keys.key).decrypt(keys.salt + iv, data[HEADER_LEN + IV_LEN :], data[:HEADER_LEN])
    except InvalidTag as exc:
        raise EspAuthError("ESP ICV check failed") from exc
    if len(plaintext) < 2:
        raise SimWireError("ESP trailer missing")
    pad_len, next_header = plaintext[-2], plaintext[-1]
    if pad_len + 2 > len(plaintext):
        raise SimWireError("ESP pad length too large")
    body_end = len(plaintext) - 2 - pad_len
    if plaintext[body_end:-2] != bytes(range(1, pad_len + 1)):
        raise SimWireError("ESP padding is not 1, 2, 3, ... (RFC 4303 §2.4)")
    return EspPayload(hdr.seq, next_header, plaintext[:body_end])


@dataclass
class ReplayWindow:
    """RFC 4303 §3.4.3 sliding anti-replay window (bitmap of ``size`` packets)."""

    size: int = 64
    top: int = 0
    bitmap: int = field(default=0)

    def check(self, seq: int) -> bool:
        """True if ``seq`` is new and inside (or above) the window; does not update."""
        if seq == 0:
            return False
        if seq > self.top:
            return True
        offset = self.top - seq
        if offset >= self.size:
            return False
        return not (self.bitmap >> offset) & 1

    def update(self, seq: int) -> None:
        """Record ``seq`` after its ICV verified (never before, RFC 4303 §3.4.3)."""
        if seq > self.top:
            shift = seq - self.top
            self.bitmap = ((self.bitmap << shift) | 1) & ((1 << self.size) - 1)
            self.top = seq
        else:
            self.bitmap |= 1 << (self.top - seq)
