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
2. A client holding a latched, bound connection open (an in-guest ProtectedConnection on the
   kernel world, in netns client) while the server's keyd is stopped (SIGTERM; it deletes its IKE
   SA with the client's keyd): the client gets ALERT BROKEN and resets the connection, its key
   manager has put an exact DISCARD policy on the old 5-tuple, nothing of that 5-tuple leaves the
   client in clear afterwards, and the next call reconnects and falls back to krb5p.
3. The server's keyd stopped: ``ping --sec auto`` falls back (IKE times out, BYPASS) to krb5p in
   the clear; the row, its reason and the time it took are reported, and the same capture check
   now finds the TCP and the principal's host name (so the check of phase 1 can fail).

This file is also the guest-side script: ``python tests/interop/test_mission_guest.py guest``
prints one JSON line of observations.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from interop.guest_keyd import Proc, keyd_ready, rpclatch_argv, write_key

CLIENT_ADDR = "203.0.113.11"
SERVER_ADDR = "203.0.113.12"
PORT = 5663  # 2049 is the guest nfsd's
TARGET = "nfs@guest.rpclatch.test"
HOST_MARK = "guest.rpclatch.test"  # in clear in the Kerberos AP-REQ of an unprotected INIT
IKE_TIMEOUT = 2.0
PROG = 0x20000A11

pytestmark = [pytest.mark.uml, pytest.mark.root]


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


async def _holder(c_sock: Path, go: asyncio.StreamReader) -> dict[str, Any]:
    """Runs in netns client: a latched, bound connection kept open across the server keyd's stop."""
    from rpclatch.connect import ConnectionReset, ConnectPolicy, FallbackService, ProtectedConnection
    from rpclatch.connect.gss import RpcsecGssConnector
    from rpclatch.connect.kernel import KernelClientWorld
    from rpclatch.gss.provider import GssapiProvider
    from rpclatch.ipsec.latch import LatchState
    from rpclatch.rpc.testprog import PROC_ECHO, decode_opaque, encode_opaque

    res: dict[str, Any] = {}
    world = KernelClientWorld(SERVER_ADDR, c_sock)
    await world.start()
    gss = RpcsecGssConnector(GssapiProvider(), TARGET, PROG, 1, FallbackService.PRIVACY)
    pc = ProtectedConnection(world, gss, ConnectPolicy(port=PORT, ike_timeout=IKE_TIMEOUT))

    async def echo() -> str:
        data = b"holder-payload" * 64
        assert decode_opaque(await pc.acall(PROG, 1, PROC_ECHO, encode_opaque(data))) == data
        return pc.security.gss_service.sec_name

    try:
        await pc.aconnect()
        res["first"] = await echo()
        link = pc.link
        assert link is not None
        res["five_tuple"] = link.five_tuple
        print(json.dumps({"latched": link.five_tuple}), flush=True)
        await go.readline()  # the server's keyd is being stopped
        end = time.monotonic() + 15
        while link.latch_state() is not LatchState.BROKEN and time.monotonic() < end:
            await asyncio.sleep(0.05)
        res["state_after_stop"] = str(link.latch_state())
        res["open_after_alert"] = link.is_open
        res["policies"] = subprocess.run(["ip", "xfrm", "policy"], capture_output=True, text=True).stdout
        try:
            res["second"] = await echo()
        except ConnectionReset as exc:
            res["second"] = f"reset: {exc}"
        res["records"] = [r.summary() for r in pc.history]
        res["generation"] = pc.security.generation
    finally:
        await pc.aclose()
        await world.close()
    return res


async def _holder_main(c_sock: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return await _holder(Path(c_sock), reader)


def _ping(c_sock: Path, env: dict[str, str]) -> dict[str, Any]:
    import os

    argv = [
        "ip",
        "netns",
        "exec",
        "client",
        *rpclatch_argv(),
        "-v",
        "rpc",
        "ping",
        SERVER_ADDR,
        str(PROG),
        "1",
    ]
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
    write_key(tmp / "c.pem")
    write_key(tmp / "s.pem")
    c_sock, s_sock = tmp / "c.sock", tmp / "s.sock"
    keyd = [*rpclatch_argv(), "ipsec", "keyd"]
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
        res["ready"] = [await keyd_ready(c_sock, c_keyd), await keyd_ready(s_sock, s_keyd)]
        if not all(res["ready"]):
            res["logs"] = [c_keyd.text()[-2000:], s_keyd.text()[-2000:]]
            return res
        server = Proc(
            [
                *rpclatch_argv(),
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
        # 2. a latched connection held open while the server's key manager stops
        import os

        holder = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                "client",
                sys.executable,
                str(Path(__file__).resolve()),
                "holder",
                str(c_sock),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        assert holder.stdin is not None and holder.stdout is not None
        first = await asyncio.to_thread(holder.stdout.readline)
        res["holder_latched"] = json.loads(first)["latched"] if first.startswith("{") else first
        res["t_break"] = time.time()
        res["server_keyd_rc"] = s_keyd.stop()
        holder.stdin.write("go\n")
        holder.stdin.flush()
        out, err = await asyncio.to_thread(holder.communicate, None, 120)
        res["holder"] = json.loads(out.strip().splitlines()[-1]) if holder.returncode == 0 else None
        res["holder_err"] = err[-3000:]
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
    # the server's port 500 is closed: its kernel answers IKE_SA_INIT with an ICMP port
    # unreachable, and the client's keyd fails the latch on it instead of waiting for the timeout
    assert row is not None and "(NOT_LATCHED, NOT_ATTEMPTED)" in row, fallback["err"]
    assert "IKE_UNREACHABLE" in row, row
    seconds = float(re.search(r"\) in ([0-9.]+)s:", row).group(1))  # type: ignore[union-attr]
    print(f"fallback row after {seconds:.3f}s: {row}")
    # the capture on the server's veth: phase 1 ends when the server's keyd is stopped, phase 3
    # starts with the last ping
    rows = read_fields(pcap, ("frame.time_epoch", "ip.proto", "udp.dstport"), f"ip.addr == {SERVER_ADDR}")
    marked = read_fields(pcap, ("frame.time_epoch",), f'frame contains "{HOST_MARK}"')
    phase1 = [(p, u) for t, p, u in rows if float(t) < res["t_break"]]
    phase3 = [(p, u) for t, p, u in rows if float(t) >= res["t_fallback"]]
    assert any(p == "50" for p, _ in phase1), phase1  # ESP
    assert any(p == "17" and u == "500" for p, u in phase1), phase1  # IKE
    assert all(p == "50" or (p == "17" and u == "500") for p, u in phase1), phase1  # nothing else
    assert not [t for (t,) in marked if float(t) < res["t_break"]], marked  # no cleartext Kerberos
    assert any(p == "6" for p, _ in phase3), phase3  # the fallback is clear TCP (krb5p inside)
    assert [t for (t,) in marked if float(t) >= res["t_fallback"]], "the host name is visible in phase 3"
    # 2. the held connection: ALERT BROKEN -> reset, DISCARD on its 5-tuple, then the fallback
    holder = res["holder"]
    assert holder is not None, res["holder_err"]
    assert holder["first"] == "channel_prot"
    assert holder["state_after_stop"] == "LatchState.BROKEN" and holder["open_after_alert"] is False, holder
    sport = holder["five_tuple"].split(" -> ")[0].rsplit(":", 1)[1]
    assert re.search(rf"sport {sport} dport {PORT}[\s\S]*?action block", holder["policies"]), holder[
        "policies"
    ]
    assert holder["second"] == "krb5p" and holder["generation"] == 2, holder
    old_flow_clear = read_fields(
        pcap,
        ("frame.time_epoch", "tcp.flags"),
        f"ip.src == {CLIENT_ADDR} && tcp.srcport == {sport}",
    )
    assert not [t for t, _ in old_flow_clear if float(t) >= res["t_break"]], old_flow_clear
    # what the server sent on the old 5-tuple after its keyd went (its own reset): reported only
    server_clear = read_fields(
        pcap, ("frame.time_epoch", "tcp.flags"), f"ip.dst == {CLIENT_ADDR} && tcp.dstport == {sport}"
    )
    print(f"server -> old client 5-tuple in clear after the keyd stop: {server_clear}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "holder":
        print(json.dumps(asyncio.run(_holder_main(sys.argv[2]))))
        sys.exit(0)
    if len(sys.argv) < 2 or sys.argv[1] != "guest":
        sys.exit("usage: test_mission_guest.py guest [KRB5 env JSON]   (runs inside the UML guest)")
    t0 = time.monotonic()
    result = asyncio.run(_guest())
    result["seconds"] = round(time.monotonic() - t0, 2)
    print(json.dumps(result))
