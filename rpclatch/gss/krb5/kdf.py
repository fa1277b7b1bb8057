"""Key derivation for the AES Kerberos enctypes.

* :func:`nfold` -- RFC 3961 §5.1 n-fold: the input repeated (each copy rotated 13 bits further
  right) up to the least common multiple of the two lengths, then added in n-bit chunks with
  one's-complement (end-around carry) addition.
* :func:`dk` -- RFC 3961 §5.1 ``DK(Key, Constant) = random-to-key(DR(Key, Constant))`` for AES
  (RFC 3962 §4): the constant n-folded to one block, encrypted (AES, zero IV: one block is plain
  ECB) and re-encrypted until enough bits; random-to-key is the identity.
* :func:`kdf_hmac_sha2` -- RFC 8009 §3 ``KDF-HMAC-SHA2(key, label, k) =
  k-truncate(HMAC-SHA-256|384(key, 00000001 | label | 00 | k))`` (k in bits, 32-bit big-endian).
"""

from __future__ import annotations

import hmac
import math

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

AES_BLOCK = 16


def nfold(data: bytes, nbytes: int) -> bytes:
    """``nbytes * 8``-fold of ``data`` (RFC 3961 §5.1)."""
    if not data or nbytes <= 0:
        raise ValueError("n-fold needs a non-empty input and a positive output size")
    inbits = len(data) * 8
    outbits = nbytes * 8
    value = int.from_bytes(data, "big")
    in_mask = (1 << inbits) - 1
    copies = math.lcm(len(data), nbytes) // len(data)
    big = 0
    for i in range(copies):
        shift = (13 * i) % inbits
        rotated = ((value >> shift) | (value << (inbits - shift))) & in_mask
        big = (big << inbits) | rotated
    out_mask = (1 << outbits) - 1
    total = 0
    while big:
        total += big & out_mask
        big >>= outbits
    while total >> outbits:  # end-around carry
        total = (total & out_mask) + (total >> outbits)
    return total.to_bytes(nbytes, "big")


def dk(key: bytes, constant: bytes) -> bytes:
    """RFC 3961 DK for an AES key (16 or 32 bytes): a derived key of the same length."""
    if len(key) not in (16, 32):
        raise ValueError("AES keys are 16 or 32 bytes")
    block = constant if len(constant) == AES_BLOCK else nfold(constant, AES_BLOCK)
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    out = b""
    while len(out) < len(key):
        block = enc.update(block)
        out += block
    return out[: len(key)]


def kdf_hmac_sha2(key: bytes, label: bytes, bits: int, hash_name: str) -> bytes:
    """RFC 8009 §3 KDF-HMAC-SHA2 with ``hash_name`` ``sha256`` or ``sha384`` (empty context)."""
    if bits % 8 or bits <= 0:
        raise ValueError("derived key length must be a positive multiple of 8 bits")
    k1 = hmac.digest(key, b"\x00\x00\x00\x01" + label + b"\x00" + bits.to_bytes(4, "big"), hash_name)
    if bits // 8 > len(k1):
        raise ValueError("one HMAC block is all RFC 8009 derives")
    return k1[: bits // 8]
