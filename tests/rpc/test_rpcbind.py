"""Portmap v2 / rpcbind v3-v4 client (RFC 1833): codecs, and against the real rpcbind."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpclatch.rpc import rpcbind as rb
from rpclatch.rpc.aio import RpcServer
from rpclatch.rpc.server import RpcDispatcher
from rpclatch.rpc.testprog import TEST_PROCEDURES
from rpclatch.xdr import XdrError


def test_golden_mapping() -> None:
    m = rb.PmapMapping(100000, 2, rb.IPPROTO_TCP, 111)
    assert m.encode().hex() == "000186a000000002000000060000006f"
    assert rb.decode_pmaplist(rb.encode_pmaplist([m])) == [m]
    assert rb.encode_pmaplist([]).hex() == "00000000"
    assert m.protocol_name == "tcp" and rb.PmapMapping(1, 1, 99, 1).protocol_name == "99"


def test_golden_rpcb() -> None:
    r = rb.Rpcb(100000, 4, "tcp", "0.0.0.0.0.111", "superuser")
    assert r.encode().hex() == (
        "000186a0"
        "00000004"
        "00000003"
        "74637000"
        "0000000d" + b"0.0.0.0.0.111".hex() + "000000"
        "00000009" + b"superuser".hex() + "000000"
    )
    assert rb.decode_rpcblist(rb.encode_rpcblist([r, r])) == [r, r]


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_lists_decode_any_bytes_or_raise(data: bytes) -> None:
    for decode in (rb.decode_pmaplist, rb.decode_rpcblist):
        with contextlib.suppress(XdrError):
            decode(data)


def test_list_length_is_bounded() -> None:
    entry = b"\0\0\0\1" + bytes(16)
    with pytest.raises(XdrError, match="longer than"):
        rb.decode_pmaplist(entry * (rb.MAX_LIST_ENTRIES + 1) + b"\0\0\0\0")


def test_uaddr() -> None:
    assert rb.make_uaddr("127.0.0.1", 2049) == "127.0.0.1.8.1"
    assert rb.uaddr_port("127.0.0.1.8.1") == 2049
    assert rb.uaddr_host("::1.0.111") == "::1"
    assert rb.uaddr_port("/run/rpcbind.sock") is None
    assert rb.uaddr_port("1.2.3.4.300.1") is None
    assert rb.uaddr_host("nothing") is None


RPCINFO = shutil.which("rpcinfo") or "/usr/sbin/rpcinfo"


def rpcinfo(*args: str) -> str:
    return subprocess.run([RPCINFO, *args], capture_output=True, text=True, timeout=30, check=True).stdout


async def arpcinfo(*args: str) -> str:
    """rpcinfo without blocking the event loop our server runs in (output includes stderr)."""
    proc = await asyncio.create_subprocess_exec(
        RPCINFO, *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return out.decode()


def rpcinfo_p() -> set[tuple[int, int, str, int]]:
    rows = set()
    for line in rpcinfo("-p", "127.0.0.1").splitlines()[1:]:
        f = line.split()
        rows.add((int(f[0]), int(f[1]), f[2], int(f[3])))
    return rows


def test_dump_matches_rpcinfo(rpcbind: object) -> None:
    async def body() -> None:
        for transport in ("tcp", "udp", "unix"):
            async with await rb.RpcbindClient.connect(transport=transport) as client:
                await client.null()
                ours = {(m.prog, m.vers, m.protocol_name, m.port) for m in await client.pmap_dump()}
                assert ours == rpcinfo_p()
                assert (100000, 2, "tcp", 111) in ours
                v4 = await client.dump()
                v3 = await client.dump(rb.RPCBVERS_3)
                assert {(r.prog, r.vers, r.netid) for r in v4} >= {(100000, 4, "tcp"), (100000, 2, "udp")}
                assert {(r.prog, r.vers, r.netid, r.addr) for r in v3} == {
                    (r.prog, r.vers, r.netid, r.addr) for r in v4
                }
                assert await client.pmap_getport(100000, 2, rb.IPPROTO_UDP) == 111
                assert await client.pmap_getport(0x3FFFFFF0, 1, rb.IPPROTO_TCP) == 0
                if transport != "unix":  # rpcbind answers for the transport the request came on
                    assert rb.uaddr_port(await client.getaddr(100000, 4, transport)) == 111
                assert await client.getaddr(0x3FFFFFF0, 1, "tcp") == ""

    asyncio.run(body())
    # rpcinfo (rpcbind v4 DUMP) lists the same netids we decoded.
    assert "portmapper" in rpcinfo("127.0.0.1")


def test_register_and_unregister(rpcbind: object) -> None:
    prog = 0x20000A11 + random.randrange(1 << 16, 1 << 20)  # unique: other tests may register 0x20000A11

    async def body() -> None:
        d = RpcDispatcher()
        d.add_program(prog, 1, TEST_PROCEDURES)
        async with RpcServer(d) as server:
            tcp = await server.listen_tcp()
            udp = await server.listen_udp()
            entries = await rb.register(prog, 1, tcp_port=tcp, udp_port=udp, host="127.0.0.1")
            assert [e.netid for e in entries] == ["tcp", "udp"]
            try:
                rows = rpcinfo_p()
                assert (prog, 1, "tcp", tcp) in rows and (prog, 1, "udp", udp) in rows
                for netid in ("tcp", "udp"):
                    out = await arpcinfo("-T", netid, "127.0.0.1", str(prog), "1")
                    assert out.strip() == f"program {prog} version 1 ready and waiting"
                async with await rb.RpcbindClient.connect() as client:
                    assert await client.pmap_getport(prog, 1, rb.IPPROTO_TCP) == tcp
                    assert await client.getaddr(prog, 1, "tcp") == rb.make_uaddr("127.0.0.1", tcp)
                # rpcbind answers GETADDR for the transport the request came in on.
                async with await rb.RpcbindClient.connect(transport="udp") as client:
                    assert await client.pmap_getport(prog, 1, rb.IPPROTO_UDP) == udp
                    assert await client.getaddr(prog, 1, "udp") == rb.make_uaddr("127.0.0.1", udp)
            finally:
                await rb.unregister(prog, 1)
            assert not any(r[0] == prog for r in rpcinfo_p())

    asyncio.run(body())


def test_pmap_set_over_unix_socket(rpcbind: object) -> None:
    prog = 0x20000A11 + random.randrange(1 << 20, 1 << 24)

    async def body() -> None:
        async with await rb.RpcbindClient.connect(transport="unix") as client:
            mapping = rb.PmapMapping(prog, 3, rb.IPPROTO_UDP, 4242)
            assert await client.pmap_set(mapping)
            try:
                assert (prog, 3, "udp", 4242) in rpcinfo_p()
                assert await client.pmap_getport(prog, 3, rb.IPPROTO_UDP) == 4242
            finally:
                assert await client.pmap_unset(mapping)
            assert await client.pmap_getport(prog, 3, rb.IPPROTO_UDP) == 0

    asyncio.run(body())


def test_connect_rejects_unknown_transport() -> None:
    with pytest.raises(ValueError):
        asyncio.run(rb.RpcbindClient.connect(transport="sctp"))
