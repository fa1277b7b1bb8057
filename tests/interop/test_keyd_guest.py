"""keyd on real kernel ESP in the UML guest (the host kernel has no ESP transform).

Two key-manager daemons run inside the guest, one in netns ``client`` and one in the guest's root
netns, on extra TEST-NET-3 addresses 203.0.113.1 / 203.0.113.2 added to the harness's veth (so the
harness's static SAs and policies for 198.51.100.1/2 do not apply). A client binds its TCP source
port, asks its keyd for CREATE_CONNECTION_LATCH of that exact 5-tuple, connects once it is
ESTABLISHED, and sends data: the negotiated kernel ESP SAs count it. INQUIRE_LATCH names the
server's key, RELEASE_LATCH and teardown remove everything; with the server's keyd gone a new
CREATE_CONNECTION_LATCH fails with a typed error within its timeout.

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

CLIENT_ADDR = "203.0.113.1"
SERVER_ADDR = "203.0.113.2"
PORT = 5662  # 2049 is the guest nfsd's (bound to every address)
CLIENT_PORT = 45700
PAYLOAD = 64 * 1024

pytestmark = [pytest.mark.uml, pytest.mark.root]


def _esp_bytes(netns: str | None) -> int:
    argv = ["ip", "-s", "xfrm", "state"]
    if netns is not None:
        argv = ["ip", "-n", netns, *argv[1:]]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return sum(int(n) for n in re.findall(r"(\d+)\(bytes\)", out))


def _states(netns: str | None) -> int:
    argv = ["ip", "xfrm", "state"] if netns is None else ["ip", "-n", netns, "xfrm", "state"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    # only ours: the harness keeps static SAs between 198.51.100.1 and .2 in both namespaces
    return sum(1 for line in out.splitlines() if line.startswith("src 203.0.113."))


async def _guest() -> dict[str, Any]:
    import ipaddress

    from cryptography.hazmat.primitives.asymmetric import ed25519

    from rpclatch.ipsec.ike.config import Credentials, IkeConfig
    from rpclatch.ipsec.ike.udp import NegotiatedKeys
    from rpclatch.ipsec.keyd.daemon import KeydDaemon
    from rpclatch.ipsec.keyd.server import KeydClient
    from rpclatch.ipsec.model import AddressRange, AuthMethod, Selector
    from rpclatch.ipsec.pad import ChildSaAuthorization, PadEntry, PeerAuthorizationDatabase, PublicKeyPattern
    from rpclatch.ipsec.xfrm.backend import XfrmBackend
    from rpclatch.ipsec.xfrm.netns import open_socket

    res: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp())
    pad_entry = PadEntry(
        "btns", PublicKeyPattern(), AuthMethod.RAW_PUBLIC_KEY, ChildSaAuthorization(own_address_only=True)
    )

    async def start(netns: str | None, addr: str, path: Path) -> KeydDaemon:
        config = IkeConfig(
            Credentials.raw_key(ed25519.Ed25519PrivateKey.generate()),
            PeerAuthorizationDatabase([pad_entry]),
            (Selector(AddressRange.single(ipaddress.ip_address(addr)), None),),
        )
        sock = open_socket(netns, socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((addr, 500))
        keys = NegotiatedKeys()
        return await KeydDaemon.start(config, sock, path, backend=XfrmBackend(netns, keys), keys=keys)

    c_keyd = await start("client", CLIENT_ADDR, tmp / "c.sock")
    s_keyd = await start(None, SERVER_ADDR, tmp / "s.sock")
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((SERVER_ADDR, PORT))
    listener.listen(1)
    listener.setblocking(False)
    conn = open_socket("client", socket.AF_INET, socket.SOCK_STREAM)
    try:
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
        answer = await client.call("CREATE_CONNECTION_LATCH", timeout=5, **flow)
        res["create_seconds"] = round(time.monotonic() - t0, 3)
        res["create"] = answer
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
        info = await client.call("INQUIRE_LATCH", latch=answer["latch"])
        res["peer_spki"] = info.get("peer_spki")
        res["server_spki"] = (s_keyd.endpoint.dispatcher.config.credentials.spki or b"").hex()
        server_client = await KeydClient.connect(tmp / "s.sock")
        found = await server_client.call(
            "FIND_LATCH",
            local_addr=SERVER_ADDR,
            local_port=PORT,
            remote_addr=CLIENT_ADDR,
            remote_port=CLIENT_PORT,
        )
        res["found"] = found.get("ok")
        await server_client.close()
        accepted.close()
        res["release"] = (await client.call("RELEASE_LATCH", latch=answer["latch"])).get("ok")
        await asyncio.sleep(0.5)
        res["client_states_after_release"] = _states("client")
        res["client_events"] = [type(e).__name__ for _r, e in c_keyd.endpoint.events]
        # no keyd on the peer any more: a typed failure within the timeout
        await s_keyd.close()
        t0 = time.monotonic()
        failed = await client.call(
            "CREATE_CONNECTION_LATCH", timeout=1, **{**flow, "local_port": CLIENT_PORT + 1}
        )
        res["failure_seconds"] = round(time.monotonic() - t0, 3)
        res["failure"] = failed
        await client.close()
    finally:
        conn.close()
        listener.close()
        await c_keyd.close()
        await s_keyd.close()
    res["left_states"] = _states("client") + _states(None)
    return res


def guest_main() -> dict[str, Any]:
    return asyncio.run(_guest())


def test_keyd_connection_latch_over_kernel_esp(nfsd_guest: Any) -> None:
    g = nfsd_guest
    g.run(f"ip -n client addr add {CLIENT_ADDR}/24 dev vc && ip addr add {SERVER_ADDR}/24 dev vs", check=True)
    try:
        r = g.run(g.python_argv(str(Path(__file__).resolve()), "guest"), env=g.guest_env(None), timeout=120)
        assert r.ok, r.stderr[-3000:]
        res = json.loads(r.stdout.strip().splitlines()[-1])
        print(json.dumps(res))
    finally:
        g.run(f"ip -n client addr del {CLIENT_ADDR}/24 dev vc; ip addr del {SERVER_ADDR}/24 dev vs")
    assert res["create"]["ok"] is True, res["create"]
    assert res["received"] == PAYLOAD
    assert res["after"] - res["before"] >= PAYLOAD  # the data went through the negotiated ESP SAs
    assert res["peer_spki"] == res["server_spki"] and res["peer_spki"]
    assert res["found"] is True
    assert res["release"] is True
    # releasing the initiator's latch deleted its IKE SA (and CHILD_SA) and the kernel states
    assert res["client_states_after_release"] == 0
    assert res["client_events"][-2:] == ["ChildSaDeleted", "IkeSaDeleted"]
    assert res["failure"]["ok"] is False
    assert res["failure"]["error"] in ("IKE_TIMEOUT", "IKE_FAILED")
    assert res["left_states"] == 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] != "guest":
        sys.exit("usage: test_keyd_guest.py guest   (runs inside the UML guest)")
    t0 = time.monotonic()
    result = guest_main()
    result["seconds"] = round(time.monotonic() - t0, 2)
    print(json.dumps(result))
