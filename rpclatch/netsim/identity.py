"""Credentials of simulated hosts: Ed25519 keys (BTNS raw keys), X.509 from a small CA, NULL auth.

Keys come from the network's seeded RNG, so every run has the same keys, SPKIs and certificates.
A :class:`SimCA` is a self-signed Ed25519 CA that issues real X.509 end-entity certificates
(cryptography's builder, fixed validity dates) and is a trust anchor of the IKEv2 core
(:attr:`SimCA.anchor`, RFC 4301 §4.4.3): enough to model RFC 5660 §2.3.2's example ("any cert
issued by CA X may claim 192.0.2/24"). :class:`Credentials` is what a host authenticates with,
mapped onto the core's :class:`rpclatch.ipsec.ike.Credentials` (:attr:`Credentials.ike`).

A certificate's subject is ``CN=<name>`` plus, unless the name is a DN itself (it contains
``=``), a DNS subjectAltName: the IKE ID a host asserts with it is then ID_FQDN, else the DN
(RFC 4945 §3.1: the ID must be backed by the certificate).
"""

from __future__ import annotations

import enum
import random
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key
from cryptography.x509.oid import NameOID

from rpclatch.ipsec import ike
from rpclatch.ipsec.ike import TrustAnchor
from rpclatch.ipsec.model import AuthMethod, IdType, IkeId, LocalIdentity

#: every certificate of the simulation is valid in this period (the simulated clock starts at
#: :data:`SIM_EPOCH`, see :func:`certificate_time`)
NOT_BEFORE = datetime(2026, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2036, 1, 1, tzinfo=UTC)
SIM_EPOCH = datetime(2026, 6, 1, tzinfo=UTC)


class AuthKind(enum.Enum):
    """How a host authenticates in IKE_AUTH: NULL (RFC 7619), raw key (RFC 7670), certificate."""

    NULL = "null"
    RAW_KEY = "raw-key"
    CERT = "cert"


def spki_of(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def new_key(rng: random.Random) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))


def cert_ike_id(subject: str) -> IkeId:
    """The IKE ID a certificate subject asserts: a DN if it has ``=``, else a DNS name (FQDN).
    A DN is given in the RFC 4514 form cryptography writes (how the core reports a DN peer)."""
    if "=" in subject:
        return IkeId.dn(x509.Name.from_rfc4514_string(subject).rfc4514_string())
    return IkeId.fqdn(subject)


class SimCA:
    """A certification authority of the simulation: a self-signed Ed25519 CA certificate named
    ``CN=<name>`` whose key comes from ``rng``; :attr:`anchor` is the core's trust anchor for it
    (PAD entries name it by ``name``)."""

    def __init__(self, name: str, rng: random.Random) -> None:
        self.name = name
        self._key = new_key(rng)
        self.public_key: Ed25519PublicKey = self._key.public_key()
        self._issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self._serial = 1
        ca = (
            self._builder(self._issuer, self.public_key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self._key, None)
        )
        self.certificate_der = ca.public_bytes(Encoding.DER)
        self.anchor = TrustAnchor(name, self.certificate_der)

    def _builder(self, subject: x509.Name, key: Ed25519PublicKey) -> x509.CertificateBuilder:
        serial, self._serial = self._serial, self._serial + 1
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._issuer)
            .public_key(key)
            .serial_number(serial)
            .not_valid_before(NOT_BEFORE)
            .not_valid_after(NOT_AFTER)
        )

    def issue(self, subject: str, spki: bytes) -> bytes:
        """DER of an end-entity certificate for the Ed25519 key ``spki`` (see the module docstring
        for how ``subject`` becomes the subject and subjectAltName)."""
        key = load_der_public_key(spki)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the simulation's certificates are for Ed25519 keys")
        if "=" in subject:
            builder = self._builder(x509.Name.from_rfc4514_string(subject), key)
        else:
            builder = self._builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]), key
            ).add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False)
        return builder.sign(self._key, None).public_bytes(Encoding.DER)


class Credentials:
    """What a host authenticates with in IKE: NULL auth, a raw key (BTNS) or a CA-issued
    certificate (its DER in ``cert``, its name in ``name``); :attr:`ike` is the same for the core."""

    def __init__(
        self, kind: AuthKind, key: Ed25519PrivateKey, cert: bytes | None = None, name: str = ""
    ) -> None:
        if kind is AuthKind.CERT and (cert is None or not name):
            raise ValueError("certificate credentials need a certificate and its subject name")
        self.kind = kind
        self.key = key
        self.cert = cert
        self.name = name
        self.spki = spki_of(key)
        self.ike = self._core()

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

    def _core(self) -> ike.Credentials:
        if self.kind is AuthKind.NULL:
            return ike.Credentials.null()
        if self.kind is AuthKind.RAW_KEY:
            return ike.Credentials.raw_key(self.key)
        assert self.cert is not None
        ike_id = cert_ike_id(self.name)
        if ike_id.id_type == IdType.ID_DER_ASN1_DN:  # on the wire a DN is DER (RFC 7296 §3.5)
            ike_id = IkeId(
                IdType.ID_DER_ASN1_DN, x509.load_der_x509_certificate(self.cert).subject.public_bytes()
            )
        return ike.Credentials.with_certificate(self.key, self.cert, ike_id)

    def local_identity(self) -> LocalIdentity:
        """The RFC 5660 §2 local identity these credentials assert (as the peer will see it)."""
        if self.kind is AuthKind.NULL:
            return LocalIdentity(self.ike.ike_id, AuthMethod.NULL, None)
        if self.kind is AuthKind.RAW_KEY:
            return LocalIdentity(self.ike.ike_id, AuthMethod.RAW_PUBLIC_KEY, self.spki)
        return LocalIdentity(cert_ike_id(self.name), AuthMethod.CERTIFICATE, self.spki)


def certificate_time(now: float) -> datetime:
    """The wall-clock time of simulated second ``now``, for certificate validity checks."""
    return datetime.fromtimestamp(SIM_EPOCH.timestamp() + now, UTC)
