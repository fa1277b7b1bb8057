"""Connection set-up under BYPASS-OR-PROTECT on real loopback sockets: how long from "connect"
to the answer of the first call, in three modes measured in the same run.

* ``plain`` (the baseline): no IPsec asked for -- TCP connect, RPCSEC_GSS INIT (a krb5 context
  from a real throwaway MIT KDC), first ECHO call under krb5p;
* ``fallback`` (``connect.bop_fallback_ms``): the client asks its key manager for a latch
  (CREATE_CONNECTION_LATCH, IKE timeout 2 s) but the server host runs no key manager: its kernel
  answers the IKE_SA_INIT request with an ICMP port unreachable, the client's key manager answers
  IKE_UNREACHABLE (docs/keyd.md, "Failing fast"), and the policy falls back to BYPASS + krb5p:
  TCP connect, RPCSEC_GSS INIT, first krb5p call. Target: <= 100 ms;
* ``latched`` (``connect.bop_latched_ms``): both hosts run a key manager: IKEv2 (IKE_SA_INIT +
  IKE_AUTH, a CHILD_SA for the exact 5-tuple), latch ESTABLISHED, TCP connect, FIND_LATCH on the
  server, RPCSEC_GSS v2 INIT + BIND_CHANNEL, first call under channel_prot.

Each figure is the median over ``--rounds`` rounds (modes interleaved within a round, one warm-up
round not counted); the ratio is against ``plain``.

What this is NOT: kernel ESP. Everything runs in this one process without root, as
tests/connect/test_kernel.py does: two key-manager daemons (:class:`KeydDaemon`, the same code as
``rpclatch ipsec keyd``) on 127.0.0.1 and 127.0.0.2 over loopback UDP, each with the in-process
datapath (:class:`~rpclatch.ipsec.backend.InProcessBackend`) standing in for XFRM, so the
CHILD_SAs are negotiated and "installed" but the TCP bytes are not encrypted by ESP. The server
without a key manager is a plain RPC server on 127.0.0.3, whose IKE port (an unprivileged port,
since port 500 needs root) has nothing bound: the ICMP port unreachable is the real kernel's. Figures
over kernel ESP need the UML world and are not measured by this script.

With ``--silent N`` it also times N fallbacks to a fourth host (127.0.0.4) whose IKE port is bound
but never read, so no ICMP comes back and the 2 s IKE timeout decides: what every fallback cost
before the key manager listened to ICMP (printed as a comment, not a BENCH line).

Usage: ``python benchmarks/connect.py [--rounds N] [--silent N]``. Prints ``BENCH`` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ed25519

from rpclatch.connect import ConnectPolicy, FallbackService, LatchOutcome, ProtectedConnection
from rpclatch.connect.gss import RpcsecGssConnector
from rpclatch.connect.kernel import KernelClientWorld, KernelServerEndpoint
from rpclatch.gss.provider import GssapiProvider
from rpclatch.gss.realm import ThrowawayRealm, running_realm
from rpclatch.gss.server import GssServerAuth
from rpclatch.gss.wire import Service
from rpclatch.ipsec.backend import InProcessBackend
from rpclatch.ipsec.ike.config import Credentials, IkeConfig
from rpclatch.ipsec.keyd.daemon import KeydDaemon
from rpclatch.ipsec.model import AddressRange, AuthMethod, IPAddress, IpProto, Selector
from rpclatch.ipsec.pad import ChildSaAuthorization, PadEntry, PeerAuthorizationDatabase, PublicKeyPattern
from rpclatch.rpc.aio import RpcServer
from rpclatch.rpc.server import RpcDispatcher
from rpclatch.rpc.testprog import (
    PROC_ECHO,
    RPCLATCH_TEST_PROG,
    RPCLATCH_TEST_VERS,
    add_test_program,
    decode_opaque,
    encode_opaque,
)

CLIENT = ipaddress.ip_address("127.0.0.1")
SERVER = ipaddress.ip_address("127.0.0.2")  # runs a key manager
BARE = ipaddress.ip_address("127.0.0.3")  # runs none
SILENT = ipaddress.ip_address("127.0.0.4")  # runs none, and its IKE port is bound but never read
PAYLOAD = b"connect-benchmark" * 8
IKE_TIMEOUT = 2.0
TARGET_FALLBACK_MS = 100.0
MODES = ("plain", "fallback", "latched")


def _pad() -> PeerAuthorizationDatabase:
    entry = PadEntry(
        "btns", PublicKeyPattern(), AuthMethod.RAW_PUBLIC_KEY, ChildSaAuthorization(own_address_only=True)
    )
    return PeerAuthorizationDatabase([entry])


def _udp(addr: IPAddress) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((str(addr), 0))
    return sock


def _dispatcher(realm: ThrowawayRealm) -> RpcDispatcher:
    dispatcher = RpcDispatcher()
    add_test_program(dispatcher)
    dispatcher.add_flavor(GssServerAuth(GssapiProvider(realm.service_name, keytab=realm.keytab)))
    return dispatcher


class _Closable(Protocol):
    async def close(self) -> None: ...


class Bench:
    """The three-host loopback world (see the module docstring)."""

    def __init__(self, realm: ThrowawayRealm, tmp: Path) -> None:
        self.realm = realm
        self.tmp = tmp
        self.closers: list[_Closable] = []
        self.ports: dict[str, int] = {}
        self.worlds: dict[str, KernelClientWorld] = {}
        self.silent_ike: socket.socket

    async def start(self) -> None:
        a_sock, b_sock = _udp(CLIENT), _udp(SERVER)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:  # BARE's IKE port: closed
            gone.bind((str(BARE), 0))
            bare_ike = int(gone.getsockname()[1])
        self.silent_ike = _udp(SILENT)  # bound: the kernel sends no ICMP, IKE goes unanswered
        ike_ports = {
            CLIENT: a_sock.getsockname()[1],
            SERVER: b_sock.getsockname()[1],
            BARE: bare_ike,
            SILENT: self.silent_ike.getsockname()[1],
        }

        def resolve(addr: IPAddress) -> tuple[IPAddress, int]:
            return (addr, ike_ports[addr])

        def config(policy: tuple[Selector, ...]) -> IkeConfig:
            return IkeConfig(Credentials.raw_key(ed25519.Ed25519PrivateKey.generate()), _pad(), policy)

        a = await KeydDaemon.start(
            config(()), a_sock, self.tmp / "a.sock", backend=InProcessBackend(), peer_endpoint=resolve
        )
        b_policy = (Selector(AddressRange.single(SERVER), None, IpProto.TCP),)
        b = await KeydDaemon.start(
            config(b_policy), b_sock, self.tmp / "b.sock", backend=InProcessBackend(), peer_endpoint=resolve
        )
        self.closers += [a, b]
        endpoint = KernelServerEndpoint(_dispatcher(self.realm), self.tmp / "b.sock")
        self.ports["latched"] = await endpoint.start(str(SERVER), 0)
        self.closers.append(endpoint)
        bare = RpcServer(_dispatcher(self.realm))
        self.ports["plain"] = self.ports["fallback"] = await bare.listen_tcp(str(BARE), 0)
        self.closers.append(bare)
        silent = RpcServer(_dispatcher(self.realm))
        self.ports["silent"] = await silent.listen_tcp(str(SILENT), 0)
        self.closers.append(silent)
        for mode, host in (("plain", BARE), ("fallback", BARE), ("latched", SERVER), ("silent", SILENT)):
            world = KernelClientWorld(str(host), self.tmp / "a.sock", source_addr=str(CLIENT))
            self.worlds[mode] = world
            self.closers.insert(0, world)

    async def close(self) -> None:
        for closer in self.closers:
            await closer.close()
        self.silent_ike.close()

    async def once(self, mode: str) -> float:
        """Seconds from aconnect() to the first ECHO answer; checks the policy row taken."""
        policy = ConnectPolicy(
            port=self.ports[mode],
            ike_timeout=IKE_TIMEOUT,
            fallback=FallbackService.PRIVACY,
            try_ipsec=mode != "plain",
        )
        gss = RpcsecGssConnector(
            GssapiProvider(ccache=self.realm.default_user.ccache),
            self.realm.service_name,
            RPCLATCH_TEST_PROG,
            RPCLATCH_TEST_VERS,
        )
        pc = ProtectedConnection(self.worlds[mode], gss, policy)
        try:
            t0 = time.perf_counter()
            record = await pc.aconnect()
            reply = await pc.acall(RPCLATCH_TEST_PROG, RPCLATCH_TEST_VERS, PROC_ECHO, encode_opaque(PAYLOAD))
            elapsed = time.perf_counter() - t0
        finally:
            await pc.aclose()
        if decode_opaque(reply) != PAYLOAD:
            raise SystemExit(f"{mode}: wrong ECHO reply")
        if mode == "latched":
            ok = record.bound and record.gss_service is Service.CHANNEL_PROT
        else:
            ok = not record.latched and record.gss_service is Service.PRIVACY
            if mode != "plain":
                error = record.protection_error or ""
                want = "IKE_UNREACHABLE" if mode == "fallback" else "IKE_TIMEOUT"
                ok = ok and record.latch_outcome is LatchOutcome.NOT_LATCHED and want in error
        if not ok:
            raise SystemExit(f"{mode}: unexpected policy row: {record}")
        return elapsed


async def run(realm: ThrowawayRealm, rounds: int, silent_rounds: int) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="rpclatch-bench-connect-") as tmp:
        bench = Bench(realm, Path(tmp))
        try:
            await bench.start()
            for mode in MODES:  # warm-up: imports, first GSS context, first IKE SA
                await bench.once(mode)
            times: dict[str, list[float]] = {mode: [] for mode in MODES}
            for _ in range(rounds):
                for mode in MODES:  # interleaved, so drift hits every mode alike
                    times[mode].append(await bench.once(mode))
            if silent_rounds:
                times["silent"] = [await bench.once("silent") for _ in range(silent_rounds)]
            return times
        finally:
            await bench.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds (default 20); medians")
    parser.add_argument(
        "--silent",
        type=int,
        default=0,
        metavar="N",
        help="also time N fallbacks to a host whose IKE port drops silently (no ICMP: ~the IKE timeout)",
    )
    opts = parser.parse_args()
    with running_realm(("alice",)) as realm:
        times = asyncio.run(run(realm, opts.rounds, opts.silent))
    ms = {mode: statistics.median(t) * 1000 for mode, t in times.items()}
    base = ms["plain"]
    print(f"BENCH connect.plain_krb5p_ms value={base:.2f} unit=ms baseline={base:.2f} ratio=1.00")
    for name, mode in (("connect.bop_fallback_ms", "fallback"), ("connect.bop_latched_ms", "latched")):
        print(f"BENCH {name} value={ms[mode]:.2f} unit=ms baseline={base:.2f} ratio={ms[mode] / base:.2f}")
    verdict = "met" if ms["fallback"] <= TARGET_FALLBACK_MS else "MISSED"
    worst = max(times["fallback"]) * 1000
    print(
        f"# fallback target <= {TARGET_FALLBACK_MS:g} ms: {verdict} (worst {worst:.2f} ms over"
        f" {len(times['fallback'])} rounds; IKE timeout {IKE_TIMEOUT:g} s)"
    )
    if "silent" in ms:
        print(
            f"# silent IKE port (no ICMP, the timeout decides): {ms['silent']:.0f} ms"
            f" over {len(times['silent'])} rounds"
        )


if __name__ == "__main__":
    main()
