"""The simulated network: one virtual clock, one hub (segment), hosts, attackers, capture export.

::

    net = SimNetwork(seed=1)
    a = net.add_host("a", "192.0.2.1")
    b = net.add_host("b", "192.0.2.2")
    b.listen(2049)
    conn = a.connect("192.0.2.2", 2049)
    net.run_for(1.0)
    net.export_pcapng("run.pcapng", "run.esp_sa")
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from rpclatch.ipsec.backend import Backend
from rpclatch.ipsec.engine import Approach, EngineConfig, IPsecEngine
from rpclatch.ipsec.latch import LatchDatabase
from rpclatch.ipsec.model import ip
from rpclatch.ipsec.pad import PadEntry, PeerAuthorizationDatabase
from rpclatch.ipsec.sad import SecurityAssociationDatabase
from rpclatch.ipsec.spd import SpdEntry
from rpclatch.netsim.attacker import Attacker
from rpclatch.netsim.clock import Scheduler
from rpclatch.netsim.errors import SimLocalError
from rpclatch.netsim.host import Host
from rpclatch.netsim.identity import Credentials, SimCA
from rpclatch.netsim.ike import IkeMode, SimIkeDaemon
from rpclatch.netsim.ip import IPAddress
from rpclatch.netsim.keying import IkeKeyManager
from rpclatch.netsim.link import Hub, WireRecord
from rpclatch.netsim.pcapng import EspSaExport
from rpclatch.netsim.stack import IpsecStack


class SimNetwork:
    """One deterministic simulated network (``seed`` fixes every random choice): the scheduler
    (virtual clock and RNG), the hub the hosts share, and the hosts. Not a world in the
    ``--world`` sense: the demo's ``sim`` world is a scenario's hosts on one of these."""

    def __init__(self, seed: int = 0, latency: float = 0.001) -> None:
        self.seed = seed
        self.scheduler = Scheduler(seed)
        self.hub = Hub(self.scheduler, latency=latency)
        self.hosts: dict[str, Host] = {}
        self._conn_ids = itertools.count(1)

    def next_conn_id(self) -> int:
        """Connection ids for RPC ``ConnectionInfo`` (per network, so runs are reproducible)."""
        return next(self._conn_ids)

    @property
    def now(self) -> float:
        """Virtual time, in seconds since the network was made."""
        return self.scheduler.now

    def add_host(self, name: str, *addresses: str | IPAddress, msl: float = 30.0) -> Host:
        """A plain-IP host on the hub with ``addresses`` (the first is its primary address);
        :meth:`enable_ipsec` gives it IPsec. ``msl``: its streams' maximum segment lifetime."""
        if name in self.hosts:
            raise SimLocalError(f"host {name} exists")
        if not addresses:
            raise SimLocalError("a host needs at least one address")
        host = Host(
            name,
            [ip(a) for a in addresses],
            scheduler=self.scheduler,
            hub=self.hub,
            next_conn_id=self.next_conn_id,
            msl=msl,
        )
        self.hosts[name] = host
        return host

    def add_attacker(self, name: str, *addresses: str | IPAddress) -> Attacker:
        """An :class:`Attacker` host (inject / drop / sniff / claim addresses / own SAs)."""
        if name in self.hosts:
            raise SimLocalError(f"host {name} exists")
        if not addresses:
            raise SimLocalError("an attacker needs at least one address")
        attacker = Attacker(
            name,
            [ip(a) for a in addresses],
            scheduler=self.scheduler,
            hub=self.hub,
            next_conn_id=self.next_conn_id,
        )
        self.hosts[name] = attacker
        return attacker

    # -- IPsec ---------------------------------------------------------------------------------------
    def ca(self, name: str) -> SimCA:
        """A certification authority (trust anchor) with a key from the network's RNG."""
        return SimCA(name, self.scheduler.rng)

    def credentials(self, kind: str = "btns", *, ca: SimCA | None = None, subject: str = "") -> Credentials:
        """``btns`` (raw Ed25519 key, RFC 5386), ``null`` (RFC 7619) or ``cert`` (issued by ``ca``)."""
        rng = self.scheduler.rng
        if kind == "btns":
            return Credentials.raw_key(rng)
        if kind == "null":
            return Credentials.null(rng)
        if kind == "cert":
            if ca is None or not subject:
                raise SimLocalError("certificate credentials need ca= and subject=")
            return Credentials.certificate(ca, subject, rng)
        raise SimLocalError(f"unknown credential kind {kind!r} (btns, null, cert)")

    def enable_ipsec(
        self,
        host: Host,
        *,
        spd: Iterable[SpdEntry],
        pad: Iterable[PadEntry],
        approach: Approach = Approach.POLICY,
        credentials: Credentials | None = None,
        ike: IkeMode = IkeMode.PRESENT,
        anchors: Iterable[SimCA] = (),
        config: EngineConfig | None = None,
    ) -> IpsecStack:
        """Give ``host`` an IPsec engine (:class:`IPsecEngine`), an IKEv2 daemon on UDP 500
        (:class:`SimIkeDaemon`), the engine's key manager backed by it (:class:`IkeKeyManager`) and
        ESP. ``anchors``: the CAs whose certificates authenticate peers.

        ``ike`` simulates the host's key-exchange daemon: PRESENT, ABSENT (requests vanish, peers
        time out), REFUSE or SLOW. Returns the host's :class:`IpsecStack` (also ``host.security``;
        :func:`rpclatch.netsim.stack.stack_of` finds it from the host)."""
        creds = credentials or Credentials.raw_key(self.scheduler.rng)
        hub = self.hub

        def export_keys(outbound: EspSaExport, inbound: EspSaExport) -> None:
            hub.register_esp_keys(outbound)
            hub.register_esp_keys(inbound, holder=host.name)  # the host can read what it receives

        daemon = SimIkeDaemon(
            self.scheduler,
            creds,
            {ca.name: ca for ca in anchors},
            ike,
            send=host.send_packet,
            note=host.note,
            export_keys=export_keys,
        )
        cfg = config or EngineConfig(approach=approach)
        if cfg.approach is not approach:
            cfg = replace(cfg, approach=approach)

        def factory(
            sad: SecurityAssociationDatabase,
            pad_db: PeerAuthorizationDatabase,
            ld: LatchDatabase,
            backend: Backend,
            engine: IPsecEngine,
        ) -> IkeKeyManager:
            return IkeKeyManager(sad, pad_db, ld, backend, daemon, listener=engine)

        engine = IPsecEngine(spd, pad, config=cfg, key_manager_factory=factory)
        stack = IpsecStack(host, engine, daemon)
        host.security = stack
        return stack

    # -- running -----------------------------------------------------------------------------------
    def run_for(self, seconds: float) -> None:
        """Advance virtual time by ``seconds``, running every event due on the way."""
        self.scheduler.run_for(seconds)

    def run_until(self, predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
        """Run events until ``predicate()`` holds (True) or ``timeout`` virtual seconds pass (False)."""
        return self.scheduler.run_until_true(predicate, timeout)

    def trace(self) -> list[str]:
        """Every host's log lines (key manager, ALERTs, drops), merged in virtual-time order."""
        lines = [line for host in self.hosts.values() for line in host.log]
        return sorted(lines, key=lambda line: float(line.split(None, 1)[0]))

    # -- wire --------------------------------------------------------------------------------------
    @property
    def wire(self) -> list[WireRecord]:
        """Every frame the hub carried, in order, with its sender, receiver and drop reason."""
        return self.hub.wire

    @property
    def esp_keys(self) -> list[EspSaExport]:
        """The keys of every ESP SA installed so far (for decrypting the capture)."""
        return self.hub.esp_keys

    def export_pcapng(self, path: Path | str, esp_sa_path: Path | str | None = None) -> None:
        """Write the capture (pcapng, raw IP) and optionally the tshark ``esp_sa`` key file."""
        self.hub.export(path, esp_sa_path)
