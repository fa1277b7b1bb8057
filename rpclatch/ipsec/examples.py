"""Ready-made policies and SAs for one running example (RFC 5386 §3.2/§3.3, RFC 5660
§2.3.2): an NFSv4 server on TCP 2049 in 192.0.2.0/24, BTNS (raw public key) peers.

Used by tests, benchmarks and demos so they all speak about the same topology. Keys are real
Ed25519 SPKIs (DER) made with ``cryptography``; nothing here is random unless asked for.
"""

from __future__ import annotations

import itertools

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from rpclatch.ipsec.model import (
    AddressRange,
    AuthMethod,
    CertificatePeer,
    FiveTuple,
    IdType,
    IkeId,
    IkeSaRef,
    IpProto,
    LocalIdentity,
    NullAuthPeer,
    PortRange,
    ProtectionParams,
    ProtectionPolicy,
    PskPeer,
    RawPublicKeyPeer,
    Selector,
)
from rpclatch.ipsec.pad import (
    ChildSaAuthorization,
    IdMatch,
    IdPattern,
    NullIdPattern,
    PadEntry,
    PublicKeyPattern,
)
from rpclatch.ipsec.sad import SecurityAssociation
from rpclatch.ipsec.spd import SpdAction, SpdEntry

NET = AddressRange.network("192.0.2.0/24")
NFS_PORT = 2049

_spi = itertools.count(0x10000)


def spki(seed: int) -> bytes:
    """A deterministic Ed25519 SubjectPublicKeyInfo (DER) for ``seed``."""
    key = Ed25519PrivateKey.from_private_bytes(seed.to_bytes(32, "big"))
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def btns_peer(seed: int) -> RawPublicKeyPeer:
    return RawPublicKeyPeer(spki(seed), IkeId(IdType.ID_NULL))


def cert_peer(name: str, seed: int, anchor: str = "CA-X") -> CertificatePeer:
    return CertificatePeer(IkeId.fqdn(name), b"cert:" + name.encode(), spki(seed), anchor)


def null_peer(ike_spi: int) -> NullAuthPeer:
    return NullAuthPeer(IkeSaRef(ike_spi, ike_spi + 1))


def psk_peer(name: str) -> PskPeer:
    return PskPeer(IkeId.fqdn(name))


def btns_local(seed: int) -> LocalIdentity:
    return LocalIdentity(IkeId(IdType.ID_NULL), AuthMethod.RAW_PUBLIC_KEY, spki(seed))


def nfs_spd(action: SpdAction = SpdAction.PROTECT, *, btns_ok: bool = True) -> list[SpdEntry]:
    """RFC 5386 §3.3: TCP 2049 (either side) protected with BTNS_OK, everything else BYPASS."""
    prot = ProtectionPolicy() if action in (SpdAction.PROTECT, SpdAction.BYPASS_OR_PROTECT) else None
    return [
        SpdEntry(
            "nfs",
            (
                Selector(proto=IpProto.TCP, local_ports=PortRange.single(NFS_PORT)),
                Selector(proto=IpProto.TCP, remote_ports=PortRange.single(NFS_PORT)),
            ),
            action,
            prot,
            btns_ok=btns_ok,
        ),
        SpdEntry("rest", (Selector(),), SpdAction.BYPASS),
    ]


def btns_pad(*, cert_net: AddressRange | None = None) -> list[PadEntry]:
    """An optional certificate entry (``*.example`` from CA-X) and the wildcard BTNS entry."""
    entries = []
    if cert_net is not None:
        entries.append(
            PadEntry(
                "certs",
                IdPattern(IdType.ID_FQDN, b"example", IdMatch.SUFFIX),
                AuthMethod.CERTIFICATE,
                ChildSaAuthorization((cert_net,)),
                frozenset({"CA-X"}),
            )
        )
    entries.append(
        PadEntry("btns-any", PublicKeyPattern(), AuthMethod.RAW_PUBLIC_KEY, ChildSaAuthorization((NET,)))
    )
    return entries


def null_pad() -> list[PadEntry]:
    return [PadEntry("null", NullIdPattern(), AuthMethod.NULL, ChildSaAuthorization(own_address_only=True))]


def flow(local: str, lport: int, remote: str, rport: int, proto: int = IpProto.TCP) -> FiveTuple:
    return FiveTuple.of(local, lport, remote, rport, proto)


def narrow_sa(
    f: FiveTuple,
    peer: RawPublicKeyPeer | CertificatePeer | NullAuthPeer | PskPeer,
    local: LocalIdentity,
    *,
    params: ProtectionParams | None = None,
    ike_sa: IkeSaRef | None = None,
    selectors: tuple[Selector, ...] | None = None,
    now: float = 0.0,
) -> SecurityAssociation:
    """An SA (sa_id 0: the key manager assigns one) carrying exactly ``f`` unless ``selectors``."""
    return SecurityAssociation(
        sa_id=0,
        spi_in=next(_spi),
        spi_out=next(_spi),
        local_addr=f.local_addr,
        remote_addr=f.remote_addr,
        traffic_selectors=selectors or (Selector.for_flow(f),),
        peer=peer,
        local=local,
        params=params or ProtectionParams(),
        ike_sa=ike_sa
        or (peer.ike_sa if isinstance(peer, NullAuthPeer) else IkeSaRef(next(_spi), next(_spi))),
        created_at=now,
    )
