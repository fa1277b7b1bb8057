"""The simulation's IKE daemon: the real IKEv2 core (:mod:`rpclatch.ipsec.ike`) on each host's
UDP 500, as the engine's key manager, :class:`SimIkeDaemon`.

It plays the key-manager role of RFC 5660 §2.3: the latch database asks it for child SAs
(:meth:`SimIkeDaemon.request_sa`, an ACQUIRE), and it reports results back through the engine
(SA installed -> LARVAL latches become ESTABLISHED; failure/timeout -> LARVAL latches CLOSE and the
ULP is told "not latched"). Every exchange is IKEv2 (RFC 7296) on the simulated wire, one
:class:`~rpclatch.netsim.ikev2.SimIkeEndpoint` per local address the host uses:

* ACQUIRE -> a new IKE SA (IKE_SA_INIT, IKE_AUTH with the first CHILD_SA) proposing the flow's
  exact selector (RFC 5660 §2.1) or host-to-host, ESP AES-GCM-16 of the wanted key size;
  INITIAL_CONTACT (§2.4) to a peer not contacted since the daemon (re)started.
* The core authenticates the peer (raw key, X.509 issued by one of ``anchors``, NULL) and
  authorizes it and its selectors with the host's PAD (RFC 4301 §4.4.3.4, RFC 5386 §2).
* Responder: after the core's narrowing and PAD checks, the latch database vets the child SA
  *before the answer is sent* (the core's ``child_vetter`` hook): it narrows it around latches,
  or breaks them and ALERTs first (RFC 5660 §2.3); nothing left -> TS_UNACCEPTABLE. The vetted SA
  is installed when the core reports it established. The core answers one traffic-selector pair,
  so an SA the latch database narrowed into several pieces is answered with the first piece
  (RFC 7296 §2.9 lets the responder choose any subset).
* Initiator: the established CHILD_SA is installed through the engine (PAD, latch vetting); if
  the engine refuses it, it is deleted with an INFORMATIONAL Delete and the ACQUIRE fails.
* A deleted CHILD_SA or IKE SA leaves the SAD; an established IKE SA whose request goes
  unanswered (retransmissions exhausted, or ``max_misses`` DPD rounds) means the peer is dead
  (RFC 5660 §2: its latches break irremediably).

``mode`` simulates the daemon being present, absent (datagrams vanish -> initiators time out),
refusing (every new IKE_SA_INIT gets NO_PROPOSAL_CHOSEN) or slow (datagrams reach it after
``slow_delay`` seconds). All randomness (SPIs, nonces, key shares) comes from the network's
seeded RNG, so a run is reproducible byte for byte.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from rpclatch.ipsec.ike import (
    ChildProposal,
    ChildRequest,
    ChildSa,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    FailureReason,
    IkeConfig,
    IkeEvent,
    IkeSa,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaFailed,
    IkeSaRekeyed,
    IkeState,
)
from rpclatch.ipsec.ike.wire import notify_name
from rpclatch.ipsec.model import (
    AES_GCM_128,
    AES_GCM_256,
    AddressRange,
    FiveTuple,
    IkeSaRef,
    IPAddress,
    PeerIdentity,
    ProtectionParams,
    ProtectionPolicy,
    Selector,
)
from rpclatch.ipsec.pad import PeerAuthorizationDatabase
from rpclatch.ipsec.sad import SecurityAssociation, SecurityAssociationDatabase
from rpclatch.netsim.clock import Scheduler, Timer
from rpclatch.netsim.errors import SimLocalError
from rpclatch.netsim.esp import EspKeys, ReplayWindow
from rpclatch.netsim.identity import Credentials, SimCA, certificate_time
from rpclatch.netsim.ikev2 import IKE_PORT, SimIkeEndpoint, sim_ike_config
from rpclatch.netsim.ip import IpPacket
from rpclatch.netsim.pcapng import EspSaExport

log = logging.getLogger(__name__)


class IkeMode(enum.Enum):
    PRESENT = "present"  # answers normally
    ABSENT = "absent"  # no daemon: datagrams vanish, initiators time out
    REFUSE = "refuse"  # answers NO_PROPOSAL_CHOSEN to every new IKE SA
    SLOW = "slow"  # datagrams reach it ``slow_delay`` seconds late


class KmEngine(Protocol):
    """What the key manager needs from the host's IPsec engine (:class:`keying.IkeKeyManager`)."""

    pad: PeerAuthorizationDatabase
    sad: SecurityAssociationDatabase

    def km_install_sa(self, sa: SecurityAssociation, now: float) -> SecurityAssociation | None:
        """Vet (RFC 5660 §2.3), then install; returns the installed (maybe narrowed) SA or None."""

    def km_vet_sa(self, sa: SecurityAssociation, now: float) -> SecurityAssociation | None:
        """Vet only (PAD, latches; ALERTs happen here): the SA to install later, or None."""

    def km_commit_sa(self, sa: SecurityAssociation, now: float) -> SecurityAssociation:
        """Install an SA :meth:`km_vet_sa` returned (with its real SPIs)."""

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
class SimIkeSa:
    """An established IKE SA of this daemon: the core's SA, its peer and the SAD ids of its
    installed children."""

    sa: IkeSa
    peer: PeerIdentity
    peer_addr: IPAddress
    local_addr: IPAddress
    initiator: bool
    children: set[int] = field(default_factory=set)
    dpd_misses: int = 0
    dead: bool = False

    @property
    def ref(self) -> IkeSaRef:
        return self.sa.ref


@dataclass
class _Exchange:
    """An IKE SA we initiated whose first CHILD_SA is not settled yet."""

    local_addr: IPAddress
    peer_addr: IPAddress
    selector: Selector
    flows: list[FiveTuple]
    credentials: Credentials
    on_done: Callable[[SecurityAssociation | None, str], None] | None = None
    initial_contact: bool = False


def flip(sel: Selector) -> Selector:
    """The same selector seen from the other end (local <-> remote)."""
    return Selector(sel.remote, sel.local, sel.proto, sel.remote_ports, sel.local_ports)


def host_to_host(local: IPAddress, remote: IPAddress) -> Selector:
    return Selector(AddressRange.single(local), AddressRange.single(remote))


class SimIkeDaemon:
    """One host's IKE daemon (also the latch database's ``SaRequester``; see the module docstring).

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
        self._credentials = credentials
        self._anchors = dict(anchors or {})
        self._mode = mode
        self.engine: KmEngine | None = None
        self.slow_delay = 10.0
        self.key_bits = 256
        self.narrow = True  # propose exact 5-tuple selectors (RFC 5660 §2.1)
        self.children: dict[int, ChildKeys] = {}
        self.by_spi_in: dict[int, int] = {}
        self.ike_sas: dict[IkeSaRef, SimIkeSa] = {}
        self._endpoints: dict[IPAddress, SimIkeEndpoint] = {}
        self._config: IkeConfig | None = None
        #: the credentials each configuration was made with (kept so no id() is reused)
        self._config_creds: dict[int, tuple[IkeConfig, Credentials]] = {}
        self._pending: dict[IkeSa, _Exchange] = {}
        #: responder: the SA the latch database vetted for a CHILD_SA being answered, by IKE SA
        self._vetted: dict[IkeSaRef, SecurityAssociation] = {}
        self._rows: list[str] = []
        self._dpd_timer: Timer | None = None
        self.on_installed: Callable[[], None] | None = None
        self.on_peer_dead: Callable[[PeerIdentity], None] | None = None
        #: peers we started an IKE SA with since (re)start (the first one carries INITIAL_CONTACT)
        self.contacted: set[IPAddress] = set()
        #: inbound SPIs to use next (tests of SPI collisions between peers, RFC 4301 §4.4.2)
        self.spi_override: list[int] = []
        self.events: list[tuple[float, str]] = []

    # -- settings ----------------------------------------------------------------------------------
    @property
    def credentials(self) -> Credentials:
        return self._credentials

    @credentials.setter
    def credentials(self, value: Credentials) -> None:
        """New IKE SAs authenticate with ``value``; established ones keep what they asserted."""
        self._credentials = value
        self._reconfigure()

    @property
    def anchors(self) -> dict[str, SimCA]:
        return dict(self._anchors)

    @anchors.setter
    def anchors(self, value: dict[str, SimCA]) -> None:
        self._anchors = dict(value)
        self._reconfigure()

    @property
    def mode(self) -> IkeMode:
        return self._mode

    @mode.setter
    def mode(self, value: IkeMode) -> None:
        self._mode = value
        for end in self._endpoints.values():
            end.dispatcher.refusing = value is IkeMode.REFUSE

    @property
    def now(self) -> float:
        return self.scheduler.now

    @property
    def endpoints(self) -> dict[IPAddress, SimIkeEndpoint]:
        """The IKE endpoint (UDP 500) of each local address this daemon has used so far."""
        return dict(self._endpoints)

    # -- helpers -----------------------------------------------------------------------------------
    def _event(self, text: str) -> None:
        self.events.append((self.now, text))
        self._note(f"ike: {text}")

    def _engine(self) -> KmEngine:
        if self.engine is None:
            raise RuntimeError("key manager has no engine")
        return self.engine

    def _reconfigure(self) -> None:
        self._config = None
        if self._endpoints:
            config = self._ike_config()
            for end in self._endpoints.values():
                end.dispatcher.config = config

    def _ike_config(self) -> IkeConfig:
        """The core's configuration from the current settings (cached until they change)."""
        if self._config is None:
            creds = self._credentials
            scheduler = self.scheduler
            self._config = sim_ike_config(
                IkeConfig(
                    creds.ike,
                    self._engine().pad,
                    (Selector(),),  # the SPD and the latch database decide, not an IKE policy
                    esp_suites=(AES_GCM_256, AES_GCM_128),
                    trust_anchors=tuple(ca.anchor for ca in self._anchors.values()),
                    certificate_clock=lambda: certificate_time(scheduler.now),
                    entropy=scheduler.rng.randbytes,
                    child_spi=self._child_spi,
                    child_vetter=self._vet_child,
                )
            )
            self._config_creds[id(self._config)] = (self._config, creds)
        return self._config

    def _creds_of(self, sa: IkeSa) -> Credentials:
        held = self._config_creds.get(id(sa.config))
        return held[1] if held is not None and held[0] is sa.config else self._credentials

    def _endpoint(self, addr: IPAddress) -> SimIkeEndpoint:
        end = self._endpoints.get(addr)
        if end is None:
            end = SimIkeEndpoint(
                self.scheduler,
                addr,
                self._ike_config(),
                send=self._send_packet,
                on_event=self._on_event,
            )
            end.dispatcher.refusing = self._mode is IkeMode.REFUSE
            self._endpoints[addr] = end
        return end

    def _child_spi(self) -> int:
        """Our next inbound CHILD_SA SPI (RFC 4303 §2.1: >= 256; unique among our SAs)."""
        if self.spi_override:
            spi = self.spi_override.pop(0)
        else:
            rng = self.scheduler.rng
            while (spi := rng.randint(0x1000, 0xFFFFFFFF)) in self.by_spi_in:
                pass
        return spi

    def _poll(self, sa: IkeSa) -> None:
        end = self._endpoints.get(sa.local[0])
        if end is not None:
            end.poll(sa)

    # -- initiator ---------------------------------------------------------------------------------
    def request_sa(self, flow: FiveTuple, policy: ProtectionPolicy, now: float) -> None:
        """ACQUIRE from the latch database / SPD: negotiate child SAs covering ``flow``."""
        for ex in self._pending.values():
            if ex.peer_addr == flow.remote_addr and ex.selector.matches(flow):
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
        """Start an IKE SA from ``local_addr`` to whoever owns ``peer_addr``, its first CHILD_SA
        proposing the selector in ``selectors`` (local-oriented, any addresses: an attacker may
        claim other hosts' addresses here; the core proposes one selector pair). ``on_done`` gets
        the installed SA, or None and why. Returns the IKE SA's initiator SPI."""
        if len(selectors) != 1:
            raise SimLocalError("an IKEv2 CHILD_SA request proposes exactly one traffic selector pair")
        bits = key_bits or self.key_bits
        suite = AES_GCM_128 if bits == 128 else AES_GCM_256
        # RFC 7296 §2.4: INITIAL_CONTACT in the first IKE SA with a peer since the (re)start only
        # (a second attempt made while the first is under way must not make the peer drop it)
        contact = peer_addr not in self.contacted
        self.contacted.add(peer_addr)
        ex = _Exchange(
            local_addr, peer_addr, selectors[0], list(flows or []), self._credentials, on_done, contact
        )
        end = self._endpoint(local_addr)
        self._event(f"initiate to {peer_addr} ts={selectors[0]}")
        sa = end.initiate(peer_addr, ChildRequest(selectors[0], esp_suites=(suite,)), initial_contact=contact)
        self._pending[sa] = ex
        return sa.spi_i

    def _fail(self, sa: IkeSa, why: str, *, timeout: bool) -> None:
        ex = self._pending.pop(sa, None)
        if ex is None:
            return
        self._event(f"exchange with {ex.peer_addr} failed: {why}")
        for flow in ex.flows:
            self._engine().km_setup_failed(flow, timeout=timeout, detail=why)
        if ex.on_done is not None:
            ex.on_done(None, why)

    def _initiator_child(self, sa: IkeSa, ex: _Exchange, child: ChildSa) -> None:
        entry = self.ike_sas.get(sa.ref)
        assert entry is not None  # IkeSaEstablished comes first
        del self._pending[sa]
        engine = self._engine()
        new = self._security_association(entry, child, ex.credentials)
        installed = self._install(entry, new, child, engine.km_install_sa)
        if installed is None:
            self._event(f"child SA with {ex.peer_addr} refused by the latch database: deleting it")
            if sa.state is IkeState.ESTABLISHED and child.spi_in in sa.children:
                sa.delete_child(child.spi_in, self.now)
                self._poll(sa)
        for flow in ex.flows:
            if installed is None:
                engine.km_setup_failed(flow, timeout=False, detail="SA refused locally")
            else:
                engine.km_exchange_done(flow, installed)
        if ex.on_done is not None:
            ex.on_done(installed, "ok" if installed else "refused locally")

    # -- responder: the latch database vets before the answer (RFC 5660 §2.3) -----------------------
    def _vet_child(self, proposal: ChildProposal) -> Selector | None:
        """The core's ``child_vetter``: the latch database narrows the proposed CHILD_SA or breaks
        latches (ALERT first), before the core answers; None -> the core refuses it."""
        engine = self._engine()
        sa = SecurityAssociation(
            sa_id=0,
            spi_in=proposal.spi_in,
            spi_out=proposal.spi_out,
            local_addr=proposal.local[0],
            remote_addr=proposal.remote[0],
            traffic_selectors=(proposal.selector,),
            peer=proposal.peer,
            local=self._credentials_for(proposal.ike_sa).local_identity(),
            params=ProtectionParams(mode=proposal.mode, suite=proposal.suite),
            ike_sa=proposal.ike_sa,
            created_at=self.now,
        )
        vetted = engine.km_vet_sa(sa, self.now)
        if vetted is None:
            self._vetted.pop(proposal.ike_sa, None)
            self._event(f"child SA with {proposal.remote[0]} refused by the latch database")
            return None
        chosen = vetted.traffic_selectors[0]
        if vetted.traffic_selectors != (proposal.selector,):
            self._event(f"narrowed proposal from {proposal.remote[0]} to {chosen}")
        self._vetted[proposal.ike_sa] = replace(vetted, traffic_selectors=(chosen,))
        return chosen

    def _credentials_for(self, ref: IkeSaRef) -> Credentials:
        for end in self._endpoints.values():
            for sa in end.dispatcher.sas:
                if sa.ref == ref:
                    return self._creds_of(sa)
        return self._credentials

    def _responder_child(self, entry: SimIkeSa, child: ChildSa) -> None:
        engine = self._engine()
        vetted = self._vetted.pop(entry.ref, None)
        if vetted is None or vetted.traffic_selectors != (child.selector,):
            # not vetted by our hook (cannot happen with the core's child_vetter): full path
            new = self._security_association(entry, child, self._creds_of(entry.sa))
            installed = self._install(entry, new, child, engine.km_install_sa)
        else:
            new = replace(vetted, spi_in=child.spi_in, spi_out=child.spi_out, created_at=self.now)
            installed = self._install(entry, new, child, engine.km_commit_sa)
        if installed is None and entry.sa.state is IkeState.ESTABLISHED and child.spi_in in entry.sa.children:
            entry.sa.delete_child(child.spi_in, self.now)
            self._poll(entry.sa)

    # -- installation ----------------------------------------------------------------------------
    def _security_association(
        self, entry: SimIkeSa, child: ChildSa, creds: Credentials
    ) -> SecurityAssociation:
        return SecurityAssociation(
            sa_id=0,
            spi_in=child.spi_in,
            spi_out=child.spi_out,
            local_addr=entry.local_addr,
            remote_addr=entry.peer_addr,
            traffic_selectors=(child.selector,),
            peer=entry.peer,
            local=creds.local_identity(),
            params=ProtectionParams(mode=child.mode, suite=child.suite),
            ike_sa=entry.ref,
            created_at=self.now,
        )

    def _install(
        self,
        entry: SimIkeSa,
        sa: SecurityAssociation,
        child: ChildSa,
        install: Callable[[SecurityAssociation, float], SecurityAssociation | None],
    ) -> SecurityAssociation | None:
        if sa.sa_id == 0:
            sa = replace(sa, sa_id=self._engine().sad.next_sa_id())
        out_keys = EspKeys(child.spi_out, child.key_out[:-4], child.key_out[-4:])
        in_keys = EspKeys(child.spi_in, child.key_in[:-4], child.key_in[-4:])
        # the ESP state must exist before the engine can hand the SA to packets
        self.children[sa.sa_id] = ChildKeys(sa.sa_id, out_keys, in_keys)
        self.by_spi_in[in_keys.spi] = sa.sa_id
        installed = install(sa, self.now)
        if installed is None:
            self.children.pop(sa.sa_id, None)
            self.by_spi_in.pop(in_keys.spi, None)
            return None
        entry.children.add(sa.sa_id)
        if self._export_keys is not None:
            self._export_keys(
                EspSaExport(sa.local_addr, sa.remote_addr, out_keys),
                EspSaExport(sa.remote_addr, sa.local_addr, in_keys),
            )
        self._event(f"installed {installed}")
        if self.on_installed is not None:
            self.on_installed()
        return installed

    def _drop_child(self, sa_id: int) -> ChildKeys | None:
        keys = self.children.pop(sa_id, None)
        if keys is None:
            return None
        self.by_spi_in.pop(keys.inbound.spi, None)
        for entry in self.ike_sas.values():
            entry.children.discard(sa_id)
        self._engine().km_remove_sa(sa_id, self.now)
        return keys

    def remove_child(self, sa_id: int, notify: bool = True) -> None:
        """Delete a child SA locally (and, with ``notify``, tell the peer with an INFORMATIONAL
        Delete, RFC 7296 §1.4.1)."""
        entry = next((e for e in self.ike_sas.values() if sa_id in e.children), None)
        keys = self._drop_child(sa_id)
        if keys is None or not notify or entry is None:
            return
        sa = entry.sa
        if sa.state is IkeState.ESTABLISHED and keys.inbound.spi in sa.children:
            sa.delete_child(keys.inbound.spi, self.now)
            self._poll(sa)

    def expire_child(self, sa_id: int) -> None:
        """Hard lifetime expiry of a child SA (RFC 4301 §4.4.2.1): removed without a DELETE."""
        self._event(f"SA#{sa_id} expired")
        self.remove_child(sa_id, notify=False)

    # -- core events -------------------------------------------------------------------------------
    def _on_event(self, sa: IkeSa, ev: IkeEvent) -> None:
        entry = self.ike_sas.get(sa.ref)
        if entry is not None and sa.state is IkeState.FAILED and not entry.dead:
            # an established SA only fails when a request of ours went unanswered: the peer is dead
            self._peer_dead(entry, "no answer from the peer (RFC 7296 §2.4)")
        if isinstance(ev, IkeSaEstablished):
            self._established(sa, ev)
        elif isinstance(ev, ChildSaEstablished):
            self._child_established(sa, ev)
        elif isinstance(ev, ChildSaFailed):
            self._vetted.pop(ev.ike_sa, None)
            who = "the peer" if ev.by_peer else "us"
            why = f"CHILD_SA refused by {who}: {notify_name(ev.notify)}" + (
                f" ({ev.detail})" if ev.detail else ""
            )
            if sa in self._pending:
                self._fail(sa, why, timeout=False)
                if sa.state is IkeState.ESTABLISHED and not sa.children:
                    sa.delete(self.now)  # nothing left to carry: close the IKE SA too
                    self._poll(sa)
            else:
                self._event(f"{why} on {sa.ref}")
        elif isinstance(ev, ChildSaDeleted):
            sa_id = self.by_spi_in.get(ev.spi_in)
            if sa_id is not None and entry is not None and sa_id in entry.children:
                if ev.by_peer:
                    self._event(f"peer deleted SA#{sa_id}")
                self._drop_child(sa_id)
        elif isinstance(ev, IkeSaRekeyed):
            if entry is not None and sa.successor is not None:
                del self.ike_sas[ev.old]
                entry.sa = sa.successor
                self.ike_sas[ev.new] = entry
        elif isinstance(ev, IkeSaDeleted):
            self._vetted.pop(ev.ike_sa, None)
            if entry is not None:
                for sa_id in list(entry.children):
                    self._drop_child(sa_id)
                self.ike_sas.pop(ev.ike_sa, None)
                if ev.by_peer:
                    self._event(f"IKE SA {ev.ike_sa} with {entry.peer_addr} deleted by the peer")
        elif isinstance(ev, IkeSaFailed):
            self._vetted.pop(ev.ike_sa, None)
            why = ev.reason.value + (f": {notify_name(ev.notify)}" if ev.notify is not None else "")
            if ev.detail:
                why += f" ({ev.detail})"
            ex = self._pending.get(sa)
            if ex is not None:
                if ex.initial_contact:
                    self.contacted.discard(ex.peer_addr)  # the next attempt says it again
                self._fail(sa, why, timeout=ev.reason is FailureReason.TIMEOUT)
            elif entry is None:
                self._event(f"IKE SA {ev.ike_sa} with {sa.remote[0]} failed: {why}")
            self.ike_sas.pop(ev.ike_sa, None)

    def _established(self, sa: IkeSa, ev: IkeSaEstablished) -> None:
        entry = SimIkeSa(sa, ev.peer, sa.remote[0], sa.local[0], ev.initiator)
        self.ike_sas[sa.ref] = entry
        self._event(f"IKE SA {sa.ref} with {sa.remote[0]} established: {ev.peer}")
        if ev.initial_contact:
            self._event(f"INITIAL_CONTACT from {ev.peer} (RFC 7296 §2.4)")

    def _child_established(self, sa: IkeSa, ev: ChildSaEstablished) -> None:
        entry = self.ike_sas.get(sa.ref)
        if entry is None:
            return
        ex = self._pending.get(sa)
        if ex is not None:
            self._initiator_child(sa, ex, ev.child)
        else:  # the peer asked for it (IKE_AUTH or CREATE_CHILD_SA): vetted by _vet_child
            self._responder_child(entry, ev.child)

    # -- liveness ------------------------------------------------------------------------------------
    def start_dpd(self, interval: float = 5.0, max_misses: int = 3) -> None:
        """Dead peer detection (RFC 7296 §2.4 liveness checks) on every established IKE SA: every
        ``interval`` seconds an SA with nothing outstanding sends an empty INFORMATIONAL; an SA
        whose request is still unanswered at ``max_misses`` ticks in a row is dead (so is one whose
        retransmissions run out first)."""
        if interval <= 0 or max_misses < 1:
            raise SimLocalError("DPD needs a positive interval and max_misses >= 1")

        def tick() -> None:
            for entry in list(self.ike_sas.values()):
                sa = entry.sa
                if entry.dead or sa.state is not IkeState.ESTABLISHED:
                    continue
                if sa.get_timer() is not None:  # a request of ours is still unanswered
                    entry.dpd_misses += 1
                    if entry.dpd_misses >= max_misses:
                        self._peer_dead(entry, f"DPD: {entry.dpd_misses} checks unanswered")
                    continue
                entry.dpd_misses = 0
                sa.check_liveness(self.now)
                self._poll(sa)
            self._dpd_timer = self.scheduler.call_later(interval, tick)

        self.stop_dpd()
        self._dpd_timer = self.scheduler.call_later(interval, tick)

    def stop_dpd(self) -> None:
        if self._dpd_timer is not None:
            self._dpd_timer.cancel()
            self._dpd_timer = None

    def _peer_dead(self, entry: SimIkeSa, why: str) -> None:
        entry.dead = True
        self._event(f"peer {entry.peer} at {entry.peer_addr} is dead: {why}")
        self._engine().km_peer_dead(entry.peer)
        if self.on_peer_dead is not None:
            self.on_peer_dead(entry.peer)
        for sa_id in list(entry.children):
            self._drop_child(sa_id)
        self.ike_sas.pop(entry.ref, None)
        if entry.sa.state in (IkeState.ESTABLISHED, IkeState.DELETING):
            entry.sa.abandon(self.now)
            self._poll(entry.sa)

    def unreachable(self, peer: IPAddress) -> None:
        """``peer`` has no IKE (ICMP port unreachable, or known absent): the IKE SAs being set up
        to it are cancelled and their ACQUIREs fail at once."""
        for end in list(self._endpoints.values()):
            end.unreachable(peer)

    def forget_all(self) -> None:
        """Daemon restart without state restore: every IKE SA, child SA and key is gone."""
        self._rows = self.decryption_rows()
        for end in self._endpoints.values():
            end.close()
        self._endpoints.clear()
        self._pending.clear()
        self._vetted.clear()
        for sa_id in list(self.children):
            self._drop_child(sa_id)
        self.ike_sas.clear()
        self.by_spi_in.clear()
        self.contacted.clear()

    # -- input / output ---------------------------------------------------------------------------
    def datagram(self, src: IPAddress, dst: IPAddress, payload: bytes, src_port: int = IKE_PORT) -> None:
        """A UDP datagram for port 500 arrived (IKE traffic bypasses IPsec, RFC 4301 §5.2)."""
        if self._mode is IkeMode.ABSENT:
            return
        if self._mode is IkeMode.SLOW:
            self.scheduler.call_later(self.slow_delay, self._deliver, src, dst, payload, src_port)
        else:
            self._deliver(src, dst, payload, src_port)

    def _deliver(self, src: IPAddress, dst: IPAddress, payload: bytes, src_port: int) -> None:
        if self._mode is IkeMode.ABSENT:
            return
        self._endpoint(dst).datagram(src, src_port, payload)

    def decryption_rows(self) -> list[str]:
        """Wireshark ``ikev2_decryption_table`` rows of every IKE SA this daemon has keyed."""
        rows = [*self._rows, *(row for end in self._endpoints.values() for row in end.decryption_rows())]
        return list(dict.fromkeys(rows))
