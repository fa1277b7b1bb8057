"""The demo's testbeds: a client and an NFS-like server under BYPASS-OR-PROTECT on TCP 2049, on the
simulated network, with a real Kerberos realm, and optionally a BTNS man in the middle or a rogue
co-tenant.

Everything is built from the simulation's public parts (:class:`rpclatch.netsim.network.SimNetwork`,
``enable_ipsec``, :class:`~rpclatch.netsim.attacker.Attacker`); nothing here decides an outcome.
The man in the middle needs two segments: the client's (where it owns the server's address) and
the server's (where it owns the client's address); it terminates BTNS IPsec on both with its own
keys and relays the TCP byte streams, recording every byte it could read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from rpclatch.connect.client import ProtectedConnection
from rpclatch.connect.gss import RpcsecGssConnector
from rpclatch.connect.policy import ConnectPolicy
from rpclatch.connect.sim import SimClientWorld, SimServerEndpoint
from rpclatch.demo.model import EventKind, TraceEvent
from rpclatch.demo.wiretap import WireView
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm
from rpclatch.gss.server import GssServerAuth
from rpclatch.ipsec import examples
from rpclatch.ipsec.engine import Approach, EngineConfig
from rpclatch.ipsec.ike.errors import IkeDecodeError
from rpclatch.ipsec.ike.wire import ExchangeType, Header
from rpclatch.ipsec.spd import SpdAction
from rpclatch.netsim.attacker import Attacker
from rpclatch.netsim.esp import EspKeys
from rpclatch.netsim.host import Host
from rpclatch.netsim.ike import IkeMode
from rpclatch.netsim.ikev2 import IKE_PORT
from rpclatch.netsim.ip import PROTO_UDP
from rpclatch.netsim.link import Hub, WireRecord
from rpclatch.netsim.network import SimNetwork
from rpclatch.netsim.pcapng import CapturedPacket, write_capture_keys, write_pcapng
from rpclatch.netsim.stack import IpsecStack, stack_of
from rpclatch.netsim.stream import StreamConnection, StreamEvent, StreamEventKind
from rpclatch.rpc.messages import AuthStat
from rpclatch.rpc.record import encode_record
from rpclatch.rpc.server import RpcDispatcher
from rpclatch.rpc.testprog import RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, add_test_program

CLIENT_ADDR = "192.0.2.10"
SERVER_ADDR = "192.0.2.20"
ROGUE_ADDR = "192.0.2.66"
NFS_PORT = 2049
#: The demo server's RFC 5403 §9 (a) cap on the MIC-protected requests one context may make before
#: the client must make a new one (CTXPROBLEM). Every context in the demo makes fewer than 20
#: (INIT, BIND_CHANNEL, a handful of ECHO calls, DESTROY), so the cap never changes a scenario's
#: course; it is on to show the default a server should run with. ``rpc serve`` has its own default.
DEMO_MAX_REQUESTS_PER_CONTEXT = 1024
_LOG_LINE = re.compile(r"^\s*(\d+\.\d+) (\S+): (.*)$")


def _move_to_hub(net: SimNetwork, host: Host, hub: Hub) -> None:
    """Re-attach ``host`` (and its addresses) from the network's main segment to ``hub``."""
    net.hub.interfaces.pop(host.iface.name, None)
    for addr in host.addresses:
        net.hub.release(addr, host.iface)
    hub.attach(host.iface)
    for addr in host.addresses:
        hub.claim(addr, host.iface)


class RecordEditor(Protocol):
    """What a relay that edits RPC records asks, per complete record (RFC 5531 §11 record marking
    removed): ``from_client`` for the client's records, ``from_server`` for the server's. Each
    returns ``(onward, back)``: the records to pass on towards the other end (the original, an
    edited copy, several copies, or none) and the records to answer the sender with (forgeries)."""

    def from_client(self, record: bytes) -> tuple[list[bytes], list[bytes]]: ...

    def from_server(self, record: bytes) -> tuple[list[bytes], list[bytes]]: ...


Edit = Callable[[bytes], tuple[list[bytes], list[bytes]]]


class RecordSplitter:
    """Cuts a TCP byte stream into RPC records (RFC 5531 §11), for the relay's editor. The relay is
    the attacker's tool and sees only what two well-behaved ends send, but its buffer is bounded
    all the same: a record announcing more than ``limit`` bytes raises ValueError (what is buffered
    is then at most ``limit`` + 3 bytes of an unfinished fragment and its mark)."""

    def __init__(self, limit: int = 1 << 20) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._fragments = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= 4:
            mark = int.from_bytes(self._buf[:4], "big")
            size = mark & 0x7FFFFFFF
            if len(self._fragments) + size > self.limit:
                raise ValueError(f"record over {self.limit} bytes")
            if len(self._buf) < 4 + size:
                break
            self._fragments += self._buf[4 : 4 + size]
            del self._buf[: 4 + size]
            if mark & 0x80000000:
                out.append(bytes(self._fragments))
                self._fragments.clear()
        return out


class BtnsRelay:
    """The man in the middle's relay: terminates the client's latched connection on ``front`` (which
    owns the server's address on the client segment) and opens its own latched connection from
    ``back`` (which owns the client's address on the server segment), copying bytes both ways.

    With an ``editor`` it relays RPC records instead of bytes and lets the editor change, drop,
    multiply or answer each one (the relay of scenario 6, which edits the BIND_CHANNEL exchange)."""

    def __init__(
        self, front: Host, back: Host, server_addr: str, port: int, editor: RecordEditor | None = None
    ) -> None:
        self.front = front
        self.back = back
        self.server_addr = server_addr
        self.port = port
        self.editor = editor
        self.plaintext = bytearray()  # every byte the MITM read in the clear (after its own ESP)
        self.listener = front.listen(port, on_accept=self._accept)

    def _accept(self, inner: StreamConnection) -> None:
        outer = self.back.connect(
            self.server_addr, self.port, local_port=inner.flow.remote_port, protect=True
        )
        pending: list[bytes] = []
        editor = self.editor
        from_client, from_server = RecordSplitter(), RecordSplitter()

        def to_server(data: bytes) -> None:
            if outer.is_open:
                outer.send(data)
            else:
                pending.append(data)

        def to_client(data: bytes) -> None:
            if inner.is_open:
                inner.send(data)

        def edited(
            splitter: RecordSplitter,
            data: bytes,
            edit: Edit,
            onward: Callable[[bytes], None],
            back: Callable[[bytes], None],
        ) -> None:
            try:
                records = splitter.feed(data)
            except ValueError:  # not RPC the relay can follow: give up on the connection
                inner.abort()
                outer.abort()
                return
            for record in records:
                forward, answer = edit(record)
                for rec in forward:
                    onward(encode_record(rec))
                for rec in answer:
                    back(encode_record(rec))

        def inner_event(conn: StreamConnection, ev: StreamEvent) -> None:
            if ev.kind is StreamEventKind.DATA:
                data = bytes(conn.received)
                conn.received.clear()
                self.plaintext += data
                if editor is None:
                    to_server(data)
                else:
                    edited(from_client, data, editor.from_client, to_server, to_client)
            elif ev.kind in (StreamEventKind.RESET, StreamEventKind.EOF, StreamEventKind.CLOSED):
                outer.abort()

        def outer_event(conn: StreamConnection, ev: StreamEvent) -> None:
            if ev.kind is StreamEventKind.CONNECTED:
                for data in pending:
                    conn.send(data)
                pending.clear()
            elif ev.kind is StreamEventKind.DATA:
                data = bytes(conn.received)
                conn.received.clear()
                self.plaintext += data
                if editor is None:
                    to_client(data)
                else:
                    edited(from_server, data, editor.from_server, to_client, to_server)
            elif ev.kind in (StreamEventKind.RESET, StreamEventKind.EOF, StreamEventKind.CLOSED):
                inner.abort()

        inner.on_event = inner_event
        outer.on_event = outer_event


@dataclass
class DemoTestbed:
    """One scenario's testbed: the hosts on the simulated network (``net``), the realm, the RPC
    server, the client's connect-policy world (``client_world``), the connections made, and what
    they left on the wire. ``attackers`` names the hosts whose view counts as the attacker's."""

    net: SimNetwork
    realm: ThrowawayRealm
    client: Host
    server: Host
    endpoint: SimServerEndpoint
    client_world: SimClientWorld
    hubs: list[Hub]
    attackers: list[Host] = field(default_factory=list)
    relay: BtnsRelay | None = None
    policy_events: list[tuple[float, str, str]] = field(default_factory=list)
    marks: list[tuple[float, str, str]] = field(default_factory=list)
    connections: list[ProtectedConnection] = field(default_factory=list)

    @property
    def client_stack(self) -> IpsecStack:
        assert isinstance(self.client.security, IpsecStack)
        return self.client.security

    @property
    def server_stack(self) -> IpsecStack:
        assert isinstance(self.server.security, IpsecStack)
        return self.server.security

    def connection(self, policy: ConnectPolicy | None = None) -> ProtectedConnection:
        provider = GssapiProvider(ccache=self.realm.default_user.ccache)
        gss = RpcsecGssConnector(
            provider,
            self.realm.service_name,
            RPCLATCH_TEST_PROG,
            RPCLATCH_TEST_VERS,
            (policy or ConnectPolicy()).fallback,
        )
        pc = ProtectedConnection(
            self.client_world,
            gss,
            policy or ConnectPolicy(ike_timeout=2.0),
            observer=lambda kind, text: self.policy_events.append((self.net.now, kind, text)),
        )
        self.connections.append(pc)
        return pc

    def mark(self, lane: str, text: str) -> None:
        """Put a note in the trace (what the scenario script did, e.g. "admin: 2049 -> BYPASS")."""
        self.marks.append((self.net.now, lane, text))

    # -- observation -------------------------------------------------------------------------------
    def wire(self) -> list[WireRecord]:
        records = [r for hub in self.hubs for r in hub.wire]
        return sorted(records, key=lambda r: r.time)

    def esp_keys(self) -> list[EspKeys]:
        return [e.keys for e in self.net.esp_keys]

    def wire_view(self) -> WireView:
        return WireView(self.wire(), self.esp_keys(), NFS_PORT)

    def attacker_keys(self) -> list[EspKeys]:
        keys: list[EspKeys] = []
        for host in self.attackers:
            if isinstance(host.security, IpsecStack):
                for child in host.security.ike.children.values():
                    keys += [child.inbound, child.outbound]
        return keys

    def attacker_plaintext(self, view: WireView) -> bytes:
        """Everything the attacker could read: the MITM's relayed bytes, and every frame delivered
        to an attacker host that was cleartext or under an SA the attacker holds keys for."""
        data = bytearray(self.relay.plaintext if self.relay is not None else b"")
        keys = self.attacker_keys()
        for host in self.attackers:
            data += view.readable_by(host.name, keys)
        return bytes(data)

    def attacker_bytes(self, view: WireView) -> int:
        return sum(view.bytes_to(h.name) for h in self.attackers)

    def trace(self, view: WireView) -> list[TraceEvent]:
        events: list[TraceEvent] = []
        for fv in view.frames:
            rec = fv.record
            dst = rec.receiver or "(nobody)"
            pkt = fv.packet
            if (
                pkt is not None
                and pkt.proto == PROTO_UDP
                and len(pkt.payload) >= 4
                and int.from_bytes(pkt.payload[2:4], "big") == IKE_PORT
            ):
                kind, label = EventKind.IKE, _ike_label(rec)
            elif fv.esp_spi is not None:
                kind = EventKind.ESP
                label = "ESP " + (_seg_label(fv.inner.flags, bool(fv.inner.payload)) if fv.inner else "?")
            elif fv.inner is not None:
                kind = EventKind.CLEAR
                label = "CLEARTEXT " + _seg_label(fv.inner.flags, bool(fv.inner.payload))
            else:
                kind, label = EventKind.CLEAR, "packet"
            if rec.dropped_by:
                kind, label = EventKind.DROP, f"{label} dropped: {rec.dropped_by}"
            events.append(TraceEvent(rec.time, kind, rec.sender, dst, label, rec.note))
        for call in view.calls:
            events.append(
                TraceEvent(
                    call.time,
                    EventKind.RPC,
                    call.sender,
                    self._call_receiver(call.sender),
                    call.label,
                    call.flow,
                )
            )
        for host in [self.client, self.server, *self.attackers, *([self.relay.back] if self.relay else [])]:
            for line in host.log:
                m = _LOG_LINE.match(line)
                if m is None:
                    continue
                t, text = float(m.group(1)), m.group(3)
                if "ALERT" in text or "claims address" in text:
                    note = EventKind.STATE if "BROKEN" not in text else EventKind.WARNING
                    events.append(TraceEvent(t, note, host.name, None, _short(text), text))
                elif text.startswith("drop "):
                    events.append(TraceEvent(t, EventKind.DROP, host.name, None, _short(text), text))
        for t, pkind, text in self.policy_events:
            events.append(
                TraceEvent(
                    t,
                    EventKind.WARNING if pkind == "warning" else EventKind.POLICY,
                    self.client.name,
                    None,
                    _short(text),
                    text,
                )
            )
        # what the scenario script did comes first among events of the same instant: it caused them
        marks = [
            TraceEvent(
                t,
                EventKind.ATTACK if "attack" in text or "rogue" in text else EventKind.POLICY,
                lane,
                None,
                _short(text),
                text,
            )
            for t, lane, text in self.marks
        ]
        events = marks + events
        events.sort(key=lambda e: e.t)
        return events

    def _call_receiver(self, sender: str) -> str:
        """Where a call from ``sender`` went: the MITM's front end terminates the client's calls."""
        if self.relay is not None and sender == self.client.name:
            return self.relay.front.name
        return self.server.name

    def export(self, pcapng: Path, esp_sa: Path, ikev2: Path) -> None:
        """Write the capture (every segment, one interface each) and its key files: ``esp_sa`` (every
        ESP SA) and ``ikev2`` (the ``ikev2_decryption_table`` of every IKE SA any host keyed)."""
        packets: list[CapturedPacket] = []
        for index, hub in enumerate(self.hubs):
            for cp in hub.captured():
                packets.append(CapturedPacket(cp.time, index, cp.data, cp.comment))
        packets.sort(key=lambda p: p.time)
        write_pcapng(pcapng, packets, [h.name for h in self.hubs], application="rpclatch demo")
        daemons = [s.ike for h in self.net.hosts.values() if (s := stack_of(h)) is not None]
        write_capture_keys(esp_sa, ikev2, self.net.esp_keys, daemons)


def ike_message(record: WireRecord) -> tuple[int, bool] | None:
    """The exchange type (RFC 7296 §3.1) of the IKEv2 message ``record`` carries, and whether it is
    a response; None if it carries none (not a UDP datagram to port 500, or no IKE header)."""
    pkt = record.packet()
    if pkt is None or pkt.proto != PROTO_UDP or len(pkt.payload) < 8:
        return None
    if int.from_bytes(pkt.payload[2:4], "big") != IKE_PORT:
        return None
    try:
        header = Header.decode(pkt.payload[8:])
    except IkeDecodeError:
        return None
    return header.exchange, header.is_response


def _ike_label(record: WireRecord) -> str:
    """An IKEv2 message's trace label from its header: the exchange and whether it is the request
    or the response, e.g. "IKEv2 IKE_AUTH request"."""
    message = ike_message(record)
    if message is None:
        return "IKEv2 (undecodable)"
    exchange, response = message
    name = ExchangeType(exchange).name if exchange in set(ExchangeType) else f"exchange {exchange}"
    return f"IKEv2 {name} {'response' if response else 'request'}"


def _seg_label(flags: int, data: bool) -> str:
    names = [n for bit, n in ((0x02, "SYN"), (0x01, "FIN"), (0x04, "RST")) if flags & bit]
    if data:
        names.append("data")
    return "TCP " + ("/".join(names) if names else "ACK")


def _short(text: str, limit: int = 70) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_testbed(
    realm: ThrowawayRealm,
    *,
    seed: int = 1,
    server_ike: IkeMode = IkeMode.PRESENT,
    mitm: bool = False,
    rogue: bool = False,
    server_config: EngineConfig | None = None,
    client_config: EngineConfig | None = None,
    latency: float = 0.001,
    spd_action: SpdAction = SpdAction.BYPASS_OR_PROTECT,
    server_auth: str = "btns",
    server_gss_versions: tuple[int, ...] = (1, 2),
    approach: Approach = Approach.POLICY,
    editor: RecordEditor | None = None,
    max_requests_per_context: int | None = DEMO_MAX_REQUESTS_PER_CONTEXT,
) -> DemoTestbed:
    """A client and a server (both BTNS raw keys, ``spd_action`` on 2049: BYPASS-OR-PROTECT by
    default), plus attackers. ``server_auth``: how the server authenticates in IKE (``btns`` raw
    key or ``null``, RFC 7619). ``server_gss_versions``: RPCSEC_GSS versions the server speaks.
    ``approach``: where latches live (docs/design.md: 1 = in the TCB, 2 = in the LD/PAD/SPD).
    ``editor``: with ``mitm``, the relay edits RPC records through it (scenario 6).
    ``max_requests_per_context``: the server's RFC 5403 §9 (a) cap (None: no cap)."""
    net = SimNetwork(seed=seed, latency=latency)
    spd = examples.nfs_spd(spd_action)
    pad = examples.btns_pad()
    # a NULL-auth server (RFC 7619) is accepted by a NULL entry restricted to its own address; the
    # PAD admits one BTNS-style wildcard only (RFC 5386 §2), so the client's PAD has just that
    client_pad = examples.null_pad() if server_auth == "null" else pad
    hubs = [net.hub]
    net.hub.name = "client-segment" if mitm else "sim0"
    client = net.add_host("client", CLIENT_ADDR)
    net.enable_ipsec(client, spd=spd, pad=client_pad, config=client_config, approach=approach)
    server = net.add_host("server", SERVER_ADDR)
    net.enable_ipsec(
        server,
        spd=spd,
        pad=pad,
        ike=server_ike,
        config=server_config,
        credentials=net.credentials(server_auth),
        approach=approach,
    )
    dispatcher = RpcDispatcher()
    add_test_program(dispatcher)
    v1_only = tuple(server_gss_versions) == (1,)
    dispatcher.add_flavor(
        GssServerAuth(
            GssapiProvider(realm.service_name, keytab=realm.keytab),
            versions=server_gss_versions,
            max_requests_per_context=max_requests_per_context,
            # a v1-only server answers like Linux nfsd: AUTH_BADCRED, not RFC 5403 §4's AUTH_REJECTEDCRED
            unsupported_version_stat=AuthStat.AUTH_BADCRED if v1_only else AuthStat.AUTH_REJECTEDCRED,
        )
    )
    endpoint = SimServerEndpoint(server, NFS_PORT, dispatcher)
    attackers: list[Host] = []
    relay = None
    if mitm:
        server_hub = Hub(net.scheduler, name="server-segment", latency=latency)
        hubs.append(server_hub)
        _move_to_hub(net, server, server_hub)
        front = net.add_attacker("mitm", SERVER_ADDR)
        net.enable_ipsec(front, spd=spd, pad=pad, approach=approach)
        back = net.add_host("mitm-b", CLIENT_ADDR)
        _move_to_hub(net, back, server_hub)
        net.enable_ipsec(back, spd=spd, pad=pad, approach=approach)
        client.claim_address(CLIENT_ADDR)  # mitm-b's creation claimed it on this segment too
        relay = BtnsRelay(front, back, SERVER_ADDR, NFS_PORT, editor)
        attackers += [front, back]
    if rogue:
        r: Attacker = net.add_attacker("rogue", ROGUE_ADDR)
        net.enable_ipsec(r, spd=spd, pad=pad, approach=approach)
        attackers.append(r)
    client_world = SimClientWorld(net, client, SERVER_ADDR)
    return DemoTestbed(net, realm, client, server, endpoint, client_world, hubs, attackers, relay)
