"""The host's IPsec stack: :class:`~rpclatch.ipsec.engine.IPsecEngine` on every packet, ESP on
the wire, latches wired to the stream control blocks.

Packet path (RFC 4301 §5.1 / §5.2 with RFC 5660 latching):

* outbound: ``engine.outbound(flow, initiating=SYN, like=<ULP latch tag>)`` -> BYPASS (cleartext on
  the wire), PROTECT (ESP with the SA's keys), DISCARD (dropped, reason recorded) or NEED_SA
  (queued until the key manager installs SAs; RFC 5660 §2: nothing is sent before the channel
  exists).
* inbound: IKE datagrams (UDP 500) go to the IKE daemon (IKE bypass, RFC 4301 §5.2); ESP is looked up by
  SPI, ICV-checked and replay-checked; then ``engine.inbound(flow, sa, initiating=SYN)`` -> ACCEPT
  with the packet tag, or DROP (reason recorded).

Latching per approach (docs/design.md):

* approach 2 (``Approach.POLICY``, RFC 5660 §2.3 normative model): ``listen`` creates the
  LISTENER latch, ``connect`` the connection latch (the SYN waits while it is LARVAL), the engine
  judges every packet against the LD, and ALERTs drive the stream (BROKEN -> reset or wait,
  CLOSED -> act as reset).
* approach 1 (``Approach.ULP``, §2.4 informative model): the stream's TCB embeds a
  :class:`rpclatch.ipsec.ulp.UlpLatch` that records the tag of the first packet and checks every
  inbound tag; outbound packets pass ``like=`` the latched tag.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rpclatch.ipsec.channel_binding import LatchChannel, RpcRole
from rpclatch.ipsec.decisions import InboundDecision, OutboundDecision, OutboundVerdict, PacketTag
from rpclatch.ipsec.engine import Approach, FlowChoice, IPsecEngine, ProtectionOutcome
from rpclatch.ipsec.errors import ChannelBindingUnavailable, IPsecLocalError
from rpclatch.ipsec.latch import Alert, BrokenDisposition, LatchInfo, LatchRequest, LatchState, params_from_sa
from rpclatch.ipsec.model import FiveTuple, IpProto, PeerIdentity, ThreeTuple
from rpclatch.ipsec.sad import SecurityAssociation
from rpclatch.ipsec.spd import SpdAction
from rpclatch.ipsec.ulp import MismatchPolicy, UlpBreak, UlpBreakReason, UlpLatch, UlpLatchState
from rpclatch.netsim.clock import Timer
from rpclatch.netsim.errors import SimLocalError, SimWireError
from rpclatch.netsim.esp import EspHeader, esp_open, esp_seal
from rpclatch.netsim.host import Host, Inbound, Listener, UdpSocket
from rpclatch.netsim.ike import SimIkeDaemon
from rpclatch.netsim.ikev2 import IKE_PORT
from rpclatch.netsim.ip import PROTO_ESP, PROTO_TCP, PROTO_UDP, IpPacket
from rpclatch.netsim.stream import StreamConnection, StreamState
from rpclatch.netsim.tcp import Flags, TcpSegment

log = logging.getLogger(__name__)

MAX_QUEUED = 64


@dataclass(frozen=True, slots=True)
class PacketDrop:
    """A packet the stack refused (for tests and reports): direction, flow, reason text."""

    time: float
    direction: str
    flow: FiveTuple | None
    reason: str


@dataclass
class ConnLatch:
    """Latch bookkeeping the stack keeps per stream (``conn.latch_info``).

    ``handle``: the LD latch (approach 2); ``ulp``: the TCB-embedded latch (approach 1);
    ``channel``: the LatchChannel RPCSEC_GSS binds to (None if unlatched or if the peer offers no
    binding, then ``binding_unavailable`` says why)."""

    approach: Approach
    role: RpcRole
    handle: int | None = None
    requested: bool = False
    not_latched_reason: str | None = None
    alerts: list[Alert] = field(default_factory=list)
    ulp: UlpLatch | None = None
    ulp_breaks: list[UlpBreak] = field(default_factory=list)
    started: bool = False
    channel: LatchChannel | None = None
    binding_unavailable: str | None = None


def _tcp_flags(transport: bytes) -> int:
    return transport[13] if len(transport) >= 20 else 0


def _is_syn(transport: bytes) -> bool:
    flags = _tcp_flags(transport)
    return bool(flags & Flags.SYN) and not flags & Flags.ACK


class IpsecStack:
    """A host's :class:`~rpclatch.netsim.host.SecurityLayer` backed by an :class:`IPsecEngine`."""

    def __init__(self, host: Host, engine: IPsecEngine, ike: SimIkeDaemon) -> None:
        self.host = host
        self.engine = engine
        self.ike = ike
        self.drops: list[PacketDrop] = []
        self._queued: dict[FiveTuple, list[tuple[bytes, Any]]] = {}
        self._poll_timer: Timer | None = None
        self._poll_at: float | None = None
        self.on_drop: Callable[[PacketDrop], None] | None = None
        ike.on_installed = self._sa_installed
        ike.on_peer_dead = self._peer_dead

    @property
    def approach(self) -> Approach:
        return self.engine.approach

    @property
    def now(self) -> float:
        return self.host.scheduler.now

    # -- timers --------------------------------------------------------------------------------------
    def arm(self) -> None:
        """Schedule ``engine.poll`` at the engine's next deadline (TIME_WAIT holds, SA expiry)."""
        when = self.engine.next_deadline()
        if when is None:
            return
        if self._poll_timer is not None and self._poll_at is not None and self._poll_at <= when:
            return
        if self._poll_timer is not None:
            self._poll_timer.cancel()
        self._poll_at = when
        self._poll_timer = self.host.scheduler.call_at(when, self._poll)

    def _poll(self) -> None:
        self._poll_timer = None
        self._poll_at = None
        self.engine.poll(self.now)
        self.arm()

    def _drop(self, direction: str, flow: FiveTuple | None, reason: str) -> None:
        d = PacketDrop(self.now, direction, flow, reason)
        self.drops.append(d)
        self.host.note(f"drop {direction} {flow}: {reason}")
        if self.on_drop is not None:
            self.on_drop(d)

    # -- outbound ------------------------------------------------------------------------------------
    def output(self, host: Host, flow: FiveTuple, transport: bytes, owner: Any) -> None:
        self._output(flow, transport, owner)
        self.arm()

    def _decide(self, flow: FiveTuple, transport: bytes, owner: Any) -> OutboundDecision:
        initiating = flow.proto == PROTO_TCP and _is_syn(transport)
        ulp = self._ulp(owner)
        if ulp is not None:
            # approach 1: "protect this like so" once latched; first packet records the feedback tag
            was = ulp.state
            decision = ulp.outbound(self.now, initiating=initiating)
            if was is UlpLatchState.UNLATCHED and ulp.latched:
                assert isinstance(owner, StreamConnection)
                self._ulp_latched(owner)
            return decision
        return self.engine.outbound(flow, self.now, initiating=initiating)

    def _output(self, flow: FiveTuple, transport: bytes, owner: Any) -> None:
        queue = self._queued.get(flow)
        if queue:
            if len(queue) < MAX_QUEUED:
                queue.append((transport, owner))
            else:
                self._drop("out", flow, "queue full while waiting for SAs")
            return
        decision = self._decide(flow, transport, owner)
        verdict = decision.verdict
        if verdict is OutboundVerdict.BYPASS:
            self.host.send_packet(IpPacket(flow.local_addr, flow.remote_addr, flow.proto, transport))
        elif verdict is OutboundVerdict.PROTECT:
            assert decision.sa is not None
            if not self.send_esp(flow, decision.sa, transport):
                self._drop("out", flow, "no ESP keys for the chosen SA")
        elif verdict is OutboundVerdict.NEED_SA:
            self._queued.setdefault(flow, []).append((transport, owner))
        else:
            self._drop("out", flow, decision.reason.value if decision.reason else "discard")

    @staticmethod
    def _ulp(owner: Any) -> UlpLatch | None:
        if isinstance(owner, StreamConnection) and isinstance(owner.latch_info, ConnLatch):
            return owner.latch_info.ulp
        return None

    def send_esp(self, flow: FiveTuple, sa: SecurityAssociation, transport: bytes) -> bool:
        keys = self.ike.children.get(sa.sa_id)
        if keys is None:
            return False
        if keys.seq_out >= 0xFFFFFFFF:
            # RFC 4303 §3.3.3: the counter must not cycle; the SA needs rekeying
            self._drop("out", flow, f"ESP sequence numbers exhausted on SA#{sa.sa_id} (rekey needed)")
            return True
        keys.seq_out += 1
        payload = esp_seal(keys.outbound, keys.seq_out, flow.proto, transport)
        self.host.send_packet(IpPacket(flow.local_addr, flow.remote_addr, PROTO_ESP, payload))
        return True

    def _sa_installed(self) -> None:
        """SAs appeared: retry every queued packet (in order, per flow)."""
        for flow in list(self._queued):
            queue = self._queued.pop(flow, [])
            for i, (transport, owner) in enumerate(queue):
                self._output(flow, transport, owner)
                if flow in self._queued:  # still waiting: keep the rest behind it, in order
                    self._queued[flow].extend(queue[i + 1 :])
                    break
        self.arm()

    def _peer_dead(self, peer: PeerIdentity) -> None:
        """DPD says ``peer`` is dead (RFC 5660 §2: its latches are irremediably broken). Approach 2's
        LD already broke its latches; approach 1's latches live in the TCBs: the engine breaks
        those it watches (each TCB's break handler marks the channel broken and resets or waits)."""
        self.engine.break_ulp_latches_with(peer, UlpBreakReason.PEER_DEAD, f"DPD: {peer} is dead")

    def forget_queued(self, flow: FiveTuple) -> None:
        self._queued.pop(flow, None)

    # -- inbound -------------------------------------------------------------------------------------
    def input(self, host: Host, packet: IpPacket) -> Inbound | None:
        if (
            packet.proto == PROTO_UDP
            and len(packet.payload) >= 8
            and int.from_bytes(packet.payload[2:4], "big") == IKE_PORT
        ):
            src_port = int.from_bytes(packet.payload[0:2], "big")
            self.ike.datagram(packet.src, packet.dst, packet.payload[8:], src_port)
            self.arm()
            return None
        sa: SecurityAssociation | None = None
        proto, transport = packet.proto, packet.payload
        if packet.proto == PROTO_ESP:
            try:
                hdr = EspHeader.decode(packet.payload)
            except SimWireError as exc:
                self._drop("in", None, f"bad ESP: {exc}")
                return None
            sa_id = self.ike.by_spi_in.get(hdr.spi)
            keys = self.ike.children.get(sa_id) if sa_id is not None else None
            if keys is None or sa_id is None:
                self._drop("in", None, f"unknown SPI {hdr.spi:#x}")
                return None
            if not keys.replay.check(hdr.seq):
                self._drop("in", None, f"replayed ESP seq {hdr.seq} on SPI {hdr.spi:#x}")
                return None
            try:
                opened = esp_open(keys.inbound, packet.payload)
            except SimWireError as exc:
                self._drop("in", None, f"ESP: {exc}")
                return None
            keys.replay.update(opened.seq)
            sa = self.engine.sad.get(sa_id)
            if sa is None:
                self._drop("in", None, f"SA#{sa_id} no longer in the SAD")
                return None
            proto, transport = opened.next_header, opened.payload
        if proto not in (PROTO_TCP, PROTO_UDP) or len(transport) < 4:
            self._drop("in", None, f"unsupported inner protocol {proto}")
            return None
        sport = int.from_bytes(transport[0:2], "big")
        dport = int.from_bytes(transport[2:4], "big")
        try:
            flow = FiveTuple(packet.dst, dport, packet.src, sport, proto)
        except ValueError as exc:
            self._drop("in", None, str(exc))
            return None
        initiating = proto == PROTO_TCP and _is_syn(transport)
        decision: InboundDecision = self.engine.inbound(flow, sa, self.now, initiating=initiating)
        self.arm()
        if not decision.accepted:
            self._drop("in", flow, decision.reason.value if decision.reason else "drop")
            return None
        return Inbound(packet, proto, transport, decision.tag)

    # -- streams: latching ---------------------------------------------------------------------------
    def stream_connect(self, host: Host, conn: StreamConnection, options: dict[str, Any]) -> None:
        """RFC 5660 §5.1 connect(): latch first, SYN after.

        ``options``: ``protect`` (True: ask for protection, RFC 5660 §3.1 / BYPASS-OR-PROTECT;
        False: ask for BYPASS; None: whatever the SPD says), ``request`` (LatchRequest),
        ``disposition`` (BrokenDisposition), ``privileged`` (may bypass a PROTECT entry),
        ``mismatch`` (approach 1: MismatchPolicy)."""
        flow = conn.flow
        cl = ConnLatch(self.approach, RpcRole.CLIENT)
        conn.latch_info = cl
        request = self._request(options)
        protect = options.get("protect")
        entry = self.engine.spd.lookup(flow)
        try:
            if protect is False:
                self.engine.request_protection(
                    flow, FlowChoice.BYPASS, self.now, privileged=bool(options.get("privileged"))
                )
                cl.not_latched_reason = "application chose BYPASS"
                self._start(conn)
                return
            if protect is True or (entry is not None and entry.action is SpdAction.PROTECT):
                cl.requested = True
                self._connect_protected(conn, cl, request, options, explicit=protect is True)
                return
            if entry is not None and entry.action is SpdAction.BYPASS_OR_PROTECT:
                raise SimLocalError(
                    f"{flow} matches BYPASS-OR-PROTECT template {entry.name!r}: "
                    "pass protect=True or protect=False"
                )
        except IPsecLocalError as exc:
            self._fail(conn, f"not latched: {exc}")
            return
        cl.not_latched_reason = "the SPD bypasses the flow" if entry is not None else "no SPD entry"
        self._start(conn)

    def _request(self, options: dict[str, Any]) -> LatchRequest | None:
        req = options.get("request")
        disp = options.get("disposition")
        if req is None and disp is None:
            return None
        if req is None:
            req = LatchRequest()
        assert isinstance(req, LatchRequest)
        if disp is not None:
            req = LatchRequest(req.policy, req.protection, req.peer, req.local, disp)
        return req

    def _connect_protected(
        self,
        conn: StreamConnection,
        cl: ConnLatch,
        request: LatchRequest | None,
        options: dict[str, Any],
        explicit: bool,
    ) -> None:
        flow = conn.flow
        if self.approach is Approach.POLICY:
            on_alert = self._conn_alert_handler(conn)
            if explicit:
                out: ProtectionOutcome = self.engine.request_protection(
                    flow,
                    FlowChoice.PROTECT,
                    self.now,
                    request=request,
                    on_alert=on_alert,
                    on_outcome=lambda o: self._outcome(conn, o),
                )
                cl.handle = out.latch
                if out.ok:
                    self._start(conn)
                elif not out.pending:
                    self._fail(conn, f"not latched: {out.detail or out.acquire}")
            else:
                cl.handle = self.engine.connect(flow, request, on_alert=on_alert, now=self.now)
                latch = self.engine.latches.get(cl.handle)
                if latch is not None and latch.state is LatchState.ESTABLISHED:
                    self._start(conn)
            self.arm()
            return
        # approach 1: the TCB holds the latch; IPsec is asked to protect the flow first
        disposition = request.disposition if request is not None else BrokenDisposition.RESET
        mismatch = options.get("mismatch", MismatchPolicy.DROP)
        cl.ulp = UlpLatch(
            self.engine,
            flow,
            require_protection=True,
            on_mismatch=mismatch,
            on_break=self._ulp_break_handler(conn),
            disposition=disposition,
        )
        out = self.engine.request_protection(
            flow, FlowChoice.PROTECT, self.now, request=request, on_outcome=lambda o: self._outcome(conn, o)
        )
        if out.ok:
            self._start(conn)
        elif not out.pending:
            self._fail(conn, f"not latched: {out.detail or out.acquire}")
        self.arm()

    def _outcome(self, conn: StreamConnection, outcome: ProtectionOutcome) -> None:
        cl = conn.latch_info
        assert isinstance(cl, ConnLatch)
        if outcome.ok:
            if outcome.latch is not None:
                cl.handle = outcome.latch
            self._start(conn)
        else:
            self._fail(conn, f"not latched: IKE {outcome.acquire.value if outcome.acquire else 'failed'}")

    def _start(self, conn: StreamConnection) -> None:
        cl = conn.latch_info
        if isinstance(cl, ConnLatch):
            if cl.started:
                return
            cl.started = True
            if cl.handle is not None and self.approach is Approach.POLICY:
                self._make_channel(conn, cl)
        conn.open_active()

    def _fail(self, conn: StreamConnection, reason: str) -> None:
        cl = conn.latch_info
        if isinstance(cl, ConnLatch):
            cl.not_latched_reason = reason
        self.forget_queued(conn.flow)
        if conn.state is not StreamState.CLOSED or not conn.events:
            conn.fail(reason)

    def _conn_alert_handler(self, conn: StreamConnection) -> Callable[[Alert], None]:
        def on_alert(alert: Alert) -> None:
            cl = conn.latch_info
            if isinstance(cl, ConnLatch):
                cl.alerts.append(alert)
            old = alert.old_state.value if alert.old_state else "-"
            self.host.note(f"ALERT {alert.key}: {old} -> {alert.new_state.value} ({alert.reason.value})")
            new = alert.new_state
            if new is LatchState.ESTABLISHED:
                if alert.old_state in (LatchState.LARVAL, None):
                    if isinstance(cl, ConnLatch):
                        cl.handle = alert.handle
                        if not cl.started:
                            self._start(conn)
                elif alert.old_state is LatchState.BROKEN:
                    conn.latch_restored()
            elif new is LatchState.BROKEN:
                reset = alert.disposition is BrokenDisposition.RESET
                if reset:
                    self.forget_queued(conn.flow)
                conn.latch_broken(
                    reset=reset,
                    reason=alert.reason.value,
                    unreachable=alert.disposition is BrokenDisposition.ICMP_UNREACHABLE,
                )
            elif new is LatchState.CLOSED:
                if alert.old_state is LatchState.LARVAL:
                    self._fail(conn, f"not latched: {alert.reason.value}")
                elif conn.state is not StreamState.CLOSED:
                    self.forget_queued(conn.flow)
                    conn.latch_closed(alert.reason.value)

        return on_alert

    def _ulp_break_handler(self, conn: StreamConnection) -> Callable[[UlpBreak], None]:
        def on_break(brk: UlpBreak) -> None:
            cl = conn.latch_info
            if isinstance(cl, ConnLatch):
                cl.ulp_breaks.append(brk)
                if cl.channel is not None:
                    cl.channel.mark_broken()
            reset = brk.disposition is BrokenDisposition.RESET
            if reset:
                self.forget_queued(conn.flow)
            if brk.reason is UlpBreakReason.TAG_MISMATCH:
                why = f"inbound packet protected as {brk.offending}"
            else:
                why = brk.reason.value
            extra = f": {brk.detail}" if brk.detail else ""
            self.host.note(f"ALERT {conn.flow}: TCB latch -> BROKEN ({brk.reason.value}{extra})")
            conn.latch_broken(
                reset=reset, reason=why, unreachable=brk.disposition is BrokenDisposition.ICMP_UNREACHABLE
            )

        return on_break

    def stream_accept(
        self, host: Host, listener: Listener, conn: StreamConnection, syn: TcpSegment, tag: Any
    ) -> bool:
        """A SYN reached a listener. Approach 2: the engine already made the T2 latch (and alerted
        the listener's holder); the TCB takes it over. Approach 1: the TCB latches the SYN's tag."""
        flow = conn.flow
        cl = ConnLatch(self.approach, RpcRole.SERVER)
        conn.latch_info = cl
        if self.approach is Approach.POLICY:
            latch = self.engine.latches.latch_for(flow)
            if latch is not None:
                cl.handle = latch.handle
                self.engine.latches.set_alert_callback(latch.handle, self._conn_alert_handler(conn))
                if latch.state is not LatchState.ESTABLISHED:
                    return self._refuse(conn, cl, f"new latch is {latch.state.value}")
                self._make_channel(conn, cl)
            else:
                cl.not_latched_reason = "SYN arrived without a latch (cleartext or no listener latch)"
        elif isinstance(tag, PacketTag) and tag.protected:
            disposition = BrokenDisposition.RESET
            opt = listener.options.get("disposition")
            if isinstance(opt, BrokenDisposition):
                disposition = opt
            cl.ulp = UlpLatch(
                self.engine,
                flow,
                require_protection=True,
                on_mismatch=listener.options.get("mismatch", MismatchPolicy.DROP),
                on_break=self._ulp_break_handler(conn),
                disposition=disposition,
            )
            cl.ulp.check_inbound(tag)
            self._ulp_latched(conn)
        else:
            cl.not_latched_reason = "SYN arrived in the clear"
        if listener.options.get("require_latch") and not self.is_latched(conn):
            return self._refuse(conn, cl, "listener requires a latched connection")
        return True

    def _refuse(self, conn: StreamConnection, cl: ConnLatch, why: str) -> bool:
        """Reject an incoming connection and release what the peer's attempt created (RFC 5660
        §2.3: "when rejecting connections, release any latches created by the peer's attempt")."""
        self.host.note(f"refuse connection {conn.flow}: {why}")
        cl.not_latched_reason = why
        if cl.handle is not None and self.engine.latches.get(cl.handle) is not None:
            self.engine.latches.release_latch(cl.handle)
        if cl.ulp is not None:
            cl.ulp.close(self.now)
        else:
            self.engine.close_flow(conn.flow, self.now)
        self.arm()
        return False

    def stream_accepts(self, host: Host, conn: StreamConnection, seg: TcpSegment, tag: Any) -> bool:
        """Approach 1: the TCB checks every inbound tag against its latch (RFC 5660 §2.4)."""
        ulp = self._ulp(conn)
        if ulp is None:
            return True
        if not isinstance(tag, PacketTag):
            return False
        was = ulp.state
        verdict = ulp.check_inbound(tag)
        if was is UlpLatchState.UNLATCHED and ulp.latched:
            self._ulp_latched(conn)
        if not verdict.deliver:
            why = verdict.reason.value if verdict.reason else "mismatch"
            self._drop("in", conn.flow, f"ULP latch: {why}")
        return verdict.deliver

    def stream_closed(self, host: Host, conn: StreamConnection) -> None:
        """TCP CLOSED: release the latch (RFC 5660 §5.1); the engine holds per-flow state for its
        TIME_WAIT-like period."""
        ulp = self._ulp(conn)
        self.forget_queued(conn.flow)
        if ulp is not None:
            ulp.close(self.now)
        else:
            self.engine.close_flow(conn.flow, self.now)
        self.arm()

    def udp_connect(self, host: Host, sock: UdpSocket, flow: FiveTuple, options: dict[str, Any]) -> None:
        """Connected UDP: approach 2 creates the connection latch for the 5-tuple (RFC 5660 §5.1
        ``connect()``; approach 2 supports connected UDP only), ESTABLISHED
        once the first datagram's SAs exist; approach 1 has no TCB for UDP (datagram
        applications use pTokens, §2.4), so the socket stays unlatched. ALERTs are kept in the
        socket's :class:`ConnLatch` (``sock.latch_info``)."""
        cl = ConnLatch(self.approach, RpcRole.CLIENT)
        sock.latch_info = cl
        if self.approach is not Approach.POLICY:
            cl.not_latched_reason = "approach 1 latches no UDP sockets (pTokens instead)"
            return

        def on_alert(alert: Alert) -> None:
            cl.alerts.append(alert)
            if alert.handle is not None and alert.new_state is LatchState.ESTABLISHED:
                cl.handle = alert.handle
            old = alert.old_state.value if alert.old_state else "-"
            host.note(f"ALERT {alert.key}: {old} -> {alert.new_state.value} ({alert.reason.value})")

        try:
            cl.handle = self.engine.connect(flow, self._request(options), on_alert=on_alert, now=self.now)
        except IPsecLocalError as exc:
            cl.not_latched_reason = f"not latched: {exc}"
        self.arm()

    def udp_closed(self, host: Host, sock: UdpSocket, flow: FiveTuple) -> None:
        """Connected UDP socket closed: release the latch (held for the engine's hold period)."""
        self.forget_queued(flow)
        if self.approach is Approach.POLICY:
            self.engine.close_flow(flow, self.now)
        self.arm()

    def udp_latch_state(self, sock: UdpSocket) -> LatchState | None:
        """Like :meth:`latch_state` for a connected UDP socket."""
        cl = sock.latch_info
        if not isinstance(cl, ConnLatch) or cl.handle is None:
            return None
        latch = self.engine.latches.get(cl.handle)
        return LatchState.CLOSED if latch is None else latch.state

    def listener_opened(self, host: Host, listener: Listener) -> None:
        """listen(): CREATE_LISTENER_LATCH + 3-tuple template PAD entry (approach 2)."""
        if self.approach is not Approach.POLICY:
            return
        key = ThreeTuple(listener.local_addr, listener.port, IpProto.TCP)
        request = self._request(listener.options)

        def on_alert(alert: Alert) -> None:
            listener.alerts.append(alert)
            host.note(f"listener ALERT {alert.key}: {alert.new_state.value} ({alert.reason.value})")

        try:
            listener.latch = self.engine.listen(key, request, on_alert=on_alert, now=self.now)
        except IPsecLocalError as exc:
            raise SimLocalError(f"cannot listen on {key}: {exc}") from exc

    def listener_closed(self, host: Host, listener: Listener) -> None:
        if listener.latch is not None:
            self.engine.stop_listening(listener.latch)
            listener.latch = None

    # -- channels -------------------------------------------------------------------------------------
    def _make_channel(self, conn: StreamConnection, cl: ConnLatch) -> None:
        if cl.channel is not None or cl.handle is None:
            return
        try:
            cl.channel = LatchChannel.for_latch(self.engine.latches, cl.handle, cl.role)
        except ChannelBindingUnavailable as exc:
            cl.binding_unavailable = str(exc)
            return
        conn.channel = cl.channel

    def _ulp_latched(self, conn: StreamConnection) -> None:
        """Approach 1: the TCB just latched; build the channel from the protecting SA."""
        cl = conn.latch_info
        if not isinstance(cl, ConnLatch) or cl.ulp is None or cl.channel is not None:
            return
        tag = cl.ulp.tag
        if tag is None or tag.sa_id is None:
            return
        sa = self.engine.sad.get(tag.sa_id)
        if sa is None:
            return
        ulp = cl.ulp
        try:
            cl.channel = LatchChannel.for_params(
                params_from_sa(sa, conn.flow, None), cl.role, lambda: ulp.latched
            )
        except ChannelBindingUnavailable as exc:
            cl.binding_unavailable = str(exc)
            return
        conn.channel = cl.channel

    # -- inquiry -------------------------------------------------------------------------------------
    def is_latched(self, conn: StreamConnection) -> bool:
        cl = conn.latch_info
        if not isinstance(cl, ConnLatch):
            return False
        if cl.ulp is not None:
            return cl.ulp.latched and cl.ulp.protected
        return cl.handle is not None and self.engine.latches.get(cl.handle) is not None

    def latch_of(self, conn: StreamConnection) -> LatchInfo | None:
        """INQUIRE_LATCH for a connection (approach 2), or None if it has no live latch."""
        cl = conn.latch_info
        if not isinstance(cl, ConnLatch) or cl.handle is None or self.engine.latches.get(cl.handle) is None:
            return None
        return self.engine.latches.inquire_latch(cl.handle)

    def latch_state(self, conn: StreamConnection) -> LatchState | None:
        """The RFC 5660 §2.2 state of ``conn``'s latch (a released one is CLOSED), or None if the
        connection never had one.

        Approach 1 maps the TCB latch (§2.4): unlatched -> LARVAL, latched -> ESTABLISHED,
        broken -> BROKEN, closed -> CLOSED."""
        cl = conn.latch_info
        if not isinstance(cl, ConnLatch):
            return None
        if cl.ulp is not None:
            return _ULP_LATCH_STATES[cl.ulp.state]
        if cl.handle is None:
            return None
        latch = self.engine.latches.get(cl.handle)
        return LatchState.CLOSED if latch is None else latch.state


#: Approach 1's TCB latch states as RFC 5660 §2.2 latch states (:meth:`IpsecStack.latch_state`).
_ULP_LATCH_STATES: dict[UlpLatchState, LatchState] = {
    UlpLatchState.UNLATCHED: LatchState.LARVAL,
    UlpLatchState.LATCHED: LatchState.ESTABLISHED,
    UlpLatchState.BROKEN: LatchState.BROKEN,
    UlpLatchState.CLOSED: LatchState.CLOSED,
}


def stack_of(host: Host) -> IpsecStack | None:
    """``host``'s IPsec stack (its security layer), or None if it speaks plain IP."""
    layer = host.security
    return layer if isinstance(layer, IpsecStack) else None
