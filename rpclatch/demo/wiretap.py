"""A passive observer of the simulated wire: what was protected, what was readable, which
RPCSEC_GSS service the calls really used.

It works like tshark with the ESP keys loaded: every frame the hub recorded is decoded; ESP is
decrypted with the keys of the SAs the hosts installed (the sim registers them for the pcapng key
export); TCP byte streams are reassembled per direction; RPC records are cut out of them (RFC 5531
§11) and their credentials decoded (RFC 2203 §5 / RFC 5403 §3.2). The demo's verdicts are computed
from this view, never from what the code under test says about itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rpclatch.gss.wire import BindChanStatus, BindChanVerfArgs, BindChanVerfRes, GssCred, GssProc, Service
from rpclatch.netsim.esp import EspHeader, EspKeys, esp_open
from rpclatch.netsim.ip import PROTO_ESP, PROTO_TCP, IpPacket
from rpclatch.netsim.link import WireRecord
from rpclatch.netsim.tcp import Flags, TcpSegment
from rpclatch.rpc.messages import AuthFlavor, CallMessage, DeniedReply, decode_message
from rpclatch.rpc.record import RecordReassembler
from rpclatch.xdr import XdrError


@dataclass(frozen=True, slots=True)
class SeenCall:
    """One RPC call as decoded from the wire."""

    time: float
    sender: str
    flow: str
    protected: bool  # travelled inside ESP
    xid: int
    prog: int
    proc: int
    flavor: int
    gss_version: int | None = None
    gss_proc: GssProc | None = None
    service: Service | None = None
    bind_prefix: bytes | None = None  # BIND_CHANNEL: rbcva_chan_bind_prefix of the verifier

    @property
    def label(self) -> str:
        if self.flavor != AuthFlavor.RPCSEC_GSS:
            try:
                flavor = AuthFlavor(self.flavor).name
            except ValueError:
                flavor = str(self.flavor)
            return f"CALL proc {self.proc} ({flavor})"
        assert self.gss_proc is not None and self.service is not None
        if self.gss_proc is GssProc.RPCSEC_GSS_DATA:
            return f"CALL proc {self.proc} [{self.service.sec_name}]"
        return f"{self.gss_proc.name} v{self.gss_version}"


@dataclass(frozen=True, slots=True)
class SeenReply:
    """One RPC reply as decoded from the wire. ``stat`` names the outcome: the accept_stat of an
    accepted reply (``SUCCESS``, ``GARBAGE_ARGS``, ...), the auth_stat of an AUTH_ERROR denial
    (``AUTH_BADCRED``, ``RPCSEC_GSS_CREDPROBLEM``, ...) or ``RPC_MISMATCH``. ``signed``: the reply
    carries an RPCSEC_GSS verifier (a MIC made by whoever holds the context). ``bind_status``: for
    replies to BIND_CHANNEL calls, the rgss2_bind_chan_res status in the verifier (RFC 5403 §3.3)."""

    time: float
    sender: str
    flow: str
    protected: bool
    xid: int
    accepted: bool
    stat: str
    signed: bool
    bind_status: BindChanStatus | None = None
    bind_oids: tuple[bytes, ...] = ()


@dataclass
class _Stream:
    sender: str
    flow: str
    protected: bool
    isn: int
    segments: dict[int, tuple[float, bytes]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FrameView:
    """One recorded frame, decoded as far as the observer's keys allow."""

    record: WireRecord
    packet: IpPacket | None
    esp_spi: int | None
    inner: TcpSegment | None  # the TCP segment (after ESP decryption if keys were known)
    decrypted: bool

    @property
    def cleartext_payload(self) -> bytes:
        """TCP payload bytes that travelled unprotected."""
        if self.esp_spi is None and self.inner is not None:
            return self.inner.payload
        return b""


class WireView:
    """Decode a recorded wire once; answer questions about it."""

    def __init__(self, wire: Sequence[WireRecord], keys: Iterable[EspKeys], rpc_port: int = 2049) -> None:
        self.rpc_port = rpc_port
        self._keys = {k.spi: k for k in keys}
        self.frames: list[FrameView] = [self._decode(rec) for rec in wire]
        self.replies: list[SeenReply] = []
        self.calls: list[SeenCall] = self._calls()

    def _decode(self, rec: WireRecord) -> FrameView:
        packet = rec.packet()
        if packet is None:
            return FrameView(rec, None, None, None, False)
        if packet.proto == PROTO_TCP:
            try:
                seg = TcpSegment.decode(packet.payload, packet.src, packet.dst)
            except Exception:
                seg = None
            return FrameView(rec, packet, None, seg, False)
        if packet.proto == PROTO_ESP:
            try:
                spi = EspHeader.decode(packet.payload).spi
            except Exception:
                return FrameView(rec, packet, None, None, False)
            keys = self._keys.get(spi)
            if keys is None:
                return FrameView(rec, packet, spi, None, False)
            try:
                opened = esp_open(keys, packet.payload)
                if opened.next_header != PROTO_TCP:
                    return FrameView(rec, packet, spi, None, True)
                seg = TcpSegment.decode(opened.payload, packet.src, packet.dst)
            except Exception:
                return FrameView(rec, packet, spi, None, False)
            return FrameView(rec, packet, spi, seg, True)
        return FrameView(rec, packet, None, None, False)

    def _calls(self) -> list[SeenCall]:
        """Decode the calls (client -> server streams) and, into :attr:`replies`, the replies."""
        streams: dict[tuple[str, str, int], _Stream] = {}
        order: list[_Stream] = []
        for fv in self.frames:
            seg, pkt = fv.inner, fv.packet
            if seg is None or pkt is None or fv.record.dropped_by:
                continue
            if self.rpc_port not in (seg.dst_port, seg.src_port):
                continue
            flow = f"{pkt.src}:{seg.src_port} -> {pkt.dst}:{seg.dst_port}"
            key = (fv.record.sender, flow, 0)
            if seg.flags & Flags.SYN:
                st = _Stream(fv.record.sender, flow, fv.esp_spi is not None, seg.seq)
                streams[key] = st
                order.append(st)
                continue
            st_opt = streams.get(key)
            if st_opt is None or not seg.payload:
                continue
            st_opt.segments.setdefault(seg.seq, (fv.record.time, seg.payload))
            if fv.esp_spi is None:
                st_opt.protected = False
        calls: list[SeenCall] = []
        replies: list[tuple[float, _Stream, bytes]] = []
        for st in order:
            to_server = st.flow.endswith(f":{self.rpc_port}")
            for t, record in self._stream_records(st):
                if to_server:
                    call = self._decode_call(t, st, record)
                    if call is not None:
                        calls.append(call)
                else:
                    replies.append((t, st, record))
        calls.sort(key=lambda c: c.time)
        bind_xids = {c.xid for c in calls if c.gss_proc is GssProc.RPCSEC_GSS_BIND_CHANNEL}
        decoded = (self._decode_reply(t, st, record, bind_xids) for t, st, record in replies)
        self.replies = sorted((r for r in decoded if r is not None), key=lambda r: r.time)
        return calls

    def _stream_records(self, st: _Stream) -> list[tuple[float, bytes]]:
        expected = (st.isn + 1) & 0xFFFFFFFF
        reasm = RecordReassembler(64 * 1024 * 1024)
        out: list[tuple[float, bytes]] = []
        for seq in sorted(st.segments, key=lambda s: (s - expected) & 0xFFFFFFFF):
            t, payload = st.segments[seq]
            offset = (expected - seq) & 0xFFFFFFFF
            if offset >= len(payload) and offset < 0x80000000:
                continue  # retransmission of bytes already consumed
            if offset >= 0x80000000:
                break  # a gap: the rest is not contiguous
            data = payload[offset:]
            expected = (expected + len(data)) & 0xFFFFFFFF
            try:
                records = reasm.feed(data)
            except Exception:
                break
            out.extend((t, rec) for rec in records)
        return out

    @staticmethod
    def _decode_reply(t: float, st: _Stream, record: bytes, bind_xids: set[int]) -> SeenReply | None:
        try:
            msg = decode_message(record)
        except XdrError:
            return None
        if isinstance(msg, CallMessage):
            return None
        if isinstance(msg, DeniedReply):
            stat = msg.auth_stat.name if msg.auth_stat is not None else msg.stat.name
            return SeenReply(t, st.sender, st.flow, st.protected, msg.xid, False, stat, False)
        signed = msg.verf.flavor == AuthFlavor.RPCSEC_GSS and bool(msg.verf.body)
        status: BindChanStatus | None = None
        oids: tuple[bytes, ...] = ()
        if signed and msg.xid in bind_xids:
            try:
                res = BindChanVerfRes.decode(msg.verf.body).res
                status, oids = res.status, res.oid_list
            except XdrError:
                pass
        return SeenReply(
            t, st.sender, st.flow, st.protected, msg.xid, True, msg.stat.name, signed, status, oids
        )

    @staticmethod
    def _decode_call(t: float, st: _Stream, record: bytes) -> SeenCall | None:
        try:
            msg = decode_message(record)
        except XdrError:
            return None
        if not isinstance(msg, CallMessage):
            return None
        if msg.cred.flavor != AuthFlavor.RPCSEC_GSS:
            return SeenCall(t, st.sender, st.flow, st.protected, msg.xid, msg.prog, msg.proc, msg.cred.flavor)
        try:
            cred = GssCred.decode(msg.cred.body)
        except XdrError:
            return SeenCall(t, st.sender, st.flow, st.protected, msg.xid, msg.prog, msg.proc, msg.cred.flavor)
        prefix = None
        if cred.gss_proc is GssProc.RPCSEC_GSS_BIND_CHANNEL:
            try:
                prefix = BindChanVerfArgs.decode(msg.verf.body).chan_bind_prefix
            except XdrError:
                prefix = None
        return SeenCall(
            t,
            st.sender,
            st.flow,
            st.protected,
            msg.xid,
            msg.prog,
            msg.proc,
            msg.cred.flavor,
            cred.version,
            cred.gss_proc,
            cred.service,
            prefix,
        )

    # -- questions -------------------------------------------------------------------------------

    def data_services(self, sender: str | None = None, after: float | None = None) -> list[str]:
        """Distinct services of RPCSEC_GSS DATA calls, in order of first appearance; only calls
        sent by ``sender`` and at or after time ``after`` when given."""
        seen: list[str] = []
        for c in self.calls:
            if sender is not None and c.sender != sender:
                continue
            if after is not None and c.time < after:
                continue
            if c.gss_proc is GssProc.RPCSEC_GSS_DATA and c.service is not None:
                name = c.service.sec_name
                if name not in seen:
                    seen.append(name)
        return seen

    def bind_calls(self, sender: str | None = None) -> list[SeenCall]:
        return [
            c
            for c in self.calls
            if c.gss_proc is GssProc.RPCSEC_GSS_BIND_CHANNEL and (sender is None or c.sender == sender)
        ]

    def gss_calls(self, proc: GssProc, sender: str | None = None, after: float = -1.0) -> list[SeenCall]:
        """RPCSEC_GSS calls of control procedure ``proc`` (INIT, DESTROY, ...) sent by ``sender``
        (anyone if None) after time ``after``."""
        return [
            c
            for c in self.calls
            if c.gss_proc is proc and c.time > after and (sender is None or c.sender == sender)
        ]

    def replies_to(self, xid: int, sender: str | None = None) -> list[SeenReply]:
        """The replies with ``xid`` sent by ``sender`` (anyone if None), in wire order."""
        return [r for r in self.replies if r.xid == xid and (sender is None or r.sender == sender)]

    def cleartext_bytes(self, port: int | None = None, after: float = -1.0) -> int:
        """TCP payload bytes sent unprotected (to/from ``port`` if given) after time ``after``."""
        total = 0
        for fv in self.frames:
            if fv.record.time <= after or fv.inner is None or fv.esp_spi is not None:
                continue
            if port is not None and port not in (fv.inner.src_port, fv.inner.dst_port):
                continue
            total += len(fv.inner.payload)
        return total

    def delivered_to(self, receiver: str) -> list[FrameView]:
        return [fv for fv in self.frames if fv.record.receiver == receiver and not fv.record.dropped_by]

    def bytes_to(self, receiver: str) -> int:
        return sum(len(fv.record.frame) for fv in self.delivered_to(receiver))

    def readable_by(self, receiver: str, own_keys: Iterable[EspKeys] = ()) -> bytes:
        """Every TCP payload byte ``receiver`` got that it can read: cleartext, or ESP under SAs it
        holds keys for (its own SAs, e.g. a man in the middle)."""
        own = {k.spi: k for k in own_keys}
        chunks: list[bytes] = []
        for fv in self.delivered_to(receiver):
            if fv.esp_spi is None:
                chunks.append(fv.cleartext_payload)
                continue
            keys = own.get(fv.esp_spi)
            if keys is None or fv.packet is None:
                continue
            try:
                opened = esp_open(keys, fv.packet.payload)
                seg = TcpSegment.decode(opened.payload, fv.packet.src, fv.packet.dst)
            except Exception:
                continue
            chunks.append(seg.payload)
        return b"".join(chunks)
