"""Client pieces that need no server: path splitting, byte re-chunking, the 4.1 slot table,
attribute conversion."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpclatch.nfs4.client import (
    FileInfo,
    Nfs4Client,
    _chunks,
    _io_size,
    _renews_v40_lease,
    _SlotTable,
    split_path,
)
from rpclatch.nfs4.const import nfs_ftype4
from rpclatch.nfs4.errors import RequestNotSent
from rpclatch.nfs4.ops import (
    CLOSE4args,
    GETFH4args,
    PUTFH4args,
    PUTROOTFH4args,
    READ4args,
    RENEW4args,
)
from rpclatch.nfs4.security import ConnectionSecurity, SecFlavor
from rpclatch.nfs4.types import (
    ANONYMOUS_STATEID,
    READ_BYPASS_STATEID,
    Fattr4,
    fsid4,
    nfstime4,
    stateid4,
)
from rpclatch.rpc.aio import RpcStreamClient
from rpclatch.rpc.auth_sys import AuthSysClient
from rpclatch.rpc.errors import RpcConnectionClosed


def test_split_path() -> None:
    assert split_path("/") == []
    assert split_path("") == []
    assert split_path("/a//b/./c/../d/") == ["a", "b", "d"]
    assert split_path("/../..") == []


async def _collect(source: object, size: int) -> list[bytes]:
    return [c async for c in _chunks(source, size)]  # type: ignore[arg-type]


@given(st.lists(st.binary(max_size=50), max_size=20), st.integers(1, 17))
def test_chunks_recut_any_source(blocks: list[bytes], size: int) -> None:
    data = b"".join(blocks)

    async def agen() -> AsyncIterator[bytes]:
        for b in blocks:
            yield b

    for source in (data, io.BytesIO(data), blocks, agen()):
        out = asyncio.run(_collect(source, size))
        assert b"".join(out) == data
        assert all(len(c) == size for c in out[:-1]) and all(0 < len(c) <= size for c in out)


def test_chunks_copy_a_block_the_source_reuses() -> None:
    """A source may refill the same bytearray for every block: each chunk holds the bytes the
    block had when it was handed over."""
    buf = bytearray(3)

    def reused() -> Iterator[bytearray]:
        for value in (b"abc", b"def", b"ghi"):
            buf[:] = value
            yield buf

    assert asyncio.run(_collect(reused(), 2)) == [b"ab", b"cd", b"ef", b"gh", b"i"]


def test_io_size() -> None:
    assert _io_size(1_048_576) == 1_048_576
    assert _io_size(1_048_576 - 2048) == 1_044_480
    assert _io_size(100) == 4096


def test_slot_table_hands_out_each_slot_once_and_honours_target() -> None:
    async def main() -> None:
        table = _SlotTable(3)
        a, b = await table.acquire(), await table.acquire()
        assert {a.slotid, b.slotid} == {0, 1}
        table.target = 2  # server lowered sr_target_highest_slotid to 1
        waiter = asyncio.ensure_future(table.acquire())
        await asyncio.sleep(0)
        assert not waiter.done()  # slot 2 is beyond the target
        await table.release(b)
        assert (await waiter).slotid == b.slotid
        a.poisoned = True
        await table.release(a)
        table.target = 3
        c = await table.acquire()
        assert c.slotid == 2  # the poisoned slot is never reused
        assert table.highest_used() == 2

    asyncio.run(main())


def test_slot_table_ignores_a_stale_slot_of_the_old_session() -> None:
    """After reset() (a new session) a request of the old session returns its slot 0 while a new
    request holds the new slot 0: the new slot stays busy (not handed out twice, still counted by
    highest_used) and the stale slot never enters the new table."""

    async def main() -> None:
        table = _SlotTable(2)
        old0, old1 = await table.acquire(), await table.acquire()
        table.reset(2)
        new0 = await table.acquire()
        assert new0.slotid == old0.slotid == 0 and new0 is not old0
        await table.release(old0)
        await table.release(old1)
        assert table.highest_used() == 0
        new1 = await table.acquire()
        assert new1.slotid == 1 and new1 is not old1
        assert table.highest_used() == 1
        waiter = asyncio.ensure_future(table.acquire())
        await asyncio.sleep(0)
        assert not waiter.done()  # both new slots are still out
        await table.release(new1)
        assert await waiter is new1
        await table.release(new0)
        assert table.highest_used() == 1  # new1 (re-acquired by the waiter) is the only one out
        assert all(s in (new0, new1) for s in table.slots)

    asyncio.run(main())


def test_slot_table_with_every_slot_poisoned_fails() -> None:
    async def main() -> None:
        table = _SlotTable(1)
        s = await table.acquire()
        s.poisoned = True
        await table.release(s)
        with pytest.raises(Exception, match="unusable"):
            await table.acquire()

    asyncio.run(main())


def test_fileinfo_from_fattr() -> None:
    a = Fattr4(
        type=nfs_ftype4.NF4DIR,
        size=4096,
        mode=0o755,
        numlinks=2,
        owner="alice@x",
        owner_group="users@x",
        fileid=7,
        fsid=fsid4(1, 2),
        change=9,
        space_used=8192,
        time_access=nfstime4(10, 500_000_000),
        time_modify=nfstime4(20, 0),
        time_metadata=nfstime4(30, 0),
    )
    info = FileInfo.from_fattr("d", a, b"fh")
    assert info.is_dir and info.fsid == (1, 2) and info.atime == 10.5 and info.mtime == 20.0
    assert info.owner == "alice@x" and info.fh == b"fh"
    empty = FileInfo.from_fattr("x", Fattr4())
    assert empty.size == 0 and empty.type == nfs_ftype4.NF4REG


def test_v40_lease_renewal_needs_our_client_id_or_stateid() -> None:
    real = stateid4(1, b"\x01" * 12)
    fh = b"\x00" * 8
    assert _renews_v40_lease([RENEW4args(7)])
    assert _renews_v40_lease([PUTFH4args(fh), READ4args(real, 0, 10)])
    assert _renews_v40_lease([PUTFH4args(fh), CLOSE4args(2, real)])
    # special stateids and stateless operations renew nothing (RFC 7530 §9.5)
    assert not _renews_v40_lease([PUTFH4args(fh), READ4args(ANONYMOUS_STATEID, 0, 10)])
    assert not _renews_v40_lease([PUTFH4args(fh), READ4args(READ_BYPASS_STATEID, 0, 10)])
    assert not _renews_v40_lease([PUTROOTFH4args(), GETFH4args()])


def test_a_closed_connection_is_found_before_sending() -> None:
    """A request on a connection the peer already closed raises RequestNotSent (an
    RpcConnectionClosed that tells the client nothing went out, so it may send it elsewhere)."""

    async def main() -> BaseException:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()  # like nfsd going down while the client is idle

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        rpc = await RpcStreamClient.connect_tcp("127.0.0.1", port)
        client = Nfs4Client(
            rpc, "127.0.0.1", minorversion=1, sec="sys", security=ConnectionSecurity((SecFlavor.SYS,))
        )
        try:
            async with asyncio.timeout(10):
                while not rpc.closed:
                    await asyncio.sleep(0.01)
            with pytest.raises(RpcConnectionClosed) as info:
                await client._rpc_call(AuthSysClient.for_current_process(), 1, b"")
        finally:
            await rpc.close()
            server.close()
            await server.wait_closed()
        return info.value

    assert isinstance(asyncio.run(main()), RequestNotSent)
