"""ONC RPC over simulated streams: :mod:`rpclatch.rpc`'s sans-IO client and server, driven by the
virtual clock.

:class:`SimRpcClient` wraps one :class:`StreamConnection` with an
:class:`rpclatch.rpc.client.RpcClientConnection`; :meth:`SimRpcClient.call` is synchronous: it runs
the network's scheduler until the reply (or failure) arrives, which is deterministic and instant in
wall-clock terms. :class:`SimRpcServer` accepts connections on a :class:`Listener` and runs an
:class:`rpclatch.rpc.server.RpcServerConnection` per connection, with
``ConnectionInfo.channel`` set to the connection's latched channel (RFC 5403 §3 binds to it) and
the transport name ``"sim"``.

Latch breaks reach the RPC layer as the stream does: with the RFC 5660 §5.5 (b) default
disposition the stream resets, every outstanding call fails with ``RpcConnectionClosed`` and
:class:`SimConnectionReset` is raised by :meth:`SimRpcClient.call`. With disposition (c) the stream
stays open but carries a soft error (an ICMP destination unreachable, RFC 1122 §4.2.3.9): a call
that times out while it is pending fails with :class:`SimDestinationUnreachable` (an
``RpcTimeout`` naming the soft error, as TCP reports a pending soft error instead of a bare
ETIMEDOUT); once the latch is ESTABLISHED again the error clears and calls go through.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from rpclatch.netsim.clock import Scheduler, Timer
from rpclatch.netsim.errors import SimLocalError
from rpclatch.netsim.host import Host, Listener
from rpclatch.netsim.stream import StreamConnection, StreamEvent, StreamEventKind, StreamState
from rpclatch.rpc.auth import ClientAuth, ConnectionInfo
from rpclatch.rpc.client import (
    CallCompleted,
    CallFailed,
    CallHandle,
    ConnectionFailed,
    Event,
    RpcClientConnection,
)
from rpclatch.rpc.errors import RpcConnectionClosed, RpcError, RpcTimeout
from rpclatch.rpc.server import PendingReply, RpcDispatcher, RpcServerConnection

log = logging.getLogger(__name__)


_ENDED = {
    StreamEventKind.RESET,
    StreamEventKind.TIMEOUT,
    StreamEventKind.CLOSED,
    StreamEventKind.REFUSED,
    StreamEventKind.FAILED,
}


#: a stream waiting for its latch is still CLOSED (no SYN yet): buffer calls until CONNECTED
_NOT_YET_OPEN = {StreamState.CLOSED, StreamState.LISTEN}


class SimConnectionReset(SimLocalError):
    """The RPC transport was reset (peer RST, or a latch break acting as reset, RFC 5660 §5.5 (b))."""


class SimDestinationUnreachable(SimLocalError, RpcTimeout):
    """A call timed out while the stream held a soft error: its latch is BROKEN with the RFC 5660
    §5.5 (c) disposition (act as if an ICMP destination unreachable arrived). Still an
    :class:`RpcTimeout`, so callers that retry on timeouts keep doing so."""


class SimRpcClient:
    """RPC client over one simulated stream (create it right after ``host.connect``)."""

    def __init__(
        self, conn: StreamConnection, auth: ClientAuth | None = None, default_timeout: float = 30.0
    ) -> None:
        self.conn = conn
        self.scheduler: Scheduler = conn.host.scheduler
        self.conn_id = _next_conn_id(conn)
        self.rpc = RpcClientConnection(auth, default_timeout, first_xid=self.scheduler.rng.getrandbits(32))
        self.results: dict[int, bytes | RpcError] = {}
        self._timer: Timer | None = None
        self.ended: StreamEventKind | None = None
        self.end_reason: str | None = None
        self._on_end: list[Callable[[StreamEventKind, str], None]] = []
        self._unsent = bytearray()  # calls made before the stream opened (latch still LARVAL)
        conn.on_event = self._on_stream_event

    # -- API ---------------------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self.ended is None and self.conn.is_open

    def on_end(self, callback: Callable[[StreamEventKind, str], None]) -> None:
        """``callback(kind, reason)`` when the stream ends (reset, timeout, close)."""
        self._on_end.append(callback)

    def start_call(
        self,
        prog: int,
        vers: int,
        proc: int,
        args: bytes,
        auth: ClientAuth | None = None,
        timeout: float | None = None,
    ) -> CallHandle:
        """Queue a call; its outcome lands in ``self.results[handle.xid]``."""
        if self.ended is not None:
            raise SimConnectionReset(f"connection ended ({self.ended.value}: {self.end_reason})")
        handle = self.rpc.send_call(prog, vers, proc, args, auth, self.scheduler.now, timeout)
        self._flush()
        return handle

    def call(
        self,
        prog: int,
        vers: int,
        proc: int,
        args: bytes,
        auth: ClientAuth | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """One synchronous call: runs the simulation until the reply. Raises the call's
        :class:`RpcError`, or :class:`SimConnectionReset` if the stream was reset meanwhile."""
        handle = self.start_call(prog, vers, proc, args, auth, timeout)
        limit = (timeout if timeout is not None else self.rpc.default_timeout) + 1.0
        self.scheduler.run_until_true(lambda: handle.done or handle.xid in self.results, limit)
        outcome = self.results.pop(handle.xid, None)
        if outcome is None:
            raise RpcConnectionClosed("no outcome for the call (simulation ran out of events)")
        if isinstance(outcome, RpcError):
            if self.ended in (StreamEventKind.RESET, StreamEventKind.TIMEOUT) and isinstance(
                outcome, RpcConnectionClosed
            ):
                raise SimConnectionReset(f"connection {self.ended.value}: {self.end_reason}") from outcome
            raise outcome
        return outcome

    def close(self) -> None:
        self.conn.close()

    def reset(self, reason: str = "application abort") -> None:
        self.conn.abort()
        self._ended(StreamEventKind.RESET, reason)

    # -- plumbing ----------------------------------------------------------------------------------
    def _flush(self) -> None:
        self._unsent += self.rpc.data_to_send()
        if self._unsent and self.ended is None and self.conn.state not in _NOT_YET_OPEN:
            data, self._unsent = bytes(self._unsent), bytearray()
            self.conn.send(data)
        self._arm_timer()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.rpc.next_timer()
        if when is not None:
            self._timer = self.scheduler.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._handle(self.rpc.handle_timer(self.scheduler.now))
        self._arm_timer()

    def _handle(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, CallCompleted):
                self.results[ev.handle.xid] = ev.result
            elif isinstance(ev, CallFailed):
                soft = self.conn.soft_error
                if soft is not None and isinstance(ev.error, RpcTimeout):  # RFC 1122 §4.2.3.9
                    error: RpcError = SimDestinationUnreachable(f"{ev.error}; {soft}")
                    error.__cause__ = ev.error
                    self.results[ev.handle.xid] = error
                else:
                    self.results[ev.handle.xid] = ev.error
            elif isinstance(ev, ConnectionFailed):
                log.warning("conn %d: RPC stream unusable: %s", self.conn_id, ev.error)
                self.conn.abort()

    def _on_stream_event(self, conn: StreamConnection, ev: StreamEvent) -> None:
        if ev.kind is StreamEventKind.CONNECTED:
            self._flush()
        elif ev.kind is StreamEventKind.DATA:
            data = bytes(conn.received)
            conn.received.clear()
            self._handle(self.rpc.receive_data(data))
            self._flush()
        elif ev.kind is StreamEventKind.EOF:
            self._ended(StreamEventKind.CLOSED, "server closed the connection")
            conn.close()
        elif ev.kind in _ENDED:
            self._ended(ev.kind, str(ev.detail))

    def _ended(self, kind: StreamEventKind, reason: str) -> None:
        if self.ended is not None:
            return
        self.ended = kind
        self.end_reason = reason
        self._handle(self.rpc.connection_lost(RpcConnectionClosed(f"connection {kind.value}: {reason}")))
        for cb in self._on_end:
            cb(kind, reason)


class SimRpcServer:
    """Serves an :class:`RpcDispatcher` on every connection a listener accepts."""

    def __init__(
        self,
        listener: Listener,
        dispatcher: RpcDispatcher,
        channel_of: Callable[[StreamConnection], Any] | None = None,
    ) -> None:
        self.listener = listener
        self.dispatcher = dispatcher
        self.channel_of = channel_of or (lambda conn: conn.channel)
        self.connections: list[tuple[StreamConnection, RpcServerConnection]] = []
        previous = listener.on_accept

        def accept(conn: StreamConnection) -> None:
            if previous is not None:
                previous(conn)
            self._accept(conn)

        listener.on_accept = accept

    def _accept(self, conn: StreamConnection) -> None:
        info = ConnectionInfo(
            _next_conn_id(conn),
            (str(conn.flow.remote_addr), conn.flow.remote_port),
            "sim",
            channel=self.channel_of(conn),
        )
        server = RpcServerConnection(self.dispatcher, info, now=conn.host.scheduler.now)
        self.connections.append((conn, server))
        conn.on_event = lambda c, ev: self._on_event(c, server, ev)

    def _on_event(self, conn: StreamConnection, server: RpcServerConnection, ev: StreamEvent) -> None:
        now = conn.host.scheduler.now
        if ev.kind is StreamEventKind.CONNECTED:
            # the latch is final once the handshake completes: refresh the channel
            server.conn.channel = self.channel_of(conn)
        elif ev.kind is StreamEventKind.DATA:
            data = bytes(conn.received)
            conn.received.clear()
            for pending in server.receive_data(data, now):
                server.finish(pending, _run_sync(pending), now)
            out = server.data_to_send()
            if out and conn.is_open:
                conn.send(out)
            if server.closed:
                conn.close()
        elif ev.kind is StreamEventKind.EOF:
            conn.close()
        elif ev.kind in _ENDED:
            server.connection_lost()


def _next_conn_id(conn: StreamConnection) -> int:
    host = conn.host
    if not isinstance(host, Host):
        raise SimLocalError("RPC over a stream whose host is not a simulated Host")
    return host.next_conn_id()


def _run_sync(pending: PendingReply) -> bytes | BaseException:
    """Run an awaitable procedure that completes without suspending (no event loop in the sim)."""
    aw = pending.awaitable
    if not isinstance(aw, Coroutine):
        return SimLocalError("awaitable procedures other than coroutines need an asyncio shell")
    try:
        aw.send(None)
    except StopIteration as stop:
        return stop.value if isinstance(stop.value, bytes) else SimLocalError("procedure returned non-bytes")
    except Exception as exc:  # the procedure's own failure -> SYSTEM_ERR reply
        return exc
    aw.close()
    return SimLocalError("procedure suspended; the simulation has no event loop")
