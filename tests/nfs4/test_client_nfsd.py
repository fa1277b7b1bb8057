"""rpclatch.nfs4.client against the real Linux kernel nfsd (UML guest, exports ``/`` sys+krb5*,
``/krb5only`` krb5*, ``/krb5ponly`` krb5p only; lease and grace 10 s)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest

from interop.world import SERVER_ADDR, NfsdWorld
from rpclatch.connect.nfs import connection_security
from rpclatch.nfs4.client import Nfs4Client, _Open
from rpclatch.nfs4.const import nfs_ftype4, nfsstat4, stable_how4, state_protect_how4
from rpclatch.nfs4.errors import Nfs4RemoteError, Nfs4SecurityError
from rpclatch.nfs4.ops import open_owner4
from rpclatch.nfs4.security import SecFlavor
from rpclatch.nfs4.types import ANONYMOUS_STATEID, Fattr4

pytestmark = [pytest.mark.uml, pytest.mark.root, pytest.mark.timeout(600)]

T = TypeVar("T")


def run(guest: NfsdWorld, minor: int, sec: str, body: Callable[[Nfs4Client], Awaitable[T]], **kw: bool) -> T:
    async def main() -> T:
        client = await Nfs4Client.connect(
            SERVER_ADDR, minorversion=minor, sec=sec, gss_target=guest.service_name, timeout=60, **kw
        )
        try:
            result = await body(client)
        finally:
            await client.close()
        # CLOSE / DESTROY_SESSION / DESTROY_CLIENTID all succeeded
        assert client.teardown_error is None and client.closed
        return result

    with guest.in_host_netns():
        return asyncio.run(main())


@pytest.mark.parametrize("minor", [0, 1])
def test_sys_file_operations(nfsd: NfsdWorld, minor: int) -> None:
    data = os.urandom(3 * 1024 * 1024 + 12345)
    name = f"/sys-{minor}.bin"

    async def body(c: Nfs4Client) -> None:
        assert c.flavor is SecFlavor.SYS
        info = await c.stat("/file.txt")
        assert info.type == nfs_ftype4.NF4REG and info.size == len(b"secret-data /\n")
        assert await c.read_bytes("/file.txt") == b"secret-data /\n"
        assert await c.write_file(name, data) == len(data)
        assert (await c.stat(name)).size == len(data)
        assert hashlib.sha256(await c.read_bytes(name)).hexdigest() == hashlib.sha256(data).hexdigest()
        await c.mkdir(f"/dir-{minor}")
        listing = {e.name: e for e in await c.listdir("/")}
        assert listing[f"dir-{minor}"].info is not None and listing[f"dir-{minor}"].info.is_dir
        assert listing["krb5ponly"].error == nfsstat4.NFS4ERR_WRONGSEC  # another export, krb5p only
        await c.remove(f"/dir-{minor}")
        await c.remove(name)
        with pytest.raises(Nfs4RemoteError) as ei:
            await c.stat(name)
        assert ei.value.status == nfsstat4.NFS4ERR_NOENT

    run(nfsd, minor, "sys", body)
    # the server's own view of what we wrote was checked through a second read; and it is gone now
    assert nfsd.run(["test", "!", "-e", nfsd.server_path(name)]).ok


@pytest.mark.parametrize(("minor", "sec"), [(1, "krb5"), (1, "krb5i"), (1, "krb5p"), (0, "krb5p")])
def test_kerberos_flavors(nfsd: NfsdWorld, minor: int, sec: str) -> None:
    async def body(c: Nfs4Client) -> bytes:
        assert c.flavor is SecFlavor(sec) and c.session.machine_flavor is SecFlavor(sec)
        payload = os.urandom(300_000)
        await c.write_file(f"/krb5only/{sec}-{minor}.bin", payload)
        assert await c.read_bytes(f"/krb5only/{sec}-{minor}.bin") == payload
        await c.remove(f"/krb5only/{sec}-{minor}.bin")
        return await c.read_bytes("/krb5only/file.txt")

    assert run(nfsd, minor, sec, body) == b"secret-data /krb5only\n"


@pytest.mark.parametrize("minor", [0, 1])
def test_concurrent_creates_and_multi_page_readdir(nfsd: NfsdWorld, minor: int) -> None:
    """300 files created concurrently on one connection (4.1: the slot table keeps up to 16 in
    flight), then one READDIR walk that needs several replies (cookie + cookieverf)."""
    base = f"/many-{minor}"
    names = [f"entry-with-a-longish-name-{i:04d}.txt" for i in range(300)]

    async def body(c: Nfs4Client) -> list[str]:
        await c.mkdir(base)
        sem = asyncio.Semaphore(32)

        async def make(n: str) -> None:
            async with sem:
                await c.write_file(f"{base}/{n}", n.encode())

        await asyncio.gather(*(make(n) for n in names))
        listing = [e.name for e in await c.listdir(base)]
        assert await c.read_bytes(f"{base}/{names[123]}") == names[123].encode()
        await asyncio.gather(*(c.remove(f"{base}/{n}") for n in names))
        await c.remove(base)
        return listing

    assert sorted(run(nfsd, minor, "sys", body)) == names


@pytest.mark.parametrize(("minor", "sec"), [(0, "sys"), (1, "sys"), (1, "krb5i")])
def test_reconnects_after_the_connection_is_reset(nfsd: NfsdWorld, minor: int, sec: str) -> None:
    """The transport is aborted in the middle of pipelined WRITEs and READs (as the latching layer
    does when a latch breaks): the client reconnects through its security hook with fresh GSS
    contexts, re-synchronises lost 4.1 slots, and finishes both transfers intact."""
    data = os.urandom(4 * 1024 * 1024 + 777)
    name = f"/reset-{minor}-{sec}.bin"

    async def body(c: Nfs4Client) -> tuple[bytes, int]:
        sent = 0

        async def source() -> AsyncIterator[bytes]:
            nonlocal sent
            for i in range(0, len(data), 256 * 1024):
                if sent == 1024 * 1024:
                    c.rpc.transport.abort()  # WRITEs are in flight now
                sent += 256 * 1024
                yield data[i : i + 256 * 1024]

        await c.write_file(name, source())
        got = bytearray()
        async for chunk in c.read_file(name):
            if not got:
                c.rpc.transport.abort()  # READs are in flight now
            got += chunk
        await c.remove(name)
        if c.session.slots is not None:  # every 4.1 slot whose request was lost was re-synchronised
            assert not any(slot.poisoned for slot in c.session.slots.slots)
        return bytes(got), c.reconnects

    got, reconnects = run(nfsd, minor, sec, body)
    assert reconnects == 2 and got == data


def test_sp4_mach_cred_session(nfsd: NfsdWorld) -> None:
    """EXCHANGE_ID with SP4_MACH_CRED over krb5i (RFC 8881 §18.35): the server agrees, and the
    enforced operations (DESTROY_SESSION, DESTROY_CLIENTID at close) go with the machine cred."""

    async def body(c: Nfs4Client) -> tuple[state_protect_how4, bytes]:
        return c.session.state_protect_how, await c.read_bytes("/file.txt")

    how, data = run(nfsd, 1, "krb5i", body, state_protect=True)
    assert how == state_protect_how4.SP4_MACH_CRED and data == b"secret-data /\n"


def test_sp4_mach_cred_needs_integrity(nfsd: NfsdWorld) -> None:
    with pytest.raises(Nfs4SecurityError, match="SP4_MACH_CRED needs krb5i or krb5p"):
        run(nfsd, 1, "sys", lambda c: c.stat("/"), state_protect=True)


@pytest.mark.parametrize("minor", [0, 1])
def test_wrongsec_names_the_required_flavor(nfsd: NfsdWorld, minor: int) -> None:
    async def body(c: Nfs4Client) -> None:
        await c.read_bytes("/krb5ponly/file.txt")

    with pytest.raises(Nfs4SecurityError) as ei:
        run(nfsd, minor, "krb5i", body)
    assert "server requires krb5p for /krb5ponly; rerun with --sec krb5p or --sec auto" in str(ei.value)


@pytest.mark.parametrize("minor", [0, 1])
def test_auto_follows_secinfo_to_krb5p(nfsd: NfsdWorld, minor: int) -> None:
    async def body(c: Nfs4Client) -> tuple[bytes, SecFlavor | None]:
        return await c.read_bytes("/krb5ponly/file.txt"), c.flavor

    data, flavor = run(nfsd, minor, "auto", body)
    assert data == b"secret-data /krb5ponly\n" and flavor is SecFlavor.KRB5P


@pytest.mark.parametrize("minor", [0, 1])
def test_auto_through_the_connect_hook_follows_the_policy_order(nfsd: NfsdWorld, minor: int) -> None:
    """``--sec auto`` through BYPASS-OR-PROTECT (rpclatch.connect.nfs): no IPsec channel is bound,
    so the policy wants krb5p before krb5i; the exports list krb5i first (sec=...:krb5i:krb5p),
    yet the data flavor is krb5p -- for the root (4.1 SECINFO_NO_NAME; 4.0 has no SECINFO there)
    and below it."""

    async def body(c: Nfs4Client) -> tuple[SecFlavor | None, bytes, bytes, SecFlavor | None]:
        root_flavor = c.flavor
        top = await c.read_bytes("/file.txt")
        inner = await c.read_bytes("/krb5only/file.txt")
        return root_flavor, top, inner, c.flavor

    async def main() -> tuple[SecFlavor | None, bytes, bytes, SecFlavor | None]:
        client = await Nfs4Client.connect(
            SERVER_ADDR,
            minorversion=minor,
            sec="auto",
            gss_target=nfsd.service_name,
            timeout=60,
            security_hook=connection_security,
        )
        try:
            return await body(client)
        finally:
            await client.close()

    with nfsd.in_host_netns():
        root_flavor, top, inner, flavor = asyncio.run(main())
    assert top == b"secret-data /\n" and inner == b"secret-data /krb5only\n"
    assert root_flavor is SecFlavor.KRB5P and flavor is SecFlavor.KRB5P


@pytest.mark.parametrize("minor", [0, 1])
def test_idle_client_renews_its_lease(nfsd: NfsdWorld, minor: int) -> None:
    async def body(c: Nfs4Client) -> tuple[int, Exception | None]:
        assert c.session.lease_time == nfsd.config.lease_time
        await asyncio.sleep(c.session.lease_time * 0.7)  # idle > lease/3: the loop must have renewed
        await c.stat("/file.txt")
        return c.renewals, c.lease_error

    renewals, error = run(nfsd, minor, "sys", body)
    assert renewals >= 1 and error is None


def test_changed_write_verifier_rewrites_the_window(nfsd: NfsdWorld) -> None:
    """RFC 7530 §16.36.4 / §16.3.5: an nfsd restart between UNSTABLE WRITE and COMMIT changes the
    write verifier; the client must notice and write the uncommitted data again FILE_SYNC."""
    data = os.urandom(100_000)  # one WRITE (below wsize)

    async def before(c: Nfs4Client) -> tuple[bytes, bytes]:
        f = await c._open("/verifier.bin", write=True)
        count, _committed, verf = await c._write_at(f, 0, data, stable_how4.UNSTABLE4)
        assert count == len(data)
        await c._close(f)
        return f.fh, verf

    fh, verf = run(nfsd, 1, "sys", before)
    nfsd.restart_nfsd()  # new write verifier; our open state is gone, so rewrite anonymously

    async def after(c: Nfs4Client) -> tuple[int, bytes]:
        f = _Open(fh, ANONYMOUS_STATEID, open_owner4(c.session.clientid, b"verifier-test"), 0, None, Fattr4())
        await c._commit_window(f, 0, [(0, data, verf)])
        rewrites = c.rewrites
        await c._commit_window(f, 0, [(0, data, await c._commit(fh))])  # now they match
        assert c.rewrites == rewrites
        content = await c.read_bytes("/verifier.bin")
        await c.remove("/verifier.bin")
        return rewrites, content

    rewrites, content = run(nfsd, 1, "sys", after)
    assert rewrites == 1 and content == data


@pytest.mark.parametrize("minor", [0, 1])
def test_survives_a_server_restart_during_a_write(nfsd: NfsdWorld, minor: int) -> None:
    """nfsd restarts in the middle of an upload: the connection drops (reconnect), the server has
    forgotten our client ID / session (new one, RFC 7530 §9.6.2 / RFC 8881 §8.4.2), the open
    stateid is void (the WRITEs under way go on with the anonymous stateid, the next ones open the
    file again, both waiting out the grace period) and the write verifier changed (the
    uncommitted data is written again FILE_SYNC). The file ends up intact."""
    data = os.urandom(3 * 1024 * 1024 + 4321)
    name = f"/restart-{minor}.bin"

    async def body(c: Nfs4Client) -> tuple[int, int, int, int, bytes]:
        async def source() -> AsyncIterator[bytes]:
            step = 256 * 1024
            for i in range(0, len(data), step):
                if i == 1024 * 1024:
                    await asyncio.to_thread(nfsd.restart_nfsd)
                yield data[i : i + step]

        await c.write_file(name, source())
        got = await c.read_bytes(name)
        await c.remove(name)
        return c.reconnects, c.recoveries, c.rewrites, c.reopens, got

    reconnects, recoveries, rewrites, reopens, got = run(nfsd, minor, "sys", body)
    assert got == data
    assert reconnects >= 1 and recoveries == 1 and rewrites == 1 and reopens == 1


def server_opens(guest: NfsdWorld, client_name: str) -> int:
    """How many open stateids nfsd holds for the client named ``client_name``
    (/proc/fs/nfsd/clients/*/states, Linux >= 5.3)."""
    script = (
        'n=0; for d in /proc/fs/nfsd/clients/*/; do if grep -qF "$1" "$d/info"; then '
        'n=$((n + $(grep -c "type: open" "$d/states"))); fi; done; echo $n'
    )
    return int(guest.run(["sh", "-c", script, "sh", client_name], check=True).stdout)


@pytest.mark.parametrize("minor", [0, 1])
def test_open_file_is_reopened_after_a_restart(nfsd: NfsdWorld, minor: int) -> None:
    """A file is open for reading while nfsd restarts (the client idle between two READs): the
    client reconnects, makes a new client ID / session, and opens the file again (4.1 CLAIM_FH,
    4.0 by name) before its next READ, so the server holds an open for it again -- rather than
    the client reading on with the anonymous stateid -- and the whole file reads back."""
    data = os.urandom(6 * 1024 * 1024 + 99)
    name = f"/reopen-{minor}.bin"

    async def body(c: Nfs4Client) -> tuple[bytes, int, int, list[int]]:
        await c.write_file(name, data)
        got = bytearray()
        opens: list[int] = [await asyncio.to_thread(server_opens, nfsd, c.session.client_name)]  # none
        async for chunk in c.read_file(name, window=1):
            got += chunk
            if len(got) == len(chunk):  # after the first READ
                conn = c.rpc
                nfsd.restart_nfsd()  # in the loop's thread: the client stays idle
                async with asyncio.timeout(30):
                    while not conn.closed:
                        await asyncio.sleep(0.01)
            elif c.reopens and len(opens) == 1:  # the file is still open here
                opens.append(await asyncio.to_thread(server_opens, nfsd, c.session.client_name))
        await c.remove(name)
        return bytes(got), c.reopens, c.recoveries, opens

    got, reopens, recoveries, opens = run(nfsd, minor, "sys", body)
    assert got == data
    assert recoveries == 1 and reopens == 1 and opens == [0, 1]


def test_grace_period_is_waited_out(nfsd: NfsdWorld) -> None:
    """After an nfsd restart OPEN gets NFS4ERR_GRACE until the grace period ends; the client
    retries with backoff instead of failing, and goes on once the server stops saying GRACE.

    The grace period is long (90 s), so that a loaded machine cannot let it run out before the
    client's first OPEN (the config's 10 s once did); once the client is caught in it, the test
    ends it the way nfsdcld does when every client has reclaimed (``/proc/fs/nfsd/v4_end_grace``)
    instead of sitting through the rest."""

    async def leave_state(c: Nfs4Client) -> None:
        # a v4.0 client keeps its client record (there is no DESTROY_CLIENTID in 4.0), so after
        # the restart nfsd waits the whole grace period for it to reclaim instead of ending early
        await c.write_file("/grace-owner.txt", b"x")

    run(nfsd, 0, "sys", leave_state)
    nfsd.restart_nfsd(grace_time=90)

    async def body(c: Nfs4Client) -> tuple[bytes, int, bool, dict[str, int]]:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"after-"
            yield b"grace"

        write = asyncio.ensure_future(c.write_file("/grace.txt", chunks()))
        async with asyncio.timeout(60):
            while not c.retries.get("NFS4ERR_GRACE") and not write.done():
                await asyncio.sleep(0.05)
        graced = c.retries.get("NFS4ERR_GRACE", 0)  # OPENs answered GRACE so far
        pending = not write.done()  # ... and the client still retrying, not failed or given up
        await asyncio.to_thread(nfsd.run, "echo Y >/proc/fs/nfsd/v4_end_grace", check=True)
        await write
        data = await c.read_bytes("/grace.txt")
        await c.remove("/grace.txt")
        await c.remove("/grace-owner.txt")
        return data, graced, pending, c.retries

    data, graced, pending, retries = run(nfsd, 1, "sys", body)
    assert data == b"after-grace"
    assert graced >= 1 and pending and retries["NFS4ERR_GRACE"] >= graced


def server_delegations(guest: NfsdWorld) -> int:
    """How many delegations nfsd has handed out, over all its clients (/proc/fs/nfsd/clients)."""
    script = (
        "n=0; for d in /proc/fs/nfsd/clients/*/; do "
        'n=$((n + $(grep -c "type: deleg" "$d/states"))); done; echo $n'
    )
    return int(guest.run(["sh", "-c", script], check=True).stdout)


def test_delegation_recall_delay_is_retried(nfsd: NfsdWorld) -> None:
    """A real NFS4ERR_DELAY: the guest's kernel NFS client holds a file open for reading and with
    it a read delegation; our OPEN for writing conflicts with it, so nfsd recalls the delegation
    and answers NFS4ERR_DELAY (RFC 8881 §10.4.4 / RFC 7530 §10.4.4; Linux: the lease break is
    non-blocking -> nfserr_jukebox) until the kernel client has returned it. The client retries
    with backoff instead of failing, and the write lands."""
    name = f"/deleg-{os.getpid()}.bin"

    async def create(c: Nfs4Client) -> None:
        await c.write_file(name, b"before")

    run(nfsd, 1, "sys", create)
    mnt = nfsd.kernel_mount("/", sec="sys", vers="4.1", mountpoint="/tmp/mnt-deleg")
    holder = nfsd.spawn(f"exec 3<{mnt}{name}; read -r line <&3; exec sleep 120")
    try:
        delegs = 0
        for _ in range(100):  # the delegation comes with the kernel client's OPEN reply
            delegs = server_delegations(nfsd)
            if delegs:
                break
            time.sleep(0.1)
        assert delegs >= 1, "the kernel client got no delegation; nothing to recall"

        async def body(c: Nfs4Client) -> tuple[bytes, dict[str, int]]:
            await c.write_file(name, b"after-recall")
            return await c.read_bytes(name), dict(c.retries)

        data, retries = run(nfsd, 1, "sys", body)
        after = server_delegations(nfsd)
    finally:
        holder.signal("KILL")
        holder.wait(timeout=30)
        nfsd.kernel_umount(mnt)
    assert data == b"after-recall"
    assert retries.get("NFS4ERR_DELAY", 0) >= 1
    assert after == 0  # the kernel client returned it (DELEGRETURN) while we retried
    assert nfsd.server_sha256(name) == hashlib.sha256(b"after-recall").hexdigest()
    nfsd.run(["rm", "-f", nfsd.server_path(name)], check=True)
