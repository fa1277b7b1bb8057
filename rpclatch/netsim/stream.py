"""A minimal reliable byte stream ("TCP-like", RFC 9293 state names) over the simulated wire.

Deliberately small: in-order receive only (out-of-order segments are dropped and re-ACKed),
go-back-N retransmission from ``snd_una`` on a virtual-clock RTO with exponential backoff, a
fixed MSS, no congestion control, no window scaling. RST acceptance follows RFC 5961 §3.2 in
spirit: a RST is honoured only when its sequence number is exactly ``rcv_nxt``.

The control block talks to its host through :class:`StreamHost`; the host runs IPsec and the
latch on every segment (RFC 5660 §2: the TCB is the latch owner and receives its ALERTs).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from rpclatch.ipsec.model import FiveTuple
from rpclatch.netsim.clock import Scheduler, Timer
from rpclatch.netsim.errors import SimLocalError
from rpclatch.netsim.tcp import Flags, TcpSegment

MSS = 1200
RTO_INITIAL = 0.2
RTO_MAX = 6.4
MAX_RETRIES = 7
MSL = 30.0


class StreamState(enum.Enum):
    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN_SENT"
    SYN_RCVD = "SYN_RCVD"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSING = "CLOSING"
    TIME_WAIT = "TIME_WAIT"
    CLOSE_WAIT = "CLOSE_WAIT"
    LAST_ACK = "LAST_ACK"


SYNCHRONIZED = {
    StreamState.ESTABLISHED,
    StreamState.FIN_WAIT_1,
    StreamState.FIN_WAIT_2,
    StreamState.CLOSING,
    StreamState.TIME_WAIT,
    StreamState.CLOSE_WAIT,
    StreamState.LAST_ACK,
}


class StreamEventKind(enum.Enum):
    CONNECTED = "connected"
    DATA = "data"
    EOF = "eof"  # peer sent FIN
    CLOSED = "closed"  # orderly close finished (left TIME_WAIT / LAST_ACK)
    RESET = "reset"  # peer RST, or a latch break acting as reset (RFC 5660 §5.5 (b))
    TIMEOUT = "timeout"  # retransmissions exhausted
    REFUSED = "refused"  # RST in answer to our SYN
    LATCH = "latch"  # latch ALERT seen by the owner (state in ``detail``)
    FAILED = "failed"  # could not start (e.g. key manager refused and policy requires IPsec)
    SOFT_ERROR = "soft-error"  # ICMP-like unreachable from a BROKEN latch (RFC 5660 §5.5 (c)): not fatal


@dataclass(frozen=True, slots=True)
class StreamEvent:
    time: float
    kind: StreamEventKind
    detail: Any = None


class StreamHost(Protocol):
    """What a control block needs from its host."""

    scheduler: Scheduler

    def stream_output(self, conn: StreamConnection, segment: TcpSegment) -> None: ...

    def stream_closed(self, conn: StreamConnection) -> None: ...


def _seq_lt(a: int, b: int) -> bool:
    return ((a - b) & 0xFFFFFFFF) > 0x7FFFFFFF


def _seq_le(a: int, b: int) -> bool:
    return a == b or _seq_lt(a, b)


class StreamConnection:
    """One end of a simulated TCP connection (the TCB)."""

    def __init__(self, host: StreamHost, flow: FiveTuple, iss: int, msl: float = MSL) -> None:
        self.host = host
        self.flow = flow
        self.state = StreamState.CLOSED
        self.iss = iss & 0xFFFFFFFF
        self.snd_una = self.iss
        self.snd_nxt = self.iss
        self.irs = 0
        self.rcv_nxt = 0
        self.msl = msl
        self._send_buf = bytearray()  # bytes from snd_una onwards (unacked + unsent)
        self._fin_queued = False
        self._fin_sent = False
        self._rto = RTO_INITIAL
        self._retries = 0
        self._rtx_timer: Timer | None = None
        self._tw_timer: Timer | None = None
        self.received = bytearray()
        self.events: list[StreamEvent] = []
        self.on_event: Callable[[StreamConnection, StreamEvent], None] | None = None
        self.suspended = False  # latch BROKEN with disposition "wait": no output, drop input
        # RFC 5660 §5.5 (c) / RFC 1122 §4.2.3.9: the pending soft error (like SO_ERROR after an
        # ICMP destination unreachable); the connection stays open, cleared when the latch is back
        self.soft_error: str | None = None
        self.segments_dropped = 0
        self.latch_info: Any = None  # set by the host: the connection's latch view
        self.channel: Any = None  # the LatchChannel when latched (for ConnectionInfo.channel)

    # -- application API ---------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if (
            self.state
            not in (
                StreamState.ESTABLISHED,
                StreamState.CLOSE_WAIT,
                StreamState.SYN_SENT,
                StreamState.SYN_RCVD,
            )
            or self._fin_queued
        ):
            raise SimLocalError(f"cannot send on a connection in state {self.state.value}")
        self._send_buf += data
        self._output()

    def close(self) -> None:
        """Orderly close: FIN after the queued data (RFC 9293 CLOSE call)."""
        if self.state in (StreamState.CLOSED, StreamState.LISTEN):
            return
        if self.state == StreamState.SYN_SENT:
            self._teardown(StreamEventKind.CLOSED, None)
            return
        if self._fin_queued:
            return
        self._fin_queued = True
        if self.state in (StreamState.ESTABLISHED, StreamState.SYN_RCVD):
            self.state = StreamState.FIN_WAIT_1
        elif self.state == StreamState.CLOSE_WAIT:
            self.state = StreamState.LAST_ACK
        self._output()

    def abort(self, send_rst: bool = True) -> None:
        """ABORT: send RST (if allowed) and drop all state."""
        if self.state in SYNCHRONIZED | {StreamState.SYN_RCVD} and send_rst and not self.suspended:
            self._emit(TcpSegment(self.flow.local_port, self.flow.remote_port, self.snd_nxt, 0, Flags.RST))
        self._teardown(StreamEventKind.RESET, "local abort")

    def fail(self, reason: str) -> None:
        """The connection could not start (e.g. no latch and policy requires one)."""
        if self.state is StreamState.CLOSED and not self.events:
            self._event(StreamEventKind.FAILED, reason)
            self.host.stream_closed(self)
        else:
            self._teardown(StreamEventKind.FAILED, reason)

    @property
    def is_open(self) -> bool:
        return self.state in (StreamState.ESTABLISHED, StreamState.CLOSE_WAIT)

    def kinds(self) -> list[StreamEventKind]:
        return [e.kind for e in self.events]

    # -- opening -----------------------------------------------------------------------------
    def open_active(self) -> None:
        self.state = StreamState.SYN_SENT
        self.snd_nxt = (self.iss + 1) & 0xFFFFFFFF
        self._send_syn()

    def _send_syn(self) -> None:
        flags = Flags.SYN | (Flags.ACK if self.state == StreamState.SYN_RCVD else 0)
        ack = self.rcv_nxt if self.state == StreamState.SYN_RCVD else 0
        self._emit(TcpSegment(self.flow.local_port, self.flow.remote_port, self.iss, ack, Flags(flags)))
        self._arm_rtx()

    def open_passive(self, syn: TcpSegment) -> None:
        """A listener accepted ``syn``: answer SYN-ACK (state SYN_RCVD)."""
        self.irs = syn.seq
        self.rcv_nxt = (syn.seq + 1) & 0xFFFFFFFF
        self.state = StreamState.SYN_RCVD
        self.snd_nxt = (self.iss + 1) & 0xFFFFFFFF
        self._send_syn()

    # -- output ------------------------------------------------------------------------------
    def _emit(self, seg: TcpSegment) -> None:
        if self.suspended:
            return  # RFC 5660 §2.3: while BROKEN the ULP MUST stop sending
        self.host.stream_output(self, seg)

    def _output(self) -> None:
        if self.state not in SYNCHRONIZED or self.suspended:
            return
        sent_upto = (self.snd_nxt - self.snd_una) & 0xFFFFFFFF
        if self._fin_sent:
            sent_upto -= 1
        while sent_upto < len(self._send_buf):
            chunk = bytes(self._send_buf[sent_upto : sent_upto + MSS])
            self._emit(
                TcpSegment(
                    self.flow.local_port,
                    self.flow.remote_port,
                    self.snd_nxt,
                    self.rcv_nxt,
                    Flags.ACK | Flags.PSH,
                    payload=chunk,
                )
            )
            self.snd_nxt = (self.snd_nxt + len(chunk)) & 0xFFFFFFFF
            sent_upto += len(chunk)
            self._arm_rtx()
        if self._fin_queued and not self._fin_sent:
            self._emit(
                TcpSegment(
                    self.flow.local_port,
                    self.flow.remote_port,
                    self.snd_nxt,
                    self.rcv_nxt,
                    Flags.FIN | Flags.ACK,
                )
            )
            self._fin_sent = True
            self.snd_nxt = (self.snd_nxt + 1) & 0xFFFFFFFF
            self._arm_rtx()

    def _send_ack(self) -> None:
        self._emit(
            TcpSegment(self.flow.local_port, self.flow.remote_port, self.snd_nxt, self.rcv_nxt, Flags.ACK)
        )

    def _arm_rtx(self) -> None:
        if self._rtx_timer is None:
            self._rtx_timer = self.host.scheduler.call_later(self._rto, self._on_rto)

    def _on_rto(self) -> None:
        self._rtx_timer = None
        if self.state in (StreamState.CLOSED, StreamState.TIME_WAIT):
            return
        if self.snd_una == self.snd_nxt:
            return
        self._retries += 1
        if self._retries > MAX_RETRIES:
            self._teardown(StreamEventKind.TIMEOUT, "retransmissions exhausted")
            return
        self._rto = min(self._rto * 2, RTO_MAX)
        if self.suspended:
            self._arm_rtx()  # behave as packet loss: keep backing off, send nothing
            return
        if self.state in (StreamState.SYN_SENT, StreamState.SYN_RCVD):
            self._send_syn()
            return
        # go-back-N: resend everything from snd_una
        self.snd_nxt = self.snd_una
        self._fin_sent = False
        self._output()

    # -- input -------------------------------------------------------------------------------
    def segment_arrived(self, seg: TcpSegment) -> None:
        """Process one segment the host has already accepted (IPsec and latch checks passed)."""
        if self.suspended:
            self.segments_dropped += 1
            return
        st = self.state
        if st == StreamState.SYN_SENT:
            self._in_syn_sent(seg)
            return
        if st == StreamState.CLOSED:
            return
        # RST: honoured only at exactly rcv_nxt (RFC 5961 §3.2); a SYN_RCVD RST in window too
        if seg.flags & Flags.RST:
            if st == StreamState.TIME_WAIT:
                return  # RFC 1337: ignore RST in TIME_WAIT
            if seg.seq == self.rcv_nxt:
                kind = StreamEventKind.REFUSED if st == StreamState.SYN_RCVD else StreamEventKind.RESET
                self._teardown(kind, "peer reset")
            return
        if seg.flags & Flags.SYN:
            if st == StreamState.SYN_RCVD and seg.seq == self.irs:
                if seg.flags & Flags.ACK and seg.ack == self.snd_nxt:
                    # simultaneous open: the peer's SYN-ACK acknowledges our SYN
                    self._process_ack(seg.ack)
                    self._send_ack()
                else:
                    self._send_syn()  # retransmitted SYN: repeat our SYN-ACK
            else:
                self._send_ack()  # RFC 5961 §4: challenge ACK
            return
        if seg.seq != self.rcv_nxt:
            if seg.seg_len:
                self._send_ack()  # out of order or duplicate: re-ACK
            return
        if not seg.flags & Flags.ACK:
            return
        self._process_ack(seg.ack)
        if self.state == StreamState.CLOSED:
            return
        if seg.payload and self.state in (
            StreamState.ESTABLISHED,
            StreamState.FIN_WAIT_1,
            StreamState.FIN_WAIT_2,
        ):
            self.rcv_nxt = (self.rcv_nxt + len(seg.payload)) & 0xFFFFFFFF
            self.received += seg.payload
            self._event(StreamEventKind.DATA, len(seg.payload))
        if seg.flags & Flags.FIN:
            self.rcv_nxt = (self.rcv_nxt + 1) & 0xFFFFFFFF
            self._on_fin()
        if seg.seg_len:
            self._send_ack()

    def _in_syn_sent(self, seg: TcpSegment) -> None:
        if seg.flags & Flags.ACK and seg.ack != self.snd_nxt:
            if not seg.flags & Flags.RST:
                self.host.stream_output(
                    self, TcpSegment(self.flow.local_port, self.flow.remote_port, seg.ack, 0, Flags.RST)
                )
            return
        if seg.flags & Flags.RST:
            if seg.flags & Flags.ACK:
                self._teardown(StreamEventKind.REFUSED, "connection refused")
            return
        if not seg.flags & Flags.SYN:
            return
        self.irs = seg.seq
        self.rcv_nxt = (seg.seq + 1) & 0xFFFFFFFF
        if seg.flags & Flags.ACK:
            self._process_ack(seg.ack)
            self.state = StreamState.ESTABLISHED
            self._send_ack()
            self._event(StreamEventKind.CONNECTED)
            self._output()
        else:
            # simultaneous open (RFC 9293 §3.5, figure 8): SYN_SENT -> SYN_RCVD, send SYN-ACK
            self.state = StreamState.SYN_RCVD
            self._cancel_rtx()
            self._send_syn()

    def _process_ack(self, ack: int) -> None:
        if _seq_lt(self.snd_una, ack) and _seq_le(ack, self.snd_nxt):
            acked = (ack - self.snd_una) & 0xFFFFFFFF
            data_acked = acked
            if self.state in (StreamState.SYN_RCVD, StreamState.SYN_SENT) and self.snd_una == self.iss:
                data_acked -= 1
            if self._fin_sent and ack == self.snd_nxt:
                data_acked -= 1
            del self._send_buf[: max(0, data_acked)]
            self.snd_una = ack
            self._retries = 0
            self._rto = RTO_INITIAL
            self._cancel_rtx()
            if self.snd_una != self.snd_nxt:
                self._arm_rtx()
        if self.state == StreamState.SYN_RCVD and self.snd_una == (self.iss + 1) & 0xFFFFFFFF:
            self.state = StreamState.FIN_WAIT_1 if self._fin_queued else StreamState.ESTABLISHED
            self._event(StreamEventKind.CONNECTED)
            self._output()
        fin_acked = self._fin_sent and self.snd_una == self.snd_nxt
        if fin_acked:
            if self.state == StreamState.FIN_WAIT_1:
                self.state = StreamState.FIN_WAIT_2
            elif self.state == StreamState.CLOSING:
                self._enter_time_wait()
            elif self.state == StreamState.LAST_ACK:
                self._teardown(StreamEventKind.CLOSED, None)

    def _on_fin(self) -> None:
        self._event(StreamEventKind.EOF)
        if self.state == StreamState.ESTABLISHED:
            self.state = StreamState.CLOSE_WAIT
        elif self.state == StreamState.FIN_WAIT_1:
            self.state = StreamState.CLOSING
        elif self.state == StreamState.FIN_WAIT_2:
            self._enter_time_wait()

    def _enter_time_wait(self) -> None:
        """TIME_WAIT for 2*MSL; the latch is held until TCP CLOSED (RFC 5660 §5.1)."""
        self.state = StreamState.TIME_WAIT
        self._cancel_rtx()
        if self._tw_timer is None:
            self._tw_timer = self.host.scheduler.call_later(
                2 * self.msl, self._teardown, StreamEventKind.CLOSED, None
            )

    def _cancel_rtx(self) -> None:
        if self._rtx_timer is not None:
            self._rtx_timer.cancel()
            self._rtx_timer = None

    def _teardown(self, kind: StreamEventKind, detail: Any) -> None:
        if self.state == StreamState.CLOSED:
            return
        self.state = StreamState.CLOSED
        self._cancel_rtx()
        if self._tw_timer is not None:
            self._tw_timer.cancel()
            self._tw_timer = None
        self._event(kind, detail)
        self.host.stream_closed(self)

    def _event(self, kind: StreamEventKind, detail: Any = None) -> None:
        ev = StreamEvent(self.host.scheduler.now, kind, detail)
        self.events.append(ev)
        if self.on_event is not None:
            self.on_event(self, ev)

    # -- latch hooks (called by the host) ---------------------------------------------------------
    def latch_broken(self, reset: bool, reason: str, unreachable: bool = False) -> None:
        """RFC 5660 §2.3 ALERT -> BROKEN: stop output and drop input at once; §5.5 (b) acts as reset.

        ``unreachable`` is §5.5 (c): act as if an ICMP destination unreachable arrived. Like TCP
        with a soft ICMP error (RFC 1122 §4.2.3.9) the connection is not aborted: the application
        gets a ``SOFT_ERROR`` event and :attr:`soft_error` is set, no data flows while BROKEN, and
        the connection resumes if the latch becomes ESTABLISHED again (ULP timeouts still apply)."""
        self._event(StreamEventKind.LATCH, ("BROKEN", reason))
        self.suspended = True
        if reset:
            self._teardown(StreamEventKind.RESET, f"latch broken: {reason}")
        elif unreachable:
            self.soft_error = f"destination unreachable (latch broken: {reason})"
            self._event(StreamEventKind.SOFT_ERROR, self.soft_error)

    def latch_restored(self) -> None:
        """RFC 5660 §2.3 T5 back to ESTABLISHED: resume (retransmission recovers the losses)."""
        self._event(StreamEventKind.LATCH, ("ESTABLISHED", "restored"))
        self.suspended = False
        self.soft_error = None
        self._output()

    def latch_closed(self, reason: str) -> None:
        """Administrative CLOSE: act as if the peer reset the connection (RFC 5660 §2.3)."""
        self._event(StreamEventKind.LATCH, ("CLOSED", reason))
        self.suspended = True
        self._teardown(StreamEventKind.RESET, f"latch closed: {reason}")
