"""X.509 end-entity certificates in IKE_AUTH (RFC 7296 §3.6 encoding 4, §3.7 CERTREQ; RFC 4945 §3
for how the ID must match the certificate).

Deliberately small: the end-entity certificate must be signed directly by one of the configured
trust anchors (no intermediate CAs, no revocation checking), and its validity period is checked
only when the configuration provides a clock for it (the core itself reads no clock). The ID the
peer asserts must be in the certificate: ID_DER_ASN1_DN equal to the subject, ID_FQDN /
ID_RFC822_ADDR / ID_IPV*_ADDR among the subjectAltName entries.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from rpclatch.ipsec.ike.errors import AuthenticationFailed
from rpclatch.ipsec.ike.wire import IdPayload
from rpclatch.ipsec.model import CertificatePeer, IdType, IkeId


@dataclass(frozen=True, slots=True)
class TrustAnchor:
    """A CA certificate peers' certificates may be issued by; ``name`` is what PAD entries list in
    ``trust_anchors`` and what ``CertificatePeer.trust_anchor`` reports."""

    name: str
    certificate_der: bytes
    _cert: x509.Certificate = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_cert", x509.load_der_x509_certificate(self.certificate_der))

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def spki_sha1(self) -> bytes:
        """The CERTREQ "Certification Authority" entry of this anchor (RFC 7296 §3.7)."""
        spki = self._cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return hashlib.sha1(spki).digest()


def certreq_data(anchors: tuple[TrustAnchor, ...]) -> bytes:
    return b"".join(a.spki_sha1 for a in anchors)


def certificate_id(certificate_der: bytes) -> IkeId:
    """The ID to assert with a certificate: its subject DN (DER, as ID_DER_ASN1_DN carries it)."""
    cert = x509.load_der_x509_certificate(certificate_der)
    return IkeId(IdType.ID_DER_ASN1_DN, cert.subject.public_bytes())


def validate(
    certificate_der: bytes, asserted: IdPayload, anchors: tuple[TrustAnchor, ...], when: datetime | None
) -> CertificatePeer:
    """The authenticated peer a certificate and an ID payload name; raises AuthenticationFailed."""
    try:
        cert = x509.load_der_x509_certificate(certificate_der)
    except ValueError:
        raise AuthenticationFailed("CERT payload is not a DER X.509 certificate") from None
    anchor = None
    for candidate in anchors:
        try:
            cert.verify_directly_issued_by(candidate.certificate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        anchor = candidate
        break
    if anchor is None:
        raise AuthenticationFailed("certificate not issued by a configured trust anchor")
    if when is not None and not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise AuthenticationFailed("certificate outside its validity period")
    ike_id = _matching_id(cert, asserted)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return CertificatePeer(ike_id, certificate_der, spki, anchor.name)


def _matching_id(cert: x509.Certificate, asserted: IdPayload) -> IkeId:
    """RFC 4945 §3.1: the asserted ID must be backed by the certificate. A DN is returned in its
    RFC 4514 string form, which is how ``IkeId.dn`` and the PAD compare DNs."""
    try:
        names: list[x509.GeneralName] = list(
            cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        )
    except x509.ExtensionNotFound:
        names = []  # no SAN: only the subject DN can back the ID
    dns = {n.value.lower() for n in names if isinstance(n, x509.DNSName)}
    mail = {n.value.lower() for n in names if isinstance(n, x509.RFC822Name)}
    addrs = {n.value for n in names if isinstance(n, x509.IPAddress)}
    data, kind = asserted.data, asserted.id_type
    if kind == IdType.ID_DER_ASN1_DN and data == cert.subject.public_bytes():
        return IkeId.dn(cert.subject.rfc4514_string())
    try:
        if kind == IdType.ID_FQDN and data.decode("ascii").lower() in dns:
            return IkeId.fqdn(data.decode("ascii"))
        if kind == IdType.ID_RFC822_ADDR and data.decode("ascii").lower() in mail:
            return IkeId.rfc822(data.decode("ascii"))
    except UnicodeDecodeError:
        pass
    if kind in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR) and len(data) in (4, 16):
        addr = ipaddress.ip_address(data)
        if addr in addrs:
            return IkeId.address(addr)
    raise AuthenticationFailed(f"the asserted ID (type {kind}) is not in the certificate")
