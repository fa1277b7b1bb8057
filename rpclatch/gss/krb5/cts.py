"""AES in CBC mode with ciphertext stealing and a zero IV, as Kerberos uses it (RFC 3962 §5).

The last two blocks are swapped and the final one truncated to the message length (the "CS3"
variant); one block is plain AES. Built on OpenSSL's AES-CBC and AES-ECB through ``cryptography``:
the message is CBC-encrypted zero-padded and the last two blocks rearranged; decryption recovers
the stolen tail with one ECB block, then CBC-decrypts the rest.

Every OpenSSL context is made once per key and reused for every message (making one costs more
than encrypting a short message). ECB keeps no state between blocks. A CBC context chains each
message onto the previous one, so each message is restarted at the zero IV: for encryption the
first plaintext block is XORed with the chaining value (the previous message's last ciphertext
block) -- or, when the first block is a fresh random confounder, the random block goes in as it
is and the confounder is, in effect, that block XOR the chaining value, just as random; for
decryption a zero block is fed first (its output dropped), which makes the chaining value zero.
Not thread-safe: the GSS context's lock serialises callers.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_BLOCK = 16
_ZERO = bytes(_BLOCK)
_PAD = bytes(_BLOCK)


class CtsError(ValueError):
    """A plaintext or ciphertext shorter than one block."""


def _xor(a: bytes, b: bytes) -> bytes:
    n = len(a)
    return (int.from_bytes(a, "big") ^ int.from_bytes(b[:n], "big")).to_bytes(n, "big")


class AesCts:
    """AES-CBC-CTS under one key (16 or 32 bytes), zero initial cipher state."""

    __slots__ = ("_dec", "_ecb_dec", "_ecb_enc", "_enc", "_enc_state")

    def __init__(self, key: bytes) -> None:
        aes = algorithms.AES(key)
        cbc = Cipher(aes, modes.CBC(_ZERO))
        self._enc = cbc.encryptor()
        self._enc_state = _ZERO  # the encryptor's chaining value: its last ciphertext block
        self._dec = cbc.decryptor()
        ecb = Cipher(aes, modes.ECB())
        self._ecb_enc = ecb.encryptor()
        self._ecb_dec = ecb.decryptor()

    def _cbc_cts(self, first: bytes, rest: bytes) -> bytes:
        """CTS of ``first | rest`` where ``first`` is the first block already XORed with the
        chaining value and ``rest`` is non-empty."""
        tail = len(rest) % _BLOCK
        c = self._enc.update(b"".join((first, rest, _PAD[: _BLOCK - tail] if tail else b"")))
        self._enc_state = c[-16:]
        r = tail or _BLOCK
        return b"".join((c[:-32], c[-16:], c[-32 : -32 + r]))

    def encrypt(self, plain: bytes) -> bytes:
        """Encrypt ``plain`` (at least one block)."""
        n = len(plain)
        if n < _BLOCK:
            raise CtsError("CTS needs at least one block")
        if n == _BLOCK:
            return self._ecb_enc.update(plain)
        return self._cbc_cts(_xor(plain[:_BLOCK], self._enc_state), plain[_BLOCK:])

    def encrypt_confounded(self, plain: bytes) -> tuple[bytes, bytes]:
        """Encrypt a fresh random confounder followed by ``plain``: (confounder, ciphertext)."""
        block = os.urandom(_BLOCK)
        if not plain:
            return block, self._ecb_enc.update(block)
        confounder = _xor(block, self._enc_state)
        return confounder, self._cbc_cts(block, plain)

    def encrypt_confounded_blind(self, plain: bytes) -> bytes:
        """As :meth:`encrypt_confounded` for callers that do not need the confounder (RFC 8009
        MACs the ciphertext): the XOR that would reveal it is skipped."""
        block = os.urandom(_BLOCK)
        if not plain:
            return self._ecb_enc.update(block)
        return self._cbc_cts(block, plain)

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
        if split:
            # the zero block resets the chaining value; its own output is dropped
            head = self._dec.update(b"".join((_ZERO, memoryview(cipher)[:split], prev)))[_BLOCK:]
        else:
            head = self._ecb_dec.update(prev)
        return head + _xor(d[:r], stolen)

    def close(self) -> None:
        """Drop the OpenSSL contexts (OpenSSL wipes the key schedule when it frees them)."""
        self._enc = self._dec = self._ecb_enc = self._ecb_dec = None  # type: ignore[assignment]
