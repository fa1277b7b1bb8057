"""Channel binding's payoff: bulk ECHO 64 KiB with channel_prot over a latched channel versus
RPCSEC_GSS krb5p and krb5i without IPsec, in the same run on the same simulated network.

For each mode one connection is opened through the BYPASS-OR-PROTECT policy
(:class:`rpclatch.connect.ProtectedConnection`) on :mod:`rpclatch.netsim` with a throwaway MIT
realm, then ECHO calls of 64 KiB are made back to back. Figures:

* throughput: MB/s of payload (request + reply bytes, 2 x 64 KiB per call) in wall-clock time;
* RPC-layer CPU seconds per GiB of payload: user + sys CPU from ``resource.getrusage``
  (RUSAGE_SELF) deltas taken around the RPC-layer work -- the sans-IO entry points of
  :class:`RpcClientConnection` and :class:`RpcServerConnection` (record marking, the RPCSEC_GSS
  flavors with their MICs / wrap / unwrap, dispatch, the ECHO procedure; outermost call only).
  In the sim world the RPC client and the RPC server are two endpoints in ONE process (this one),
  so this is not the per-process accounting of two separate processes: it is the same
  kernel-accounted user+sys time, restricted to the RPC client's and server's code;
* the simulation's own ESP work (AES-GCM seal/open in the sim stack), reported apart: a kernel
  would do it outside the RPC processes. What remains (the sim's TCP, hub, scheduler) is neither.

The meter's own cost (two ``getrusage`` calls, about 1 us, per wrapped call; the sim hands
the RPC layer one TCP segment at a time, so the number of wrapped calls is the same in every mode)
is included in the RPC-layer figures: it inflates channel_prot relatively more, so the ratio is
conservative.

Target: channel_prot RPC-layer CPU per GiB <= 0.5 of krb5p's.

Usage: ``python benchmarks/bound_vs_gss.py [--calls N] [--repeat R]``. Prints ``BENCH`` lines.
"""

from __future__ import annotations

import argparse
import functools
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rpclatch.connect import ConnectPolicy, FallbackService
from rpclatch.demo.testbed import build_testbed
from rpclatch.gss.realm import running_realm
from rpclatch.gss.wire import Service
from rpclatch.netsim import stack as sim_stack
from rpclatch.rpc.client import RpcClientConnection
from rpclatch.rpc.server import RpcServerConnection
from rpclatch.rpc.testprog import (
    PROC_ECHO,
    RPCLATCH_TEST_PROG,
    RPCLATCH_TEST_VERS,
    decode_opaque,
    encode_opaque,
)

SIZE = 64 * 1024
GIB = 1024**3


def rusage_cpu() -> float:
    """User + sys CPU seconds of this process so far (``getrusage(RUSAGE_SELF)``)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class CpuMeter:
    """Accumulates user + sys CPU (getrusage deltas) spent inside wrapped functions (outermost
    call only)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            t0 = rusage_cpu()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += rusage_cpu() - t0
                self._depth -= 1

        return timed


@contextmanager
def instrumented(rpc: CpuMeter, esp: CpuMeter) -> Iterator[None]:
    patches: list[tuple[Any, str, Any]] = []
    for cls, names in (
        (RpcClientConnection, ("send_call", "receive_data", "data_to_send", "handle_timer")),
        (RpcServerConnection, ("receive_data", "data_to_send", "finish", "handle_timer")),
    ):
        for name in names:
            original = getattr(cls, name)
            patches.append((cls, name, original))
            setattr(cls, name, rpc.wrap(original))
    for name in ("esp_seal", "esp_open"):
        original = getattr(sim_stack, name)
        patches.append((sim_stack, name, original))
        setattr(sim_stack, name, esp.wrap(original))
    try:
        yield
    finally:
        for owner, name, original in reversed(patches):
            setattr(owner, name, original)


@dataclass
class Figures:
    mode: str
    mb_s: float
    rpc_cpu_per_gib: float
    esp_cpu_per_gib: float
    total_cpu_per_gib: float


def measure(realm: Any, mode: str, calls: int) -> Figures:
    if mode == "channel_prot":
        bed = build_testbed(realm, seed=21)
        policy = ConnectPolicy(ike_timeout=2.0, fallback=FallbackService.PRIVACY)
        expect = Service.CHANNEL_PROT
    else:
        bed = build_testbed(realm, seed=22)
        fallback = FallbackService.PRIVACY if mode == "krb5p" else FallbackService.INTEGRITY
        policy = ConnectPolicy(try_ipsec=False, fallback=fallback)
        expect = Service.from_sec_name(mode)
    pc = bed.connection(policy)
    record = pc.connect()
    if record.gss_service is not expect:
        raise SystemExit(f"{mode}: the policy chose {record.gss_service.sec_name}: {record.reason}")
    payload = bytes(range(256)) * (SIZE // 256)
    args = encode_opaque(payload)
    reply = pc.call(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, args)  # warm up
    assert decode_opaque(reply) == payload
    services = bed.wire_view().data_services()  # the warm-up call: what the wire really carried
    if services != [expect.sec_name]:
        raise SystemExit(f"{mode}: the wire shows {services}")
    rpc, esp = CpuMeter(), CpuMeter()
    with instrumented(rpc, esp):
        cpu0, wall0 = rusage_cpu(), time.perf_counter()
        for _ in range(calls):
            pc.call(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, args)
        wall, cpu = time.perf_counter() - wall0, rusage_cpu() - cpu0
    moved = 2 * SIZE * calls
    return Figures(
        mode, moved / wall / 1e6, rpc.seconds * GIB / moved, esp.seconds * GIB / moved, cpu * GIB / moved
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100, help="ECHO calls per measurement (default 100)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per mode; the median is kept")
    opts = parser.parse_args()
    modes = ("channel_prot", "krb5p", "krb5i")
    with running_realm(("alice",)) as realm:
        runs: dict[str, list[Figures]] = {m: [] for m in modes}
        for _ in range(opts.repeat):
            for mode in modes:  # interleaved, so drift hits every mode alike
                runs[mode].append(measure(realm, mode, opts.calls))
    med: dict[str, Figures] = {}
    for mode, figs in runs.items():
        med[mode] = Figures(
            mode,
            statistics.median(f.mb_s for f in figs),
            statistics.median(f.rpc_cpu_per_gib for f in figs),
            statistics.median(f.esp_cpu_per_gib for f in figs),
            statistics.median(f.total_cpu_per_gib for f in figs),
        )
    base = med["krb5p"]
    print(
        f"# world=sim (rpclatch.netsim, AES-GCM ESP in-process; RPC client and server in this one "
        f"process), {opts.calls} x ECHO 64 KiB per run, median of {opts.repeat}; payload counted both ways"
    )
    print(
        "# cpu_s/GiB = user+sys from resource.getrusage(RUSAGE_SELF) deltas around the RPC client's and "
        "server's connection entry points (same process: the RPC-layer share of this process's CPU), "
        "per GiB of payload; 'whole process' = the getrusage delta over the whole run"
    )
    for mode in modes:
        f = med[mode]
        cpu_mb_s = GIB / f.total_cpu_per_gib / 1e6
        print(
            f"# {mode:12s} {f.mb_s:6.1f} MB/s wall ({cpu_mb_s:4.1f} MB per user+sys CPU s)  "
            f"rpc-layer {f.rpc_cpu_per_gib:7.2f} cpu_s/GiB  "
            f"sim ESP {f.esp_cpu_per_gib:6.2f} cpu_s/GiB  whole process {f.total_cpu_per_gib:7.2f} cpu_s/GiB"
        )

    def line(name: str, value: float, unit: str, baseline: float) -> None:
        print(
            f"BENCH {name} value={value:.3f} unit={unit} baseline={baseline:.3f} ratio={value / baseline:.3f}"
        )

    cp = med["channel_prot"]
    line("bound.cpu_per_gib.channel_prot", cp.rpc_cpu_per_gib, "cpu_s/GiB", base.rpc_cpu_per_gib)
    line("bound.cpu_per_gib.krb5i", med["krb5i"].rpc_cpu_per_gib, "cpu_s/GiB", base.rpc_cpu_per_gib)
    line("bound.esp_cpu_per_gib.channel_prot", cp.esp_cpu_per_gib, "cpu_s/GiB", base.rpc_cpu_per_gib)
    line("bound.echo64k.channel_prot", cp.mb_s, "MB/s", base.mb_s)
    line("bound.echo64k.krb5i", med["krb5i"].mb_s, "MB/s", base.mb_s)
    line("bound.echo64k.krb5p", base.mb_s, "MB/s", base.mb_s)


if __name__ == "__main__":
    main()
