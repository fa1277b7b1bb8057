"""The connect policy's world on real sockets and kernel IPsec, through the key-manager daemon.

A host runs ``rpclatch ipsec keyd`` (:mod:`rpclatch.ipsec.keyd`), which negotiates IKEv2 and
installs the ESP SAs and per-flow policies in the kernel; RPC programs talk to it over its
AF_UNIX control socket, the RFC 5660 §2.2 abstract API.

:class:`KernelClientWorld` opens RPC connections (implements
:class:`rpclatch.connect.world.ClientWorld`). With ``protect`` it binds the TCP source port first,
asks for CREATE_CONNECTION_LATCH of exactly that 5-tuple with the IKE timeout, and connects only
once the latch is ESTABLISHED (so the SYN already travels in ESP; RFC 5660 §3.1). A refusal or a
timeout raises :class:`~rpclatch.connect.world.ProtectionFailed`, and the policy reconnects in the
clear (the key manager installs nothing for that new 5-tuple, so it bypasses). INQUIRE_LATCH gives
the peer's key, the quality of protection and the channel-binding data; :class:`KeydChannel`
carries them to RPCSEC_GSS. ALERT BROKEN for the latch marks the channel down and the policy
resets the connection (RFC 5660 §5.5 (b)).

:class:`KernelServerEndpoint` is the server side: a LISTENER latch on its 3-tuple (RFC 5660 §5.1);
each accepted connection is looked up with FIND_LATCH; a latched one gets the latch's
:class:`KeydChannel` as ``ConnectionInfo.channel`` before its first call is dispatched, which is
what the RPCSEC_GSS server binds to and checks on every channel_prot call (only that connection,
only while the channel is up; :mod:`rpclatch.gss.server`). The latch is released when the
connection ends (the key manager keeps it TIME_WAIT-like for a while).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import itertools
import json
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rpclatch.channel import BreakCallback, Channel, Protection
from rpclatch.connect.world import ConnectError, ConnectionReset, LatchView, ProtectionFailed
from rpclatch.ipsec.channel_binding import CB_PREFIX
from rpclatch.ipsec.keyd.protocol import (
    AlertKind,
    ControlDecodeError,
    ErrorCode,
    FrameDecoder,
    encode_frame,
)
from rpclatch.ipsec.latch import LatchState
from rpclatch.ipsec.model import spki_fingerprint
from rpclatch.rpc.aio import RpcServer, RpcStreamClient
from rpclatch.rpc.auth import ClientAuth, ConnectionInfo
from rpclatch.rpc.errors import RpcConnectionClosed
from rpclatch.rpc.server import RpcDispatcher

log = logging.getLogger(__name__)

#: How long a control request other than CREATE_CONNECTION_LATCH may take (seconds).
CONTROL_TIMEOUT = 5.0
_READ_CHUNK = 4096


class KeydUnavailable(ConnectError):
    """The key manager's control socket cannot be used (missing, refused, closed, access denied).
    A configuration problem, not a protection failure: the CLI reports it naming ``--keyd``."""


class KeydRefused(ConnectError):
    """The key manager answered a request with an error (``code``: its typed :class:`ErrorCode`)."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code.value}" + (f": {detail}" if detail else ""))
        self.code = code
        self.detail = detail


# -- the control connection --------------------------------------------------------------------


AlertCallback = Callable[[AlertKind, str], None]


class KeydControl:
    """One connection to the key manager's control socket, shared by the latches of a process.

    Requests may overlap (each waits for the answer with its id); alerts (RFC 5660 §2.2 ALERT) go
    to the callback registered for their latch. The latches this connection holds are released by
    the daemon when it closes (RELEASE_LATCH is implied)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: Path) -> None:
        self.path = path
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._alerts: dict[int, AlertCallback] = {}
        self._closed: str | None = None
        self._task = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def connect(cls, path: Path) -> KeydControl:
        """Connect to the daemon's socket and check it answers (STATUS); raises
        :class:`KeydUnavailable` in one line otherwise."""
        try:
            reader, writer = await asyncio.open_unix_connection(str(path))
        except FileNotFoundError:
            raise KeydUnavailable(f"{path}: no such socket (is `rpclatch ipsec keyd` running?)") from None
        except OSError as exc:
            raise KeydUnavailable(f"{path}: {exc.strerror or exc}") from None
        control = cls(reader, writer, path)
        try:
            await control.request("STATUS")
        except KeydRefused as exc:
            await control.close()
            raise KeydUnavailable(f"{path}: the key manager refused us: {exc}") from None
        return control

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def close(self) -> None:
        self._closed = self._closed or "closed"
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
        self._fail_waiting()

    def on_alert(self, latch: int, callback: AlertCallback) -> None:
        self._alerts[latch] = callback

    async def request(self, op: str, *, wait: float = CONTROL_TIMEOUT, **members: Any) -> dict[str, Any]:
        """Send one request; return the success answer's members, raise :class:`KeydRefused` for
        an error answer and :class:`KeydUnavailable` if the daemon went away or did not answer in
        ``wait`` seconds."""
        if self._closed is not None:
            raise KeydUnavailable(f"{self.path}: control connection {self._closed}")
        rid = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            self._writer.write(encode_frame({"op": op, "id": rid, **members}))
            async with asyncio.timeout(wait):
                answer = await fut
        except TimeoutError:
            raise KeydUnavailable(f"{self.path}: no answer to {op} within {wait:g}s") from None
        except (ConnectionError, OSError) as exc:
            raise KeydUnavailable(f"{self.path}: {exc}") from None
        finally:
            self._waiting.pop(rid, None)
        if answer.get("ok") is True:
            return answer
        try:
            code = ErrorCode(answer.get("error"))
        except ValueError:
            code = ErrorCode.INTERNAL
        raise KeydRefused(code, str(answer.get("detail", "")))

    def release(self, latch: int) -> None:
        """RELEASE_LATCH without waiting for the answer (the connection ended)."""
        self._alerts.pop(latch, None)
        if self._closed is None:
            rid = next(self._ids)
            with contextlib.suppress(ConnectionError, OSError, ValueError):
                self._writer.write(encode_frame({"op": "RELEASE_LATCH", "id": rid, "latch": latch}))

    async def _read_loop(self) -> None:
        decoder = FrameDecoder()
        try:
            while data := await self._reader.read(_READ_CHUNK):
                for frame in decoder.feed(data):
                    self._deliver(frame)
            self._closed = "closed by the key manager"
        except (ControlDecodeError, ConnectionError, OSError) as exc:
            self._closed = f"lost: {exc}"
        self._fail_waiting()
        # the daemon released every latch we held: their channels are gone
        for latch, callback in list(self._alerts.items()):
            self._alerts.pop(latch, None)
            callback(AlertKind.RELEASED, "the key manager closed the control connection")

    def _deliver(self, frame: bytes) -> None:
        try:
            message = json.loads(frame)
        except ValueError:
            log.warning("keyd control: undecodable frame from %s dropped", self.path)
            return
        if not isinstance(message, dict):
            return
        if "alert" in message:
            latch = message.get("latch")
            try:
                kind = AlertKind(message["alert"])
            except ValueError:
                log.warning("keyd control: unknown alert %r dropped", message["alert"])
                return
            callback = self._alerts.get(latch) if isinstance(latch, int) else None
            if callback is not None:
                callback(kind, str(message.get("detail", "")))
            return
        rid = message.get("id")
        fut = self._waiting.get(rid) if isinstance(rid, int) else None
        if fut is None and rid == 0:  # an error the daemon could not tie to a request
            fut = next(iter(self._waiting.values()), None)
        if fut is not None and not fut.done():
            fut.set_result(message)

    def _fail_waiting(self) -> None:
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError(f"control connection {self._closed}"))


# -- the channel -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LatchReport:
    """INQUIRE_LATCH as the key manager answered it (RFC 5660 §2.3)."""

    latch: int
    state: LatchState
    peer_spki: bytes | None
    qop: dict[str, Any]
    channel_bindings: bytes | None

    @classmethod
    def from_answer(cls, latch: int, answer: dict[str, Any]) -> LatchReport:
        try:
            state = LatchState(answer.get("state"))
        except ValueError:
            state = LatchState.BROKEN
        qop = answer.get("qop")
        return cls(
            latch,
            state,
            _hex(answer.get("peer_spki")),
            dict(qop) if isinstance(qop, dict) else {},
            _hex(answer.get("channel_bindings")),
        )

    @property
    def bypass(self) -> bool:
        """The key manager's BYPASS record for an unprotected accepted connection (RFC 5660 §3.1)."""
        return self.qop.get("protocol") == "BYPASS"

    @property
    def confidentiality(self) -> bool:
        """ESP encrypts (the key manager says so; absent means an ESP suite with a cipher, which
        is all it negotiates)."""
        return bool(self.qop.get("confidentiality", True))

    @property
    def peer(self) -> str:
        if self.peer_spki is None:
            return "unauthenticated peer (NULL authentication)"
        return f"raw key sha256:{spki_fingerprint(self.peer_spki)[:16]}"

    def describe_qop(self) -> str:
        suite = self.qop.get("suite", "?")
        mode = str(self.qop.get("mode", "transport")).lower()
        conf = "encrypting" if self.confidentiality else "integrity only"
        return f"ESP {mode} {suite} ({conf})"


def _hex(value: object) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


class KeydChannel(Channel):
    """A latched connection's channel as RPCSEC_GSS sees it: named by the channel-binding data the
    key manager computed from both ends' keys (RFC 5660 §2.5), up while the latch is ESTABLISHED.
    The same data at both ends means both latched to each other's keys; a relay in the middle
    latches each end to itself and the data differ (RFC 5403 §2)."""

    def __init__(self, data: bytes, protection: Protection) -> None:
        self._data = data
        self._protection = protection
        self._up = True
        self._callbacks: list[BreakCallback] = []
        self.reason: str | None = None

    @property
    def binding_prefix(self) -> str:
        return CB_PREFIX

    @property
    def binding_data(self) -> bytes:
        return self._data

    @property
    def protection(self) -> Protection:
        return self._protection

    def is_up(self) -> bool:
        return self._up

    def on_break(self, callback: BreakCallback) -> None:
        if not self._up:
            callback(self)
        else:
            self._callbacks.append(callback)

    def mark_broken(self, reason: str) -> None:
        if not self._up:
            return
        self._up = False
        self.reason = reason
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)


def channel_for(report: LatchReport) -> KeydChannel | None:
    if report.bypass or report.channel_bindings is None or report.state is not LatchState.ESTABLISHED:
        return None
    protection = Protection.INTEGRITY | (
        Protection.CONFIDENTIALITY if report.confidentiality else Protection.NONE
    )
    return KeydChannel(report.channel_bindings, protection)


def latch_view(report: LatchReport, channel: KeydChannel | None) -> LatchView:
    why_not = None
    if report.channel_bindings is None:
        why_not = (
            "the peer is unauthenticated (NULL authentication): no keys to name the channel by"
            if report.peer_spki is None
            else "the key manager gave no channel-binding data"
        )
    return LatchView(
        state=report.state,
        peer=report.peer,
        qop=report.describe_qop(),
        confidentiality=report.confidentiality,
        channel=channel if why_not is None else None,
        binding_unavailable=why_not,
    )


def _flow(local: tuple[Any, ...], remote: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "local_addr": str(local[0]),
        "local_port": int(local[1]),
        "remote_addr": str(remote[0]),
        "remote_port": int(remote[1]),
        "proto": "tcp",
    }


def five_tuple_text(local: tuple[Any, ...], remote: tuple[Any, ...]) -> str:
    return f"tcp {local[0]}:{local[1]} -> {remote[0]}:{remote[1]}"


def _abort(transport: asyncio.BaseTransport) -> None:
    """Close with an RST (SO_LINGER 0): the RFC 5660 §5.5 (b) reset."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if isinstance(transport, asyncio.Transport):
        transport.abort()
    else:
        transport.close()


# -- the client side ---------------------------------------------------------------------------


class KernelLink:
    """One RPC connection on a real socket (implements :class:`rpclatch.connect.world.RpcLink`)."""

    def __init__(
        self,
        conn_id: int,
        client: RpcStreamClient,
        five_tuple: str,
        latch: LatchView | None,
        control: KeydControl | None,
        handle: int | None,
    ) -> None:
        self.conn_id = conn_id
        self.client = client
        self.five_tuple = five_tuple
        self.latch = latch
        self._control = control
        self._handle = handle
        self._state: LatchState | None = None if latch is None else latch.state
        self._broken_reason = ""
        self._reset: str | None = None
        self._callbacks: list[Callable[[str], None]] = []
        if control is not None and handle is not None:
            control.on_alert(handle, self._alert)

    def _alert(self, kind: AlertKind, detail: str) -> None:
        """ALERT from the key manager (RFC 5660 §2.2): the latch is BROKEN (or was released)."""
        if self._state is None or self._state is LatchState.BROKEN:
            return
        self._state = LatchState.BROKEN if kind is AlertKind.BROKEN else LatchState.CLOSED
        self._broken_reason = f"{kind.value}" + (f": {detail}" if detail else "")
        channel = self.latch.channel if self.latch is not None else None
        if isinstance(channel, KeydChannel):
            channel.mark_broken(self._broken_reason)
        for callback in self._callbacks:
            callback(self._broken_reason)

    async def call(self, auth: ClientAuth, prog: int, vers: int, proc: int, args: bytes) -> bytes:
        if self._reset is not None:
            raise ConnectionReset(f"connection reset: {self._reset}")
        try:
            return await self.client.call(prog, vers, proc, args, auth=auth)
        except RpcConnectionClosed as exc:
            if self._reset is not None:
                raise ConnectionReset(f"connection reset: {self._reset}") from exc
            raise

    def latch_state(self) -> LatchState | None:
        return self._state

    def on_latch_broken(self, callback: Callable[[str], None]) -> None:
        self._callbacks.append(callback)

    def reset(self, reason: str) -> None:
        if self._reset is None:
            self._reset = reason
            _abort(self.client.transport)
            self._release()

    @property
    def is_open(self) -> bool:
        return self._reset is None and not self.client.closed

    def close(self) -> None:
        if not self.client.closed:
            self.client.transport.close()
        self._release()

    def _release(self) -> None:
        if self._control is not None and self._handle is not None:
            self._control.release(self._handle)
            self._handle = None


class KernelClientWorld:
    """Opens connections to ``server_addr`` from this host, through the key manager on
    ``keyd_path`` (implements :class:`rpclatch.connect.world.ClientWorld`). Call :meth:`close` at
    the end (it closes the control connection, which releases what is still held)."""

    name = "kernel"

    def __init__(
        self,
        server_addr: str,
        keyd_path: Path,
        *,
        rpc_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        source_addr: str | None = None,
    ) -> None:
        self.server_addr = str(ipaddress.ip_address(server_addr))
        self.keyd_path = keyd_path
        self.rpc_timeout = rpc_timeout
        self.connect_timeout = connect_timeout
        self.source_addr = source_addr
        self.control: KeydControl | None = None
        self.links: list[KernelLink] = []
        self._ids = itertools.count(1)
        #: seconds the last CREATE_CONNECTION_LATCH took (to ESTABLISHED or to its refusal)
        self.last_latch_seconds: float | None = None

    async def start(self) -> None:
        """Connect to the key manager (raises :class:`KeydUnavailable`)."""
        if self.control is None or self.control.closed:
            old, self.control = self.control, await KeydControl.connect(self.keyd_path)
            if old is not None:
                await old.close()  # the key manager closed it (it restarted): release our end

    async def close(self) -> None:
        for link in self.links:
            link.close()
        if self.control is not None:
            await self.control.close()

    def _source(self) -> str:
        if self.source_addr is not None:
            return self.source_addr
        family = socket.AF_INET6 if ":" in self.server_addr else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:  # the route's source address
            probe.connect((self.server_addr, 9))
            return str(probe.getsockname()[0])

    def _socket(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.server_addr else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind((self._source(), 0))
        except OSError:
            sock.close()
            raise
        return sock

    async def open(
        self, port: int, *, protect: bool, btns_ok: bool, ike_timeout: float, wait_on_break: bool = False
    ) -> KernelLink:
        if wait_on_break:
            raise ConnectError(
                "the kernel world resets on ALERT BROKEN (RFC 5660 §5.5 (b)); 'wait' is not offered"
            )
        loop = asyncio.get_running_loop()
        sock = self._socket()
        local = sock.getsockname()
        remote = (self.server_addr, port)
        handle: int | None = None
        view: LatchView | None = None
        control = self.control
        try:
            if protect:
                if control is None or control.closed:
                    await self.start()
                    control = self.control
                assert control is not None
                handle, view = await self._latch(control, local, remote, ike_timeout, btns_ok)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await loop.sock_connect(sock, remote)
            except (OSError, TimeoutError) as exc:
                what = exc.strerror if isinstance(exc, OSError) and exc.strerror else "timed out"
                raise ConnectError(f"cannot connect to {self.server_addr}:{port}: {what}") from exc
            client = await RpcStreamClient.connect_tcp(
                self.server_addr,
                port,
                sock=sock,
                timeout=self.rpc_timeout,
                connect_timeout=self.connect_timeout,
            )
        except BaseException:
            sock.close()
            if handle is not None and control is not None:
                control.release(handle)
            raise
        link = KernelLink(next(self._ids), client, five_tuple_text(local, remote), view, control, handle)
        self.links.append(link)
        return link

    async def _latch(
        self,
        control: KeydControl,
        local: tuple[Any, ...],
        remote: tuple[Any, ...],
        ike_timeout: float,
        btns_ok: bool,
    ) -> tuple[int, LatchView]:
        """CREATE_CONNECTION_LATCH for the bound 5-tuple, then INQUIRE_LATCH (RFC 5660 §2.3)."""
        t0 = time.monotonic()
        try:
            answer = await control.request(
                "CREATE_CONNECTION_LATCH",
                wait=ike_timeout + CONTROL_TIMEOUT,
                timeout=ike_timeout,
                **_flow(local, remote),
            )
        except KeydRefused as exc:
            self.last_latch_seconds = time.monotonic() - t0
            raise ProtectionFailed(f"key manager: {exc} after {self.last_latch_seconds:.3f}s") from exc
        self.last_latch_seconds = time.monotonic() - t0
        handle = int(answer["latch"])
        try:
            info = await control.request("INQUIRE_LATCH", latch=handle)
        except KeydRefused as exc:
            control.release(handle)
            raise ProtectionFailed(f"INQUIRE_LATCH failed: {exc}") from exc
        report = LatchReport.from_answer(handle, info)
        if report.state is not LatchState.ESTABLISHED:
            control.release(handle)
            raise ProtectionFailed(f"the latch is {report.state.value}, not ESTABLISHED")
        if not btns_ok:
            # the key manager authenticates peers by raw keys or NULL authentication only: nothing
            # in INQUIRE_LATCH says the peer is more than self-asserted (BTNS, RFC 5386)
            control.release(handle)
            raise ProtectionFailed(f"latched peer {report.peer} is unauthenticated (BTNS), btns_ok is off")
        return handle, latch_view(report, channel_for(report))


# -- the server side ---------------------------------------------------------------------------


@dataclass(slots=True)
class AcceptedConnection:
    """One accepted connection and what FIND_LATCH said about it."""

    five_tuple: str
    latch: int | None
    channel: KeydChannel | None
    report: LatchReport | None
    info: ConnectionInfo | None = None
    transport: asyncio.BaseTransport | None = None

    @property
    def bypass(self) -> bool:
        """Not latched; the key manager holds a BYPASS record for the 5-tuple (RFC 5660 §3.1)."""
        return self.report is not None and self.report.bypass

    @property
    def latch_state(self) -> LatchState | None:
        if self.channel is None:
            return None if self.latch is None or self.bypass else LatchState.ESTABLISHED
        return LatchState.ESTABLISHED if self.channel.is_up() else LatchState.BROKEN


class KernelServerEndpoint:
    """An RPC server under BYPASS-OR-PROTECT on a real socket (see the module docstring).

    ``await endpoint.start(host, port)`` listens (returns the port); ``await endpoint.close()``.
    ``server_options`` go to :class:`rpclatch.rpc.aio.RpcServer`. ``accepted`` lists every
    connection accepted so far with its latch (for reports and tests)."""

    def __init__(self, dispatcher: RpcDispatcher, keyd_path: Path, **server_options: Any) -> None:
        self.dispatcher = dispatcher
        self.keyd_path = keyd_path
        self.server_options = server_options
        self.control: KeydControl | None = None
        self.server: RpcServer | None = None
        self.listener_latch: int | None = None
        self.accepted: list[AcceptedConnection] = []
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._by_peer: dict[tuple[str, int], AcceptedConnection] = {}
        self._by_conn: dict[int, AcceptedConnection] = {}
        self._listener: dict[str, Any] = {}

    async def start(self, host: str, port: int) -> int:
        self.control = await KeydControl.connect(self.keyd_path)
        addr = ipaddress.ip_address(host)
        family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            await self.control.close()
            raise
        self._sock = sock
        bound = int(sock.getsockname()[1])
        self._listener = {"local_port": bound, "proto": "tcp"}
        if not addr.is_unspecified:
            self._listener["local_addr"] = str(addr)
        try:
            self.listener_latch = int(
                (await self.control.request("CREATE_LISTENER_LATCH", **self._listener))["latch"]
            )
        except KeydRefused as exc:
            await self.close()
            raise KeydUnavailable(f"{self.keyd_path}: CREATE_LISTENER_LATCH refused: {exc}") from exc
        self.server = RpcServer(
            self.dispatcher,
            on_connection=self._on_connection,
            on_connection_closed=self._on_connection_closed,
            **self.server_options,
        )
        self._task = asyncio.ensure_future(self._accept_loop())
        return bound

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sock is not None:
            self._sock.close()
        if self.server is not None:
            await self.server.close()
        if self.control is not None:
            await self.control.close()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        while True:
            try:
                conn, _peer = await loop.sock_accept(self._sock)
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            try:
                await self._admit(conn)
            except Exception as exc:  # one bad connection never stops the server
                log.warning("dropping an accepted connection: %s", exc)
                conn.close()
            except BaseException:  # closed while admitting it (FIND_LATCH pending): not leaked
                conn.close()
                raise

    async def _control(self) -> KeydControl:
        """The control connection, made again (with a new LISTENER latch, RFC 5660 §5.1) when the
        key manager closed it -- it restarted: its latches, the LISTENER one included, went with
        it. Raises KeydUnavailable (or KeydRefused) while it cannot be reached."""
        assert self.control is not None
        if not self.control.closed:
            return self.control
        control = await KeydControl.connect(self.keyd_path)
        try:
            answer = await control.request("CREATE_LISTENER_LATCH", **self._listener)
        except BaseException:
            await control.close()
            raise
        old, self.control = self.control, control
        await old.close()
        self.listener_latch = int(answer["latch"])
        log.info("key manager at %s reconnected: new LISTENER latch %d", self.keyd_path, self.listener_latch)
        return control

    async def _admit(self, conn: socket.socket) -> None:
        """FIND_LATCH for the accepted 5-tuple (RFC 5660 §2.3), then serve it."""
        local, remote = conn.getsockname(), conn.getpeername()
        text = five_tuple_text(local, remote)
        latch: int | None = None
        report: LatchReport | None = None
        channel: KeydChannel | None = None
        assert self.control is not None and self.server is not None
        try:
            await self._control()
        except (KeydRefused, KeydUnavailable) as exc:
            log.warning("key manager at %s: %s; serving %s unlatched", self.keyd_path, exc, text)
        try:
            latch = int((await self.control.request("FIND_LATCH", **_flow(local, remote)))["latch"])
        except KeydRefused as exc:
            if exc.code is not ErrorCode.NO_SUCH_LATCH:
                log.warning("FIND_LATCH %s: %s", text, exc)
        except KeydUnavailable as exc:
            log.warning("FIND_LATCH %s: %s; serving it unlatched", text, exc)
        if latch is not None:
            try:
                report = LatchReport.from_answer(
                    latch, await self.control.request("INQUIRE_LATCH", latch=latch)
                )
            except (KeydRefused, KeydUnavailable) as exc:
                log.warning("INQUIRE_LATCH %s: %s", text, exc)
            else:
                channel = channel_for(report)
        entry = AcceptedConnection(text, latch, channel, report)
        self.accepted.append(entry)
        if latch is not None:
            self.control.on_alert(latch, functools.partial(self._alert, entry))
        log.info(
            "accepted %s: %s",
            text,
            "not latched (the key manager holds a BYPASS record for it)"
            if entry.bypass
            else f"latched to {report.peer} ({report.describe_qop()})"
            if report is not None
            else "not latched",
        )
        self._by_peer[(str(remote[0]), int(remote[1]))] = entry
        conn.setblocking(False)
        await self.server.accept_socket(conn)

    def _on_connection(self, info: ConnectionInfo, transport: asyncio.BaseTransport) -> None:
        """Runs before any call on the connection is dispatched: its channel for RPCSEC_GSS."""
        peer = transport.get_extra_info("peername")
        entry = self._by_peer.pop((str(peer[0]), int(peer[1])), None) if peer else None
        if entry is None:
            return
        entry.info = info
        entry.transport = transport
        info.channel = entry.channel
        self._by_conn[info.conn_id] = entry

    def _on_connection_closed(self, info: ConnectionInfo) -> None:
        entry = self._by_conn.pop(info.conn_id, None)
        if entry is not None and entry.latch is not None and self.control is not None:
            self.control.release(entry.latch)

    def _alert(self, entry: AcceptedConnection, kind: AlertKind, detail: str) -> None:
        """ALERT BROKEN: the channel is down (channel_prot is refused from now on) and the
        connection is reset (RFC 5660 §5.5 (b))."""
        reason = f"{kind.value}" + (f": {detail}" if detail else "")
        log.warning("latch of %s %s; resetting the connection", entry.five_tuple, reason)
        if entry.channel is not None:
            entry.channel.mark_broken(reason)
        if entry.transport is not None and not entry.transport.is_closing():
            _abort(entry.transport)
