"""The asyncio shell of the IKEv2 core: one UDP socket (port 500, RFC 7296 §2), the core's timers
on the event loop, and every negotiated CHILD_SA installed in a datapath.

:class:`IkeUdpEndpoint` feeds each datagram to an :class:`~rpclatch.ipsec.ike.IkeDispatcher`,
sends what it answers, arms one loop timer at the dispatcher's deadline, and turns its events into
datapath calls on a :class:`~rpclatch.ipsec.backend.Backend` (in practice
:class:`rpclatch.ipsec.xfrm.backend.XfrmBackend` built with a :class:`NegotiatedKeys`):

* ``ChildSaEstablished`` -> ``Backend.install_sa`` of an RFC 4301 SAD entry carrying the
  negotiated SPIs, keys (RFC 7296 §2.17, AES-GCM key || salt, RFC 4106 §8.1), suite, mode and the
  narrowed selector (§2.9). A narrow SA (one 5-tuple) gets its per-flow policies from the backend;
  a wider one is also put in the backend's SPD mirror as a PROTECT entry, with reqid 0 so the
  kernel's template matches it;
* ``ChildSaDeleted`` (also after a rekey, §1.3.3), ``IkeSaDeleted`` and ``IkeSaFailed`` ->
  ``Backend.remove_sa`` of the SAs concerned; ``IkeSaRekeyed`` moves the installed CHILD_SAs to
  the new IKE SA (§2.18), so the old one's deletion leaves them in place.

ICMP errors (RFC 7296 §2.4, §2.21.4): :meth:`IkeUdpEndpoint.open` turns on ``IP_RECVERR`` /
``IPV6_RECVERR`` on the socket, without which Linux reports no ICMP error on an unconnected UDP
socket. The kernel then queues each ICMP error about a datagram we sent, with the datagram's
original destination and as much of its payload as the ICMP message quoted; asyncio's
``error_received`` only gets the bare ``ConnectionRefusedError``, so the shell reads the error
queue itself (``MSG_ERRQUEUE``; left unread it keeps the socket readable for ever). A port
unreachable (``ECONNREFUSED``, from ICMP or ICMPv6) goes to
:meth:`~rpclatch.ipsec.ike.IkeDispatcher.peer_unreachable`, which fails only an IKE_SA_INIT of
ours that nothing has answered; every other ICMP error is logged and ignored. A pending ICMP error
also makes the kernel refuse the socket's next ``sendto``; a datagram refused that way while the
shell sends is sent once more after the error is taken.

Every event is also kept (:attr:`IkeUdpEndpoint.events`) and can be awaited
(:meth:`IkeUdpEndpoint.wait_for`). The socket is the caller's: it must be bound to the address
peers send to (the core puts it in the NAT_DETECTION hashes), in whatever network namespace.
Nothing from the network raises out of the shell: the core drops or answers bad input, and a
datapath failure is logged and reported as an event-less error count.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import ipaddress
import itertools
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from rpclatch.ipsec.backend import Backend
from rpclatch.ipsec.ike.config import ChildRequest, Endpoint
from rpclatch.ipsec.ike.dispatcher import IkeDispatcher
from rpclatch.ipsec.ike.events import (
    ChildSa,
    ChildSaDeleted,
    ChildSaEstablished,
    IkeEvent,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
)
from rpclatch.ipsec.ike.sa import IkeSa
from rpclatch.ipsec.model import (
    AuthMethod,
    IkeSaRef,
    IPAddress,
    LocalIdentity,
    ProtectionParams,
    ProtectionPolicy,
)
from rpclatch.ipsec.sad import SecurityAssociation
from rpclatch.ipsec.spd import SpdAction, SpdEntry

log = logging.getLogger(__name__)

#: reqids of narrow CHILD_SAs (wide ones use reqid 0, which the SPD mirror's templates match)
REQID_BASE = 0x5EC0000


#: Linux socket options and flag for ICMP errors on UDP sockets (ip(7), ipv6(7)); Python 3.11's
#: socket module names only MSG_ERRQUEUE
IP_RECVERR = 11
IPV6_RECVERR = 25
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
#: struct sock_extended_err (linux/errqueue.h): errno, origin, type, code, pad, info, data
_EXTENDED_ERR = struct.Struct("=IBBBBII")
_ORIGIN_ICMP, _ORIGIN_ICMP6 = 2, 3
#: the most of a quoted datagram read back (the IKE header's SPIs are its first 16 octets)
_QUOTE_READ = 64
#: error-queue entries read per wake-up (the queue is bounded by the socket's receive buffer)
_ERRQUEUE_BATCH = 256


def enable_icmp_errors(sock: socket.socket) -> bool:
    """Ask the kernel to queue ICMP errors on ``sock`` (``IP_RECVERR``, and ``IPV6_RECVERR`` on an
    IPv6 socket); False where the platform refuses (the endpoint then learns nothing from ICMP)."""
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            with contextlib.suppress(OSError):  # IPv4 traffic on a dual-stack socket
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    except OSError as exc:
        log.info("IKE socket: no ICMP error reports (%s)", exc)
        return False
    return True


@dataclass(frozen=True, slots=True)
class IcmpError:
    """One entry of a socket's error queue: the ``errno`` the kernel mapped the ICMP message to,
    its type and code, the original destination of the datagram concerned, and the part of that
    datagram's payload the ICMP message quoted."""

    errno: int
    icmp_type: int
    icmp_code: int
    destination: tuple[IPAddress, int]
    quoted: bytes


def read_icmp_errors(sock: socket.socket, limit: int = _ERRQUEUE_BATCH) -> list[IcmpError]:
    """Read (and so clear) up to ``limit`` entries of ``sock``'s error queue; entries that are not
    ICMP errors (or that do not parse) are consumed and skipped. Never raises."""
    out: list[IcmpError] = []
    for _ in range(limit):
        try:
            data, ancdata, _flags, name = sock.recvmsg(_QUOTE_READ, 512, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            break
        except OSError as exc:
            log.debug("IKE socket error queue: %s", exc)
            break
        for level, kind, cdata in ancdata:
            if (level, kind) not in ((socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)):
                continue
            if len(cdata) < _EXTENDED_ERR.size or not isinstance(name, tuple) or len(name) < 2:
                continue
            err, origin, icmp_type, icmp_code, _pad, _info, _data = _EXTENDED_ERR.unpack_from(cdata)
            if origin not in (_ORIGIN_ICMP, _ORIGIN_ICMP6):
                continue
            try:  # spelled as datagram_received spells a source
                addr = ipaddress.ip_address(str(name[0]))
            except ValueError:
                continue
            out.append(IcmpError(err, icmp_type, icmp_code, (addr, int(name[1])), bytes(data)))
    return out


class NegotiatedKeys:
    """The ESP keys IKE negotiated, by SA direction (destination, SPI): the key source of an
    :class:`~rpclatch.ipsec.xfrm.backend.XfrmBackend` whose SAs come from IKE."""

    def __init__(self) -> None:
        self._keys: dict[tuple[IPAddress, int], bytes] = {}

    def add(self, dst: IPAddress, spi: int, key: bytes) -> None:
        self._keys[(dst, spi)] = key

    def discard(self, dst: IPAddress, spi: int) -> None:
        self._keys.pop((dst, spi), None)

    def get(self, dst: IPAddress, spi: int) -> bytes | None:
        return self._keys.get((dst, spi))

    def __len__(self) -> int:
        return len(self._keys)

    def key(self, sa: SecurityAssociation, spi: int, dst: IPAddress, nbytes: int) -> bytes:
        key = self._keys.get((dst, spi))
        if key is None or len(key) != nbytes:
            raise KeyError(f"no {nbytes}-octet negotiated key for SPI {spi:#x} to {dst}")
        return key


@dataclass(frozen=True, slots=True)
class InstalledChild:
    """A CHILD_SA as installed: the SAD entry handed to the backend and the IKE SA it belongs to."""

    sad_entry: SecurityAssociation
    child: ChildSa


class IkeUdpEndpoint(asyncio.DatagramProtocol):
    """One local IKE endpoint on an asyncio loop (see the module docstring).

    ``await IkeUdpEndpoint.open(dispatcher, sock, backend=..., keys=...)`` starts it on the
    caller's bound UDP socket; :meth:`close` deletes nothing on the wire but removes every SA it
    installed (callers wanting a clean INFORMATIONAL DELETE call :meth:`delete` first)."""

    def __init__(
        self,
        dispatcher: IkeDispatcher,
        *,
        backend: Backend | None = None,
        keys: NegotiatedKeys | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if backend is not None and keys is None:
            raise ValueError("a backend needs the NegotiatedKeys it reads the SA keys from")
        self.dispatcher = dispatcher
        self.backend = backend
        self.keys = keys
        self._clock = clock
        self._transport: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None
        #: ICMP errors read from the socket's error queue (port unreachable or not)
        self.icmp_errors = 0
        self._flushing = False
        self._errors_pending = False
        self._send_refused = False
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count(1)
        self._waiters: list[tuple[Callable[[IkeSaRef, IkeEvent], bool], asyncio.Future[IkeEvent]]] = []
        #: every event so far, in order, with the IKE SA it concerns
        self.events: list[tuple[IkeSaRef, IkeEvent]] = []
        #: installed CHILD_SAs by inbound SPI
        self.installed: dict[int, InstalledChild] = {}
        #: datapath calls that failed (logged)
        self.datapath_errors = 0
        self._spd: list[SpdEntry] = []
        self._btns: dict[IkeSaRef, bool] = {}

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def open(
        cls,
        dispatcher: IkeDispatcher,
        sock: socket.socket,
        *,
        backend: Backend | None = None,
        keys: NegotiatedKeys | None = None,
    ) -> IkeUdpEndpoint:
        """Start the endpoint on ``sock`` (a bound UDP socket; the endpoint owns it from now on)."""
        loop = asyncio.get_running_loop()
        endpoint = cls(dispatcher, backend=backend, keys=keys)
        if enable_icmp_errors(sock):
            endpoint._sock = sock
        await loop.create_datagram_endpoint(lambda: endpoint, sock=sock)
        return endpoint

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        self._loop = asyncio.get_running_loop()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._sock = None
        self._cancel_timer()

    def close(self) -> None:
        """Stop the timers, close the socket, and remove every SA this endpoint installed."""
        self._cancel_timer()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._sock = None
        for spi_in in list(self.installed):
            self._remove(spi_in)
        if self.backend is not None and self._spd:
            self._spd.clear()
            self._guard(lambda: self.backend.install_spd([]) if self.backend else None, "clear SPD")
        for _pred, fut in self._waiters:
            if not fut.done():
                fut.cancel()
        self._waiters.clear()

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        assert self._loop is not None
        return self._loop.time()

    # ------------------------------------------------------------------ local requests

    def initiate(self, remote: Endpoint, request: ChildRequest, *, initial_contact: bool = False) -> IkeSa:
        """Start IKE_SA_INIT towards ``remote``; the CHILD_SA of ``request`` comes with IKE_AUTH
        (with INITIAL_CONTACT if ``initial_contact``, RFC 7296 §2.4)."""
        sa = self.dispatcher.initiate(remote, request, self.now(), initial_contact=initial_contact)
        self._flush()
        return sa

    def delete(self, sa: IkeSa) -> None:
        """Send an INFORMATIONAL DELETE of the IKE SA (and so of its CHILD_SAs, §1.4.1)."""
        self._request(sa, sa.delete)

    def delete_child(self, sa: IkeSa, spi_in: int) -> None:
        """Delete one CHILD_SA (INFORMATIONAL DELETE of its inbound SPI, §1.4.1)."""
        self._request(sa, lambda now: sa.delete_child(spi_in, now))

    def rekey_child(self, sa: IkeSa, spi_in: int) -> None:
        """Rekey one CHILD_SA (CREATE_CHILD_SA, §1.3.3): the new pair is installed when
        established, the old one removed when its deletion completes."""
        self._request(sa, lambda now: sa.rekey_child(spi_in, now))

    def rekey(self, sa: IkeSa) -> None:
        """Rekey the IKE SA (CREATE_CHILD_SA, §1.3.2); its CHILD_SAs move to the new one."""
        self._request(sa, sa.rekey)

    def check_liveness(self, sa: IkeSa) -> None:
        """An empty INFORMATIONAL request (§1.4); no answer fails the SA and removes its SAs."""
        self._request(sa, sa.check_liveness)

    def _request(self, sa: IkeSa, call: Callable[[float], None]) -> None:
        """Run a local request on ``sa`` (IkeLocalError if its state does not allow it) and send."""
        now = self.now()
        call(now)
        self.dispatcher.poll(sa, now)
        self._flush()

    async def wait_for(self, predicate: Callable[[IkeSaRef, IkeEvent], bool], timeout: float) -> IkeEvent:
        """The first event (already seen or to come) for which ``predicate`` holds; TimeoutError
        after ``timeout`` seconds."""
        for ref, event in self.events:
            if predicate(ref, event):
                return event
        assert self._loop is not None
        fut: asyncio.Future[IkeEvent] = self._loop.create_future()
        entry = (predicate, fut)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    # ------------------------------------------------------------------ datagrams and timers

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        try:
            src = ipaddress.ip_address(str(addr[0]))
        except ValueError:
            log.warning("datagram from an unparsable address %r dropped", addr)
            return
        self.dispatcher.receive_datagram(data, (src, int(addr[1])), self.now())
        self._flush()

    def error_received(self, exc: Exception) -> None:
        """asyncio saw a socket error (with ``IP_RECVERR``: an ICMP error is queued). Read the
        error queue and hand each port unreachable to the dispatcher (module docstring).

        A pending ICMP error also makes the kernel refuse the next ``sendto`` on the socket (the
        datagram is not sent, asyncio calls this method instead of raising): when that happens
        while :meth:`_flush` sends, the datagram is sent again once the error is taken, so an
        unreachable peer never costs another peer a retransmission."""
        if self._flushing:
            self._errors_pending = True
            self._send_refused = True  # only our own sendto reports errors while we flush
            return
        if not self._read_errors():
            log.info("IKE socket error: %s", exc)
            return
        self._flush()

    def _read_errors(self) -> bool:
        """Drain the error queue into the dispatcher; False if it held nothing."""
        sock = self._sock
        errors = read_icmp_errors(sock) if sock is not None and self._transport is not None else []
        now = self.now()
        for err in errors:
            self.icmp_errors += 1
            if err.errno != errno.ECONNREFUSED:
                log.info(
                    "ICMP error (type %d code %d, %s) for %s:%d ignored",
                    err.icmp_type,
                    err.icmp_code,
                    errno.errorcode.get(err.errno, err.errno),
                    *err.destination,
                )
                continue
            failed = self.dispatcher.peer_unreachable(err.destination, err.quoted, now)
            log.info("ICMP port unreachable from %s:%d: %d IKE SA(s) failed", *err.destination, failed)
        return bool(errors)

    def _on_timer(self) -> None:
        self._timer = None
        self.dispatcher.handle_timer(self.now())
        self._flush()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _flush(self) -> None:
        """Act on the core's events, send what it has to send, re-arm the timer (ICMP errors
        reported meanwhile are read after each round, see :meth:`error_received`)."""
        now = self.now()
        while True:
            self._flushing = True
            try:
                # events first: a responder's CHILD_SA is in the kernel before the IKE_AUTH or
                # CREATE_CHILD_SA response that lets the initiator use it leaves (RFC 7296 §2.8:
                # the responder must be ready for traffic on the new SA), so the peer's first
                # packet never meets a half-installed pair
                while (item := self.dispatcher.next_event()) is not None:
                    sa, event = item
                    self._on_event(sa, event)
                for data, (addr, port) in self.dispatcher.datagrams_to_send(now):
                    self._send(data, (str(addr), port))
            finally:
                self._flushing = False
            if not self._errors_pending:
                break
            self._errors_pending = False
            self._read_errors()
        self._cancel_timer()
        deadline = self.dispatcher.get_timer()
        if deadline is not None and self._loop is not None and self._transport is not None:
            self._timer = self._loop.call_later(max(0.0, deadline - now), self._on_timer)

    def _send(self, data: bytes, dest: tuple[str, int]) -> None:
        """``sendto``, once more if a pending ICMP error made the kernel refuse it."""
        for _attempt in range(2):
            if self._transport is None:
                return
            self._send_refused = False
            self._transport.sendto(data, dest)
            if not self._send_refused:
                return
        self._send_refused = False

    # ------------------------------------------------------------------ events -> datapath

    def _on_event(self, sa: IkeSa, event: IkeEvent) -> None:
        ref = sa.ref
        self.events.append((ref, event))
        log.info("%s: %s", ref, type(event).__name__)
        if isinstance(event, IkeSaEstablished):
            self._btns[ref] = event.btns
        elif isinstance(event, ChildSaEstablished):
            self._install(sa, event.child)
        elif isinstance(event, ChildSaDeleted):
            self._remove(event.spi_in)
        elif isinstance(event, IkeSaRekeyed):  # the CHILD_SAs now belong to the new IKE SA
            self._btns[event.new] = self._btns.get(event.old, False)
            for spi_in, inst in list(self.installed.items()):
                if inst.sad_entry.ike_sa == event.old:
                    entry = dataclasses.replace(inst.sad_entry, ike_sa=event.new)
                    self.installed[spi_in] = InstalledChild(entry, inst.child)
        elif isinstance(event, IkeSaDeleted | IkeSaFailed):
            for spi_in, inst in list(self.installed.items()):
                if inst.sad_entry.ike_sa == event.ike_sa:
                    self._remove(spi_in)
        for pred, fut in list(self._waiters):
            if not fut.done() and pred(ref, event):
                fut.set_result(event)

    def _install(self, sa: IkeSa, child: ChildSa) -> None:
        if self.backend is None or self.keys is None or sa.peer is None:
            return
        cred = self.dispatcher.config.credentials
        local = LocalIdentity(
            cred.ike_id,
            AuthMethod.RAW_PUBLIC_KEY if cred.key is not None else AuthMethod.NULL,
            cred.spki,
        )
        sa_id = next(self._ids)
        entry = SecurityAssociation(
            sa_id=sa_id,
            spi_in=child.spi_in,
            spi_out=child.spi_out,
            local_addr=sa.local[0],
            remote_addr=sa.remote[0],
            traffic_selectors=(child.selector,),
            peer=sa.peer,
            local=local,
            params=ProtectionParams(mode=child.mode, suite=child.suite),
            ike_sa=sa.ref,
            btns=self._btns.get(sa.ref, False),
        )
        narrow = entry.is_narrow
        if narrow:  # pinned per-flow policies (backend) tie the flow to this SA pair by reqid
            entry = dataclasses.replace(entry, reqid=REQID_BASE + sa_id)
        self.keys.add(entry.remote_addr, child.spi_out, child.key_out)
        self.keys.add(entry.local_addr, child.spi_in, child.key_in)
        backend = self.backend
        if not self._guard(lambda: backend.install_sa(entry), f"install {entry}"):
            return
        self.installed[child.spi_in] = InstalledChild(entry, child)
        if not narrow:
            self._spd.append(
                SpdEntry(
                    f"ike-child-{child.spi_in:08x}", (child.selector,), SpdAction.PROTECT, ProtectionPolicy()
                )
            )
            self._guard(lambda: backend.install_spd(self._spd), "install SPD")

    def _remove(self, spi_in: int) -> None:
        inst = self.installed.pop(spi_in, None)
        if inst is None or self.backend is None:
            return
        backend = self.backend
        self._guard(lambda: backend.remove_sa(inst.sad_entry), f"remove {inst.sad_entry}")
        name = f"ike-child-{spi_in:08x}"
        if any(e.name == name for e in self._spd):
            self._spd = [e for e in self._spd if e.name != name]
            self._guard(lambda: backend.install_spd(self._spd), "install SPD")
        if self.keys is not None:
            self.keys.discard(inst.sad_entry.remote_addr, inst.child.spi_out)
            self.keys.discard(inst.sad_entry.local_addr, inst.child.spi_in)

    def _guard(self, call: Callable[[], object], what: str) -> bool:
        try:
            call()
        except Exception:  # the datapath's failure must not kill the IKE loop
            self.datapath_errors += 1
            log.exception("datapath: %s failed", what)
            return False
        return True
