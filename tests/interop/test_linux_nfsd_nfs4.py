"""rpclatch's NFSv4 client (rpclatch.nfs4.client) against the real Linux nfsd.

From the host-side namespace (192.0.2.1 -> 192.0.2.2): AUTH_SYS and krb5/krb5i/krb5p round trips on
NFSv4.0 and 4.1, 4 MiB / 64 MiB files with checksums compared to the server's file system, data
exchanged with the guest's kernel NFS client, WRONGSEC -> SECINFO -> krb5p, and clear errors when
the flavor cannot be satisfied.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from interop.capture import read_fields
from interop.probe import payload
from interop.world import SERVER_ADDR, NfsdWorld
from rpclatch.nfs4.client import Nfs4Client
from rpclatch.nfs4.const import nfsstat4
from rpclatch.nfs4.errors import Nfs4RemoteError, Nfs4SecurityError

pytestmark = [pytest.mark.uml, pytest.mark.root]

T = TypeVar("T")
NFS4ERR_WRONGSEC = 10016
OP_SECINFO, OP_SECINFO_NO_NAME = 33, 52


def _run(guest: NfsdWorld, user: str, minor: int, sec: str, body: Callable[[Nfs4Client], Awaitable[T]]) -> T:
    """Connect from the host-side namespace as ``user``, run ``body``, close."""

    async def main() -> T:
        client = await Nfs4Client.connect(
            SERVER_ADDR, minorversion=minor, sec=sec, gss_target=guest.service_name, timeout=60
        )
        try:
            return await body(client)
        finally:
            await client.close()

    with guest.in_host_netns(user):
        return asyncio.run(main())


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_null(nfsd_guest: NfsdWorld) -> None:
    async def body(client: Nfs4Client) -> None:
        await client.null()

    _run(nfsd_guest, "alice", 1, "sys", body)


@pytest.mark.parametrize("minor", [0, 1])
def test_auth_sys_write_read_list_stat_remove(nfsd_guest: NfsdWorld, minor: int) -> None:
    d = f"/{_name(f'sys-v4{minor}')}"
    data = payload(100_000, minor)

    async def body(client: Nfs4Client) -> tuple[list[str], int, bytes]:
        await client.mkdir(d)
        assert await client.write_file(f"{d}/f.bin", data) == len(data)
        names = sorted(e.name for e in await client.listdir(d))
        size = (await client.stat(f"{d}/f.bin")).size
        back = await client.read_bytes(f"{d}/f.bin")
        return names, size, back

    names, size, back = _run(nfsd_guest, "alice", minor, "sys", body)
    assert names == ["f.bin"] and size == len(data) and back == data
    assert nfsd_guest.server_sha256(f"{d}/f.bin") == hashlib.sha256(data).hexdigest()

    async def remove(client: Nfs4Client) -> None:
        await client.remove(f"{d}/f.bin")
        with pytest.raises(Nfs4RemoteError) as info:
            await client.stat(f"{d}/f.bin")
        assert info.value.status == nfsstat4.NFS4ERR_NOENT
        await client.remove(d)

    _run(nfsd_guest, "alice", minor, "sys", remove)
    assert not nfsd_guest.run(["test", "-e", nfsd_guest.server_path(d)]).ok


@pytest.mark.parametrize("minor", [0, 1])
@pytest.mark.parametrize("sec", ["krb5", "krb5i", "krb5p"])
def test_kerberos_round_trip_on_krb5_only_export(nfsd_guest: NfsdWorld, sec: str, minor: int) -> None:
    path = f"/krb5only/{_name(f'{sec}-v4{minor}')}.bin"
    data = payload(300_000, 7)

    async def body(client: Nfs4Client) -> tuple[bytes, str | None]:
        await client.write_file(path, data)
        back = await client.read_bytes(path)
        flavor = client.flavor.value if client.flavor is not None else None
        await client.remove(path)
        return back, flavor

    back, flavor = _run(nfsd_guest, "alice", minor, sec, body)
    assert back == data
    assert flavor == sec


#: 4 MiB and 64 MiB with every flavor (64 MiB takes 3-5 s per flavor here, krb5p the slowest).
LARGE_FILE_CASES = [
    pytest.param(sec, size, id=f"{sec}-{size >> 20}MiB")
    for size in (4 << 20, 64 << 20)
    for sec in ("sys", "krb5", "krb5i", "krb5p")
]


@pytest.mark.parametrize(("sec", "size"), LARGE_FILE_CASES)
def test_large_file_checksums(nfsd_guest: NfsdWorld, sec: str, size: int) -> None:
    path = f"/{_name(f'large-{sec}')}.bin"
    data = payload(size, size + len(sec))
    want = hashlib.sha256(data).hexdigest()

    async def body(client: Nfs4Client) -> str:
        assert await client.write_file(path, data) == size
        digest = hashlib.sha256()
        async for chunk in client.read_file(path):
            digest.update(chunk)
        return digest.hexdigest()

    assert _run(nfsd_guest, "bob", 1, sec, body) == want
    assert nfsd_guest.server_sha256(path) == want
    nfsd_guest.run(["rm", "-f", nfsd_guest.server_path(path)], check=True)


@pytest.mark.parametrize("sec", ["sys", "krb5", "krb5i", "krb5p"])
def test_kernel_client_reads_what_we_wrote_and_we_read_what_it_wrote(nfsd_guest: NfsdWorld, sec: str) -> None:
    ours = f"/{_name('ours')}.bin"
    theirs = f"/{_name('kernel')}.bin"
    data = payload(1 << 20, 11)

    async def write(client: Nfs4Client) -> None:
        await client.write_file(ours, data)

    _run(nfsd_guest, "alice", 1, sec, write)
    mnt = nfsd_guest.kernel_mount("/", sec=sec, vers="4.1", mountpoint=f"/tmp/mnt-exchange-{sec}")
    try:
        seen = nfsd_guest.run(["sha256sum", f"{mnt}{ours}"], check=True).stdout.split()[0]
        nfsd_guest.run(f"head -c 1500000 /dev/urandom >{mnt}{theirs} && sync", check=True)
        kernel_sum = nfsd_guest.run(["sha256sum", f"{mnt}{theirs}"], check=True).stdout.split()[0]
    finally:
        nfsd_guest.kernel_umount(mnt)
    assert seen == hashlib.sha256(data).hexdigest()

    async def read(client: Nfs4Client) -> bytes:
        return await client.read_bytes(theirs)

    back = _run(nfsd_guest, "alice", 0, sec, read)
    assert len(back) == 1_500_000
    assert hashlib.sha256(back).hexdigest() == kernel_sum == nfsd_guest.server_sha256(theirs)


@pytest.mark.parametrize("minor", [0, 1])
def test_wrongsec_then_secinfo_then_krb5p(nfsd_guest: NfsdWorld, minor: int) -> None:
    async def body(client: Nfs4Client) -> tuple[bytes, str | None, str | None]:
        first = client.flavor.value if client.flavor is not None else None
        data = await client.read_bytes("/krb5ponly/file.txt")
        return data, first, client.flavor.value if client.flavor is not None else None

    with nfsd_guest.capture(f"wrongsec-v4{minor}", bpf="tcp port 2049", snaplen=0) as pcap:
        data, first, final = _run(nfsd_guest, "alice", minor, "auto", body)
    assert data == b"secret-data /krb5ponly\n"
    assert first != "krb5p" and final == "krb5p"
    rows = read_fields(pcap, ("nfs.opcode", "nfs.nfsstat4", "rpc.msgtyp"), "nfs", all_occurrences=True)
    statuses = {s for _, ss, t in rows if t == "1" for s in ss.split(",")}
    opcodes = {o for oo, _, _ in rows for o in oo.split(",")}
    assert str(NFS4ERR_WRONGSEC) in statuses, rows
    assert opcodes & {str(OP_SECINFO), str(OP_SECINFO_NO_NAME)}, rows


@pytest.mark.parametrize("sec", ["sys", "krb5i"])
def test_krb5p_only_export_refuses_weaker_flavor_clearly(nfsd_guest: NfsdWorld, sec: str) -> None:
    async def body(client: Nfs4Client) -> bytes:
        return await client.read_bytes("/krb5ponly/file.txt")

    with pytest.raises(Nfs4SecurityError) as info:
        _run(nfsd_guest, "alice", 1, sec, body)
    assert "krb5p" in str(info.value)
