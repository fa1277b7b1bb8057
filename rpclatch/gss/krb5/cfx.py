"""RFC 4121 per-message tokens (MIC and Wrap, §4.2) computed from exported context keys.

A :class:`CfxContext` holds what an established Kerberos V5 GSS context needs per message: the
role, the token key (the acceptor subkey if the acceptor sent one, else the context key: the
initiator's subkey or the session key, §2), the next send sequence number and the expiry. For
each key it derives once the four key usages of §2 (KG-USAGE-ACCEPTOR-SEAL 22, -SIGN 23,
INITIATOR-SEAL 24, -SIGN 25): we send with our role's usages, verify with the peer's.

Tokens (§4.2.6), 16-byte header then body:

* MIC: ``04 04 | flags | FF*5 | SND_SEQ(8)`` then ``checksum(Kc SIGN, message | header)``;
* Wrap with confidentiality: ``05 04 | flags | FF | EC | RRC | SND_SEQ`` then
  ``encrypt(Ke/Ki SEAL, message | EC filler | header with RRC 0)``;
* Wrap without: the same header with EC the checksum size, then ``message | checksum(Kc SEAL,
  message | header with EC and RRC 0)``.

Flags (§4.2.2): SentByAcceptor 0x01, Sealed 0x02, AcceptorSubkey 0x04; unknown bits are ignored.
We emit EC 0 and RRC 0; on receipt any RRC is undone (the body rotated left, §4.2.5) and any EC
filler is dropped. The key for a received token follows its AcceptorSubkey flag (as MIT does).
Replay and sequence detection are off (RPCSEC_GSS keeps its own window, RFC 2203 §5.2.2), so the
received SND_SEQ is covered by the checksum but not checked. A token from our own direction (the
SentByAcceptor bit says it was sent by our role) fails with GSS_S_BAD_MIC, like MIT's.

Errors are :class:`~rpclatch.gss.errors.GssError`: GSS_S_DEFECTIVE_TOKEN for a malformed token,
GSS_S_BAD_MIC for a checksum or decryption that does not verify, GSS_S_CONTEXT_EXPIRED past the
context's end time, GSS_S_NO_CONTEXT after :meth:`CfxContext.delete`. Not thread-safe: the
provider's per-context lock serialises callers.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from rpclatch.gss.errors import GssError, GssMajor
from rpclatch.gss.krb5.enctypes import Enctype, IntegrityError, UsageKeys, enctype

KG_USAGE_ACCEPTOR_SEAL = 22
KG_USAGE_ACCEPTOR_SIGN = 23
KG_USAGE_INITIATOR_SEAL = 24
KG_USAGE_INITIATOR_SIGN = 25

FLAG_SENT_BY_ACCEPTOR = 0x01
FLAG_SEALED = 0x02
FLAG_ACCEPTOR_SUBKEY = 0x04

_MIC_ID = b"\x04\x04"
_WRAP_ID = b"\x05\x04"
_MIC_FILLER = b"\xff" * 5
_SEQ_MASK = (1 << 64) - 1

_DEFECTIVE = GssMajor.GSS_S_DEFECTIVE_TOKEN
_BAD_MIC = GssMajor.GSS_S_BAD_MIC
_time = time.time
_compare = hmac.compare_digest


class _KeySet:
    """The derived keys of one base key for both directions."""

    __slots__ = ("etype", "recv_seal", "recv_sign", "send_seal", "send_sign")

    def __init__(self, etype: Enctype, key: bytes, initiator: bool) -> None:
        self.etype = etype
        seal_i = UsageKeys(etype, key, KG_USAGE_INITIATOR_SEAL)
        sign_i = UsageKeys(etype, key, KG_USAGE_INITIATOR_SIGN)
        seal_a = UsageKeys(etype, key, KG_USAGE_ACCEPTOR_SEAL)
        sign_a = UsageKeys(etype, key, KG_USAGE_ACCEPTOR_SIGN)
        if initiator:
            self.send_seal, self.send_sign, self.recv_seal, self.recv_sign = seal_i, sign_i, seal_a, sign_a
        else:
            self.send_seal, self.send_sign, self.recv_seal, self.recv_sign = seal_a, sign_a, seal_i, sign_i

    def close(self) -> None:
        for keys in (self.send_seal, self.send_sign, self.recv_seal, self.recv_sign):
            keys.close()


class CfxContext:
    """Per-message RFC 4121 calls on an exported context (see the module docstring).

    ``ctx_key``/``ctx_enctype`` is the context key; ``acceptor_subkey``/``acceptor_enctype`` the
    acceptor subkey, if the acceptor asserted one; ``send_seq`` the next sequence number to send;
    ``endtime`` the expiry in seconds since the epoch (0: none). Raises
    :class:`~rpclatch.gss.krb5.enctypes.UnsupportedEnctype` for a token key that is not AES.
    """

    __slots__ = (
        "_ctx_keys",
        "_endtime",
        "_initiator",
        "_mic_in",
        "_mic_len",
        "_mic_out",
        "_mic_prefix",
        "_peer_flags",
        "_send",
        "_seq",
        "_subkeys",
        "_vmic_in",
        "_vmic_out",
        "_wrap_prefix",
    )

    def __init__(
        self,
        *,
        initiator: bool,
        ctx_enctype: int,
        ctx_key: bytes,
        acceptor_enctype: int | None = None,
        acceptor_subkey: bytes | None = None,
        send_seq: int = 0,
        endtime: int = 0,
    ) -> None:
        self._initiator = initiator
        self._subkeys: _KeySet | None = None
        self._ctx_keys: _KeySet | None = None
        flags = 0 if initiator else FLAG_SENT_BY_ACCEPTOR
        if acceptor_subkey is not None:
            if acceptor_enctype is None:
                raise ValueError("an acceptor subkey needs its enctype")
            self._subkeys = _KeySet(enctype(acceptor_enctype), acceptor_subkey, initiator)
            flags |= FLAG_ACCEPTOR_SUBKEY
            try:  # only used for received tokens without the AcceptorSubkey flag
                self._ctx_keys = _KeySet(enctype(ctx_enctype), ctx_key, initiator)
            except Exception:
                self._ctx_keys = None
            send = self._subkeys
        else:
            self._ctx_keys = _KeySet(enctype(ctx_enctype), ctx_key, initiator)
            send = self._ctx_keys
        self._send: _KeySet | None = send
        self._seq = send_seq & _SEQ_MASK
        self._endtime = endtime
        f = bytes([flags])
        self._mic_prefix = _MIC_ID + f + _MIC_FILLER
        self._wrap_prefix = (_WRAP_ID + bytes([flags | FLAG_SEALED]) + b"\xff", _WRAP_ID + f + b"\xff")
        # MIC calls run several times per RPC: the HMAC states of our Kc and of the peer's Kc for
        # its usual flags (the other direction, AcceptorSubkey as ours) are kept at hand.
        self._mic_in: Any
        self._mic_out: Any
        self._vmic_in: Any
        self._vmic_out: Any
        self._mic_in, self._mic_out = send.send_sign.kc.states()
        self._vmic_in, self._vmic_out = send.recv_sign.kc.states()
        self._mic_len = 16 + send.etype.mac_size
        self._peer_flags = (FLAG_SENT_BY_ACCEPTOR if initiator else 0) | (flags & FLAG_ACCEPTOR_SUBKEY)

    @property
    def enctype(self) -> Enctype:
        """The enctype of the key tokens are sent with."""
        send = self._live()
        return send.etype

    @property
    def send_seq(self) -> int:
        """The sequence number the next token will carry."""
        return self._seq

    def _live(self) -> _KeySet:
        send = self._send
        if send is None:
            raise GssError(GssMajor.GSS_S_NO_CONTEXT, 0, "context deleted")
        if self._endtime and time.time() > self._endtime:
            raise GssError(GssMajor.GSS_S_CONTEXT_EXPIRED, 0, "context expired")
        return send

    def _next_seq(self) -> bytes:
        seq = self._seq
        self._seq = (seq + 1) & _SEQ_MASK
        return seq.to_bytes(8, "big")

    def _recv_keys(self, flags: int) -> _KeySet:
        if bool(flags & FLAG_SENT_BY_ACCEPTOR) != self._initiator:
            raise GssError(_BAD_MIC, 0, "token sent in our own direction")
        keys = self._subkeys if flags & FLAG_ACCEPTOR_SUBKEY and self._subkeys is not None else self._ctx_keys
        if keys is None:
            raise GssError(_BAD_MIC, 0, "no key for this token")
        return keys

    # -- MIC tokens (§4.2.6.1) -------------------------------------------------------------------

    # get_mic and verify_mic inline the HMAC (RFC 2104 on the kept states) and the checks: they
    # run several times per RPC call.

    def get_mic(self, message: bytes) -> bytes:
        if self._send is None or (self._endtime and _time() > self._endtime):
            self._live()
        seq = self._seq
        self._seq = (seq + 1) & _SEQ_MASK
        header = self._mic_prefix + seq.to_bytes(8, "big")
        inner = self._mic_in.copy()
        inner.update(message)
        inner.update(header)
        outer = self._mic_out.copy()
        outer.update(inner.digest())
        mic: bytes = outer.digest()[: self._mic_len - 16]
        return header + mic

    def verify_mic(self, message: bytes, token: bytes) -> None:
        if self._send is None or (self._endtime and _time() > self._endtime):
            self._live()
        size = self._mic_len
        if (
            len(token) == size
            and token[2] == self._peer_flags
            and token[:2] == _MIC_ID
            and token[3:8] == _MIC_FILLER
        ):
            inner = self._vmic_in.copy()
            inner.update(message)
            inner.update(token[:16])
            outer = self._vmic_out.copy()
            outer.update(inner.digest())
            if not _compare(outer.digest()[: size - 16], token[16:]):
                raise GssError(_BAD_MIC, 0, "MIC does not verify")
            return
        self._verify_mic_slow(message, token)

    def _verify_mic_slow(self, message: bytes, token: bytes) -> None:
        token = bytes(token)
        if len(token) < 16 or token[:2] != _MIC_ID or token[3:8] != _MIC_FILLER:
            raise GssError(_DEFECTIVE, 0, "not a MIC token")
        keys = self._recv_keys(token[2])
        size = keys.etype.mac_size
        if len(token) != 16 + size:
            raise GssError(_DEFECTIVE, 0, "MIC token of the wrong length")
        header = token[:16]
        if not hmac.compare_digest(keys.recv_sign.checksum(message, header), token[16:]):
            raise GssError(_BAD_MIC, 0, "MIC does not verify")

    # -- Wrap tokens (§4.2.6.2) ------------------------------------------------------------------

    def wrap(self, message: bytes, confidential: bool = True) -> bytes:
        send = self._live()
        seq = self._next_seq()
        if confidential:
            header = self._wrap_prefix[0] + b"\x00\x00\x00\x00" + seq  # EC 0, RRC 0
            return header + send.send_seal.encrypt(b"".join((message, header)))
        prefix = self._wrap_prefix[1]
        checksum = send.send_seal.checksum(message, prefix + b"\x00\x00\x00\x00" + seq)
        return b"".join((prefix, len(checksum).to_bytes(2, "big"), b"\x00\x00", seq, message, checksum))

    def unwrap(self, token: bytes) -> tuple[bytes, bool]:
        """Return (message, was_encrypted)."""
        self._live()
        if type(token) is not bytes:  # any bytes-like token (memoryview, bytearray)
            token = bytes(token)
        if len(token) < 16 or token[:2] != _WRAP_ID or token[3] != 0xFF:
            raise GssError(_DEFECTIVE, 0, "not a Wrap token")
        flags = token[2]
        keys = self._recv_keys(flags)
        ec = int.from_bytes(token[4:6], "big")
        rrc = int.from_bytes(token[6:8], "big")
        body = token[16:]
        if rrc and body:
            rrc %= len(body)
            body = body[rrc:] + body[:rrc]
        if flags & FLAG_SEALED:
            try:
                plain = keys.recv_seal.decrypt(body)
            except (IntegrityError, ValueError):
                raise GssError(_BAD_MIC, 0, "Wrap token does not decrypt") from None
            if len(plain) < 16 + ec:
                raise GssError(_DEFECTIVE, 0, "Wrap token shorter than its filler and header")
            inner = plain[-16:]
            if inner[:6] != token[:6] or inner[8:] != token[8:16]:
                raise GssError(_BAD_MIC, 0, "Wrap token header does not match its encrypted copy")
            return plain[: len(plain) - 16 - ec], True
        size = keys.etype.mac_size
        if ec != size or len(body) < size:
            raise GssError(_DEFECTIVE, 0, "Wrap token checksum of the wrong length")
        message = body[:-size]
        expected = keys.recv_seal.checksum(message, token[:4] + b"\x00\x00\x00\x00" + token[8:16])
        if not hmac.compare_digest(expected, body[-size:]):
            raise GssError(_BAD_MIC, 0, "Wrap token checksum does not verify")
        return message, False

    def delete(self) -> None:
        """Drop every derived key; further calls raise GSS_S_NO_CONTEXT."""
        for keys in (self._subkeys, self._ctx_keys):
            if keys is not None:
                keys.close()
        self._send = self._subkeys = self._ctx_keys = None
        self._mic_in = self._mic_out = self._vmic_in = self._vmic_out = None
