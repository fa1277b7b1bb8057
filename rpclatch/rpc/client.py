"""ONC RPC v2 client protocol state, sans-IO (RFC 5531 §9, §11).

The objects here never read a clock, open a socket or sleep: the caller passes bytes and the
current time ``now`` (any monotonic float, e.g. ``loop.time()``) in, and takes bytes, events and the
next timer deadline out. :class:`RpcClientConnection` is one record-marked stream,
:class:`RpcDatagramClient` a connected datagram socket; both take a flavor from
:mod:`rpclatch.rpc.auth` (RPCSEC_GSS plugs in the same way). :mod:`rpclatch.rpc.aio` wraps them in
asyncio transports; tests drive them directly with a fake clock.
"""

from __future__ import annotations

import heapq
import logging
import math
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from rpclatch.rpc import wire
from rpclatch.rpc.auth import ClientAuth, PreparedCall
from rpclatch.rpc.auth_sys import AuthNoneClient
from rpclatch.rpc.errors import (
    RpcAcceptError,
    RpcAuthError,
    RpcConnectionClosed,
    RpcError,
    RpcLocalError,
    RpcMismatchError,
    RpcProtocolError,
    RpcTimeout,
)
from rpclatch.rpc.messages import (
    AcceptedReply,
    AcceptStat,
    AuthStat,
    CallMessage,
    DeniedReply,
    RejectStat,
    ReplyMessage,
    decode_reply,
    message_type,
    peek_xid,
)
from rpclatch.rpc.record import (
    DEFAULT_MAX_RECORD,
    LAST_FRAGMENT,
    MAX_FRAGMENT,
    RecordError,
    RecordReassembler,
    coalesce,
    encode_record,
)
from rpclatch.xdr import XdrError

log = logging.getLogger(__name__)

_pack_header = struct.Struct(">I").pack

_SUCCESS = AcceptStat.SUCCESS
_REPLY = 1
_NO_DEADLINE = math.inf
_fast_reply: Callable[[bytes | memoryview, int, int], ReplyMessage | None] = wire.fast_reply

#: A datagram call remembers the prepared state of at most this many transmissions (RFC 2203
#: §5.3.3.1 reply matching); with the default backoff a 30 s call is sent about 7 times.
MAX_KEPT_TRANSMISSIONS = 8


class CallHandle:
    """One outstanding call: ``prog``, ``vers``, ``proc``, ``xid`` and ``deadline``. ``context``
    is free for the transport shell (e.g. an asyncio future)."""

    __slots__ = (
        "_timer_at",
        "args",
        "auth",
        "context",
        "deadline",
        "done",
        "earlier",
        "prepared",
        "proc",
        "prog",
        "retransmit_interval",
        "retried",
        "vers",
        "wire",
        "xid",
    )

    def __init__(
        self, prog: int, vers: int, proc: int, args: bytes, auth: ClientAuth, deadline: float
    ) -> None:
        self.prog = prog
        self.vers = vers
        self.proc = proc
        self.args = args
        self.auth = auth
        self.deadline = deadline
        self.xid = 0
        self.prepared: PreparedCall | None = None
        #: datagram retransmissions: the prepared states of earlier transmissions (same xid)
        self.earlier: list[PreparedCall] | None = None
        self.retried = False
        self.done = False
        self.context: Any = None
        self.wire = b""  # the encoded call message (kept for datagram retransmission)
        self.retransmit_interval = 0.0
        self._timer_at = _NO_DEADLINE

    def _release(self) -> None:
        """The call is over: drop what it held (arguments, wrapped message), since stale timer
        entries may keep the handle itself alive for a while."""
        self.done = True
        self.args = b""
        self.prepared = None
        self.earlier = None
        self.wire = b""

    def __repr__(self) -> str:
        return f"<CallHandle xid={self.xid:#010x} {self.prog}/{self.vers}/{self.proc}>"


@dataclass(frozen=True, slots=True)
class CallCompleted:
    """A SUCCESS reply arrived; ``result`` is the unwrapped result bytes."""

    handle: CallHandle
    result: bytes


@dataclass(frozen=True, slots=True)
class CallFailed:
    """The call ended without results. ``error`` is an :class:`rpclatch.rpc.errors.RpcError`:
    :class:`RpcAcceptError` / :class:`RpcMismatchError` / :class:`RpcAuthError` from the server,
    :class:`RpcTimeout`, :class:`RpcProtocolError`, :class:`AuthVerifierError`, ..."""

    handle: CallHandle
    error: RpcError


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """The stream is unusable (bad record marking, e.g. a record too large); the shell must close
    the transport. Stream clients only; every outstanding call has had a :class:`CallFailed`
    first."""

    error: RpcError


Event = CallCompleted | CallFailed | ConnectionFailed


class _ClientCore:
    """xid allocation, reply matching, deadlines: shared by stream and datagram clients."""

    def __init__(self, auth: ClientAuth | None, default_timeout: float | None, first_xid: int | None) -> None:
        self.default_auth: ClientAuth = auth if auth is not None else AuthNoneClient()
        self.default_timeout = _NO_DEADLINE if default_timeout is None else default_timeout
        self._next_xid = secrets.randbits(32) if first_xid is None else first_xid & 0xFFFFFFFF
        self._pending: dict[int, CallHandle] = {}
        self._timers: list[tuple[float, int, CallHandle]] = []
        self._timer_seq = 0

    @property
    def outstanding(self) -> int:
        """Number of calls awaiting a reply."""
        return len(self._pending)

    def _allocate_xid(self) -> int:
        pending = self._pending
        xid = self._next_xid
        while xid in pending:
            xid = (xid + 1) & 0xFFFFFFFF
        self._next_xid = (xid + 1) & 0xFFFFFFFF
        return xid

    def _prepare_message(self, handle: CallHandle) -> CallMessage:
        """Allocate an xid and let the flavor build the call message."""
        xid = self._allocate_xid()
        prepared = handle.auth.prepare_call(xid, handle.prog, handle.vers, handle.proc, handle.args)
        handle.xid = xid
        handle.prepared = prepared
        handle.earlier = None
        self._pending[xid] = handle
        return prepared.message

    def _reprepare(self, handle: CallHandle) -> bytes:
        """A retransmission of ``handle`` under the same xid, prepared afresh by its flavor (a new
        RPCSEC_GSS seq_num, RFC 2203 §5.3.3.1); the earlier prepared state is kept so that a late
        reply to an earlier transmission still verifies. Raises what ``prepare_call`` raises."""
        prepared = handle.auth.prepare_call(handle.xid, handle.prog, handle.vers, handle.proc, handle.args)
        previous = handle.prepared
        if previous is not None:
            earlier = handle.earlier
            if earlier is None:
                handle.earlier = earlier = []
            earlier.append(previous)
            if len(earlier) >= MAX_KEPT_TRANSMISSIONS:
                del earlier[0]
        handle.prepared = prepared
        return wire.encode_call(prepared.message)

    def _prepare(self, handle: CallHandle) -> bytes:
        return wire.encode_call(self._prepare_message(handle))

    def _new_handle(
        self,
        prog: int,
        vers: int,
        proc: int,
        args: bytes,
        auth: ClientAuth | None,
        now: float,
        timeout: float | None,
    ) -> CallHandle:
        if timeout is None:
            timeout = self.default_timeout
        return CallHandle(
            prog, vers, proc, args, auth if auth is not None else self.default_auth, now + timeout
        )

    def _schedule(self, handle: CallHandle, when: float) -> None:
        handle._timer_at = when
        if when == _NO_DEADLINE:
            return
        self._timer_seq += 1
        timers = self._timers
        heapq.heappush(timers, (when, self._timer_seq, handle))
        # Completed calls leave their entries behind; compact so the heap stays O(outstanding).
        if len(timers) > 64 and len(timers) > 4 * len(self._pending):
            self._timers = [t for t in timers if not t[2].done and t[0] == t[2]._timer_at]
            heapq.heapify(self._timers)

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (None: no timer pending)."""
        timers = self._timers
        while timers:
            when, _seq, handle = timers[0]
            if handle.done or when != handle._timer_at:
                heapq.heappop(timers)
                continue
            return when
        return None

    def _expire(self, now: float, events: list[Event]) -> list[CallHandle]:
        """Fail calls past their deadline; return live calls whose (non-deadline) timer fired."""
        fired: list[CallHandle] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _seq, handle = heapq.heappop(timers)
            if handle.done or when != handle._timer_at:
                continue
            if now >= handle.deadline:
                self._finish(handle)
                events.append(
                    CallFailed(
                        handle,
                        RpcTimeout(
                            f"no reply to {handle.prog}/{handle.vers}/{handle.proc} (xid {handle.xid:#x}) "
                            f"within its deadline"
                        ),
                    )
                )
            else:
                fired.append(handle)
        return fired

    def _finish(self, handle: CallHandle) -> None:
        handle._release()
        if self._pending.get(handle.xid) is handle:
            del self._pending[handle.xid]

    def _fail_all(self, error: RpcError, events: list[Event]) -> None:
        for handle in list(self._pending.values()):
            handle._release()
            events.append(CallFailed(handle, error))
        self._pending.clear()
        self._timers.clear()

    def _handle_reply(self, record: bytes | ReplyMessage, events: list[Event]) -> CallHandle | None:
        """Match one reply (a record, or one already decoded); return the handle if it must be
        resent (auth refresh), else None."""
        if type(record) is bytes:
            try:
                mtype = message_type(record)
                if mtype != _REPLY:
                    log.debug("ignoring a non-reply message (msg_type %s)", mtype)
                    return None
                reply = decode_reply(record)
            except XdrError as exc:
                xid = peek_xid(record)
                bad = self._pending.pop(xid, None) if xid is not None else None
                if bad is None:
                    log.warning("ignoring a malformed reply (%s)", exc)
                    return None
                bad._release()
                events.append(CallFailed(bad, RpcProtocolError(f"malformed reply: {exc}")))
                return None
        else:
            assert isinstance(record, AcceptedReply | DeniedReply)
            reply = record
        handle = self._pending.pop(reply.xid, None)
        if handle is None:
            log.debug("ignoring a reply to unknown xid %#x", reply.xid)
            return None
        if isinstance(reply, AcceptedReply):
            # The flavor checks the verifier of every accepted reply, errors too (an RPCSEC_GSS
            # SYSTEM_ERR without MIC(seq_num) is not the server's, RFC 2203 §5.3.3.2).
            result: bytes | None
            try:
                result = handle.auth.accept_reply(handle.prepared, reply)  # type: ignore[arg-type]
            except (RpcError, XdrError) as exc:
                result = self._accept_earlier(handle, reply)
                if result is None:
                    handle._release()
                    events.append(
                        CallFailed(
                            handle,
                            exc
                            if isinstance(exc, RpcError)
                            else RpcProtocolError(f"malformed results: {exc}"),
                        )
                    )
                    return None
            handle._release()
            if reply.stat is _SUCCESS:
                events.append(CallCompleted(handle, result))
            else:
                events.append(CallFailed(handle, RpcAcceptError(reply.stat, reply.mismatch)))
            return None
        # DeniedReply
        if reply.stat == RejectStat.AUTH_ERROR:
            stat = reply.auth_stat if reply.auth_stat is not None else AuthStat.AUTH_FAILED
            if not handle.retried and handle.auth.on_auth_error(handle.prepared, stat):  # type: ignore[arg-type]
                handle.retried = True
                return handle
            handle._release()
            events.append(CallFailed(handle, RpcAuthError(stat)))
            return None
        handle._release()
        low, high = reply.mismatch or (2, 2)
        events.append(CallFailed(handle, RpcMismatchError(low, high)))
        return None

    @staticmethod
    def _accept_earlier(handle: CallHandle, reply: AcceptedReply) -> bytes | None:
        """The results of ``reply`` checked against an earlier transmission of a retransmitted
        call (newest first), or None if it answers none of them."""
        for prepared in reversed(handle.earlier or ()):
            try:
                return handle.auth.accept_reply(prepared, reply)
            except (RpcError, XdrError):
                continue
        return None


class RpcClientConnection(_ClientCore):
    """Client side of one record-marked byte stream (RFC 5531 §11): TCP or a unix socket.

    Queue calls with :meth:`send_call`, write :meth:`data_to_send` (or
    :meth:`data_to_send_parts`) to the transport, feed what it reads to :meth:`receive_data`,
    drive :meth:`next_timer` / :meth:`handle_timer`, and call :meth:`connection_lost` when the
    transport goes. ``outstanding`` is the number of calls awaiting a reply. The events are
    :class:`CallCompleted`, :class:`CallFailed` and :class:`ConnectionFailed`.

    Replies are reassembled under the same bounds as on the server
    (:class:`rpclatch.rpc.record.RecordReassembler`: at most ``max_record`` bytes of a reply plus
    one fragment header, few zero-length fragments), so a hostile server cannot make the client
    buffer more; a stream that breaks them fails with :class:`ConnectionFailed`.

    An AUTH_ERROR reply is passed to ``auth.on_auth_error``; if it returns True the call is
    prepared again under a new xid and resent once (RFC 2203 §5.3.3.3 context refresh); a second
    AUTH_ERROR fails the call without asking the flavor again. A reply whose xid matches no
    outstanding call (late, or a duplicate) is ignored.
    """

    def __init__(
        self,
        auth: ClientAuth | None = None,
        default_timeout: float | None = 30.0,
        *,
        max_record: int = DEFAULT_MAX_RECORD,
        max_fragment: int = MAX_FRAGMENT,
        first_xid: int | None = None,
    ) -> None:
        super().__init__(auth, default_timeout, first_xid)
        self.max_fragment = max_fragment
        self._reassembler = RecordReassembler(max_record)
        self._out: list[bytes] = []
        self.closed = False

    @property
    def buffered_input(self) -> int:
        """Bytes held for a reply not yet complete (at most ``max_record + 4``, see
        :class:`rpclatch.rpc.record.RecordReassembler`)."""
        return self._reassembler.buffered

    def send_call(
        self,
        prog: int,
        vers: int,
        proc: int,
        args: bytes,
        auth: ClientAuth | None,
        now: float,
        timeout: float | None = None,
    ) -> CallHandle:
        """Queue a call; its bytes come out of :meth:`data_to_send`.

        The xid is allocated here (random start, then +1, skipping xids still outstanding).
        ``auth`` (a :class:`rpclatch.rpc.auth.ClientAuth`; None: the connection's default, AUTH_NONE
        unless given) builds the call around ``args``, the already XDR-encoded arguments.
        ``timeout`` None: ``default_timeout``; ``math.inf``: no deadline. An expired call fails
        with :class:`rpclatch.rpc.errors.RpcTimeout`."""
        if self.closed:
            raise RpcConnectionClosed("the connection is closed")
        handle = self._new_handle(prog, vers, proc, args, auth, now, timeout)
        self._send(handle)
        self._schedule(handle, handle.deadline)
        return handle

    def _send(self, handle: CallHandle) -> None:
        msg = self._prepare_message(handle)
        size = 48 + len(msg.cred.body) + len(msg.verf.body) + len(msg.args)  # upper bound
        if size <= self.max_fragment:
            # Record-marked as one fragment without copying the arguments behind the header.
            head, args = wire.encode_call_marked(msg)
            self._out.append(head)
            if args:
                self._out.append(args)
        else:
            self._queue(wire.encode_call(msg))

    def _queue(self, message: bytes) -> None:
        n = len(message)
        if n <= self.max_fragment:
            self._out.append(_pack_header(LAST_FRAGMENT | n))
            self._out.append(message)
        else:
            self._out.append(encode_record(message, self.max_fragment))

    def data_to_send(self) -> bytes:
        """Everything queued for the transport since the last call."""
        out = self._out
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        return data

    @property
    def wants_write(self) -> bool:
        """True when :meth:`data_to_send` has something."""
        return bool(self._out)

    def data_to_send_parts(self) -> list[bytes]:
        """:meth:`data_to_send` as buffers to write in order (large arguments are not copied)."""
        out = self._out
        self._out = []
        return coalesce(out)

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed bytes from the transport (``data`` may be a view of a buffer the caller reuses);
        return the events they caused."""
        events: list[Event] = []
        if self.closed:
            return events
        try:
            records = cast("list[bytes | ReplyMessage]", self._reassembler.feed(data, _fast_reply))
        except RecordError as exc:
            self.closed = True
            self._fail_all(exc, events)
            events.append(ConnectionFailed(exc))
            return events
        for record in records:
            retry = self._handle_reply(record, events)
            if retry is not None:
                self._send(retry)
        return events

    def handle_timer(self, now: float) -> list[Event]:
        """Fail the calls whose deadline has passed."""
        events: list[Event] = []
        self._expire(now, events)
        return events

    def connection_lost(self, error: RpcError | None = None) -> list[Event]:
        """The transport closed: fail every outstanding call (with ``error``, by default
        :class:`RpcConnectionClosed`)."""
        self.closed = True
        events: list[Event] = []
        self._fail_all(error or RpcConnectionClosed("connection closed with the call outstanding"), events)
        return events


class RpcDatagramClient(_ClientCore):
    """Client side of a connected datagram socket (UDP), with retransmission (RFC 5531 §9 xid).

    Used like :class:`RpcClientConnection` (same :meth:`send_call`, timers and AUTH_ERROR
    handling), with :meth:`datagrams_to_send` and :meth:`receive_datagram` for the I/O.

    A call is resent with the same xid after ``retransmit_initial`` seconds, then after twice
    that, and so on up to ``retransmit_max`` between tries, until its deadline. Each resend is
    prepared afresh by the flavor, so RPCSEC_GSS gives it a new seq_num and header MIC (RFC 2203
    §5.3.3.1: "the client [must] increment the sequence number even if it is retrying a request
    with the same RPC transaction identifier"; the server drops a repeated seq_num as a replay).
    A reply is accepted if it checks against any of the (at most :data:`MAX_KEPT_TRANSMISSIONS`)
    transmissions of the call, as the RFC suggests and as Linux does (it keeps the seq_nums of a
    request's transmissions and tries each against the reply verifier). Flavors whose output does
    not change (AUTH_NONE, AUTH_SYS) resend the same bytes.
    """

    def __init__(
        self,
        auth: ClientAuth | None = None,
        default_timeout: float | None = 30.0,
        *,
        retransmit_initial: float = 0.5,
        retransmit_max: float = 8.0,
        first_xid: int | None = None,
    ) -> None:
        super().__init__(auth, default_timeout, first_xid)
        if retransmit_initial <= 0 or retransmit_max < retransmit_initial:
            raise ValueError("need 0 < retransmit_initial <= retransmit_max")
        self.retransmit_initial = retransmit_initial
        self.retransmit_max = retransmit_max
        self._out: list[bytes] = []

    def send_call(
        self,
        prog: int,
        vers: int,
        proc: int,
        args: bytes,
        auth: ClientAuth | None,
        now: float,
        timeout: float | None = None,
    ) -> CallHandle:
        """Queue a call; its datagram comes out of :meth:`datagrams_to_send`."""
        handle = self._new_handle(prog, vers, proc, args, auth, now, timeout)
        self._transmit(handle, self._prepare(handle), now, self.retransmit_initial)
        return handle

    def _transmit(self, handle: CallHandle, data: bytes, now: float, interval: float) -> None:
        handle.wire = data
        handle.retransmit_interval = interval
        self._out.append(data)
        self._schedule(handle, min(handle.deadline, now + interval))

    def datagrams_to_send(self) -> list[bytes]:
        """Datagrams queued since the last call, one message each."""
        out = self._out
        self._out = []
        return out

    def receive_datagram(self, data: bytes) -> list[Event]:
        """Feed one datagram; return the events it caused."""
        events: list[Event] = []
        retry = self._handle_reply(bytes(data), events)
        if retry is not None:
            # Resent under a new xid; the retransmission timer already running keeps its schedule.
            retry.wire = self._prepare(retry)
            self._out.append(retry.wire)
        return events

    def handle_timer(self, now: float) -> list[Event]:
        """Fail expired calls and retransmit those whose retry timer fired."""
        events: list[Event] = []
        for handle in self._expire(now, events):
            interval = min(handle.retransmit_interval * 2, self.retransmit_max)
            try:
                data = self._reprepare(handle)
            except Exception as exc:  # e.g. RPCSEC_GSS sequence numbers exhausted, context closed
                error = (
                    exc
                    if isinstance(exc, RpcError)
                    else RpcLocalError(f"the flavor could not prepare the retransmission: {exc}")
                )
                error.__cause__ = exc if error is not exc else None
                self._finish(handle)
                events.append(CallFailed(handle, error))
                continue
            self._transmit(handle, data, now, interval)
        return events

    def close(self, error: RpcError | None = None) -> list[Event]:
        """Fail every outstanding call (the socket is going away, or ``error`` happened)."""
        events: list[Event] = []
        self._fail_all(error or RpcConnectionClosed("client closed with the call outstanding"), events)
        return events
