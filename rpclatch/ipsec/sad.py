"""Security Association Database (RFC 4301 §4.4.2).

An SA here is one child-SA *pair* (inbound and outbound SPI) negotiated with one peer: the
latching rules (RFC 5660 §2.3) talk about child SAs with a peer, and both directions of a pair
always share peer, traffic selectors and parameters. ``sa_id`` is a local, unique handle: (remote
address, SPI) is not unique (RFC 4301 §4.4.2; two peers behind one NAT may pick the same SPI), so
nothing here ever looks an SA up by SPI alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from rpclatch.ipsec.model import (
    FiveTuple,
    IkeSaRef,
    IPAddress,
    LocalIdentity,
    PeerIdentity,
    ProtectionParams,
    Selector,
)


@dataclass(frozen=True, slots=True)
class Lifetime:
    """SA lifetime in seconds of virtual time (RFC 4301 §4.4.2.1); None = unlimited."""

    soft_seconds: float | None = None
    hard_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class SecurityAssociation:
    """One child SA pair (RFC 4301 §4.4.2.1).

    - ``sa_id``: local unique handle (assign with :meth:`SecurityAssociationDatabase.next_sa_id`).
    - ``spi_in`` / ``spi_out``: inbound SPI (chosen by us) and outbound SPI (chosen by the peer).
    - ``local_addr`` / ``remote_addr``: the outer (IKE / tunnel) addresses.
    - ``traffic_selectors``: local-oriented selectors; the SA may carry a flow iff one matches.
    - ``peer``: the authenticated and PAD-authorized peer identity.
    - ``btns``: True when the peer was authorized through a BTNS PAD entry (RFC 5386 §2); such
      traffic matches only SPD entries with BTNS_OK.
    - ``reqid``: the Linux XFRM reqid that ties SAs to policies (see backend.py).
    """

    sa_id: int
    spi_in: int
    spi_out: int
    local_addr: IPAddress
    remote_addr: IPAddress
    traffic_selectors: tuple[Selector, ...]
    peer: PeerIdentity
    local: LocalIdentity
    params: ProtectionParams
    ike_sa: IkeSaRef
    reqid: int = 0
    btns: bool = False
    lifetime: Lifetime = field(default_factory=Lifetime)
    created_at: float = 0.0

    def __post_init__(self) -> None:
        if not self.traffic_selectors:
            raise ValueError("an SA needs at least one traffic selector")
        for spi in (self.spi_in, self.spi_out):
            if not 256 <= spi <= 0xFFFFFFFF:  # RFC 4303 §2.1: SPIs 1..255 are reserved
                raise ValueError(f"SPI {spi:#x} out of range")

    def carries(self, flow: FiveTuple) -> bool:
        """True if this SA's traffic selectors admit the flow (RFC 4301 §5.2 step 4)."""
        for sel in self.traffic_selectors:  # noqa: SIM110 - per-packet path, a loop beats any()
            if sel.matches(flow):
                return True
        return False

    @property
    def is_narrow(self) -> bool:
        """True if the SA carries exactly one 5-tuple (RFC 5660 §2.1 narrow SA)."""
        return len(self.traffic_selectors) == 1 and self.traffic_selectors[0].is_single_flow

    def narrowed(self, selectors: tuple[Selector, ...]) -> SecurityAssociation:
        return replace(self, traffic_selectors=selectors)

    def expired(self, now: float) -> bool:
        hard = self.lifetime.hard_seconds
        return hard is not None and now >= self.created_at + hard

    def __str__(self) -> str:
        return (
            f"SA#{self.sa_id}(spi {self.spi_in:#x}/{self.spi_out:#x}, peer {self.peer}, {self.params.suite})"
        )


@dataclass
class SecurityAssociationDatabase:
    """The SAD: SAs by id, with indexes by exact flow (narrow SAs), by peer and by IKE SA.

    Wide SAs (selectors covering more than one flow) live in a list scanned on lookup; narrow
    ones are found in O(1) by their 5-tuple, which is the common case with RFC 5660 §2.1 narrow SAs.
    """

    _by_id: dict[int, SecurityAssociation] = field(default_factory=dict)
    _narrow: dict[FiveTuple, list[int]] = field(default_factory=dict)
    _wide: list[int] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    #: bumped whenever an SA leaves the SAD (lets per-packet caches skip a lookup safely)
    removals: int = 0

    def next_sa_id(self) -> int:
        return next(self._ids)

    def add(self, sa: SecurityAssociation) -> None:
        if sa.sa_id in self._by_id:
            raise ValueError(f"SA id {sa.sa_id} already in the SAD")
        self._by_id[sa.sa_id] = sa
        flow = narrow_flow(sa)
        if flow is not None:
            self._narrow.setdefault(flow, []).append(sa.sa_id)
        else:
            self._wide.append(sa.sa_id)

    def remove(self, sa_id: int) -> SecurityAssociation | None:
        sa = self._by_id.pop(sa_id, None)
        if sa is None:
            return None
        self.removals += 1
        flow = narrow_flow(sa)
        if flow is not None:
            ids = self._narrow.get(flow, [])
            if sa_id in ids:
                ids.remove(sa_id)
            if not ids:
                self._narrow.pop(flow, None)
        elif sa_id in self._wide:
            self._wide.remove(sa_id)
        return sa

    def get(self, sa_id: int) -> SecurityAssociation | None:
        return self._by_id.get(sa_id)

    def holds(self, sa: SecurityAssociation) -> bool:
        """True if ``sa`` itself is in the SAD (not gone, not replaced by another SA with its id)."""
        return self._by_id.get(sa.sa_id) is sa

    def __contains__(self, sa_id: object) -> bool:
        return sa_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[SecurityAssociation]:
        return iter(list(self._by_id.values()))

    def carrying(self, flow: FiveTuple) -> list[SecurityAssociation]:
        """Every SA whose selectors admit ``flow``, narrow ones first, oldest first."""
        out = [self._by_id[i] for i in self._narrow.get(flow, ())]
        for i in self._wide:
            sa = self._by_id[i]
            if sa.carries(flow):
                out.append(sa)
        return out

    def with_peer(self, peer: PeerIdentity) -> list[SecurityAssociation]:
        return [sa for sa in self._by_id.values() if sa.peer == peer]

    def expired(self, now: float) -> list[SecurityAssociation]:
        return [sa for sa in self._by_id.values() if sa.expired(now)]

    def clear(self) -> None:
        self.removals += 1
        self._by_id.clear()
        self._narrow.clear()
        self._wide.clear()


def narrow_flow(sa: SecurityAssociation) -> FiveTuple | None:
    """The one 5-tuple a narrow SA carries (None for a wider SA)."""
    if not sa.is_narrow:
        return None
    sel = sa.traffic_selectors[0]
    assert sel.local is not None and sel.remote is not None and sel.proto is not None
    return FiveTuple(sel.local.first, sel.local_ports.low, sel.remote.first, sel.remote_ports.low, sel.proto)
