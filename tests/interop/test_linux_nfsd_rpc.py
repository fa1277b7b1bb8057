"""ONC RPC from this project's client (rpclatch.rpc) to the real Linux nfsd, from the host side.

The host-side namespace reaches the guest over the UML tap (192.0.2.1 -> 192.0.2.2).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from interop.world import NFS_PORT, SERVER_ADDR, NfsdWorld
from rpclatch.rpc.aio import RpcStreamClient
from rpclatch.rpc.auth_sys import AuthNoneClient, AuthSysClient
from rpclatch.rpc.errors import RpcAcceptError
from rpclatch.rpc.messages import AcceptStat

pytestmark = [pytest.mark.uml, pytest.mark.root]

NFS_PROGRAM = 100003


async def _null(
    vers: int, auth: AuthNoneClient | AuthSysClient, prog: int = NFS_PROGRAM
) -> tuple[bytes, str]:
    client = await RpcStreamClient.connect_tcp(SERVER_ADDR, NFS_PORT, auth=auth, timeout=20)
    try:
        peer = client.peername[0]
        return await client.call(prog, vers, 0), peer
    finally:
        await client.close()


@pytest.mark.parametrize("auth", ["none", "sys"])
def test_null_v4_in_process_from_host_namespace(nfsd_guest: NfsdWorld, auth: str) -> None:
    flavor = AuthNoneClient() if auth == "none" else AuthSysClient.for_current_process()
    with nfsd_guest.in_host_netns():
        result, peer = asyncio.run(_null(4, flavor))
    assert result == b""  # NULL returns void
    assert peer == SERVER_ADDR


def test_null_v3_is_prog_mismatch_with_supported_range(nfsd_guest: NfsdWorld) -> None:
    # the guest runs rpc.nfsd -N 3: only NFSv4 is registered, so v3 gets PROG_MISMATCH 4..4
    with nfsd_guest.in_host_netns(), pytest.raises(RpcAcceptError) as info:
        asyncio.run(_null(3, AuthNoneClient()))
    assert info.value.stat is AcceptStat.PROG_MISMATCH
    assert info.value.mismatch == (4, 4)


def test_unknown_program_on_nfs_port_is_prog_unavail(nfsd_guest: NfsdWorld) -> None:
    with nfsd_guest.in_host_netns(), pytest.raises(RpcAcceptError) as info:
        asyncio.run(_null(1, AuthNoneClient(), prog=0x2000FFFF))
    assert info.value.stat is AcceptStat.PROG_UNAVAIL


def test_probe_null_subprocess_in_host_namespace(nfsd_guest: NfsdWorld) -> None:
    res = nfsd_guest.host_run(
        [nfsd_guest.config.python, "-m", "interop.probe", "null", SERVER_ADDR, "--auth", "sys"],
        env=nfsd_guest.host_env(None),
        timeout=60,
    )
    assert res.ok, res
    out = json.loads(res.stdout)
    assert out["ok"] and out["result_len"] == 0 and out["local"][0] == "192.0.2.1"


def test_rpcinfo_lists_nfs_v4_tcp_2049(nfsd_guest: NfsdWorld) -> None:
    res = nfsd_guest.host_run(["rpcinfo", "-p", SERVER_ADDR], timeout=60)
    assert res.ok, res
    rows = {tuple(line.split()[:4]) for line in res.stdout.splitlines()[1:]}
    assert ("100003", "4", "tcp", "2049") in rows
    assert not any(r[0] == "100003" and r[1] == "3" for r in rows)
    ping = nfsd_guest.host_run(["rpcinfo", "-T", "tcp", SERVER_ADDR, "nfs", "4"], timeout=60)
    assert ping.ok and "ready and waiting" in ping.stdout, ping
