"""IKEv2 peers negotiating kernel ESP between two network namespaces (runs inside the UML guest
of :mod:`interop.ike_guest`, as root).

One scenario = two fresh namespaces joined by a veth pair (TEST-NET addresses), one IKE speaker
in each -- strongSwan (charon-systemd, configured only over vici), libreswan (pluto, driven with
whack) or rpclatch (:class:`rpclatch.ipsec.ike.udp.IkeUdpEndpoint` on the XFRM backend) -- with
all of a daemon's state (config, keys, NSS db, sockets, logs) in a private directory under
``/run/ike``. The initiator negotiates one transport-mode CHILD_SA (ESP AES-GCM) for TCP to the
responder's port 5001; TCP echo then goes through it (the ``ip -s xfrm state`` counters must
advance), echo to port 5002 (outside the selectors) stays in clear, the initiator deletes the IKE
SA, and both sides' kernel SAs must be gone. IKE, ESP and both ports are captured with tcpdump on
the initiator's veth. Every daemon is stopped by its PID and the namespaces are deleted, also on
failure.

``python -m interop.ike_peers SCENARIO OUT_DIR`` runs one scenario and prints its observations as
one JSON line (what ``tests/interop/test_ike_peers.py`` checks); ``SCENARIOS`` lists them.
``python -m interop.ike_peers bench ROUNDS OUT_DIR`` is the measurement of
``benchmarks/ike_latency.py`` (:func:`bench_latency`).
Authentication: ``ed25519``/``ecdsa`` = raw public keys configured in advance on the daemon side
(RFC 7427 signatures), ``null`` = RFC 7619 NULL authentication.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LIBRESWAN_EXEC = "/usr/libexec/ipsec"  # the guest's overlay points it at $LIBRESWAN_ROOT's copy
WORK = Path("/run/ike")
PORT = 5001  # the TCP port the CHILD_SA covers
CLEAR_PORT = 5002  # a port outside the selectors: stays in clear
CLIENT_PORT = 40001  # the echo client's source port (rpclatch initiators ask for this 5-tuple)
ECHO_BYTES = 100_000
IKE_PROPOSAL = "aes256gcm16-prfsha256-x25519"  # strongSwan's name for the suite both sides use
ESP_PROPOSAL = "aes128gcm16"
CAPTURE_FILTER = f"udp port 500 or udp port 4500 or ip proto 50 or tcp port {PORT} or tcp port {CLEAR_PORT}"


def _wait(pred: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def _run(
    *argv: str, check: bool = True, input_data: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(argv), capture_output=True, check=check, input=input_data)


def _dec(o: Any) -> Any:
    """vici answers with bytes everywhere: decode keys and values."""
    if isinstance(o, dict):
        return {_dec(k): _dec(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_dec(v) for v in o]
    return o.decode() if isinstance(o, bytes) else o


# ---------------------------------------------------------------------------------------------
# namespaces, capture, traffic


@dataclass
class NetnsPair:
    """Namespaces ``a`` and ``b`` joined by veth ``v<a>``/``v<b>`` with /24 addresses, lo up."""

    a: str
    b: str
    addr_a: str
    addr_b: str

    def __enter__(self) -> NetnsPair:
        for ns in (self.a, self.b):
            _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", f"v{self.a}", "type", "veth", "peer", "name", f"v{self.b}")
        for ns, addr in ((self.a, self.addr_a), (self.b, self.addr_b)):
            _run("ip", "link", "set", f"v{ns}", "netns", ns)
            _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", f"v{ns}")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "link", "set", f"v{ns}", "up")
        return self

    def __exit__(self, *exc: object) -> None:
        for ns in (self.a, self.b):
            _run("ip", "netns", "del", ns, check=False)


class Capture:
    """tcpdump of IKE (500/4500), ESP and the two test ports on ``iface`` in ``ns``. Written to tmpfs
    in the default ring mode with a big buffer (immediate mode drops packets in UML), stopped
    after the ring's 1 s block timeout so the last packets (the DELETE) are not lost, then copied
    to ``dest``."""

    def __init__(self, ns: str, iface: str, dest: Path) -> None:
        self.dest = dest
        self.tmp = WORK / f"{dest.parent.name}-{dest.name}"
        self.log = self.tmp.with_suffix(".log")
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "tcpdump",
                    "-B",
                    "16384",
                    "-Z",
                    "root",
                    "-n",
                    "-s",
                    "0",
                    "-i",
                    iface,
                    "-w",
                    str(self.tmp),
                    CAPTURE_FILTER,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if not _wait(lambda: "listening on" in self.log.read_text(errors="replace"), 10):
            self.stop()
            raise RuntimeError(f"tcpdump did not start: {self.log.read_text(errors='replace')}")

    def stop(self) -> str:
        """Stop by PID; returns tcpdump's summary (packets captured / dropped)."""
        if self.proc.poll() is None:
            time.sleep(1.2)
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.tmp.exists():
            shutil.copyfile(self.tmp, self.dest)
        return self.log.read_text(errors="replace")


class EchoServer:
    """TCP echo on ``addr`` ports PORT and CLEAR_PORT inside ``ns`` (threads; stopped by close)."""

    def __init__(self, ns: str, addr: str) -> None:
        from pyroute2 import netns as pr_netns

        self.socks = []
        for port in (PORT, CLEAR_PORT):
            s = pr_netns.create_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
            s.listen(8)
            s.settimeout(0.2)
            self.socks.append(s)
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(s,), daemon=True) for s in self.socks]
        for t in self.threads:
            t.start()

    def _loop(self, s: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = s.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        conn.settimeout(20)
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(2)
        for s in self.socks:
            s.close()


def echo(ns: str, src: str, dst: str, port: int, nbytes: int, sport: int = 0, timeout: float = 20) -> bool:
    """Send ``nbytes`` random bytes from ``ns`` to ``dst:port`` and read them back; True if intact."""
    from pyroute2 import netns as pr_netns

    data = os.urandom(nbytes)
    got = bytearray()
    s = pr_netns.create_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(timeout)
        s.bind((src, sport))
        s.connect((dst, port))
        sender = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)), daemon=True)
        sender.start()
        while len(got) < nbytes:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        sender.join(timeout)
        # abortive close (RST): no TIME_WAIT, so the next echo can use the same source port
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        return False
    finally:
        s.close()
    return bytes(got) == data


def xfrm_text(ns: str) -> str:
    return (
        _run("ip", "-n", ns, "-s", "xfrm", "state", check=False).stdout.decode()
        + _run("ip", "-n", ns, "xfrm", "policy", check=False).stdout.decode()
    )


def xfrm_counters(ns: str) -> dict[str, list[int]]:
    """``{spi hex: [bytes, packets]}`` from ``ip -s xfrm state`` ("lifetime current")."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from interop.world import parse_xfrm_state

    out = _run("ip", "-n", ns, "-s", "xfrm", "state", check=False).stdout.decode()
    return {f"{spi:#x}": [c.bytes, c.packets] for spi, c in parse_xfrm_state(out).items()}


def esp_uat_rows(ns: str) -> list[str]:
    """Wireshark ``esp_sa`` rows for the AES-GCM SAs in ``ns`` (keys as the kernel reports them)."""
    rows = []
    src = dst = spi = ""
    for line in _run("ip", "-n", ns, "xfrm", "state", check=False).stdout.decode().splitlines():
        words = line.split()
        if line.startswith("src "):
            src, dst = words[1], words[3]
        elif "proto esp spi" in line:
            spi = words[3].split("(")[0]
        elif "aead rfc4106" in line:
            rows.append(
                f'"IPv4","{src}","{dst}","{spi}","AES-GCM with 16 octet ICV [RFC4106]","{words[2]}","NULL",""'
            )
    return rows


def n_sas(ns: str) -> int:
    return sum(
        1
        for line in _run("ip", "-n", ns, "xfrm", "state", check=False).stdout.decode().splitlines()
        if line.startswith("src ")
    )


def leftovers(ns: str) -> list[str]:
    """xfrm states and policies left in ``ns``, except pluto's IPv6 neighbour-discovery bypasses
    (ipv6-icmp types 135/136, which pluto installs at start and leaves at shutdown)."""
    states = [
        line
        for line in _run("ip", "-n", ns, "xfrm", "state", check=False).stdout.decode().splitlines()
        if line.startswith("src ")
    ]
    pols = [
        line
        for line in _run("ip", "-n", ns, "xfrm", "policy", check=False).stdout.decode().splitlines()
        if line.startswith("src ") and "ipv6-icmp" not in line and "::/0" not in line
    ]
    return states + pols


# ---------------------------------------------------------------------------------------------
# the peers


@dataclass
class Keys:
    """One side's key: ``private`` (PEM, strongSwan/rpclatch) or a libreswan CKAID; ``public`` PEM."""

    kind: str  # ed25519 | ecdsa | null
    public_pem: str = ""
    private_pem: str = ""
    ckaid: str = ""
    libreswan_raw: str = ""  # leftecdsakey= value


def pem_to_libreswan_ecdsa(pem: str) -> str:
    """``rightecdsakey=`` value of a P-256 SubjectPublicKeyInfo PEM: 0s + base64(X || Y)."""
    der = base64.b64decode("".join(x for x in pem.splitlines() if x and not x.startswith("-----")))
    if len(der) != 91 or der[-65] != 4:
        raise ValueError("a P-256 SubjectPublicKeyInfo is expected")
    return "0s" + base64.b64encode(der[-64:]).decode()


class Peer:
    """One IKE speaker in one namespace: a daemon or rpclatch."""

    name = "peer"

    def __init__(self, ns: str, addr: str, workdir: Path) -> None:
        self.ns = ns
        self.addr = addr
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.keys = Keys("null")
        #: the scenario's CHILD_SA cipher (Scenario.esp)
        self.esp = ""

    # keys / config / lifecycle: overridden
    def make_keys(self, kind: str) -> Keys:
        raise NotImplementedError

    def configure(self, peer: Peer, *, initiator: bool) -> None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def initiate(self) -> None:
        """Negotiate the IKE SA and the CHILD_SA; raises on failure."""
        raise NotImplementedError

    def terminate(self) -> None:
        raise NotImplementedError

    def state(self) -> Any:
        """What the speaker itself reports about its SAs (JSON-able)."""
        return None

    def rekey_child(self) -> None:
        """Rekey the CHILD_SA (CREATE_CHILD_SA, RFC 7296 §1.3.3); returns once asked."""
        raise NotImplementedError

    def rekey_ike(self) -> None:
        """Rekey the IKE SA (CREATE_CHILD_SA, RFC 7296 §1.3.2); returns once asked."""
        raise NotImplementedError

    def stop(self) -> bool:
        raise NotImplementedError

    def _spawn(self, argv: list[str], env: dict[str, str] | None = None, log: str = "daemon.stdout") -> None:
        with (self.dir / log).open("ab") as out:
            # ``ip netns exec`` execs the daemon: proc.pid is the daemon's own PID
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *argv],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def _stop_proc(self, timeout: float = 5.0, sig: int | None = signal.SIGTERM) -> bool:
        """Wait for the daemon (after sending ``sig``); SIGKILL by PID as a last resort."""
        proc, self.proc = self.proc, None
        if proc is None:
            return True
        if sig is not None and proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return False


SS_CONF = """charon-systemd {
  journal { default = -1 }
}
charon {
  load_modular = no
  load = random nonce openssl kdf pem pkcs1 pkcs8 x509 pubkey kernel-netlink socket-default vici
  install_routes = no
  retransmit_tries = 3
  plugins { vici { socket = unix://%(d)s/charon.vici } }
  filelog { charon { path = %(d)s/charon.log
                     time_format = %%T
                     flush_line = yes
                     default = 1
                     ike = 2
                     knl = 2 } }
}
swanctl { load = pem pkcs1 pkcs8 x509 openssl pubkey
          socket = unix://%(d)s/charon.vici }
pki { load = random pem pkcs1 pkcs8 x509 openssl pubkey }
"""


class StrongSwan(Peer):
    """charon-systemd with a private strongswan.conf (explicit plugin list: ``kdf`` is needed for
    prf+; vici socket and log in the private directory), configured only over vici."""

    name = "strongswan"

    def __init__(self, ns: str, addr: str, workdir: Path) -> None:
        super().__init__(ns, addr, workdir)
        self.vici: Any = None
        self.peer: Peer | None = None
        self.initiator = False
        self.conn_name = "peer"
        self.child_name = f"tcp{PORT}"

    @property
    def socket_path(self) -> Path:
        return self.dir / "charon.vici"

    def _env(self) -> dict[str, str]:
        return dict(os.environ, STRONGSWAN_CONF=str(self.dir / "strongswan.conf"))

    def _write_conf(self) -> None:
        (self.dir / "strongswan.conf").write_text(SS_CONF % {"d": self.dir})

    def make_keys(self, kind: str) -> Keys:
        self._write_conf()
        argv = ["pki", "--gen", "--type", kind, "--outform", "pem"] + (
            ["--size", "256"] if kind == "ecdsa" else []
        )
        priv = subprocess.run(argv, env=self._env(), check=True, capture_output=True).stdout
        pub = subprocess.run(
            ["pki", "--pub", "--outform", "pem"], input=priv, env=self._env(), check=True, capture_output=True
        ).stdout
        self.keys = Keys(kind, pub.decode(), priv.decode())
        return self.keys

    def start(self) -> None:
        import vici  # type: ignore[import-untyped]  # strongSwan's client ships no type information

        self._write_conf()
        self.socket_path.unlink(missing_ok=True)
        self._spawn(["/usr/sbin/charon-systemd"], env=self._env(), log="charon.stdout")
        if not _wait(lambda: self.socket_path.exists()):
            raise RuntimeError(f"charon in {self.ns}: no vici socket (see {self.dir}/charon.log)")
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(self.socket_path))
        self.vici = vici.Session(s)
        self._load()

    def configure(self, peer: Peer, *, initiator: bool) -> None:
        """Remembered; loaded over vici by :meth:`start`."""
        self.peer, self.initiator = peer, initiator

    def _load(self) -> None:
        peer, initiator = self.peer, self.initiator
        assert peer is not None
        if initiator:
            local_ts, remote_ts = f"{self.addr}/32[tcp]", f"{peer.addr}/32[tcp/{PORT}]"
        else:
            local_ts, remote_ts = f"{self.addr}/32[tcp/{PORT}]", f"{peer.addr}/32[tcp]"
        if self.keys.kind == "null":
            local: dict[str, Any] = {"auth": "null", "id": "%any"}
            remote: dict[str, Any] = {"auth": "null", "id": "%any"}
        else:
            self.vici.load_key({"type": "any", "data": self.keys.private_pem})
            local = {"auth": "pubkey", "id": self.addr, "pubkeys": [self.keys.public_pem]}
            remote = {"auth": "pubkey", "id": peer.addr, "pubkeys": [peer.keys.public_pem]}
        self.vici.load_conn(
            {
                self.conn_name: {
                    "version": 2,
                    "local_addrs": [self.addr],
                    "remote_addrs": [peer.addr],
                    "proposals": [IKE_PROPOSAL],
                    # MOBIKE would move IKE to UDP 4500 after IKE_SA_INIT even without a NAT
                    "mobike": "no",
                    "local": local,
                    "remote": remote,
                    "children": {
                        self.child_name: {
                            "mode": "transport",
                            "local_ts": [local_ts],
                            "remote_ts": [remote_ts],
                            "esp_proposals": [self.esp or ESP_PROPOSAL],
                            "start_action": "none",
                        }
                    },
                }
            }
        )

    def initiate(self) -> None:
        for _ in self.vici.initiate(
            {"ike": self.conn_name, "child": self.child_name, "timeout": 15000, "loglevel": -1}
        ):
            pass

    def terminate(self) -> None:
        for _ in self.vici.terminate({"ike": self.conn_name, "timeout": 5000, "loglevel": -1}):
            pass

    def rekey_child(self) -> None:
        self.vici.rekey({"child": self.child_name})

    def rekey_ike(self) -> None:
        self.vici.rekey({"ike": self.conn_name})

    def state(self) -> Any:
        return [_dec(sa) for sa in self.vici.list_sas()] if self.vici is not None else None

    def child_states(self) -> list[dict[str, Any]]:
        return [
            c for sa in self.state() or [] for ike in sa.values() for c in ike.get("child-sas", {}).values()
        ]

    def stop(self) -> bool:
        if self.vici is not None:
            with contextlib.suppress(Exception):
                self.vici.transport.socket.close()
            self.vici = None
        return self._stop_proc()  # SIGTERM: charon deletes its SAs and policies and sends DELETE


LS_SETUP = """config setup
\tlogtime=yes
\tlogappend=no
\tplutodebug=none
\tdnssec-enable=no
\tnhelpers=1
\tuniqueids=yes

"""


class Libreswan(Peer):
    """pluto with private --config/--rundir/--nssdir/--secretsfile/--ipsecdir/--logfile, driven
    with whack over its ctl socket."""

    name = "libreswan"
    conn_name = "peer"

    @property
    def ctl(self) -> Path:
        return self.dir / "run" / "pluto.ctl"

    def _nss(self) -> None:
        if not (self.dir / "nss").exists():
            (self.dir / "nss").mkdir(parents=True)
            _run("certutil", "-N", "-d", f"sql:{self.dir}/nss", "--empty-password")

    def make_keys(self, kind: str) -> Keys:
        if kind == "null":
            self.keys = Keys("null")
            return self.keys
        if kind != "ecdsa":
            raise ValueError(f"libreswan raw keys here are ECDSA P-256 only, not {kind}")
        self._nss()
        nss = str(self.dir / "nss")
        _run(f"{LIBRESWAN_EXEC}/ecdsasigkey", "--seeddev", "/dev/urandom", "--nssdir", nss)
        listing = _run(
            f"{LIBRESWAN_EXEC}/showhostkey", "--nssdir", nss, "--list", check=False
        ).stdout.decode()
        ckaid = listing.split("ckaid:")[-1].split()[0]
        left = _run(
            f"{LIBRESWAN_EXEC}/showhostkey", "--nssdir", nss, "--left", "--ckaid", ckaid
        ).stdout.decode()
        raw = next(w.split("=", 1)[1] for w in left.split() if w.startswith("leftecdsakey="))
        pem = _run(
            f"{LIBRESWAN_EXEC}/showhostkey", "--nssdir", nss, "--pem", "--ckaid", ckaid
        ).stdout.decode()
        self.keys = Keys("ecdsa", pem, ckaid=ckaid, libreswan_raw=raw)
        return self.keys

    def configure(self, peer: Peer, *, initiator: bool) -> None:
        lines = [
            f"conn {self.conn_name}",
            "ikev2=yes",
            f"left={self.addr}",
            f"right={peer.addr}",
            "type=transport",
            f"leftprotoport={'tcp' if initiator else f'tcp/{PORT}'}",
            f"rightprotoport={f'tcp/{PORT}' if initiator else 'tcp'}",
            "ike=aes_gcm256-sha2_256-dh31",
            "esp=chacha20_poly1305" if self.esp == "chacha20poly1305" else "esp=aes_gcm128-null",
            "leftupdown=%disabled",
            "auto=add",
        ]
        if not initiator:  # accept a proposal narrower than the conn (RFC 7296 §2.9): one 5-tuple
            lines.append("narrowing=yes")
        # rpclatch rekeys CHILD_SAs without a new key exchange (no PFS); pluto requires one by default
        lines.append("pfs=no")
        if self.keys.kind == "null":
            lines += ["authby=null", "leftid=%null", "rightid=%null"]
        else:
            lines += [
                "authby=ecdsa",
                f"leftid={self.addr}",
                f"leftecdsakey={self.keys.libreswan_raw}",
                f"rightid={peer.addr}",
                f"rightecdsakey={pem_to_libreswan_ecdsa(peer.keys.public_pem)}",
            ]
        self.conf = LS_SETUP + lines[0] + "\n" + "".join(f"\t{x}\n" for x in lines[1:])

    def start(self) -> None:
        self._nss()
        for sub in ("run", "ipsec.d"):
            (self.dir / sub).mkdir(exist_ok=True)
        (self.dir / "ipsec.conf").write_text(self.conf)
        (self.dir / "ipsec.secrets").touch()
        d = self.dir
        self._spawn(
            [
                f"{LIBRESWAN_EXEC}/pluto",
                "--nofork",
                "--config",
                f"{d}/ipsec.conf",
                "--rundir",
                f"{d}/run",
                "--nssdir",
                f"{d}/nss",
                "--secretsfile",
                f"{d}/ipsec.secrets",
                "--ipsecdir",
                f"{d}/ipsec.d",
                "--logfile",
                f"{d}/pluto.log",
                "--no-dnssec",
            ],
            log="pluto.stdout",
        )
        if not _wait(lambda: self.ctl.exists()):
            raise RuntimeError(f"pluto in {self.ns}: no ctl socket (see {d}/pluto.log)")
        # pluto loads its conns itself (a forked addconn --autoall), asynchronously: wait for it
        if not _wait(lambda: f'"{self.conn_name}":' in self.whack("--status").stdout, 10):
            raise RuntimeError(f"pluto in {self.ns}: conn {self.conn_name} not loaded (see {d}/pluto.log)")

    def whack(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [f"{LIBRESWAN_EXEC}/whack", "--ctlsocket", str(self.ctl), *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def initiate(self) -> None:
        r = self.whack("--name", self.conn_name, "--initiate")
        if r.returncode != 0 or "established Child SA" not in r.stdout:
            raise RuntimeError(f"whack --initiate failed (rc {r.returncode}): {r.stdout[-800:]}")

    def terminate(self) -> None:
        self.whack("--name", self.conn_name, "--terminate")

    def state(self) -> Any:
        return self.whack("--trafficstatus").stdout if self.proc is not None else None

    def stop(self) -> bool:
        if self.proc is None:
            return True
        self.whack("--shutdown")  # deletes its states (sends DELETE) and exits
        return self._stop_proc(sig=None) and _flush_policies(self.ns)


def _flush_policies(ns: str) -> bool:
    """pluto leaves its IPv6 neighbour-discovery bypass policies behind: flush them."""
    _run("ip", "-n", ns, "xfrm", "policy", "flush", check=False)
    return True


class Rpclatch(Peer):
    """rpclatch's IKEv2 core behind its asyncio UDP shell on port 500, installing the CHILD_SAs
    through the XFRM backend in its namespace. Runs an event loop in a thread of this process."""

    name = "rpclatch"

    def __init__(self, ns: str, addr: str, workdir: Path) -> None:
        super().__init__(ns, addr, workdir)
        self.private_key: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.endpoint: Any = None
        self.backend: Any = None
        self.ike_sa: Any = None
        self.peer: Peer | None = None
        self.initiator = False
        self.negotiation_seconds: float | None = None
        #: Wireshark ``ikev2_decryption_table`` rows of every IKE SA seen (keys exported for tshark)
        self.ike_rows: list[str] = []

    def make_keys(self, kind: str) -> Keys:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519

        if kind == "null":
            self.keys = Keys("null")
            return self.keys
        key = (
            ed25519.Ed25519PrivateKey.generate()
            if kind == "ed25519"
            else ec.generate_private_key(ec.SECP256R1())
        )
        self.private_key = key
        pub = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.keys = Keys(kind, pub.decode())
        return self.keys

    def configure(self, peer: Peer, *, initiator: bool) -> None:
        self.peer = peer
        self.initiator = initiator

    def _config(self) -> Any:
        import ipaddress

        from cryptography.hazmat.primitives import serialization

        from rpclatch.ipsec.ike import DEFAULT_ESP_SUITES, Credentials, IkeConfig
        from rpclatch.ipsec.model import (
            CHACHA20_POLY1305,
            AddressRange,
            AuthMethod,
            IkeId,
            IpProto,
            PortRange,
            Selector,
            spki_fingerprint,
        )
        from rpclatch.ipsec.pad import (
            ChildSaAuthorization,
            NullIdPattern,
            PadEntry,
            PeerAuthorizationDatabase,
            PublicKeyPattern,
        )

        assert self.peer is not None
        me = ipaddress.ip_address(self.addr)
        auth = ChildSaAuthorization(own_address_only=True)
        if self.keys.kind == "null":
            cred = Credentials.null()
            pad = PeerAuthorizationDatabase([PadEntry("null", NullIdPattern(), AuthMethod.NULL, auth)])
            peer_keys: dict[Any, bytes] = {}
        else:
            cred = Credentials.raw_key(self.private_key, IkeId.address(self.addr))
            peer_spki = serialization.load_pem_public_key(self.peer.keys.public_pem.encode()).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            pad = PeerAuthorizationDatabase(
                [
                    PadEntry(
                        "peer", PublicKeyPattern(spki_fingerprint(peer_spki)), AuthMethod.RAW_PUBLIC_KEY, auth
                    )
                ]
            )
            # the daemons were given our key in advance and do not send theirs: known by their ID
            peer_keys = {IkeId.address(self.peer.addr): peer_spki}
        policy = (Selector(AddressRange.single(me), None, IpProto.TCP, PortRange.single(PORT)),)
        # short retransmissions (0.5 s, doubled, 2 tries) so a dead peer is noticed within seconds
        return IkeConfig(
            cred,
            pad,
            () if self.initiator else policy,
            peer_keys=peer_keys,
            esp_suites=(CHACHA20_POLY1305,) if self.esp == "chacha20poly1305" else DEFAULT_ESP_SUITES,
            retransmit_timeout=0.5,
            retransmit_tries=2,
        )

    def start(self) -> None:
        import ipaddress

        from pyroute2 import netns as pr_netns

        from rpclatch.ipsec.ike import IkeDispatcher
        from rpclatch.ipsec.ike.udp import IkeUdpEndpoint, NegotiatedKeys
        from rpclatch.ipsec.xfrm.backend import XfrmBackend

        config = self._config()
        keys = NegotiatedKeys()
        self.backend = XfrmBackend(self.ns, keys)
        sock = pr_netns.create_socket(self.ns, socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((self.addr, 500))
        sock.setblocking(False)
        dispatcher = IkeDispatcher(config, (ipaddress.ip_address(self.addr), 500))
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            assert self.loop is not None
            asyncio.set_event_loop(self.loop)
            self.endpoint = self.loop.run_until_complete(
                IkeUdpEndpoint.open(dispatcher, sock, backend=self.backend, keys=keys)
            )
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name=f"rpclatch-ike-{self.ns}", daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("rpclatch IKE endpoint did not start")

    def _call(self, coro: Any, timeout: float = 30) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def initiate(self) -> None:
        import ipaddress

        from rpclatch.ipsec.ike import ChildRequest, ChildSaEstablished, ChildSaFailed, IkeSaFailed
        from rpclatch.ipsec.model import FiveTuple, IpProto, Selector

        assert self.peer is not None
        peer_addr = self.peer.addr
        flow = FiveTuple.of(
            ipaddress.ip_address(self.addr),
            CLIENT_PORT,
            ipaddress.ip_address(peer_addr),
            PORT,
            IpProto.TCP,
        )

        async def go() -> Any:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            sa = self.endpoint.initiate(
                (ipaddress.ip_address(peer_addr), 500), ChildRequest(Selector.for_flow(flow))
            )
            self.ike_sa = sa
            event = await self.endpoint.wait_for(
                lambda r, e: (
                    r.initiator_spi == sa.spi_i
                    and isinstance(e, ChildSaEstablished | ChildSaFailed | IkeSaFailed)
                ),
                20,
            )
            # the CHILD_SA is in the kernel by now: the shell installs it before waking waiters
            self.negotiation_seconds = loop.time() - t0
            self._snapshot_keys()
            return event

        event = self._call(go())
        if not isinstance(event, ChildSaEstablished):
            raise RuntimeError(f"rpclatch initiator: {event}")

    def wait_established(self, timeout: float = 20) -> Any:
        from rpclatch.ipsec.ike import ChildSaEstablished

        async def go() -> Any:
            event = await self.endpoint.wait_for(lambda _r, e: isinstance(e, ChildSaEstablished), timeout)
            self._snapshot_keys()
            return event

        return self._call(go(), timeout + 5)

    def _snapshot_keys(self) -> None:
        """Record the IKE SA keys for tshark's ikev2_decryption_table (SPIs, SK_e*, SK_a*)."""
        from rpclatch.ipsec.ike.export import ikev2_decryption_row

        for sa in self.endpoint.dispatcher.sas:
            if sa.keys is None:
                continue
            row = ikev2_decryption_row(sa.spi_i, sa.spi_r, sa.keys)
            if row not in self.ike_rows:
                self.ike_rows.append(row)

    def _current(self) -> Any:
        """The established IKE SA (the initiator's own, or the one a peer set up with us)."""
        from rpclatch.ipsec.ike import IkeState

        if self.ike_sa is not None and self.ike_sa.state is IkeState.ESTABLISHED:
            return self.ike_sa
        for sa in self.endpoint.dispatcher.sas:
            if sa.state is IkeState.ESTABLISHED and sa.successor is None:
                return sa
        raise RuntimeError("rpclatch has no established IKE SA")

    def rekey_child(self) -> None:
        from rpclatch.ipsec.ike import ChildSaEstablished

        async def go() -> None:
            sa = self._current()
            (old,) = list(self.endpoint.installed)
            self.endpoint.rekey_child(sa, old)
            await self.endpoint.wait_for(
                lambda _r, e: isinstance(e, ChildSaEstablished) and e.replaces == old, 10
            )

        self._call(go())

    def rekey_ike(self) -> None:
        from rpclatch.ipsec.ike import IkeSaRekeyed

        async def go() -> None:
            sa = self._current()
            self._snapshot_keys()
            self.endpoint.rekey(sa)
            await self.endpoint.wait_for(lambda _r, e: isinstance(e, IkeSaRekeyed) and e.old == sa.ref, 10)
            self.ike_sa = sa.successor
            self._snapshot_keys()

        self._call(go())

    def terminate(self) -> None:
        async def go() -> None:
            from rpclatch.ipsec.ike import IkeSaDeleted, IkeSaFailed

            sas = [self._current()]
            for sa in sas:
                self.endpoint.delete(sa)
                with contextlib.suppress(TimeoutError):
                    await self.endpoint.wait_for(
                        lambda r, e, sa=sa: (
                            r.initiator_spi == sa.spi_i and isinstance(e, IkeSaDeleted | IkeSaFailed)
                        ),
                        5,
                    )
            self.ike_sa = None

        self._call(go())

    def state(self) -> Any:
        if self.endpoint is None:
            return None
        self._snapshot_keys()
        return {
            "events": [type(e).__name__ for _r, e in self.endpoint.events],
            "installed": [
                {
                    "spi_in": f"{i.child.spi_in:#x}",
                    "spi_out": f"{i.child.spi_out:#x}",
                    "selector": str(i.child.selector),
                    "suite": str(i.child.suite),
                    "peer": type(i.sad_entry.peer).__name__,
                }
                for i in self.endpoint.installed.values()
            ],
            "datapath_errors": self.endpoint.datapath_errors,
            "ike_decryption_rows": self.ike_rows,
        }

    def stop(self) -> bool:
        if self.loop is None:
            return True

        async def go() -> None:
            self.endpoint.close()

        with contextlib.suppress(Exception):
            if self.endpoint is not None:
                self._call(go(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread is not None:
            self.thread.join(10)
        if self.backend is not None:
            self.backend.close()
        self.loop = None
        return True


def rpclatch_command() -> list[str]:
    """The ``rpclatch`` command of the Python running this module (its venv's console script)."""
    script = Path(sys.executable).parent / "rpclatch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rpclatch.cli"]


class Keyd(Peer):
    """``rpclatch ipsec keyd`` as its own process (``--netns``, XFRM datapath of the namespace),
    driven over its AF_UNIX control socket like an application would (RFC 5660 §2.2 API):
    :meth:`initiate` is CREATE_CONNECTION_LATCH for the echo client's 5-tuple, :meth:`terminate`
    RELEASE_LATCH (which deletes the IKE SA). Raw keys only: the daemons do not send theirs, so
    keyd gets the peer's by ``--peer-key`` and sends its address as its ID (``--id address``)."""

    name = "keyd"

    def __init__(self, ns: str, addr: str, workdir: Path) -> None:
        super().__init__(ns, addr, workdir)
        self.peer: Peer | None = None
        self.initiator = False
        self.ctl: socket.socket | None = None
        self.decoder: Any = None
        self.latch: int | None = None
        self.ids = 0
        #: seconds from sending CREATE_CONNECTION_LATCH to its success answer (last initiate)
        self.negotiation_seconds: float | None = None

    @property
    def socket_path(self) -> Path:
        return self.dir / "keyd.sock"

    def make_keys(self, kind: str) -> Keys:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519

        if kind not in ("ed25519", "ecdsa"):
            raise ValueError(f"keyd peer: {kind} keys are not supported (raw public keys only)")
        key = (
            ed25519.Ed25519PrivateKey.generate()
            if kind == "ed25519"
            else ec.generate_private_key(ec.SECP256R1())
        )
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (self.dir / "key.pem").write_bytes(private)
        self.keys = Keys(kind, public.decode(), private.decode())
        return self.keys

    def configure(self, peer: Peer, *, initiator: bool) -> None:
        self.peer, self.initiator = peer, initiator

    def start(self) -> None:
        assert self.peer is not None
        (self.dir / "peer.pem").write_text(self.peer.keys.public_pem)
        self.socket_path.unlink(missing_ok=True)
        argv = [
            *rpclatch_command(),
            "ipsec",
            "keyd",
            "--netns",
            self.ns,
            "--address",
            self.addr,
            "--id",
            "address",
            "--key",
            str(self.dir / "key.pem"),
            "--peer-key",
            f"{self.peer.addr}={self.dir / 'peer.pem'}",
            "--accept",
            str(self.dir / "peer.pem"),
            "--socket",
            str(self.socket_path),
        ]
        with (self.dir / "keyd.log").open("ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        # the socket file appears at bind(), before listen(): ready once a connection is accepted
        if not _wait(lambda: self._connect() or self.proc is None or self.proc.poll() is not None, 60):
            raise RuntimeError(f"keyd in {self.ns}: no control socket (see {self.dir}/keyd.log)")
        if self.ctl is None:
            raise RuntimeError(f"keyd in {self.ns} exited: {(self.dir / 'keyd.log').read_text()[-1000:]}")
        if not self.call("STATUS").get("ok"):
            raise RuntimeError(f"keyd in {self.ns}: STATUS refused")

    def _connect(self) -> bool:
        from rpclatch.ipsec.keyd.protocol import FrameDecoder

        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            ctl.connect(str(self.socket_path))
        except OSError:
            ctl.close()
            return False
        ctl.settimeout(30)
        self.ctl, self.decoder = ctl, FrameDecoder()
        return True

    def call(self, op: str, **members: Any) -> dict[str, Any]:
        """One request on the control connection, blocking until its answer (alerts skipped)."""
        self.send(op, **members)
        return self.answer()

    def send(self, op: str, **members: Any) -> None:
        from rpclatch.ipsec.keyd.protocol import encode_frame

        assert self.ctl is not None
        self.ids += 1
        self.ctl.sendall(encode_frame({"op": op, "id": self.ids, **members}))

    def answer(self) -> dict[str, Any]:
        assert self.ctl is not None
        while True:
            frames = self.decoder.feed(b"")
            while not frames:
                data = self.ctl.recv(65536)
                if not data:
                    raise RuntimeError("keyd closed the control connection")
                frames = self.decoder.feed(data)
            for frame in frames:
                message: dict[str, Any] = json.loads(frame)
                if message.get("id") in (self.ids, 0) and "alert" not in message:
                    return message

    def initiate(self) -> None:
        assert self.peer is not None
        t0 = time.perf_counter()
        self.send(
            "CREATE_CONNECTION_LATCH",
            local_addr=self.addr,
            local_port=CLIENT_PORT,
            remote_addr=self.peer.addr,
            remote_port=PORT,
            timeout=20,
        )
        answer = self.answer()
        # the answer comes once the latch is ESTABLISHED: the CHILD_SA is in the kernel
        self.negotiation_seconds = time.perf_counter() - t0
        if not answer.get("ok"):
            raise RuntimeError(f"keyd CREATE_CONNECTION_LATCH: {answer}")
        self.latch = answer["latch"]

    def terminate(self) -> None:
        if self.latch is not None:
            self.call("RELEASE_LATCH", latch=self.latch)
            self.latch = None
        if not _wait(lambda: not self.call("STATUS")["ike_sas"], 5):
            raise RuntimeError("keyd: the IKE SA is still there 5 s after RELEASE_LATCH")

    def state(self) -> Any:
        return self.call("STATUS") if self.ctl is not None else None

    def stop(self) -> bool:
        if self.ctl is not None:
            with contextlib.suppress(OSError):
                self.ctl.close()
            self.ctl = None
        proc = self.proc
        stopped = self._stop_proc()
        return stopped and proc is not None and proc.returncode == 0 and not self.socket_path.exists()


PEERS: dict[str, type[Peer]] = {
    "strongswan": StrongSwan,
    "libreswan": Libreswan,
    "rpclatch": Rpclatch,
    "keyd": Keyd,
}


# ---------------------------------------------------------------------------------------------
# scenarios


@dataclass(frozen=True)
class Scenario:
    initiator: str
    responder: str
    auth: str  # ed25519 | ecdsa | null
    net: int  # third octet base: addresses 203.0.113.<net+1> / .<net+2>
    #: after the first echo: the initiator rekeys the CHILD_SA, then the IKE SA (echo after each,
    #: on the new SPIs), and the *responder* deletes the IKE SA
    lifecycle: bool = False
    #: "badkey": the initiator's key changes after the responder was given it, so the
    #: negotiation must fail with no SA anywhere; "dead": after the echo the responder daemon is
    #: killed (no DELETE) and the rpclatch initiator's liveness check must remove its SAs
    variant: str = ""
    #: the CHILD_SA cipher both sides are configured with: "" for AES-GCM-16 (RFC 4106),
    #: "chacha20poly1305" for ESP ChaCha20-Poly1305 (RFC 7634)
    esp: str = ""


SCENARIOS: dict[str, Scenario] = {
    "ss-ss": Scenario("strongswan", "strongswan", "ed25519", 10),
    "ls-ls": Scenario("libreswan", "libreswan", "null", 20),
    "ss-ls": Scenario("strongswan", "libreswan", "ecdsa", 30),
    "ls-ss": Scenario("libreswan", "strongswan", "ecdsa", 40),
    "rl-ss": Scenario("rpclatch", "strongswan", "ed25519", 50),
    "ss-rl": Scenario("strongswan", "rpclatch", "ed25519", 60),
    "rl-ss-ecdsa": Scenario("rpclatch", "strongswan", "ecdsa", 70),
    "rl-ls": Scenario("rpclatch", "libreswan", "null", 80),
    "ls-rl": Scenario("libreswan", "rpclatch", "null", 90),
    "rl-ss-life": Scenario("rpclatch", "strongswan", "ed25519", 100, lifecycle=True),
    "ss-rl-life": Scenario("strongswan", "rpclatch", "ed25519", 110, lifecycle=True),
    "rl-ls-life": Scenario("rpclatch", "libreswan", "null", 170, lifecycle=True),
    "rl-ls-ecdsa": Scenario("rpclatch", "libreswan", "ecdsa", 150),
    "ls-rl-ecdsa": Scenario("libreswan", "rpclatch", "ecdsa", 160),
    "rl-ss-badkey": Scenario("rpclatch", "strongswan", "ed25519", 120, variant="badkey"),
    "ss-rl-badkey": Scenario("strongswan", "rpclatch", "ed25519", 130, variant="badkey"),
    "rl-ss-dead": Scenario("rpclatch", "strongswan", "ed25519", 140, variant="dead"),
    "rl-ss-chacha": Scenario("rpclatch", "strongswan", "ed25519", 180, esp="chacha20poly1305"),
    "ss-rl-chacha": Scenario("strongswan", "rpclatch", "ed25519", 190, esp="chacha20poly1305"),
    "ls-rl-chacha": Scenario("libreswan", "rpclatch", "null", 200, esp="chacha20poly1305"),
}


@dataclass
class Result:
    scenario: str
    initiator: str
    responder: str
    auth: str
    addr_i: str
    addr_r: str
    ok_steps: list[str] = field(default_factory=list)
    error: str | None = None
    initiate_seconds: float | None = None
    sas_i: int = 0
    sas_r: int = 0
    xfrm_i: str = ""
    counters_before: dict[str, list[int]] = field(default_factory=dict)
    counters_after: dict[str, list[int]] = field(default_factory=dict)
    echo_protected: bool = False
    echo_clear: bool = False
    state_i: Any = None
    state_r: Any = None
    sas_r_after_delete: int | None = None
    stopped: dict[str, bool] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)
    esp_sa_rows: list[str] = field(default_factory=list)
    pcap: str = ""
    capture_log: str = ""
    seconds: float = 0.0
    lifecycle: dict[str, Any] = field(default_factory=dict)
    refusal: dict[str, Any] = field(default_factory=dict)
    dead: dict[str, Any] = field(default_factory=dict)


def _spis(ns: str) -> set[str]:
    return set(xfrm_counters(ns))


def lifecycle(res: Result, ini: Peer, resp: Peer, ns_i: str, ns_r: str) -> None:
    """CHILD_SA rekey then IKE SA rekey by the initiator, an echo after each through the SAs in
    place (new SPIs after the CHILD_SA rekey, the same after the IKE SA rekey: §2.18 moves the
    CHILD_SAs). Fills ``res.lifecycle``."""
    addr_i, addr_r = res.addr_i, res.addr_r
    life = res.lifecycle
    old = _spis(ns_i)
    ini.rekey_child()
    life["child_rekeyed"] = _wait(lambda: len(_spis(ns_i)) == 2 and not _spis(ns_i) & old, 10)
    _wait(lambda: n_sas(ns_r) == 2 and not _spis(ns_r) & old, 5)
    new = _spis(ns_i)
    res.esp_sa_rows += [row for row in esp_uat_rows(ns_i) if row not in res.esp_sa_rows]
    life["spis_before"], life["spis_after_child_rekey"] = sorted(old), sorted(new)
    life["spis_r_after_child_rekey"] = sorted(_spis(ns_r))
    before = xfrm_counters(ns_i)
    life["echo_after_child_rekey"] = echo(ns_i, addr_i, addr_r, PORT, ECHO_BYTES, sport=CLIENT_PORT)
    life["counters_after_child_rekey"] = [before, xfrm_counters(ns_i)]
    ike_before = resp.state() if isinstance(resp, StrongSwan) else ini.state()
    ls_side = resp if isinstance(resp, Libreswan) else ini
    ike_before_ls = (
        [
            line.split(":")[0].strip()
            for line in ls_side.whack("--showstates").stdout.splitlines()
            if "ESTABLISHED_IKE_SA" in line
        ]
        if isinstance(ls_side, Libreswan)
        else []
    )
    ini.rekey_ike()
    if isinstance(resp, StrongSwan) or isinstance(ini, StrongSwan):
        ss = resp if isinstance(resp, StrongSwan) else ini
        assert isinstance(ss, StrongSwan)
        # charon's IKE SA gets a new uniqueid when rekeyed; wait until only the new one is left
        first = {ike["uniqueid"] for sa in ike_before or [] for ike in sa.values()}
        life["ike_rekeyed"] = _wait(
            lambda: (
                bool(ids := {ike["uniqueid"] for sa in ss.state() or [] for ike in sa.values()})
                and not ids & first
                and len(ids) == 1
            ),
            10,
        )
        life["ike_after_rekey"] = [
            {k: ike.get(k) for k in ("uniqueid", "state", "initiator-spi", "responder-spi")}
            for sa in ss.state() or []
            for ike in sa.values()
        ]
        life["children_after_ike_rekey"] = len(ss.child_states())
    elif isinstance(resp, Libreswan) or isinstance(ini, Libreswan):
        ls = resp if isinstance(resp, Libreswan) else ini
        assert isinstance(ls, Libreswan)

        def states(kind: str) -> list[str]:
            out = ls.whack("--showstates").stdout.splitlines()
            return [line.split(":")[0].strip() for line in out if f"ESTABLISHED_{kind}" in line]

        # pluto numbers its states: after the rekey one IKE SA is left, and it is a new one
        first = set(ike_before_ls)
        life["ike_rekeyed"] = _wait(
            lambda: len(states("IKE_SA")) == 1 and not set(states("IKE_SA")) & first, 10
        )
        life["ike_after_rekey"] = [{"serial": n, "state": "ESTABLISHED"} for n in states("IKE_SA")]
        life["children_after_ike_rekey"] = len(states("CHILD_SA"))
    life["spis_after_ike_rekey"] = sorted(_spis(ns_i))
    before = xfrm_counters(ns_i)
    life["echo_after_ike_rekey"] = echo(ns_i, addr_i, addr_r, PORT, ECHO_BYTES, sport=CLIENT_PORT)
    life["counters_after_ike_rekey"] = [before, xfrm_counters(ns_i)]
    res.state_i, res.state_r = ini.state(), resp.state()


def refused(res: Result, ini: Peer, resp: Peer, ns_i: str, ns_r: str) -> None:
    """The initiator signs with a key the responder was not given: the initiation must fail,
    and no SA may be installed on either side. Fills ``res.refusal``."""
    ref = res.refusal
    try:
        ini.initiate()
        ref["initiate_error"] = None
    except Exception as exc:
        ref["initiate_error"] = f"{type(exc).__name__}: {exc}"
    time.sleep(0.5)  # a late SA install would show up now
    ref["sas_i"], ref["sas_r"] = n_sas(ns_i), n_sas(ns_r)
    for role, p in (("initiator", ini), ("responder", resp)):
        if isinstance(p, Rpclatch) and p.endpoint is not None:
            ref[f"{role}_events"] = [repr(e) for _r, e in p.endpoint.events]
            ref[f"{role}_installed"] = len(p.endpoint.installed)
    res.state_i, res.state_r = ini.state(), resp.state()
    res.ok_steps.append("refused")


def dead_peer(res: Result, ini: Peer, resp: Peer, ns_i: str, ns_r: str) -> None:
    """The responder daemon dies without a word (SIGKILL); the rpclatch initiator's liveness check
    (an empty INFORMATIONAL, RFC 7296 §1.4) times out after its retransmissions, the IKE SA fails
    and its CHILD_SAs leave the kernel. Fills ``res.dead``."""
    from rpclatch.ipsec.ike import IkeSaFailed

    assert isinstance(ini, Rpclatch) and resp.proc is not None
    resp.proc.kill()
    resp.proc.wait()
    # the dead daemon's kernel state stays behind in its namespace: flush it (the peer is gone)
    _run("ip", "-n", ns_r, "xfrm", "state", "flush", check=False)
    _run("ip", "-n", ns_r, "xfrm", "policy", "flush", check=False)
    t = time.monotonic()

    async def go() -> Any:
        sa = ini._current()
        ini.endpoint.check_liveness(sa)
        return await ini.endpoint.wait_for(lambda r, e: r == sa.ref and isinstance(e, IkeSaFailed), 30)

    event = ini._call(go(), 40)
    res.dead = {
        "failure": repr(event),
        "seconds": time.monotonic() - t,
        "sas_i_after": n_sas(ns_i),
        "installed_after": len(ini.endpoint.installed),
    }
    ini.ike_sa = None
    res.state_i = ini.state()
    res.sas_r_after_delete = n_sas(ns_r)
    res.ok_steps.append("dead-peer")


def run_scenario(name: str, out: Path, *, traffic: bool = True) -> Result:
    sc = SCENARIOS[name]
    ns_i, ns_r = f"{name}-i", f"{name}-r"
    addr_i, addr_r = f"203.0.113.{sc.net + 1}", f"203.0.113.{sc.net + 2}"
    res = Result(name, sc.initiator, sc.responder, sc.auth, addr_i, addr_r)
    out.mkdir(parents=True, exist_ok=True)
    work = WORK / name
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.monotonic()
    ini = PEERS[sc.initiator](ns_i, addr_i, work / "initiator")
    resp = PEERS[sc.responder](ns_r, addr_r, work / "responder")
    cap: Capture | None = None
    server: EchoServer | None = None
    with NetnsPair(ns_i, ns_r, addr_i, addr_r):
        try:
            for p in (ini, resp):
                p.esp = sc.esp
                p.make_keys(sc.auth)
            ini.configure(resp, initiator=True)
            resp.configure(ini, initiator=False)
            resp.start()
            if sc.variant == "badkey":
                ini.make_keys(sc.auth)  # the responder knows the old key only
            ini.start()
            res.ok_steps.append("started")
            cap = Capture(ns_i, f"v{ns_i}", out / "ike.pcap")
            if sc.variant == "badkey":
                refused(res, ini, resp, ns_i, ns_r)
                res.seconds = time.monotonic() - t0
                return res
            t = time.monotonic()
            ini.initiate()
            res.initiate_seconds = time.monotonic() - t
            if isinstance(resp, Rpclatch):
                resp.wait_established()
            res.ok_steps.append("established")
            _wait(lambda: n_sas(ns_r) >= 2, 3)
            res.sas_i, res.sas_r = n_sas(ns_i), n_sas(ns_r)
            res.xfrm_i = xfrm_text(ns_i)
            res.esp_sa_rows = esp_uat_rows(ns_i)
            res.state_i, res.state_r = ini.state(), resp.state()
            if traffic:
                server = EchoServer(ns_r, addr_r)
                res.counters_before = xfrm_counters(ns_i)
                res.echo_protected = echo(ns_i, addr_i, addr_r, PORT, ECHO_BYTES, sport=CLIENT_PORT)
                res.echo_clear = echo(ns_i, addr_i, addr_r, CLEAR_PORT, 1000)
                res.counters_after = xfrm_counters(ns_i)
                res.ok_steps.append("traffic")
            if sc.variant == "dead":
                dead_peer(res, ini, resp, ns_i, ns_r)
            elif sc.lifecycle:
                lifecycle(res, ini, resp, ns_i, ns_r)
                resp.terminate()  # DELETE from the responder this time
                _wait(lambda: n_sas(ns_i) == 0, 3)
                res.sas_r_after_delete = n_sas(ns_r)
                res.lifecycle["sas_i_after_responder_delete"] = n_sas(ns_i)
            else:
                ini.terminate()
                _wait(lambda: n_sas(ns_r) == 0, 3)
                res.sas_r_after_delete = n_sas(ns_r)
            res.ok_steps.append("deleted")
        except Exception as exc:  # reported in the JSON; teardown below runs in every case
            res.error = f"{type(exc).__name__}: {exc}"
        finally:
            if server is not None:
                server.close()
            if res.error is not None:  # what each side reports, for the diagnosis
                for attr, p in (("state_i", ini), ("state_r", resp)):
                    if getattr(res, attr) is None:
                        with contextlib.suppress(Exception):
                            setattr(res, attr, p.state())
                            if isinstance(p, Rpclatch) and p.endpoint is not None:
                                getattr(res, attr)["events"] = [repr(e) for _r, e in p.endpoint.events]
            # libreswan revives what it initiated when the peer deletes it: stop the initiator first
            for role, p in (("initiator", ini), ("responder", resp)):
                try:
                    res.stopped[role] = p.stop()
                except Exception as exc:
                    res.stopped[role] = False
                    res.error = res.error or f"stopping the {role}: {exc}"
            if cap is not None:
                res.capture_log = cap.stop()
                res.pcap = str(out / "ike.pcap")
            res.leftovers = leftovers(ns_i) + leftovers(ns_r)
            for p, role in ((ini, "initiator"), (resp, "responder")):
                for f in ("charon.log", "pluto.log", "ipsec.conf", "strongswan.conf"):
                    if (p.dir / f).exists():
                        shutil.copyfile(p.dir / f, out / f"{role}-{f}")
    res.seconds = time.monotonic() - t0
    return res


def bench_latency(rounds: int, out: Path) -> dict[str, Any]:
    """``ike.latch_latency``'s measurement: per round, the time from asking for the CHILD_SA of
    one TCP 5-tuple to having it installed in the initiator's kernel, for keyd -> strongSwan (a
    real ``rpclatch ipsec keyd`` process: CREATE_CONNECTION_LATCH sent on its control socket to
    the success answer, which comes once the latch is ESTABLISHED) and strongSwan -> strongSwan
    (a vici ``initiate`` round trip, which returns once charon has installed the CHILD_SA), each
    IKE SA deleted again before the next round (RELEASE_LATCH / vici ``terminate``). Same IKE
    suite (AES-GCM-16-256, PRF_HMAC_SHA2_256, Curve25519), Ed25519 raw keys, ESP AES-GCM-16-128.
    Each initiator's side is captured (``OUT/keyd.pcap``, ``OUT/strongswan.pcap``) for the
    on-the-wire times the benchmark prints beside the figure."""
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {"keyd": [], "strongswan": []}
    errors: list[str] = []
    shutil.rmtree(WORK / "bench", ignore_errors=True)
    pairs: dict[str, tuple[str, str, str, str, type[Peer]]] = {
        "keyd": ("bench-kd", "bench-ss1", "203.0.113.201", "203.0.113.202", Keyd),
        "strongswan": ("bench-ss2", "bench-ss3", "203.0.113.211", "203.0.113.212", StrongSwan),
    }
    peers: list[Peer] = []
    caps: list[Capture] = []
    with (
        NetnsPair(*pairs["keyd"][:4]),
        NetnsPair(*pairs["strongswan"][:4]),
    ):
        try:
            for kind, (ns_i, *_rest) in pairs.items():
                caps.append(Capture(ns_i, f"v{ns_i}", out / f"{kind}.pcap"))
            inis: dict[str, Peer] = {}
            for kind, (ns_i, ns_r, a_i, a_r, cls) in pairs.items():
                ini = cls(ns_i, a_i, WORK / "bench" / f"{kind}-initiator")
                resp = StrongSwan(ns_r, a_r, WORK / "bench" / f"{kind}-responder")
                peers += [ini, resp]
                for p in (ini, resp):
                    p.make_keys("ed25519")
                ini.configure(resp, initiator=True)
                resp.configure(ini, initiator=False)
                resp.start()
                ini.start()
                inis[kind] = ini
            for _ in range(rounds):
                for kind, ini in inis.items():
                    t = time.perf_counter()
                    ini.initiate()
                    elapsed = time.perf_counter() - t
                    if isinstance(ini, Keyd) and ini.negotiation_seconds is not None:
                        elapsed = ini.negotiation_seconds
                    times[kind].append(elapsed)
                    ini.terminate()
                    time.sleep(0.2)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            for p in peers:
                try:
                    if not p.stop():
                        errors.append(f"{p.name} in {p.ns} did not stop cleanly")
                except Exception as exc:
                    errors.append(f"stopping {p.name} in {p.ns}: {exc}")
            for cap in caps:
                cap.stop()
            for p in peers:
                for log in ("charon.log", "keyd.log"):
                    if (p.dir / log).exists():
                        shutil.copyfile(p.dir / log, out / f"{p.ns}-{log}")
    return {"times": times, "errors": errors}


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "bench":
        print(json.dumps(bench_latency(int(argv[1]), Path(argv[2]))))
        return 0
    if len(argv) != 2 or argv[0] not in SCENARIOS:
        print(
            f"usage: python -m interop.ike_peers SCENARIO OUT_DIR  (scenarios: {', '.join(SCENARIOS)})",
            file=sys.stderr,
        )
        return 2
    res = run_scenario(argv[0], Path(argv[1]))
    print(json.dumps(res.__dict__))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
