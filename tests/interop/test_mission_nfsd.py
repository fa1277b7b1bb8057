"""The mission against the real Linux nfsd (issue #13): ``rpclatch nfs ... --sec auto`` latches
its connection to the nfsd host over kernel ESP negotiated by two ``rpclatch ipsec keyd``
processes, in the session's nfsd guest (the same boot as the other Linux nfsd tests).

In the guest: a keyd in netns ``client`` (203.0.113.21) and one in the root netns beside nfsd
(203.0.113.22), on TEST-NET-3 addresses added to the harness's veth for this test; nfsd knows
nothing of them (it listens on every address, port 2049). As alice (client keytab), from netns
``client``:

1. ``rpclatch -v nfs put`` then ``get`` of 1 MiB under ``/krb5only`` with ``--sec auto --keyd``:
   the data round-trips (SHA-256 of the local file, the file on the server, the download). Linux
   nfsd answers the RPCSEC_GSS v2 INIT with AUTH_BADCRED, so the latch is kept and krb5p (v1)
   runs over it; the row is the policy table's for that case -- (LATCHED_BINDING_CONF, MISMATCH):
   nothing authenticates the refusal of v2, so it counts as a failed binding (RFC 5403 §9), the
   context is destroyed and a fresh one made, with the SECURITY WARNING naming AUTH_BADCRED and
   "a v1-only server, or a forged refusal". The ESP byte counters advance at both ends.
2. An NFS client holding its latched connection open (the same hook, in-guest): ``rpclatch ipsec
   status --json`` shows the latch ESTABLISHED for its 5-tuple at both ends, ``ip xfrm state`` has
   the CHILD_SA's two ESP SAs in both namespaces, and meanwhile the guest's own kernel NFS client
   (a krb5p mount made before) writes and reads a file on the same nfsd.
3. The capture on the server's veth: between the two addresses only ESP and IKE, no TCP in clear
   and no cleartext byte of the Kerberos exchange (the service principal's host name).

This file is also the guest-side script: ``python tests/interop/test_mission_nfsd.py guest TARGET
MOUNTPOINT EXPORT-ROOT KRB5-ENV-JSON`` prints one JSON line of observations.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from interop.guest_keyd import Proc, keyd_ready, rpclatch_argv, write_key

CLIENT_ADDR = "203.0.113.21"
SERVER_ADDR = "203.0.113.22"
IKE_TIMEOUT = 2.0
SIZE = 1 << 20
HOST_MARK = "guest.rpclatch.test"  # in clear in the Kerberos AP-REQ of an unprotected INIT

pytestmark = [pytest.mark.uml, pytest.mark.root]


def _xfrm(netns: str | None, *args: str) -> str:
    argv = ["ip", *args] if netns is None else ["ip", "-n", netns, *args]
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


def _esp_bytes(netns: str | None) -> int:
    """Bytes counted by our ESP states (those between 203.0.113.x addresses)."""
    total, ours = 0, False
    for line in _xfrm(netns, "-s", "xfrm", "state").splitlines():
        if line.startswith("src "):
            ours = line.startswith("src 203.0.113.")
        elif ours and (m := re.match(r"\s*(\d+)\(bytes\)", line)):
            total += int(m.group(1))
    return total


def _spis(netns: str | None) -> list[str]:
    """SPIs of our ESP states."""
    spis, ours = [], False
    for line in _xfrm(netns, "xfrm", "state").splitlines():
        if line.startswith("src "):
            ours = line.startswith("src 203.0.113.")
        elif ours and (m := re.search(r"proto esp spi (0x[0-9a-f]+)", line)):
            spis.append(m.group(1))
    return sorted(spis)


class Sampler:
    """Polls a namespace's ESP byte counters until stopped; keeps the largest total (the SAs go
    when the latch is released)."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self.max = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.max = max(self.max, _esp_bytes(self.netns))
            time.sleep(0.01)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        return self.max


async def _find_latch(sock: Path, five_tuple: str) -> dict[str, Any]:
    """What a server application beside nfsd would ask its key manager about the accepted
    connection: FIND_LATCH for the 5-tuple (server side), then INQUIRE_LATCH (RFC 5660 §2.3)."""
    from rpclatch.ipsec.keyd.server import KeydClient

    m = re.fullmatch(r"tcp (\S+):(\d+) -> (\S+):(\d+)", five_tuple)
    if m is None:
        return {"ok": False, "detail": f"bad 5-tuple {five_tuple!r}"}
    client = await KeydClient.connect(sock)
    try:
        found = await asyncio.wait_for(
            client.call(
                "FIND_LATCH",
                local_addr=m.group(3),
                local_port=int(m.group(4)),
                remote_addr=m.group(1),
                remote_port=int(m.group(2)),
            ),
            10,
        )
        if not found.get("ok"):
            return dict(found)
        info = await asyncio.wait_for(client.call("INQUIRE_LATCH", latch=found["latch"]), 10)
        return {"found": found, "inquire": info, "status": _status(sock)}
    finally:
        await client.close()


def _status(sock: Path) -> dict[str, Any] | str:
    r = subprocess.run(
        [*rpclatch_argv(), "ipsec", "status", "--socket", str(sock), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return json.loads(r.stdout) if r.returncode == 0 else f"rc {r.returncode}: {r.stderr[-1000:]}"


def _nfs(env: dict[str, str], c_sock: Path, target: str, *args: str) -> dict[str, Any]:
    """``rpclatch -v nfs ARGS --sec auto --keyd`` in netns client."""
    argv = ["ip", "netns", "exec", "client", *rpclatch_argv(), "-v", "nfs", *args]
    argv += ["--sec", "auto", "--keyd", str(c_sock), "--target", target, "--ike-timeout", str(IKE_TIMEOUT)]
    r = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, env={**os.environ, **env}, check=False
    )
    lines = r.stderr.splitlines()
    return {
        "rc": r.returncode,
        "out": r.stdout[-2000:],
        "err": r.stderr[-6000:],
        "rows": [line for line in lines if line.startswith("rpclatch: security: row")],
        "warnings": [line for line in lines if "SECURITY WARNING" in line],
    }


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the in-guest NFS client holding its latched connection (netns client) ---------------------


async def _holder(c_sock: Path, target: str, path: str, go: asyncio.StreamReader) -> dict[str, Any]:
    from rpclatch.connect import ConnectPolicy
    from rpclatch.connect.kernel import KernelClientWorld
    from rpclatch.connect.nfs import KernelConnectionSecurity
    from rpclatch.gss.provider import GssapiProvider
    from rpclatch.nfs4.client import Nfs4Client
    from rpclatch.nfs4.options import Nfs4Options

    res: dict[str, Any] = {}
    hook = KernelConnectionSecurity(
        KernelClientWorld(SERVER_ADDR, c_sock),
        target,
        GssapiProvider(),
        ConnectPolicy(ike_timeout=IKE_TIMEOUT),
    )
    data = os.urandom(256 * 1024)
    try:
        client = await Nfs4Client.connect(
            SERVER_ADDR, Nfs4Options(sec="auto", gss_target=target, timeout=60), security_hook=hook
        )
        try:
            await client.write_file(path, data)
            res["first_read_ok"] = await client.read_bytes(path) == data
            res["record"] = hook.records[-1].to_json()
            res["flavor"] = client.flavor.value if client.flavor else None
            print(json.dumps({"holding": res["record"]["five_tuple"]}), flush=True)
            await go.readline()  # the outer script looked at both ends and used the kernel client
            res["second_read_ok"] = await client.read_bytes(path) == data
            await client.remove(path)
            res["records"] = len(hook.records)
        finally:
            await client.close()
        res["teardown_error"] = None if client.teardown_error is None else str(client.teardown_error)
    finally:
        await hook.close()
    return res


async def _holder_main(c_sock: str, target: str, path: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return await _holder(Path(c_sock), target, path, reader)


# -- the guest script --------------------------------------------------------------------------


async def _guest(target: str, mountpoint: str, export_root: str, env: dict[str, str]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp())
    res["client_spki"] = write_key(tmp / "c.pem").hex()
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
    tag = uuid.uuid4().hex[:8]
    try:
        res["ready"] = [await keyd_ready(c_sock, c_keyd), await keyd_ready(s_sock, s_keyd)]
        if not all(res["ready"]):
            return res
        # 1. put and get through the CLI, latched
        local = tmp / "up.bin"
        local.write_bytes(os.urandom(SIZE))
        res["local_sha256"] = _sha(local)
        remote = f"/krb5only/mission-{tag}.bin"
        res["remote"] = remote
        res["t_start"] = time.time()
        client_esp, server_esp = Sampler("client"), Sampler(None)
        res["put"] = await asyncio.to_thread(
            _nfs, env, c_sock, target, "put", f"{SERVER_ADDR}:{remote}", str(local)
        )
        down = tmp / "down.bin"
        res["get"] = await asyncio.to_thread(
            _nfs, env, c_sock, target, "get", f"{SERVER_ADDR}:{remote}", str(down)
        )
        res["esp_client_max"], res["esp_server_max"] = client_esp.stop(), server_esp.stop()
        res["down_sha256"] = _sha(down) if down.exists() else None
        # the same get, telling rpclatch the server is v1-only: no binding attempted, no warning
        down_v1 = tmp / "down-v1.bin"
        res["get_v1"] = await asyncio.to_thread(
            _nfs, env, c_sock, target, "get", f"{SERVER_ADDR}:{remote}", str(down_v1), "--gss-version", "1"
        )
        res["down_v1_sha256"] = _sha(down_v1) if down_v1.exists() else None
        # 2. a latched NFS connection held open: both ends, the kernel's SAs, the kernel client
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
                target,
                f"/krb5only/holder-{tag}.bin",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        assert holder.stdin is not None and holder.stdout is not None
        try:
            first = await asyncio.to_thread(holder.stdout.readline)
            res["holding"] = json.loads(first)["holding"] if first.startswith("{") else first
            res["status_client"] = _status(c_sock)
            res["status_server"] = _status(s_sock)
            res["spis_client"], res["spis_server"] = _spis("client"), _spis(None)
            if isinstance(res["holding"], str) and res["holding"].startswith("tcp "):
                res["server_latch"] = await _find_latch(s_sock, res["holding"])
            # the guest's kernel NFS client on the same nfsd, meanwhile
            kdata = f"kernel client beside the latch {tag}\n"
            kfile = Path(mountpoint) / f"kernel-{tag}.txt"
            try:
                kfile.write_text(kdata)
                os.sync()
                # through nfsd: the server's file system has what the kernel client wrote
                on_server = (Path(export_root) / kfile.name).read_text()
                res["kernel_client"] = kfile.read_text() == kdata == on_server
                kfile.unlink()
            except OSError as exc:
                res["kernel_client"] = f"failed: {exc}"
            holder.stdin.write("go\n")
            holder.stdin.flush()
            out, err = await asyncio.to_thread(holder.communicate, None, 180)
        finally:
            if holder.poll() is None:  # it hung or we failed: stop it, by its PID
                holder.kill()
                holder.wait()
        lines = out.strip().splitlines()
        res["holder"] = json.loads(lines[-1]) if holder.returncode == 0 and lines else None
        res["holder_err"] = err[-4000:]
        res["t_end"] = time.time()
    finally:
        for proc in (c_keyd, s_keyd):
            proc.stop()
        res["keyd_logs"] = [c_keyd.text()[-2000:], s_keyd.text()[-2000:]]
    return res


def test_nfs_sec_auto_latched_to_linux_nfsd_over_kernel_esp(nfsd_guest: Any) -> None:
    from interop.capture import read_fields

    g = nfsd_guest
    g.run(f"ip -n client addr add {CLIENT_ADDR}/24 dev vc && ip addr add {SERVER_ADDR}/24 dev vs", check=True)
    mnt = None
    try:
        mnt = g.kernel_mount("/", sec="krb5p", vers="4.1", mountpoint="/tmp/mnt-mission-nfsd")
        env = g.guest_env("alice", "client")
        extra = json.dumps({k: v for k, v in env.items() if k.startswith("KRB5")})
        with g.capture("mission-nfsd", iface="vs", bpf=f"host {CLIENT_ADDR}", snaplen=0) as pcap:
            r = g.run(
                g.python_argv(
                    str(Path(__file__).resolve()), "guest", g.service_name, mnt, g.server_path("/"), extra
                ),
                env=g.guest_env(None),
                timeout=600,
            )
        assert r.ok, r.stderr[-3000:]
        res = json.loads(r.stdout.strip().splitlines()[-1])
        print(json.dumps(res, indent=1))
        server_sha = g.server_sha256(res["remote"]) if res.get("remote") else None
        if res.get("remote"):
            g.run(["rm", "-f", g.server_path(res["remote"])])
    finally:
        if mnt is not None:
            g.kernel_umount(mnt)
        g.run(f"ip -n client addr del {CLIENT_ADDR}/24 dev vc; ip addr del {SERVER_ADDR}/24 dev vs")
    assert res["ready"] == [True, True], res.get("keyd_logs")
    # 1. put and get, latched: the data round-trips
    put, get = res["put"], res["get"]
    assert put["rc"] == 0 and get["rc"] == 0, (put["err"], get["err"])
    assert res["local_sha256"] == server_sha == res["down_sha256"]
    for run in (put, get):
        assert len(run["rows"]) == 1, run["err"]
        row = run["rows"][0]
        # the table's row for Linux nfsd: latched, v2 refused (AUTH_BADCRED, unauthenticated), krb5p
        assert "(LATCHED_BINDING_CONF, MISMATCH)" in row, row
        assert "latched to raw key" in row and ", unbound, krb5p: " in row, row
        assert "AUTH_BADCRED" in row and "v1-only server" in row, row
        assert run["warnings"] and "AUTH_BADCRED" in run["warnings"][0], run["err"]
    assert res["esp_client_max"] >= SIZE and res["esp_server_max"] >= SIZE, res
    # --gss-version 1: the table's "no binding by local choice" row, latched, krb5p, no warning
    get_v1 = res["get_v1"]
    assert get_v1["rc"] == 0 and res["down_v1_sha256"] == res["local_sha256"], get_v1["err"]
    assert len(get_v1["rows"]) == 1 and "(LATCHED_BINDING_CONF, UNSUPPORTED)" in get_v1["rows"][0], get_v1
    assert "latched to raw key" in get_v1["rows"][0] and ", unbound, krb5p: " in get_v1["rows"][0]
    assert get_v1["warnings"] == [], get_v1["err"]
    # 2. the held connection: latched at both ends, its ESP SAs in both kernels, the kernel client
    holder = res["holder"]
    assert holder is not None, res["holder_err"]
    record = holder["record"]
    assert record["latched"] is True and record["latch_state"] == "ESTABLISHED", record
    assert (record["latch_outcome"], record["bind_outcome"]) == ("LATCHED_BINDING_CONF", "MISMATCH")
    assert record["gss_service"] == "krb5p" and record["gss_version"] == 1, record
    assert holder["flavor"] == "krb5p" and holder["first_read_ok"] and holder["second_read_ok"], holder
    assert holder["teardown_error"] is None, holder
    sport = res["holding"].split(" -> ")[0].rsplit(":", 1)[1]
    # each key manager names the flow from its own end
    flows = {
        "client": f"{CLIENT_ADDR}:{sport}<->{SERVER_ADDR}:2049/6",
        "server": f"{SERVER_ADDR}:2049<->{CLIENT_ADDR}:{sport}/6",
    }
    # the key manager beside nfsd: the CHILD_SA for exactly that 5-tuple; FIND_LATCH finds the
    # latch (ESTABLISHED, the client's key, ESP), which its status then lists
    server = res["server_latch"]
    assert "inquire" in server, server
    assert (
        server["inquire"]["state"] == "ESTABLISHED" and server["inquire"]["peer_spki"] == res["client_spki"]
    )
    assert server["inquire"]["qop"]["protocol"] == "ESP" and server["inquire"]["channel_bindings"], server
    for side, status, kernel in (
        ("client", res["status_client"], res["spis_client"]),
        ("server", server["status"], res["spis_server"]),
        ("server before FIND_LATCH", res["status_server"], res["spis_server"]),
    ):
        assert isinstance(status, dict), (side, status)
        children = [
            child
            for child in status["child_sas"]
            if f"{CLIENT_ADDR}[{sport}]" in child["selector"] and f"{SERVER_ADDR}[2049]" in child["selector"]
        ]
        assert len(children) == 1, (side, status["child_sas"])
        assert sorted([children[0]["spi_in"], children[0]["spi_out"]]) == sorted(kernel), (side, kernel)
        if side != "server before FIND_LATCH":
            latches = [latch["state"] for latch in status["latches"] if latch["flow"] == flows[side]]
            assert latches == ["ESTABLISHED"], (side, status["latches"])
    assert res["kernel_client"] is True, res["kernel_client"]
    # 3. the capture between the two addresses: only ESP and IKE, no cleartext Kerberos
    fields = ("frame.time_epoch", "ip.proto", "udp.dstport", "ip.src", "tcp.srcport", "tcp.dstport")
    rows = read_fields(pcap, (*fields, "tcp.flags.str", "icmp.type"), f"ip.addr == {SERVER_ADDR}")
    ours = [row for row in rows if res["t_start"] <= float(row[0]) <= res["t_end"]]
    protos = [(row[1], row[2]) for row in ours]
    assert ("50", "") in protos, protos  # ESP
    assert ("17", "500") in protos, protos  # IKE
    # anything else (TCP in clear, ICMP) is shown whole, with its time relative to the start
    stray = [
        (round(float(row[0]) - res["t_start"], 3), *row[1:])
        for row in ours
        if (row[1], row[2]) not in (("50", ""), ("17", "500"))
    ]
    assert not stray, stray
    marked = read_fields(pcap, ("frame.time_epoch",), f'frame contains "{HOST_MARK}"')
    assert not marked, marked


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "holder":
        print(json.dumps(asyncio.run(_holder_main(sys.argv[2], sys.argv[3], sys.argv[4]))))
        sys.exit(0)
    if len(sys.argv) != 6 or sys.argv[1] != "guest":
        sys.exit(
            "usage: test_mission_nfsd.py guest TARGET MOUNTPOINT EXPORT-ROOT KRB5-ENV-JSON (in the guest)"
        )
    t0 = time.monotonic()
    result = asyncio.run(
        _guest(
            sys.argv[2],
            sys.argv[3],
            sys.argv[4],
            {"KRB5_CONFIG": "/etc/krb5.conf", **json.loads(sys.argv[5])},
        )
    )
    result["seconds"] = round(time.monotonic() - t0, 2)
    print(json.dumps(result))
