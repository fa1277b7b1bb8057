"""Credentials of simulated hosts: Ed25519 keys (BTNS raw keys), a tiny CA, NULL auth.

Keys are derived from the network's seeded RNG, so every run has the same keys and SPKIs. A
"certificate" here is an XDR structure {subject DN, SPKI DER, issuer name, Ed25519 signature of
the issuer}: enough to model RFC 4301 §4.4.3 trust anchors and the RFC 5660 §2.3.2 example
("any cert issued by CA X may claim 192.0.2/24") without X.509 machinery.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

from rpclatch.ipsec.model import (
    AuthMethod,
    CertificatePeer,
    IdType,
    IkeId,
    IkeSaRef,
    LocalIdentity,
    NullAuthPeer,
    PeerIdentity,
    RawPublicKeyPeer,
)
from rpclatch.netsim.errors import SimWireError
from rpclatch.netsim.ike_wire import AuthKind, WireIdentity
from rpclatch.xdr import Decoder, Encoder, XdrError


def spki_of(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def new_key(rng: random.Random) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))


@dataclass(frozen=True, slots=True)
class SimCertificate:
    subject: str
    spki: bytes
    issuer: str
    signature: bytes

    def tbs(self) -> bytes:
        return Encoder().string(self.subject, 256).opaque(self.spki, 512).string(self.issuer, 64).to_bytes()

    def encode(self) -> bytes:
        return self.tbs() + Encoder().opaque(self.signature, 128).to_bytes()

    @classmethod
    def decode(cls, data: bytes) -> SimCertificate:
        try:
            dec = Decoder(data)
            cert = cls(dec.string(256), dec.opaque(512), dec.string(64), dec.opaque(128))
            dec.done()
            return cert
        except XdrError as exc:
            raise SimWireError(f"bad certificate: {exc}") from exc


class SimCA:
    """A certification authority (trust anchor) of the simulation."""

    def __init__(self, name: str, rng: random.Random) -> None:
        self.name = name
        self._key = new_key(rng)
        self.public_key = self._key.public_key()

    def issue(self, subject: str, spki: bytes) -> SimCertificate:
        unsigned = SimCertificate(subject, spki, self.name, b"")
        return SimCertificate(subject, spki, self.name, self._key.sign(unsigned.tbs()))

    def verify(self, cert: SimCertificate) -> bool:
        if cert.issuer != self.name:
            return False
        try:
            self.public_key.verify(cert.signature, cert.tbs())
        except InvalidSignature:
            return False
        return True


class Credentials:
    """What a host authenticates with in SIKE: NULL auth, a raw key (BTNS) or a CA-issued cert."""

    def __init__(
        self, kind: AuthKind, key: Ed25519PrivateKey, cert: SimCertificate | None = None, name: str = ""
    ) -> None:
        if kind is AuthKind.CERT and cert is None:
            raise ValueError("certificate credentials need a certificate")
        self.kind = kind
        self.key = key
        self.cert = cert
        self.name = name
        self.spki = spki_of(key)

    @classmethod
    def raw_key(cls, rng: random.Random) -> Credentials:
        return cls(AuthKind.RAW_KEY, new_key(rng))

    @classmethod
    def null(cls, rng: random.Random) -> Credentials:
        return cls(AuthKind.NULL, new_key(rng))

    @classmethod
    def certificate(cls, ca: SimCA, subject: str, rng: random.Random) -> Credentials:
        key = new_key(rng)
        return cls(AuthKind.CERT, key, ca.issue(subject, spki_of(key)), subject)

    def wire(self) -> WireIdentity:
        if self.kind is AuthKind.NULL:
            return WireIdentity(AuthKind.NULL)
        if self.kind is AuthKind.RAW_KEY:
            return WireIdentity(AuthKind.RAW_KEY, b"", self.spki)
        assert self.cert is not None
        cert = self.cert
        return WireIdentity(AuthKind.CERT, self.name.encode(), self.spki, cert.encode(), cert.issuer)

    def sign(self, data: bytes) -> bytes:
        return b"" if self.kind is AuthKind.NULL else self.key.sign(data)

    def local_identity(self) -> LocalIdentity:
        if self.kind is AuthKind.NULL:
            return LocalIdentity(IkeId(IdType.ID_NULL), AuthMethod.NULL, None)
        if self.kind is AuthKind.RAW_KEY:
            return LocalIdentity(IkeId(IdType.ID_NULL), AuthMethod.RAW_PUBLIC_KEY, self.spki)
        return LocalIdentity(cert_ike_id(self.name), AuthMethod.CERTIFICATE, self.spki)


class AuthFailure(Exception):
    """The peer's SIKE authentication does not verify."""


def verify_peer(
    ident: WireIdentity, signature: bytes, signed: bytes, ike_sa: IkeSaRef, anchors: dict[str, SimCA]
) -> PeerIdentity:
    """Check a peer's signature (and certificate) and return its RFC 5660 peer identity."""
    if ident.kind is AuthKind.NULL:
        if signature:
            raise AuthFailure("NULL auth with a signature")
        return NullAuthPeer(ike_sa, ident.id_data)
    try:
        pub = load_der_public_key(ident.spki)
    except ValueError as exc:
        raise AuthFailure(f"bad SPKI: {exc}") from exc
    if not isinstance(pub, Ed25519PublicKey):
        raise AuthFailure("only Ed25519 keys are supported")
    try:
        pub.verify(signature, signed)
    except InvalidSignature as exc:
        raise AuthFailure("signature does not verify") from exc
    if ident.kind is AuthKind.RAW_KEY:
        return RawPublicKeyPeer(ident.spki, IkeId(IdType.ID_NULL))
    try:
        cert = SimCertificate.decode(ident.cert)
    except SimWireError as exc:
        raise AuthFailure(str(exc)) from exc
    ca = anchors.get(cert.issuer)
    if ca is None or not ca.verify(cert) or cert.spki != ident.spki or cert.subject.encode() != ident.id_data:
        raise AuthFailure(f"certificate for {cert.subject!r} does not validate to a trust anchor")
    return CertificatePeer(cert_ike_id(cert.subject), ident.cert, ident.spki, ca.name)


def cert_ike_id(subject: str) -> IkeId:
    """The IKE ID a certificate subject asserts: a DN if it has ``=``, else a DNS name (FQDN)."""
    return IkeId.dn(subject) if "=" in subject else IkeId.fqdn(subject)
