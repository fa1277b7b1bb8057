"""ONC RPC v2 server, sans-IO: program registry, call dispatch and per-connection state
(RFC 5531 §9, §11).

:class:`RpcDispatcher` turns one call message into one reply message, checking credentials with
the server flavors of :mod:`rpclatch.rpc.auth` (AUTH_NONE and AUTH_SYS from
:mod:`rpclatch.rpc.auth_sys`, RPCSEC_GSS from :mod:`rpclatch.gss.server`) and calling the
registered :data:`Procedure`. :class:`RpcServerConnection` is one record-marked stream: it
reassembles calls, dispatches them and bounds what a peer can make it hold. Datagrams need no
connection object: pass each one to :meth:`RpcDispatcher.dispatch` and send back what it returns.
The asyncio shell around both is :class:`rpclatch.rpc.aio.RpcServer`.
"""

from __future__ import annotations

import inspect
import logging
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from rpclatch.rpc import wire
from rpclatch.rpc.auth import (
    AuthAccept,
    AuthControlReply,
    AuthDeny,
    AuthDrop,
    AuthGarbage,
    ConnectionInfo,
    ServerAuth,
)
from rpclatch.rpc.auth_sys import AuthNoneServer, AuthSysServer
from rpclatch.rpc.errors import GarbageArgs, ResultsTooLarge
from rpclatch.rpc.messages import (
    NULL_AUTH,
    RPC_VERSION,
    AcceptedReply,
    AcceptStat,
    AuthStat,
    CallMessage,
    DeniedReply,
    OpaqueAuth,
    RejectStat,
    decode_call,
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

_II = struct.Struct(">II")
_III = struct.Struct(">III")
_pack_header = struct.Struct(">I").pack
_CALL = 0
#: Unsent reply bytes a connection may hold (queued here or in the transport) before it stops
#: dispatching and reading calls (see RpcServerConnection.receive_data).
DEFAULT_MAX_OUTPUT = 1024 * 1024
#: The smallest accepted reply around results (RFC 5531 §9): xid, msg_type, reply_stat, an empty
#: verifier (flavor, length) and accept_stat.
MIN_REPLY_HEADER = 24


class LogLimiter:
    """Rate limit for a log line that a peer can trigger at will: at most ``burst`` lines per
    ``interval`` seconds (of ``clock``); the lines held back are counted and the count is logged
    with the first line let through afterwards."""

    __slots__ = ("_clock", "_count", "_start", "_suppressed", "burst", "interval")

    def __init__(
        self, burst: int = 10, interval: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._start = float("-inf")
        self._count = 0
        self._suppressed = 0

    def log(self, logger: logging.Logger, level: int, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless over the limit; return whether it was logged."""
        now = self._clock()
        if now - self._start >= self.interval:
            if self._suppressed:
                logger.log(
                    level, "%d similar log lines suppressed in the last %g s", self._suppressed, self.interval
                )
            self._start = now
            self._count = 0
            self._suppressed = 0
        if self._count < self.burst:
            self._count += 1
            logger.log(level, msg, *args)
            return True
        self._suppressed += 1
        return False


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a procedure knows about its call: the message, the transport, the authenticated
    principal (None for AUTH_NONE), the time the call was dispatched, and the largest reply
    message the transport can carry (``max_reply``; None: no limit, as on a stream)."""

    call: CallMessage
    conn: ConnectionInfo
    principal: str | None
    now: float
    max_reply: int | None = None

    @property
    def flavor(self) -> int:
        return self.call.cred.flavor

    @property
    def max_results(self) -> int | None:
        """Results larger than this cannot be sent on this transport (None: no limit): a
        procedure that knows its results' size before building them checks it and raises
        :class:`rpclatch.rpc.errors.ResultsTooLarge` (SYSTEM_ERR) instead of building them. The
        flavor's verifier and sealing add more, so results within the bound may still not fit;
        the transport checks the sealed reply once more."""
        return None if self.max_reply is None else self.max_reply - MIN_REPLY_HEADER


#: A procedure takes the (unwrapped) XDR argument bytes and a :class:`CallContext` and returns the
#: XDR result bytes, or an awaitable of them (a coroutine procedure; the asyncio shell awaits it).
#: Raise :class:`rpclatch.rpc.errors.GarbageArgs` (or let an :class:`rpclatch.xdr.XdrError`
#: escape) for GARBAGE_ARGS, :class:`rpclatch.rpc.errors.ResultsTooLarge` for SYSTEM_ERR when the
#: results would not fit in one reply on the transport (see :attr:`CallContext.max_results`;
#: logged rate-limited); any other exception becomes SYSTEM_ERR and is logged.
Procedure = Callable[[bytes, CallContext], "bytes | Awaitable[bytes]"]


def _accepted_error(
    xid: int, verf: OpaqueAuth, stat: AcceptStat, mismatch: tuple[int, int] | None = None
) -> bytes:
    return AcceptedReply(xid, verf, stat, b"", mismatch).encode()


def _mark(message: bytes) -> bytes:
    return _pack_header(LAST_FRAGMENT | len(message)) + message


def _error_verf(accept: AuthAccept) -> OpaqueAuth:
    """The verifier an accepted non-SUCCESS reply carries (the flavor's, RFC 2203 §5.3.3.2)."""
    try:
        return accept.seal(b"")[0]
    except Exception:  # a flavor that cannot seal an empty result: fall back to AUTH_NONE
        log.debug("flavor could not seal an error reply", exc_info=True)
        return NULL_AUTH


class PendingReply:
    """A call whose procedure returned an awaitable: await it, then ``complete`` or ``fail``."""

    __slots__ = ("accept", "awaitable", "call", "limiter")

    def __init__(
        self,
        call: CallMessage,
        accept: AuthAccept,
        awaitable: Awaitable[bytes],
        limiter: LogLimiter | None = None,
    ) -> None:
        self.call = call
        self.accept = accept
        self.awaitable = awaitable
        self.limiter = limiter

    @property
    def xid(self) -> int:
        return self.call.xid

    def complete(self, results: bytes) -> bytes | None:
        """The reply message for a procedure that returned ``results`` (None: the flavor could not
        seal them, no reply is sent, RFC 2203 §5.3.3.4.1/§5.3.3.4.4)."""
        reply = _seal_success(self.call, self.accept, results, False)
        assert not isinstance(reply, tuple)
        return reply

    def fail(self, exc: BaseException) -> bytes:
        """The reply message for a procedure that raised ``exc`` (GARBAGE_ARGS or SYSTEM_ERR)."""
        return _procedure_error(self.call, self.accept, exc, self.limiter)


#: A reply as record-marked parts to write in order (fragment header + RPC header, then results).
ReplyParts = tuple[bytes, bytes]


def _seal_success(
    call: CallMessage, accept: AuthAccept, results: bytes, record_mark: bool
) -> bytes | ReplyParts | None:
    try:
        verf, sealed = accept.seal(results)
    except Exception as exc:
        # RFC 2203 §5.3.3.4.1 (GSS_GetMIC over the results), §5.3.3.4.4 (GSS_Wrap): no reply.
        log.error(
            "xid %#x: %d/%d/%d: the flavor could not seal the results (%s: %s); sending no reply",
            call.xid,
            call.prog,
            call.vers,
            call.proc,
            type(exc).__name__,
            exc,
        )
        return None
    if record_mark:
        return wire.encode_success_marked(call.xid, verf, sealed)
    return wire.encode_success(call.xid, verf, sealed)


def _procedure_error(
    call: CallMessage, accept: AuthAccept, exc: BaseException, limiter: LogLimiter | None = None
) -> bytes:
    if isinstance(exc, ResultsTooLarge):
        # The peer chose the size: rate-limited, and SYSTEM_ERR (RFC 5531 §9: the arguments were
        # valid -- GARBAGE_ARGS would say they were not -- the server cannot deliver the results).
        (limiter or LogLimiter()).log(
            log,
            logging.WARNING,
            "xid %#x: %d/%d/%d: %s; answering SYSTEM_ERR",
            call.xid,
            call.prog,
            call.vers,
            call.proc,
            exc,
        )
        return _accepted_error(call.xid, _error_verf(accept), AcceptStat.SYSTEM_ERR)
    if isinstance(exc, GarbageArgs | XdrError):
        log.info("xid %#x: %d/%d/%d: garbage arguments: %s", call.xid, call.prog, call.vers, call.proc, exc)
        return _accepted_error(call.xid, _error_verf(accept), AcceptStat.GARBAGE_ARGS)
    log.error(
        "xid %#x: procedure %d/%d/%d raised %s: %s",
        call.xid,
        call.prog,
        call.vers,
        call.proc,
        type(exc).__name__,
        exc,
    )
    return _accepted_error(call.xid, _error_verf(accept), AcceptStat.SYSTEM_ERR)


class RpcDispatcher:
    """Program/version/procedure registry and call dispatch (RFC 5531 §9).

    ``flavors``: the server flavors to accept (None: AUTH_NONE and AUTH_SYS); more can be added
    with :meth:`add_flavor`, programs with :meth:`add_program`.

    Order of checks: rpcvers != 2 -> MSG_DENIED/RPC_MISMATCH(2, 2); unknown credential flavor ->
    AUTH_ERROR/AUTH_BADCRED (as the Linux kernel does; RFC 5531 leaves the choice open); the
    flavor's verdict (``AuthDeny`` -> AUTH_ERROR with its stat, ``AuthDrop`` -> no reply,
    ``AuthGarbage`` -> GARBAGE_ARGS, ``AuthControlReply`` -> SUCCESS with its verifier and
    results); then program -> PROG_UNAVAIL, version -> PROG_MISMATCH(lowest, highest registered),
    procedure -> PROC_UNAVAIL; then the procedure (GARBAGE_ARGS / SYSTEM_ERR / SUCCESS with
    ``AuthAccept.seal(results)``). A record whose call header does not decode is answered
    GARBAGE_ARGS when its xid and msg_type CALL are readable.

    If ``seal`` raises (RPCSEC_GSS: GSS_GetMIC of integrity results or GSS_Wrap of privacy results
    failed) the call gets **no reply** and an error is logged, as RFC 2203 §5.3.3.4.1 and
    §5.3.3.4.4 require: results the flavor could not protect are not sent, and neither is a
    SYSTEM_ERR the client could not verify.
    """

    def __init__(self, flavors: Iterable[ServerAuth] | None = None) -> None:
        self._flavors: dict[int, ServerAuth] = {}
        for auth in flavors if flavors is not None else (AuthNoneServer(), AuthSysServer()):
            self.add_flavor(auth)
        self._programs: dict[int, dict[int, dict[int, Procedure]]] = {}
        self._ranges: dict[int, tuple[int, int]] = {}
        #: rate limit of the log lines about bad records and oversize results (a peer's choice)
        self.log_limiter = LogLimiter()

    # -- registry ---------------------------------------------------------------------------

    def add_flavor(self, auth: ServerAuth) -> None:
        """Accept credentials of ``auth.flavor``, checked by ``auth`` (replaces an earlier one)."""
        self._flavors[int(auth.flavor)] = auth

    @property
    def flavors(self) -> dict[int, ServerAuth]:
        return dict(self._flavors)

    def add_program(self, prog: int, vers: int, procedures: Mapping[int, Procedure]) -> None:
        """Serve ``procedures`` (procedure number -> callable) as program ``prog`` version ``vers``."""
        self._programs.setdefault(prog, {})[vers] = dict(procedures)
        self._update_range(prog)

    def remove_program(self, prog: int, vers: int | None = None) -> None:
        versions = self._programs.get(prog)
        if versions is None:
            return
        if vers is None:
            versions.clear()
        else:
            versions.pop(vers, None)
        if not versions:
            del self._programs[prog]
        self._update_range(prog)

    def _update_range(self, prog: int) -> None:
        versions = self._programs.get(prog)
        if versions:
            self._ranges[prog] = (min(versions), max(versions))
        else:
            self._ranges.pop(prog, None)

    def programs(self) -> list[tuple[int, int]]:
        """Every (program, version) served, sorted."""
        return sorted((p, v) for p, versions in self._programs.items() for v in versions)

    def connection_closed(self, conn: ConnectionInfo) -> None:
        """Tell every flavor that ``conn`` is gone (RPCSEC_GSS drops channel bindings made on it)."""
        for auth in self._flavors.values():
            try:
                auth.connection_closed(conn)
            except Exception:
                log.exception("flavor %d failed in connection_closed", auth.flavor)

    # -- dispatch ---------------------------------------------------------------------------

    def dispatch(
        self, record: bytes, conn: ConnectionInfo, now: float, max_reply: int | None = None
    ) -> bytes | PendingReply | None:
        """Handle one whole RPC message; return the reply message (not record-marked), a
        :class:`PendingReply` when the procedure returned an awaitable (await
        ``pending.awaitable``, then ``pending.complete(result)`` or ``pending.fail(exc)`` gives the
        reply), or None when no reply is to be sent (``AuthDrop``, a record that is not a call,
        results the flavor could not seal). ``max_reply``: the largest reply the transport carries
        (a datagram), passed to the procedure in its :class:`CallContext` so it can refuse
        results that cannot fit before building them."""
        reply = self._dispatch(record, conn, now, False, max_reply)
        assert not isinstance(reply, tuple)
        return reply

    def dispatch_marked(
        self, record: bytes, conn: ConnectionInfo, now: float
    ) -> ReplyParts | PendingReply | None:
        """:meth:`dispatch` for streams: the reply comes as record-marked parts ``(header,
        results)`` (one fragment), so large results are written without being copied behind a
        header (:class:`RpcServerConnection` uses it)."""
        reply = self._dispatch(record, conn, now, True)
        if type(reply) is bytes:
            return _mark(reply), b""
        return reply  # type: ignore[return-value]

    def _dispatch(
        self, record: bytes, conn: ConnectionInfo, now: float, record_mark: bool, max_reply: int | None = None
    ) -> bytes | ReplyParts | PendingReply | None:
        """The reply; only a SUCCESS reply comes record-marked (as parts) when ``record_mark``."""
        n = len(record)
        if n < 8:
            self.log_limiter.log(
                log, logging.WARNING, "conn %d: dropping a %d-byte record (no RPC header)", conn.conn_id, n
            )
            return None
        if n >= 12:
            xid, mtype, rpcvers = _III.unpack_from(record, 0)
        else:
            (xid, mtype), rpcvers = _II.unpack_from(record, 0), RPC_VERSION
        if mtype != _CALL:
            self.log_limiter.log(
                log,
                logging.WARNING,
                "conn %d: dropping xid %#x: msg_type %d is not CALL",
                conn.conn_id,
                xid,
                mtype,
            )
            return None
        if rpcvers != RPC_VERSION:
            return DeniedReply(xid, RejectStat.RPC_MISMATCH, (RPC_VERSION, RPC_VERSION)).encode()
        try:
            call = decode_call(record)
        except XdrError as exc:
            self.log_limiter.log(
                log, logging.WARNING, "conn %d: xid %#x: malformed call header: %s", conn.conn_id, xid, exc
            )
            return _accepted_error(xid, NULL_AUTH, AcceptStat.GARBAGE_ARGS)
        return self._dispatch_call(call, conn, now, record_mark, max_reply)

    def dispatch_call_marked(
        self, call: CallMessage, conn: ConnectionInfo, now: float
    ) -> ReplyParts | PendingReply | None:
        """:meth:`dispatch_marked` for a call already decoded (RPC version 2) from the stream."""
        reply = self._dispatch_call(call, conn, now, True)
        if type(reply) is bytes:
            return _mark(reply), b""
        return reply  # type: ignore[return-value]

    def _dispatch_call(
        self,
        call: CallMessage,
        conn: ConnectionInfo,
        now: float,
        record_mark: bool,
        max_reply: int | None = None,
    ) -> bytes | ReplyParts | PendingReply | None:
        xid = call.xid
        auth = self._flavors.get(call.cred.flavor)
        if auth is None:
            reply = DeniedReply(xid, RejectStat.AUTH_ERROR, auth_stat=AuthStat.AUTH_BADCRED)
            return reply.encode()
        try:
            verdict = auth.check_call(call, conn, now)
        except Exception as exc:
            log.error("conn %d: xid %#x: flavor %d failed: %s", conn.conn_id, xid, call.cred.flavor, exc)
            return _accepted_error(xid, NULL_AUTH, AcceptStat.SYSTEM_ERR)
        if type(verdict) is not AuthAccept:
            return self._auth_verdict(call, conn, verdict)
        assert isinstance(verdict, AuthAccept)

        versions = self._programs.get(call.prog)
        if versions is None:
            return _accepted_error(xid, _error_verf(verdict), AcceptStat.PROG_UNAVAIL)
        procedures = versions.get(call.vers)
        if procedures is None:
            return _accepted_error(
                xid, _error_verf(verdict), AcceptStat.PROG_MISMATCH, self._ranges[call.prog]
            )
        proc = procedures.get(call.proc)
        if proc is None:
            return _accepted_error(xid, _error_verf(verdict), AcceptStat.PROC_UNAVAIL)
        ctx = CallContext(call, conn, verdict.principal, now, max_reply)
        try:
            result = proc(verdict.args, ctx)
        except Exception as exc:
            return _procedure_error(call, verdict, exc, self.log_limiter)
        if isinstance(result, bytes):
            return _seal_success(call, verdict, result, record_mark)
        if inspect.isawaitable(result):
            return PendingReply(call, verdict, result, self.log_limiter)
        if isinstance(result, bytearray | memoryview):
            return _seal_success(call, verdict, bytes(result), record_mark)
        return _procedure_error(
            call, verdict, TypeError(f"procedure returned {type(result).__name__}, not bytes")
        )

    @staticmethod
    def _auth_verdict(call: CallMessage, conn: ConnectionInfo, verdict: object) -> bytes | None:
        if isinstance(verdict, AuthControlReply):
            return wire.encode_success(call.xid, verdict.verf, verdict.results)
        if isinstance(verdict, AuthDeny):
            log.info("conn %d: xid %#x: %s %s", conn.conn_id, call.xid, verdict.stat.name, verdict.reason)
            return DeniedReply(call.xid, RejectStat.AUTH_ERROR, auth_stat=verdict.stat).encode()
        if isinstance(verdict, AuthGarbage):
            log.info("conn %d: xid %#x: garbage: %s", conn.conn_id, call.xid, verdict.reason)
            return _accepted_error(call.xid, verdict.verf, AcceptStat.GARBAGE_ARGS)
        if isinstance(verdict, AuthDrop):
            log.debug("conn %d: xid %#x: dropped: %s", conn.conn_id, call.xid, verdict.reason)
            return None
        log.error("conn %d: xid %#x: flavor returned %r", conn.conn_id, call.xid, verdict)
        return _accepted_error(call.xid, NULL_AUTH, AcceptStat.SYSTEM_ERR)


def _is_call(record: bytes | CallMessage) -> bool:
    """Whether a reassembled record is a call (msg_type CALL), whatever else is wrong with it."""
    if isinstance(record, CallMessage):
        return True
    return len(record) >= 8 and _II.unpack_from(record, 0)[1] == _CALL


class RpcServerConnection:
    """Server side of one record-marked stream (RFC 5531 §11).

    The shell feeds bytes to :meth:`receive_data` (``data`` may be a view of a reused buffer),
    awaits the :class:`PendingReply` objects it returns and hands their outcome to
    :meth:`finish`; it writes :meth:`data_to_send` (or :meth:`data_to_send_parts`), then reports
    what its transport still holds with :meth:`set_write_buffer` (after each write and before
    each timer), and drives :meth:`next_timer` / :meth:`handle_timer`. ``closed`` and
    ``close_reason`` are set on a record error, an idle timeout or a write timeout (flush, then
    close the transport; calls still waiting in the backlog are dropped); ``aborted`` is set by the
    write timeout (abort the transport, do not flush). :meth:`close` is the graceful close,
    :attr:`done` says when the transport may be closed, :meth:`connection_lost` ends it all.

    What one connection may hold (RFC 5531 §11 sets no limit, so the receiver does; a peer must not
    be able to make it unbounded):

    * input: the record being reassembled, at most ``max_record`` bytes plus one fragment header
      (:attr:`buffered_input`; see :class:`rpclatch.rpc.record.RecordReassembler`), then the
      calls of one read waiting in the :attr:`backlog`;
    * output: :attr:`unsent` = replies queued here plus what the transport holds. Calls are
      dispatched only while it is below ``max_output`` (:attr:`over_budget` tells the shell to
      stop reading), so beyond the budget there is at most the one reply being written;
    * time: while the transport holds unsent replies and ``write_timeout`` is set, the peer must
      take some of them every ``write_timeout`` seconds or the connection is aborted -- also after
      a close, so a close never waits forever for a peer that does not read. Otherwise, with
      ``idle_timeout``, a connection with no call in flight is closed ``idle_timeout`` seconds
      after its last activity: a complete call received, a reply finished, or all output taken by
      the peer. Bytes that do not complete a call (a trickle of empty fragments, a record growing
      byte by byte, records that are not calls) are no activity, so they cannot hold a connection
      slot.
    """

    def __init__(
        self,
        dispatcher: RpcDispatcher,
        conn: ConnectionInfo,
        *,
        max_record: int = DEFAULT_MAX_RECORD,
        max_fragment: int = MAX_FRAGMENT,
        idle_timeout: float | None = None,
        write_timeout: float | None = None,
        max_output: int = DEFAULT_MAX_OUTPUT,
        now: float = 0.0,
    ) -> None:
        self.dispatcher = dispatcher
        self.conn = conn
        self.max_fragment = max_fragment
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.max_output = max_output
        self._reassembler = RecordReassembler(max_record)
        self._backlog: deque[bytes | CallMessage] = deque()
        self._out: list[bytes] = []
        self._out_size = 0
        self._transport_buffered = 0  # reply bytes the transport holds (set_write_buffer)
        self._write_since = now  # since when those bytes wait without the peer taking any
        self._last_activity = now
        self._lost = False
        self.output_paused = False
        self.in_flight = 0
        self.closed = False
        self.aborted = False
        self.close_reason: str | None = None

    @property
    def backlog(self) -> int:
        """Calls received but not dispatched yet (output was paused or over ``max_output``)."""
        return len(self._backlog)

    @property
    def buffered_input(self) -> int:
        """Bytes held for a record not yet complete (at most ``max_record + 4``)."""
        return self._reassembler.buffered

    @property
    def unsent(self) -> int:
        """Reply bytes not taken by the peer yet: queued here plus held by the transport (as last
        reported with :meth:`set_write_buffer`)."""
        return self._out_size + self._transport_buffered

    @property
    def over_budget(self) -> bool:
        """At least ``max_output`` bytes of replies are unsent: no call is dispatched (and the
        shell reads none) until the peer takes some."""
        return self._out_size + self._transport_buffered >= self.max_output

    @property
    def done(self) -> bool:
        """Closed, and every call received before has been answered (or dropped): once
        :meth:`data_to_send` is written the transport may be closed."""
        return self.closed and not self.in_flight and not self._backlog

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> list[PendingReply]:
        """Feed bytes; replies that are ready are queued, awaitable ones are returned.

        Calls are dispatched only while less than ``max_output`` bytes of replies are unsent
        (:attr:`unsent`: queued in :meth:`data_to_send` or held by the transport) and output is
        not paused; the rest stay in :attr:`backlog` (the shell stops reading meanwhile) and go on
        with :meth:`dispatch_backlog`. So a client that pipelines calls with large results and
        never reads cannot make us buffer them all. Only a complete call counts as activity for
        the idle timeout: bytes that never finish one (a trickle of empty fragments, a record
        growing byte by byte) do not keep the connection.
        """
        if self.closed:
            return []
        try:
            records = self._reassembler.feed(data, wire.fast_call)
        except RecordError as exc:
            self._close(f"bad record marking: {exc}")
            return []
        if not records:
            return []
        if type(records[-1]) is CallMessage or any(map(_is_call, records)):
            self._last_activity = now
        self._backlog.extend(records)
        return self.dispatch_backlog(now)

    def dispatch_backlog(self, now: float) -> list[PendingReply]:
        """Dispatch waiting calls while output allows; return the awaitable ones."""
        pending: list[PendingReply] = []
        backlog = self._backlog
        conn = self.conn
        out = self._out
        limit = self.max_output - self._transport_buffered
        marked = self.max_fragment >= MAX_FRAGMENT  # every reply fits one fragment
        dispatch_marked = self.dispatcher.dispatch_marked
        dispatch_call = self.dispatcher.dispatch_call_marked
        # Not stopped by a graceful close(): calls received before it are answered. Error closes
        # and connection_lost() empty the backlog.
        while backlog and self._out_size < limit and not self.output_paused:
            item = backlog.popleft()
            if marked:
                if type(item) is bytes:
                    parts = dispatch_marked(item, conn, now)
                else:
                    assert isinstance(item, CallMessage)
                    parts = dispatch_call(item, conn, now)
                if type(parts) is tuple:
                    out.append(parts[0])
                    self._out_size += len(parts[0]) + len(parts[1])
                    if parts[1]:
                        out.append(parts[1])
                    continue
                reply: bytes | PendingReply | None = parts  # type: ignore[assignment]
            else:
                record = item.encode() if isinstance(item, CallMessage) else item  # small fragments only
                reply = self.dispatcher.dispatch(record, conn, now)
                if type(reply) is bytes:
                    self._queue(reply)
                    continue
            if reply is not None:
                assert isinstance(reply, PendingReply)
                self.in_flight += 1
                pending.append(reply)
        return pending

    def pause_output(self) -> None:
        """The transport cannot take more for now: dispatch nothing until :meth:`resume_output`."""
        self.output_paused = True

    def resume_output(self, now: float) -> list[PendingReply]:
        """The transport drained: go on with the backlog."""
        self.output_paused = False
        return self.dispatch_backlog(now)

    def set_write_buffer(self, nbytes: int, now: float) -> None:
        """The shell reports that its transport holds ``nbytes`` reply bytes not yet taken by the
        peer (asyncio: ``transport.get_write_buffer_size()``). They count in :attr:`unsent`; while
        there are some, the write timeout runs from the last time the peer took any (or from when
        output began to wait); the peer taking all of them is activity for the idle timeout."""
        old = self._transport_buffered
        if nbytes < old or not old:
            self._write_since = now
            if old and not nbytes:
                self._last_activity = max(self._last_activity, now)
        self._transport_buffered = nbytes

    def finish(self, pending: PendingReply, outcome: bytes | BaseException, now: float | None = None) -> None:
        """Queue the reply to an awaited call: ``outcome`` is its results or its exception."""
        self.in_flight -= 1
        if now is not None:
            self._last_activity = now
        if self._lost:
            return
        if isinstance(outcome, BaseException):
            self._queue(pending.fail(outcome))
        else:
            reply = pending.complete(outcome)
            if reply is not None:
                self._queue(reply)

    def _queue(self, message: bytes) -> None:
        n = len(message)
        self._out_size += n + 4
        if n <= self.max_fragment:
            self._out.append(_pack_header(LAST_FRAGMENT | n))
            self._out.append(message)
        else:
            self._out.append(encode_record(message, self.max_fragment))

    def data_to_send(self) -> bytes:
        """Reply bytes to write now (then report the transport's buffer: :meth:`set_write_buffer`)."""
        out = self._out
        self._out_size = 0
        if not out:
            return b""
        data = b"".join(out)
        out.clear()
        return data

    def data_to_send_parts(self) -> list[bytes]:
        """:meth:`data_to_send` as a list of buffers to write in order: small pieces are joined,
        large result buffers are passed through uncopied."""
        out = self._out
        self._out = []
        self._out_size = 0
        return coalesce(out)

    def next_timer(self) -> float | None:
        """The next deadline, or None. While the transport holds unsent replies and there is a
        ``write_timeout``: the write deadline (also after a close -- a close never waits forever
        for a peer that does not read). Otherwise the idle deadline, when there is an
        ``idle_timeout``, no call is in flight and the connection is open."""
        if self._transport_buffered and self.write_timeout is not None and not self._lost:
            return self._write_since + self.write_timeout
        if self.idle_timeout is None or self.in_flight or self.closed:
            return None
        return self._last_activity + self.idle_timeout

    def handle_timer(self, now: float) -> None:
        """Act on the deadline of :meth:`next_timer` if ``now`` is past it: a stalled write
        aborts the connection (:attr:`aborted`: the shell aborts the transport, unsent replies
        are discarded), an idle connection is closed (:attr:`closed`)."""
        deadline = self.next_timer()
        if deadline is None or now < deadline:
            return
        if self._transport_buffered and self.write_timeout is not None:
            self._abort(
                f"the peer took no reply bytes for {self.write_timeout:g} s "
                f"({self._transport_buffered} bytes unsent)"
            )
            return
        state = "inside a partial record" if self._reassembler.in_record else "between records"
        self._close(f"idle for {self.idle_timeout:g} s {state}")

    def _abort(self, reason: str) -> None:
        self.aborted = True
        if self.closed:
            log.warning("aborting connection %d from %s: %s", self.conn.conn_id, self.conn.peer, reason)
        self._close(f"{reason}; aborting")

    def _close(self, reason: str, level: int = logging.WARNING, *, drop_backlog: bool = True) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = reason
            log.log(level, "closing connection %d from %s: %s", self.conn.conn_id, self.conn.peer, reason)
        if drop_backlog and self._backlog:
            log.log(
                level,
                "connection %d: %d received calls dropped unanswered",
                self.conn.conn_id,
                len(self._backlog),
            )
            self._backlog.clear()

    def close(self, reason: str = "server closing") -> None:
        """Graceful close: take no new calls (bytes received from now on are ignored), but answer
        every call already received -- the backlog is still dispatched, replies to calls in flight
        still queued. :attr:`done` tells when all of them are answered."""
        self._close(reason, logging.INFO, drop_backlog=False)

    def connection_lost(self) -> None:
        """The transport is gone: forget it in every flavor (once)."""
        if not self._lost:
            self._lost = True
            self.closed = True
            self._backlog.clear()
            self.dispatcher.connection_closed(self.conn)
