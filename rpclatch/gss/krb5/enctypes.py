"""The four AES Kerberos enctypes: derived keys, encryption and checksums.

* aes128-cts-hmac-sha1-96 (17) and aes256-cts-hmac-sha1-96 (18), RFC 3962 on the RFC 3961 §5.3
  simplified profile: keys by DK (:func:`~rpclatch.gss.krb5.kdf.dk`); encryption is
  ``AES-CTS(Ke, confounder | plain) | HMAC-SHA1(Ki, confounder | plain)[:12]``; the checksum is
  ``HMAC-SHA1(Kc, message)[:12]``.
* aes128-cts-hmac-sha256-128 (19) and aes256-cts-hmac-sha384-192 (20), RFC 8009: keys by
  KDF-HMAC-SHA2 (Ke of the cipher's size, Ki and Kc of the MAC's size); encryption is
  ``C = AES-CTS(Ke, confounder | plain)`` then ``C | HMAC(Ki, IV | C)[:h]`` (encrypt-then-MAC,
  ``IV`` the zero initial cipher state); the checksum is ``HMAC(Kc, message)[:h]`` (§5).

The constants are ``usage (32-bit big-endian) | 0x99`` for Kc, ``0xAA`` for Ke and ``0x55`` for Ki
(RFC 3961 §5.3). :class:`UsageKeys` holds everything one key usage needs, derived once: the CTS
cipher and the HMAC states with the key already absorbed, so a message costs no key schedule.
Integrity checks compare with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from rpclatch.gss.krb5.cts import AesCts
from rpclatch.gss.krb5.kdf import dk, kdf_hmac_sha2

_CONFOUNDER = 16
_ZERO_IV = bytes(16)


class UnsupportedEnctype(Exception):
    """An enctype this module does not implement (the caller falls back to MIT)."""

    def __init__(self, number: int) -> None:
        super().__init__(f"enctype {number} is not one of the AES enctypes implemented here")
        self.number = number


class IntegrityError(Exception):
    """A ciphertext too short or whose integrity check failed."""


@dataclass(frozen=True, slots=True)
class Enctype:
    """One enctype's parameters (RFC 3962 §6, RFC 8009 §2 and §5)."""

    number: int
    name: str
    key_size: int  #: bytes of the base key (and of Ke)
    hash_name: str  #: HMAC hash for Ki and Kc
    mac_size: int  #: bytes of the truncated HMAC (h)
    rfc8009: bool  #: KDF-HMAC-SHA2 and encrypt-then-MAC, else DK and MAC-then-encrypt

    def derive(self, key: bytes, usage: int, kind: int) -> bytes:
        """The key for ``usage`` and ``kind`` (0x99 Kc, 0xAA Ke, 0x55 Ki)."""
        if len(key) != self.key_size:
            raise ValueError(f"{self.name} needs a {self.key_size}-byte key, got {len(key)}")
        label = usage.to_bytes(4, "big") + bytes([kind])
        if not self.rfc8009:
            return dk(key, label)
        bits = self.key_size * 8 if kind == 0xAA else self.mac_size * 8
        return kdf_hmac_sha2(key, label, bits, self.hash_name)


ENCTYPES: dict[int, Enctype] = {
    e.number: e
    for e in (
        Enctype(17, "aes128-cts-hmac-sha1-96", 16, "sha1", 12, False),
        Enctype(18, "aes256-cts-hmac-sha1-96", 32, "sha1", 12, False),
        Enctype(19, "aes128-cts-hmac-sha256-128", 16, "sha256", 16, True),
        Enctype(20, "aes256-cts-hmac-sha384-192", 32, "sha384", 24, True),
    )
}


def enctype(number: int) -> Enctype:
    """The :class:`Enctype` numbered ``number`` (raises :class:`UnsupportedEnctype`)."""
    try:
        return ENCTYPES[number]
    except KeyError:
        raise UnsupportedEnctype(number) from None


class Hmac:
    """HMAC (RFC 2104) with the key absorbed once: the inner and outer hash states after their
    padded key block, copied for each message; the result truncated to ``size`` bytes."""

    __slots__ = ("_inner", "_outer", "size")

    def __init__(self, key: bytes, hash_name: str, size: int) -> None:
        block = hashlib.new(hash_name).block_size
        if len(key) > block:
            key = hashlib.new(hash_name, key).digest()
        padded = key.ljust(block, b"\x00")
        self._inner: Any = hashlib.new(hash_name, bytes(b ^ 0x36 for b in padded))
        self._outer: Any = hashlib.new(hash_name, bytes(b ^ 0x5C for b in padded))
        self.size = size

    def mac(self, first: bytes, second: bytes = b"") -> bytes:
        """The truncated HMAC of ``first | second``."""
        inner = self._inner.copy()
        inner.update(first)
        if second:
            inner.update(second)
        outer = self._outer.copy()
        outer.update(inner.digest())
        mac: bytes = outer.digest()[: self.size]
        return mac

    def states(self) -> tuple[Any, Any]:
        """The (inner, outer) hash states with the padded key absorbed; copy before updating."""
        return self._inner, self._outer

    def close(self) -> None:
        self._inner = self._outer = None


class UsageKeys:
    """Everything one key usage needs under one base key: Kc (checksums), Ke and Ki (encryption)."""

    __slots__ = ("_cts", "_ki", "kc", "mac_size", "rfc8009")

    def __init__(self, etype: Enctype, key: bytes, usage: int) -> None:
        self.rfc8009 = etype.rfc8009
        self.mac_size = etype.mac_size
        self.kc = Hmac(etype.derive(key, usage, 0x99), etype.hash_name, etype.mac_size)
        self._ki = Hmac(etype.derive(key, usage, 0x55), etype.hash_name, etype.mac_size)
        self._cts = AesCts(etype.derive(key, usage, 0xAA))

    def checksum(self, first: bytes, second: bytes = b"") -> bytes:
        """The keyed checksum of ``first | second`` (RFC 3961 get_mic; RFC 8009 §5)."""
        return self.kc.mac(first, second)

    def encrypt(self, plain: bytes, confounder: bytes | None = None) -> bytes:
        """Encrypt with a fresh random confounder (``confounder`` only for test vectors)."""
        if confounder is not None:
            body = confounder + plain
            c = self._cts.encrypt(body)
            return c + (self._ki.mac(_ZERO_IV, c) if self.rfc8009 else self._ki.mac(body))
        if self.rfc8009:
            c = self._cts.encrypt_confounded_blind(plain)
            return c + self._ki.mac(_ZERO_IV, c)
        conf, c = self._cts.encrypt_confounded(plain)
        return c + self._ki.mac(conf, plain)

    def decrypt(self, cipher: bytes) -> bytes:
        """The plaintext (confounder removed); :class:`IntegrityError` if the check fails."""
        h = self.mac_size
        if len(cipher) < _CONFOUNDER + h:
            raise IntegrityError("ciphertext shorter than a confounder and a checksum")
        c, mac = cipher[:-h], cipher[-h:]
        if self.rfc8009:
            if not hmac.compare_digest(self._ki.mac(_ZERO_IV, c), mac):
                raise IntegrityError("integrity check failed")
            return self._cts.decrypt(c)[_CONFOUNDER:]
        body = self._cts.decrypt(c)
        if not hmac.compare_digest(self._ki.mac(body), mac):
            raise IntegrityError("integrity check failed")
        return body[_CONFOUNDER:]

    def close(self) -> None:
        """Drop the derived keys (their OpenSSL contexts are wiped when freed)."""
        self.kc.close()
        self._ki.close()
        self._cts.close()
