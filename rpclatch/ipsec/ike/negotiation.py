"""Proposal choice (RFC 7296 §2.7, §3.3) and traffic-selector narrowing (§2.9).

Pure functions over :mod:`~rpclatch.ipsec.ike.wire` structures and the RFC 4301 model: the IKE
suites and ESP suites this core speaks, how they are offered as proposals, how a responder picks
one, and how proposed TSi/TSr are narrowed to local policy.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from rpclatch.ipsec.ike.crypto import IkeSuite
from rpclatch.ipsec.ike.errors import InvalidKePayload, NoProposalChosen, TsUnacceptable
from rpclatch.ipsec.ike.wire import (
    DhGroup,
    EncrId,
    EsnId,
    IntegId,
    PrfId,
    Proposal,
    ProtocolId,
    TrafficSelector,
    Transform,
    TransformType,
)
from rpclatch.ipsec.model import (
    AES_GCM_128,
    AES_GCM_256,
    AddressRange,
    CipherSuite,
    IPAddress,
    PortRange,
    Selector,
)

#: what the core offers by default, most preferred first: AEAD + Curve25519, then the CBC/HMAC
#: suites the Debian peers' defaults know (ECP-256, MODP-2048)
DEFAULT_IKE_SUITES: tuple[IkeSuite, ...] = (
    IkeSuite(EncrId.ENCR_AES_GCM_16, 256, PrfId.PRF_HMAC_SHA2_256, IntegId.NONE, DhGroup.CURVE25519),
    IkeSuite(
        EncrId.ENCR_AES_CBC, 256, PrfId.PRF_HMAC_SHA2_256, IntegId.AUTH_HMAC_SHA2_256_128, DhGroup.ECP_256
    ),
    IkeSuite(
        EncrId.ENCR_AES_CBC, 256, PrfId.PRF_HMAC_SHA2_256, IntegId.AUTH_HMAC_SHA2_256_128, DhGroup.MODP_2048
    ),
)
#: CHILD_SA suites: ESP AES-GCM-16 with a 16-octet ICV (RFC 4106); ChaCha20-Poly1305 (RFC 7634)
#: is supported and offered when configured (``IkeConfig.esp_suites``)
DEFAULT_ESP_SUITES: tuple[CipherSuite, ...] = (AES_GCM_256, AES_GCM_128)
SUPPORTED_GROUPS = frozenset(int(g) for g in DhGroup)


def ike_proposals(suites: Sequence[IkeSuite], spi: bytes = b"") -> tuple[Proposal, ...]:
    """One proposal per suite, numbered from 1 (§3.3.1)."""
    return _ike_proposals(tuple(suites), spi)


@functools.lru_cache(maxsize=64)
def _ike_proposals(suites: tuple[IkeSuite, ...], spi: bytes) -> tuple[Proposal, ...]:
    out = []
    for n, s in enumerate(suites, 1):
        ts = [
            Transform.with_key_length(TransformType.ENCR, s.encr, s.encr_bits),
            Transform(TransformType.PRF, s.prf),
        ]
        if s.integ != IntegId.NONE:
            ts.append(Transform(TransformType.INTEG, s.integ))
        ts.append(Transform(TransformType.DH, s.dh))
        out.append(Proposal(n, ProtocolId.IKE, spi, tuple(ts)))
    return tuple(out)


def _has(p: Proposal, ttype: int, tid: int, bits: int | None = None) -> bool:
    return (ttype, tid, bits) in _keys(p)


def _keys(p: Proposal) -> set[tuple[int, int, int | None]]:
    """(type, ID, key length or None) of each transform of ``p``."""
    return {(t.transform_type, t.transform_id, t.key_length) for t in p.transforms}


def _types(p: Proposal) -> set[int]:
    return {t.transform_type for t in p.transforms}


def choose_ike_proposal(offered: Sequence[Proposal], ours: Sequence[IkeSuite]) -> tuple[Proposal, IkeSuite]:
    """Responder side: the first offered IKE proposal one of our suites fits; returns the
    single-transform-per-type answer (with the offer's number) and the suite."""
    for p in offered:
        if p.protocol != ProtocolId.IKE or len(p.spi) not in (0, 8):
            continue
        types = _types(p)
        if not types <= _IKE_TYPES:
            continue
        keys = _keys(p)
        for s in ours:
            integ_ok = (
                (TransformType.INTEG, s.integ, None) in keys
                if s.integ != IntegId.NONE
                else (TransformType.INTEG not in types or (TransformType.INTEG, IntegId.NONE, None) in keys)
            )
            if (
                (TransformType.ENCR, s.encr, s.encr_bits) in keys
                and (TransformType.PRF, s.prf, None) in keys
                and integ_ok
                and (TransformType.DH, s.dh, None) in keys
            ):
                chosen = ike_proposals([s], p.spi)[0]
                return Proposal(p.number, chosen.protocol, chosen.spi, chosen.transforms), s
    raise NoProposalChosen("no offered IKE proposal matches a configured suite")


_IKE_TYPES = frozenset({TransformType.ENCR, TransformType.PRF, TransformType.INTEG, TransformType.DH})
_ESP_TYPES = frozenset({TransformType.ENCR, TransformType.INTEG, TransformType.DH, TransformType.ESN})


def suite_of_ike_answer(answer: Proposal, offered: Sequence[IkeSuite]) -> IkeSuite:
    """Initiator side: the responder's answer must be exactly one of our suites (§2.7)."""
    got = sorted(_sortable(t) for t in answer.transforms)
    for s in offered:
        if got == _suite_transforms(s):
            return s
    raise NoProposalChosen("the responder chose a proposal we did not offer")


@functools.lru_cache(maxsize=64)
def _suite_transforms(s: IkeSuite) -> list[tuple[int, int, int]]:
    """The sorted transforms of a suite's proposal (read-only)."""
    return sorted(_sortable(t) for t in ike_proposals([s])[0].transforms)


def _sortable(t: Transform) -> tuple[int, int, int]:
    """(type, ID, key length); -1 for no key length (a wire key length is 0..65535)."""
    bits = t.key_length
    return (t.transform_type, t.transform_id, -1 if bits is None else bits)


def esp_encr(suite: CipherSuite) -> tuple[int, int | None]:
    """(ENCR transform ID, Key Length attribute) of an ESP suite: AES-GCM-16 128/256 (RFC 4106),
    or ChaCha20-Poly1305, whose transform carries no Key Length attribute (RFC 7634 §2); no ESN."""
    if suite.esn:
        raise ValueError(f"unsupported ESP suite {suite} (no ESN)")
    if suite.encryption == "aes-gcm-16" and suite.encryption_key_bits in (128, 256):
        return EncrId.ENCR_AES_GCM_16, suite.encryption_key_bits
    if suite.encryption == "chacha20-poly1305" and suite.encryption_key_bits == 256:
        return EncrId.ENCR_CHACHA20_POLY1305, None
    raise ValueError(f"unsupported ESP suite {suite} (AES-GCM-16 128/256 or ChaCha20-Poly1305)")


def esp_proposals(suites: Sequence[CipherSuite], spi: int, dh: int | None = None) -> tuple[Proposal, ...]:
    """ESP proposals for a CHILD_SA; ``dh`` adds a key-exchange transform (PFS, only in
    CREATE_CHILD_SA: the first child of IKE_AUTH has none, §1.2)."""
    spi_octets = spi.to_bytes(4, "big")
    return tuple(
        Proposal(n, ProtocolId.ESP, spi_octets, _esp_transforms(s, dh)) for n, s in enumerate(suites, 1)
    )


@functools.lru_cache(maxsize=64)
def _esp_transforms(suite: CipherSuite, dh: int | None) -> tuple[Transform, ...]:
    extra = (Transform(TransformType.DH, dh),) if dh else ()
    return (
        Transform.with_key_length(TransformType.ENCR, *esp_encr(suite)),
        *extra,
        Transform(TransformType.ESN, EsnId.NO_ESN),
    )


def _dh_ids(p: Proposal) -> set[int]:
    return {t.transform_id for t in p.transforms if t.transform_type == TransformType.DH}


def choose_esp_proposal(
    offered: Sequence[Proposal], ours: Sequence[CipherSuite], our_spi: int, ke_group: int | None = None
) -> tuple[Proposal, CipherSuite, int, int | None]:
    """Responder side: (answer proposal carrying our SPI, suite, the peer's SPI, the PFS group or
    None). ``ke_group`` is the group of the request's KE payload (None: no KE). A proposal that
    needs a key exchange we can do, but in another group than the KE's, makes INVALID_KE_PAYLOAD
    (§1.3); one we cannot do at all is skipped."""
    wanted_group: int | None = None
    for p in offered:
        if p.protocol != ProtocolId.ESP or len(p.spi) != 4:
            continue
        types = _types(p)
        if not types <= _ESP_TYPES:
            continue
        keys = _keys(p)
        if TransformType.ESN in types and (TransformType.ESN, EsnId.NO_ESN, None) not in keys:
            continue
        if TransformType.INTEG in types and (TransformType.INTEG, IntegId.NONE, None) not in keys:
            continue
        dh_ids = _dh_ids(p)
        groups = dh_ids - {0}
        no_pfs_ok = not groups or 0 in dh_ids
        if ke_group is None:
            if not no_pfs_ok:
                continue
            group = None
        elif ke_group in groups:
            group = ke_group
        else:
            usable = groups & SUPPORTED_GROUPS
            if usable and wanted_group is None:
                wanted_group = min(usable, key=lambda g: (g != DhGroup.CURVE25519, g))
            continue
        for s in ours:
            if (TransformType.ENCR, *esp_encr(s)) in keys:
                return (
                    Proposal(p.number, ProtocolId.ESP, our_spi.to_bytes(4, "big"), _esp_transforms(s, group)),
                    s,
                    int.from_bytes(p.spi, "big"),
                    group,
                )
    if wanted_group is not None:
        raise InvalidKePayload(
            f"CHILD_SA KE for group {ke_group}, a proposal allows {wanted_group}", wanted_group
        )
    raise NoProposalChosen("no offered ESP proposal matches a configured suite")


def esp_answer_suite(
    answer: Proposal, offered: Sequence[CipherSuite], dh: int | None = None
) -> tuple[CipherSuite, int]:
    """Initiator side: the suite the responder chose (one we offered, with our PFS group if we
    asked for one) and its SPI."""
    if answer.protocol != ProtocolId.ESP or len(answer.spi) != 4:
        raise NoProposalChosen("CHILD_SA answer is not ESP with a 4-octet SPI")
    if (_dh_ids(answer) - {0}) != ({dh} if dh else set()):
        raise NoProposalChosen("the responder's key-exchange transform is not the one we offered")
    for s in offered:
        if _has(answer, TransformType.ENCR, *esp_encr(s)) and not any(
            t.transform_type == TransformType.ESN and t.transform_id != EsnId.NO_ESN
            for t in answer.transforms
        ):
            return s, int.from_bytes(answer.spi, "big")
    raise NoProposalChosen("the responder chose an ESP transform we did not offer")


# ---------------------------------------------------------------------------------------------
# traffic selectors (RFC 7296 §2.9, §3.13)


def _full(version: int) -> AddressRange:
    if version == 4:
        return AddressRange(ipaddress.IPv4Address(0), ipaddress.IPv4Address(2**32 - 1))
    return AddressRange(ipaddress.IPv6Address(0), ipaddress.IPv6Address(2**128 - 1))


def selector_to_ts(sel: Selector) -> tuple[TrafficSelector, TrafficSelector]:
    """A local-oriented selector as (our TS, the peer's TS)."""
    version = (sel.local or sel.remote or AddressRange.single("0.0.0.0")).version
    local = sel.local or _full(version)
    remote = sel.remote or _full(version)
    proto = sel.proto or 0
    return (
        TrafficSelector(proto, sel.local_ports.low, sel.local_ports.high, local.first, local.last),
        TrafficSelector(proto, sel.remote_ports.low, sel.remote_ports.high, remote.first, remote.last),
    )


def ts_to_selector(ours: TrafficSelector, theirs: TrafficSelector) -> Selector:
    """(our TS, the peer's TS) as a local-oriented selector; raises TsUnacceptable if they cannot
    be one (mixed families, two different protocols, inverted ranges)."""
    try:
        proto = _meet_proto(ours.ip_proto, theirs.ip_proto)
        if proto is None:
            raise TsUnacceptable("TSi and TSr name different protocols")
        return Selector(
            AddressRange(ours.start_addr, ours.end_addr),
            AddressRange(theirs.start_addr, theirs.end_addr),
            proto or None,
            PortRange(ours.start_port, ours.end_port),
            PortRange(theirs.start_port, theirs.end_port),
        )
    except ValueError as e:
        raise TsUnacceptable(f"traffic selector not representable: {e}") from None


def _meet_proto(a: int, b: int) -> int | None:
    """0 = any; None = empty."""
    if a == 0:
        return b
    if b == 0 or a == b:
        return a
    return None


def _meet_addr(a: AddressRange, b: AddressRange | None) -> AddressRange | None:
    if b is None or b.contains_range(a):
        return a
    if a.contains_range(b):
        return b
    if not a.overlaps(b):
        return None
    cls = type(a.first)
    return AddressRange(cls(max(int(a.first), int(b.first))), cls(min(int(a.last), int(b.last))))


def _meet_ports(a: PortRange, b: PortRange) -> PortRange | None:
    if b.low <= a.low and a.high <= b.high:
        return a
    if a.low <= b.low and b.high <= a.high:
        return b
    lo, hi = max(a.low, b.low), min(a.high, b.high)
    return PortRange(lo, hi) if lo <= hi else None


def intersect(a: Selector, b: Selector) -> Selector | None:
    """The selector matching exactly what both match, or None (protocol ANY is ``None``)."""
    if a.local is None or a.remote is None:
        return None
    pa, pb = a.proto or 0, b.proto or 0
    proto = _meet_proto(pa, pb)
    local = _meet_addr(a.local, b.local)
    remote = _meet_addr(a.remote, b.remote)
    lp = _meet_ports(a.local_ports, b.local_ports)
    rp = _meet_ports(a.remote_ports, b.remote_ports)
    if proto is None or local is None or remote is None or lp is None or rp is None:
        return None
    if (proto or None, local, remote, lp, rp) == (a.proto, a.local, a.remote, a.local_ports, a.remote_ports):
        return a  # the common case: the request is within policy, nothing to narrow
    return Selector(local, remote, proto or None, lp, rp)


def contains(outer: Selector, inner: Selector) -> bool:
    """Does ``outer`` match everything ``inner`` matches?"""
    return intersect(inner, outer) == inner


@dataclass(frozen=True, slots=True)
class Narrowed:
    """The responder's answer: the selector (local-oriented) and whether it was narrowed."""

    selector: Selector
    narrowed: bool


def narrow(
    proposed_remote: Sequence[TrafficSelector],
    proposed_local: Sequence[TrafficSelector],
    policy: Sequence[Selector],
    *,
    peer_addr: IPAddress | None = None,
) -> Narrowed:
    """Narrow the peer's TSi (its side, our remote) / TSr (our side) to local policy (§2.9).

    ``policy`` lists the local-oriented selectors this host will protect, in order; the first
    non-empty intersection with a proposed (TSi, TSr) pair wins. With ``peer_addr`` the remote
    side is also narrowed to that one address (RFC 7619 §2.5, RFC 5386: an unauthenticated peer
    gets host-to-host SAs for its own address only). Raises :class:`TsUnacceptable`.
    """
    pinned = AddressRange.single(peer_addr) if peer_addr is not None else None
    for pol in policy:
        for their in proposed_remote:
            for our in proposed_local:
                try:
                    offered = ts_to_selector(our, their)
                except TsUnacceptable:
                    continue
                hit = intersect(offered, pol)
                if hit is not None and pinned is not None and hit.remote != pinned:
                    hit = intersect(
                        hit, Selector(hit.local, pinned, hit.proto, hit.local_ports, hit.remote_ports)
                    )
                if hit is not None:
                    return Narrowed(hit, hit != offered)
    raise TsUnacceptable("no proposed traffic selector intersects local policy")
