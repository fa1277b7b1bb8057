"""ONC RPC v2 server: program registry, call dispatch and per-connection state, sans-IO
(RFC 5531 §9, §11).

API
---
``Procedure = Callable[[bytes, CallContext], bytes | Awaitable[bytes]]``: takes the (unwrapped)
XDR argument bytes and a :class:`CallContext`, returns the XDR result bytes — or an awaitable of
them (a coroutine procedure; the asyncio shell awaits it). Raise
:class:`rpclatch.rpc.errors.GarbageArgs` (or let an :class:`rpclatch.xdr.XdrError` escape) for
GARBAGE_ARGS; any other exception becomes SYSTEM_ERR and is logged.

``RpcDispatcher(flavors=None)`` (None = AUTH_NONE + AUTH_SYS):

* ``add_flavor(auth: ServerAuth)``: register a server flavor under ``auth.flavor`` (replaces).
* ``add_program(prog, vers, procedures: Mapping[int, Procedure])``, ``remove_program(prog,
  vers=None)``, ``programs() -> list[tuple[int, int]]``.
* ``dispatch(record, conn: ConnectionInfo, now) -> bytes | PendingReply | None``: one whole RPC
  message in; out comes the reply message (not record-marked), or a :class:`PendingReply` when the
  procedure returned an awaitable (await ``pending.awaitable`` then call ``pending.complete(result)``
  or ``pending.fail(exc)`` to get the reply bytes), or None when no reply is to be sent
  (``AuthDrop``, or a record that is not a call).
* ``dispatch_marked(record, conn, now)`` / ``dispatch_call_marked(call, conn, now)``: the same for
  stream transports, returning the reply as record-marked parts ``(header, results)`` so large
  results are never copied behind a header (used by :class:`RpcServerConnection`).
* ``connection_closed(conn)``: tell every flavor the transport went away.

Order of checks: rpcvers != 2 -> MSG_DENIED/RPC_MISMATCH(2, 2); unknown credential flavor ->
AUTH_ERROR/AUTH_BADCRED (as the Linux kernel does; RFC 5531 leaves the choice open); the flavor's
verdict (``AuthDeny`` -> AUTH_ERROR with its stat, ``AuthDrop`` -> no reply, ``AuthGarbage`` ->
GARBAGE_ARGS, ``AuthControlReply`` -> SUCCESS with its verifier and results); then program ->
PROG_UNAVAIL, version -> PROG_MISMATCH(lowest, highest registered), procedure -> PROC_UNAVAIL;
then the procedure (GARBAGE_ARGS / SYSTEM_ERR / SUCCESS with ``AuthAccept.seal(results)``). A record whose
call header does not decode is answered GARBAGE_ARGS when its xid and msg_type CALL are readable.
If ``seal`` raises (RPCSEC_GSS: GSS_GetMIC of integrity results or GSS_Wrap of privacy results
failed) the call gets **no reply** and an error is logged, as RFC 2203 §5.3.3.4.1 and §5.3.3.4.4
require: results the flavor could not protect are not sent, and neither is a SYSTEM_ERR the
client could not verify. ``dispatch`` then returns None and ``PendingReply.complete`` None.

``RpcServerConnection(dispatcher, conn, *, max_record=DEFAULT_MAX_RECORD, max_fragment=MAX_FRAGMENT,
idle_timeout=None, now=0.0)`` — one record-marked stream: ``receive_data(data, now) ->
list[PendingReply]`` (``data`` may be a view of a reused buffer; immediate replies are queued;
pending ones are for the shell to await, then ``finish(pending, result_or_exception, now)``),
``data_to_send() -> bytes`` (or ``data_to_send_parts() -> list[bytes]``, large results uncopied),
``next_timer()`` / ``handle_timer(now)``
(idle timeout: no bytes received and no call in flight for ``idle_timeout`` seconds),
``closed`` / ``close_reason`` (set on a record error or idle timeout: flush, then close the
transport; calls still waiting in the backlog are dropped), ``close(reason)`` (graceful: bytes
received afterwards are ignored, but every call already received -- in the backlog or in flight --
is still dispatched and answered), ``done`` (closed and nothing left to answer: write what
:meth:`data_to_send` has, then close the transport), ``in_flight``, ``connection_lost()`` (calls
``dispatcher.connection_closed`` once; nothing is dispatched afterwards).

For datagrams there is no connection object: call ``dispatcher.dispatch(datagram, conn, now)`` and
send the returned bytes back to the peer.
"""

from __future__ import annotations

import inspect
import logging
import struct
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
from rpclatch.rpc.errors import GarbageArgs
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
#: Replies a connection may produce before the transport has taken them (see receive_data).
DEFAULT_MAX_OUTPUT = 1024 * 1024


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a procedure knows about its call: the message, the transport, the authenticated
    principal (None for AUTH_NONE) and the time the call was dispatched."""

    call: CallMessage
    conn: ConnectionInfo
    principal: str | None
    now: float

    @property
    def flavor(self) -> int:
        return self.call.cred.flavor


Procedure = Callable[[bytes, CallContext], "bytes | Awaitable[bytes]"]


def _accepted_error(xid: int, verf: OpaqueAuth, stat: AcceptStat,
                    mismatch: tuple[int, int] | None = None) -> bytes:
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

    __slots__ = ("accept", "awaitable", "call")

    def __init__(self, call: CallMessage, accept: AuthAccept, awaitable: Awaitable[bytes]) -> None:
        self.call = call
        self.accept = accept
        self.awaitable = awaitable

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
        return _procedure_error(self.call, self.accept, exc)


#: A reply as record-marked parts to write in order (fragment header + RPC header, then results).
ReplyParts = tuple[bytes, bytes]


def _seal_success(call: CallMessage, accept: AuthAccept, results: bytes,
                  record_mark: bool) -> bytes | ReplyParts | None:
    try:
        verf, sealed = accept.seal(results)
    except Exception as exc:
        # RFC 2203 §5.3.3.4.1 (GSS_GetMIC over the results), §5.3.3.4.4 (GSS_Wrap): no reply.
        log.error("xid %#x: %d/%d/%d: the flavor could not seal the results (%s: %s); sending no "
                  "reply", call.xid, call.prog, call.vers, call.proc, type(exc).__name__, exc)
        return None
    if record_mark:
        return wire.encode_success_marked(call.xid, verf, sealed)
    return wire.encode_success(call.xid, verf, sealed)


def _procedure_error(call: CallMessage, accept: AuthAccept, exc: BaseException) -> bytes:
    if isinstance(exc, GarbageArgs | XdrError):
        log.info("xid %#x: %d/%d/%d: garbage arguments: %s", call.xid, call.prog, call.vers,
                 call.proc, exc)
        return _accepted_error(call.xid, _error_verf(accept), AcceptStat.GARBAGE_ARGS)
    log.error("xid %#x: procedure %d/%d/%d raised %s: %s", call.xid, call.prog, call.vers, call.proc,
              type(exc).__name__, exc)
    return _accepted_error(call.xid, _error_verf(accept), AcceptStat.SYSTEM_ERR)


class RpcDispatcher:
    """Program/version/procedure registry and call dispatch (RFC 5531 §9). See the module doc."""

    def __init__(self, flavors: Iterable[ServerAuth] | None = None) -> None:
        self._flavors: dict[int, ServerAuth] = {}
        for auth in flavors if flavors is not None else (AuthNoneServer(), AuthSysServer()):
            self.add_flavor(auth)
        self._programs: dict[int, dict[int, dict[int, Procedure]]] = {}
        self._ranges: dict[int, tuple[int, int]] = {}

    # -- registry ---------------------------------------------------------------------------

    def add_flavor(self, auth: ServerAuth) -> None:
        """Accept credentials of ``auth.flavor``, checked by ``auth``."""
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

    def dispatch(self, record: bytes, conn: ConnectionInfo, now: float) -> bytes | PendingReply | None:
        """Handle one RPC message; return the reply message, a :class:`PendingReply`, or None."""
        reply = self._dispatch(record, conn, now, False)
        assert not isinstance(reply, tuple)
        return reply

    def dispatch_marked(self, record: bytes, conn: ConnectionInfo,
                        now: float) -> ReplyParts | PendingReply | None:
        """:meth:`dispatch` for streams: the reply comes as record-marked parts (one fragment), so
        large results are written without being copied behind a header."""
        reply = self._dispatch(record, conn, now, True)
        if type(reply) is bytes:
            return _mark(reply), b""
        return reply  # type: ignore[return-value]

    def _dispatch(self, record: bytes, conn: ConnectionInfo, now: float,
                  record_mark: bool) -> bytes | ReplyParts | PendingReply | None:
        """The reply; only a SUCCESS reply comes record-marked (as parts) when ``record_mark``."""
        n = len(record)
        if n < 8:
            log.warning("conn %d: dropping a %d-byte record (no RPC header)", conn.conn_id, n)
            return None
        if n >= 12:
            xid, mtype, rpcvers = _III.unpack_from(record, 0)
        else:
            (xid, mtype), rpcvers = _II.unpack_from(record, 0), RPC_VERSION
        if mtype != _CALL:
            log.warning("conn %d: dropping xid %#x: msg_type %d is not CALL", conn.conn_id, xid, mtype)
            return None
        if rpcvers != RPC_VERSION:
            return DeniedReply(xid, RejectStat.RPC_MISMATCH, (RPC_VERSION, RPC_VERSION)).encode()
        try:
            call = wire.decode_call_body(record)
        except XdrError as exc:
            log.warning("conn %d: xid %#x: malformed call header: %s", conn.conn_id, xid, exc)
            return _accepted_error(xid, NULL_AUTH, AcceptStat.GARBAGE_ARGS)
        return self._dispatch_call(call, conn, now, record_mark)

    def dispatch_call_marked(self, call: CallMessage, conn: ConnectionInfo,
                             now: float) -> ReplyParts | PendingReply | None:
        """:meth:`dispatch_marked` for a call already decoded (RPC version 2) from the stream."""
        reply = self._dispatch_call(call, conn, now, True)
        if type(reply) is bytes:
            return _mark(reply), b""
        return reply  # type: ignore[return-value]

    def _dispatch_call(self, call: CallMessage, conn: ConnectionInfo, now: float,
                       record_mark: bool) -> bytes | ReplyParts | PendingReply | None:
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
            return _accepted_error(xid, _error_verf(verdict), AcceptStat.PROG_MISMATCH,
                                   self._ranges[call.prog])
        proc = procedures.get(call.proc)
        if proc is None:
            return _accepted_error(xid, _error_verf(verdict), AcceptStat.PROC_UNAVAIL)
        ctx = CallContext(call, conn, verdict.principal, now)
        try:
            result = proc(verdict.args, ctx)
        except Exception as exc:
            return _procedure_error(call, verdict, exc)
        if isinstance(result, bytes):
            return _seal_success(call, verdict, result, record_mark)
        if inspect.isawaitable(result):
            return PendingReply(call, verdict, result)
        if isinstance(result, bytearray | memoryview):
            return _seal_success(call, verdict, bytes(result), record_mark)
        return _procedure_error(call, verdict, TypeError(
            f"procedure returned {type(result).__name__}, not bytes"))

    @staticmethod
    def _auth_verdict(call: CallMessage, conn: ConnectionInfo,
                      verdict: object) -> bytes | None:
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


class RpcServerConnection:
    """Server side of one record-marked stream (RFC 5531 §11). See the module docstring."""

    def __init__(self, dispatcher: RpcDispatcher, conn: ConnectionInfo, *,
                 max_record: int = DEFAULT_MAX_RECORD, max_fragment: int = MAX_FRAGMENT,
                 idle_timeout: float | None = None, max_output: int = DEFAULT_MAX_OUTPUT,
                 now: float = 0.0) -> None:
        self.dispatcher = dispatcher
        self.conn = conn
        self.max_fragment = max_fragment
        self.idle_timeout = idle_timeout
        self.max_output = max_output
        self._reassembler = RecordReassembler(max_record)
        self._backlog: deque[bytes | CallMessage] = deque()
        self._out: list[bytes] = []
        self._out_size = 0
        self._last_activity = now
        self._lost = False
        self.output_paused = False
        self.in_flight = 0
        self.closed = False
        self.close_reason: str | None = None

    @property
    def backlog(self) -> int:
        """Calls received but not dispatched yet (output was paused or over ``max_output``)."""
        return len(self._backlog)

    @property
    def done(self) -> bool:
        """Closed, and every call received before has been answered (or dropped): once
        :meth:`data_to_send` is written the transport may be closed."""
        return self.closed and not self.in_flight and not self._backlog

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> list[PendingReply]:
        """Feed bytes; replies that are ready are queued, awaitable ones are returned.

        Calls are dispatched only while less than ``max_output`` bytes of replies wait in
        :meth:`data_to_send` and output is not paused; the rest stay in :attr:`backlog` (the
        shell stops reading meanwhile) and go on with :meth:`dispatch_backlog`. So a client
        that pipelines calls with large results and never reads cannot make us buffer them all.
        """
        if self.closed:
            return []
        self._last_activity = now
        try:
            records = self._reassembler.feed(data, wire.fast_call)
        except RecordError as exc:
            self._close(f"bad record marking: {exc}")
            return []
        if not records:
            return []
        self._backlog.extend(records)
        return self.dispatch_backlog(now)

    def dispatch_backlog(self, now: float) -> list[PendingReply]:
        """Dispatch waiting calls while output allows; return the awaitable ones."""
        pending: list[PendingReply] = []
        backlog = self._backlog
        conn = self.conn
        out = self._out
        limit = self.max_output
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
        """Reply bytes to write now."""
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
        """The idle deadline (None when there is no idle timeout, a call is in flight or closed)."""
        if self.idle_timeout is None or self.in_flight or self.closed:
            return None
        return self._last_activity + self.idle_timeout

    def handle_timer(self, now: float) -> None:
        deadline = self.next_timer()
        if deadline is not None and now >= deadline:
            state = "inside a partial record" if self._reassembler.in_record else "between records"
            self._close(f"idle for {self.idle_timeout:g} s {state}")

    def _close(self, reason: str, level: int = logging.WARNING, *, drop_backlog: bool = True) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = reason
            log.log(level, "closing connection %d from %s: %s", self.conn.conn_id, self.conn.peer, reason)
        if drop_backlog and self._backlog:
            log.log(level, "connection %d: %d received calls dropped unanswered", self.conn.conn_id,
                    len(self._backlog))
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
