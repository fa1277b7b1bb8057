"""Wire format of the simulation's miniature key exchange ("SIKE"), XDR-encoded over UDP.

SIKE stands in for IKEv2 (RFC 7296) inside the simulation: one request/response pair creates an
IKE SA and one child-SA pair. It carries what RFC 5660 latching cares about: the authenticated
peer identity (certificate, BTNS raw public key per RFC 5386/7670, or NULL auth per RFC 7619),
proposed and accepted traffic selectors (narrowing, RFC 7296 §2.9), child SPIs, an X25519 key
share, and an Ed25519 signature over the transcript. Informational DELETE and DPD
(R-U-THERE / ACK) messages complete it. It runs on UDP port 5500, not 500, so that tshark does
not try to decode it as ISAKMP (it shows as UDP data).

Traffic selectors travel initiator-oriented: ``local`` = the initiator's side.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from rpclatch.ipsec.model import AddressRange, PortRange, Selector
from rpclatch.netsim.errors import SimWireError
from rpclatch.xdr import Decoder, Encoder, XdrError

SIKE_PORT = 5500
MAX_TS = 8
#: RFC 7296 §2.4 INITIAL_CONTACT: the sender has no other SAs with the receiver (e.g. it restarted)
FLAG_INITIAL_CONTACT = 1


class SikeType(enum.IntEnum):
    INIT_REQ = 1
    INIT_RESP = 2
    DELETE = 3
    DPD_REQ = 4
    DPD_RESP = 5


class AuthKind(enum.IntEnum):
    NULL = 0  # RFC 7619
    RAW_KEY = 1  # RFC 5386 BTNS / RFC 7670 raw public key
    CERT = 2  # certificate issued by a (simulated) CA


class SikeStatus(enum.IntEnum):
    OK = 0
    NO_PROPOSAL_CHOSEN = 14  # RFC 7296 notify codes
    AUTHENTICATION_FAILED = 24
    TS_UNACCEPTABLE = 38


@dataclass(frozen=True, slots=True)
class WireIdentity:
    kind: AuthKind
    id_data: bytes = b""  # the asserted IKE ID payload (DN / FQDN text); empty for ID_NULL
    spki: bytes = b""  # SubjectPublicKeyInfo DER of the signing key (RAW_KEY, CERT)
    cert: bytes = b""  # the simulated certificate (CERT)
    anchor: str = ""  # trust anchor name the certificate claims (CERT)

    def encode_into(self, enc: Encoder) -> None:
        enc.uint32(self.kind).opaque(self.id_data, 256).opaque(self.spki, 512).opaque(self.cert, 1024)
        enc.string(self.anchor, 64)

    @classmethod
    def decode_from(cls, dec: Decoder) -> WireIdentity:
        kind = dec.enum(AuthKind)
        return cls(kind, dec.opaque(256), dec.opaque(512), dec.opaque(1024), dec.string(64))


def _enc_addr(enc: Encoder, a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    enc.opaque(a.packed, 16)


def _dec_addr(dec: Decoder) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = dec.opaque(16)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw)
    if len(raw) == 16:
        return ipaddress.IPv6Address(raw)
    raise XdrError(f"bad address length {len(raw)}")


def encode_selector(enc: Encoder, sel: Selector) -> None:
    for rng in (sel.local, sel.remote):
        enc.boolean(rng is not None)
        if rng is not None:
            _enc_addr(enc, rng.first)
            _enc_addr(enc, rng.last)
    enc.uint32(0xFFFFFFFF if sel.proto is None else sel.proto)
    enc.uint32(sel.local_ports.low).uint32(sel.local_ports.high)
    enc.uint32(sel.remote_ports.low).uint32(sel.remote_ports.high)


def decode_selector(dec: Decoder) -> Selector:
    ranges: list[AddressRange | None] = []
    for _ in range(2):
        if dec.boolean():
            first, last = _dec_addr(dec), _dec_addr(dec)
            try:
                ranges.append(AddressRange(first, last))
            except ValueError as exc:
                raise XdrError(str(exc)) from exc
        else:
            ranges.append(None)
    proto_raw = dec.uint32()
    if proto_raw != 0xFFFFFFFF and proto_raw > 255:
        raise XdrError(f"bad protocol {proto_raw}")
    try:
        lp = PortRange(dec.uint32(), dec.uint32())
        rp = PortRange(dec.uint32(), dec.uint32())
        return Selector(ranges[0], ranges[1], None if proto_raw == 0xFFFFFFFF else proto_raw, lp, rp)
    except ValueError as exc:
        raise XdrError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class InitRequest:
    ike_spi_i: int
    nonce: bytes
    key_share: bytes
    identity: WireIdentity
    selectors: tuple[Selector, ...]
    child_spi_i: int
    key_bits: int
    signature: bytes = b""
    flags: int = 0  # FLAG_INITIAL_CONTACT

    @property
    def initial_contact(self) -> bool:
        return bool(self.flags & FLAG_INITIAL_CONTACT)

    def signed_part(self) -> bytes:
        enc = Encoder().uint32(SikeType.INIT_REQ).uint64(self.ike_spi_i).fixed(self.nonce, 32)
        enc.fixed(self.key_share, 32)
        self.identity.encode_into(enc)
        enc.uint32(len(self.selectors))
        for sel in self.selectors:
            encode_selector(enc, sel)
        enc.uint32(self.child_spi_i).uint32(self.key_bits).uint32(self.flags)
        return enc.to_bytes()

    def encode(self) -> bytes:
        return self.signed_part() + Encoder().opaque(self.signature, 128).to_bytes()


@dataclass(frozen=True, slots=True)
class InitResponse:
    ike_spi_i: int
    ike_spi_r: int
    status: SikeStatus
    nonce: bytes
    key_share: bytes
    identity: WireIdentity
    selectors: tuple[Selector, ...]
    child_spi_r: int
    signature: bytes = b""

    def signed_part(self) -> bytes:
        enc = Encoder().uint32(SikeType.INIT_RESP).uint64(self.ike_spi_i).uint64(self.ike_spi_r)
        enc.uint32(self.status).fixed(self.nonce, 32).fixed(self.key_share, 32)
        self.identity.encode_into(enc)
        enc.uint32(len(self.selectors))
        for sel in self.selectors:
            encode_selector(enc, sel)
        enc.uint32(self.child_spi_r)
        return enc.to_bytes()

    def encode(self) -> bytes:
        return self.signed_part() + Encoder().opaque(self.signature, 128).to_bytes()


@dataclass(frozen=True, slots=True)
class Informational:
    """DELETE (``child_spi`` = the sender's inbound SPI) or DPD request/response (``msg_id``)."""

    kind: SikeType
    ike_spi_i: int
    ike_spi_r: int
    value: int

    def encode(self) -> bytes:
        return (
            Encoder()
            .uint32(self.kind)
            .uint64(self.ike_spi_i)
            .uint64(self.ike_spi_r)
            .uint32(self.value)
            .to_bytes()
        )


SikeMessage = InitRequest | InitResponse | Informational


def _selectors(dec: Decoder) -> tuple[Selector, ...]:
    n = dec.uint32()
    if n > MAX_TS:
        raise XdrError(f"too many traffic selectors ({n})")
    return tuple(decode_selector(dec) for _ in range(n))


def decode_sike(data: bytes) -> SikeMessage:
    """Decode one SIKE message; raises :class:`SimWireError` for anything malformed."""
    try:
        dec = Decoder(data)
        kind = dec.enum(SikeType)
        msg: SikeMessage
        if kind is SikeType.INIT_REQ:
            spi_i, nonce, share = dec.uint64(), dec.fixed(32), dec.fixed(32)
            ident = WireIdentity.decode_from(dec)
            sels = _selectors(dec)
            child, bits, flags = dec.uint32(), dec.uint32(), dec.uint32()
            msg = InitRequest(spi_i, nonce, share, ident, sels, child, bits, dec.opaque(128), flags)
        elif kind is SikeType.INIT_RESP:
            spi_i, spi_r, status = dec.uint64(), dec.uint64(), dec.enum(SikeStatus)
            nonce, share = dec.fixed(32), dec.fixed(32)
            ident = WireIdentity.decode_from(dec)
            sels = _selectors(dec)
            msg = InitResponse(spi_i, spi_r, status, nonce, share, ident, sels, dec.uint32(), dec.opaque(128))
        else:
            msg = Informational(kind, dec.uint64(), dec.uint64(), dec.uint32())
        dec.done()
        return msg
    except (XdrError, ValueError) as exc:
        raise SimWireError(f"bad SIKE message: {exc}") from exc
