"""X.509 certificate authentication (RFC 7296 §3.6 encoding 4, CERTREQ §3.7, RFC 4945 ID match)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ike_harness import A_POLICY, NFS_POLICY, Pair

from rpclatch.ipsec.ike import wire as w
from rpclatch.ipsec.ike.certs import TrustAnchor
from rpclatch.ipsec.ike.config import Credentials, IkeConfig
from rpclatch.ipsec.ike.events import FailureReason, IkeSaEstablished, IkeSaFailed
from rpclatch.ipsec.ike.sa import IkeState
from rpclatch.ipsec.model import (
    AddressRange,
    AuthMethod,
    CertificatePeer,
    IdType,
    IkeId,
)
from rpclatch.ipsec.pad import ChildSaAuthorization, IdMatch, IdPattern, PadEntry, PeerAuthorizationDatabase

NOW = dt.datetime(2026, 12, 5, tzinfo=dt.UTC)
Key = ec.EllipticCurvePrivateKey


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[Key, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.DER)


def _leaf(ca: tuple[Key, bytes], cn: str, fqdn: str, *, days: int = 30) -> tuple[Key, bytes]:
    ca_key, ca_der = ca
    issuer = x509.load_der_x509_certificate(ca_der).subject
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(fqdn), x509.IPAddress(ipaddress.ip_address("192.0.2.77"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.DER)


CA = _ca("rpclatch test CA")
OTHER_CA = _ca("another CA")
A_CERT = _leaf(CA, "client", "client.example")
B_CERT = _leaf(CA, "server", "server.example")


def _pad(peer_fqdn: str, addr: str) -> PeerAuthorizationDatabase:
    return PeerAuthorizationDatabase(
        [
            PadEntry(
                "cert",
                IdPattern(IdType.ID_FQDN, peer_fqdn.encode(), IdMatch.EXACT),
                AuthMethod.CERTIFICATE,
                ChildSaAuthorization((AddressRange.single(addr),)),
                frozenset({"test-ca"}),
            )
        ]
    )


def _config(
    leaf: tuple[Key, bytes], my_fqdn: str, pad: PeerAuthorizationDatabase, policy: tuple, **kw: object
) -> IkeConfig:
    cred = Credentials.with_certificate(leaf[0], leaf[1], IkeId.fqdn(my_fqdn))
    return IkeConfig(cred, pad, policy, trust_anchors=(TrustAnchor("test-ca", CA[1]),), **kw)  # type: ignore[arg-type]


def _pair(make_pair: Callable[..., Pair], a_leaf: tuple[Key, bytes] = A_CERT, **kw: object) -> Pair:
    return make_pair(
        _config(a_leaf, "client.example", _pad("server.example", "192.0.2.2"), A_POLICY, **kw),
        _config(B_CERT, "server.example", _pad("client.example", "192.0.2.1"), NFS_POLICY, **kw),
    )


def test_certificates_both_ways(make_pair: Callable[..., Pair]) -> None:
    p = _pair(make_pair, certificate_clock=lambda: NOW)
    sa = p.initiate()
    p.pump()
    assert sa.state is IkeState.ESTABLISHED
    (ea,) = p.of(IkeSaEstablished, "a")
    (eb,) = p.of(IkeSaEstablished, "b")
    assert isinstance(ea, IkeSaEstablished) and isinstance(eb, IkeSaEstablished)
    assert isinstance(ea.peer, CertificatePeer) and ea.peer.ike_id == IkeId.fqdn("server.example")
    assert ea.peer.trust_anchor == "test-ca" and ea.peer.certificate_der == B_CERT[1] and not ea.btns
    assert isinstance(eb.peer, CertificatePeer) and eb.peer.ike_id == IkeId.fqdn("client.example")
    # CERTREQ naming the anchor in the IKE_SA_INIT answer
    init_r = w.decode_message(p.wire[1][1])
    assert any(isinstance(x, w.CertReqPayload) and len(x.data) == 20 for x in init_r.payloads)


@pytest.mark.parametrize(
    "leaf",
    [
        pytest.param(_leaf(OTHER_CA, "client", "client.example"), id="other-ca"),
        pytest.param(_leaf(CA, "client", "someone.example"), id="id-not-in-cert"),
    ],
)
def test_refused_certificates(make_pair: Callable[..., Pair], leaf: tuple[Key, bytes]) -> None:
    p = _pair(make_pair, a_leaf=leaf)
    p.initiate()
    p.pump()
    (fb,) = p.of(IkeSaFailed, "b")
    assert isinstance(fb, IkeSaFailed) and fb.reason is FailureReason.AUTHENTICATION_FAILED


def test_expired_certificate_with_a_clock(make_pair: Callable[..., Pair]) -> None:
    p = _pair(make_pair, certificate_clock=lambda: NOW + dt.timedelta(days=60))
    p.initiate()
    p.pump()
    (fb,) = p.of(IkeSaFailed, "b")
    assert isinstance(fb, IkeSaFailed) and "validity" in fb.detail


def test_certificate_with_the_wrong_key_fails_the_signature(make_pair: Callable[..., Pair]) -> None:
    stolen = (ec.generate_private_key(ec.SECP256R1()), A_CERT[1])  # A's certificate, another key
    p = _pair(make_pair, a_leaf=stolen)
    p.initiate()
    p.pump()
    (fb,) = p.of(IkeSaFailed, "b")
    assert isinstance(fb, IkeSaFailed) and "signature" in fb.detail


def test_subject_dn_as_the_id(make_pair: Callable[..., Pair]) -> None:
    def pad(dn: str, addr: str) -> PeerAuthorizationDatabase:
        entry = PadEntry(
            "dn",
            IdPattern(IdType.ID_DER_ASN1_DN, dn.encode()),
            AuthMethod.CERTIFICATE,
            ChildSaAuthorization((AddressRange.single(addr),)),
        )
        return PeerAuthorizationDatabase([entry])

    anchors = (TrustAnchor("test-ca", CA[1]),)
    a = IkeConfig(
        Credentials.with_certificate(*A_CERT), pad("CN=server", "192.0.2.2"), A_POLICY, trust_anchors=anchors
    )
    b = IkeConfig(
        Credentials.with_certificate(*B_CERT),
        pad("CN=client", "192.0.2.1"),
        NFS_POLICY,
        trust_anchors=anchors,
    )
    p = make_pair(a, b)
    sa = p.initiate()
    p.pump()
    assert sa.state is IkeState.ESTABLISHED
    (eb,) = p.of(IkeSaEstablished, "b")
    assert isinstance(eb, IkeSaEstablished) and eb.peer.ike_id == IkeId.dn("CN=client")  # type: ignore[union-attr]
