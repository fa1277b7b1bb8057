"""The mission on real kernels, first slice (issue #13): ``rpclatch rpc serve --ipsec
bypass-or-protect`` and ``rpclatch rpc ping --sec auto`` on real sockets, latched through two
``rpclatch ipsec keyd`` processes to kernel ESP in the UML guest, with the guest's KDC.

In the guest: a keyd in netns ``client`` (203.0.113.11) and one in the root netns (203.0.113.12),
both on TEST-NET-3 addresses added to the harness's veth for this test; the test program's server
in the root netns with ``--ipsec bypass-or-protect``, ``--sec krb5p`` and the NFS service key
(``/etc/krb5.keytab``); ``ping --sec auto -v`` from netns ``client`` as alice (client keytab).

1. Both key managers up: the policy row is "latched, bound" (RPCSEC_GSS v2, BIND_CHANNEL OK,
   the NULL call with channel_prot answered), the kernel's ESP byte counters advance while the
   latch lives, and the capture on the server's veth has no TCP at all between the two addresses
   -- only ESP and IKE -- and no cleartext byte of the Kerberos exchange (the service principal's
   host name, which the RPCSEC_GSS INIT token carries in clear, appears nowhere in that phase).
2. The server's keyd stopped (SIGTERM): the ping falls back (IKE times out, BYPASS) to krb5p in
   the clear; the row, its reason and the time it took are reported, and the same capture check
   now finds the TCP and the principal's host name (so the check of phase 1 can fail).

This file is also the guest-side script: ``python tests/interop/test_mission_guest.py guest``
prints one JSON line of observations.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

CLIENT_ADDR = "203.0.113.11"
SERVER_ADDR = "203.0.113.12"
PORT = 5663  # 2049 is the guest nfsd's
TARGET = "nfs@guest.rpclatch.test"
HOST_MARK = "guest.rpclatch.test"  # in clear in the Kerberos AP-REQ of an unprotected INIT
IKE_TIMEOUT = 2.0
PROG = 0x20000A11

pytestmark = [pytest.mark.uml, pytest.mark.root]


def _rpclatch() -> list[str]:
    script = Path(sys.executable).parent / "rpclatch"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rpclatch.cli"]


def _esp_bytes(netns: str | None) -> int:
    """Bytes counted by our ESP states (those between 203.0.113.x addresses)."""
    argv = ["ip", "-s", "xfrm", "state"] if netns is None else ["ip", "-n", netns, "-s", "xfrm", "state"]
    text = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    total, ours = 0, False
    for line in text.splitlines():
        if line.startswith("src "):
            ours = line.startswith("src 203.0.113.")
        elif ours and (m := re.match(r"\s*(\d+)\(bytes\)", line)):
            total += int(m.group(1))
    return total


class Sampler:
    """Polls the ESP byte counters of a namespace until stopped; keeps the largest total (the SAs
    go away when the latch is released at the end of the ping)."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self.max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.max = max(self.max, _esp_bytes(self.netns))
            time.sleep(0.005)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.max


def _write_key(path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    key = ed25519.Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))


class Proc:
    """A background process (output in ``log``), stopped with SIGTERM by PID."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        import os

        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 10) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


async def _keyd_ready(sock: Path, proc: Proc, timeout: float = 60) -> bool:
    from rpclatch.ipsec.keyd.server import KeydClient

    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.proc.poll() is None:
        if sock.exists():
            try:
                client = await KeydClient.connect(sock)
            except OSError:
                pass
            else:
                try:
                    return bool((await asyncio.wait_for(client.call("STATUS"), 5)).get("ok"))
                finally:
                    await client.close()
        await asyncio.sleep(0.1)
    return False


def _ping(c_sock: Path, env: dict[str, str]) -> dict[str, Any]:
    import os

    argv = ["ip", "netns", "exec", "client", *_rpclatch(), "-v", "rpc", "ping", SERVER_ADDR, str(PROG), "1"]
    argv += ["--port", str(PORT), "--sec", "auto", "--target", TARGET, "--keyd", str(c_sock)]
    argv += ["--ike-timeout", str(IKE_TIMEOUT), "--fallback", "krb5p", "--timeout", "30"]
    t0 = time.monotonic()
    r = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env={**os.environ, **env}, check=False
    )
    rows = [line for line in r.stderr.splitlines() if "rpclatch: security: row" in line]
    return {
        "rc": r.returncode,
        "out": r.stdout,
        "err": r.stderr[-4000:],
        "row": rows[0] if len(rows) == 1 else None,
        "seconds": round(time.monotonic() - t0, 3),
    }


async def _guest() -> dict[str, Any]:
    res: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp())
    _write_key(tmp / "c.pem")
    _write_key(tmp / "s.pem")
    c_sock, s_sock = tmp / "c.sock", tmp / "s.sock"
    keyd = [*_rpclatch(), "ipsec", "keyd"]
    c_keyd = Proc(
        [
            *keyd,
            "--netns",
            "client",
            "--address",
            CLIENT_ADDR,
            "--key",
            str(tmp / "c.pem"),
            "--socket",
            str(c_sock),
        ],
        tmp / "c.log",
    )
    s_keyd = Proc(
        [*keyd, "--address", SERVER_ADDR, "--key", str(tmp / "s.pem"), "--socket", str(s_sock)], tmp / "s.log"
    )
    server: Proc | None = None
    try:
        res["ready"] = [await _keyd_ready(c_sock, c_keyd), await _keyd_ready(s_sock, s_keyd)]
        if not all(res["ready"]):
            res["logs"] = [c_keyd.text()[-2000:], s_keyd.text()[-2000:]]
            return res
        server = Proc(
            [
                *_rpclatch(),
                "-v",
                "rpc",
                "serve",
                "--host",
                SERVER_ADDR,
                "--port",
                str(PORT),
                "--tcp",
                "--sec",
                "krb5p",
                "--principal",
                TARGET,
                "--ipsec",
                "bypass-or-protect",
                "--keyd",
                str(s_sock),
            ],
            tmp / "serve.log",
            {"KRB5_KTNAME": "/etc/krb5.keytab", "KRB5_CONFIG": "/etc/krb5.conf"},
        )
        end = time.monotonic() + 60
        while (
            "serving program" not in server.text() and server.proc.poll() is None and time.monotonic() < end
        ):
            await asyncio.sleep(0.1)
        res["serve_banner"] = server.text()[-1000:]
        env = {"KRB5_CONFIG": "/etc/krb5.conf"}  # + alice's client keytab and ccache (argv[2])
        env.update(json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
        # 1. both key managers up
        res["t_latched"] = time.time()
        client_esp, server_esp = Sampler("client"), Sampler(None)
        res["latched"] = await asyncio.to_thread(_ping, c_sock, env)
        res["esp_client_max"], res["esp_server_max"] = client_esp.stop(), server_esp.stop()
        await asyncio.sleep(1.0)
        # 2. the server's key manager stopped: IKE goes unanswered
        res["server_keyd_rc"] = s_keyd.stop()
        await asyncio.sleep(0.5)
        res["t_fallback"] = time.time()
        res["fallback"] = await asyncio.to_thread(_ping, c_sock, env)
        res["t_end"] = time.time()
    finally:
        if server is not None:
            res["serve_rc"] = server.stop()
            res["serve_log"] = server.text()[-4000:]
        for proc in (c_keyd, s_keyd):
            proc.stop()
        res["keyd_logs"] = [c_keyd.text()[-1500:], s_keyd.text()[-1500:]]
    return res


def test_mission_latched_bound_then_fallback_over_kernel_esp(nfsd_guest: Any) -> None:
    from interop.capture import read_fields

    g = nfsd_guest
    g.run(f"ip -n client addr add {CLIENT_ADDR}/24 dev vc && ip addr add {SERVER_ADDR}/24 dev vs", check=True)
    try:
        env = g.guest_env("alice", "client")
        extra = json.dumps({k: v for k, v in env.items() if k.startswith("KRB5")})
        with g.capture("mission", iface="vs", bpf=f"host {CLIENT_ADDR}", snaplen=0) as pcap:
            r = g.run(
                g.python_argv(str(Path(__file__).resolve()), "guest", extra),
                env=g.guest_env(None),
                timeout=300,
            )
        assert r.ok, r.stderr[-3000:]
        res = json.loads(r.stdout.strip().splitlines()[-1])
        print(json.dumps(res, indent=1))
    finally:
        g.run(f"ip -n client addr del {CLIENT_ADDR}/24 dev vc; ip addr del {SERVER_ADDR}/24 dev vs")
    assert res["ready"] == [True, True], res.get("logs")
    # 1. latched and bound over kernel ESP
    latched = res["latched"]
    assert latched["rc"] == 0, latched["err"]
    assert latched["out"] == f"program {PROG} version 1 ready and waiting (channel_prot)\n", latched
    assert latched["row"] is not None and "(LATCHED_BINDING_CONF, BOUND)" in latched["row"], latched["err"]
    assert "bound, channel_prot" in latched["row"]
    assert res["esp_client_max"] > 0 and res["esp_server_max"] > 0, res
    assert "latched to raw key" in res["serve_log"], res["serve_log"]
    # 2. no key manager on the server: BYPASS fallback with krb5p, and how long it took
    fallback = res["fallback"]
    assert res["server_keyd_rc"] == 0
    assert fallback["rc"] == 0, fallback["err"]
    assert fallback["out"] == f"program {PROG} version 1 ready and waiting (krb5p)\n", fallback
    row = fallback["row"]
    assert row is not None and "(NOT_LATCHED, NOT_ATTEMPTED)" in row and "IKE_TIMEOUT" in row, fallback["err"]
    seconds = float(re.search(r"\) in ([0-9.]+)s:", row).group(1))  # type: ignore[union-attr]
    assert seconds >= IKE_TIMEOUT  # it waited for IKE, then connected in the clear
    print(f"fallback row after {seconds:.3f}s: {row}")
    # the capture on the server's veth, split at the start of phase 2
    rows = read_fields(pcap, ("frame.time_epoch", "ip.proto", "udp.dstport"), f"ip.addr == {SERVER_ADDR}")
    marked = read_fields(pcap, ("frame.time_epoch",), f'frame contains "{HOST_MARK}"')
    split = res["t_fallback"]
    phase1 = [(p, u) for t, p, u in rows if float(t) < split]
    phase2 = [(p, u) for t, p, u in rows if float(t) >= split]
    assert any(p == "50" for p, _ in phase1), phase1  # ESP
    assert any(p == "17" and u == "500" for p, u in phase1), phase1  # IKE
    assert all(p == "50" or (p == "17" and u == "500") for p, u in phase1), phase1  # nothing else
    assert not [t for (t,) in marked if float(t) < split], marked  # no cleartext Kerberos
    assert any(p == "6" for p, _ in phase2), phase2  # the fallback is clear TCP (krb5p inside)
    assert [t for (t,) in marked if float(t) >= split], "the principal's host name is visible in phase 2"


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "guest":
        sys.exit("usage: test_mission_guest.py guest [KRB5 env JSON]   (runs inside the UML guest)")
    t0 = time.monotonic()
    result = asyncio.run(_guest())
    result["seconds"] = round(time.monotonic() - t0, 2)
    print(json.dumps(result))
