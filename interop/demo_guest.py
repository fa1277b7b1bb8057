"""The guest side of ``rpclatch demo --world uml|netns``: the demo's scenarios on kernel ESP.

Runs inside the nfsd world (:mod:`interop.world`; the UML guest, or the host-kernel namespaces),
as root, in the world's root network namespace, where the world's KDC answers at
198.51.100.2:88. It builds its own TEST-NET-3 segment with pyroute2: a bridge ``rlbr0``
(203.0.113.1, the way to the KDC) and one network namespace per party, each with a veth on the
bridge and a fixed MAC address (the capture names the sender of a frame by it, since a rogue
may take another party's IP address):

* ``rl-client`` 203.0.113.11 -- ``rpclatch ipsec keyd`` and the in-process client
  (:class:`rpclatch.connect.ProtectedConnection` over :class:`rpclatch.connect.kernel.KernelClientWorld`,
  run as ``demo_guest.py client`` in that namespace, driven line by line over its stdin);
* ``rl-server`` 203.0.113.12 -- ``rpclatch ipsec keyd`` and ``rpclatch rpc serve --port 2049
  --ipsec bypass-or-protect --sec krb5p`` (the test program; the NFS service key of the world).

Each scenario captures the bridge (every frame between the parties, full length) into its own
pcapng and records what the kernel and the key managers said while the flow lived: ``ip -s xfrm
state`` and ``ip xfrm policy`` of each namespace (the AES-GCM keys the host side decrypts the
capture with), ``rpclatch ipsec status --json`` of each key manager, the client's security
records, the calls' results, and the times things were done. Nothing is judged here: the host
side (:mod:`rpclatch.demo.kernel`) computes the verdicts. Output: one JSON line on stdout.

Everything made is removed again at the end, also on failure (the namespaces, the bridge, the
processes, by PID).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from interop.guest_keyd import Proc, keyd_ready, rpclatch_argv, write_key

PORT = 2049
BRIDGE = "rlbr0"
GATEWAY = "203.0.113.1"
PREFIX = 24
TARGET = "nfs@guest.rpclatch.test"
PROG = 0x20000A11
#: longer than the mission's 2 s default: UML's IKE_AUTH (Python Ed25519 + generic AES on an
#: emulated CPU shared with other guests) took 1.7 s in a trial; a server without a key manager
#: answers IKE with an ICMP port unreachable, so the fallback does not wait for it
IKE_TIMEOUT = 10.0
#: the kernel priority of the administrator's port-2049 policies in scenario 5: 1, just below the
#: key manager's per-5-tuple policies (rpclatch.ipsec.xfrm.backend: 0, the highest there is). At 0
#: too (``ip xfrm policy add``'s default) the UML guest's 6.1 kernel prefers the administrator's
#: newer wildcard policy and the flow goes to the clear: a limit stated in docs/mission-kernel.md
ADMIN_PRIORITY = 1
#: the parties: namespace, address, MAC (the capture's sender by MAC), veth name on the bridge side
PARTIES: dict[str, tuple[str, str, str, str]] = {
    "client": ("rl-client", "203.0.113.11", "02:00:00:00:71:0b", "rlv-client"),
    "server": ("rl-server", "203.0.113.12", "02:00:00:00:71:0c", "rlv-server"),
    # no address of its own: in scenario 4 it takes the server's
    "rogue": ("rl-rogue", "", "02:00:00:00:71:0d", "rlv-rogue"),
    # scenario 3's man in the middle: its client-facing end takes the server's address, its
    # server-facing end has its own
    "mitm": ("rl-mitm", "", "02:00:00:00:71:0e", "rlv-mitm"),
    "mitm-b": ("rl-mitm-b", "203.0.113.13", "02:00:00:00:71:0f", "rlv-mitmb"),
}


def _run(*argv: str) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False).stdout


# ---------------------------------------------------------------------------------------------
# the segment (pyroute2)


def build_segment(parties: dict[str, tuple[str, str, str, str]]) -> None:
    """The bridge and one namespace + veth per party (pyroute2: netns.create, IPRoute, NetNS)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("add", ifname=BRIDGE, kind="bridge")
        br = ipr.link_lookup(ifname=BRIDGE)[0]
        ipr.addr("add", index=br, address=GATEWAY, prefixlen=PREFIX)
        ipr.link("set", index=br, state="up")
    for ns, addr, mac, outer in parties.values():
        add_party(ns, addr, mac, outer)


def add_party(ns: str, addr: str, mac: str, outer: str) -> None:
    """Namespace ``ns`` with ``eth0`` (``mac``, ``addr`` if given) on the bridge, default route via
    the bridge's address."""
    from pyroute2 import IPRoute, NetNS, netns

    netns.create(ns)
    with IPRoute() as ipr:
        ipr.link("add", ifname=outer, kind="veth", peer={"ifname": outer + "i"})
        host = ipr.link_lookup(ifname=outer)[0]
        inner = ipr.link_lookup(ifname=outer + "i")[0]
        ipr.link("set", index=host, master=ipr.link_lookup(ifname=BRIDGE)[0], state="up")
        ipr.link("set", index=inner, net_ns_fd=ns)
    with NetNS(ns) as n:
        idx = n.link_lookup(ifname=outer + "i")[0]
        n.link("set", index=idx, ifname="eth0", address=mac, state="up")
        n.link("set", index=n.link_lookup(ifname="lo")[0], state="up")
        if addr:
            n.addr("add", index=idx, address=addr, prefixlen=PREFIX)
            n.route("add", dst="0.0.0.0/0", gateway=GATEWAY)


def remove_segment(parties: dict[str, tuple[str, str, str, str]]) -> list[str]:
    """Delete the namespaces and links made (what is gone already is skipped); returns problems."""
    from pyroute2 import IPRoute, netns

    problems: list[str] = []
    with IPRoute() as ipr:
        for name in [p[3] for p in parties.values()] + [BRIDGE]:
            for idx in ipr.link_lookup(ifname=name):
                try:
                    ipr.link("del", index=idx)
                except Exception as exc:
                    problems.append(f"link {name}: {exc}")
    for ns, *_ in parties.values():
        if ns in netns.listnetns():
            try:
                netns.remove(ns)
            except Exception as exc:
                problems.append(f"netns {ns}: {exc}")
    return problems


# ---------------------------------------------------------------------------------------------
# processes


def start_keyd(tmp: Path, name: str, ns: str, addr: str) -> tuple[Proc, Path]:
    write_key(tmp / f"{name}.pem")
    sock = tmp / f"{name}.sock"
    argv = [*rpclatch_argv(), "ipsec", "keyd", "--netns", ns, "--address", addr]
    argv += ["--key", str(tmp / f"{name}.pem"), "--socket", str(sock)]
    return Proc(argv, tmp / f"{name}-keyd.log"), sock


async def keyd_status(sock: Path) -> dict[str, Any]:
    """What ``rpclatch ipsec status --json`` prints (the key manager's STATUS), asked in-process."""
    from rpclatch.ipsec.keyd.server import KeydClient

    try:
        client = await KeydClient.connect(sock)
    except OSError as exc:
        return {"error": str(exc)}
    try:
        answer = await asyncio.wait_for(client.call("STATUS"), 5)
    except (OSError, TimeoutError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        await client.close()
    return {key: answer.get(key, []) for key in ("ike_sas", "child_sas", "latches")}


async def rogue_latch(sock: Path, local: str, remote: str, remote_port: int) -> dict[str, Any]:
    """The rogue's key manager asked for CREATE_CONNECTION_LATCH of the client's 5-tuple as if it
    were the server's end (local = the server's address and port 2049)."""
    from rpclatch.connect.kernel import KeydControl, KeydRefused, KeydUnavailable

    t0 = time.monotonic()
    try:
        control = await KeydControl.connect(sock)
    except KeydUnavailable as exc:
        return {"error": str(exc)}
    try:
        answer = await control.request(
            "CREATE_CONNECTION_LATCH",
            wait=IKE_TIMEOUT + 5,
            timeout=IKE_TIMEOUT,
            local_addr=local,
            local_port=PORT,
            remote_addr=remote,
            remote_port=remote_port,
            proto="tcp",
        )
        return {"answer": answer, "seconds": round(time.monotonic() - t0, 3)}
    except (KeydRefused, KeydUnavailable) as exc:
        return {"refused": f"{type(exc).__name__}: {exc}", "seconds": round(time.monotonic() - t0, 3)}
    finally:
        await control.close()


def key_fingerprint(pem: Path) -> str:
    """The first 16 hex digits of the SHA-256 of a key's SubjectPublicKeyInfo: how ``ipsec
    status`` names a latch's peer."""
    import hashlib

    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
    )

    key = load_pem_private_key(pem.read_bytes(), None)
    der = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


async def relay_main(listen_ns: str, listen_addr: str, src_addr: str, keyd: str, server_addr: str) -> None:
    """Scenario 3's relay (run in the server-facing namespace): accepts the client's connection
    on ``listen_addr``:2049 in ``listen_ns`` (where its first key manager answers the client's
    IKE), and for each, binds a socket to ``src_addr``, latches its 5-tuple through its second key
    manager ``keyd`` (its other key) and connects to the server; then copies bytes both ways,
    keeping what it read. On a stdin line it stops and prints one JSON line."""
    import socket

    from rpclatch.connect.kernel import KeydControl, KeydRefused, KeydUnavailable
    from rpclatch.demo.kernel import MARKER
    from rpclatch.ipsec.xfrm.netns import open_socket

    loop = asyncio.get_running_loop()
    seen = bytearray()
    info: dict[str, Any] = {"connections": 0, "latches": [], "errors": []}
    control = await KeydControl.connect(Path(keyd))

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                seen.extend(data)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        info["connections"] += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.bind((src_addr, 0))
        local = sock.getsockname()
        try:
            answer = await control.request(
                "CREATE_CONNECTION_LATCH",
                wait=IKE_TIMEOUT + 5,
                timeout=IKE_TIMEOUT,
                local_addr=local[0],
                local_port=local[1],
                remote_addr=server_addr,
                remote_port=PORT,
                proto="tcp",
            )
            info["latches"].append({"flow": f"{local[0]}:{local[1]}", "answer": answer})
            await loop.sock_connect(sock, (server_addr, PORT))
        except (KeydRefused, KeydUnavailable, OSError) as exc:
            info["errors"].append(f"{type(exc).__name__}: {exc}")
            sock.close()
            c_writer.close()
            return
        s_reader, s_writer = await asyncio.open_connection(sock=sock)
        await asyncio.gather(pump(c_reader, s_writer), pump(s_reader, c_writer))

    lsock = open_socket(listen_ns, socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((listen_addr, PORT))
    lsock.listen(8)
    lsock.setblocking(False)
    server = await asyncio.start_server(handle, sock=lsock)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True}), flush=True)
    await reader.readline()
    server.close()
    await control.close()
    info["plaintext_bytes"] = len(seen)
    info["marker_bytes"] = bytes(seen).count(MARKER) * len(MARKER)
    info["rpc_bytes_seen"] = len(seen)
    print(json.dumps(info), flush=True)


def start_server(tmp: Path, name: str, ns: str, addr: str, keyd: Path | None) -> Proc:
    argv = ["ip", "netns", "exec", ns, *rpclatch_argv(), "-v", "rpc", "serve", "--host", addr]
    argv += ["--port", str(PORT), "--tcp", "--sec", "krb5p", "--principal", TARGET]
    if keyd is not None:
        argv += ["--ipsec", "bypass-or-protect", "--keyd", str(keyd)]
    return Proc(
        argv,
        tmp / f"{name}-serve.log",
        {"KRB5_KTNAME": "/etc/krb5.keytab", "KRB5_CONFIG": "/etc/krb5.conf"},
    )


async def server_ready(proc: Proc, timeout: float = 60) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.proc.poll() is None:
        if "serving program" in proc.text():
            return True
        await asyncio.sleep(0.1)
    return False


@contextlib.contextmanager
def capture(path: Path) -> Iterator[Path]:
    """dumpcap on the bridge (IPv4 only, full frames) for the duration of the block."""
    path.unlink(missing_ok=True)
    proc = subprocess.Popen(
        ["dumpcap", "-q", "-i", BRIDGE, "-s", "0", "-f", "ip", "-w", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    end = time.monotonic() + 30
    while not (path.exists() and path.stat().st_size > 0):
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            err = proc.communicate()[1].decode(errors="replace")
            raise RuntimeError(f"dumpcap did not start: {err.strip()[-300:]}")
        time.sleep(0.05)
    time.sleep(0.3)
    try:
        yield path
    finally:
        time.sleep(1.0)  # let dumpcap drain the ring before it stops
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def xfrm(ns: str) -> dict[str, str]:
    """The kernel's word on ``ns``: SAs with keys and counters, and policies."""
    return {
        "state": _run("ip", "-n", ns, "-s", "xfrm", "state"),
        "policy": _run("ip", "-n", ns, "xfrm", "policy"),
    }


class Client:
    """``demo_guest.py client`` in the client's namespace, driven over stdin (one JSON per line)."""

    def __init__(self, ns: str, keyd: Path, server_addr: str, env: dict[str, str], log: Path) -> None:
        argv = ["ip", "netns", "exec", ns, sys.executable, str(Path(__file__).resolve()), "client"]
        argv += [str(keyd), server_addr]
        self.err = log.open("wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
            env={**os.environ, **env},
        )

    def ask(self, op: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            return {"error": f"the client exited ({self.proc.poll()})"}
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> dict[str, Any]:
        answer = self.ask("close") if self.proc.poll() is None else {"error": "exited"}
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.err.close()
        return answer


# ---------------------------------------------------------------------------------------------
# the client (runs in rl-client)


async def client_main(keyd: str, server_addr: str) -> None:
    from rpclatch.connect import ConnectionReset, ConnectPolicy, FallbackService, ProtectedConnection
    from rpclatch.connect.gss import RpcsecGssConnector
    from rpclatch.connect.kernel import KernelClientWorld
    from rpclatch.connect.world import ConnectError
    from rpclatch.demo.kernel import PAYLOAD
    from rpclatch.gss.provider import GssapiProvider
    from rpclatch.ipsec.latch import LatchState
    from rpclatch.rpc.testprog import PROC_ECHO, decode_opaque, encode_opaque

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    notes: list[list[Any]] = []
    world = KernelClientWorld(server_addr, Path(keyd))
    gss = RpcsecGssConnector(GssapiProvider(), TARGET, PROG, 1, FallbackService.PRIVACY)
    pc = ProtectedConnection(
        world,
        gss,
        ConnectPolicy(port=PORT, ike_timeout=IKE_TIMEOUT),
        observer=lambda kind, text: notes.append([time.time(), kind, text]),
    )

    def state() -> dict[str, Any]:
        link = pc.link
        return {
            "five_tuple": None if link is None else link.five_tuple,
            "latch_state": None if link is None else str(getattr(link.latch_state(), "value", None)),
            "open": None if link is None else link.is_open,
            "generation": pc.security.generation if pc.history else 0,
        }

    def done(answer: dict[str, Any]) -> None:
        answer.update(state())
        answer["t"] = time.time()
        print(json.dumps(answer), flush=True)

    while line := await reader.readline():
        cmd = json.loads(line)
        op = cmd["op"]
        answer: dict[str, Any] = {"op": op}
        try:
            if op == "connect":
                with contextlib.suppress(Exception):
                    await world.start()  # no key manager: the connect policy falls back
                t0 = time.monotonic()
                record = await pc.aconnect()
                answer["seconds"] = round(time.monotonic() - t0, 4)
                answer["latch_seconds"] = world.last_latch_seconds
                answer["record"] = record.to_json()
            elif op == "echo":
                results = []
                for _ in range(int(cmd.get("n", 1))):
                    try:
                        got = decode_opaque(await pc.acall(PROG, 1, PROC_ECHO, encode_opaque(PAYLOAD)))
                        results.append({"ok": got == PAYLOAD, "service": pc.security.gss_service.sec_name})
                    except (ConnectionReset, ConnectError, OSError) as exc:
                        results.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
                answer["results"] = results
            elif op == "wait_broken":
                end = time.monotonic() + float(cmd.get("timeout", 15))
                link = pc.link
                while (
                    link is not None
                    and link.latch_state() is not LatchState.BROKEN
                    and link.is_open
                    and time.monotonic() < end
                ):
                    await asyncio.sleep(0.02)
            elif op == "close":
                answer["history"] = [r.to_json() for r in pc.history]
                answer["notes"] = notes
                await pc.aclose()
                await world.close()
                done(answer)
                return
            else:
                answer["error"] = f"unknown op {op}"
        except Exception as exc:
            answer["error"] = f"{type(exc).__name__}: {exc}"
        answer["history"] = [r.to_json() for r in pc.history]
        done(answer)


# ---------------------------------------------------------------------------------------------
# the scenarios (driver, in the world's root namespace)


class Demo:
    def __init__(self, out: Path, tmp: Path, env: dict[str, str]) -> None:
        self.out, self.tmp, self.env = out, tmp, env
        self.procs: list[Proc] = []
        self.clients: list[Client] = []

    def ns(self, party: str) -> str:
        return PARTIES[party][0]

    def addr(self, party: str) -> str:
        return PARTIES[party][1]

    def client(self, name: str, keyd: Path) -> Client:
        c = Client(self.ns("client"), keyd, self.addr("server"), self.env, self.tmp / f"{name}-client.log")
        self.clients.append(c)
        return c

    async def snapshot(self, socks: dict[str, Path]) -> dict[str, Any]:
        """The kernel's XFRM state of every party and each key manager's status, now."""
        return {
            "t": time.time(),
            "xfrm": {party: xfrm(self.ns(party)) for party in PARTIES},
            "keyd": {party: await keyd_status(sock) for party, sock in socks.items()},
        }

    async def ipsec_available(self, pcap: Path, socks: dict[str, Path]) -> dict[str, Any]:
        """1: both key managers up; connect, four ECHOs, look at both ends while it is latched."""
        res: dict[str, Any] = {}
        with capture(pcap):
            c = self.client("1", socks["client"])
            res["connect"] = await asyncio.to_thread(c.ask, "connect")
            res["echo"] = await asyncio.to_thread(c.ask, "echo", n=4)
            res["during"] = await self.snapshot(socks)
            res["close"] = await asyncio.to_thread(c.close)
        return res

    async def no_ike(self, pcap: Path, socks: dict[str, Path]) -> dict[str, Any]:
        """2: the server host has no key manager (its IKE port is closed); connect, four ECHOs."""
        res: dict[str, Any] = {}
        with capture(pcap):
            c = self.client("2", socks["client"])
            res["connect"] = await asyncio.to_thread(c.ask, "connect")
            res["echo"] = await asyncio.to_thread(c.ask, "echo", n=4)
            res["during"] = await self.snapshot({"client": socks["client"]})
            res["close"] = await asyncio.to_thread(c.close)
        return res

    async def policy_change(self, pcap: Path, socks: dict[str, Path]) -> dict[str, Any]:
        """5: mid-flow, the administrator of each end makes port 2049 BYPASS in the kernel
        (``ip xfrm policy add ... priority 1 action allow``, just below the key manager's
        per-5-tuple policies at 0); the server's end first, then the client's. Calls
        go on after each change; the admin's policies are removed at the end."""
        res: dict[str, Any] = {"marks": []}
        admin: dict[str, list[list[str]]] = {
            "server": [["sport", "2049", "out"], ["dport", "2049", "in"]],
            "client": [["dport", "2049", "out"], ["sport", "2049", "in"]],
        }

        def policy(party: str, verb: str) -> list[str]:
            errors = []
            for port_kind, port, direction in admin[party]:
                argv = ["ip", "-n", self.ns(party), "xfrm", "policy", verb, "src", "0.0.0.0/0"]
                argv += ["dst", "0.0.0.0/0", "proto", "tcp", port_kind, port, "dir", direction]
                if verb == "add":
                    argv += ["priority", str(ADMIN_PRIORITY), "action", "allow"]
                r = subprocess.run(argv, capture_output=True, text=True, check=False)
                if r.returncode:
                    errors.append(r.stderr.strip())
            return errors

        with capture(pcap):
            c = self.client("5", socks["client"])
            res["connect"] = await asyncio.to_thread(c.ask, "connect")
            res["echo_before"] = await asyncio.to_thread(c.ask, "echo", n=2)
            res["before"] = await self.snapshot(socks)
            for party in ("server", "client"):
                t = time.time()
                text = f"admin ({party}): ip xfrm policy add ... tcp port 2049 action allow (BYPASS)"
                res["marks"].append([t, party, "policy", text])
                res[f"t_{party}"] = t
                res[f"admin_{party}_errors"] = policy(party, "add")
                res[f"echo_after_{party}"] = await asyncio.to_thread(c.ask, "echo", n=2)
                res[f"after_{party}"] = await self.snapshot(socks)
            res["close"] = await asyncio.to_thread(c.close)
        for party in admin:
            policy(party, "delete")
        return res

    async def btns_mitm(self, pcap: Path, socks: dict[str, Path]) -> dict[str, Any]:
        """3: a man in the middle on the path (RFC 5387 §1.2, concatenated SAs): the client's way
        to the server's address leads to namespace rl-mitm (which holds that address; the client's
        ARP entry points at it), where a key manager with the attacker's first key answers the
        client's IKE and a relay accepts the connection; for each, the relay latches a connection
        of its own from rl-mitm-b through a second key manager (another key) to the real server
        and copies the TCP stream both ways. Both ends latch -- to the attacker."""
        res: dict[str, Any] = {"marks": []}
        ns_a, _, mac_a, _ = PARTIES["mitm"]
        ns_b, addr_b, _, _ = PARTIES["mitm-b"]
        server_addr, mac_s = self.addr("server"), PARTIES["server"][2]

        def ip(*argv: str) -> str:
            r = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
            return r.stderr.strip() if r.returncode else ""

        errors = [ip("-n", ns_a, "addr", "add", f"{server_addr}/{PREFIX}", "dev", "eth0")]
        # the server-facing end must reach the real server, not its own other half
        errors.append(ip("-n", ns_b, "neigh", "replace", server_addr, "lladdr", mac_s, "dev", "eth0"))
        a_keyd, a_sock = start_keyd(self.tmp, "mitm", ns_a, server_addr)
        b_keyd, b_sock = start_keyd(self.tmp, "mitm-b", ns_b, addr_b)
        self.procs += [a_keyd, b_keyd]
        res["keys"] = {
            name: key_fingerprint(self.tmp / f"{name}.pem") for name in ("client", "server", "mitm", "mitm-b")
        }
        res["mitm_ready"] = [await keyd_ready(a_sock, a_keyd), await keyd_ready(b_sock, b_keyd)]
        argv = ["ip", "netns", "exec", ns_b, sys.executable, str(Path(__file__).resolve()), "relay"]
        argv += [ns_a, server_addr, addr_b, str(b_sock), server_addr]
        relay_err = (self.tmp / "relay.log").open("wb")
        relay = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=relay_err, text=True
        )
        assert relay.stdin is not None and relay.stdout is not None
        try:
            res["relay_ready"] = await asyncio.to_thread(relay.stdout.readline)
            with capture(pcap):
                t = time.time()
                res["marks"].append(
                    [t, "mitm", "attack", f"attacker takes {server_addr} on the client's path"]
                )
                errors.append(
                    ip(
                        "-n",
                        self.ns("client"),
                        "neigh",
                        "replace",
                        server_addr,
                        "lladdr",
                        mac_a,
                        "dev",
                        "eth0",
                        "nud",
                        "permanent",
                    )
                )
                c = self.client("3", socks["client"])
                res["connect"] = await asyncio.to_thread(c.ask, "connect")
                res["echo"] = await asyncio.to_thread(c.ask, "echo", n=4)
                res["during"] = await self.snapshot({**socks, "mitm": a_sock, "mitm-b": b_sock})
                res["close"] = await asyncio.to_thread(c.close)
        finally:
            if relay.poll() is None:
                relay.stdin.write("stop\n")
                relay.stdin.flush()
            try:
                out, _ = await asyncio.to_thread(relay.communicate, None, 30)
                res["relay"] = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
            except (subprocess.TimeoutExpired, ValueError) as exc:
                relay.kill()
                relay.wait()
                res["relay"] = {"error": f"{type(exc).__name__}: {exc}"}
            relay_err.close()
            res["relay_log"] = (self.tmp / "relay.log").read_text(errors="replace")[-2000:]
            ip("-n", ns_a, "addr", "del", f"{server_addr}/{PREFIX}", "dev", "eth0")
            ip(
                "-n",
                self.ns("client"),
                "neigh",
                "replace",
                server_addr,
                "lladdr",
                mac_s,
                "dev",
                "eth0",
                "nud",
                "reachable",
            )
            a_keyd.stop()
            b_keyd.stop()
        res["ip_errors"] = [e for e in errors if e]
        return res

    async def rogue_claims_address(self, pcap: Path, socks: dict[str, Path]) -> dict[str, Any]:
        """4: mid-flow, namespace rl-rogue takes the server's address (and the client's ARP entry
        for it: what a gratuitous ARP the client believed does), starts a key manager of its own
        (its own key) on it, and asks it for the client's latched 5-tuple: its IKE goes to the
        client's key manager, claiming a CHILD_SA for exactly that 5-tuple. A call is in flight
        meanwhile (its segments go to the rogue's MAC). The client's key manager breaks the latch
        before accepting that SA (RFC 5660 §2.3), the client resets the connection and the call
        fails; the XFRM state is looked at right then. Then the server takes its address back and
        the next calls reconnect, re-latch and re-bind."""
        res: dict[str, Any] = {"marks": []}
        ns_r, _, mac_r, _ = PARTIES["rogue"]
        mac_s = PARTIES["server"][2]
        server_addr = self.addr("server")

        def ip(*argv: str) -> str:
            r = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
            return r.stderr.strip() if r.returncode else ""

        r_keyd: Proc | None = None
        with capture(pcap):
            c = self.client("4", socks["client"])
            res["connect"] = await asyncio.to_thread(c.ask, "connect")
            res["echo_before"] = await asyncio.to_thread(c.ask, "echo", n=2)
            res["before"] = await self.snapshot(socks)
            five = str(res["connect"].get("five_tuple") or "")
            try:
                sport = int(five.split(" -> ")[0].rsplit(":", 1)[1])
            except (IndexError, ValueError):
                res["error"] = f"no latched connection to attack: {res['connect']}"
                res["close"] = await asyncio.to_thread(c.close)
                return res
            errors = [ip("-n", ns_r, "addr", "add", f"{server_addr}/{PREFIX}", "dev", "eth0")]
            r_keyd, r_sock = start_keyd(self.tmp, "rogue", ns_r, server_addr)
            self.procs.append(r_keyd)
            res["rogue_ready"] = await keyd_ready(r_sock, r_keyd)
            t = time.time()
            res["t_claim"] = t
            res["marks"].append(
                [t, "rogue", "attack", f"rogue claims {server_addr} and keys the client's flow"]
            )
            errors.append(
                ip(
                    "-n",
                    self.ns("client"),
                    "neigh",
                    "replace",
                    server_addr,
                    "lladdr",
                    mac_r,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                )
            )
            during = asyncio.ensure_future(asyncio.to_thread(c.ask, "echo", n=1))
            res["rogue_latch"] = await rogue_latch(r_sock, server_addr, self.addr("client"), sport)
            # the call in flight fails when the client resets the broken latch's connection
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(during), 30)
            res["during_done"] = during.done()  # before the server had its address back
            res["during"] = await self.snapshot({**socks, "rogue": r_sock})
            t = time.time()
            res["t_back"] = t
            res["marks"].append([t, "server", "state", f"server re-announces {server_addr}"])
            errors.append(
                ip(
                    "-n",
                    self.ns("client"),
                    "neigh",
                    "replace",
                    server_addr,
                    "lladdr",
                    mac_s,
                    "dev",
                    "eth0",
                    "nud",
                    "reachable",
                )
            )
            res["echo_during"] = await during
            res["echo_after"] = await asyncio.to_thread(c.ask, "echo", n=2)
            res["after"] = await self.snapshot(socks)
            res["close"] = await asyncio.to_thread(c.close)
            res["ip_errors"] = [e for e in errors if e]
        r_keyd.stop()
        ip("-n", ns_r, "addr", "del", f"{server_addr}/{PREFIX}", "dev", "eth0")
        return res

    async def run(self, scenarios: dict[str, str]) -> dict[str, Any]:
        """``scenarios``: number -> pcapng file name (in the output directory)."""
        res: dict[str, Any] = {"scenarios": {}}
        c_keyd, c_sock = start_keyd(self.tmp, "client", self.ns("client"), self.addr("client"))
        s_keyd, s_sock = start_keyd(self.tmp, "server", self.ns("server"), self.addr("server"))
        self.procs += [c_keyd, s_keyd]
        socks = {"client": c_sock, "server": s_sock}
        res["ready"] = [await keyd_ready(c_sock, c_keyd), await keyd_ready(s_sock, s_keyd)]
        if not all(res["ready"]):
            res["error"] = "a key manager did not start"
            return res
        server = start_server(self.tmp, "server", self.ns("server"), self.addr("server"), s_sock)
        self.procs.append(server)
        if not await server_ready(server):
            res["error"] = "the server did not start: " + server.text()[-800:]
            return res
        if "1" in scenarios:
            res["scenarios"]["1"] = await self.ipsec_available(self.out / scenarios["1"], socks)
            await asyncio.sleep(0.5)
        if "4" in scenarios:
            res["scenarios"]["4"] = await self.rogue_claims_address(self.out / scenarios["4"], socks)
            await asyncio.sleep(0.5)
        if "5" in scenarios:
            res["scenarios"]["5"] = await self.policy_change(self.out / scenarios["5"], socks)
            await asyncio.sleep(0.5)
        if "3" in scenarios:
            res["scenarios"]["3"] = await self.btns_mitm(self.out / scenarios["3"], socks)
            await asyncio.sleep(0.5)
        if "2" in scenarios:
            # the server host without a key manager: its keyd and the latching server go, a plain
            # krb5p server takes the port
            res["server_keyd_rc"] = s_keyd.stop()
            res["server_rc"] = server.stop()
            plain = start_server(self.tmp, "plain", self.ns("server"), self.addr("server"), None)
            self.procs.append(plain)
            if not await server_ready(plain):
                res["scenarios"]["2"] = {"error": "the plain server did not start: " + plain.text()[-800:]}
            else:
                res["scenarios"]["2"] = await self.no_ike(self.out / scenarios["2"], {"client": c_sock})
        return res

    def close(self) -> dict[str, str]:
        for c in self.clients:
            if c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()
        logs = {}
        for p in self.procs:
            p.stop()
            logs[p.log.name] = p.text()[-3000:]
        return logs


def guest_main(config: dict[str, Any]) -> dict[str, Any]:
    """Build the segment, run the scenarios, remove the segment (pyroute2's synchronous API runs
    its own event loop, so the segment is made and removed outside the scenarios' loop)."""
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="rpclatch-demo-"))
    t0 = time.monotonic()
    result: dict[str, Any] = {"parties": {k: list(v) for k, v in PARTIES.items()}, "port": PORT}
    leftovers = remove_segment(PARTIES)  # a previous run killed before its cleanup
    demo = Demo(out, tmp, config.get("env", {}))
    try:
        build_segment(PARTIES)
        result.update(asyncio.run(demo.run(config["scenarios"])))
    finally:
        result["logs"] = demo.close()
        problems = remove_segment(PARTIES)
        result["cleanup"] = leftovers + problems
        result["seconds"] = round(time.monotonic() - t0, 2)
    return result


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "relay":
        asyncio.run(relay_main(*sys.argv[2:7]))
        sys.exit(0)
    if len(sys.argv) == 4 and sys.argv[1] == "client":
        asyncio.run(client_main(sys.argv[2], sys.argv[3]))
        sys.exit(0)
    if len(sys.argv) != 3 or sys.argv[1] != "run":
        sys.exit("usage: demo_guest.py run CONFIG-JSON   (inside the world, as root)")
    print(json.dumps(guest_main(json.loads(sys.argv[2]))))
