"""Latch database and per-packet latch checks (rpclatch.ipsec, approach 2, sans-IO, in-process).

Figures:

* ``latch.inbound_check.1k|10k|100k`` -- ``IPsecEngine.inbound`` on latched flows (protected
  packet, congruent SA, non-initiating: the steady-state path -- one lookup of the engine's
  per-flow verdict cache by 5-tuple, same-SA and SAD-unchanged checks; the Latch object itself is
  not touched), checks/s with that many live latches. Each batch is
  4096 packets over the same number (1000) of active flows drawn at random from the live latches, so
  the figures isolate what the number of live latches costs per packet (the lookup is O(1); what
  remains is CPU-cache pressure from the larger tables). Best 0.1 s window, sizes interleaved (the
  machine is shared). Baseline for all three = the 1k figure
  (targets: >= 200k checks/s; 100k within 1.5x of 1k, i.e. ratio >= 0.67).
* ``latch.inbound_check_spread.100k`` -- the same, but each batch's 4096 packets go to 4096 flows
  drawn from *all* live latches (worst case for CPU caches); baseline = the same measure at 1k.
* ``latch.ulp_inbound_check.100k`` -- approach 1: ``IPsecEngine.inbound`` (tagging, RFC 4301
  checks) + ``UlpLatch.inbound`` (the TCB's latch check), 100k flows latched in their TCBs, same
  traffic shape; baseline = the same at 1k.
* ``latch.create_release.100k`` -- CREATE_CONNECTION_LATCH + RELEASE_LATCH pairs per second on an
  extra flow while 100k latches are live (its SA exists, so the latch is ESTABLISHED at once).
* ``latch.find.100k`` -- FIND_LATCH per second with 100k live latches.
* ``latch.bytes_per_latch`` -- tracemalloc growth per latch made with ``IPsecEngine.connect`` (the
  LD latch, its indexes, the PAD clone and the backend's per-flow policy; SAs excluded).

Usage: ``python benchmarks/latch.py [--seconds S] [--max N]``.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import random
import time
import tracemalloc
from collections.abc import Callable

from rpclatch.ipsec import examples as ex
from rpclatch.ipsec.engine import Approach, IPsecEngine
from rpclatch.ipsec.model import FiveTuple, IpProto
from rpclatch.ipsec.sad import SecurityAssociation
from rpclatch.ipsec.ulp import UlpLatch

SERVER = ipaddress.IPv4Address("192.0.2.1")
CLIENT_NET = int(ipaddress.IPv4Address("192.0.2.2"))
PEERS = 64  # distinct client keys
ACTIVE = 1000  # flows carrying packets during the measurement, whatever the number of live latches


def bench(name: str, value: float, unit: str, baseline: float | None) -> None:
    if baseline is None:
        print(f"BENCH {name} value={value:.1f} unit={unit} baseline=- ratio=-", flush=True)
    else:
        ratio = value / baseline if baseline else 0.0
        print(
            f"BENCH {name} value={value:.1f} unit={unit} baseline={baseline:.1f} ratio={ratio:.3f}",
            flush=True,
        )


def flows(n: int) -> list[FiveTuple]:
    """n distinct server-side flows: clients 192.0.2.2..254, ports from 1024 up."""
    out = []
    for i in range(n):
        addr = ipaddress.IPv4Address(CLIENT_NET + i % 253)
        out.append(FiveTuple(SERVER, 2049, addr, 1024 + i // 253, IpProto.TCP))
    return out


def build(n: int) -> tuple[IPsecEngine, list[FiveTuple], list[SecurityAssociation]]:
    engine = IPsecEngine(ex.nfs_spd(), ex.btns_pad())
    peers = [ex.btns_peer(100 + i) for i in range(PEERS)]
    local = ex.btns_local(1)
    fl = flows(n + 1)
    sas = []
    for i, f in enumerate(fl):
        sa = engine.install_sa(ex.narrow_sa(f, peers[i % PEERS], local), 0.0)
        assert sa is not None
        sas.append(sa)
    for f in fl[:n]:
        engine.connect(f)
    return engine, fl, sas


def best_rate(batch: Callable[[], object], per_batch: int, seconds: float) -> float:
    """Best of several ~0.1 s windows: the machine is shared, the best window is the least disturbed."""
    best = 0.0
    stop = time.perf_counter() + seconds
    while True:
        done = 0
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < 0.1:
            batch()
            done += per_batch
        best = max(best, done / elapsed)
        if time.perf_counter() >= stop:
            return best


def create_release_rate(engine: IPsecEngine, extra: FiveTuple, seconds: float) -> float:
    ld = engine.latches

    def batch() -> None:
        for _ in range(64):
            ld.release_latch(ld.create_connection_latch(extra))

    return best_rate(batch, 64, seconds)


def find_rate(engine: IPsecEngine, fl: list[FiveTuple], n: int, seconds: float) -> float:
    rng = random.Random(1)
    keys = [fl[rng.randrange(n)] for _ in range(4096)]
    find = engine.latches.find_latch
    return best_rate(lambda: [find(k) for k in keys], len(keys), seconds)


def build_ulp(n: int) -> tuple[Callable[[], object], int]:
    """Approach 1: the engine tags, a UlpLatch per flow (in its TCB) checks; one batch = 4096
    packets over 1000 active flows."""
    engine = IPsecEngine(ex.nfs_spd(), ex.btns_pad(), approach=Approach.ULP)
    peers = [ex.btns_peer(100 + i) for i in range(PEERS)]
    fl = flows(n)
    sas = []
    for i, f in enumerate(fl):
        sa = engine.install_sa(ex.narrow_sa(f, peers[i % PEERS], ex.btns_local(1)), 0.0)
        assert sa is not None
        sas.append(sa)
    tcbs = [UlpLatch(engine, f) for f in fl]
    for tcb, f, sa in zip(tcbs, fl, sas, strict=True):
        assert tcb.inbound(engine.inbound(f, sa, 0.0, initiating=True)).deliver
    rng = random.Random(5660)
    active = rng.sample(range(n), ACTIVE)
    batch = [(tcbs[i], fl[i], sas[i]) for i in (rng.choice(active) for _ in range(4096))]
    inbound = engine.inbound

    def run() -> None:
        for tcb, f, sa in batch:
            tcb.inbound(inbound(f, sa, 1.0))

    return run, len(batch)


def bytes_per_latch(n: int) -> float:
    engine = IPsecEngine(ex.nfs_spd(), ex.btns_pad())
    peers = [ex.btns_peer(100 + i) for i in range(PEERS)]
    fl = flows(n)
    for i, f in enumerate(fl):
        engine.install_sa(ex.narrow_sa(f, peers[i % PEERS], ex.btns_local(1)), 0.0)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for f in fl:
        engine.connect(f)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    return grown / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--max", type=int, default=100_000)
    args = ap.parse_args()
    sizes = [s for s in (1_000, 10_000, 100_000) if s <= args.max]
    built = {n: build(n) for n in sizes}
    batches = {}
    spread = {}
    for n, (engine, fl, sas) in built.items():
        rng = random.Random(5660)
        active = rng.sample(range(n), ACTIVE)  # the flows that happen to carry traffic right now
        pairs = [(fl[i], sas[i]) for i in (rng.choice(active) for _ in range(4096))]
        inbound = engine.inbound
        assert all(inbound(f, sa, 1.0).accepted for f, sa in pairs)
        batches[n] = (inbound, pairs)
        spread[n] = (inbound, [(fl[i], sas[i]) for i in (rng.randrange(n) for _ in range(4096))])
    # windows of all sizes interleaved, so that load from other processes hits them alike
    best = dict.fromkeys(sizes, 0.0)
    stop = time.perf_counter() + args.seconds * len(sizes)
    while time.perf_counter() < stop:
        for n, (inbound, pairs) in batches.items():
            best[n] = max(
                best[n], best_rate(lambda i=inbound, p=pairs: [i(f, sa, 1.0) for f, sa in p], len(pairs), 0.0)
            )
    for n in sizes:
        bench(f"latch.inbound_check.{n // 1000}k", best[n], "checks/s", best[sizes[0]])
    best_spread = dict.fromkeys(sizes, 0.0)
    stop = time.perf_counter() + args.seconds * len(sizes)
    while time.perf_counter() < stop:
        for n, (inbound, pairs) in spread.items():
            rate = best_rate(lambda i=inbound, p=pairs: [i(f, sa, 1.0) for f, sa in p], len(pairs), 0.0)
            best_spread[n] = max(best_spread[n], rate)
    n = sizes[-1]
    bench(f"latch.inbound_check_spread.{n // 1000}k", best_spread[n], "checks/s", best_spread[sizes[0]])
    ulp = {m: build_ulp(m) for m in (sizes[0], sizes[-1])}
    best_ulp = dict.fromkeys(ulp, 0.0)
    stop = time.perf_counter() + args.seconds * len(ulp)
    while time.perf_counter() < stop:
        for m, (run, per) in ulp.items():
            best_ulp[m] = max(best_ulp[m], best_rate(run, per, 0.0))
    bench(f"latch.ulp_inbound_check.{n // 1000}k", best_ulp[n], "checks/s", best_ulp[sizes[0]])
    del ulp
    n = sizes[-1]
    engine, fl, _ = built[n]
    bench(
        f"latch.create_release.{n // 1000}k", create_release_rate(engine, fl[n], args.seconds), "ops/s", None
    )
    bench(f"latch.find.{n // 1000}k", find_rate(engine, fl, n, args.seconds), "ops/s", None)
    del built, batches, spread, engine, fl
    gc.collect()
    bench("latch.bytes_per_latch", bytes_per_latch(min(10_000, args.max)), "bytes", None)


if __name__ == "__main__":
    main()
