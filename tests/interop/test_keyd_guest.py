"""``rpclatch ipsec keyd`` on real kernel ESP in the UML guest (the host kernel has no ESP transform).

Two key-manager daemons run inside the guest as real ``rpclatch ipsec keyd`` processes, one with
``--netns client`` and one in the guest's root netns, on extra TEST-NET-3 addresses 203.0.113.1 /
203.0.113.2 added to the harness's veth (so the harness's static SAs and policies for
198.51.100.1/2 do not apply). Each has a key file made here; the server's keyd accepts only the
client's key (``--accept`` a key file), the client's any raw key (BTNS). Driven through their
control sockets (RFC 5660 §2.2): a client binds its TCP source port, asks its keyd for
CREATE_CONNECTION_LATCH of that exact 5-tuple, connects once it is ESTABLISHED, and sends data:
the negotiated kernel ESP SAs count it. Meanwhile ``rpclatch ipsec status`` (table and
``--json``) shows the IKE SA, the CHILD_SA with the SPIs ``ip xfrm state`` lists, and the latch.
INQUIRE_LATCH names the server's key, FIND_LATCH finds the acceptor's latch, RELEASE_LATCH
deletes the kernel SAs; SIGTERM stops a keyd (exit 0, socket and SAs gone) after deleting its
IKE SAs with their peers (the client's latch on it breaks); with the server's keyd stopped a new
CREATE_CONNECTION_LATCH fails with IKE_UNREACHABLE (the kernel answers IKE with an ICMP port
unreachable). A keyd whose socket directory
is on the read-only root exits with a one-line error.

This file is also the guest-side script: ``python tests/interop/test_keyd_guest.py guest`` prints
one JSON line of observations.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from interop.guest_keyd import Proc, keyd_ready, rpclatch_argv, write_key

CLIENT_ADDR = "203.0.113.1"
SERVER_ADDR = "203.0.113.2"
PORT = 5662  # 2049 is the guest nfsd's (bound to every address)
CLIENT_PORT = 45700
PAYLOAD = 64 * 1024

pytestmark = [pytest.mark.uml, pytest.mark.root]


def _ip(netns: str | None, *args: str) -> str:
    argv = ["ip", *args] if netns is None else ["ip", "-n", netns, *args]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _esp_bytes(netns: str | None) -> int:
    return sum(int(n) for n in re.findall(r"(\d+)\(bytes\)", _ip(netns, "-s", "xfrm", "state")))


def _ours(text: str) -> list[str]:
    # only ours: the harness keeps static SAs and policies between 198.51.100.1 and .2
    return [line for line in text.splitlines() if line.startswith("src 203.0.113.")]


def _states(netns: str | None) -> int:
    return len(_ours(_ip(netns, "xfrm", "state")))


def _policies(netns: str | None) -> int:
    return len(_ours(_ip(netns, "xfrm", "policy")))


def _spis(netns: str | None) -> set[str]:
    """SPIs of our ESP states (those between 203.0.113.x addresses)."""
    spis, ours = set(), False
    for line in _ip(netns, "xfrm", "state").splitlines():
        if line.startswith("src "):
            ours = line.startswith("src 203.0.113.")
        elif ours and (m := re.search(r"proto esp spi (0x[0-9a-f]+)", line)):
            spis.add(m.group(1))
    return spis


class Keyd:
    """One ``rpclatch ipsec keyd`` process (stdout/stderr in ``<sock>.log``)."""

    def __init__(self, args: list[str], sock: Path) -> None:
        self.sock = sock
        self.log = sock.with_suffix(".log")
        self._proc = Proc([*rpclatch_argv(), "ipsec", "keyd", *args, "--socket", str(sock)], self.log)
        self.proc = self._proc.proc

    async def ready(self, timeout: float = 60) -> bool:
        """The control socket answers STATUS (the daemon is up), or the process died."""
        return await keyd_ready(self.sock, self._proc, timeout)

    def stop(self, timeout: float = 5) -> dict[str, Any]:
        """SIGTERM by PID; the exit code (None: still running after ``timeout``, then killed)."""
        return {
            "rc": self._proc.stop(timeout),
            "socket_left": self.sock.exists(),
            "log": self.log.read_text(errors="replace")[-2000:],
        }


def _status(sock: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*rpclatch_argv(), "ipsec", "status", "--socket", str(sock), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _no_server_states() -> bool:
    return _states(None) == 0


async def _poll(pred: Any, timeout: float = 5) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await pred():
            return True
        await asyncio.sleep(0.1)
    return bool(await pred())


async def _guest() -> dict[str, Any]:
    from rpclatch.ipsec.keyd.server import KeydClient
    from rpclatch.ipsec.xfrm.netns import open_socket

    res: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp())
    res["client_spki"] = write_key(tmp / "c.pem").hex()
    res["server_spki"] = write_key(tmp / "s.pem").hex()
    c_keyd = Keyd(
        ["--netns", "client", "--address", CLIENT_ADDR, "--key", str(tmp / "c.pem")], tmp / "c.sock"
    )
    s_keyd = Keyd(
        ["--address", SERVER_ADDR, "--key", str(tmp / "s.pem"), "--accept", str(tmp / "c.pub")],
        tmp / "s.sock",
    )
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn = open_socket("client", socket.AF_INET, socket.SOCK_STREAM)
    try:
        res["ready"] = [await c_keyd.ready(), await s_keyd.ready()]
        if not all(res["ready"]):
            res["logs"] = [c_keyd.stop()["log"], s_keyd.stop()["log"]]
            return res
        # the SPKI each daemon announces on its first line is the one of its key file
        res["announced_server_spki"] = re.findall(r"key SPKI ([0-9a-f]+)", s_keyd.log.read_text())
        listener.bind((SERVER_ADDR, PORT))
        listener.listen(1)
        listener.setblocking(False)
        conn.bind((CLIENT_ADDR, CLIENT_PORT))
        conn.setblocking(False)
        client = await KeydClient.connect(tmp / "c.sock")
        flow = {
            "local_addr": CLIENT_ADDR,
            "local_port": CLIENT_PORT,
            "remote_addr": SERVER_ADDR,
            "remote_port": PORT,
        }
        t0 = time.monotonic()
        answer = await client.call("CREATE_CONNECTION_LATCH", timeout=10, **flow)
        res["create_seconds"] = round(time.monotonic() - t0, 3)
        res["create"] = answer
        if not answer.get("ok"):
            return res
        res["before"] = _esp_bytes("client")
        await asyncio.wait_for(loop.sock_connect(conn, (SERVER_ADDR, PORT)), 10)
        accepted, _ = await asyncio.wait_for(loop.sock_accept(listener), 10)
        accepted.setblocking(False)
        await loop.sock_sendall(conn, b"x" * PAYLOAD)
        got = 0
        while got < PAYLOAD:
            chunk = await asyncio.wait_for(loop.sock_recv(accepted, 65536), 10)
            if not chunk:
                break
            got += len(chunk)
        res["received"] = got
        res["after"] = _esp_bytes("client")
        res["server_after"] = _esp_bytes(None)
        # rpclatch ipsec status while the latch is ESTABLISHED, against the kernel's view
        res["xfrm_spis"] = sorted(_spis("client"))
        table, as_json = _status(tmp / "c.sock"), _status(tmp / "c.sock", "--json")
        res["status_table"] = {"rc": table.returncode, "out": table.stdout, "err": table.stderr}
        res["status_json"] = {"rc": as_json.returncode, "err": as_json.stderr}
        res["status"] = json.loads(as_json.stdout) if as_json.returncode == 0 else None
        info = await client.call("INQUIRE_LATCH", latch=answer["latch"])
        res["inquire"] = info
        server_client = await KeydClient.connect(tmp / "s.sock")
        found = await server_client.call(
            "FIND_LATCH",
            local_addr=SERVER_ADDR,
            local_port=PORT,
            remote_addr=CLIENT_ADDR,
            remote_port=CLIENT_PORT,
        )
        res["found"] = found
        if found.get("ok"):
            res["found_inquire"] = await server_client.call("INQUIRE_LATCH", latch=found["latch"])
        await server_client.close()
        accepted.close()
        res["release"] = (await client.call("RELEASE_LATCH", latch=answer["latch"])).get("ok")

        async def client_clean() -> bool:
            status = await client.call("STATUS")
            return not status["ike_sas"] and not status["child_sas"] and _states("client") == 0

        res["client_clean_after_release"] = await _poll(client_clean)
        await _poll(_no_server_states)
        res["server_states_after_release"] = _states(None)
        # a second latch, then SIGTERM to the server's keyd: it deletes the IKE SA with the client's
        # keyd (whose latch breaks, its SAs go), exits 0, leaves no socket and nothing in the kernel
        second = await client.call(
            "CREATE_CONNECTION_LATCH", timeout=10, **{**flow, "local_port": CLIENT_PORT + 2}
        )
        res["second"] = second
        res["client_states_second"] = _states("client")
        res["server_stop"] = s_keyd.stop()
        res["server_left"] = {"states": _states(None), "policies": _policies(None)}
        if second.get("ok"):
            try:
                res["second_alert"] = await asyncio.wait_for(client.receive(), 5)
            except TimeoutError:
                res["second_alert"] = None
            res["client_clean_after_server_stop"] = await _poll(client_clean)
            res["second_release"] = (await client.call("RELEASE_LATCH", latch=second["latch"])).get("ok")
        # no keyd on the peer any more: a typed failure within the timeout
        t0 = time.monotonic()
        failed = await client.call(
            "CREATE_CONNECTION_LATCH", timeout=1, **{**flow, "local_port": CLIENT_PORT + 1}
        )
        res["failure_seconds"] = round(time.monotonic() - t0, 3)
        res["failure"] = failed
        await client.close()
        res["client_stop"] = c_keyd.stop()
        res["client_left"] = {"states": _states("client"), "policies": _policies("client")}
        # a socket directory on the read-only root: one line, nonzero, no traceback
        bad = subprocess.run(
            [
                *rpclatch_argv(),
                "ipsec",
                "keyd",
                "--address",
                SERVER_ADDR,
                "--socket",
                "/usr/rpclatch-keyd.sock",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        res["bad_socket_dir"] = {"rc": bad.returncode, "err": bad.stderr}
    finally:
        conn.close()
        listener.close()
        for keyd in (c_keyd, s_keyd):
            if keyd.proc.poll() is None:
                keyd.stop()
    return res


def guest_main() -> dict[str, Any]:
    return asyncio.run(_guest())


def test_keyd_connection_latch_over_kernel_esp(nfsd_guest: Any) -> None:
    g = nfsd_guest
    g.run(f"ip -n client addr add {CLIENT_ADDR}/24 dev vc && ip addr add {SERVER_ADDR}/24 dev vs", check=True)
    try:
        r = g.run(g.python_argv(str(Path(__file__).resolve()), "guest"), env=g.guest_env(None), timeout=300)
        assert r.ok, r.stderr[-3000:]
        res = json.loads(r.stdout.strip().splitlines()[-1])
        print(json.dumps(res))
    finally:
        g.run(f"ip -n client addr del {CLIENT_ADDR}/24 dev vc; ip addr del {SERVER_ADDR}/24 dev vs")
    assert res["ready"] == [True, True], res.get("logs")
    assert res["announced_server_spki"] == [res["server_spki"]]
    assert res["create"]["ok"] is True, res["create"]
    assert res["received"] == PAYLOAD
    assert res["after"] - res["before"] >= PAYLOAD  # the data went through the negotiated ESP SAs
    assert res["server_after"] >= PAYLOAD
    # rpclatch ipsec status shows the IKE SA, the CHILD_SA with the kernel's SPIs, and the latch
    status = res["status"]
    assert res["status_json"]["rc"] == 0, res["status_json"]
    assert [(sa["state"], sa["peer"]) for sa in status["ike_sas"]] == [("ESTABLISHED", f"{SERVER_ADDR}:500")]
    assert len(status["child_sas"]) == 1
    child = status["child_sas"][0]
    assert child["ike_sa"] == status["ike_sas"][0]["ike_sa"]
    assert {child["spi_in"], child["spi_out"]} == set(res["xfrm_spis"])  # both kernel SAs, no others
    assert [(latch["latch"], latch["state"]) for latch in status["latches"]] == [
        (res["create"]["latch"], "ESTABLISHED")
    ]
    assert (
        f"{CLIENT_ADDR}" in status["latches"][0]["flow"] and str(CLIENT_PORT) in status["latches"][0]["flow"]
    )
    table = res["status_table"]
    assert table["rc"] == 0 and not table["err"], table
    for text in ("IKE SAs:", "CHILD SAs:", "Latches:", child["spi_in"], child["spi_out"], "ESTABLISHED"):
        assert text in table["out"], table["out"]
    # INQUIRE_LATCH: the peer's key is the server keyd's key file
    assert res["inquire"]["ok"] is True and res["inquire"]["state"] == "ESTABLISHED"
    assert res["inquire"]["peer_spki"] == res["server_spki"]
    assert res["inquire"]["channel_bindings"]
    assert res["found"]["ok"] is True, res["found"]
    assert res["found_inquire"]["peer_spki"] == res["client_spki"]
    assert res["found_inquire"]["channel_bindings"] == res["inquire"]["channel_bindings"]
    assert res["release"] is True
    # releasing the initiator's latch deleted its IKE SA, CHILD_SA and kernel states (both ends)
    assert res["client_clean_after_release"] is True
    assert res["server_states_after_release"] == 0
    # the server's keyd stopped with an IKE SA up: it deleted it with the client's keyd
    assert res["second"]["ok"] is True and res["client_states_second"] == 2, res["second"]
    assert res["second_alert"] is not None, "no BROKEN alert after the peer's keyd stopped"
    assert (res["second_alert"]["alert"], res["second_alert"]["latch"]) == ("BROKEN", res["second"]["latch"])
    assert res["client_clean_after_server_stop"] is True
    assert res["second_release"] is True
    for stop, left in ((res["server_stop"], res["server_left"]), (res["client_stop"], res["client_left"])):
        assert stop["rc"] == 0 and stop["socket_left"] is False, stop
        assert "Traceback" not in stop["log"], stop["log"]
        assert left == {"states": 0, "policies": 0}
    assert res["failure"]["ok"] is False
    assert res["failure"]["error"] == "IKE_UNREACHABLE", res["failure"]
    bad = res["bad_socket_dir"]
    assert bad["rc"] == 2 and bad["err"].count("\n") == 1 and "--socket" in bad["err"], bad


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] != "guest":
        sys.exit("usage: test_keyd_guest.py guest   (runs inside the UML guest)")
    t0 = time.monotonic()
    result = guest_main()
    result["seconds"] = round(time.monotonic() - t0, 2)
    print(json.dumps(result))
