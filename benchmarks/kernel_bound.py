"""``kernel.echo64k.channel_prot`` and ``kernel.cpu_per_gib.channel_prot``: bulk ECHO 64 KiB with
channel_prot over a connection latched to kernel ESP, against RPCSEC_GSS krb5p over plain TCP, in
the same User-Mode Linux guest and run (issue #13, "Performance").

In the guest (the nfsd world of :mod:`interop`, for its KDC, the NFS service key and alice's
client keytab): two ``rpclatch ipsec keyd`` processes, one in netns ``client`` (203.0.113.11) and
one in the root netns (203.0.113.12); ``rpclatch rpc serve --ipsec bypass-or-protect --sec krb5p``
in the root netns. Each measurement is one client process in netns ``client`` (a
:class:`rpclatch.connect.ProtectedConnection` on :class:`rpclatch.connect.kernel.KernelClientWorld`)
that connects, makes one warm-up call, then ECHO calls of 64 KiB (test program 0x20000A11 v1) back
to back for ``--seconds``:

* channel_prot: the policy latches the connection (IKE, kernel ESP AES-GCM in transport mode),
  binds RPCSEC_GSS v2 to the latch (BIND_CHANNEL) and calls with channel_prot; the client checks
  the record says so and that the kernel's ESP byte counters grew by at least the payload;
* channel_prot.chacha20: the same from a second client address whose key manager offers only ESP
  ChaCha20-Poly1305 (RFC 7634; ``rpclatch ipsec keyd --esp chacha20-poly1305``); the client checks
  its SAs run ``rfc7539esp(chacha20,poly1305)`` (and the first mode's ``rfc4106(gcm(aes))``);
* krb5p (baseline): the same server and client code with ``try_ipsec`` off: plain TCP (the
  server's key manager answers FIND_LATCH with a BYPASS latch), RPCSEC_GSS krb5p; the client
  checks the record and that ESP carried (almost) nothing.

The rounds alternate the modes (channel_prot, channel_prot.chacha20, krb5p, channel_prot, ...) so
drift hits all alike; the figures are medians over ``--rounds``.

Figures (five ``BENCH`` lines: the three below for AES-GCM, then ``kernel.echo64k`` and
``kernel.process_cpu_per_gib`` again as ``...channel_prot.chacha20``; the RPC-layer figure does not
depend on the ESP cipher):

* ``kernel.echo64k.channel_prot``, MB/s: payload bytes (request + reply, 2 x 64 KiB per call) per
  wall-clock second of the calling loop;
* ``kernel.cpu_per_gib.channel_prot``, RPC-layer CPU seconds per GiB of payload, client + server
  processes: the CPU time spent inside the sans-IO entry points of
  :class:`rpclatch.rpc.client.RpcClientConnection` (in the client process) and
  :class:`rpclatch.rpc.server.RpcServerConnection` (in the server process, which this script
  starts as ``rpclatch``'s CLI with those methods wrapped), outermost call only, measured with
  ``time.thread_time`` (the scheduler's per-thread runtime, nanoseconds); the server's running
  total is kept in a small shared file the client reads before and after its loop. That is the
  RPC layer as in ``benchmarks/bound_vs_gss.py``: record marking, the RPCSEC_GSS flavor (wrap/unwrap
  for krb5p, the header MIC for channel_prot), XDR, dispatch, the ECHO procedure;
* ``kernel.process_cpu_per_gib.channel_prot``: the whole two processes over the loop, user + sys
  (the client's ``getrusage(RUSAGE_SELF)``, the server's ``utime`` + ``stime`` from
  ``/proc/<pid>/stat``): the RPC layer plus asyncio, the socket system calls and whatever kernel
  work is charged to them.

What is and is not counted. The RPC-layer figure has no kernel work in it: kernel ESP is outside
it by construction (an interrupt landing inside a wrapped call is the only leak). The whole-process
figure has part of kernel ESP: encryption on transmit runs in the sender's ``sendmsg``, and
decryption on receive runs in softirq, charged to whichever task it interrupted (on a veth often
the sender itself); softirq run on an otherwise idle CPU is counted nowhere. In UML, moreover,
``getrusage`` reports nearly all of it as user time. The key managers' CPU is not counted (IKE ran
before the loop; their CPU over the loop is a ``#`` line, normally 0). The guest kernel's AES-GCM
implementation is printed: UML has no AES-NI, so ESP there is the generic C code
(``ctr(aes-generic)``, ``ghash-generic``), while krb5p's AES runs in the Kerberos library in user
space, natively on the host CPU; that, not the RPC layer, sets channel_prot's throughput there.
ChaCha20-Poly1305 is the AEAD designed for software without AES instructions, which is why the
ChaCha20 lines exist.

Target: CPU ratio <= 0.5 and throughput ratio >= 1.0. The UML guest has one CPU and runs on a
shared host; absolute figures are those of UML on this machine, the ratios are what compares.

Needs root, /dev/net/tun and linux.uml (as the interop suite); prints one line saying what is
missing (and no BENCH line) otherwise, exit status 0.

``--world netns`` runs the same on the host kernel's namespaces (interop/hostkernel.py), where the
host kernel has nfsd and esp4 (not tried yet: the machine it was written on has neither).

Usage: ``python benchmarks/kernel_bound.py [--seconds S] [--rounds N] [--world uml|netns] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import mmap
import os
import re
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
from interop.guest_keyd import Proc, keyd_ready, rpclatch_argv, write_key  # noqa: E402

CLIENT_ADDR = "203.0.113.11"
SERVER_ADDR = "203.0.113.12"
#: the second client key manager's address: its CHILD_SAs are ESP ChaCha20-Poly1305
CHACHA_ADDR = "203.0.113.13"
PORT = 5664  # 2049 is the guest nfsd's
TARGET = "nfs@guest.rpclatch.test"
PROG = 0x20000A11
SIZE = 64 * 1024
GIB = 1024**3
MODES = ("channel_prot", "channel_prot.chacha20", "krb5p")
#: the kernel AEAD each mode's connection must run on (krb5p: none)
AEAD = {"channel_prot": "rfc4106(gcm(aes))", "channel_prot.chacha20": "rfc7539esp(chacha20,poly1305)"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- guest side: one measurement (runs in netns client) --------------------------------------------


def esp_bytes(source: str) -> tuple[int, set[str]]:
    """Bytes counted by this namespace's ESP states from or to ``source``, and their AEADs."""
    text = subprocess.run(["ip", "-s", "xfrm", "state"], capture_output=True, text=True, check=False).stdout
    total, ours, aeads = 0, False, set()
    for line in text.splitlines():
        if line.startswith("src "):
            ours = f" {source} " in f"{line} "
        elif ours and (m := re.match(r"\s*aead (\S+)", line)):
            aeads.add(m.group(1))
        elif ours and (m := re.match(r"\s*(\d+)\(bytes\)", line)):
            total += int(m.group(1))
    return total, aeads


def proc_cpu(pid: int) -> tuple[float, float]:
    """User and sys CPU seconds of process ``pid`` (all its threads) from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def self_cpu() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


class RpcLayerMeter:
    """Accumulates the CPU time (``time.thread_time``: CLOCK_THREAD_CPUTIME_ID, the scheduler's
    nanosecond runtime of this thread) spent inside the sans-IO entry points of
    :class:`RpcClientConnection` / :class:`RpcServerConnection` (outermost call only), and keeps the
    running total in a shared 8-byte file so another process can read it."""

    def __init__(self, path: Path) -> None:
        path.write_bytes(bytes(8))
        self._file = path.open("r+b")
        self._map = mmap.mmap(self._file.fileno(), 8)
        self.seconds = 0.0
        self._depth = 0

    @staticmethod
    def read(path: Path) -> float:
        return float(struct.unpack("d", path.read_bytes()[:8])[0])

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.thread_time() - t0
                self._map[:8] = struct.pack("d", self.seconds)
                self._depth -= 1

        return timed

    def install(self, side: str) -> None:
        from rpclatch.rpc.client import RpcClientConnection
        from rpclatch.rpc.server import RpcServerConnection

        cls: type[Any]
        if side == "client":
            cls = RpcClientConnection
            names = ("send_call", "receive_data", "data_to_send", "data_to_send_parts", "handle_timer")
        else:
            cls = RpcServerConnection
            names = ("receive_data", "data_to_send", "data_to_send_parts", "finish", "handle_timer")
        for name in names:
            setattr(cls, name, self.wrap(getattr(cls, name)))


async def measure(
    mode: str, seconds: float, c_sock: Path, others: dict[str, int], server_meter: Path, source: str
) -> dict[str, Any]:
    from rpclatch.connect import ConnectPolicy, FallbackService, ProtectedConnection
    from rpclatch.connect.gss import RpcsecGssConnector
    from rpclatch.connect.kernel import KernelClientWorld
    from rpclatch.gss.provider import GssapiProvider
    from rpclatch.rpc.testprog import PROC_ECHO, decode_opaque, encode_opaque

    meter = RpcLayerMeter(Path(tempfile.mkdtemp()) / "client.meter")
    meter.install("client")
    world = KernelClientWorld(SERVER_ADDR, c_sock, source_addr=source)
    await world.start()
    gss = RpcsecGssConnector(GssapiProvider(), TARGET, PROG, 1, FallbackService.PRIVACY)
    service = mode.split(".")[0]
    policy = ConnectPolicy(port=PORT, ike_timeout=5.0, try_ipsec=service == "channel_prot")
    pc = ProtectedConnection(world, gss, policy)
    payload = bytes(range(256)) * (SIZE // 256)
    args = encode_opaque(payload)
    try:
        record = await pc.aconnect()
        if record.gss_service.sec_name != service:
            return {"error": f"{mode}: the policy chose {record.gss_service.sec_name}: {record.reason}"}
        if decode_opaque(await pc.acall(PROG, 1, PROC_ECHO, args)) != payload:  # warm up
            return {"error": f"{mode}: the warm-up ECHO came back different"}
        esp0, _ = esp_bytes(source)
        before = {name: proc_cpu(pid) for name, pid in others.items()}
        m0, s0 = meter.seconds, RpcLayerMeter.read(server_meter)
        c0, w0 = self_cpu(), time.perf_counter()
        calls, end = 0, w0 + seconds
        while time.perf_counter() < end:
            await pc.acall(PROG, 1, PROC_ECHO, args)
            calls += 1
        wall, c1 = time.perf_counter() - w0, self_cpu()
        rpc = {"client": meter.seconds - m0, "server": RpcLayerMeter.read(server_meter) - s0}
        after = {name: proc_cpu(pid) for name, pid in others.items()}
        esp1, aeads = esp_bytes(source)
        esp = esp1 - esp0
        summary = pc.security.summary()
        moved = 2 * SIZE * calls
        if (service == "channel_prot" and esp < moved) or (service != "channel_prot" and esp > moved // 100):
            return {"error": f"{mode}: ESP counted {esp} bytes for {moved} bytes of payload: {summary}"}
        if mode in AEAD and aeads != {AEAD[mode]}:
            return {"error": f"{mode}: the connection's ESP SAs run {sorted(aeads)}, not {AEAD[mode]}"}
        if pc.security.gss_service.sec_name != service or pc.security.generation != 1:
            return {"error": f"{mode}: the connection changed during the run: {summary}"}
    finally:
        await pc.aclose()
        await world.close()
    cpu = {"client": (c1[0] - c0[0], c1[1] - c0[1])}
    cpu.update({n: (after[n][0] - before[n][0], after[n][1] - before[n][1]) for n in others})
    return {
        "mode": mode,
        "calls": calls,
        "wall": wall,
        "cpu": cpu,
        "rpc": rpc,
        "esp_bytes": esp,
        "record": summary,
    }


# -- guest side: the driver (root netns) ----------------------------------------------------------


def gcm_drivers() -> list[str]:
    """The kernel's implementations of ESP's AEADs (``/proc/crypto``), to show what did the work."""
    drivers = []
    for block in Path("/proc/crypto").read_text().split("\n\n"):
        fields = dict(
            (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in block.splitlines())
        )
        if any(name in fields.get("name", "") for name in AEAD.values()):
            drivers.append(f"{fields['name']}: {fields.get('driver')} (priority {fields.get('priority')})")
    return drivers


async def guest(seconds: float, rounds: int, krb5_env: dict[str, str]) -> dict[str, Any]:
    res: dict[str, Any] = {"runs": [], "errors": []}
    tmp = Path(tempfile.mkdtemp())
    write_key(tmp / "c.pem")
    write_key(tmp / "s.pem")
    c_sock, s_sock, s_meter = tmp / "c.sock", tmp / "s.sock", tmp / "server.meter"
    c2_sock = tmp / "c2.sock"
    keyd = [*rpclatch_argv(), "ipsec", "keyd"]
    c_argv = [*keyd, "--netns", "client", "--address", CLIENT_ADDR, "--key", str(tmp / "c.pem")]
    c_keyd = Proc([*c_argv, "--socket", str(c_sock)], tmp / "c.log")
    # the same client key, another address and key manager, offering only ChaCha20-Poly1305; the
    # server's key manager takes either, in the order the initiator offers
    c2_argv = [*keyd, "--netns", "client", "--address", CHACHA_ADDR, "--key", str(tmp / "c.pem")]
    c2_keyd = Proc([*c2_argv, "--socket", str(c2_sock), "--esp", "chacha20-poly1305"], tmp / "c2.log")
    s_argv = [*keyd, "--address", SERVER_ADDR, "--key", str(tmp / "s.pem"), "--socket", str(s_sock)]
    s_keyd = Proc([*s_argv, "--esp", "aes-gcm-256,aes-gcm-128,chacha20-poly1305"], tmp / "s.log")
    server: Proc | None = None
    try:
        keyds = ((c_sock, c_keyd), (c2_sock, c2_keyd), (s_sock, s_keyd))
        if not all([await keyd_ready(sock, proc) for sock, proc in keyds]):
            res["errors"].append(
                "a key manager did not start: " + "".join(p.text()[-1000:] for _s, p in keyds)
            )
            return res
        serve = [
            sys.executable,
            str(Path(__file__).resolve()),
            "serve",
            str(s_meter),
            "rpc",
            "serve",
            "--host",
            SERVER_ADDR,
            "--port",
            str(PORT),
            "--tcp",
        ]
        serve += [
            "--sec",
            "krb5p",
            "--principal",
            TARGET,
            "--ipsec",
            "bypass-or-protect",
            "--keyd",
            str(s_sock),
        ]
        server = Proc(
            serve,
            tmp / "serve.log",
            {"KRB5_KTNAME": "/etc/krb5.keytab", "KRB5_CONFIG": "/etc/krb5.conf"},
        )
        end = time.monotonic() + 60
        while (
            "serving program" not in server.text() and server.proc.poll() is None and time.monotonic() < end
        ):
            await asyncio.sleep(0.1)
        if "serving program" not in server.text():
            res["errors"].append("the server did not start: " + server.text()[-2000:])
            return res
        others = {
            "server": server.proc.pid,
            "keyd_client": c_keyd.proc.pid,
            "keyd_client2": c2_keyd.proc.pid,
            "keyd_server": s_keyd.proc.pid,
        }
        for _ in range(rounds):
            for mode in MODES:
                sock, source = (c2_sock, CHACHA_ADDR) if mode.endswith("chacha20") else (c_sock, CLIENT_ADDR)
                argv = ["ip", "netns", "exec", "client", sys.executable, str(Path(__file__).resolve())]
                argv += ["client", mode, str(seconds), str(sock), json.dumps(others), str(s_meter), source]
                r = await asyncio.to_thread(
                    subprocess.run,
                    argv,
                    capture_output=True,
                    text=True,
                    timeout=120 + seconds,
                    env={**os.environ, **krb5_env},
                    check=False,
                )
                out = r.stdout.strip().splitlines()
                run = json.loads(out[-1]) if r.returncode == 0 and out else {"error": r.stderr[-2000:]}
                if "error" in run:
                    res["errors"].append(run["error"])
                else:
                    res["runs"].append(run)
                await asyncio.sleep(2.5)  # the released latch's hold (2 s) ends; CPU settles
        res["gcm_drivers"] = gcm_drivers()  # after use: the kernel loads its AEADs on demand
    finally:
        if server is not None:
            server.stop()
            res["serve_log"] = server.text()[-2000:]
        for proc in (c_keyd, c2_keyd, s_keyd):
            proc.stop()
    return res


# -- host side --------------------------------------------------------------------------------------


def median_figures(runs: list[dict[str, Any]], mode: str) -> dict[str, float]:
    mine = [r for r in runs if r["mode"] == mode]

    def per_gib(r: dict[str, Any], parts: tuple[str, ...], idx: tuple[int, ...]) -> float:
        moved = 2 * SIZE * r["calls"]
        return sum(r["cpu"][p][i] for p in parts for i in idx) * GIB / moved

    def rpc_per_gib(r: dict[str, Any], parts: tuple[str, ...]) -> float:
        return sum(r["rpc"][p] for p in parts) * GIB / (2 * SIZE * r["calls"])

    rpc = ("client", "server")
    return {
        "mb_s": statistics.median(2 * SIZE * r["calls"] / r["wall"] / 1e6 for r in mine),
        "rpc": statistics.median(rpc_per_gib(r, rpc) for r in mine),
        "rpc_client": statistics.median(rpc_per_gib(r, ("client",)) for r in mine),
        "rpc_server": statistics.median(rpc_per_gib(r, ("server",)) for r in mine),
        "cpu": statistics.median(per_gib(r, rpc, (0, 1)) for r in mine),
        "user": statistics.median(per_gib(r, rpc, (0,)) for r in mine),
        "client": statistics.median(per_gib(r, ("client",), (0, 1)) for r in mine),
        "server": statistics.median(per_gib(r, ("server",), (0, 1)) for r in mine),
        "keyd": statistics.median(
            per_gib(r, ("keyd_client", "keyd_client2", "keyd_server"), (0, 1)) for r in mine
        ),
        "esp_per_payload": statistics.median(r["esp_bytes"] / (2 * SIZE * r["calls"]) for r in mine),
        "calls": statistics.median(r["calls"] for r in mine),
    }


def main() -> int:
    from interop.choose import choose_world

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="calling time per measurement (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="measurements per mode, interleaved (default 3)")
    ap.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one)")
    ap.add_argument(
        "--world",
        choices=("uml", "netns"),
        default="uml",
        help="the interop world (default uml; see interop/)",
    )
    args = ap.parse_args()
    if args.rounds < 1 or args.seconds <= 0:
        print("kernel_bound: --rounds must be at least 1 and --seconds positive", file=sys.stderr)
        return 2
    choice = choose_world(args.world)
    if choice.missing:
        print("kernel_bound: cannot run here: " + "; ".join(choice.missing), file=sys.stderr)
        return 0
    run_dir = args.out or Path(tempfile.mkdtemp(prefix="kernel-bound-"))
    with choice.cls(run_dir=run_dir) as g:
        g.run(
            f"ip -n client addr add {CLIENT_ADDR}/24 dev vc && ip -n client addr add {CHACHA_ADDR}/24 dev vc"
            f" && ip addr add {SERVER_ADDR}/24 dev vs",
            check=True,
        )
        env = g.guest_env("alice", "client")
        krb5 = json.dumps({k: v for k, v in env.items() if k.startswith("KRB5")})
        r = g.run(
            g.python_argv(str(Path(__file__).resolve()), "guest", str(args.seconds), str(args.rounds), krb5),
            env=g.guest_env(None),
            timeout=120 + args.rounds * len(MODES) * (args.seconds + 30),
        )
    if not r.ok:
        print(f"kernel_bound: the guest run failed (rc {r.returncode}):\n{r.stderr[-3000:]}", file=sys.stderr)
        return 1
    res = json.loads(r.stdout.strip().splitlines()[-1])
    runs = res["runs"]
    if res["errors"] or any(len([x for x in runs if x["mode"] == m]) != args.rounds for m in MODES):
        print(f"kernel_bound: incomplete run, no figure: {res['errors']}; logs in {run_dir}", file=sys.stderr)
        return 1
    cp, base = median_figures(runs, "channel_prot"), median_figures(runs, "krb5p")
    print(
        f"# world={choice.kind}, ECHO 64 KiB back to back for {args.seconds:g} s per measurement, "
        f"median of {args.rounds} interleaved rounds (each figure its own median: parts need not add up); "
        "payload counted both ways"
    )
    print(
        "# rpc-layer cpu_s/GiB = CPU time (thread_time) inside the sans-IO RPC client and server "
        "connection entry points, in the client and the server process, per GiB of payload; "
        "whole processes = user+sys of both processes (getrusage, /proc/<pid>/stat) over the loop"
    )
    print("# guest kernel ESP AEADs: " + "; ".join(res.get("gcm_drivers") or ["?"]))
    chacha = median_figures(runs, "channel_prot.chacha20")
    for mode, f in (("channel_prot", cp), ("channel_prot.chacha20", chacha), ("krb5p", base)):
        print(
            f"# {mode:21s} {f['mb_s']:6.2f} MB/s  rpc-layer {f['rpc']:6.2f} s/GiB "
            f"(client {f['rpc_client']:6.2f}, server {f['rpc_server']:6.2f})  "
            f"whole processes {f['cpu']:6.2f} s/GiB (user {f['user']:6.2f}; "
            f"client {f['client']:6.2f}, server {f['server']:6.2f})  key managers {f['keyd']:5.2f} s/GiB  "
            f"ESP bytes/payload byte {f['esp_per_payload']:.3f}  calls {f['calls']:g}"
        )
    for mode in MODES:
        print(f"# {mode}: " + next(r["record"] for r in runs if r["mode"] == mode))
    print(
        f"BENCH kernel.echo64k.channel_prot value={cp['mb_s']:.3f} unit=MB/s "
        f"baseline={base['mb_s']:.3f} ratio={cp['mb_s'] / base['mb_s']:.3f}"
    )
    print(
        f"BENCH kernel.cpu_per_gib.channel_prot value={cp['rpc']:.3f} unit=s/GiB "
        f"baseline={base['rpc']:.3f} ratio={cp['rpc'] / base['rpc']:.3f}"
    )
    print(
        f"BENCH kernel.process_cpu_per_gib.channel_prot value={cp['cpu']:.3f} unit=s/GiB "
        f"baseline={base['cpu']:.3f} ratio={cp['cpu'] / base['cpu']:.3f}"
    )
    print(
        f"BENCH kernel.echo64k.channel_prot.chacha20 value={chacha['mb_s']:.3f} unit=MB/s "
        f"baseline={base['mb_s']:.3f} ratio={chacha['mb_s'] / base['mb_s']:.3f}"
    )
    print(
        f"BENCH kernel.process_cpu_per_gib.channel_prot.chacha20 value={chacha['cpu']:.3f} unit=s/GiB "
        f"baseline={base['cpu']:.3f} ratio={chacha['cpu'] / base['cpu']:.3f}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "guest":
        print(json.dumps(asyncio.run(guest(float(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])))))
        sys.exit(0)
    if len(sys.argv) == 8 and sys.argv[1] == "client":
        mode, secs, sock, others = sys.argv[2], float(sys.argv[3]), Path(sys.argv[4]), json.loads(sys.argv[5])
        print(json.dumps(asyncio.run(measure(mode, secs, sock, others, Path(sys.argv[6]), sys.argv[7]))))
        sys.exit(0)
    if len(sys.argv) > 3 and sys.argv[1] == "serve":  # rpclatch's CLI with the server side metered
        from rpclatch.cli import main as cli_main

        RpcLayerMeter(Path(sys.argv[2])).install("server")
        sys.exit(cli_main(sys.argv[3:]))
    sys.exit(main())
