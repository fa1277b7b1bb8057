"""Peer Authorization Database (RFC 4301 §4.4.3) with RFC 5386 BTNS and RFC 7619 NULL entries.

:class:`PeerAuthorizationDatabase` holds the configured, ordered :class:`PadEntry` list and answers
the two questions the key manager (:mod:`rpclatch.ipsec.keymgr`) asks of every IKE peer: is it
authorized (:meth:`~PeerAuthorizationDatabase.authorize`, the RFC 5386 §2 two-pass search), and
may it claim these traffic selectors (:meth:`~PeerAuthorizationDatabase.check_child_sa`).

The latch layer (approach 2 of docs/design.md: template and cloned entries) lives in
:mod:`rpclatch.ipsec.pad_latching` and never modifies these configured entries (RFC 5660 §1: latching
must never modify the PAD itself; the clones only *narrow* what the configured PAD authorizes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from rpclatch.ipsec.errors import ChildSaRefused, IkeNotify, PeerNotAuthorized
from rpclatch.ipsec.model import (
    AddressRange,
    AuthMethod,
    CertificatePeer,
    IdType,
    IkeId,
    IPAddress,
    NullAuthPeer,
    PeerIdentity,
    PskPeer,
    Selector,
    spki_fingerprint,
)


class IdMatch(Enum):
    """How a PAD entry's ID is compared with the asserted one (RFC 4301 §4.4.3.1)."""

    EXACT = "exact"
    #: DNS name / RFC 822 address suffix ("partial")
    SUFFIX = "suffix"
    #: DN subtree: the asserted DN ends with the entry's DN (string form, RDNs comma-separated)
    SUBTREE = "subtree"


@dataclass(frozen=True, slots=True)
class IdPattern:
    """Match on the asserted IKE ID (DNS name, DN, RFC 822, Key ID)."""

    id_type: IdType
    value: bytes
    how: IdMatch = IdMatch.EXACT

    def matches(self, ike_id: IkeId | None) -> bool:
        if ike_id is None or ike_id.id_type is not self.id_type:
            return False
        if self.how is IdMatch.EXACT:
            return ike_id.data == self.value
        if self.how is IdMatch.SUFFIX:
            return (
                ike_id.data == self.value
                or ike_id.data.endswith(b"." + self.value.lstrip(b"."))
                or (
                    self.id_type is IdType.ID_RFC822_ADDR
                    and ike_id.data.endswith(b"@" + self.value.lstrip(b"@"))
                )
            )
        return ike_id.data == self.value or ike_id.data.endswith(b"," + self.value)


@dataclass(frozen=True, slots=True)
class AddressIdPattern:
    """Match an asserted ID_IPV4_ADDR / ID_IPV6_ADDR against a range (RFC 4301 §4.4.3.1)."""

    addresses: AddressRange

    def matches(self, ike_id: IkeId | None) -> bool:
        if ike_id is None or ike_id.id_type not in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
            return False
        import ipaddress

        return self.addresses.contains(ipaddress.ip_address(ike_id.data))


@dataclass(frozen=True, slots=True)
class PublicKeyPattern:
    """RFC 5386 BTNS entry: a specific key (SPKI SHA-256 fingerprint) or, if None, any key."""

    fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class NullIdPattern:
    """RFC 7619 §2.4: ID_NULL matches by type only."""


PadPattern = IdPattern | AddressIdPattern | PublicKeyPattern | NullIdPattern


@dataclass(frozen=True, slots=True)
class ChildSaAuthorization:
    """RFC 4301 §4.4.3.3: the remote addresses a peer may claim in traffic selectors.

    ``own_address_only`` forces host-to-host SAs (RFC 7619 §2.5): the only claimable remote address
    is the peer's own outer (IKE) address.
    """

    remote_ranges: tuple[AddressRange, ...] = ()
    own_address_only: bool = False

    def allows(self, sel: Selector, peer_addr: IPAddress) -> bool:
        remote = sel.remote
        if remote is None:
            return False
        if self.own_address_only:
            return remote.is_single and remote.first == peer_addr
        return any(r.contains_range(remote) for r in self.remote_ranges)


@dataclass(frozen=True, slots=True)
class PadEntry:
    """One configured PAD entry (RFC 4301 §4.4.3).

    ``auth_method`` is what the peer must authenticate with; ``trust_anchors`` lists the CA names a
    certificate peer may chain to (empty = any anchor the IKE layer accepted). PSK entries name the
    peer IDs whose shared secret is configured by matching the entry itself.
    """

    name: str
    pattern: PadPattern
    auth_method: AuthMethod
    child_sa: ChildSaAuthorization
    trust_anchors: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if isinstance(self.pattern, PublicKeyPattern) and self.auth_method is not AuthMethod.RAW_PUBLIC_KEY:
            raise ValueError(f"PAD entry {self.name!r}: BTNS entries authenticate by public key")
        if isinstance(self.pattern, NullIdPattern) and self.auth_method is not AuthMethod.NULL:
            raise ValueError(f"PAD entry {self.name!r}: ID_NULL entries use NULL authentication")

    @property
    def is_btns(self) -> bool:
        return isinstance(self.pattern, PublicKeyPattern)

    @property
    def is_wildcard_btns(self) -> bool:
        return isinstance(self.pattern, PublicKeyPattern) and self.pattern.fingerprint is None

    @property
    def is_unauthenticated(self) -> bool:
        """BTNS and NULL entries: the peer's name means nothing (RFC 5386, RFC 7619)."""
        return self.is_btns or isinstance(self.pattern, NullIdPattern)

    def authenticates(self, peer: PeerIdentity) -> bool:
        """Does ``peer``'s (already verified) credential satisfy this entry's method and data?"""
        if self.auth_method is AuthMethod.CERTIFICATE:
            return isinstance(peer, CertificatePeer) and (
                not self.trust_anchors or peer.trust_anchor in self.trust_anchors
            )
        if self.auth_method is AuthMethod.PSK:
            return isinstance(peer, PskPeer)
        if self.auth_method is AuthMethod.NULL:
            return isinstance(peer, NullAuthPeer)
        # raw public key (BTNS): any peer that signed AUTH with a key it sent (RFC 5386 §2)
        return peer.public_key is not None


@dataclass(frozen=True, slots=True)
class PadMatch:
    """The result of authorizing a peer: the entry, and whether the peer is a BTNS peer."""

    entry: PadEntry
    btns: bool


def _asserted_id(peer: PeerIdentity) -> IkeId | None:
    if isinstance(peer, NullAuthPeer):
        return IkeId(IdType.ID_NULL, peer.id_data)
    return peer.ike_id


class PeerAuthorizationDatabase:
    """The ordered PAD: ordinary entries in order, then the specific BTNS entries, then the single
    wildcard BTNS entry, which is always last."""

    def __init__(self, entries: Iterable[PadEntry] = ()) -> None:
        self._ordinary: list[PadEntry] = []
        self._btns_specific: list[PadEntry] = []
        self._btns_wildcard: PadEntry | None = None
        for e in entries:
            self.append(e)

    def append(self, entry: PadEntry) -> None:
        """Add an entry at the end of its class. BTNS entries always logically follow all
        non-BTNS ones; a second wildcard BTNS entry is refused (RFC 5386 §2)."""
        if entry.name in {e.name for e in self.entries}:
            raise ValueError(f"PAD entry name {entry.name!r} is already used")
        if entry.is_wildcard_btns:
            if self._btns_wildcard is not None:
                raise ValueError("at most one wildcard BTNS PAD entry may exist (RFC 5386 §2)")
            self._btns_wildcard = entry
        elif entry.is_btns:
            self._btns_specific.append(entry)
        else:
            self._ordinary.append(entry)

    @property
    def entries(self) -> tuple[PadEntry, ...]:
        """Entries in search order."""
        tail = (self._btns_wildcard,) if self._btns_wildcard is not None else ()
        return (*self._ordinary, *self._btns_specific, *tail)

    def authorize(self, peer: PeerIdentity) -> PadMatch:
        """RFC 4301 §4.4.3.4 step 1-2 with the RFC 5386 §2 two-pass search:

        1. non-BTNS entries, in order, by the peer's asserted IKE ID. A peer that matches a
           non-BTNS entry but does not authenticate with that entry's method/data is rejected:
           there is no falling through to BTNS (RFC 5386 §2).
        2. if nothing matched, the peer ID is coerced to ``PUBLICKEY:<its key>`` and the BTNS
           entries are searched (specific keys first, then the single wildcard entry).

        Raises :class:`PeerNotAuthorized` (AUTHENTICATION_FAILED) when no entry admits the peer.
        """
        if isinstance(peer, NullAuthPeer) and peer.id_data:
            raise PeerNotAuthorized(
                IkeNotify.AUTHENTICATION_FAILED, "ID_NULL with non-empty identification data (RFC 7619 §2.2)"
            )
        asserted = _asserted_id(peer)
        for entry in self._ordinary:
            if isinstance(entry.pattern, NullIdPattern):
                hit = asserted is not None and asserted.id_type is IdType.ID_NULL
            elif isinstance(entry.pattern, IdPattern | AddressIdPattern):
                hit = entry.pattern.matches(asserted)
            else:  # pragma: no cover - BTNS entries are never in _ordinary
                hit = False
            if not hit:
                continue
            if entry.authenticates(peer):
                return PadMatch(entry, btns=False)
            raise PeerNotAuthorized(
                IkeNotify.AUTHENTICATION_FAILED,
                f"peer {peer} matches PAD entry {entry.name!r} but does not authenticate as it requires "
                f"({entry.auth_method.value}); no fallthrough to BTNS (RFC 5386 §2)",
            )
        key = peer.public_key
        if key is None or isinstance(peer, PskPeer | NullAuthPeer):
            reason = "NULL authentication not accepted" if isinstance(peer, NullAuthPeer) else "no PAD entry"
            raise PeerNotAuthorized(IkeNotify.AUTHENTICATION_FAILED, f"{reason} for {peer}")
        fingerprint = spki_fingerprint(key)
        for entry in self._btns_specific:
            assert isinstance(entry.pattern, PublicKeyPattern)
            if entry.pattern.fingerprint == fingerprint:
                return PadMatch(entry, btns=True)
        if self._btns_wildcard is not None:
            return PadMatch(self._btns_wildcard, btns=True)
        raise PeerNotAuthorized(IkeNotify.AUTHENTICATION_FAILED, f"no PAD entry for {peer}")

    def check_child_sa(self, match: PadMatch, peer_addr: IPAddress, selectors: Iterable[Selector]) -> None:
        """RFC 4301 §4.4.3.4 step 3 (+ RFC 5386 §2, RFC 7619 §2.5, §3).

        Child-SA authorization (RFC 4301 §4.4.3.3) constrains the traffic selectors an authorized
        peer may claim. BTNS and NULL-auth peers additionally must not claim addresses that belong
        to any non-BTNS entry (RFC 5386 §2 second PAD search; RFC 7619 §3), and NULL-auth peers
        get host-to-host SAs only (their entry's ``own_address_only``, RFC 7619 §2.5).

        Raises :class:`ChildSaRefused` (TS_UNACCEPTABLE) if a selector claims remote addresses the
        peer is not authorized for, or an unauthenticated peer claims a non-BTNS entry's addresses.
        """
        for sel in selectors:
            if not match.entry.child_sa.allows(sel, peer_addr):
                raise ChildSaRefused(
                    IkeNotify.TS_UNACCEPTABLE,
                    f"selector {sel} outside what PAD entry {match.entry.name!r} authorizes",
                )
            if match.entry.is_unauthenticated:
                remote = sel.remote
                for other in self._ordinary:
                    if other.is_unauthenticated:
                        continue
                    for rng in other.child_sa.remote_ranges:
                        if remote is None or rng.overlaps(remote):
                            raise ChildSaRefused(
                                IkeNotify.TS_UNACCEPTABLE,
                                f"unauthenticated peer claims {remote or 'any'}, which overlaps "
                                f"non-BTNS PAD entry {other.name!r} (RFC 5386 §2)",
                            )
