"""Test harness: two in-process IKE endpoints (A initiates, B responds) joined by a lossy,
tamperable wire and a fake clock."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ed25519

from rpclatch.ipsec.ike.config import ChildRequest, Credentials, Endpoint, IkeConfig
from rpclatch.ipsec.ike.crypto import SigningKey, spki_of
from rpclatch.ipsec.ike.dispatcher import IkeDispatcher
from rpclatch.ipsec.ike.events import IkeEvent
from rpclatch.ipsec.ike.sa import IkeSa
from rpclatch.ipsec.model import (
    AddressRange,
    AuthMethod,
    FiveTuple,
    IpProto,
    PortRange,
    Selector,
    spki_fingerprint,
)
from rpclatch.ipsec.pad import (
    ChildSaAuthorization,
    NullIdPattern,
    PadEntry,
    PeerAuthorizationDatabase,
    PublicKeyPattern,
)

A_ADDR = ipaddress.IPv4Address("192.0.2.1")
B_ADDR = ipaddress.IPv4Address("192.0.2.2")
A: Endpoint = (A_ADDR, 500)
B: Endpoint = (B_ADDR, 500)
FLOW = FiveTuple.of(A_ADDR, 40000, B_ADDR, 2049, IpProto.TCP)
#: B protects TCP to its port 2049 (local-oriented, from B's side)
NFS_POLICY = (Selector(AddressRange.single(B_ADDR), None, IpProto.TCP, PortRange.single(2049)),)
#: A, as a responder, protects anything of its own
A_POLICY = (Selector(AddressRange.single(A_ADDR), None),)


def btns_pad() -> PeerAuthorizationDatabase:
    return PeerAuthorizationDatabase(
        [
            PadEntry(
                "btns",
                PublicKeyPattern(),
                AuthMethod.RAW_PUBLIC_KEY,
                ChildSaAuthorization(own_address_only=True),
            )
        ]
    )


def key_pad(spki: bytes) -> PeerAuthorizationDatabase:
    return PeerAuthorizationDatabase(
        [
            PadEntry(
                "known",
                PublicKeyPattern(spki_fingerprint(spki)),
                AuthMethod.RAW_PUBLIC_KEY,
                ChildSaAuthorization(own_address_only=True),
            )
        ]
    )


def null_pad() -> PeerAuthorizationDatabase:
    return PeerAuthorizationDatabase(
        [PadEntry("null", NullIdPattern(), AuthMethod.NULL, ChildSaAuthorization(own_address_only=True))]
    )


@dataclass
class Pair:
    """A (initiator side) and B (responder side) dispatchers, a clock, and the wire between them."""

    a: IkeDispatcher
    b: IkeDispatcher
    now: float = 1000.0
    #: called per datagram (src, data) -> data to deliver, or None to drop
    tamper: Callable[[Endpoint, bytes], bytes | None] | None = None
    events_a: list[IkeEvent] = field(default_factory=list)
    events_b: list[IkeEvent] = field(default_factory=list)
    wire: list[tuple[Endpoint, bytes]] = field(default_factory=list)

    def initiate(self, request: ChildRequest | None = None) -> IkeSa:
        return self.a.initiate(B, request or ChildRequest(Selector.for_flow(FLOW)), self.now)

    def pump(self, rounds: int = 20) -> None:
        """Deliver datagrams both ways until nothing moves."""
        for _ in range(rounds):
            moved = False
            for src, dst in ((self.a, self.b), (self.b, self.a)):
                for data, _to in src.datagrams_to_send(self.now):
                    moved = True
                    self.wire.append((src.local, data))
                    if self.tamper is not None:
                        out = self.tamper(src.local, data)
                        if out is None:
                            continue
                        data = out
                    dst.receive_datagram(data, src.local, self.now)
            self._drain()
            if not moved:
                return

    def _drain(self) -> None:
        while (e := self.a.next_event()) is not None:
            self.events_a.append(e[1])
        while (e := self.b.next_event()) is not None:
            self.events_b.append(e[1])

    def advance(self, seconds: float) -> None:
        """Move the clock, firing timers as they come due, delivering what they send."""
        end = self.now + seconds
        while True:
            times = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None and t <= end]
            if not times:
                break
            self.now = max(self.now, min(times))
            self.a.handle_timer(self.now)
            self.b.handle_timer(self.now)
            self.pump()
        self.now = end
        self._drain()

    def of(self, kind: type, side: str = "a") -> list[IkeEvent]:
        return [e for e in (self.events_a if side == "a" else self.events_b) if isinstance(e, kind)]


def make_config(
    key: SigningKey | None,
    pad: PeerAuthorizationDatabase,
    policy: tuple[Selector, ...],
    **kw: object,
) -> IkeConfig:
    cred = Credentials.raw_key(key) if key is not None else Credentials.null()
    return IkeConfig(cred, pad, policy, **kw)  # type: ignore[arg-type]


@dataclass
class Keys:
    a: ed25519.Ed25519PrivateKey
    b: ed25519.Ed25519PrivateKey

    @property
    def a_spki(self) -> bytes:
        return spki_of(self.a)

    @property
    def b_spki(self) -> bytes:
        return spki_of(self.b)
