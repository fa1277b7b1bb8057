"""A shared simulated segment (a hub) with ARP-like address claims, in-transit filters and capture.

Every frame is a raw IP datagram. The hub keeps an address table (what ARP caches would hold on a
real LAN): the *last* interface that claimed an address receives the frames sent to it, which is
exactly what lets a co-tenant steal a peer's flows by claiming its address (RFC 5660 §1, the
"aggregated nodes" problem). Every transmitted frame is captured with the virtual time, so tests
assert on the simulated wire and the capture exports to pcapng.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rpclatch.netsim.clock import Scheduler
from rpclatch.netsim.errors import SimLocalError, SimWireError
from rpclatch.netsim.ip import IPAddress, IpPacket
from rpclatch.netsim.pcapng import CapturedPacket, EspSaExport, write_esp_sa_uat, write_pcapng


class Interface:
    """A host's attachment to a hub; ``receive`` is called with each delivered frame."""

    def __init__(self, name: str, receive: Callable[[bytes], None]) -> None:
        self.name = name
        self.receive = receive
        self.hub: Hub | None = None

    def send(self, frame: bytes) -> None:
        if self.hub is None:
            raise SimLocalError(f"interface {self.name} is not attached")
        self.hub.transmit(self, frame)


@dataclass(frozen=True, slots=True)
class WireRecord:
    """One frame as seen on the wire (plus simulation metadata that is not in the pcapng)."""

    time: float
    frame: bytes
    sender: str
    receiver: str | None  # interface the hub delivered to; None if nobody owns the address
    dropped_by: str | None = None
    note: str = ""

    def packet(self) -> IpPacket | None:
        try:
            return IpPacket.decode(self.frame)
        except SimWireError:
            return None


# A filter sees each frame in transit and returns a reason string to drop it, or None.
Filter = Callable[[IpPacket], "str | None"]


@dataclass
class Hub:
    """A broadcast segment: delivers each frame to the interface owning its destination address."""

    scheduler: Scheduler
    name: str = "sim0"
    latency: float = 0.001
    interfaces: dict[str, Interface] = field(default_factory=dict)
    address_owner: dict[IPAddress, Interface] = field(default_factory=dict)
    filters: list[tuple[str, Filter]] = field(default_factory=list)
    taps: list[Callable[[WireRecord], None]] = field(default_factory=list)
    wire: list[WireRecord] = field(default_factory=list)
    esp_keys: list[EspSaExport] = field(default_factory=list)
    key_holders: dict[tuple[IPAddress, int], set[str]] = field(default_factory=dict)
    claims: list[tuple[float, IPAddress, str]] = field(default_factory=list)

    def attach(self, iface: Interface) -> None:
        if iface.name in self.interfaces:
            raise SimLocalError(f"interface name {iface.name} already on {self.name}")
        self.interfaces[iface.name] = iface
        iface.hub = self

    def claim(self, address: IPAddress, iface: Interface) -> Interface | None:
        """Gratuitous-ARP-like claim: from now on frames for ``address`` go to ``iface``.

        The claim is recorded (``claims``) and exported as a gratuitous ARP reply (IPv4), so the
        capture shows who took which address when. Returns the previous owner (if any)."""
        previous = self.address_owner.get(address)
        self.address_owner[address] = iface
        self.claims.append((self.scheduler.now, address, iface.name))
        return previous

    def mac(self, iface_name: str | None) -> bytes:
        """A stable locally administered MAC per interface (broadcast for None)."""
        if iface_name is None or iface_name not in self.interfaces:
            return b"\xff" * 6
        index = list(self.interfaces).index(iface_name) + 1
        return bytes([0x02, 0x00, 0x5E, 0x00, index >> 8, index & 0xFF])

    def release(self, address: IPAddress, iface: Interface) -> None:
        if self.address_owner.get(address) is iface:
            del self.address_owner[address]

    def add_filter(self, name: str, flt: Filter) -> None:
        self.filters.append((name, flt))

    def remove_filter(self, name: str) -> None:
        self.filters = [(n, f) for n, f in self.filters if n != name]

    def transmit(self, sender: Interface, frame: bytes, note: str = "") -> None:
        now = self.scheduler.now
        try:
            packet: IpPacket | None = IpPacket.decode(frame)
        except SimWireError:
            packet = None
        if packet is None:
            rec = WireRecord(now, frame, sender.name, None, "undecodable", note)
            self._record(rec)
            return
        for fname, flt in self.filters:
            reason = flt(packet)
            if reason is not None:
                self._record(WireRecord(now, frame, sender.name, None, f"{fname}: {reason}", note))
                return
        owner = self.address_owner.get(packet.dst)
        rec = WireRecord(now, frame, sender.name, owner.name if owner else None, None, note)
        self._record(rec)
        if owner is not None and owner is not sender:
            self.scheduler.call_later(self.latency, owner.receive, frame)

    def _record(self, rec: WireRecord) -> None:
        self.wire.append(rec)
        for tap in self.taps:
            tap(rec)

    def register_esp_keys(self, export: EspSaExport, holder: str | None = None) -> None:
        """Remember SA keys for the tshark key export (every SA any host on the hub installs);
        ``holder`` names a host that can decrypt packets sent under these keys."""
        if export not in self.esp_keys:
            self.esp_keys.append(export)
        if holder is not None:
            self.key_holders.setdefault((export.dst, export.keys.spi), set()).add(holder)

    def captured(self) -> list[CapturedPacket]:
        """The capture as Ethernet frames (LINKTYPE_ETHERNET, the :func:`write_pcapng` default):
        every IP frame with the sender's and receiver's MACs (broadcast if nobody owned the
        destination or the frame was dropped in transit), plus one gratuitous ARP reply per IPv4
        address claim, in time order."""
        out: list[tuple[float, int, CapturedPacket]] = []
        for order, rec in enumerate(self.wire):
            comment = rec.note
            if rec.dropped_by:
                comment = (comment + "; " if comment else "") + f"dropped in transit ({rec.dropped_by})"
            ethertype = 0x86DD if rec.frame[:1] and rec.frame[0] >> 4 == 6 else 0x0800
            frame = self.mac(rec.receiver) + self.mac(rec.sender) + ethertype.to_bytes(2, "big") + rec.frame
            out.append((rec.time, 2 * order + 1, CapturedPacket(rec.time, 0, frame, comment)))
        for order, (t, addr, name) in enumerate(self.claims):
            if addr.version != 4:
                continue
            mac = self.mac(name)
            arp = bytes.fromhex("0001080006040002") + mac + addr.packed + b"\xff" * 6 + addr.packed
            frame = b"\xff" * 6 + mac + b"\x08\x06" + arp + b"\x00" * 18
            out.append((t, 2 * order, CapturedPacket(t, 0, frame, f"{name} claims {addr}")))
        out.sort(key=lambda item: (item[0], item[1]))
        return [cp for _, _, cp in out]

    def export(self, pcapng_path: Path | str, esp_sa_path: Path | str | None = None) -> None:
        """Write the capture as pcapng and, if asked, the ESP keys as an ``esp_sa`` UAT file."""
        write_pcapng(pcapng_path, self.captured(), [self.name])
        if esp_sa_path is not None:
            write_esp_sa_uat(esp_sa_path, self.esp_keys)
