"""RPCSEC_GSS wire structures (RFC 2203 §5, RFC 5403 §3.2-§3.3) as frozen dataclasses.

Every ``decode`` reads through :class:`rpclatch.xdr.Decoder` with explicit bounds and raises
:class:`~rpclatch.xdr.XdrError` on anything malformed, including trailing bytes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from rpclatch.rpc.messages import MAX_AUTH_BYTES
from rpclatch.xdr import DEFAULT_MAX_OPAQUE, Decoder, Encoder, XdrError

RPCSEC_GSS_VERS_1 = 1
RPCSEC_GSS_VERS_2 = 2
#: RFC 2203 §5.3.3.1: sequence numbers must stay below MAXSEQ.
MAXSEQ = 0x80000000
#: Context handles we issue are 16 bytes; we accept peers' handles up to this size.
MAX_HANDLE = 128
#: Upper bound for GSS tokens in INIT args/results (Kerberos AP-REQs with PACs are a few KiB).
MAX_GSS_TOKEN = 64 * 1024
#: Limits for BIND_CHANNEL fields (the verifier has to fit in 400 bytes anyway).
MAX_PREFIX = 64
MAX_OID = 32
MAX_HASH = 64
MAX_LIST = 16
#: The longest Kerberos V5 MIC token (RFC 4121 §4.2.6.1): a 16-byte header plus the largest checksum
#: of an enctype MIT krb5 offers, aes256-cts-hmac-sha384-192 (RFC 8009 §5: 192 bits = 24 bytes).
MAX_KRB5_MIC = 16 + 24


class GssProc(IntEnum):
    """``rpc_gss_proc_t`` (RFC 2203 §5, RFC 5403 §3.2)."""

    RPCSEC_GSS_DATA = 0
    RPCSEC_GSS_INIT = 1
    RPCSEC_GSS_CONTINUE_INIT = 2
    RPCSEC_GSS_DESTROY = 3
    RPCSEC_GSS_BIND_CHANNEL = 4


class Service(IntEnum):
    """``rpc_gss_service_t`` (RFC 2203 §5, RFC 5403 §3.2); 0 is reserved.

    The one table of the services: the wire number (the value), the name security settings and
    records use (:attr:`sec_name`: krb5 / krb5i / krb5p as in NFS, RFC 7530 §3.2.1, and
    channel_prot), the RFC's name (:attr:`rfc_name`) and a :attr:`description`.
    """

    NONE = 1  # rpc_gss_svc_none
    INTEGRITY = 2  # rpc_gss_svc_integrity
    PRIVACY = 3  # rpc_gss_svc_privacy
    CHANNEL_PROT = 4  # rpc_gss_svc_channel_prot (v2 only)

    @property
    def sec_name(self) -> str:
        """``krb5``, ``krb5i``, ``krb5p`` (the Kerberos V5 flavors, RFC 7530 §3.2.1) or
        ``channel_prot``."""
        return _SERVICE_NAMES[self][0]

    @property
    def description(self) -> str:
        return _SERVICE_NAMES[self][1]

    @property
    def rfc_name(self) -> str:
        """``rpc_gss_svc_none`` ... ``rpc_gss_svc_channel_prot``."""
        return "rpc_gss_svc_" + self.name.lower()

    @classmethod
    def from_sec_name(cls, name: str) -> Service:
        """The service a :attr:`sec_name` names; ValueError for any other string."""
        for service in cls:
            if _SERVICE_NAMES[service][0] == name:
                return service
        raise ValueError(f"{name!r} names no RPCSEC_GSS service (krb5, krb5i, krb5p, channel_prot)")


#: Per service: (:attr:`Service.sec_name`, :attr:`Service.description`).
_SERVICE_NAMES: dict[Service, tuple[str, str]] = {
    Service.NONE: ("krb5", "Kerberos V5, authentication only"),
    Service.INTEGRITY: ("krb5i", "Kerberos V5 with integrity"),
    Service.PRIVACY: ("krb5p", "Kerberos V5 with privacy"),
    Service.CHANNEL_PROT: ("channel_prot", "protection of the bound channel (RFC 5403 §3.4)"),
}

#: The services a security setting (``--sec krb5|krb5i|krb5p``) can name; channel_prot is not
#: configured but chosen per call once BIND_CHANNEL succeeded (RFC 5403 §3.4).
SEC_SERVICES: tuple[Service, ...] = (Service.NONE, Service.INTEGRITY, Service.PRIVACY)


class BindChanStatus(IntEnum):
    """``rgss2_bind_chan_status`` (RFC 5403 §3.3)."""

    RGSS2_BIND_CHAN_OK = 0
    RGSS2_BIND_CHAN_PREF_NOTSUPP = 1
    RGSS2_BIND_CHAN_HASH_NOTSUPP = 2


# -- credential ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GssCred:
    """``rpc_gss_cred_t`` with its ``rpc_gss_cred_vers_1_t`` arm (RFC 2203 §5, RFC 5403 §3.2).

    v1 and v2 credentials have the same layout; only ``version`` differs.
    """

    version: int
    gss_proc: GssProc
    seq_num: int
    service: Service
    handle: bytes = b""

    def encode(self) -> bytes:
        return encode_cred(self.version, self.gss_proc, self.seq_num, self.service, self.handle)

    @classmethod
    def decode(cls, data: bytes) -> GssCred:
        """Strict: the body must be exactly 20 bytes + padded handle (as Linux checks), the version
        1 or 2 (else :class:`UnsupportedVersion`) and proc/service known."""
        return cls(*decode_cred_fields(data))


def encode_cred(version: int, gss_proc: int, seq_num: int, service: int, handle: bytes) -> bytes:
    """XDR of ``rpc_gss_cred_t`` without building a :class:`GssCred`."""
    return CRED_START.pack(version, gss_proc, seq_num) + encode_cred_tail(service, handle)


def encode_cred_tail(service: int, handle: bytes) -> bytes:
    """The rest of ``rpc_gss_cred_t`` after seq_num: service and the handle, padded (RFC 2203 §5).

    Fixed for one context and service, so a client encodes it once per context; a credential is
    ``CRED_START.pack(version, gss_proc, seq_num) + tail``."""
    hlen = len(handle)
    if hlen > MAX_HANDLE:
        raise XdrError(f"handle of {hlen} bytes exceeds {MAX_HANDLE}")
    return _CRED_TAIL_HEAD.pack(service, hlen) + handle + b"\0" * (-hlen & 3)


def decode_cred_fields(data: bytes) -> tuple[int, GssProc, int, Service, bytes]:
    """(version, gss_proc, seq_num, service, handle) of a credential body; see :meth:`GssCred.decode`.
    (The server's per-call credential reader.)"""
    n = len(data)
    if n < 20:
        raise XdrError(f"RPCSEC_GSS credential of {n} bytes is too short")
    version, proc, seq, service, hlen = _CRED_HEAD.unpack_from(data)
    if version not in _VERSIONS:
        raise UnsupportedVersion(version)
    if hlen > MAX_HANDLE:
        raise XdrError(f"handle length {hlen} exceeds {MAX_HANDLE}")
    if n != 20 + ((hlen + 3) & ~3):
        raise XdrError("credential length does not match its handle length")
    gss_proc = _PROCS.get(proc)
    svc = _SERVICES.get(service)
    if gss_proc is None or svc is None:
        raise XdrError(f"bad gss_proc {proc} or service {service}")
    return version, gss_proc, seq, svc, data[20 : 20 + hlen]


_CRED_HEAD = struct.Struct(">IIIII")
#: The first fields of ``rpc_gss_cred_t``: version, gss_proc, seq_num (see :func:`encode_cred_tail`).
CRED_START = struct.Struct(">III")
_CRED_TAIL_HEAD = struct.Struct(">II")
_VERSIONS = frozenset((RPCSEC_GSS_VERS_1, RPCSEC_GSS_VERS_2))
_PROCS = {int(p): p for p in GssProc}
_SERVICES = {int(v): v for v in Service}
_U32 = struct.Struct(">I")
_CALL_HEAD = struct.Struct(">IIIIIIII")


def encode_call_header(
    xid: int, prog: int, vers: int, proc: int, cred_flavor: int, cred_body: bytes, rpcvers: int = 2
) -> bytes:
    """XDR of an RPC call from ``xid`` through the credential: what RFC 2203 §5.3.1 signs.

    Same bytes as :meth:`rpclatch.rpc.messages.CallMessage.encode_header_through_cred`, built with
    one ``struct.pack`` (the client signs it on every call).
    """
    n = len(cred_body)
    header = _CALL_HEAD.pack(xid, 0, rpcvers, prog, vers, proc, cred_flavor, n) + cred_body
    return header + _PAD[n & 3] if n & 3 else header


def encode_opaque(data: bytes) -> bytes:
    """XDR ``opaque<>``: length, bytes, zero padding (RFC 4506 §4.10)."""
    n = len(data)
    return _U32.pack(n) + data + b"\0" * (-n & 3)


def _read_opaque(data: bytes, offset: int, max_len: int) -> tuple[bytes, int]:
    if len(data) - offset < 4:
        raise XdrError("truncated opaque length")
    (n,) = _U32.unpack_from(data, offset)
    if n > max_len:
        raise XdrError(f"opaque length {n} exceeds limit {max_len}")
    end = offset + 4 + n
    padded = offset + 4 + ((n + 3) & ~3)
    if padded > len(data):
        raise XdrError("opaque overruns the buffer")
    return data[offset + 4 : end], padded


class UnsupportedVersion(XdrError):
    """The credential names an RPCSEC_GSS version we do not implement (RFC 2203 §5.1)."""

    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(f"RPCSEC_GSS version {version} not supported")


# -- context creation (RFC 2203 §5.2) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InitArg:
    """``rpc_gss_init_arg``: the GSS token of an INIT/CONTINUE_INIT call."""

    gss_token: bytes

    def encode(self) -> bytes:
        return Encoder().opaque(self.gss_token, MAX_GSS_TOKEN).to_bytes()

    @classmethod
    def decode(cls, data: bytes) -> InitArg:
        dec = Decoder(data)
        token = dec.opaque(MAX_GSS_TOKEN)
        dec.done()
        return cls(token)


@dataclass(frozen=True, slots=True)
class InitRes:
    """``rpc_gss_init_res`` (RFC 2203 §5.2.3.1)."""

    handle: bytes
    gss_major: int
    gss_minor: int
    seq_window: int
    gss_token: bytes

    def encode(self) -> bytes:
        enc = Encoder().opaque(self.handle, MAX_HANDLE)
        enc.uint32(self.gss_major).uint32(self.gss_minor).uint32(self.seq_window)
        return enc.opaque(self.gss_token, MAX_GSS_TOKEN).to_bytes()

    @classmethod
    def decode(cls, data: bytes) -> InitRes:
        dec = Decoder(data)
        res = cls(dec.opaque(MAX_HANDLE), dec.uint32(), dec.uint32(), dec.uint32(), dec.opaque(MAX_GSS_TOKEN))
        dec.done()
        return res


# -- data exchange (RFC 2203 §5.3.2) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntegData:
    """``rpc_gss_integ_data``: ``checksum`` = MIC over ``databody_integ`` (the inner bytes)."""

    databody_integ: bytes
    checksum: bytes

    def encode(self) -> bytes:
        if len(self.checksum) > MAX_GSS_TOKEN:
            raise XdrError("checksum too long")
        return encode_integ(self.databody_integ, self.checksum)

    @classmethod
    def decode(cls, data: bytes) -> IntegData:
        return cls(*decode_integ(data))


@dataclass(frozen=True, slots=True)
class PrivData:
    """``rpc_gss_priv_data``: ``databody_priv`` = GSS_Wrap(conf=TRUE, rpc_gss_data_t)."""

    databody_priv: bytes

    def encode(self) -> bytes:
        return encode_opaque(self.databody_priv)

    @classmethod
    def decode(cls, data: bytes) -> PrivData:
        return cls(decode_priv(data))


_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


def encode_integ(databody: bytes, checksum: bytes) -> bytes:
    """XDR of ``rpc_gss_integ_data`` without building an :class:`IntegData` (hot path: one copy)."""
    n, m = len(databody), len(checksum)
    return b"".join((_U32.pack(n), databody, _PAD[n & 3], _U32.pack(m), checksum, _PAD[m & 3]))


def decode_integ(data: bytes) -> tuple[bytes, bytes]:
    """(databody_integ, checksum) of an ``rpc_gss_integ_data``; see :meth:`IntegData.decode`.

    Hot path, written out: the same bounds checks as two :func:`_read_opaque` calls and a
    trailing-bytes check, every length checked before it is used."""
    total = len(data)
    if total < 8:
        raise XdrError("truncated rpc_gss_integ_data")
    (n,) = _U32.unpack_from(data, 0)
    if n > DEFAULT_MAX_OPAQUE:
        raise XdrError(f"opaque length {n} exceeds limit {DEFAULT_MAX_OPAQUE}")
    pos = 4 + ((n + 3) & ~3)
    if pos + 4 > total:
        raise XdrError("databody_integ overruns the buffer")
    (m,) = _U32.unpack_from(data, pos)
    if m > MAX_GSS_TOKEN:
        raise XdrError(f"opaque length {m} exceeds limit {MAX_GSS_TOKEN}")
    end = pos + 4 + ((m + 3) & ~3)
    if end != total:
        raise XdrError(
            "checksum overruns the buffer" if end > total else f"{total - end} unexpected trailing bytes"
        )
    return data[4 : 4 + n], data[pos + 4 : pos + 4 + m]


def decode_priv(data: bytes) -> bytes:
    """``databody_priv`` of an ``rpc_gss_priv_data``; see :meth:`PrivData.decode`."""
    body, pos = _read_opaque(data, 0, DEFAULT_MAX_OPAQUE)
    if pos != len(data):
        raise XdrError(f"{len(data) - pos} unexpected trailing bytes")
    return body


# -- RPCSEC_GSS_BIND_CHANNEL (RFC 5403 §3.3) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class HashAlgorithm:
    """A channel-binding hash: its name, OID content octets and hash function."""

    name: str
    oid: bytes
    digest: Callable[[bytes], bytes] = field(compare=False, repr=False)


def _h(name: str) -> Callable[[bytes], bytes]:
    return lambda data: hashlib.new(name, data).digest()


#: RFC 4055 / NIST hash OIDs (content octets, without the DER tag; see :func:`normalize_oid`).
SHA1 = HashAlgorithm("sha1", bytes.fromhex("2b0e03021a"), _h("sha1"))
SHA256 = HashAlgorithm("sha256", bytes.fromhex("608648016503040201"), _h("sha256"))
SHA384 = HashAlgorithm("sha384", bytes.fromhex("608648016503040202"), _h("sha384"))
SHA512 = HashAlgorithm("sha512", bytes.fromhex("608648016503040203"), _h("sha512"))
HASHES_BY_OID = {h.oid: h for h in (SHA256, SHA1, SHA384, SHA512)}


def normalize_oid(oid: bytes) -> bytes:
    """OID content octets: strips a DER ``06 len`` tag if present (RFC 5403 is ambiguous)."""
    if len(oid) >= 2 and oid[0] == 0x06 and oid[1] == len(oid) - 2:
        return oid[2:]
    return oid


def channel_bindings_bytes(prefix: str, data: bytes) -> bytes:
    """The canonical channel bindings, ``prefix ":" data`` (RFC 5056 §2.1)."""
    return prefix.encode("ascii") + b":" + data


def _xdr_opaque_size(n: int) -> int:
    return 4 + (n + 3) // 4 * 4


def bind_chan_verifier_size(prefix: bytes, oid: bytes, mic_len: int = MAX_KRB5_MIC) -> int:
    """Encoded size of a BIND_CHANNEL verifier (``rgss2_bind_chan_verf_args``, RFC 5403 §3.3) with
    this prefix and hash OID and a MIC of ``mic_len`` bytes (default: the longest krb5 MIC).

    It must fit an ``opaque_auth`` body (RFC 5531 §8.2: 400 bytes). With
    :data:`MAX_PREFIX`, :data:`MAX_OID` and :data:`MAX_KRB5_MIC` the worst case is 68 + 36 + 44 =
    148 bytes, so every prefix/hash we accept fits; :func:`bind_chan_request_problem` says why a
    prefix/hash cannot be sent at all.
    """
    return _xdr_opaque_size(len(prefix)) + _xdr_opaque_size(len(oid)) + _xdr_opaque_size(mic_len)


def bind_chan_request_problem(prefix: str, algorithm: HashAlgorithm) -> str | None:
    """None if a BIND_CHANNEL request with ``prefix`` and ``algorithm`` can be sent (its verifier
    fits 400 bytes with any krb5 MIC and peers decode it), else a one-line reason."""
    raw = prefix.encode("ascii", "replace")
    if len(raw) > MAX_PREFIX:
        return (
            f"channel-binding prefix {prefix[:16]!r}... is {len(raw)} bytes; BIND_CHANNEL allows at "
            f"most {MAX_PREFIX}"
        )
    if len(algorithm.oid) > MAX_OID:
        return f"hash OID of {algorithm.name} is {len(algorithm.oid)} bytes; at most {MAX_OID}"
    size = bind_chan_verifier_size(raw, algorithm.oid)
    if size > MAX_AUTH_BYTES:  # unreachable with the limits above; kept if they are ever raised
        return f"BIND_CHANNEL verifier would be {size} bytes; opaque_auth allows {MAX_AUTH_BYTES}"
    return None


@dataclass(frozen=True, slots=True)
class BindChanMicInArgs:
    """``rgss2_bind_chan_MIC_in_args``: the hash of the channel bindings (never sent alone)."""

    bind_chan_hash: bytes

    def encode(self) -> bytes:
        return Encoder().opaque(self.bind_chan_hash, MAX_HASH).to_bytes()

    @classmethod
    def decode(cls, data: bytes) -> BindChanMicInArgs:
        dec = Decoder(data)
        res = cls(dec.opaque(MAX_HASH))
        dec.done()
        return res


@dataclass(frozen=True, slots=True)
class BindChanVerfArgs:
    """``rgss2_bind_chan_verf_args``: the BIND_CHANNEL request verifier body (RFC 5403 §3.3)."""

    chan_bind_prefix: bytes
    chan_bind_oid_hash: bytes
    chan_mic: bytes

    def encode(self) -> bytes:
        enc = Encoder().opaque(self.chan_bind_prefix, MAX_PREFIX)
        enc.opaque(self.chan_bind_oid_hash, MAX_OID)
        out = enc.opaque(self.chan_mic, MAX_AUTH_BYTES).to_bytes()
        if len(out) > MAX_AUTH_BYTES:
            raise XdrError(f"BIND_CHANNEL verifier of {len(out)} bytes exceeds {MAX_AUTH_BYTES}")
        return out

    @classmethod
    def decode(cls, data: bytes) -> BindChanVerfArgs:
        dec = Decoder(data)
        res = cls(dec.opaque(MAX_PREFIX), dec.opaque(MAX_OID), dec.opaque(MAX_AUTH_BYTES))
        dec.done()
        return res


@dataclass(frozen=True, slots=True)
class BindChanRes:
    """``rgss2_bind_chan_res``: status plus the prefixes or hash OIDs the target supports."""

    status: BindChanStatus
    pref_list: tuple[bytes, ...] = ()
    oid_list: tuple[bytes, ...] = ()

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.status)
        if self.status == BindChanStatus.RGSS2_BIND_CHAN_PREF_NOTSUPP:
            enc.uint32(len(self.pref_list))
            for p in self.pref_list:
                enc.opaque(p, MAX_PREFIX)
        elif self.status == BindChanStatus.RGSS2_BIND_CHAN_HASH_NOTSUPP:
            if not self.oid_list:
                raise XdrError("rbcr_oid_list MUST have one or more elements (RFC 5403 §3.3)")
            enc.uint32(len(self.oid_list))
            for o in self.oid_list:
                enc.opaque(o, MAX_OID)

    @classmethod
    def decode_from(cls, dec: Decoder) -> BindChanRes:
        status = dec.enum(BindChanStatus)
        if status == BindChanStatus.RGSS2_BIND_CHAN_PREF_NOTSUPP:
            return cls(status, tuple(dec.array(lambda: dec.opaque(MAX_PREFIX), MAX_LIST)))
        if status == BindChanStatus.RGSS2_BIND_CHAN_HASH_NOTSUPP:
            oids = tuple(dec.array(lambda: dec.opaque(MAX_OID), MAX_LIST))
            if not oids:
                raise XdrError("empty rbcr_oid_list (RFC 5403 §3.3 requires one or more)")
            return cls(status, (), oids)
        return cls(status)


@dataclass(frozen=True, slots=True)
class BindChanMicInRes:
    """``rgss2_bind_chan_MIC_in_res``: what the reply MIC covers (seq_num, hash, result)."""

    seq_num: int
    bind_chan_hash: bytes
    res: BindChanRes

    def encode(self) -> bytes:
        enc = Encoder().uint32(self.seq_num).opaque(self.bind_chan_hash, MAX_HASH)
        self.res.encode_into(enc)
        return enc.to_bytes()

    @classmethod
    def decode(cls, data: bytes) -> BindChanMicInRes:
        dec = Decoder(data)
        res = cls(dec.uint32(), dec.opaque(MAX_HASH), BindChanRes.decode_from(dec))
        dec.done()
        return res


@dataclass(frozen=True, slots=True)
class BindChanVerfRes:
    """``rgss2_bind_chan_verf_res``: the BIND_CHANNEL reply verifier body."""

    res: BindChanRes
    mic: bytes

    def encode(self) -> bytes:
        enc = Encoder()
        self.res.encode_into(enc)
        out = enc.opaque(self.mic, MAX_AUTH_BYTES).to_bytes()
        if len(out) > MAX_AUTH_BYTES:
            raise XdrError(f"BIND_CHANNEL reply verifier of {len(out)} bytes exceeds {MAX_AUTH_BYTES}")
        return out

    @classmethod
    def decode(cls, data: bytes) -> BindChanVerfRes:
        dec = Decoder(data)
        res = cls(BindChanRes.decode_from(dec), dec.opaque(MAX_AUTH_BYTES))
        dec.done()
        return res


def be32(value: int) -> bytes:
    """BE32 of a seq_num or seq_window (the data of the reply-verifier MICs, RFC 2203 §5.2.3.1)."""
    return struct.pack(">I", value)
