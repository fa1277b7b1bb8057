"""asyncio shells around the sans-IO RPC client and server (RFC 5531 §11 over TCP, §9 over UDP).

These adapters only move bytes and time between asyncio transports and the protocol objects in
:mod:`rpclatch.rpc.client` and :mod:`rpclatch.rpc.server`, where all protocol logic lives; what
they add is socket handling, one loop timer per connection, gathered writes and read backpressure.
:class:`RpcStreamClient` (TCP, unix-domain) and :class:`RpcUdpClient` are the clients,
:class:`RpcServer` the server. rpcbind, gss, nfs4 and the commands use them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import stat
import struct
import threading
from collections.abc import Callable
from typing import Any, Self, cast

from rpclatch.rpc.auth import ClientAuth, ConnectionInfo
from rpclatch.rpc.client import (
    CallCompleted,
    CallFailed,
    CallHandle,
    ConnectionFailed,
    Event,
    RpcClientConnection,
    RpcDatagramClient,
)
from rpclatch.rpc.errors import RpcConnectionClosed, RpcError, RpcLocalError
from rpclatch.rpc.messages import AcceptedReply, AcceptStat
from rpclatch.rpc.record import DEFAULT_MAX_RECORD
from rpclatch.rpc.server import (
    DEFAULT_MAX_OUTPUT,
    LogLimiter,
    PendingReply,
    RpcDispatcher,
    RpcServerConnection,
)

log = logging.getLogger(__name__)

_conn_ids = itertools.count(1)
_INF = float("inf")


def _deliver(events: list[Event]) -> None:
    for ev in events:
        if type(ev) is CallCompleted:
            handle = ev.handle
            fut = handle.context
            handle.context = None  # the handle may outlive the call in the timer heap
            if fut is not None and not fut.done():  # done: the caller gave up (cancelled)
                fut.set_result(ev.result)
        elif type(ev) is CallFailed:
            handle = ev.handle
            fut = handle.context
            handle.context = None
            if fut is not None and not fut.done():
                fut.set_exception(ev.error)


class _TimerMixin:
    """One loop timer following a sans-IO object's ``next_timer()``."""

    _loop: asyncio.AbstractEventLoop
    _timer: asyncio.TimerHandle | None
    _timer_when: float

    def _next_timer(self) -> float | None:
        raise NotImplementedError

    def _on_timer(self) -> None:
        raise NotImplementedError

    def _arm(self, when: float | None = None) -> None:
        if when is None:
            when = self._next_timer()
            if when is None:
                return
        if self._timer is not None:
            if self._timer_when <= when:
                return  # fires earlier: it will re-arm for ``when``
            self._timer.cancel()
        self._timer_when = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._on_timer()
        self._arm()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


#: Largest UDP payload over IPv4 (65535 - 20 - 8).
MAX_UDP_REPLY = 65507

#: Messages up to this size are gathered into the reusable send buffer and written with one send.
SEND_GATHER_MAX = 4 * 1024 * 1024 + 64 * 1024


def _write(transport: asyncio.WriteTransport, parts: list[bytes]) -> None:
    """Write ``parts`` with one ``send``: several parts are gathered into a per-thread buffer that
    is reused call after call (asyncio's selector socket transport sends or copies the data before
    ``write`` returns; other transports get a joined copy), so a
    large payload costs one copy and no allocation, and goes out as one TCP segment train instead
    of a small header segment followed by the payload."""
    if len(parts) == 1:
        transport.write(parts[0])
        return
    if not parts:
        return
    total = sum(map(len, parts))
    if type(transport).__module__ != "asyncio.selector_events":
        # Other transports (TLS, proactor, uvloop) may keep a reference to what they are given
        # instead of sending or copying it at once: no shared buffer for them.
        transport.write(b"".join(parts))
        return
    if not transport.get_write_buffer_size() and not transport.is_closing():
        # Nothing queued in the transport, so ordering is kept if we write straight to the socket:
        # one writev(2) sends header and payload without copying them together (what 3.12's
        # writelines does with sendmsg). Whatever the kernel does not take goes through the
        # transport, which buffers it and waits for the socket to become writable.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sent = os.writev(sock.fileno(), parts)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = -1  # let the transport meet the error and report it its own way
            if sent == total:
                return
            if sent >= 0:
                transport.write(memoryview(b"".join(parts))[sent:])
                return
    if total > SEND_GATHER_MAX:
        for part in parts:
            transport.write(part)
        return
    buf: memoryview | None = getattr(_local, "send", None)
    if buf is None or len(buf) < total:
        buf = _local.send = memoryview(bytearray(max(total, 64 * 1024)))
    pos = 0
    for part in parts:
        n = len(part)
        buf[pos : pos + n] = part
        pos += n
    transport.write(buf[:total])


# --------------------------------------------------------------------------------------------
# clients


#: Size of the receive buffer asyncio reads into (recv_into), so that no read allocates.
RECV_BUFFER = 256 * 1024
_local = threading.local()


def _recv_buffer() -> memoryview:
    """The receive buffer shared by every stream connection of this thread's event loop.

    Sharing is safe: asyncio calls ``get_buffer``, reads, then ``buffer_updated`` in one go, and the
    sans-IO objects copy out whatever they keep before ``buffer_updated`` returns. So a thousand idle
    connections cost one buffer, not a thousand.
    """
    buf: memoryview | None = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(RECV_BUFFER))
    return buf


class _ClientBase:
    """What the stream and UDP clients share: ``call``, ``close`` and the async context manager."""

    transport: asyncio.BaseTransport
    _protocol: _StreamClientProtocol | _DatagramClientProtocol

    def call_nowait(
        self,
        prog: int,
        vers: int,
        proc: int,
        args: bytes = b"",
        *,
        auth: ClientAuth | None = None,
        timeout: float | None = None,
    ) -> asyncio.Future[bytes]:
        raise NotImplementedError

    async def call(
        self,
        prog: int,
        vers: int,
        proc: int,
        args: bytes = b"",
        *,
        auth: ClientAuth | None = None,
        timeout: float | None = None,
    ) -> bytes:
        """Make one call and return its (unwrapped) result bytes."""
        return await self.call_nowait(prog, vers, proc, args, auth=auth, timeout=timeout)

    async def close(self) -> None:
        """Close the connection or socket; outstanding calls fail with RpcConnectionClosed."""
        if not self.transport.is_closing():
            self.transport.close()
        await self._protocol.lost

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _StreamClientProtocol(asyncio.BufferedProtocol, _TimerMixin):
    def __init__(self, conn: RpcClientConnection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self._recv = _recv_buffer()
        self._loop = loop
        self._timer = None
        self._timer_when = 0.0
        self.transport: asyncio.Transport | None = None
        self.lost = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._recv

    def buffer_updated(self, nbytes: int) -> None:
        conn = self.conn
        events = conn.receive_data(self._recv[:nbytes])
        if events:
            _deliver(events)
        if conn.wants_write and self.transport is not None:  # calls resent after an auth refresh
            _write(self.transport, conn.data_to_send_parts())
        if events and type(events[-1]) is ConnectionFailed and self.transport is not None:
            log.warning("closing RPC connection: %s", events[-1].error)
            self.transport.abort()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        err = RpcConnectionClosed(f"connection lost: {exc}" if exc else "connection closed by the peer")
        _deliver(self.conn.connection_lost(err))
        if not self.lost.done():
            self.lost.set_result(None)

    def _next_timer(self) -> float | None:
        return self.conn.next_timer()

    def _on_timer(self) -> None:
        _deliver(self.conn.handle_timer(self._loop.time()))


class RpcStreamClient(_ClientBase):
    """RPC client over one TCP or unix-domain stream (record marking, RFC 5531 §11).

    Open one with :meth:`connect_tcp` or :meth:`connect_unix`. ``await client.call(prog, vers,
    proc, args=b"", *, auth=None, timeout=None)`` returns the (unwrapped) result bytes;
    :meth:`call_nowait` returns a future instead, so that many calls can be in flight at once
    (pipelining). ``closed``, ``peername`` and ``transport`` describe the connection; ``await
    client.close()`` (or leaving ``async with``) closes it. Failures raise
    :class:`rpclatch.rpc.errors.RpcError` subclasses; connect errors are ``OSError`` or
    ``TimeoutError``.
    """

    def __init__(self, protocol: _StreamClientProtocol) -> None:
        self._protocol: _StreamClientProtocol = protocol
        self._conn = protocol.conn
        self._loop = protocol._loop
        assert protocol.transport is not None
        self.transport: asyncio.Transport = protocol.transport
        self._flush_scheduled = False

    @classmethod
    async def _connect(
        cls,
        factory: Callable[[Callable[[], Any]], Any],
        auth: ClientAuth | None,
        timeout: float | None,
        connect_timeout: float,
        max_record: int,
    ) -> RpcStreamClient:
        loop = asyncio.get_running_loop()
        conn = RpcClientConnection(auth, timeout, max_record=max_record)
        protocol = _StreamClientProtocol(conn, loop)
        async with asyncio.timeout(connect_timeout):
            await factory(lambda: protocol)
        return cls(protocol)

    @classmethod
    async def connect_tcp(
        cls,
        host: str,
        port: int,
        *,
        auth: ClientAuth | None = None,
        timeout: float | None = 30.0,
        connect_timeout: float = 10.0,
        max_record: int = DEFAULT_MAX_RECORD,
        sock: socket.socket | None = None,
    ) -> RpcStreamClient:
        """Connect to ``host:port``, or use ``sock``, an already connected socket (e.g. one the
        latching engine set up). ``auth`` and ``timeout`` are the defaults for every call (a call
        may override them); ``connect_timeout`` bounds the connect; ``max_record`` bounds the
        reply records accepted. Connect errors are OSError / TimeoutError."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            return await cls._connect(
                lambda f: loop.create_connection(f, sock=sock), auth, timeout, connect_timeout, max_record
            )
        return await cls._connect(
            lambda f: loop.create_connection(f, host, port), auth, timeout, connect_timeout, max_record
        )

    @classmethod
    async def connect_unix(
        cls,
        path: str,
        *,
        auth: ClientAuth | None = None,
        timeout: float | None = 30.0,
        connect_timeout: float = 10.0,
        max_record: int = DEFAULT_MAX_RECORD,
    ) -> RpcStreamClient:
        """Connect to a unix-domain stream socket (e.g. rpcbind's /run/rpcbind.sock); the
        keyword arguments are those of :meth:`connect_tcp`."""
        loop = asyncio.get_running_loop()
        return await cls._connect(
            lambda f: loop.create_unix_connection(f, path), auth, timeout, connect_timeout, max_record
        )

    @property
    def closed(self) -> bool:
        return self._conn.closed or self.transport.is_closing()

    @property
    def peername(self) -> Any:
        return self.transport.get_extra_info("peername")

    def call_nowait(
        self,
        prog: int,
        vers: int,
        proc: int,
        args: bytes = b"",
        *,
        auth: ClientAuth | None = None,
        timeout: float | None = None,
    ) -> asyncio.Future[bytes]:
        """Send a call; the future resolves to its result bytes or an RpcError."""
        if self.transport.is_closing():
            raise RpcConnectionClosed("the connection is closed")
        loop = self._loop
        conn = self._conn
        handle: CallHandle = conn.send_call(prog, vers, proc, args, auth, loop.time(), timeout)
        fut: asyncio.Future[bytes] = loop.create_future()
        handle.context = fut
        if conn.outstanding == 1:
            _write(self.transport, conn.data_to_send_parts())
        elif not self._flush_scheduled:
            # Several calls in flight: gather the calls made in this loop iteration into one write.
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        self._protocol._arm(handle.deadline if handle.deadline != _INF else None)
        return fut

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self.transport.is_closing():
            _write(self.transport, self._conn.data_to_send_parts())


class _DatagramClientProtocol(asyncio.DatagramProtocol, _TimerMixin):
    def __init__(self, core: RpcDatagramClient, loop: asyncio.AbstractEventLoop) -> None:
        self.core = core
        self._loop = loop
        self._timer = None
        self._timer_when = 0.0
        self.transport: asyncio.DatagramTransport | None = None
        self.lost = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport does not subclass DatagramTransport in 3.11.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            for datagram in self.core.datagrams_to_send():
                self.transport.sendto(datagram)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        _deliver(self.core.receive_datagram(data))
        self.flush()

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, ConnectionRefusedError):
            err = RpcConnectionClosed("connection refused (ICMP port unreachable)")
            err.__cause__ = exc
            _deliver(self.core.close(err))
        else:
            log.debug("UDP error: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        _deliver(self.core.close())
        if not self.lost.done():
            self.lost.set_result(None)

    def _next_timer(self) -> float | None:
        return self.core.next_timer()

    def _on_timer(self) -> None:
        _deliver(self.core.handle_timer(self._loop.time()))
        self.flush()


class RpcUdpClient(_ClientBase):
    """RPC client over a connected UDP socket, with retransmission.

    Open one with :meth:`connect`; ``call``, ``call_nowait`` and ``close`` are those of
    :class:`RpcStreamClient`. A call is retransmitted with exponential backoff (from
    ``retransmit_initial`` up to ``retransmit_max`` seconds between tries) until its timeout, with
    the same xid, prepared afresh by the flavor (RPCSEC_GSS gives each transmission a new
    seq_num). An ICMP "port unreachable" fails outstanding calls with
    :class:`rpclatch.rpc.errors.RpcConnectionClosed` ("connection refused"). Arguments too large
    for one datagram raise :class:`RpcLocalError` at once.
    """

    def __init__(self, protocol: _DatagramClientProtocol) -> None:
        self._protocol: _DatagramClientProtocol = protocol
        self._core = protocol.core
        self._loop = protocol._loop
        assert protocol.transport is not None
        self.transport: asyncio.DatagramTransport = protocol.transport

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        auth: ClientAuth | None = None,
        timeout: float | None = 30.0,
        retransmit_initial: float = 0.5,
        retransmit_max: float = 8.0,
    ) -> RpcUdpClient:
        loop = asyncio.get_running_loop()
        core = RpcDatagramClient(
            auth, timeout, retransmit_initial=retransmit_initial, retransmit_max=retransmit_max
        )
        protocol = _DatagramClientProtocol(core, loop)
        await loop.create_datagram_endpoint(lambda: protocol, remote_addr=(host, port))
        return cls(protocol)

    @property
    def peername(self) -> Any:
        return self.transport.get_extra_info("peername")

    def call_nowait(
        self,
        prog: int,
        vers: int,
        proc: int,
        args: bytes = b"",
        *,
        auth: ClientAuth | None = None,
        timeout: float | None = None,
    ) -> asyncio.Future[bytes]:
        if self.transport.is_closing():
            raise RpcConnectionClosed("the socket is closed")
        if len(args) > MAX_UDP_REPLY - 40:
            raise RpcLocalError(
                f"a call with {len(args)} bytes of arguments does not fit in a UDP datagram; use TCP"
            )
        loop = self._loop
        handle = self._core.send_call(prog, vers, proc, args, auth, loop.time(), timeout)
        fut: asyncio.Future[bytes] = loop.create_future()
        handle.context = fut
        self._protocol.flush()
        self._protocol._arm()
        return fut


# --------------------------------------------------------------------------------------------
# server


class _ServerStreamProtocol(asyncio.BufferedProtocol, _TimerMixin):
    def __init__(self, server: RpcServer) -> None:
        self.server = server
        self._loop = server._loop
        self._timer = None
        self._timer_when = 0.0
        self.transport: asyncio.Transport | None = None
        self.conn: RpcServerConnection | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self._paused = False
        self._recv = _recv_buffer()
        #: set when the transport is gone (after a graceful close: once every reply went out)
        self.finished: asyncio.Future[None] = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        server = self.server
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("socket")
        unix = sock is not None and sock.family == socket.AF_UNIX
        info = ConnectionInfo(
            next(_conn_ids), tuple(peer[:2]) if isinstance(peer, tuple) else None, "unix" if unix else "tcp"
        )
        if unix:
            info.attributes["peer_cred"] = _peer_cred(sock)
        if server._closing or len(server._protocols) >= server.max_connections:
            log.warning(
                "refusing connection from %s: %s",
                info.peer,
                "server closing" if server._closing else f"connection limit {server.max_connections} reached",
            )
            transport.abort()
            return
        if server.on_connection is not None:
            try:
                server.on_connection(info, transport)
            except Exception as exc:
                log.error("closing connection from %s: on_connection failed: %s", info.peer, exc)
                transport.abort()
                return
        self.conn = RpcServerConnection(
            server.dispatcher,
            info,
            max_record=server.max_record,
            idle_timeout=server.idle_timeout,
            write_timeout=server.write_timeout,
            max_output=server.max_output,
            now=self._loop.time(),
        )
        server._protocols.add(self)
        self._arm()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._recv

    def buffer_updated(self, nbytes: int) -> None:
        conn = self.conn
        if conn is None:
            return
        self._pump(conn.receive_data(self._recv[:nbytes], self._loop.time()))

    def _pump(self, pending: list[PendingReply]) -> None:
        """Write what the connection produced, start awaited calls, go on with the backlog while
        the transport keeps up, then decide whether to keep reading."""
        conn = self.conn
        transport = self.transport
        assert conn is not None and transport is not None
        while True:
            if not transport.is_closing():
                _write(transport, conn.data_to_send_parts())  # may call pause_writing()
            buffered = transport.get_write_buffer_size()
            if buffered or conn.unsent:
                # Unsent replies count against the connection's output budget, and start or
                # keep the write timeout (the peer taking all of them stops it).
                conn.set_write_buffer(buffered, self._loop.time())
                if buffered:
                    self._arm()
            for p in pending:
                task = self._loop.create_task(self._run(p))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            if conn.backlog and not conn.output_paused and not conn.over_budget:
                pending = conn.dispatch_backlog(self._loop.time())
                continue
            break
        if conn.done:
            transport.close()  # after what was written above has gone out (or the write timeout)
            return
        # Stop reading while calls wait (backlog), output is blocked or over budget, too many
        # run at once, or the connection is closing (graceful: the calls already received are
        # still answered).
        stop = bool(
            conn.backlog
            or conn.output_paused
            or conn.over_budget
            or conn.in_flight >= self.server.max_in_flight
            or conn.closed
        )
        if stop != self._paused:
            self._paused = stop
            if stop:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def pause_writing(self) -> None:
        # The transport buffers more than its high-water mark: produce no more replies for now.
        if self.conn is not None:
            self.conn.pause_output()

    def resume_writing(self) -> None:
        if self.conn is not None and self.transport is not None:
            now = self._loop.time()
            self.conn.set_write_buffer(self.transport.get_write_buffer_size(), now)
            self._pump(self.conn.resume_output(now))

    async def _run(self, pending: PendingReply) -> None:
        outcome: bytes | BaseException
        try:
            outcome = await pending.awaitable
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            outcome = exc
        conn = self.conn
        transport = self.transport
        assert conn is not None and transport is not None
        conn.finish(pending, outcome, self._loop.time())
        if transport.is_closing():
            return
        self._pump([])
        self._arm()

    def eof_received(self) -> bool | None:
        # Half-close: no more calls will come; keep the connection open only for the replies
        # still to be sent (_run closes it after the last one).
        if self.conn is None:
            return None
        self.conn.close("peer closed its side")
        return not self.conn.done

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.conn is None:
            return
        self.server._protocols.discard(self)
        self.conn.connection_lost()
        if self.server.on_connection_closed is not None:
            try:
                self.server.on_connection_closed(self.conn.conn)
            except Exception:
                log.exception("on_connection_closed failed")
        for task in self.tasks:
            task.cancel()
        if not self.finished.done():
            self.finished.set_result(None)

    def _next_timer(self) -> float | None:
        return self.conn.next_timer() if self.conn is not None else None

    def _on_timer(self) -> None:
        conn = self.conn
        transport = self.transport
        if conn is None or transport is None:
            return
        now = self._loop.time()
        conn.set_write_buffer(transport.get_write_buffer_size(), now)
        conn.handle_timer(now)
        if conn.aborted:
            # The peer stopped taking replies: drop them, do not wait for them to drain.
            transport.abort()
        elif not transport.is_closing():
            self._pump([])  # closes a done connection; goes on if the peer took some output

    def shutdown(self) -> None:
        """Graceful: read no more calls, answer those received (backlog and in flight), then
        close (at once if there are none)."""
        if self.conn is not None and self.transport is not None and not self.transport.is_closing():
            self.conn.close("server shutting down")
            self._pump([])


_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _peer_cred(sock: Any) -> tuple[int, int, int] | None:
    """The (pid, uid, gid) the kernel recorded for the peer of a unix socket (SO_PEERCRED)."""
    try:
        pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except (OSError, AttributeError, struct.error):  # not Linux, or the peer is gone already
        return None
    return pid, uid, gid


class _ServerDatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: RpcServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.conn_id = next(_conn_ids)
        self.tasks: set[asyncio.Task[None]] = set()
        self.oversize_log = LogLimiter()  # any client can ask for oversize replies

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport does not subclass DatagramTransport in 3.11.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        server = self.server
        if server._closing:
            return
        info = ConnectionInfo(self.conn_id, tuple(addr[:2]), "udp")
        # Procedures learn that the reply must fit in one datagram, so they can refuse larger
        # results before building them (CallContext.max_results).
        reply = server.dispatcher.dispatch(data, info, server._loop.time(), MAX_UDP_REPLY)
        if reply is None:
            return
        if type(reply) is bytes:
            self._send(reply, addr)
            return
        assert isinstance(reply, PendingReply)
        task = server._loop.create_task(self._run(reply, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, pending: PendingReply, addr: Any) -> None:
        reply: bytes | None
        try:
            reply = pending.complete(await pending.awaitable)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reply = pending.fail(exc)
        if reply is not None:  # None: the flavor could not seal the results (logged)
            self._send(reply, addr)

    def _send(self, reply: bytes, addr: Any) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if len(reply) > MAX_UDP_REPLY:
            # It cannot go out as one datagram: tell the client instead of leaving it to time out.
            xid = int.from_bytes(reply[:4], "big")
            self.oversize_log.log(
                log,
                logging.WARNING,
                "UDP reply to xid %#x from %s is %d bytes, "
                "more than a datagram carries; answering SYSTEM_ERR",
                xid,
                addr,
                len(reply),
            )
            reply = AcceptedReply(xid, stat=AcceptStat.SYSTEM_ERR).encode()
        self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        # E.g. a reply larger than a datagram can carry (EMSGSIZE), or ICMP errors from peers.
        log.warning("UDP server socket error: %s", exc)


class RpcServer:
    """asyncio TCP, UDP and unix-domain server for an :class:`RpcDispatcher`.

    Listen with :meth:`listen_tcp`, :meth:`listen_udp` and :meth:`listen_unix` (several listeners
    are fine), or hand over a stream socket accepted elsewhere with :meth:`accept_socket`; stop with
    :meth:`close`. The limits are those of :class:`rpclatch.rpc.server.RpcServerConnection`:
    ``idle_timeout`` counts only complete calls as activity, ``write_timeout`` aborts a stream whose
    peer takes no reply bytes for that long, ``max_output`` bounds the unsent replies (counting the
    transport's write buffer), ``max_record`` the call records accepted.

    ``on_connection(info: ConnectionInfo, transport)`` runs when a stream connection starts, before
    any call on it is dispatched: set ``info.channel`` there (RFC 5660 latch -> RFC 5403 binding).
    An exception from it closes the connection. ``on_connection_closed(info)`` runs when it ends,
    after every ``ServerAuth.connection_closed(info)``.

    ``connections`` lists the live ``ConnectionInfo`` objects, :attr:`stream_connections` their
    sans-IO state; ``tcp_addresses``, ``udp_addresses`` and ``unix_paths`` the listeners.

    Limits, so that no client can make the server buffer without bound: beyond
    ``max_connections`` a new connection is closed at once (logged). A connection stops being read
    while its transport holds more than its high-water mark of unsent replies, while its unsent
    replies (queued or in the transport's write buffer) are ``max_output`` or more, while calls
    wait undispatched, or while ``max_in_flight`` coroutine procedures run. So a client that
    pipelines calls and does not read its replies makes the server buffer at most ``max_output``
    plus the reply being written, and after ``write_timeout`` seconds without taking any of it the
    connection is aborted (its slot freed).
    """

    def __init__(
        self,
        dispatcher: RpcDispatcher,
        *,
        max_connections: int = 1024,
        idle_timeout: float | None = 300.0,
        write_timeout: float | None = 30.0,
        max_record: int = DEFAULT_MAX_RECORD,
        max_output: int = DEFAULT_MAX_OUTPUT,
        max_in_flight: int = 64,
        on_connection: Callable[[ConnectionInfo, asyncio.BaseTransport], None] | None = None,
        on_connection_closed: Callable[[ConnectionInfo], None] | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.max_record = max_record
        self.max_output = max_output
        self.max_in_flight = max_in_flight
        self.on_connection = on_connection
        self.on_connection_closed = on_connection_closed
        self._loop = asyncio.get_running_loop()
        self._servers: list[asyncio.Server] = []
        self._udp: list[tuple[asyncio.DatagramTransport, _ServerDatagramProtocol]] = []
        self._protocols: set[_ServerStreamProtocol] = set()
        self._closing = False
        self.tcp_addresses: list[tuple[str, int]] = []
        self.udp_addresses: list[tuple[str, int]] = []
        self.unix_paths: list[str] = []
        self._unix_inodes: dict[str, tuple[int, int]] = {}  # path -> (st_dev, st_ino) we created

    @property
    def connections(self) -> list[ConnectionInfo]:
        return [p.conn.conn for p in self._protocols if p.conn is not None]

    @property
    def stream_connections(self) -> list[RpcServerConnection]:
        """The sans-IO state of every live stream connection (for accounting: ``unsent``,
        ``buffered_input``, ``backlog``; do not drive them)."""
        return [p.conn for p in self._protocols if p.conn is not None]

    async def listen_tcp(self, host: str = "127.0.0.1", port: int = 0, *, backlog: int = 1024) -> int:
        """Listen on ``host:port`` (0 = any free port); return the bound port."""
        srv = await self._loop.create_server(
            lambda: _ServerStreamProtocol(self), host, port, backlog=backlog, reuse_address=True
        )
        self._servers.append(srv)
        bound = srv.sockets[0].getsockname()
        self.tcp_addresses.append((bound[0], bound[1]))
        return int(bound[1])

    async def listen_udp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve datagrams on ``host:port`` (0 = any free port); return the bound port.

        Procedures see ``ctx.max_results`` (the largest datagram, :data:`MAX_UDP_REPLY`, less the
        reply header) and refuse larger results before building them (SYSTEM_ERR); a sealed reply
        that still does not fit is answered SYSTEM_ERR too. Both log lines are rate-limited."""
        transport, protocol = await self._loop.create_datagram_endpoint(
            lambda: _ServerDatagramProtocol(self), local_addr=(host, port)
        )
        self._udp.append((transport, protocol))
        bound = transport.get_extra_info("sockname")
        self.udp_addresses.append((bound[0], bound[1]))
        return int(bound[1])

    async def listen_unix(self, path: str, *, mode: int | None = None, backlog: int = 1024) -> str:
        """Listen on the unix-domain stream socket ``path``; return it. Calls are record marked
        as on TCP. A stale socket file left at ``path`` is replaced; any other existing file raises
        :class:`FileExistsError` (nothing is removed). ``mode`` (e.g. ``0o666``) chmods the socket
        (who may connect); the file is removed again by :meth:`close` if it is still the one we
        made.

        Unix connections have ``ConnectionInfo.transport == "unix"``, ``peer`` None and the
        peer's kernel-checked ``(pid, uid, gid)`` in ``attributes["peer_cred"]`` (SO_PEERCRED),
        as rpcbind uses its unix socket."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise FileExistsError(f"{path} exists and is not a socket; not replacing it")
            os.unlink(path)  # a stale socket: a live server on it would be cut off, as with rpcbind
        srv = await self._loop.create_unix_server(lambda: _ServerStreamProtocol(self), path, backlog=backlog)
        self._servers.append(srv)
        if mode is not None:
            os.chmod(path, mode)
        st = os.lstat(path)
        self._unix_inodes[path] = (st.st_dev, st.st_ino)
        self.unix_paths.append(path)
        return path

    async def accept_socket(self, sock: socket.socket) -> None:
        """Serve an already accepted, connected stream socket (a transport that accepts its own
        connections, e.g. the latching engine, hands them over here)."""
        await self._loop.connect_accepted_socket(lambda: _ServerStreamProtocol(self), sock)

    async def close(self, grace: float = 5.0) -> None:
        """Graceful shutdown: stop listening and reading, answer every call already received,
        let the replies go out, for up to ``grace`` seconds in all; then close everything.

        On a stream, the calls waiting undispatched in the connection's backlog (held back by
        output backpressure) are dispatched and the coroutine procedures running finish; on UDP,
        running procedures finish. Each connection closes once its replies went out (at once when
        it has nothing to answer). Not answered: bytes still in the kernel's receive buffer, a
        partly received record, datagrams arriving after close() began, and whatever is
        unfinished after ``grace`` seconds (then every connection is aborted)."""
        self._closing = True
        for srv in self._servers:
            srv.close()
        protocols = list(self._protocols)
        for proto in protocols:
            proto.shutdown()
        # A connection is finished once its last reply was written and the transport closed; the
        # backlog may start new procedures while we wait, so wait for connections, not tasks.
        waits: list[asyncio.Future[Any]] = [p.finished for p in protocols]
        waits += [t for _, p in self._udp for t in p.tasks]
        if waits:
            _done, late = await asyncio.wait(waits, timeout=grace)
            if late:
                log.warning(
                    "server close: %d connections/calls not finished within %s s; "
                    "closing them with calls unanswered",
                    len(late),
                    grace,
                )
        for transport, udp in self._udp:
            for t in udp.tasks:
                t.cancel()
            transport.close()
        for proto in protocols:
            if proto.transport is not None:
                proto.transport.close()
        # Let connection_lost run (so ServerAuth.connection_closed is called) before returning.
        for _ in range(3):
            if not self._protocols:
                break
            await asyncio.sleep(0)
        for proto in list(self._protocols):
            if proto.transport is not None:
                proto.transport.abort()
        await asyncio.sleep(0)
        for srv in self._servers:
            try:
                async with asyncio.timeout(grace):
                    await srv.wait_closed()
            except TimeoutError:
                log.warning("listener did not close within %s s", grace)
        self._servers.clear()
        self._udp.clear()
        for path, ident in self._unix_inodes.items():
            try:
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == ident:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove unix socket %s: %s", path, exc)
        self._unix_inodes.clear()

    async def __aenter__(self) -> RpcServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["RpcError", "RpcServer", "RpcStreamClient", "RpcUdpClient"]
