"""The simulation's IKE daemon: a miniature IKE ("SIKE") per host, :class:`SikeDaemon`.

It plays the key-manager role of RFC 5660 §2.3: the latch database asks it for child SAs
(:meth:`SikeDaemon.request_sa`, an ACQUIRE), and it reports results back through the engine
(SA installed -> LARVAL latches become ESTABLISHED; failure/timeout -> LARVAL latches CLOSE and the
ULP is told "not latched"). As a responder it authorizes peers and their traffic selectors with
the host's PAD (RFC 4301 §4.4.3.4) and lets the latch database vet every child SA before it is
installed (RFC 5660 §2.3: narrow, or break the latch and ALERT first).

The exchange is real cryptography: X25519 key agreement, HKDF-SHA256 key derivation (RFC 4106
key || salt per direction), Ed25519 signatures over the transcript (raw keys / simulated
certificates) or none (NULL auth, RFC 7619). ``mode`` simulates the daemon being present, absent
(requests vanish -> initiator timeout), refusing, or slow.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from rpclatch.ipsec.errors import IPsecRemoteError
from rpclatch.ipsec.model import (
    AES_GCM_128,
    AES_GCM_256,
    AddressRange,
    FiveTuple,
    IkeSaRef,
    IPAddress,
    PeerIdentity,
    PortRange,
    ProtectionParams,
    ProtectionPolicy,
    Selector,
)
from rpclatch.ipsec.pad import PeerAuthorizationDatabase
from rpclatch.ipsec.sad import SecurityAssociation, SecurityAssociationDatabase
from rpclatch.netsim.clock import Scheduler, Timer
from rpclatch.netsim.errors import SimWireError
from rpclatch.netsim.esp import EspKeys, ReplayWindow
from rpclatch.netsim.identity import AuthFailure, Credentials, SimCA, verify_peer
from rpclatch.netsim.ike_wire import (
    FLAG_INITIAL_CONTACT,
    SIKE_PORT,
    Informational,
    InitRequest,
    InitResponse,
    SikeStatus,
    SikeType,
    decode_sike,
)
from rpclatch.netsim.ip import PROTO_UDP, IpPacket
from rpclatch.netsim.pcapng import EspSaExport
from rpclatch.netsim.udp import UdpDatagram

log = logging.getLogger(__name__)


class IkeMode(enum.Enum):
    PRESENT = "present"  # answers normally
    ABSENT = "absent"  # no daemon: requests vanish, initiators time out
    REFUSE = "refuse"  # answers NO_PROPOSAL_CHOSEN to everything
    SLOW = "slow"  # answers after ``slow_delay`` seconds


class KmEngine(Protocol):
    """What the key manager needs from the host's IPsec engine (adapter in ``stack.py``)."""

    pad: PeerAuthorizationDatabase
    sad: SecurityAssociationDatabase

    def km_install_sa(self, sa: SecurityAssociation, now: float) -> SecurityAssociation | None:
        """Vet (RFC 5660 §2.3), then install; returns the installed (maybe narrowed) SA or None."""

    def km_remove_sa(self, sa_id: int, now: float) -> None: ...

    def km_setup_failed(self, flow: FiveTuple, *, timeout: bool, detail: str) -> None: ...

    def km_peer_dead(self, peer: PeerIdentity) -> None: ...

    def km_exchange_done(self, flow: FiveTuple, sa: SecurityAssociation) -> None:
        """The exchange for ``flow`` finished with ``sa`` installed; a latch still waiting cannot use it."""


@dataclass
class ChildKeys:
    """The ESP state of one installed child-SA pair."""

    sa_id: int
    outbound: EspKeys
    inbound: EspKeys
    seq_out: int = 0
    replay: ReplayWindow = field(default_factory=ReplayWindow)


@dataclass
class IkeSa:
    ref: IkeSaRef
    peer: PeerIdentity
    peer_addr: IPAddress
    local_addr: IPAddress
    initiator: bool
    children: set[int] = field(default_factory=set)
    dpd_misses: int = 0
    dpd_msg: int = 0
    dpd_pending: bool = False
    dead: bool = False


@dataclass
class _Exchange:
    request: InitRequest
    priv: X25519PrivateKey
    local_addr: IPAddress
    peer_addr: IPAddress
    flows: list[FiveTuple]
    params: ProtectionParams
    tries: int = 0
    timer: Timer | None = None
    on_done: Callable[[SecurityAssociation | None, str], None] | None = None


def _suite_for_bits(bits: int) -> ProtectionParams:
    return ProtectionParams(suite=AES_GCM_128 if bits == 128 else AES_GCM_256)


def flip(sel: Selector) -> Selector:
    """The same selector seen from the other end (local <-> remote)."""
    return Selector(sel.remote, sel.local, sel.proto, sel.remote_ports, sel.local_ports)


def host_to_host(local: IPAddress, remote: IPAddress) -> Selector:
    return Selector(AddressRange.single(local), AddressRange.single(remote))


class SikeDaemon:
    """One host's SIKE daemon (also the latch database's ``SaRequester``).

    It knows nothing of the host it runs on beyond what it is given: the network's ``scheduler``
    (clock, timers, RNG), ``send`` to put an IP packet (its UDP datagrams) on the wire as it is,
    ``note`` for the host's log, and ``export_keys(outbound, inbound)`` called with each installed
    child SA pair's keys (the capture's ESP key export)."""

    def __init__(
        self,
        scheduler: Scheduler,
        credentials: Credentials,
        anchors: dict[str, SimCA] | None = None,
        mode: IkeMode = IkeMode.PRESENT,
        *,
        send: Callable[[IpPacket], None],
        note: Callable[[str], None],
        export_keys: Callable[[EspSaExport, EspSaExport], None] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self._send_packet = send
        self._note = note
        self._export_keys = export_keys
        self.credentials = credentials
        self.anchors = dict(anchors or {})
        self.mode = mode
        self.engine: KmEngine | None = None
        self.retransmit = 0.5
        self.max_tries = 4  # 0.5 + 1 + 2 + 4 -> gives up after 7.5 s
        self.slow_delay = 10.0
        self.key_bits = 256
        self.narrow = True  # propose exact 5-tuple selectors (RFC 5660 §2.1)
        self.children: dict[int, ChildKeys] = {}
        self.by_spi_in: dict[int, int] = {}
        self.ike_sas: dict[IkeSaRef, IkeSa] = {}
        self._pending: dict[int, _Exchange] = {}
        #: responses already sent, by (initiator address, initiator IKE SPI); None = being prepared
        self._answered: dict[tuple[IPAddress, int], bytes | None] = {}
        self._dpd_timer: Timer | None = None
        self.on_installed: Callable[[], None] | None = None
        self.on_peer_dead: Callable[[PeerIdentity], None] | None = None
        #: peers we negotiated with since (re)start (others get INITIAL_CONTACT)
        self.contacted: set[IPAddress] = set()
        #: inbound SPIs to use next (tests of SPI collisions between peers, RFC 4301 §4.4.2)
        self.spi_override: list[int] = []
        self.events: list[tuple[float, str]] = []

    # -- helpers -----------------------------------------------------------------------------------
    @property
    def now(self) -> float:
        return self.scheduler.now

    def _event(self, text: str) -> None:
        self.events.append((self.now, text))
        self._note(f"ike: {text}")

    def _rand_spi(self) -> int:
        if self.spi_override:
            return self.spi_override.pop(0)
        rng = self.scheduler.rng
        while True:
            spi = rng.randint(0x1000, 0xFFFFFFFF)
            if spi not in self.by_spi_in:
                return spi

    def _send(self, src: IPAddress, dst: IPAddress, payload: bytes) -> None:
        dgram = UdpDatagram(SIKE_PORT, SIKE_PORT, payload)
        self._send_packet(IpPacket(src, dst, PROTO_UDP, dgram.encode(src, dst)))

    def _engine(self) -> KmEngine:
        if self.engine is None:
            raise RuntimeError("key manager has no engine")
        return self.engine

    # -- initiator -----------------------------------------------------------------------------
    def request_sa(self, flow: FiveTuple, policy: ProtectionPolicy, now: float) -> None:
        """ACQUIRE from the latch database / SPD: negotiate child SAs covering ``flow``."""
        for ex in self._pending.values():
            if ex.peer_addr == flow.remote_addr and any(s.matches(flow) for s in ex.request.selectors):
                if flow not in ex.flows:
                    ex.flows.append(flow)
                return
        sel = (
            Selector.for_flow(flow)
            if (self.narrow and policy.narrow)
            else host_to_host(flow.local_addr, flow.remote_addr)
        )
        bits = (
            self.key_bits
            if any(s.encryption_key_bits == self.key_bits for s in policy.suites)
            else policy.suites[0].encryption_key_bits
        )
        self.initiate(flow.local_addr, flow.remote_addr, (sel,), flows=[flow], key_bits=bits)

    def initiate(
        self,
        local_addr: IPAddress,
        peer_addr: IPAddress,
        selectors: tuple[Selector, ...],
        flows: list[FiveTuple] | None = None,
        key_bits: int | None = None,
        on_done: Callable[[SecurityAssociation | None, str], None] | None = None,
    ) -> int:
        """Start an exchange with whoever owns ``peer_addr`` proposing ``selectors`` (local-oriented,
        any addresses: an attacker may claim other hosts' addresses here). Returns the IKE SPI."""
        rng = self.scheduler.rng
        priv = X25519PrivateKey.from_private_bytes(rng.randbytes(32))
        spi_i = rng.getrandbits(64) or 1
        child_spi = self._rand_spi()
        self.by_spi_in[child_spi] = -1  # reserved until installed
        flags = 0 if peer_addr in self.contacted else FLAG_INITIAL_CONTACT
        unsigned = InitRequest(
            spi_i,
            rng.randbytes(32),
            priv.public_key().public_bytes_raw(),
            self.credentials.wire(),
            selectors,
            child_spi,
            key_bits or self.key_bits,
            flags=flags,
        )
        req = replace(unsigned, signature=self.credentials.sign(unsigned.signed_part()))
        ex = _Exchange(
            req,
            priv,
            local_addr,
            peer_addr,
            list(flows or []),
            _suite_for_bits(req.key_bits),
            on_done=on_done,
        )
        self._pending[spi_i] = ex
        self._event(f"initiate to {peer_addr} ts={[str(s) for s in selectors]}")
        self._transmit(spi_i)
        return spi_i

    def _transmit(self, spi_i: int) -> None:
        ex = self._pending.get(spi_i)
        if ex is None:
            return
        if ex.tries >= self.max_tries:
            self._fail(spi_i, "no answer from the peer's key manager", timeout=True)
            return
        ex.tries += 1
        self._send(ex.local_addr, ex.peer_addr, ex.request.encode())
        delay = self.retransmit * (2 ** (ex.tries - 1))
        ex.timer = self.scheduler.call_later(delay, self._transmit, spi_i)

    def _fail(self, spi_i: int, why: str, timeout: bool) -> None:
        ex = self._pending.pop(spi_i, None)
        if ex is None:
            return
        if ex.timer is not None:
            ex.timer.cancel()
        self.by_spi_in.pop(ex.request.child_spi_i, None)
        self._event(f"exchange with {ex.peer_addr} failed: {why}")
        for flow in ex.flows:
            self._engine().km_setup_failed(flow, timeout=timeout, detail=why)
        if ex.on_done is not None:
            ex.on_done(None, why)

    def _on_response(self, src: IPAddress, resp: InitResponse) -> None:
        ex = self._pending.get(resp.ike_spi_i)
        if ex is None or src != ex.peer_addr:
            return
        if resp.status is not SikeStatus.OK:
            self._fail(resp.ike_spi_i, f"peer refused: {resp.status.name}", timeout=False)
            return
        signed = ex.request.encode() + resp.signed_part()
        ref = IkeSaRef(resp.ike_spi_i, resp.ike_spi_r)
        try:
            peer = verify_peer(resp.identity, resp.signature, signed, ref, self.anchors)
            match = self._engine().pad.authorize(peer)
            self._engine().pad.check_child_sa(match, src, resp.selectors)
        except (AuthFailure, IPsecRemoteError) as exc:
            self._fail(resp.ike_spi_i, f"responder not authorized: {exc}", timeout=False)
            return
        if not resp.selectors or not all(_within(s, ex.request.selectors) for s in resp.selectors):
            self._fail(resp.ike_spi_i, "responder widened the traffic selectors", timeout=False)
            return
        if ex.timer is not None:
            ex.timer.cancel()
        del self._pending[resp.ike_spi_i]
        self.contacted.add(src)
        self.by_spi_in.pop(ex.request.child_spi_i, None)
        shared = ex.priv.exchange(X25519PublicKey.from_public_bytes(resp.key_share))
        keys_ir, keys_ri = _derive(shared, ex.request, resp)
        sa = SecurityAssociation(
            sa_id=self._engine().sad.next_sa_id(),
            spi_in=ex.request.child_spi_i,
            spi_out=resp.child_spi_r,
            local_addr=ex.local_addr,
            remote_addr=src,
            traffic_selectors=resp.selectors,
            peer=peer,
            local=self.credentials.local_identity(),
            params=ex.params,
            ike_sa=ref,
            btns=match.btns,
            created_at=self.now,
        )
        out_keys, in_keys = EspKeys(resp.child_spi_r, *keys_ir), EspKeys(ex.request.child_spi_i, *keys_ri)
        installed = self._install(sa, out_keys, in_keys, IkeSa(ref, peer, src, ex.local_addr, True))
        for flow in ex.flows:
            if installed is None:
                self._engine().km_setup_failed(flow, timeout=False, detail="SA refused locally")
            else:
                self._engine().km_exchange_done(flow, installed)
        if ex.on_done is not None:
            ex.on_done(installed, "ok" if installed else "refused locally")

    # -- responder -------------------------------------------------------------------------------
    def _on_request(self, src: IPAddress, dst: IPAddress, req: InitRequest) -> None:
        # RFC 7296 §2.1: a retransmitted request gets the same response, never a second SA
        key = (src, req.ike_spi_i)
        if key in self._answered:
            cached = self._answered[key]
            if cached is not None:
                self._send(dst, src, cached)
            return
        if len(self._answered) >= 4096:
            self._answered.clear()
        self._answered[key] = None
        if self.mode is IkeMode.SLOW:
            self.scheduler.call_later(self.slow_delay, self._answer, src, dst, req)
        else:
            self._answer(src, dst, req)

    def _answer(self, src: IPAddress, dst: IPAddress, req: InitRequest) -> None:
        rng = self.scheduler.rng
        priv = X25519PrivateKey.from_private_bytes(rng.randbytes(32))
        spi_r = rng.getrandbits(64) or 1
        ref = IkeSaRef(req.ike_spi_i, spi_r)
        mine = tuple(flip(s) for s in req.selectors)
        status = SikeStatus.OK
        installed: SecurityAssociation | None = None
        peer: PeerIdentity | None = None
        btns = False
        if self.mode is IkeMode.REFUSE or req.key_bits not in (128, 256) or not req.selectors:
            status = SikeStatus.NO_PROPOSAL_CHOSEN
        else:
            try:
                peer = verify_peer(req.identity, req.signature, req.signed_part(), ref, self.anchors)
                match = self._engine().pad.authorize(peer)
                btns = match.btns
                self._engine().pad.check_child_sa(match, src, mine)
            except AuthFailure as exc:
                status = SikeStatus.AUTHENTICATION_FAILED
                self._event(f"refuse {src}: {exc}")
            except IPsecRemoteError as exc:
                status = SikeStatus.TS_UNACCEPTABLE if exc.notify == 38 else SikeStatus.AUTHENTICATION_FAILED
                self._event(f"refuse {src}: {exc}")
        child_spi = self._rand_spi() if status is SikeStatus.OK else 0
        unsigned = InitResponse(
            req.ike_spi_i,
            spi_r,
            status,
            rng.randbytes(32),
            priv.public_key().public_bytes_raw(),
            self.credentials.wire(),
            req.selectors,
            child_spi,
        )
        if status is SikeStatus.OK and peer is not None:
            shared = priv.exchange(X25519PublicKey.from_public_bytes(req.key_share))
            keys_ir, keys_ri = _derive(shared, req, unsigned)
            sa = SecurityAssociation(
                sa_id=self._engine().sad.next_sa_id(),
                spi_in=child_spi,
                spi_out=req.child_spi_i,
                local_addr=dst,
                remote_addr=src,
                traffic_selectors=mine,
                peer=peer,
                local=self.credentials.local_identity(),
                params=_suite_for_bits(req.key_bits),
                ike_sa=ref,
                btns=btns,
                created_at=self.now,
            )
            installed = self._install(
                sa,
                EspKeys(req.child_spi_i, *keys_ri),
                EspKeys(child_spi, *keys_ir),
                IkeSa(ref, peer, src, dst, False),
            )
            if installed is None:
                status = SikeStatus.TS_UNACCEPTABLE
            elif installed.traffic_selectors != mine:
                # narrowed (RFC 7296 §2.9) to keep clear of a latch: tell the initiator
                self._event(f"narrowed proposal from {src}")
        if installed is not None and req.initial_contact:
            self._initial_contact(installed)
        if status is not SikeStatus.OK or installed is None:
            unsigned = InitResponse(
                req.ike_spi_i,
                spi_r,
                status,
                unsigned.nonce,
                unsigned.key_share,
                self.credentials.wire(),
                (),
                0,
            )
        else:
            unsigned = InitResponse(
                req.ike_spi_i,
                spi_r,
                status,
                unsigned.nonce,
                unsigned.key_share,
                self.credentials.wire(),
                tuple(flip(s) for s in installed.traffic_selectors),
                child_spi,
            )
        resp = replace(unsigned, signature=self.credentials.sign(req.encode() + unsigned.signed_part()))
        wire = resp.encode()
        self._answered[(src, req.ike_spi_i)] = wire
        self._send(dst, src, wire)

    # -- installation ----------------------------------------------------------------------------
    def _install(
        self, sa: SecurityAssociation, out_keys: EspKeys, in_keys: EspKeys, ike: IkeSa
    ) -> SecurityAssociation | None:
        # the ESP state must exist before the engine can hand the SA to packets
        self.children[sa.sa_id] = ChildKeys(sa.sa_id, out_keys, in_keys)
        self.by_spi_in[in_keys.spi] = sa.sa_id
        installed = self._engine().km_install_sa(sa, self.now)
        if installed is None:
            self.children.pop(sa.sa_id, None)
            self.by_spi_in.pop(in_keys.spi, None)
            self._event(f"child SA with {sa.remote_addr} refused by the latch database")
            return None
        existing = self.ike_sas.setdefault(ike.ref, ike)
        existing.children.add(sa.sa_id)
        if self._export_keys is not None:
            self._export_keys(
                EspSaExport(sa.local_addr, sa.remote_addr, out_keys),
                EspSaExport(sa.remote_addr, sa.local_addr, in_keys),
            )
        self._event(f"installed {installed}")
        if self.on_installed is not None:
            self.on_installed()
        return installed

    def _initial_contact(self, new: SecurityAssociation) -> None:
        """RFC 7296 §2.4: the peer says it holds no other SAs with us (it restarted): delete every
        other child SA we have with the same authenticated identity."""
        for ike in list(self.ike_sas.values()):
            if ike.ref == new.ike_sa or ike.peer != new.peer:
                continue
            self._event(f"INITIAL_CONTACT from {new.peer}: deleting SAs of {ike.ref}")
            for sa_id in list(ike.children):
                self.remove_child(sa_id, notify=False)
            self.ike_sas.pop(ike.ref, None)

    def remove_child(self, sa_id: int, notify: bool = True) -> None:
        """Delete a child SA locally (and send an informational DELETE to the peer)."""
        keys = self.children.pop(sa_id, None)
        if keys is None:
            return
        self.by_spi_in.pop(keys.inbound.spi, None)
        sa = self._engine().sad.get(sa_id)
        for ike in self.ike_sas.values():
            ike.children.discard(sa_id)
        if sa is not None and notify:
            ref = sa.ike_sa
            msg = Informational(SikeType.DELETE, ref.initiator_spi, ref.responder_spi, keys.inbound.spi)
            self._send(sa.local_addr, sa.remote_addr, msg.encode())
        self._engine().km_remove_sa(sa_id, self.now)

    def expire_child(self, sa_id: int) -> None:
        """Hard lifetime expiry of a child SA (RFC 4301 §4.4.2.1): removed without a DELETE."""
        self._event(f"SA#{sa_id} expired")
        self.remove_child(sa_id, notify=False)

    # -- informational ----------------------------------------------------------------------------
    def _on_informational(self, src: IPAddress, dst: IPAddress, msg: Informational) -> None:
        ref = IkeSaRef(msg.ike_spi_i, msg.ike_spi_r)
        ike = self.ike_sas.get(ref)
        if ike is None or ike.peer_addr != src:
            return
        if msg.kind is SikeType.DELETE:
            for sa_id in list(ike.children):
                keys = self.children.get(sa_id)
                if keys is not None and keys.outbound.spi == msg.value:
                    self._event(f"peer deleted SA#{sa_id}")
                    self.remove_child(sa_id, notify=False)
        elif msg.kind is SikeType.DPD_REQ:
            ack = Informational(SikeType.DPD_RESP, msg.ike_spi_i, msg.ike_spi_r, msg.value)
            self._send(dst, src, ack.encode())
        elif msg.kind is SikeType.DPD_RESP and msg.value == ike.dpd_msg:
            ike.dpd_pending = False
            ike.dpd_misses = 0

    def start_dpd(self, interval: float = 5.0, max_misses: int = 3) -> None:
        """Dead peer detection (RFC 7296 §2.4 liveness checks) on every IKE SA."""

        def tick() -> None:
            for ike in list(self.ike_sas.values()):
                if ike.dead:
                    continue
                if ike.dpd_pending:
                    ike.dpd_misses += 1
                    if ike.dpd_misses >= max_misses:
                        self._peer_dead(ike)
                        continue
                ike.dpd_msg += 1
                ike.dpd_pending = True
                self._send(
                    ike.local_addr,
                    ike.peer_addr,
                    Informational(
                        SikeType.DPD_REQ, ike.ref.initiator_spi, ike.ref.responder_spi, ike.dpd_msg
                    ).encode(),
                )
            self._dpd_timer = self.scheduler.call_later(interval, tick)

        self.stop_dpd()
        self._dpd_timer = self.scheduler.call_later(interval, tick)

    def stop_dpd(self) -> None:
        if self._dpd_timer is not None:
            self._dpd_timer.cancel()
            self._dpd_timer = None

    def _peer_dead(self, ike: IkeSa) -> None:
        ike.dead = True
        self._event(f"DPD: peer {ike.peer} at {ike.peer_addr} is dead")
        self._engine().km_peer_dead(ike.peer)
        if self.on_peer_dead is not None:
            self.on_peer_dead(ike.peer)
        for sa_id in list(ike.children):
            self.remove_child(sa_id, notify=False)
        self.ike_sas.pop(ike.ref, None)

    def forget_all(self) -> None:
        """Daemon restart without state restore: every IKE SA, child SA and key is gone."""
        for ex in self._pending.values():
            if ex.timer is not None:
                ex.timer.cancel()
        self._pending.clear()
        self._answered.clear()
        for sa_id in list(self.children):
            self.remove_child(sa_id, notify=False)
        self.ike_sas.clear()
        self.by_spi_in.clear()
        self.contacted.clear()

    # -- input ------------------------------------------------------------------------------------
    def datagram(self, src: IPAddress, dst: IPAddress, payload: bytes) -> None:
        """A UDP datagram for the SIKE port arrived (IKE traffic bypasses IPsec, RFC 4301 §5.2)."""
        if self.mode is IkeMode.ABSENT:
            return
        try:
            msg = decode_sike(payload)
        except SimWireError as exc:
            self._note(f"ike: drop malformed message from {src}: {exc}")
            return
        if isinstance(msg, InitRequest):
            self._on_request(src, dst, msg)
        elif isinstance(msg, InitResponse):
            self._on_response(src, msg)
        else:
            self._on_informational(src, dst, msg)


def _within(sel: Selector, proposed: tuple[Selector, ...]) -> bool:
    """Is ``sel`` (as accepted) inside one of the ``proposed`` selectors?"""
    for p in proposed:
        if p.proto is not None and sel.proto != p.proto:
            continue
        if not _range_in(sel.local, p.local) or not _range_in(sel.remote, p.remote):
            continue
        if _ports_in(sel.local_ports, p.local_ports) and _ports_in(sel.remote_ports, p.remote_ports):
            return True
    return False


def _range_in(inner: AddressRange | None, outer: AddressRange | None) -> bool:
    if outer is None:
        return True
    return inner is not None and outer.contains_range(inner)


def _ports_in(inner: PortRange, outer: PortRange) -> bool:
    return outer.contains_range(inner)


KeyPair = tuple[bytes, bytes]


def _derive(shared: bytes, req: InitRequest, resp: InitResponse) -> tuple[KeyPair, KeyPair]:
    """KEYMAT for both directions: (key, salt) initiator->responder, then responder->initiator."""
    klen = req.key_bits // 8
    info = b"SIKE child" + req.child_spi_i.to_bytes(4, "big") + resp.child_spi_r.to_bytes(4, "big")
    okm = HKDF(hashes.SHA256(), 2 * (klen + 4), req.nonce + resp.nonce, info).derive(shared)
    a, b = okm[: klen + 4], okm[klen + 4 :]
    return (a[:klen], a[klen:]), (b[:klen], b[klen:])
