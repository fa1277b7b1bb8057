"""The probing client: raw RPCSEC_GSS calls over TCP connections (record marking) or UDP sockets
(one call per datagram).

Unlike :class:`rpclatch.gss.client.GssClientAuth`, which always does the right thing, a
:class:`Session` builds each call itself from :mod:`rpclatch.gss.wire` so a case can choose the
sequence number, the handle and the version, sign one header and send another, tamper with an
integrity checksum or a privacy token, and resend a call byte for byte. Replies are decoded with
:func:`rpclatch.rpc.messages.decode_reply` and their verifiers checked (RFC 2203 §5.3.3.2). A call
that gets no reply within the wait is :attr:`ReplyKind.DROPPED`: that is what a silently discarded
request looks like from the client's side (RFC 2203 §5.3.3.1).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import random
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from rpclatch.channel import Channel
from rpclatch.gss.errors import GssError, GssMajor
from rpclatch.gss.provider import GssContext, Provider
from rpclatch.gss.wire import (
    RPCSEC_GSS_VERS_1,
    GssProc,
    InitArg,
    InitRes,
    Service,
    be32,
    decode_integ,
    decode_priv,
    encode_call_header,
    encode_cred,
    encode_integ,
    encode_opaque,
)
from rpclatch.rpc.messages import (
    PROC_NULL,
    AcceptedReply,
    AcceptStat,
    AuthFlavor,
    AuthStat,
    DeniedReply,
    RejectStat,
    ReplyMessage,
    decode_reply,
    peek_xid,
)
from rpclatch.rpc.record import RecordError, RecordReassembler, encode_record
from rpclatch.xdr import XdrError

log = logging.getLogger(__name__)

_U32 = struct.Struct(">I")
#: Replies are small (NULL results, control replies): a record larger than this is not one.
MAX_REPLY_RECORD = 1024 * 1024
#: Datagrams kept unread on a UDP probe socket (late replies beyond that are dropped).
MAX_PENDING_DATAGRAMS = 64
#: Why the channel cases OMIT without a key manager.
NO_CHANNEL = "no latched channel to the server (needs a key manager)"
#: Why the channel cases OMIT over UDP.
NO_CHANNEL_UDP = (
    "the channel cases bind to a TCP connection latched to the server (RFC 5660 §2.3); this run is over UDP"
)
#: Why the record-marking probes OMIT over UDP.
NO_STREAM = "record marking exists only on TCP (RFC 5531 §11); this run is over UDP"
_FLAVOR_GSS = int(AuthFlavor.RPCSEC_GSS)
_FLAVOR_NONE = int(AuthFlavor.AUTH_NONE)


class ReplyKind(Enum):
    REPLY = "reply"  # a decoded reply with the call's xid
    DROPPED = "dropped"  # nothing within the wait, connection still open
    CLOSED = "closed"  # the server closed (or reset) the connection before replying
    GARBLED = "garbled"  # bytes came back that are not a reply


@dataclass(frozen=True, slots=True)
class Reply:
    """What came back for one call."""

    kind: ReplyKind
    message: ReplyMessage | None = None
    detail: str = ""

    @property
    def silent(self) -> bool:
        """No reply at all: dropped, or the connection closed without one."""
        return self.kind in (ReplyKind.DROPPED, ReplyKind.CLOSED)

    def auth_stat(self) -> AuthStat | None:
        m = self.message
        return m.auth_stat if isinstance(m, DeniedReply) and m.stat == RejectStat.AUTH_ERROR else None

    def accept_stat(self) -> AcceptStat | None:
        m = self.message
        return m.stat if isinstance(m, AcceptedReply) else None

    def describe(self) -> str:
        m = self.message
        if self.kind is not ReplyKind.REPLY or m is None:
            return {
                ReplyKind.DROPPED: f"no reply ({self.detail})",
                ReplyKind.CLOSED: f"connection closed without a reply ({self.detail})",
                ReplyKind.GARBLED: f"undecodable reply ({self.detail})",
            }.get(self.kind, self.detail)
        if isinstance(m, DeniedReply):
            if m.stat == RejectStat.AUTH_ERROR and m.auth_stat is not None:
                return f"MSG_DENIED AUTH_ERROR {m.auth_stat.name}"
            return f"MSG_DENIED {m.stat.name}"
        return f"MSG_ACCEPTED {m.stat.name} (verifier flavor {m.verf.flavor}, {len(m.verf.body)} bytes)"


class Connection(abc.ABC):
    """One transport to the server carrying calls: a TCP connection with record marking
    (:class:`StreamConnection`, RFC 5531 §11) or a connected UDP socket, one call per datagram
    (:class:`DatagramConnection`). Replies are matched by xid; others (late replies to earlier
    calls) are skipped."""

    #: "tcp" or "udp".
    proto = "tcp"

    def __init__(self, on_close: Callable[[], None] | None = None) -> None:
        self._pending: list[bytes] = []
        self._on_close = on_close
        self.closed = False

    @staticmethod
    async def open(host: str, port: int, timeout: float, proto: str = "tcp") -> Connection:
        """A new connection over ``proto`` ("tcp" or "udp")."""
        if proto == "udp":
            return await DatagramConnection.connect(host, port, timeout)
        return await StreamConnection.connect(host, port, timeout)

    @abc.abstractmethod
    async def send_message(self, message: bytes) -> bool:
        """Send one whole RPC message; False if the connection is gone."""

    @abc.abstractmethod
    async def send_raw(self, data: bytes) -> bool:
        """Write bytes as they are (a datagram over UDP); False if the connection is gone."""

    @abc.abstractmethod
    async def _fill(self, remaining: float, wait: float) -> Reply | None:
        """Wait up to ``remaining`` seconds for more messages into ``_pending``; a Reply if
        nothing more will come (dropped within ``wait``, closed, garbled), else None."""

    async def call(self, xid: int, message: bytes, wait: float) -> Reply:
        """Send ``message`` and wait up to ``wait`` seconds for the reply to ``xid``."""
        if not await self.send_message(message):
            return Reply(ReplyKind.CLOSED, detail="could not send")
        return await self.receive(xid, wait)

    async def receive(self, xid: int, wait: float) -> Reply:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            while self._pending:
                record = self._pending.pop(0)
                if peek_xid(record) != xid:
                    continue
                try:
                    return Reply(ReplyKind.REPLY, decode_reply(record))
                except XdrError as exc:
                    return Reply(ReplyKind.GARBLED, detail=str(exc))
            if self.closed:
                return Reply(ReplyKind.CLOSED, detail="closed earlier")
            remaining = deadline - loop.time()
            if remaining <= 0:
                return Reply(ReplyKind.DROPPED, detail=f"within {wait:g} s")
            done = await self._fill(remaining, wait)
            if done is not None:
                return done

    @abc.abstractmethod
    async def wait_closed(self, wait: float) -> bool:
        """True if the server closes the connection within ``wait`` seconds (replies are skipped)."""

    def close(self) -> None:
        self.closed = True
        self._close_transport()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    @abc.abstractmethod
    def _close_transport(self) -> None: ...


class StreamConnection(Connection):
    """One TCP connection carrying record-marked calls (RFC 5531 §11)."""

    proto = "tcp"

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(on_close)
        self._reader = reader
        self._writer = writer
        self._records = RecordReassembler(MAX_REPLY_RECORD)

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float) -> StreamConnection:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        return cls(reader, writer)

    async def send_raw(self, data: bytes) -> bool:
        if self.closed:
            return False
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError):
            self.closed = True
            return False
        return True

    async def send_message(self, message: bytes) -> bool:
        return await self.send_raw(encode_record(message))

    async def _fill(self, remaining: float, wait: float) -> Reply | None:
        try:
            data = await asyncio.wait_for(self._reader.read(65536), remaining)
        except TimeoutError:
            return Reply(ReplyKind.DROPPED, detail=f"within {wait:g} s")
        except (ConnectionError, OSError) as exc:
            self.closed = True
            return Reply(ReplyKind.CLOSED, detail=type(exc).__name__)
        if not data:
            self.closed = True
            return Reply(ReplyKind.CLOSED, detail="EOF")
        try:
            self._pending.extend(bytes(r) for r in self._records.feed(data))
        except RecordError as exc:
            self.close()
            return Reply(ReplyKind.GARBLED, detail=str(exc))
        return None

    async def wait_closed(self, wait: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while not self.closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                data = await asyncio.wait_for(self._reader.read(65536), remaining)
            except TimeoutError:
                return False
            except (ConnectionError, OSError):
                data = b""
            if not data:
                self.closed = True
        return True

    def _close_transport(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()


class _Datagrams(asyncio.DatagramProtocol):
    """What arrives on a connected UDP socket: at most :data:`MAX_PENDING_DATAGRAMS` datagrams
    (older ones are dropped), and the last ICMP error (e.g. port unreachable)."""

    def __init__(self) -> None:
        self.queue: deque[bytes] = deque(maxlen=MAX_PENDING_DATAGRAMS)
        self.error: OSError | None = None
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.queue.append(data)
        self.arrived.set()

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, OSError):
            self.error = exc
        self.arrived.set()


class DatagramConnection(Connection):
    """A connected UDP socket: each call and each reply is one datagram (RFC 5531 has no record
    marking over UDP). The server cannot close it; an ICMP error (port unreachable) reads as
    closed."""

    proto = "udp"

    def __init__(self, transport: asyncio.DatagramTransport, datagrams: _Datagrams) -> None:
        super().__init__()
        self._transport = transport
        self._datagrams = datagrams

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float) -> DatagramConnection:
        loop = asyncio.get_running_loop()
        transport, datagrams = await asyncio.wait_for(
            loop.create_datagram_endpoint(_Datagrams, remote_addr=(host, port)), timeout
        )
        return cls(transport, datagrams)

    async def send_raw(self, data: bytes) -> bool:
        if self.closed:
            return False
        try:
            self._transport.sendto(data)
        except OSError:
            self.closed = True
            return False
        return True

    async def send_message(self, message: bytes) -> bool:
        return await self.send_raw(message)

    async def _fill(self, remaining: float, wait: float) -> Reply | None:
        d = self._datagrams
        if not d.queue and d.error is None:
            d.arrived.clear()
            try:
                await asyncio.wait_for(d.arrived.wait(), remaining)
            except TimeoutError:
                return Reply(ReplyKind.DROPPED, detail=f"within {wait:g} s")
        self._pending.extend(d.queue)
        d.queue.clear()
        if d.error is not None and not self._pending:
            self.closed = True
            return Reply(ReplyKind.CLOSED, detail=d.error.strerror or type(d.error).__name__)
        return None

    async def wait_closed(self, wait: float) -> bool:
        return False  # nothing to close on the server's side

    def _close_transport(self) -> None:
        self._transport.close()


@dataclass
class ClientContext:
    """An established RPCSEC_GSS context as the prober holds it: ``service`` is the one its INIT
    credential named, which its DATA calls use unless a case says otherwise; ``conn`` is the
    connection it was created on, where :meth:`Session.close` destroys it; ``established_at`` is
    when it was established (:func:`time.monotonic`, the event loop's clock)."""

    version: int
    handle: bytes
    gss: GssContext
    seq_window: int
    service: Service = Service.NONE
    conn: Connection | None = None
    seq: int = 0
    destroyed: bool = False
    established_at: float = field(default_factory=time.monotonic)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    @property
    def ends_at(self) -> float | None:
        """When the GSS context ends on this side's clock (its lifetime as the mechanism reported
        it at establishment: for Kerberos, the service ticket's end time), None if indefinite."""
        life = self.gss.lifetime
        return None if life is None else self.established_at + life


@dataclass(frozen=True, slots=True)
class InitResult:
    """An INIT exchange: the last reply, the decoded ``rpc_gss_init_res`` (if any), the context (if
    one was established) and the problem, "" if none (RFC 2203 §5.2.3.1)."""

    reply: Reply
    res: InitRes | None
    context: ClientContext | None
    problem: str = ""


@dataclass(frozen=True, slots=True)
class Prepared:
    """A call ready to send: its xid, credential seq_num, service and bytes."""

    xid: int
    seq: int
    service: Service
    message: bytes


class NoContext(Exception):
    """The case needs a context the server did not give (the case is OMITted)."""


class Unsupported(Exception):
    """The server does not support what the case needs (the case is NOT-SUPPORTED)."""


class NoChannel(NoContext):
    """The case needs a secure channel to the server and the run has none (OMITted)."""


class ChannelOpener(Protocol):
    """Opens connections latched to a secure channel (the key manager's, RFC 5660 §2.3)."""

    async def open(self, host: str, port: int, timeout: float) -> tuple[Connection, Channel]:
        """A connected, latched connection and its channel; :class:`NoChannel` if it cannot."""
        ...

    async def close(self) -> None: ...


class LocalGssError(Exception):
    """The client side could not start a context (no ticket, unknown target): the run stops."""


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """Where and how to probe: the server's address, the program/version/procedure called in
    DATA requests and its encoded arguments (``args``, empty for NULL), the acceptor name, the
    service of the general cases, the reply timeout, how long to wait before a call counts as
    silently dropped, the longest a case may wait for a context to expire (``expiry_wait``), the
    clock-skew allowance the server's mechanism adds to a context's end (``clock_skew``: Kerberos
    acceptors accept a ticket until its end time plus the skew they allow, 300 s by default in MIT
    and Heimdal), what opens latched connections (``channels``; None: the channel cases OMIT), and
    the transport of the calls (``proto``: "tcp", or "udp": then the cases that need a connection
    OMIT)."""

    host: str
    port: int
    prog: int
    vers: int
    proc: int = PROC_NULL
    target: str = ""
    service: Service = Service.INTEGRITY
    timeout: float = 5.0
    drop_wait: float = 1.0
    channels: ChannelOpener | None = None
    args: bytes = b""
    expiry_wait: float = 30.0
    clock_skew: float = 300.0
    proto: str = "tcp"


def auth_bytes(flavor: int, body: bytes) -> bytes:
    """XDR ``opaque_auth`` (RFC 5531 §8.2)."""
    return _U32.pack(flavor) + encode_opaque(body)


def flip_last(data: bytes) -> bytes:
    """``data`` with its last octet inverted (a tampered MIC or token)."""
    return data[:-1] + bytes([data[-1] ^ 0xFF]) if data else b"\x01"


def null_call(xid: int, prog: int, vers: int) -> bytes:
    """A NULL call with AUTH_NONE credential and verifier (RFC 5531 §8.2)."""
    return encode_call_header(xid, prog, vers, PROC_NULL, _FLAVOR_NONE, b"") + auth_bytes(_FLAVOR_NONE, b"")


def gss_call(xid: int, prog: int, vers: int, proc: int, cred: bytes, verf: bytes, args: bytes) -> bytes:
    """An RPC call with an RPCSEC_GSS credential body ``cred`` and encoded verifier ``verf``."""
    return encode_call_header(xid, prog, vers, proc, _FLAVOR_GSS, cred) + verf + args


class Session:
    """One case's connections and contexts; :meth:`close` destroys what it created."""

    def __init__(self, config: ProbeConfig, provider: Provider) -> None:
        self.config = config
        self.provider = provider
        self._conn: Connection | None = None
        self._connections: list[Connection] = []
        self._contexts: list[ClientContext] = []
        self._xid = random.randrange(1, 1 << 30)

    def next_xid(self) -> int:
        self._xid = (self._xid + 1) & 0xFFFFFFFF
        return self._xid

    async def new_connection(self) -> Connection:
        c = self.config
        conn = await Connection.open(c.host, c.port, c.timeout, c.proto)
        self._connections.append(conn)
        return conn

    async def latched_connection(self) -> tuple[Connection, Channel]:
        """A new connection latched to a secure channel (:class:`NoChannel` without one)."""
        opener = self.config.channels
        if self.config.proto != "tcp":
            raise NoChannel(NO_CHANNEL_UDP)
        if opener is None:
            raise NoChannel(NO_CHANNEL)
        conn, channel = await opener.open(self.config.host, self.config.port, self.config.timeout)
        self._connections.append(conn)
        return conn, channel

    def require_stream(self) -> None:
        """:class:`NoContext` (OMIT) unless the run is over TCP: the case probes record marking."""
        if self.config.proto != "tcp":
            raise NoContext(NO_STREAM)

    async def connection(self) -> Connection:
        """The session's current connection, reopened if the server closed it."""
        if self._conn is None or self._conn.closed:
            self._conn = await self.new_connection()
        return self._conn

    # -- context creation (RFC 2203 §5.2) ------------------------------------------------------

    def start_gss(self) -> tuple[GssContext, bytes]:
        """A fresh initiator context and its first token (AP-REQ)."""
        try:
            gss = self.provider.initiate(self.config.target)
            token = gss.step(None)
        except GssError as exc:
            raise LocalGssError(f"cannot start a GSS context for {self.config.target}: {exc}") from exc
        if token is None:
            raise LocalGssError("the GSS mechanism produced no initial token")
        return gss, token

    def init_message(
        self,
        xid: int,
        version: int,
        token: bytes,
        *,
        service: Service = Service.NONE,
        handle: bytes = b"",
        seq: int = 0,
    ) -> bytes:
        """An INIT (CONTINUE_INIT with ``handle``) call; ``seq`` is the credential's seq_num, which
        RFC 2203 §5.2.2 leaves undefined (0 unless a case needs another value)."""
        proc = GssProc.RPCSEC_GSS_CONTINUE_INIT if handle else GssProc.RPCSEC_GSS_INIT
        cred = encode_cred(version, proc, seq, service, handle)
        c = self.config
        return gss_call(
            xid, c.prog, c.vers, PROC_NULL, cred, auth_bytes(_FLAVOR_NONE, b""), InitArg(token).encode()
        )

    async def init(
        self,
        version: int = RPCSEC_GSS_VERS_1,
        *,
        service: Service | None = None,
        conn: Connection | None = None,
        seq: int = 0,
    ) -> InitResult:
        """Run INIT (and CONTINUE_INIT while the server asks) for a new context.

        The credential names ``service`` (default: the run's), the one the context will be used
        with. RFC 2203 §5.2.2 leaves that field undefined and has the server ignore it, so any value
        is correct; naming the service to come, as the C clients do, also reaches servers that lock
        a context into the service of its INIT (gssrpc, libtirpc: docs/interop.md)."""
        conn = conn or await self.connection()
        service = self.config.service if service is None else service
        gss, token = self.start_gss()
        handle = b""
        for _ in range(8):
            reply = await conn.call(
                xid := self.next_xid(),
                self.init_message(xid, version, token, service=service, handle=handle, seq=seq),
                self.config.timeout,
            )
            msg = reply.message
            if not isinstance(msg, AcceptedReply) or msg.stat != AcceptStat.SUCCESS:
                gss.delete()
                return InitResult(reply, None, None, f"INIT answered {reply.describe()}")
            try:
                res = InitRes.decode(msg.results)
            except XdrError as exc:
                gss.delete()
                return InitResult(reply, None, None, f"undecodable rpc_gss_init_res: {exc}")
            if res.gss_major == GssMajor.GSS_S_CONTINUE_NEEDED:
                try:
                    token = gss.step(res.gss_token) or b""
                except GssError as exc:
                    gss.delete()
                    return InitResult(reply, res, None, f"server's CONTINUE token refused: {exc}")
                handle = res.handle
                continue
            if res.gss_major != GssMajor.GSS_S_COMPLETE:
                gss.delete()
                return InitResult(reply, res, None, f"gss_major {res.gss_major:#x} minor {res.gss_minor}")
            try:
                if not gss.complete:
                    gss.step(res.gss_token or None)
            except GssError as exc:
                gss.delete()
                return InitResult(
                    reply, res, None, f"server's final token (mutual authentication) fails: {exc}"
                )
            ctx = ClientContext(version, res.handle, gss, res.seq_window, service, conn)
            self._contexts.append(ctx)
            problem = ""
            if not res.handle:
                problem = "COMPLETE with an empty handle"
            elif res.seq_window == 0:
                problem = "seq_window 0"
            elif msg.verf.flavor != _FLAVOR_GSS:
                problem = f"reply verifier flavor {msg.verf.flavor}, not RPCSEC_GSS"
            else:
                try:
                    gss.verify_mic(be32(res.seq_window), msg.verf.body)
                except GssError as exc:
                    problem = f"reply verifier is not the MIC of seq_window {res.seq_window}: {exc}"
            return InitResult(reply, res, ctx, problem)
        gss.delete()
        return InitResult(
            Reply(ReplyKind.GARBLED, detail="too many CONTINUE_INIT rounds"), None, None, "loops"
        )

    def adopt(
        self,
        version: int,
        gss: GssContext,
        res: InitRes,
        service: Service = Service.NONE,
        conn: Connection | None = None,
    ) -> ClientContext:
        """A context a case established by hand (completed ``gss``, ``service`` in its INIT
        credential, on ``conn``), destroyed on :meth:`close`."""
        ctx = ClientContext(version, res.handle, gss, res.seq_window, service, conn)
        self._contexts.append(ctx)
        return ctx

    async def context(
        self,
        version: int = RPCSEC_GSS_VERS_1,
        *,
        service: Service | None = None,
        conn: Connection | None = None,
    ) -> ClientContext:
        """An established context for ``service`` (default: the run's) or :class:`NoContext` /
        :class:`Unsupported` (a v2 INIT the server refuses as an unknown version, RFC 5403 §4)."""
        result = await self.init(version, service=service, conn=conn)
        if result.context is not None and not result.problem:
            return result.context
        if version != RPCSEC_GSS_VERS_1 and result.reply.auth_stat() in (
            AuthStat.AUTH_BADCRED,
            AuthStat.AUTH_REJECTEDCRED,
        ):
            raise Unsupported(f"RPCSEC_GSS version {version} refused ({result.reply.describe()})")
        raise NoContext(f"no RPCSEC_GSS v{version} context: {result.problem}")

    # -- data exchange (RFC 2203 §5.3) ---------------------------------------------------------

    def data_call(
        self,
        ctx: ClientContext,
        *,
        service: Service | None = None,
        seq: int | None = None,
        gss_proc: GssProc = GssProc.RPCSEC_GSS_DATA,
        version: int | None = None,
        handle: bytes | None = None,
        proc: int | None = None,
        args: bytes | None = None,
        tamper_header: bool = False,
        body_seq: int | None = None,
        corrupt_body: bool = False,
        corrupt_mic: bool = False,
    ) -> Prepared:
        """A DATA (or DESTROY: ``gss_proc``) call on ``ctx``, optionally broken: the header MIC
        over the header with another xid (``tamper_header``) or inverted (``corrupt_mic``),
        another seq_num in the body (``body_seq``), an inverted checksum or privacy token
        (``corrupt_body``). ``service`` defaults to the one the context was created for;
        ``proc`` and ``args`` to the run's (DESTROY: none). A channel_prot call carries no MIC, so
        it can be made after the GSS context expired on this side (RFC 5403 §3.4)."""
        c = self.config
        service = ctx.service if service is None else service
        seq = ctx.next_seq() if seq is None else seq
        proc = c.proc if proc is None else proc
        if args is None:
            args = c.args if gss_proc is GssProc.RPCSEC_GSS_DATA else b""
        xid = self.next_xid()
        cred = encode_cred(
            ctx.version if version is None else version,
            gss_proc,
            seq,
            service,
            ctx.handle if handle is None else handle,
        )
        if service is Service.CHANNEL_PROT:
            verf = auth_bytes(_FLAVOR_NONE, b"")
        else:
            mic = ctx.gss.get_mic(
                encode_call_header(xid ^ 1 if tamper_header else xid, c.prog, c.vers, proc, _FLAVOR_GSS, cred)
            )
            verf = auth_bytes(_FLAVOR_GSS, flip_last(mic) if corrupt_mic else mic)
        inner = be32(seq if body_seq is None else body_seq) + args
        if service is Service.INTEGRITY:
            checksum = ctx.gss.get_mic(inner)
            body = encode_integ(inner, flip_last(checksum) if corrupt_body else checksum)
        elif service is Service.PRIVACY:
            token = ctx.gss.wrap(inner, True)
            body = encode_opaque(flip_last(token) if corrupt_body else token)
        else:
            body = args
        return Prepared(xid, seq, service, gss_call(xid, c.prog, c.vers, proc, cred, verf, body))

    async def send(
        self, prepared: Prepared, *, expect_silence: bool = False, conn: Connection | None = None
    ) -> Reply:
        conn = conn or await self.connection()
        wait = self.config.drop_wait if expect_silence else self.config.timeout
        return await conn.call(prepared.xid, prepared.message, wait)

    @staticmethod
    def reply_problem(ctx: ClientContext, prepared: Prepared, reply: Reply) -> str | None:
        """None if ``reply`` is a SUCCESS whose verifier is the MIC of the seq_num and whose results
        are protected as the service says (RFC 2203 §5.3.3.2), else what is wrong."""
        msg = reply.message
        if not isinstance(msg, AcceptedReply) or msg.stat != AcceptStat.SUCCESS:
            return f"expected SUCCESS, got {reply.describe()}"
        problem = verifier_problem(ctx, prepared.seq, msg)
        if problem is not None:
            return problem
        want = be32(prepared.seq)
        try:
            if prepared.service is Service.INTEGRITY:
                inner, checksum = decode_integ(msg.results)
                ctx.gss.verify_mic(inner, checksum)
                if inner[:4] != want:
                    return "integrity results carry another seq_num"
            elif prepared.service is Service.PRIVACY:
                inner, encrypted = ctx.gss.unwrap(decode_priv(msg.results))
                if not encrypted:
                    return "privacy results were not encrypted"
                if inner[:4] != want:
                    return "privacy results carry another seq_num"
        except (XdrError, GssError) as exc:
            return f"results do not verify: {exc}"
        return None

    async def fresh_call(self, ctx: ClientContext, *, conn: Connection | None = None) -> str | None:
        """A legitimate DATA call with the next seq_num: None if it succeeds, else why not."""
        prepared = self.data_call(ctx)
        reply = await self.send(prepared, conn=conn)
        return self.reply_problem(ctx, prepared, reply)

    async def destroy(self, ctx: ClientContext) -> Reply:
        prepared = self.data_call(
            ctx, gss_proc=GssProc.RPCSEC_GSS_DESTROY, proc=PROC_NULL, service=Service.NONE
        )
        return await self.send(prepared)

    async def close(self) -> None:
        """Destroy every context still standing (best effort, gentle), close the connections.

        Each DESTROY goes on the context's own connection while it is open: servers that bind a
        context to its connection (gssrpc, libtirpc) refuse it elsewhere, and libtirpc keeps the
        context of a connection closed without DESTROY for the next connection that reuses its
        transport structure (docs/conformance.md)."""
        for ctx in self._contexts:
            if ctx.gss.complete and not ctx.destroyed:
                with contextlib.suppress(Exception):
                    own = ctx.conn
                    conn = own if own is not None and not own.closed else await self.connection()
                    prepared = self.data_call(
                        ctx, gss_proc=GssProc.RPCSEC_GSS_DESTROY, proc=PROC_NULL, service=Service.NONE
                    )
                    await conn.call(prepared.xid, prepared.message, min(self.config.timeout, 1.0))
                ctx.gss.delete()
        self._contexts.clear()
        for conn in self._connections:
            conn.close()
        self._connections.clear()
        self._conn = None


def verifier_problem(ctx: ClientContext, seq: int, msg: AcceptedReply) -> str | None:
    """None if an accepted reply's verifier is RPCSEC_GSS with the MIC of ``seq``."""
    if msg.verf.flavor != _FLAVOR_GSS:
        return f"reply verifier flavor {msg.verf.flavor}, not RPCSEC_GSS"
    try:
        ctx.gss.verify_mic(be32(seq), msg.verf.body)
    except GssError as exc:
        return f"reply verifier is not the MIC of seq_num {seq}: {exc}"
    return None
