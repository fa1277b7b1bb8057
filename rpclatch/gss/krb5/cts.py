"""AES in CBC mode with ciphertext stealing and a zero IV, as Kerberos uses it (RFC 3962 §5).

The last two blocks are swapped and the final one truncated to the message length (the "CS3"
variant); one block is plain AES. Built on OpenSSL's AES-CBC and AES-ECB through ``cryptography``:
the message is CBC-encrypted zero-padded and the last two blocks are rearranged; decryption
recovers the stolen tail with one ECB block, then CBC-decrypts the rest. The ECB contexts are made
once per key and reused (ECB keeps no state between blocks); a CBC context is made per message.
Not thread-safe: the GSS context's lock serialises callers.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_BLOCK = 16
_ZERO_IV = bytes(_BLOCK)
_PAD = bytes(_BLOCK)


class CtsError(ValueError):
    """A ciphertext shorter than one block."""


def _xor(a: bytes, b: bytes) -> bytes:
    n = len(a)
    return (int.from_bytes(a, "big") ^ int.from_bytes(b[:n], "big")).to_bytes(n, "big")


class AesCts:
    """AES-CBC-CTS under one key (16 or 32 bytes), zero initial cipher state."""

    __slots__ = ("_cbc", "_ecb_dec", "_ecb_enc")

    def __init__(self, key: bytes) -> None:
        aes = algorithms.AES(key)
        self._cbc = Cipher(aes, modes.CBC(_ZERO_IV))
        ecb = Cipher(aes, modes.ECB())
        self._ecb_enc = ecb.encryptor()
        self._ecb_dec = ecb.decryptor()

    def encrypt(self, plain: bytes) -> bytes:
        """Encrypt ``plain`` (at least one block; Kerberos always prepends a 16-byte confounder)."""
        n = len(plain)
        if n < _BLOCK:
            raise CtsError("CTS needs at least one block")
        if n == _BLOCK:
            return self._ecb_enc.update(plain)
        tail = n % _BLOCK
        padded = plain + _PAD[: _BLOCK - tail] if tail else plain
        c = self._cbc.encryptor().update(padded)
        r = tail or _BLOCK
        return c[:-32] + c[-16:] + c[-32 : -32 + r]

    def decrypt(self, cipher: bytes) -> bytes:
        """Decrypt ``cipher`` (at least one block)."""
        n = len(cipher)
        if n < _BLOCK:
            raise CtsError("CTS needs at least one block")
        if n == _BLOCK:
            return self._ecb_dec.update(cipher)
        r = n % _BLOCK or _BLOCK
        split = n - r - _BLOCK
        stolen = cipher[n - r :]  # the first r bytes of the second-to-last CBC block
        d = self._ecb_dec.update(cipher[split : n - r])  # (last plain block, zero-padded) ^ that block
        prev = stolen + d[r:]
        head = self._cbc.decryptor().update(cipher[:split] + prev) if split else self._ecb_dec.update(prev)
        return head + _xor(d[:r], stolen)

    def close(self) -> None:
        """Drop the OpenSSL contexts (OpenSSL wipes the key schedule when it frees them)."""
        self._cbc = self._ecb_enc = self._ecb_dec = None  # type: ignore[assignment]
