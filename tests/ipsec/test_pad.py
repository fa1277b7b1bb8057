"""PAD (RFC 4301 §4.4.3, RFC 5386 §2, RFC 7619): matching, ordering, child-SA authorization."""

from __future__ import annotations

import pytest

from rpclatch.ipsec import examples as ex
from rpclatch.ipsec.errors import ChildSaRefused, PeerNotAuthorized
from rpclatch.ipsec.model import AddressRange, AuthMethod, IdType, IkeId, Selector, spki_fingerprint
from rpclatch.ipsec.pad import (
    AddressIdPattern,
    ChildSaAuthorization,
    IdMatch,
    IdPattern,
    PadEntry,
    PeerAuthorizationDatabase,
    PublicKeyPattern,
)

NET = ex.NET
F = ex.flow("192.0.2.1", 2049, "192.0.2.2", 40000)


def test_id_patterns() -> None:
    assert IdPattern(IdType.ID_FQDN, b"example", IdMatch.SUFFIX).matches(IkeId.fqdn("a.example"))
    assert not IdPattern(IdType.ID_FQDN, b"example", IdMatch.SUFFIX).matches(IkeId.fqdn("aexample"))
    assert IdPattern(IdType.ID_RFC822_ADDR, b"example", IdMatch.SUFFIX).matches(IkeId.rfc822("u@example"))
    dn = IdPattern(IdType.ID_DER_ASN1_DN, b"O=Org,C=XX", IdMatch.SUBTREE)
    assert dn.matches(IkeId.dn("CN=b,O=Org,C=XX")) and not dn.matches(IkeId.dn("CN=b,O=Evil,C=XX"))
    assert AddressIdPattern(NET).matches(IkeId.address("192.0.2.9"))
    assert not AddressIdPattern(NET).matches(IkeId.fqdn("x"))


def test_specific_btns_key_before_wildcard() -> None:
    k = ex.btns_peer(4)
    specific = PadEntry(
        "k4",
        PublicKeyPattern(spki_fingerprint(k.spki_der)),
        AuthMethod.RAW_PUBLIC_KEY,
        ChildSaAuthorization((AddressRange.single("192.0.2.4"),)),
    )
    pad = PeerAuthorizationDatabase([*ex.btns_pad(), specific])
    assert pad.entries[0] is specific and pad.authorize(k).entry is specific
    assert pad.authorize(ex.btns_peer(5)).entry.is_wildcard_btns


def test_psk_and_cert_entries() -> None:
    psk = PadEntry(
        "psk", IdPattern(IdType.ID_FQDN, b"c.example"), AuthMethod.PSK, ChildSaAuthorization((NET,))
    )
    pad = PeerAuthorizationDatabase([psk])
    assert not pad.authorize(ex.psk_peer("c.example")).btns
    with pytest.raises(PeerNotAuthorized):
        pad.authorize(ex.psk_peer("d.example"))
    with pytest.raises(PeerNotAuthorized):  # matches the PSK entry but presents a certificate
        pad.authorize(ex.cert_peer("c.example", 3))


def test_cert_peer_without_named_entry_may_be_btns() -> None:
    pad = PeerAuthorizationDatabase(ex.btns_pad())
    assert pad.authorize(ex.cert_peer("z.example", 3)).btns


def test_child_sa_constraints() -> None:
    pad = PeerAuthorizationDatabase(ex.btns_pad())
    m = pad.authorize(ex.btns_peer(2))
    pad.check_child_sa(m, F.remote_addr, [Selector.for_flow(F)])
    with pytest.raises(ChildSaRefused):
        pad.check_child_sa(m, F.remote_addr, [Selector(remote=AddressRange.network("198.51.100.0/24"))])
    with pytest.raises(ChildSaRefused):
        pad.check_child_sa(m, F.remote_addr, [Selector()])  # remote ANY is never authorized


def test_entry_validation() -> None:
    with pytest.raises(ValueError):
        PadEntry("x", PublicKeyPattern(), AuthMethod.CERTIFICATE, ChildSaAuthorization())
    pad = PeerAuthorizationDatabase(ex.btns_pad())
    with pytest.raises(ValueError):
        pad.append(ex.btns_pad()[0])  # same name again
