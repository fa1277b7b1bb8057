"""Simulated network (rpclatch.netsim) speed: how fast scenarios and bulk transfers run in wall time.

Figures:

* ``sim.all_scenarios`` -- wall seconds to run every named scenario of
  ``rpclatch.netsim.testing.scenarios`` under both approaches (14 runs). Baseline 2.0 s: the demo must run
  all scenarios "in seconds".
* ``sim.bulk_latched`` -- payload MB per wall second through one latched TCP connection (approach 2,
  ESP AES-GCM-256, every packet judged by the engine). Baseline: the same transfer over plain IP in
  the same simulation (ratio = cost of IPsec + latching in the simulator).
* ``sim.bulk_plain`` -- the plain-IP figure itself (baseline = itself).

Usage: ``python benchmarks/sim_network.py [--mb N]``.
"""

from __future__ import annotations

import argparse
import time

from rpclatch.ipsec.engine import Approach
from rpclatch.netsim.network import SimNetwork
from rpclatch.netsim.testing.lab import Lab
from rpclatch.netsim.testing.scenarios import SCENARIOS, run_scenario


def all_scenarios() -> float:
    t = time.perf_counter()
    for name in SCENARIOS:
        for approach in (Approach.ULP, Approach.POLICY):
            run_scenario(name, approach)
    return time.perf_counter() - t


def bulk(mb: float, latched: bool) -> float:
    data = b"x" * int(mb * 1_000_000)
    if latched:
        lab = Lab.build(approach=Approach.POLICY)
        client, server = lab.open()
        net = lab.net
    else:
        net = SimNetwork(seed=1)
        a, b = net.add_host("a", "192.0.2.1"), net.add_host("b", "192.0.2.2")
        lst = b.listen(2049)
        client = a.connect("192.0.2.2", 2049)
        net.run_for(0.1)
        server = lst.accepted[0]
    assert server is not None
    t = time.perf_counter()
    client.send(data)
    net.run_until(lambda: len(server.received) >= len(data), timeout=3600)
    elapsed = time.perf_counter() - t
    assert len(server.received) == len(data)
    return len(data) / 1e6 / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=2.0)
    args = ap.parse_args()
    scen = min(all_scenarios() for _ in range(3))
    print(f"BENCH sim.all_scenarios value={scen:.3f} unit=s baseline=2.0 ratio={scen / 2.0:.3f}")
    plain = bulk(args.mb, latched=False)
    latched = bulk(args.mb, latched=True)
    print(f"BENCH sim.bulk_plain value={plain:.2f} unit=MB/s baseline={plain:.2f} ratio=1.000")
    print(
        f"BENCH sim.bulk_latched value={latched:.2f} unit=MB/s baseline={plain:.2f} "
        f"ratio={latched / plain:.3f}"
    )


if __name__ == "__main__":
    main()
