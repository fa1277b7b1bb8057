"""A simulated host: addresses on a hub, an IP layer with IPsec hooks, streams and UDP sockets.

The IP layer runs every outbound and inbound packet through the host's :class:`SecurityLayer`
(the IPsec engine adapter, :mod:`rpclatch.netsim.stack`), which decides BYPASS / PROTECT /
DISCARD, does ESP, and reports which SA protected an inbound packet. Without a security layer the
host speaks plain IP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from rpclatch.ipsec.model import FiveTuple, IpProto, ip
from rpclatch.netsim.clock import Scheduler
from rpclatch.netsim.errors import SimLocalError, SimWireError
from rpclatch.netsim.ip import PROTO_TCP, PROTO_UDP, IPAddress, IpPacket
from rpclatch.netsim.link import Hub, Interface
from rpclatch.netsim.stream import StreamConnection, StreamState
from rpclatch.netsim.tcp import Flags, TcpSegment
from rpclatch.netsim.udp import UdpDatagram

log = logging.getLogger(__name__)

EPHEMERAL_LOW = 32768
EPHEMERAL_HIGH = 60999


@dataclass(frozen=True, slots=True)
class Inbound:
    """An inbound transport payload after the security layer accepted it.

    ``tag`` is the security layer's description of how the packet was protected (None = cleartext);
    streams and sockets hand it to the latch checks (RFC 5660 §2.4 inbound packet tag).
    """

    packet: IpPacket
    proto: int
    payload: bytes
    tag: Any = None


class SecurityLayer(Protocol):
    """What the IP layer calls for IPsec (implemented by :class:`rpclatch.netsim.stack.IpsecStack`)."""

    def output(self, host: Host, flow: FiveTuple, transport: bytes, owner: Any) -> None:
        """Send one transport payload for ``flow`` (encapsulating or dropping as policy says)."""

    def input(self, host: Host, packet: IpPacket) -> Inbound | None:
        """Decapsulate/check one inbound packet; None = drop."""

    def stream_connect(self, host: Host, conn: StreamConnection, options: dict[str, Any]) -> None:
        """Active open: create the connection latch (or not), then start ``conn.open_active()``."""

    def stream_accept(
        self, host: Host, listener: Listener, conn: StreamConnection, syn: TcpSegment, tag: Any
    ) -> bool:
        """A SYN reached ``listener``: latch the new 5-tuple; False = refuse the connection."""

    def stream_accepts(self, host: Host, conn: StreamConnection, seg: TcpSegment, tag: Any) -> bool:
        """Latch check of one inbound segment of an existing connection (approach 1 TCB check)."""

    def stream_closed(self, host: Host, conn: StreamConnection) -> None:
        """TCP reached CLOSED: release the latch (RFC 5660 §5.1)."""

    def udp_connect(self, host: Host, sock: UdpSocket, flow: FiveTuple, options: dict[str, Any]) -> None:
        """Connected UDP ``connect()``: latch the 5-tuple (approach 2, RFC 5660 §5.1) or not."""

    def udp_closed(self, host: Host, sock: UdpSocket, flow: FiveTuple) -> None:
        """A connected UDP socket closed / disconnected: release its latch."""

    def listener_opened(self, host: Host, listener: Listener) -> None:
        """``listen()``: CREATE_LISTENER_LATCH (RFC 5660 §5.1)."""

    def listener_closed(self, host: Host, listener: Listener) -> None:
        """Listener torn down: RELEASE_LATCH of the listener latch."""


class PlainIp:
    """No IPsec at all: every packet BYPASSes."""

    def output(self, host: Host, flow: FiveTuple, transport: bytes, owner: Any) -> None:
        host.send_packet(IpPacket(flow.local_addr, flow.remote_addr, flow.proto, transport))

    def input(self, host: Host, packet: IpPacket) -> Inbound | None:
        return Inbound(packet, packet.proto, packet.payload, None)

    def stream_connect(self, host: Host, conn: StreamConnection, options: dict[str, Any]) -> None:
        conn.open_active()

    def stream_accept(
        self, host: Host, listener: Listener, conn: StreamConnection, syn: TcpSegment, tag: Any
    ) -> bool:
        return True

    def stream_accepts(self, host: Host, conn: StreamConnection, seg: TcpSegment, tag: Any) -> bool:
        return True

    def stream_closed(self, host: Host, conn: StreamConnection) -> None:
        return None

    def udp_connect(self, host: Host, sock: UdpSocket, flow: FiveTuple, options: dict[str, Any]) -> None:
        return None

    def udp_closed(self, host: Host, sock: UdpSocket, flow: FiveTuple) -> None:
        return None

    def listener_opened(self, host: Host, listener: Listener) -> None:
        return None

    def listener_closed(self, host: Host, listener: Listener) -> None:
        return None


@dataclass
class Listener:
    """A passive open on (address, port); ``accepted`` lists the connections it produced."""

    host: Host
    local_addr: IPAddress
    port: int
    on_accept: Callable[[StreamConnection], None] | None = None
    accepted: list[StreamConnection] = field(default_factory=list)
    alerts: list[Any] = field(default_factory=list)  # latch ALERTs delivered to the listener holder
    options: dict[str, Any] = field(default_factory=dict)
    latch: Any = None
    closed: bool = False

    def close(self) -> None:
        self.host.close_listener(self)


@dataclass
class UdpSocket:
    host: Host
    local_addr: IPAddress
    port: int
    received: list[tuple[IPAddress, int, bytes, Any]] = field(default_factory=list)
    on_datagram: Callable[[IPAddress, int, bytes, Any], None] | None = None
    #: connected UDP: the only peer this socket sends to and accepts datagrams from
    flow: FiveTuple | None = None
    #: the security layer's view of the socket's latch (set by ``udp_connect``), like a TCB's
    latch_info: Any = None
    #: datagrams dropped because they did not come from the connected peer
    not_from_peer: int = 0

    def connect(self, addr: str | IPAddress, port: int, **options: Any) -> None:
        """Connected UDP (``connect()`` on a datagram socket): fix the 5-tuple. With IPsec in
        approach 2 this creates the connection latch (RFC 5660 §5.1; approach 2 latches
        connected UDP only, docs/design.md)."""
        if self.flow is not None:
            raise SimLocalError(f"{self.host.name}: UDP socket already connected to {self.flow}")
        self.flow = FiveTuple(self.local_addr, self.port, ip(addr), port, IpProto.UDP)
        self.host.security.udp_connect(self.host, self, self.flow, options)

    def send(self, data: bytes) -> None:
        """Send to the connected peer."""
        if self.flow is None:
            raise SimLocalError(f"{self.host.name}: UDP socket is not connected")
        self.sendto(data, self.flow.remote_addr, self.flow.remote_port)

    def sendto(self, data: bytes, addr: str | IPAddress, port: int) -> None:
        flow = FiveTuple(self.local_addr, self.port, ip(addr), port, IpProto.UDP)
        if self.flow is not None and flow != self.flow:
            raise SimLocalError(
                f"{self.host.name}: connected UDP socket sends to {self.flow.remote_addr}:"
                f"{self.flow.remote_port} only"
            )
        self.host.security.output(
            self.host,
            flow,
            UdpDatagram(self.port, port, data).encode(flow.local_addr, flow.remote_addr),
            self,
        )

    def close(self) -> None:
        self.host.udp_sockets.pop((self.local_addr, self.port), None)
        if self.flow is not None:
            self.host.security.udp_closed(self.host, self, self.flow)


class Host:
    """One simulated node on ``hub``, run by ``scheduler``. Build it with
    :meth:`rpclatch.netsim.network.SimNetwork.add_host`, which passes the network's clock, segment and RPC
    connection-id counter (``next_conn_id``). ``security`` is the IP layer's IPsec hook
    (:class:`SecurityLayer`; plain IP until :meth:`SimNetwork.enable_ipsec
    <rpclatch.netsim.network.SimNetwork.enable_ipsec>` installs an IPsec stack)."""

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
        self.name = name
        self.scheduler = scheduler
        self.hub = hub
        self.next_conn_id = next_conn_id
        self.addresses = list(addresses)
        self.iface = Interface(name, self._receive)
        self.security: SecurityLayer = PlainIp()
        self.msl = msl
        self.listeners: dict[tuple[IPAddress, int], Listener] = {}
        self.connections: dict[FiveTuple, StreamConnection] = {}
        self.udp_sockets: dict[tuple[IPAddress, int], UdpSocket] = {}
        self.log: list[str] = []
        self.rst_on_unknown = True
        self._ident = 0
        hub.attach(self.iface)
        for addr in self.addresses:
            hub.claim(addr, self.iface)

    def __repr__(self) -> str:
        return f"<Host {self.name} {[str(a) for a in self.addresses]}>"

    @property
    def address(self) -> IPAddress:
        """The host's first (primary) address."""
        if not self.addresses:
            raise SimLocalError(f"host {self.name} has no address")
        return self.addresses[0]

    def note(self, text: str) -> None:
        line = f"{self.scheduler.now:10.6f} {self.name}: {text}"
        self.log.append(line)
        log.debug(line)

    # -- addresses -------------------------------------------------------------------------------
    def claim_address(self, addr: str | IPAddress) -> None:
        """Add an address and announce it on the segment (gratuitous ARP: last claim wins)."""
        a = ip(addr)
        if a not in self.addresses:
            self.addresses.append(a)
        self.hub.claim(a, self.iface)
        self.note(f"claims address {a}")

    def release_address(self, addr: str | IPAddress) -> None:
        a = ip(addr)
        if a in self.addresses:
            self.addresses.remove(a)
        self.hub.release(a, self.iface)

    # -- IP ----------------------------------------------------------------------------------------
    def send_packet(self, packet: IpPacket, note: str = "") -> None:
        """Put one IP packet on the wire as it is (the security layer has already run)."""
        self._ident = (self._ident + 1) & 0xFFFF
        if packet.version == 4 and packet.ident == 0:
            packet = IpPacket(packet.src, packet.dst, packet.proto, packet.payload, packet.ttl, self._ident)
        assert self.iface.hub is not None
        self.iface.hub.transmit(self.iface, packet.encode(), note)

    def _receive(self, frame: bytes) -> None:
        try:
            packet = IpPacket.decode(frame)
        except SimWireError as exc:
            self.note(f"drop undecodable frame: {exc}")
            return
        if packet.dst not in self.addresses:
            self.note(f"drop packet for {packet.dst}: not my address")
            return
        inbound = self.security.input(self, packet)
        if inbound is None:
            return
        try:
            if inbound.proto == PROTO_TCP:
                seg = TcpSegment.decode(inbound.payload, packet.src, packet.dst)
                self._tcp_input(packet, seg, inbound.tag)
            elif inbound.proto == PROTO_UDP:
                dgram = UdpDatagram.decode(inbound.payload, packet.src, packet.dst)
                self._udp_input(packet, dgram, inbound.tag)
            else:
                self.note(f"drop protocol {inbound.proto}")
        except SimWireError as exc:
            self.note(f"drop bad transport payload from {packet.src}: {exc}")

    # -- TCP -------------------------------------------------------------------------------------
    def _tcp_input(self, packet: IpPacket, seg: TcpSegment, tag: Any) -> None:
        flow = FiveTuple(packet.dst, seg.dst_port, packet.src, seg.src_port, PROTO_TCP)
        conn = self.connections.get(flow)
        if conn is not None:
            if self.security.stream_accepts(self, conn, seg, tag):
                conn.segment_arrived(seg)
            return
        listener = self.listeners.get((packet.dst, seg.dst_port)) or self.listeners.get(
            (self._any(packet.dst), seg.dst_port)
        )
        if listener is not None and seg.flags & Flags.SYN and not seg.flags & (Flags.ACK | Flags.RST):
            self._accept(listener, flow, seg, tag)
            return
        if seg.flags & Flags.RST:
            return
        if self.rst_on_unknown:
            # RFC 9293 §3.10.7.1: CLOSED state answers with RST (through the SPD like any packet)
            if seg.flags & Flags.ACK:
                rst = TcpSegment(seg.dst_port, seg.src_port, seg.ack, 0, Flags.RST)
            else:
                rst = TcpSegment(
                    seg.dst_port, seg.src_port, 0, (seg.seq + seg.seg_len) & 0xFFFFFFFF, Flags.RST | Flags.ACK
                )
            self.note(f"RST for unknown flow {flow}")
            self.security.output(self, flow, rst.encode(flow.local_addr, flow.remote_addr), None)

    @staticmethod
    def _any(addr: IPAddress) -> IPAddress:
        return ip("0.0.0.0") if addr.version == 4 else ip("::")

    def _accept(self, listener: Listener, flow: FiveTuple, syn: TcpSegment, tag: Any) -> None:
        conn = StreamConnection(self, flow, self.scheduler.rng.getrandbits(32), self.msl)
        if not self.security.stream_accept(self, listener, conn, syn, tag):
            # refused (RFC 9293 §3.10.7.2 style RST; the SPD decides whether it may leave)
            rst = TcpSegment(syn.dst_port, syn.src_port, 0, (syn.seq + 1) & 0xFFFFFFFF, Flags.RST | Flags.ACK)
            self.security.output(self, flow, rst.encode(flow.local_addr, flow.remote_addr), None)
            return
        self.connections[flow] = conn
        listener.accepted.append(conn)
        self.note(f"accept {flow}")
        conn.open_passive(syn)
        if listener.on_accept is not None:
            listener.on_accept(conn)

    def listen(
        self,
        port: int,
        addr: str | IPAddress | None = None,
        on_accept: Callable[[StreamConnection], None] | None = None,
        **options: Any,
    ) -> Listener:
        """Passive open on ``addr`` (default: the host's first address) and ``port``.

        ``options`` go to the latching layer (e.g. ``protect=True``)."""
        local = ip(addr) if addr is not None else self.address
        if (local, port) in self.listeners:
            raise SimLocalError(f"{self.name}: already listening on {local}:{port}")
        listener = Listener(self, local, port, on_accept, options=dict(options))
        self.security.listener_opened(self, listener)
        self.listeners[(local, port)] = listener
        return listener

    def close_listener(self, listener: Listener) -> None:
        if self.listeners.get((listener.local_addr, listener.port)) is listener:
            del self.listeners[(listener.local_addr, listener.port)]
            listener.closed = True
            self.security.listener_closed(self, listener)

    def ephemeral_port(self, local: IPAddress, remote: IPAddress, rport: int, proto: int = PROTO_TCP) -> int:
        for _ in range(1000):
            port = self.scheduler.rng.randint(EPHEMERAL_LOW, EPHEMERAL_HIGH)
            if FiveTuple(local, port, remote, rport, proto) not in self.connections:
                return port
        raise SimLocalError("no free ephemeral port")

    def connect(
        self,
        remote: str | IPAddress,
        port: int,
        local_port: int | None = None,
        local_addr: str | IPAddress | None = None,
        **options: Any,
    ) -> StreamConnection:
        """Active open. ``options`` go to the latching layer (e.g. ``protect=True``).

        Returns the connection at once; watch ``conn.events`` / ``conn.state`` (the SYN may wait
        for the key manager, RFC 5660 §2: no packet leaves before the latch exists)."""
        raddr = ip(remote)
        laddr = (
            ip(local_addr)
            if local_addr is not None
            else next(a for a in self.addresses if a.version == raddr.version)
        )
        lport = local_port if local_port is not None else self.ephemeral_port(laddr, raddr, port)
        flow = FiveTuple(laddr, lport, raddr, port, PROTO_TCP)
        existing = self.connections.get(flow)
        if existing is not None and existing.state != StreamState.CLOSED:
            raise SimLocalError(f"{self.name}: 5-tuple {flow} in use ({existing.state.value})")
        conn = StreamConnection(self, flow, self.scheduler.rng.getrandbits(32), self.msl)
        self.connections[flow] = conn
        self.note(f"connect {flow}")
        self.security.stream_connect(self, conn, options)
        return conn

    def stream_output(self, conn: StreamConnection, segment: TcpSegment) -> None:
        flow = conn.flow
        self.security.output(self, flow, segment.encode(flow.local_addr, flow.remote_addr), conn)

    def stream_closed(self, conn: StreamConnection) -> None:
        if self.connections.get(conn.flow) is conn:
            del self.connections[conn.flow]
        self.security.stream_closed(self, conn)

    # -- UDP ---------------------------------------------------------------------------------------
    def udp_bind(self, port: int, addr: str | IPAddress | None = None) -> UdpSocket:
        local = ip(addr) if addr is not None else self.address
        if (local, port) in self.udp_sockets:
            raise SimLocalError(f"{self.name}: UDP port {port} in use")
        sock = UdpSocket(self, local, port)
        self.udp_sockets[(local, port)] = sock
        return sock

    def _udp_input(self, packet: IpPacket, dgram: UdpDatagram, tag: Any) -> None:
        sock = self.udp_sockets.get((packet.dst, dgram.dst_port))
        if sock is None:
            return
        if sock.flow is not None and (packet.src, dgram.src_port) != (
            sock.flow.remote_addr,
            sock.flow.remote_port,
        ):
            sock.not_from_peer += 1
            return
        sock.received.append((packet.src, dgram.src_port, dgram.payload, tag))
        if sock.on_datagram is not None:
            sock.on_datagram(packet.src, dgram.src_port, dgram.payload, tag)
