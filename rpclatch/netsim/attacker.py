"""The attacker of the simulation: a host with extra powers on the shared segment.

It can inject arbitrary packets (forged source addresses included), drop frames in transit
(on-path, RFC 5660 §6.5), sniff everything on the hub, claim other hosts' addresses (the
aggregated-nodes / co-tenant attack of RFC 5660 §1 and §2.3.2) and, being a full host, run its own
key exchange and SAs with its own credentials.
"""

from __future__ import annotations

from collections.abc import Callable

from rpclatch.ipsec.model import FiveTuple, IpProto, ip
from rpclatch.netsim.clock import Scheduler
from rpclatch.netsim.host import Host
from rpclatch.netsim.ip import PROTO_TCP, PROTO_UDP, IPAddress, IpPacket
from rpclatch.netsim.link import Hub, WireRecord
from rpclatch.netsim.stack import IpsecStack, stack_of
from rpclatch.netsim.tcp import Flags, TcpSegment
from rpclatch.netsim.udp import UdpDatagram


class Attacker(Host):
    """Build with :meth:`rpclatch.netsim.network.SimNetwork.add_attacker`."""

    def __init__(
        self,
        name: str,
        addresses: list[IPAddress],
        *,
        scheduler: Scheduler,
        hub: Hub,
        next_conn_id: Callable[[], int],
        msl: float = 30.0,
    ) -> None:
        super().__init__(name, addresses, scheduler=scheduler, hub=hub, next_conn_id=next_conn_id, msl=msl)
        self.sniffed: list[WireRecord] = []
        self._sniffing = False
        self._filters: list[str] = []

    # -- observation -------------------------------------------------------------------------------
    def sniff(self) -> None:
        """See every frame on the segment from now on (``self.sniffed``)."""
        if not self._sniffing:
            self._sniffing = True
            self.hub.taps.append(self.sniffed.append)

    @property
    def ipsec(self) -> IpsecStack | None:
        """The attacker's own IPsec stack, if :meth:`SimNetwork.enable_ipsec
        <rpclatch.netsim.network.SimNetwork.enable_ipsec>` gave it one."""
        return stack_of(self)

    # -- injection -----------------------------------------------------------------------------------
    def inject(self, packet: IpPacket, note: str = "") -> None:
        """Put a packet on the wire exactly as given (any source address)."""
        self.send_packet(packet, note or f"injected by {self.name}")

    def inject_tcp(
        self,
        src: str | IPAddress,
        sport: int,
        dst: str | IPAddress,
        dport: int,
        *,
        seq: int,
        ack: int = 0,
        flags: Flags = Flags.ACK,
        payload: bytes = b"",
    ) -> None:
        """Forge a cleartext TCP segment (e.g. RFC 5660 §2 cleartext injection, attack A8 of
        docs/design.md)."""
        s, d = ip(src), ip(dst)
        seg = TcpSegment(sport, dport, seq, ack, flags, payload=payload)
        self.inject(IpPacket(s, d, PROTO_TCP, seg.encode(s, d)))

    def inject_udp(
        self, src: str | IPAddress, sport: int, dst: str | IPAddress, dport: int, payload: bytes
    ) -> None:
        s, d = ip(src), ip(dst)
        self.inject(IpPacket(s, d, PROTO_UDP, UdpDatagram(sport, dport, payload).encode(s, d)))

    def inject_protected(
        self,
        src: str | IPAddress,
        sport: int,
        dst: str | IPAddress,
        dport: int,
        *,
        seq: int,
        ack: int = 0,
        flags: Flags = Flags.ACK,
        payload: bytes = b"",
    ) -> bool:
        """Send a TCP segment under one of the attacker's *own* SAs with the victim, whatever that
        SA's traffic selectors say (a misbehaving peer). Returns False if it has no SA to ``dst``."""
        if self.ipsec is None:
            return False
        s, d = ip(src), ip(dst)
        for sa in self.ipsec.engine.sad:
            if sa.remote_addr == d:
                seg = TcpSegment(sport, dport, seq, ack, flags, payload=payload)
                flow = FiveTuple(s, sport, d, dport, IpProto.TCP)
                return self.ipsec.send_esp(flow, sa, seg.encode(s, d))
        return False

    # -- on-path -----------------------------------------------------------------------------------
    def drop(self, name: str, predicate: Callable[[IpPacket], bool], reason: str = "attacker drop") -> None:
        """Drop every frame in transit for which ``predicate`` holds (an on-path blackhole)."""
        full = f"{self.name}:{name}"
        self.hub.add_filter(full, lambda p: reason if predicate(p) else None)
        self._filters.append(full)

    def blackhole(self, a: str | IPAddress, b: str | IPAddress) -> None:
        """Drop all traffic between two addresses (both directions)."""
        x, y = ip(a), ip(b)
        self.drop(f"blackhole {x}<->{y}", lambda p: {p.src, p.dst} == {x, y}, "blackholed")

    def stop_dropping(self, name: str | None = None) -> None:
        for full in list(self._filters):
            if name is None or full == f"{self.name}:{name}":
                self.hub.remove_filter(full)
                self._filters.remove(full)
