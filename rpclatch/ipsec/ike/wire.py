"""IKEv2 wire codec (RFC 7296 §3): the header, every payload this core uses, and payload chaining.

Everything is a frozen dataclass; :func:`decode_message` and :func:`decode_payloads` either return
one or raise :class:`~rpclatch.ipsec.ike.errors.IkeDecodeError` (nothing else, whatever the bytes).
Bounds: a message is at most :data:`MAX_MESSAGE_SIZE` octets and holds at most
:data:`MAX_PAYLOADS` payloads (counting those inside SK); every length field is checked against
what is left of its container.

The Encrypted payload (SK, §3.14) is decoded as :class:`EncryptedPayload`: its first inner payload
type and the still-protected body. :mod:`rpclatch.ipsec.ike.crypto` opens it, and
:func:`decode_payloads` then parses the plaintext chain. An SK payload MUST be the last payload of
a message (§3.14); anything else is INVALID_SYNTAX.

Unknown payload types (§2.5): with the critical bit clear they are kept as
:class:`UnknownPayload` and otherwise ignored; with it set the whole message is refused with
:class:`~rpclatch.ipsec.ike.errors.UnsupportedCriticalPayload`. The critical bit of known payload
types is ignored on receipt and sent as zero (§3.2).
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, cast

from rpclatch.ipsec.ike.errors import (
    IkeDecodeError,
    InvalidMajorVersion,
    NotifyType,
    UnsupportedCriticalPayload,
)
from rpclatch.ipsec.model import IdType, IkeId

#: largest IKE message accepted or produced (UDP payload; RFC 7296 §2 asks for at least 1280 octets)
MAX_MESSAGE_SIZE = 65507
#: largest number of payloads in one message, SK contents included
MAX_PAYLOADS = 64
HEADER_LEN = 28
GENERIC_LEN = 4
IKE_VERSION = 0x20  # major 2, minor 0

_HEADER = struct.Struct(">QQBBBBII")
_GENERIC = struct.Struct(">BBH")
_PROPOSAL = struct.Struct(">BBHBBBB")
_TRANSFORM = struct.Struct(">BBHBBH")
_ATTR = struct.Struct(">HH")


class ExchangeType(IntEnum):
    """RFC 7296 §3.1."""

    IKE_SA_INIT = 34
    IKE_AUTH = 35
    CREATE_CHILD_SA = 36
    INFORMATIONAL = 37


class PayloadType(IntEnum):
    """RFC 7296 §3.2."""

    NONE = 0
    SA = 33
    KE = 34
    IDI = 35
    IDR = 36
    CERT = 37
    CERTREQ = 38
    AUTH = 39
    NONCE = 40
    NOTIFY = 41
    DELETE = 42
    VENDOR = 43
    TSI = 44
    TSR = 45
    SK = 46
    CP = 47
    EAP = 48


class Flags:
    """Header flag bits (RFC 7296 §3.1)."""

    INITIATOR = 0x08
    VERSION = 0x10
    RESPONSE = 0x20


class ProtocolId(IntEnum):
    """Proposal / Notify / Delete protocol IDs (RFC 7296 §3.3.1)."""

    NONE = 0
    IKE = 1
    AH = 2
    ESP = 3


class TransformType(IntEnum):
    """RFC 7296 §3.3.2."""

    ENCR = 1
    PRF = 2
    INTEG = 3
    DH = 4
    ESN = 5


class EncrId(IntEnum):
    ENCR_AES_CBC = 12
    ENCR_AES_GCM_8 = 18
    ENCR_AES_GCM_12 = 19
    ENCR_AES_GCM_16 = 20
    ENCR_CHACHA20_POLY1305 = 28  # RFC 7634 (ESP only here)


class PrfId(IntEnum):
    PRF_HMAC_SHA2_256 = 5
    PRF_HMAC_SHA2_384 = 6
    PRF_HMAC_SHA2_512 = 7


class IntegId(IntEnum):
    NONE = 0
    AUTH_HMAC_SHA2_256_128 = 12


class DhGroup(IntEnum):
    """Key-exchange groups (RFC 7296 §3.3.2; RFC 5903; RFC 8031)."""

    MODP_2048 = 14
    ECP_256 = 19
    CURVE25519 = 31


class EsnId(IntEnum):
    NO_ESN = 0
    ESN = 1


class AuthMethodId(IntEnum):
    """AUTH payload methods (RFC 7296 §3.8; RFC 7619; RFC 7427)."""

    RSA_SIG = 1
    SHARED_KEY_MIC = 2
    DSS_SIG = 3
    NULL = 13
    DIGITAL_SIGNATURE = 14


class CertEncoding(IntEnum):
    """CERT / CERTREQ encodings (RFC 7296 §3.6; RFC 7670)."""

    X509_SIGNATURE = 4
    RAW_PUBLIC_KEY = 15


class HashAlgorithm(IntEnum):
    """SIGNATURE_HASH_ALGORITHMS values (RFC 7427 §4; RFC 8420: IDENTITY for Ed25519)."""

    SHA1 = 1
    SHA2_256 = 2
    SHA2_384 = 3
    SHA2_512 = 4
    IDENTITY = 5


class TsType(IntEnum):
    TS_IPV4_ADDR_RANGE = 7
    TS_IPV6_ADDR_RANGE = 8


KEY_LENGTH_ATTRIBUTE = 14


# ---------------------------------------------------------------------------------------------
# header


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed IKE header (RFC 7296 §3.1). ``length`` is filled in by :func:`encode_message`."""

    spi_i: int
    spi_r: int
    next_payload: int
    exchange: int
    flags: int
    message_id: int
    length: int = 0
    version: int = IKE_VERSION

    @property
    def is_response(self) -> bool:
        return bool(self.flags & Flags.RESPONSE)

    @property
    def from_initiator(self) -> bool:
        return bool(self.flags & Flags.INITIATOR)

    def encode(self) -> bytes:
        return _HEADER.pack(
            self.spi_i,
            self.spi_r,
            self.next_payload,
            self.version,
            self.exchange,
            self.flags,
            self.message_id,
            self.length,
        )

    @classmethod
    def decode(cls, data: bytes) -> Header:
        if len(data) < HEADER_LEN:
            raise IkeDecodeError(f"message of {len(data)} octets is shorter than the IKE header")
        spi_i, spi_r, nxt, version, exchange, flags, mid, length = _HEADER.unpack_from(data)
        if version >> 4 != 2:
            raise InvalidMajorVersion(f"major version {version >> 4}")
        return cls(spi_i, spi_r, nxt, exchange, flags, mid, length, version)


# ---------------------------------------------------------------------------------------------
# payloads


@dataclass(frozen=True, slots=True)
class Attribute:
    """A transform attribute (RFC 7296 §3.3.5); TV format when ``tv`` (2-octet value)."""

    attr_type: int
    value: bytes
    tv: bool = True


@dataclass(frozen=True, slots=True)
class Transform:
    """RFC 7296 §3.3.2."""

    transform_type: int
    transform_id: int
    attributes: tuple[Attribute, ...] = ()

    @property
    def key_length(self) -> int | None:
        for a in self.attributes:
            if a.attr_type == KEY_LENGTH_ATTRIBUTE and a.tv:
                return int.from_bytes(a.value, "big")
        return None

    @classmethod
    def with_key_length(cls, transform_type: int, transform_id: int, bits: int | None) -> Transform:
        if bits is None:
            return cls(transform_type, transform_id)
        return cls(transform_type, transform_id, (Attribute(KEY_LENGTH_ATTRIBUTE, bits.to_bytes(2, "big")),))


@dataclass(frozen=True, slots=True)
class Proposal:
    """RFC 7296 §3.3.1."""

    number: int
    protocol: int
    spi: bytes
    transforms: tuple[Transform, ...]


@dataclass(frozen=True, slots=True)
class SaPayload:
    proposals: tuple[Proposal, ...]
    payload_type = PayloadType.SA


@dataclass(frozen=True, slots=True)
class KePayload:
    group: int
    data: bytes
    payload_type = PayloadType.KE


@dataclass(frozen=True, slots=True)
class IdPayload:
    """IDi or IDr (RFC 7296 §3.5); ``ID_NULL`` (13) per RFC 7619 §2.2."""

    id_type: int
    data: bytes
    responder: bool = False

    @property
    def payload_type(self) -> PayloadType:
        return PayloadType.IDR if self.responder else PayloadType.IDI

    def body(self) -> bytes:
        """``RestOfInitIDPayload``/``RestOfRespIDPayload`` of RFC 7296 §2.15."""
        return bytes((self.id_type, 0, 0, 0)) + self.data

    def ike_id(self) -> IkeId | None:
        try:
            return IkeId(IdType(self.id_type), self.data)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class CertPayload:
    """RFC 7296 §3.6; encoding 15 carries a DER SubjectPublicKeyInfo (RFC 7670 §3)."""

    encoding: int
    data: bytes
    payload_type = PayloadType.CERT


@dataclass(frozen=True, slots=True)
class CertReqPayload:
    encoding: int
    data: bytes
    payload_type = PayloadType.CERTREQ


@dataclass(frozen=True, slots=True)
class AuthPayload:
    method: int
    data: bytes
    payload_type = PayloadType.AUTH


@dataclass(frozen=True, slots=True)
class NoncePayload:
    """RFC 7296 §3.9: 16..256 octets."""

    data: bytes
    payload_type = PayloadType.NONCE


@dataclass(frozen=True, slots=True)
class NotifyPayload:
    """RFC 7296 §3.10. ``notify_type`` stays an int: unknown types are legal (and ignorable)."""

    notify_type: int
    data: bytes = b""
    protocol: int = 0
    spi: bytes = b""
    payload_type = PayloadType.NOTIFY


@dataclass(frozen=True, slots=True)
class DeletePayload:
    """RFC 7296 §3.11: IKE (no SPI) or ESP/AH (4-octet SPIs)."""

    protocol: int
    spis: tuple[bytes, ...] = ()
    spi_size: int = 0
    payload_type = PayloadType.DELETE


@dataclass(frozen=True, slots=True)
class VendorIdPayload:
    data: bytes
    payload_type = PayloadType.VENDOR


@dataclass(frozen=True, slots=True)
class TrafficSelector:
    """RFC 7296 §3.13.1: one protocol, one port range, one address range (inclusive)."""

    ip_proto: int
    start_port: int
    end_port: int
    start_addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    end_addr: ipaddress.IPv4Address | ipaddress.IPv6Address

    @property
    def ts_type(self) -> int:
        return TsType.TS_IPV4_ADDR_RANGE if self.start_addr.version == 4 else TsType.TS_IPV6_ADDR_RANGE


@dataclass(frozen=True, slots=True)
class TsPayload:
    selectors: tuple[TrafficSelector, ...]
    responder: bool = False

    @property
    def payload_type(self) -> PayloadType:
        return PayloadType.TSR if self.responder else PayloadType.TSI


@dataclass(frozen=True, slots=True)
class EncryptedPayload:
    """RFC 7296 §3.14: ``first`` is the type of the first inner payload; ``body`` = IV ||
    ciphertext || ICV, still protected."""

    first: int
    body: bytes
    payload_type = PayloadType.SK


@dataclass(frozen=True, slots=True)
class UnknownPayload:
    """A payload type this codec does not know, critical bit clear (RFC 7296 §2.5); also CP, EAP."""

    type_code: int
    body: bytes
    critical: bool = False

    @property
    def payload_type(self) -> int:
        return self.type_code


Payload = (
    SaPayload
    | KePayload
    | IdPayload
    | CertPayload
    | CertReqPayload
    | AuthPayload
    | NoncePayload
    | NotifyPayload
    | DeletePayload
    | VendorIdPayload
    | TsPayload
    | EncryptedPayload
    | UnknownPayload
)


@dataclass(frozen=True, slots=True)
class Message:
    """A whole IKE message: header and payloads (an SK payload, if any, is last and unopened)."""

    header: Header
    payloads: tuple[Payload, ...]

    def find(self, kind: type[Payload]) -> Payload | None:
        for p in self.payloads:
            if isinstance(p, kind):
                return p
        return None


# ---------------------------------------------------------------------------------------------
# encoding


def _encode_transform(t: Transform, last: bool) -> bytes:
    if not t.attributes:
        return _TRANSFORM.pack(0 if last else 3, 0, 8, t.transform_type, 0, t.transform_id)
    attrs = b"".join(
        _ATTR.pack(0x8000 | a.attr_type, int.from_bytes(a.value.rjust(2, b"\0")[-2:], "big"))
        if a.tv
        else _ATTR.pack(a.attr_type & 0x7FFF, len(a.value)) + a.value
        for a in t.attributes
    )
    return _TRANSFORM.pack(0 if last else 3, 0, 8 + len(attrs), t.transform_type, 0, t.transform_id) + attrs


@functools.lru_cache(maxsize=256)
def _encode_transforms(transforms: tuple[Transform, ...]) -> bytes:
    """A proposal's transform chain. Cached: the transforms we send come from a handful of
    configured suites (and the result is immutable)."""
    n = len(transforms)
    return b"".join([_encode_transform(t, i == n - 1) for i, t in enumerate(transforms)])


def _encode_proposal(p: Proposal, last: bool) -> bytes:
    ts = _encode_transforms(p.transforms)
    head = _PROPOSAL.pack(
        0 if last else 2, 0, 8 + len(p.spi) + len(ts), p.number, p.protocol, len(p.spi), len(p.transforms)
    )
    return head + p.spi + ts


def _encode_ts(ts: TrafficSelector) -> bytes:
    addrs = ts.start_addr.packed + ts.end_addr.packed
    return struct.pack(">BBHHH", ts.ts_type, ts.ip_proto, 8 + len(addrs), ts.start_port, ts.end_port) + addrs


def _encode_sa(p: SaPayload) -> bytes:
    n = len(p.proposals)
    return b"".join(_encode_proposal(x, i == n - 1) for i, x in enumerate(p.proposals))


def _encode_delete(p: DeletePayload) -> bytes:
    size = len(p.spis[0]) if p.spis else p.spi_size
    return struct.pack(">BBH", p.protocol, size, len(p.spis)) + b"".join(p.spis)


_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    SaPayload: _encode_sa,
    KePayload: lambda p: struct.pack(">HH", p.group, 0) + p.data,
    IdPayload: lambda p: p.body(),
    CertPayload: lambda p: bytes((p.encoding,)) + p.data,
    CertReqPayload: lambda p: bytes((p.encoding,)) + p.data,
    AuthPayload: lambda p: bytes((p.method, 0, 0, 0)) + p.data,
    NoncePayload: lambda p: p.data,
    VendorIdPayload: lambda p: p.data,
    NotifyPayload: lambda p: struct.pack(">BBH", p.protocol, len(p.spi), p.notify_type) + p.spi + p.data,
    DeletePayload: _encode_delete,
    TsPayload: lambda p: (
        struct.pack(">BBH", len(p.selectors), 0, 0) + b"".join(_encode_ts(t) for t in p.selectors)
    ),
    EncryptedPayload: lambda p: p.body,
    UnknownPayload: lambda p: p.body,
}


def encode_payload_body(p: Payload) -> bytes:
    """The octets after the generic payload header."""
    return _ENCODERS[type(p)](p)


def encode_payloads(payloads: Sequence[Payload], next_after: int = PayloadType.NONE) -> tuple[int, bytes]:
    """Chain payloads (RFC 7296 §3.2): returns (type of the first, encoded octets)."""
    if not payloads:
        return PayloadType.NONE, b""
    types = [p.payload_type for p in payloads]
    types.append(next_after)
    parts: list[bytes] = []
    pack = _GENERIC.pack
    for i, p in enumerate(payloads):
        kind = type(p)
        body = _ENCODERS[kind](p)
        nxt, flags = types[i + 1], 0
        if kind is EncryptedPayload:
            nxt = cast(EncryptedPayload, p).first
        elif kind is UnknownPayload and cast(UnknownPayload, p).critical:
            flags = 0x80
        parts.append(pack(nxt, flags, GENERIC_LEN + len(body)))
        parts.append(body)
    return int(types[0]), b"".join(parts)


def encode_message(header: Header, payloads: Sequence[Payload]) -> bytes:
    """Header + payload chain, with the header's next-payload and length fields filled in."""
    first, body = encode_payloads(payloads)
    total = HEADER_LEN + len(body)
    if total > MAX_MESSAGE_SIZE:
        raise ValueError(f"IKE message of {total} octets exceeds {MAX_MESSAGE_SIZE}")
    hdr = Header(
        header.spi_i,
        header.spi_r,
        first,
        header.exchange,
        header.flags,
        header.message_id,
        total,
        header.version,
    )
    return hdr.encode() + body


# ---------------------------------------------------------------------------------------------
# decoding


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise IkeDecodeError(what)


def _decode_attributes(data: bytes) -> tuple[Attribute, ...]:
    out: list[Attribute] = []
    pos = 0
    end = len(data)
    while pos < end:
        if end - pos < 4:
            raise IkeDecodeError("truncated transform attribute")
        af_type, val = _ATTR.unpack_from(data, pos)
        pos += 4
        if af_type & 0x8000:
            out.append(Attribute(af_type & 0x7FFF, val.to_bytes(2, "big"), True))
        else:
            if end - pos < val:
                raise IkeDecodeError("transform attribute length exceeds transform")
            out.append(Attribute(af_type, data[pos : pos + val], False))
            pos += val
    return tuple(out)


def _decode_sa(data: bytes) -> SaPayload:
    """SA payload body -> SaPayload. Small bodies go through a bounded cache (256 entries of at
    most 1 KiB): peers of one kind send byte-identical IKE_SA_INIT proposals, and the result is
    immutable; a malformed body raises every time."""
    return _decode_sa_cached(data) if len(data) <= 1024 else _decode_sa_uncached(data)


def _decode_sa_uncached(data: bytes) -> SaPayload:
    proposals: list[Proposal] = []
    pos = 0
    end = len(data)
    last = False
    while not last:
        if end - pos < 8:
            raise IkeDecodeError("truncated proposal")
        more, _, plen, num, proto, spi_size, ntrans = _PROPOSAL.unpack_from(data, pos)
        if more not in (0, 2):
            raise IkeDecodeError(f"bad proposal 'last substruc' {more}")
        if not 8 + spi_size <= plen <= end - pos:
            raise IkeDecodeError("proposal length out of bounds")
        last = more == 0
        spi = data[pos + 8 : pos + 8 + spi_size]
        tend = pos + plen
        chain = data[pos + 8 + spi_size : tend]
        # CHILD_SA proposals differ from message to message only by their SPI: their transform
        # chains go through a bounded cache of their own (256 entries of at most 1 KiB)
        transforms = _decode_transforms_cached(chain, ntrans) if len(chain) <= 1024 else None
        if transforms is None:
            transforms = _decode_transforms(chain, ntrans)
        if len(proposals) >= MAX_PAYLOADS:
            raise IkeDecodeError("too many proposals")
        proposals.append(Proposal(num, proto, spi, transforms))
        pos = tend
    if pos != end:
        raise IkeDecodeError("octets after the last proposal")
    return SaPayload(tuple(proposals))


def _decode_transforms(data: bytes, ntrans: int) -> tuple[Transform, ...]:
    """The transform chain of one proposal, which must fill ``data`` and hold ``ntrans``."""
    transforms: list[Transform] = []
    tpos = 0
    tend = len(data)
    tlast = ntrans == 0
    while not tlast:
        if tend - tpos < 8:
            raise IkeDecodeError("truncated transform")
        tmore, _, tlen, ttype, _, tid = _TRANSFORM.unpack_from(data, tpos)
        if tmore not in (0, 3):
            raise IkeDecodeError(f"bad transform 'last substruc' {tmore}")
        if not 8 <= tlen <= tend - tpos:
            raise IkeDecodeError("transform length out of bounds")
        attrs = _decode_attributes(data[tpos + 8 : tpos + tlen]) if tlen > 8 else ()
        transforms.append(Transform(ttype, tid, attrs))
        tpos += tlen
        tlast = tmore == 0
    if tpos != tend:
        raise IkeDecodeError("octets after the last transform")
    if len(transforms) != ntrans:
        raise IkeDecodeError(f"proposal announces {ntrans} transforms, carries {len(transforms)}")
    return tuple(transforms)


_decode_sa_cached = functools.lru_cache(maxsize=256)(_decode_sa_uncached)
_decode_transforms_cached = functools.lru_cache(maxsize=256)(_decode_transforms)

_TS = struct.Struct(">BBHHH")


@functools.lru_cache(maxsize=1024)
def _address(packed: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """A 4- or 16-octet address; cached (peers repeat theirs, and the objects are immutable)."""
    return ipaddress.IPv4Address(packed) if len(packed) == 4 else ipaddress.IPv6Address(packed)


def _decode_ts(data: bytes, responder: bool) -> TsPayload:
    if len(data) < 4:
        raise IkeDecodeError("truncated TS payload")
    count = data[0]
    if count < 1:
        raise IkeDecodeError("TS payload with no selector")
    pos = 4
    end = len(data)
    out: list[TrafficSelector] = []
    for _ in range(count):
        if end - pos < 8:
            raise IkeDecodeError("truncated traffic selector")
        ts_type, proto, slen, sport, eport = _TS.unpack_from(data, pos)
        if ts_type == TsType.TS_IPV4_ADDR_RANGE:
            alen = 4
        elif ts_type == TsType.TS_IPV6_ADDR_RANGE:
            alen = 16
        else:
            raise IkeDecodeError(f"unsupported TS type {ts_type}")
        if slen != 8 + 2 * alen or slen > end - pos:
            raise IkeDecodeError("traffic selector length mismatch")
        start = _address(data[pos + 8 : pos + 8 + alen])
        last = _address(data[pos + 8 + alen : pos + slen])
        out.append(TrafficSelector(proto, sport, eport, start, last))
        pos += slen
    if pos != end:
        raise IkeDecodeError("octets after the last traffic selector")
    return TsPayload(tuple(out), responder)


def _decode_ke(ptype: int, body: bytes) -> Payload:
    if len(body) < 4:
        raise IkeDecodeError("truncated KE payload")
    return KePayload(int.from_bytes(body[:2], "big"), body[4:])


def _decode_id(ptype: int, body: bytes) -> Payload:
    if len(body) < 4:
        raise IkeDecodeError("truncated ID payload")
    return IdPayload(body[0], body[4:], ptype == PayloadType.IDR)


def _decode_cert(ptype: int, body: bytes) -> Payload:
    if len(body) < 1:
        raise IkeDecodeError("truncated CERT/CERTREQ payload")
    return (CertPayload if ptype == PayloadType.CERT else CertReqPayload)(body[0], body[1:])


def _decode_auth(ptype: int, body: bytes) -> Payload:
    if len(body) < 4:
        raise IkeDecodeError("truncated AUTH payload")
    return AuthPayload(body[0], body[4:])


def _decode_nonce(ptype: int, body: bytes) -> Payload:
    if not 16 <= len(body) <= 256:
        raise IkeDecodeError(f"nonce of {len(body)} octets (RFC 7296 §2.10: 16..256)")
    return NoncePayload(body)


def _decode_notify(ptype: int, body: bytes) -> Payload:
    if len(body) < 4:
        raise IkeDecodeError("truncated Notify payload")
    proto, spi_size, ntype = _GENERIC.unpack_from(body)
    if len(body) < 4 + spi_size:
        raise IkeDecodeError("Notify SPI exceeds payload")
    return NotifyPayload(ntype, body[4 + spi_size :], proto, body[4 : 4 + spi_size])


def _decode_delete(ptype: int, body: bytes) -> Payload:
    _need(len(body) >= 4, "truncated Delete payload")
    proto, spi_size, n = struct.unpack_from(">BBH", body)
    _need(len(body) == 4 + spi_size * n, "Delete payload length does not match its SPIs")
    _need(proto != ProtocolId.IKE or (spi_size == 0 and n == 0), "IKE Delete carries SPIs")
    _need(proto == ProtocolId.IKE or spi_size == 4, f"Delete SPI size {spi_size} for protocol {proto}")
    spis = tuple(body[4 + i * spi_size : 4 + (i + 1) * spi_size] for i in range(n))
    return DeletePayload(proto, spis, spi_size)


_DECODERS: dict[int, Callable[[int, bytes], Payload]] = {
    PayloadType.SA: lambda t, b: _decode_sa(b),
    PayloadType.KE: _decode_ke,
    PayloadType.IDI: _decode_id,
    PayloadType.IDR: _decode_id,
    PayloadType.CERT: _decode_cert,
    PayloadType.CERTREQ: _decode_cert,
    PayloadType.AUTH: _decode_auth,
    PayloadType.NONCE: _decode_nonce,
    PayloadType.NOTIFY: _decode_notify,
    PayloadType.DELETE: _decode_delete,
    PayloadType.VENDOR: lambda t, b: VendorIdPayload(b),
    PayloadType.TSI: lambda t, b: _decode_ts(b, False),
    PayloadType.TSR: lambda t, b: _decode_ts(b, True),
    # CP and EAP are known types this core does not use: kept opaque, never "critical"
    PayloadType.CP: lambda t, b: UnknownPayload(t, b, False),
    PayloadType.EAP: lambda t, b: UnknownPayload(t, b, False),
}


_SK = int(PayloadType.SK)


def decode_payloads(first: int, data: bytes, *, budget: int = MAX_PAYLOADS) -> tuple[Payload, ...]:
    """Parse a payload chain starting with type ``first`` that fills ``data`` exactly."""
    out: list[Payload] = []
    pos = 0
    end = len(data)
    nxt = first
    unpack = _GENERIC.unpack_from
    decoders = _DECODERS
    while nxt:  # PayloadType.NONE ends the chain
        if len(out) >= budget:
            raise IkeDecodeError(f"more than {MAX_PAYLOADS} payloads")
        if end - pos < GENERIC_LEN:
            raise IkeDecodeError("truncated generic payload header")
        following, flags, plen = unpack(data, pos)
        if not GENERIC_LEN <= plen <= end - pos:
            raise IkeDecodeError(f"payload length {plen} out of bounds")
        body = data[pos + GENERIC_LEN : pos + plen]
        if nxt == _SK:
            if pos + plen != end:
                raise IkeDecodeError("the Encrypted payload is not the last payload (RFC 7296 §3.14)")
            out.append(EncryptedPayload(following, body))
            return tuple(out)
        decoder = decoders.get(nxt)
        if decoder is not None:
            out.append(decoder(nxt, body))
        elif flags & 0x80:
            raise UnsupportedCriticalPayload(nxt)
        else:
            out.append(UnknownPayload(nxt, body, False))
        pos += plen
        nxt = following
    if pos != end:
        raise IkeDecodeError("octets after the last payload")
    return tuple(out)


def decode_message(data: bytes) -> Message:
    """Parse one IKE message; raises :class:`IkeDecodeError` (and only that) on bad input."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise IkeDecodeError(f"message of {len(data)} octets exceeds {MAX_MESSAGE_SIZE}")
    header = Header.decode(data)
    if header.length != len(data):
        raise IkeDecodeError(f"header length {header.length} != datagram length {len(data)}")
    return Message(header, decode_payloads(header.next_payload, data[HEADER_LEN:]))


# ---------------------------------------------------------------------------------------------
# helpers


def notify_payloads(payloads: Iterable[Payload]) -> dict[int, NotifyPayload]:
    """Notify payloads by type (the first of each type)."""
    out: dict[int, NotifyPayload] = {}
    for p in payloads:
        if isinstance(p, NotifyPayload) and p.notify_type not in out:
            out[p.notify_type] = p
    return out


def error_notify(payloads: Iterable[Payload]) -> NotifyPayload | None:
    """The first error notify (type < 16384), if any."""
    for p in payloads:
        if isinstance(p, NotifyPayload) and p.notify_type < 16384:
            return p
    return None


def notify_name(code: int) -> str:
    try:
        return NotifyType(code).name
    except ValueError:
        return f"NOTIFY_{code}"
