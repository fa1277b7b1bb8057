"""Client pieces that need no server: options, path splitting, byte re-chunking, attribute
conversion. The session, the security negotiation and the connection have their own tests."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rpclatch.nfs4.client import FileInfo, Nfs4Client, _chunks, _io_size, split_path
from rpclatch.nfs4.const import nfs_ftype4
from rpclatch.nfs4.options import Nfs4Options
from rpclatch.nfs4.security import ConnectionSecurity
from rpclatch.nfs4.types import (
    Fattr4,
    fsid4,
    nfstime4,
)


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


def test_options_refuse_an_unknown_minor_version() -> None:
    assert Nfs4Options(minorversion=0).minorversion == 0
    with pytest.raises(ValueError, match="minorversion"):
        Nfs4Options(minorversion=2)


def test_options_gss_target_defaults_to_the_host() -> None:
    assert Nfs4Options().target_for("srv.example") == "nfs@srv.example"
    assert Nfs4Options(gss_target="nfs@other").target_for("srv.example") == "nfs@other"


def test_connect_settings_override_options_by_name() -> None:
    """``Nfs4Client.connect(host, options, **settings)``: the settings replace fields of
    ``options`` (the hook sees the result), and a name that is no field is refused before any
    connection is made."""
    seen: list[tuple[str, int, str]] = []

    async def hook(host: str, port: int, sec: str) -> ConnectionSecurity:
        seen.append((host, port, sec))
        raise OSError("stop here")

    async def main() -> None:
        with pytest.raises(OSError, match="stop here"):
            await Nfs4Client.connect("192.0.2.1", Nfs4Options(port=20049), security_hook=hook, sec="krb5i")
        with pytest.raises(TypeError):
            await Nfs4Client.connect("192.0.2.1", security_hook=hook, no_such_option=1)

    asyncio.run(main())
    assert seen == [("192.0.2.1", 20049, "krb5i")]
