"""The simulated world: one virtual clock, one hub (segment), hosts, attackers, capture export.

::

    world = World(seed=1)
    a = world.add_host("a", "192.0.2.1")
    b = world.add_host("b", "192.0.2.2")
    b.listen(2049)
    conn = a.connect("192.0.2.2", 2049)
    world.run_for(1.0)
    world.export_pcapng("run.pcapng", "run.esp_sa")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rpclatch.ipsec.model import ip
from rpclatch.ipsec.sim.attacker import Attacker
from rpclatch.ipsec.sim.clock import Scheduler
from rpclatch.ipsec.sim.errors import SimLocalError
from rpclatch.ipsec.sim.host import Host
from rpclatch.ipsec.sim.ip import IPAddress
from rpclatch.ipsec.sim.link import Hub, WireRecord
from rpclatch.ipsec.sim.pcapng import EspSaExport


class World:
    """Container of a deterministic simulation run (``seed`` fixes every random choice)."""

    def __init__(self, seed: int = 0, latency: float = 0.001) -> None:
        self.seed = seed
        self.scheduler = Scheduler(seed)
        self.hub = Hub(self.scheduler, latency=latency)
        self.hosts: dict[str, Host] = {}

    @property
    def now(self) -> float:
        return self.scheduler.now

    def add_host(self, name: str, *addresses: str | IPAddress, msl: float = 30.0) -> Host:
        if name in self.hosts:
            raise SimLocalError(f"host {name} exists")
        if not addresses:
            raise SimLocalError("a host needs at least one address")
        host = Host(self, name, [ip(a) for a in addresses], msl=msl)
        self.hosts[name] = host
        return host

    def add_attacker(self, name: str, *addresses: str | IPAddress) -> Attacker:
        """An :class:`Attacker` host (inject / drop / sniff / claim addresses / own SAs)."""
        if name in self.hosts:
            raise SimLocalError(f"host {name} exists")
        if not addresses:
            raise SimLocalError("an attacker needs at least one address")
        attacker = Attacker(self, name, [ip(a) for a in addresses])
        self.hosts[name] = attacker
        return attacker

    # -- running -----------------------------------------------------------------------------------
    def run_for(self, seconds: float) -> None:
        self.scheduler.run_for(seconds)

    def run_until(self, predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
        return self.scheduler.run_until_true(predicate, timeout)

    # -- wire --------------------------------------------------------------------------------------
    @property
    def wire(self) -> list[WireRecord]:
        return self.hub.wire

    @property
    def esp_keys(self) -> list[EspSaExport]:
        return self.hub.esp_keys

    def export_pcapng(self, path: Path | str, esp_sa_path: Path | str | None = None) -> None:
        """Write the capture (pcapng, raw IP) and optionally the tshark ``esp_sa`` key file."""
        self.hub.export(path, esp_sa_path)
