"""Simulated hosts' credentials (rpclatch.netsim.identity): SimCA issues real X.509 that the IKEv2
core validates (RFC 4945 §3.1 ID match, RFC 4301 §4.4.3 trust anchors), reproducibly from the seed;
the local identity a host asserts is what its peer authenticates (RFC 5660 §2)."""

from __future__ import annotations

import hashlib
import random

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from rpclatch.ipsec.ike.certs import validate
from rpclatch.ipsec.ike.wire import IdPayload
from rpclatch.ipsec.model import (
    AddressRange,
    AuthMethod,
    CertificatePeer,
    IdType,
    IkeId,
    LocalIdentity,
    RawPublicKeyPeer,
)
from rpclatch.ipsec.pad import ChildSaAuthorization, IdMatch, IdPattern, PadEntry
from rpclatch.netsim.identity import NOT_AFTER, NOT_BEFORE, Credentials, SimCA
from rpclatch.netsim.ike import host_to_host
from rpclatch.netsim.stream import StreamState
from rpclatch.netsim.testing.lab import Lab


def _asserted(creds: Credentials) -> IdPayload:
    return IdPayload(int(creds.ike.ike_id.id_type), creds.ike.ike_id.data)


def test_ca_issues_x509_with_an_fqdn_the_core_validates() -> None:
    rng = random.Random(1)
    ca = SimCA("CA-X", rng)
    creds = Credentials.certificate(ca, "a.example", rng)
    assert creds.cert is not None
    cert = x509.load_der_x509_certificate(creds.cert)
    cert.verify_directly_issued_by(x509.load_der_x509_certificate(ca.certificate_der))
    assert cert.issuer.rfc4514_string() == "CN=CA-X" and cert.subject.rfc4514_string() == "CN=a.example"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example"]
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (NOT_BEFORE, NOT_AFTER)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert spki == creds.spki == creds.ike.spki
    assert creds.ike.ike_id == IkeId.fqdn("a.example") and creds.ike.certificate == creds.cert
    peer = validate(creds.cert, _asserted(creds), (ca.anchor,), NOT_BEFORE)
    assert peer == CertificatePeer(IkeId.fqdn("a.example"), creds.cert, creds.spki, "CA-X")
    assert creds.local_identity() == LocalIdentity(peer.ike_id, AuthMethod.CERTIFICATE, creds.spki)


def test_a_dn_subject_is_asserted_as_a_dn() -> None:
    rng = random.Random(2)
    ca = SimCA("CA-X", rng)
    creds = Credentials.certificate(ca, "CN=b,O=Example", rng)
    assert creds.cert is not None
    cert = x509.load_der_x509_certificate(creds.cert)
    assert creds.ike.ike_id == IkeId(IdType.ID_DER_ASN1_DN, cert.subject.public_bytes())
    peer = validate(creds.cert, _asserted(creds), (ca.anchor,), None)
    assert peer.ike_id == creds.local_identity().ike_id == IkeId.dn("CN=b,O=Example")


def test_same_seed_same_certificates_other_seed_others() -> None:
    def make(seed: int) -> tuple[bytes, bytes | None]:
        rng = random.Random(seed)
        ca = SimCA("CA-X", rng)
        return ca.certificate_der, Credentials.certificate(ca, "a.example", rng).cert

    assert make(7) == make(7)
    assert make(7) != make(8)


def test_raw_key_identity_is_what_the_peer_authenticates() -> None:
    lab = Lab.build()
    client, server = lab.open()
    assert client.state is StreamState.ESTABLISHED and server is not None and server.channel is not None
    creds = lab.stack(lab.a).ike.credentials
    peer = server.channel.params.peer
    assert creds.ike.ike_id == IkeId.key_id(hashlib.sha256(creds.spki).digest())
    assert isinstance(peer, RawPublicKeyPeer) and peer.spki_der == creds.spki
    assert peer.ike_id == creds.local_identity().ike_id
    assert server.channel.params.local == lab.stack(lab.b).ike.credentials.local_identity()


def test_a_certificate_from_an_impostor_ca_of_the_same_name_is_refused() -> None:
    """Trust anchors are keys, not names: a CA also called "CA-X" cannot vouch for anybody."""
    pad = [
        PadEntry(
            "ca-x",
            IdPattern(IdType.ID_FQDN, b"example", IdMatch.SUFFIX),
            AuthMethod.CERTIFICATE,
            ChildSaAuthorization((AddressRange.network("192.0.2.0/24"),)),
            frozenset({"CA-X"}),
        )
    ]
    lab = Lab.build(pad=pad)
    ca, impostor = lab.net.ca("CA-X"), lab.net.ca("CA-X")
    for host, name in ((lab.a, "a.example"), (lab.b, "b.example")):
        lab.stack(host).ike.credentials = lab.net.credentials("cert", ca=ca, subject=name)
        lab.stack(host).ike.anchors = {"CA-X": ca}
    m = lab.attacker("m", credentials=lab.net.credentials("cert", ca=impostor, subject="m.example"), pad=pad)
    lab.stack(m).ike.anchors = {"CA-X": ca}
    results: list[tuple[object, str]] = []
    for daemon, src, dst in (
        (lab.stack(m).ike, m.address, lab.b.address),
        (lab.stack(lab.a).ike, lab.a.address, lab.b.address),
    ):
        daemon.initiate(
            src, dst, (host_to_host(src, dst),), on_done=lambda sa, why: results.append((sa, why))
        )
        lab.net.run_for(1.0)
    (forged, why), (genuine, _) = results
    assert forged is None and "AUTHENTICATION_FAILED" in why
    assert any("AUTHENTICATION_FAILED" in text for _, text in lab.stack(lab.b).ike.events)
    assert genuine is not None  # the same PAD admits a certificate of the real CA-X
    peer = genuine.peer  # type: ignore[attr-defined]
    assert isinstance(peer, CertificatePeer) and peer.trust_anchor == "CA-X"
    assert peer.ike_id == IkeId.fqdn("b.example")
    (only,) = lab.stack(lab.b).engine.sad  # nothing from the impostor's certificate
    assert isinstance(only.peer, CertificatePeer) and only.peer.ike_id == IkeId.fqdn("a.example")
