"""The RFC 4301 vocabulary: flow keys, selectors, protection parameters and identities.

Everything here is a frozen, slotted dataclass (hashable, cheap, immutable) so that latches can
record them as they are (RFC 5660 §2: latched parameters MUST NOT change once established).

Orientation: every flow key is written from the point of view of the host that owns the engine
(``local_*`` = this host, ``remote_*`` = the peer), for inbound and outbound packets alike. Use
:meth:`FiveTuple.from_packet` to build one from a packet's source/destination.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from enum import Enum, IntEnum

from rpclatch.channel import Protection

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_PORT = 65535


def ip(value: str | int | IPAddress) -> IPAddress:
    """Parse an address (``"192.0.2.1"``, ``"2001:db8::1"``, an int, or an address object)."""
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    return ipaddress.ip_address(value)


class IpProto(IntEnum):
    """Next-layer protocol numbers (IANA) the project uses."""

    ICMP = 1
    TCP = 6
    UDP = 17
    ICMPV6 = 58
    SCTP = 132


#: protocols whose flows are "connections" for latching purposes (RFC 5660 §5)
CONNECTION_PROTOCOLS = frozenset({IpProto.TCP, IpProto.UDP, IpProto.SCTP})


@dataclass(frozen=True, slots=True)
class FiveTuple:
    """A flow key (RFC 5660 §2.3): local address/port, remote address/port, protocol.

    The hash is computed once at construction: five-tuples are dictionary keys on every packet.
    """

    local_addr: IPAddress
    local_port: int
    remote_addr: IPAddress
    remote_port: int
    proto: int
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.local_addr.version != self.remote_addr.version:
            raise ValueError(f"mixed address families in 5-tuple: {self.local_addr} / {self.remote_addr}")
        if not (0 <= self.local_port <= MAX_PORT and 0 <= self.remote_port <= MAX_PORT):
            raise ValueError(f"port out of range in 5-tuple: {self.local_port} / {self.remote_port}")
        if not 0 <= self.proto <= 255:
            raise ValueError(f"protocol number out of range: {self.proto}")
        object.__setattr__(
            self,
            "_hash",
            hash(
                (int(self.local_addr), self.local_port, int(self.remote_addr), self.remote_port, self.proto)
            ),
        )

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def of(
        cls, local: str | IPAddress, local_port: int, remote: str | IPAddress, remote_port: int, proto: int
    ) -> FiveTuple:
        """Convenience constructor taking strings: ``FiveTuple.of("192.0.2.1", 2049, ...)``."""
        return cls(ip(local), local_port, ip(remote), remote_port, int(proto))

    @classmethod
    def from_packet(
        cls, src: IPAddress, sport: int, dst: IPAddress, dport: int, proto: int, *, inbound: bool
    ) -> FiveTuple:
        """The local-oriented key of a packet: for inbound packets local = destination."""
        if inbound:
            return cls(dst, dport, src, sport, proto)
        return cls(src, sport, dst, dport, proto)

    @property
    def listener_key(self) -> ThreeTuple:
        """The 3-tuple a listener on this flow's local side would have (RFC 5660 §2.3)."""
        return ThreeTuple(self.local_addr, self.local_port, self.proto)

    def reversed(self) -> FiveTuple:
        """The same flow seen from the peer (used to compare both ends' views in tests)."""
        return FiveTuple(self.remote_addr, self.remote_port, self.local_addr, self.local_port, self.proto)

    def __str__(self) -> str:
        local = _hostport(self.local_addr, self.local_port)
        return f"{local}<->{_hostport(self.remote_addr, self.remote_port)}/{self.proto}"


@dataclass(frozen=True, slots=True)
class ThreeTuple:
    """A listener key (RFC 5660 §2.3): local address, local port, protocol."""

    local_addr: IPAddress
    local_port: int
    proto: int

    def __post_init__(self) -> None:
        if not 0 <= self.local_port <= MAX_PORT:
            raise ValueError(f"port out of range: {self.local_port}")

    @classmethod
    def of(cls, local: str | IPAddress, local_port: int, proto: int) -> ThreeTuple:
        return cls(ip(local), local_port, int(proto))

    def matches(self, flow: FiveTuple) -> bool:
        return (
            flow.local_port == self.local_port
            and flow.proto == self.proto
            and flow.local_addr == self.local_addr
        )

    def __str__(self) -> str:
        return f"{_hostport(self.local_addr, self.local_port)}/{self.proto}"


def _hostport(addr: IPAddress, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


# ---------------------------------------------------------------------------------------------
# Selectors (RFC 4301 §4.4.1.1)


@dataclass(frozen=True, slots=True)
class AddressRange:
    """An inclusive address range ``first..last`` of one family (RFC 4301 §4.4.1.1)."""

    first: IPAddress
    last: IPAddress

    def __post_init__(self) -> None:
        if self.first.version != self.last.version:
            raise ValueError("address range mixes families")
        if int(self.first) > int(self.last):
            raise ValueError(f"empty address range {self.first}..{self.last}")

    @classmethod
    def single(cls, addr: str | IPAddress) -> AddressRange:
        a = ip(addr)
        return cls(a, a)

    @classmethod
    def network(cls, cidr: str) -> AddressRange:
        net = ipaddress.ip_network(cidr, strict=False)
        return cls(net[0], net[-1])

    @property
    def version(self) -> int:
        return self.first.version

    @property
    def is_single(self) -> bool:
        return self.first == self.last

    def contains(self, addr: IPAddress) -> bool:
        return addr.version == self.first.version and int(self.first) <= int(addr) <= int(self.last)

    def contains_range(self, other: AddressRange) -> bool:
        return (
            other.version == self.version
            and int(self.first) <= int(other.first)
            and int(other.last) <= int(self.last)
        )

    def overlaps(self, other: AddressRange) -> bool:
        return (
            other.version == self.version
            and int(self.first) <= int(other.last)
            and int(other.first) <= int(self.last)
        )

    def without(self, addr: IPAddress) -> tuple[AddressRange, ...]:
        """This range minus one address: zero, one or two ranges (used for TS narrowing)."""
        if not self.contains(addr):
            return (self,)
        out: list[AddressRange] = []
        cls = type(addr)
        if int(self.first) < int(addr):
            out.append(AddressRange(self.first, cls(int(addr) - 1)))
        if int(addr) < int(self.last):
            out.append(AddressRange(cls(int(addr) + 1), self.last))
        return tuple(out)

    def __str__(self) -> str:
        return str(self.first) if self.is_single else f"{self.first}-{self.last}"


@dataclass(frozen=True, slots=True)
class PortRange:
    """An inclusive port range; ``PortRange.ANY`` is 0..65535 (RFC 4301 'ANY')."""

    low: int = 0
    high: int = MAX_PORT

    def __post_init__(self) -> None:
        if not 0 <= self.low <= self.high <= MAX_PORT:
            raise ValueError(f"bad port range {self.low}..{self.high}")

    @classmethod
    def single(cls, port: int) -> PortRange:
        return cls(port, port)

    @property
    def is_any(self) -> bool:
        return self.low == 0 and self.high == MAX_PORT

    @property
    def is_single(self) -> bool:
        return self.low == self.high

    def contains(self, port: int) -> bool:
        return self.low <= port <= self.high

    def contains_range(self, other: PortRange) -> bool:
        return self.low <= other.low and other.high <= self.high

    def without(self, port: int) -> tuple[PortRange, ...]:
        if not self.contains(port):
            return (self,)
        out: list[PortRange] = []
        if self.low < port:
            out.append(PortRange(self.low, port - 1))
        if port < self.high:
            out.append(PortRange(port + 1, self.high))
        return tuple(out)

    def __str__(self) -> str:
        return "any" if self.is_any else (str(self.low) if self.is_single else f"{self.low}-{self.high}")


ANY_PORT = PortRange()


@dataclass(frozen=True, slots=True)
class Selector:
    """One traffic selector (RFC 4301 §4.4.1.1), local-oriented.

    ``None`` for an address range or protocol means ANY. A selector "is a single flow" when every
    field is pinned to one value: that is the narrow, per-5-tuple SA of RFC 5660 §2.1.
    """

    local: AddressRange | None = None
    remote: AddressRange | None = None
    proto: int | None = None
    local_ports: PortRange = ANY_PORT
    remote_ports: PortRange = ANY_PORT

    def __post_init__(self) -> None:
        if self.local is not None and self.remote is not None and self.local.version != self.remote.version:
            raise ValueError("selector mixes address families")

    @classmethod
    def for_flow(cls, flow: FiveTuple) -> Selector:
        """The exact selector of one 5-tuple (a PFP-populated selector, RFC 4301 §4.4.1.2)."""
        return cls(
            AddressRange(flow.local_addr, flow.local_addr),
            AddressRange(flow.remote_addr, flow.remote_addr),
            flow.proto,
            PortRange(flow.local_port, flow.local_port),
            PortRange(flow.remote_port, flow.remote_port),
        )

    @classmethod
    def for_listener(cls, key: ThreeTuple) -> Selector:
        return cls(
            AddressRange(key.local_addr, key.local_addr), None, key.proto, PortRange.single(key.local_port)
        )

    def matches(self, flow: FiveTuple) -> bool:
        if self.proto is not None and self.proto != flow.proto:
            return False
        if not (self.local_ports.low <= flow.local_port <= self.local_ports.high):
            return False
        if not (self.remote_ports.low <= flow.remote_port <= self.remote_ports.high):
            return False
        if self.local is not None and not self.local.contains(flow.local_addr):
            return False
        return self.remote is None or self.remote.contains(flow.remote_addr)

    @property
    def is_single_flow(self) -> bool:
        return (
            self.local is not None
            and self.local.is_single
            and self.remote is not None
            and self.remote.is_single
            and self.proto is not None
            and self.local_ports.is_single
            and self.remote_ports.is_single
        )

    def exclude(self, flow: FiveTuple) -> tuple[Selector, ...]:
        """Narrow this selector so that it no longer matches ``flow`` (RFC 7296 §2.9 narrowing).

        Returns selectors that together match exactly what this one matched minus ``flow`` —
        except that an ANY protocol is first narrowed to ``flow``'s protocol (protocol ranges are
        not modelled), which is still a valid narrowing (a subset). An empty tuple means the
        selector is exactly that flow and cannot be narrowed.
        """
        if not self.matches(flow):
            return (self,)
        base = self if self.proto is not None else _replace_sel(self, proto=flow.proto)
        remote = base.remote if base.remote is not None else _full_range(flow.remote_addr.version)
        local = base.local if base.local is not None else _full_range(flow.local_addr.version)
        rp, lp = PortRange.single(flow.remote_port), PortRange.single(flow.local_port)
        ra = AddressRange.single(flow.remote_addr)
        out: list[Selector] = []
        # box minus point = union over dimensions d of (earlier dims pinned to the point, d minus it)
        out += [_replace_sel(base, remote_ports=p) for p in base.remote_ports.without(flow.remote_port)]
        out += [_replace_sel(base, remote_ports=rp, remote=r) for r in remote.without(flow.remote_addr)]
        out += [
            _replace_sel(base, remote_ports=rp, remote=ra, local_ports=p)
            for p in base.local_ports.without(flow.local_port)
        ]
        out += [
            _replace_sel(base, remote_ports=rp, remote=ra, local_ports=lp, local=r)
            for r in local.without(flow.local_addr)
        ]
        return tuple(out)

    def __str__(self) -> str:
        proto = "any" if self.proto is None else str(self.proto)
        return (
            f"{self.local or 'any'}[{self.local_ports}]<->{self.remote or 'any'}[{self.remote_ports}]/{proto}"
        )


def _full_range(version: int) -> AddressRange:
    if version == 4:
        return AddressRange(ipaddress.IPv4Address(0), ipaddress.IPv4Address(2**32 - 1))
    return AddressRange(ipaddress.IPv6Address(0), ipaddress.IPv6Address(2**128 - 1))


def _replace_sel(sel: Selector, **changes: object) -> Selector:
    values: dict[str, object] = {
        "local": sel.local,
        "remote": sel.remote,
        "proto": sel.proto,
        "local_ports": sel.local_ports,
        "remote_ports": sel.remote_ports,
    }
    values.update(changes)
    return Selector(**values)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Protection parameters (RFC 4301 §4.4.1.2, §4.4.2.1; RFC 5660 §2 "type of protection", "QoP")


class SecurityProtocol(Enum):
    ESP = "esp"
    AH = "ah"


class Mode(Enum):
    TRANSPORT = "transport"
    TUNNEL = "tunnel"


#: encryption transforms that are AEAD (they provide integrity themselves)
AEAD_ALGORITHMS = frozenset({"aes-gcm-8", "aes-gcm-12", "aes-gcm-16", "aes-ccm-16", "chacha20-poly1305"})


@dataclass(frozen=True, slots=True)
class CipherSuite:
    """One algorithm suite of a child SA: the "QoP" of RFC 5660 §2.1 with key lengths.

    ``encryption`` None means no ESP encryption (AH, or ESP-NULL); ``integrity`` None is allowed only
    with an AEAD cipher.
    """

    encryption: str | None
    encryption_key_bits: int = 0
    integrity: str | None = None
    integrity_key_bits: int = 0
    esn: bool = False

    def __post_init__(self) -> None:
        if self.encryption is None and self.integrity is None:
            raise ValueError("a cipher suite needs encryption and/or integrity")
        if self.integrity is None and self.encryption not in AEAD_ALGORITHMS:
            raise ValueError(f"{self.encryption!r} is not AEAD and no integrity algorithm was given")

    @property
    def protection(self) -> Protection:
        prot = Protection.INTEGRITY  # every suite here authenticates (AEAD or integrity alg)
        if self.encryption not in (None, "null"):
            prot |= Protection.CONFIDENTIALITY
        return prot

    def __str__(self) -> str:
        parts = []
        if self.encryption is not None:
            parts.append(f"{self.encryption}-{self.encryption_key_bits}")
        if self.integrity is not None:
            parts.append(f"{self.integrity}-{self.integrity_key_bits}")
        if self.esn:
            parts.append("esn")
        return "+".join(parts)


AES_GCM_128 = CipherSuite("aes-gcm-16", 128)
AES_GCM_256 = CipherSuite("aes-gcm-16", 256)
#: ChaCha20 with Poly1305 (RFC 7634): the AEAD that is fast without AES instructions
CHACHA20_POLY1305 = CipherSuite("chacha20-poly1305", 256)
AES_CBC_SHA256 = CipherSuite("aes-cbc", 128, "hmac-sha2-256-128", 256)
ESP_NULL_SHA256 = CipherSuite("null", 0, "hmac-sha2-256-128", 256)
AH_SHA256 = CipherSuite(None, 0, "hmac-sha2-256-128", 256)


@dataclass(frozen=True, slots=True)
class ProtectionParams:
    """The concrete protection one SA applies (RFC 4301 §4.4.2.1)."""

    protocol: SecurityProtocol = SecurityProtocol.ESP
    mode: Mode = Mode.TRANSPORT
    suite: CipherSuite = AES_GCM_256
    replay_window: int = 64

    def __post_init__(self) -> None:
        if self.protocol is SecurityProtocol.AH and self.suite.encryption not in (None, "null"):
            raise ValueError("AH cannot encrypt")
        if self.replay_window < 0:
            raise ValueError("replay window must be >= 0")

    @property
    def protection(self) -> Protection:
        return self.suite.protection


@dataclass(frozen=True, slots=True)
class ProtectionPolicy:
    """What an SPD PROTECT entry demands (RFC 4301 §4.4.1.2): protocol, mode, an ordered list of
    acceptable suites, a minimum anti-replay window, and whether SAs must be narrow (PFP on every
    selector, RFC 5660 §2.1: a specific QoP request SHOULD imply narrow SAs)."""

    protocol: SecurityProtocol = SecurityProtocol.ESP
    mode: Mode = Mode.TRANSPORT
    suites: tuple[CipherSuite, ...] = (AES_GCM_256, AES_GCM_128)
    min_replay_window: int = 32
    narrow: bool = True

    def __post_init__(self) -> None:
        if not self.suites:
            raise ValueError("a PROTECT policy needs at least one suite")

    def admits(self, params: ProtectionParams) -> bool:
        return (
            params.protocol is self.protocol
            and params.mode is self.mode
            and params.suite in self.suites
            and params.replay_window >= self.min_replay_window
        )

    @property
    def preferred(self) -> ProtectionParams:
        return ProtectionParams(self.protocol, self.mode, self.suites[0], max(64, self.min_replay_window))


# ---------------------------------------------------------------------------------------------
# Identities (RFC 4301 §4.4.3.1, RFC 5386 §2, RFC 7670, RFC 7619)


class IdType(IntEnum):
    """IKEv2 ID types (RFC 7296 §3.5, RFC 7619)."""

    ID_IPV4_ADDR = 1
    ID_FQDN = 2
    ID_RFC822_ADDR = 3
    ID_IPV6_ADDR = 5
    ID_DER_ASN1_DN = 9
    ID_KEY_ID = 11
    ID_NULL = 13


class AuthMethod(Enum):
    """How the peer authenticated its IKE_SA (RFC 7296 §3.8, RFC 7427, RFC 7619)."""

    CERTIFICATE = "certificate"
    RAW_PUBLIC_KEY = "raw-public-key"
    NULL = "null"
    PSK = "psk"


@dataclass(frozen=True, slots=True)
class IkeId:
    """An IKE identity payload (type + data)."""

    id_type: IdType
    data: bytes = b""

    @classmethod
    def fqdn(cls, name: str) -> IkeId:
        return cls(IdType.ID_FQDN, name.lower().encode("ascii"))

    @classmethod
    def dn(cls, dn: str) -> IkeId:
        """A distinguished name; kept as its string form (the sim does not need DER)."""
        return cls(IdType.ID_DER_ASN1_DN, dn.encode("utf-8"))

    @classmethod
    def rfc822(cls, addr: str) -> IkeId:
        return cls(IdType.ID_RFC822_ADDR, addr.lower().encode("ascii"))

    @classmethod
    def key_id(cls, data: bytes) -> IkeId:
        return cls(IdType.ID_KEY_ID, data)

    @classmethod
    def address(cls, addr: str | IPAddress) -> IkeId:
        a = ip(addr)
        return cls(IdType.ID_IPV4_ADDR if a.version == 4 else IdType.ID_IPV6_ADDR, a.packed)

    @property
    def text(self) -> str:
        if self.id_type in (IdType.ID_IPV4_ADDR, IdType.ID_IPV6_ADDR):
            return str(ipaddress.ip_address(self.data))
        if self.id_type is IdType.ID_KEY_ID:
            return self.data.hex()
        return self.data.decode("utf-8", "replace")

    def __str__(self) -> str:
        return f"{self.id_type.name}:{self.text}"


@dataclass(frozen=True, slots=True)
class IkeSaRef:
    """An IKE SA instance: its two SPIs (RFC 7296 §2.6). For NULL-auth peers this *is* the identity."""

    initiator_spi: int
    responder_spi: int

    def __str__(self) -> str:
        return f"ike:{self.initiator_spi:016x}/{self.responder_spi:016x}"


def spki_fingerprint(spki_der: bytes) -> str:
    """SHA-256 of an SPKI, hex (RFC 5660 §2.6: refer to large peer IDs by a strong hash)."""
    return hashlib.sha256(spki_der).hexdigest()


@dataclass(frozen=True, slots=True)
class CertificatePeer:
    """A peer authenticated by an X.509 certificate validated to ``trust_anchor`` (RFC 4301 §4.4.3).

    ``spki_der`` is the SubjectPublicKeyInfo of the end-entity certificate (the key that signed
    AUTH); it is what channel bindings use (RFC 5056 §2.1 prefers keys over names).
    """

    ike_id: IkeId
    certificate_der: bytes
    spki_der: bytes
    trust_anchor: str

    auth_method = AuthMethod.CERTIFICATE

    @property
    def public_key(self) -> bytes | None:
        return self.spki_der

    def __str__(self) -> str:
        return f"cert:{self.ike_id} (anchor {self.trust_anchor}, key {spki_fingerprint(self.spki_der)[:16]})"


@dataclass(frozen=True, slots=True)
class RawPublicKeyPeer:
    """A BTNS / raw-public-key peer: RFC 5386 PUBLICKEY, RFC 7670 CERT encoding 15 (SPKI DER).

    The authenticated identity is the key itself; ``ike_id`` is what it asserted (often ID_NULL).
    """

    spki_der: bytes
    ike_id: IkeId | None = None

    auth_method = AuthMethod.RAW_PUBLIC_KEY

    @property
    def public_key(self) -> bytes | None:
        return self.spki_der

    def __str__(self) -> str:
        return f"PUBLICKEY:{spki_fingerprint(self.spki_der)[:16]}"


@dataclass(frozen=True, slots=True)
class NullAuthPeer:
    """A NULL-authenticated peer (RFC 7619): it has no identity beyond its IKE SA instance.

    ``id_data`` is what the peer sent in its ID_NULL payload; RFC 7619 §2.2 requires it to be
    empty (the PAD rejects anything else). Two NullAuthPeer values are the same peer only if they
    name the same IKE SA: a new IKE SA is a new, unknown peer.
    """

    ike_sa: IkeSaRef
    id_data: bytes = b""

    auth_method = AuthMethod.NULL

    @property
    def public_key(self) -> bytes | None:
        return None

    def __str__(self) -> str:
        return f"null-auth:{self.ike_sa}"


@dataclass(frozen=True, slots=True)
class PskPeer:
    """A peer authenticated with a pre-shared key (RFC 4301 §4.4.3.2)."""

    ike_id: IkeId

    auth_method = AuthMethod.PSK

    @property
    def public_key(self) -> bytes | None:
        return None

    def __str__(self) -> str:
        return f"psk:{self.ike_id}"


PeerIdentity = CertificatePeer | RawPublicKeyPeer | NullAuthPeer | PskPeer


@dataclass(frozen=True, slots=True)
class LocalIdentity:
    """The identity this host asserts to peers (RFC 5660 §2 "local identity").

    ``spki_der`` is our public key if we authenticate with one (certificate or raw key), else None.
    """

    ike_id: IkeId
    auth_method: AuthMethod
    spki_der: bytes | None = None

    def __str__(self) -> str:
        return f"{self.auth_method.value}:{self.ike_id}"
