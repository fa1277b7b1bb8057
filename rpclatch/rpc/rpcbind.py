"""Client for portmap version 2 and rpcbind versions 3/4 (RFC 1833), plus registration helpers.

Wire structures (RFC 1833 §2.1, §3.1) are frozen dataclasses with ``encode()``/``decode()``:
:class:`PmapMapping` (``mapping``) and :class:`Rpcb` (``rpcb``); the lists decode with
:func:`decode_pmaplist` / :func:`decode_rpcblist` (bounded to ``MAX_LIST_ENTRIES``).
:class:`RpcbindClient` asks a portmapper over TCP, UDP or rpcbind's unix socket;
:func:`register` / :func:`unregister` announce a local server. Universal addresses (RFC 5665
§5.2.3.3): :func:`make_uaddr`, :func:`uaddr_port`. Built on :mod:`rpclatch.rpc.aio`; the
``rpclatch rpc`` commands and the interop tests use it.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from types import TracebackType

from rpclatch.rpc.aio import RpcStreamClient, RpcUdpClient
from rpclatch.rpc.messages import PROC_NULL
from rpclatch.xdr import Decoder, Encoder, XdrError

PMAP_PROG = 100000
PMAP_PORT = 111
PMAP_VERS = 2
RPCBVERS_3 = 3
RPCBVERS_4 = 4
RPCBIND_SOCKET = "/run/rpcbind.sock"

#: Environment overrides for where the local rpcbind is (tests, or an rpcbind on another port).
ENV_RPCBIND_SOCKET = "RPCLATCH_RPCBIND_SOCKET"
ENV_RPCBIND_PORT = "RPCLATCH_RPCBIND_PORT"


def rpcbind_socket_path() -> str:
    """The local rpcbind's unix socket: ``$RPCLATCH_RPCBIND_SOCKET`` if set, else RPCBIND_SOCKET."""
    return os.environ.get(ENV_RPCBIND_SOCKET) or RPCBIND_SOCKET


def rpcbind_port() -> int:
    """The rpcbind/portmap port to ask: ``$RPCLATCH_RPCBIND_PORT`` if set, else PMAP_PORT (111).
    Raises ValueError for a value that is not a port number."""
    text = os.environ.get(ENV_RPCBIND_PORT)
    if not text:
        return PMAP_PORT
    port = int(text, 10) if text.isdigit() else 0
    if not 1 <= port <= 65535:
        raise ValueError(f"{ENV_RPCBIND_PORT}={text} is not a port number (1..65535)")
    return port


# RFC 1833 §3.2 (portmap v2) and §2.2 (rpcbind v3/v4): procedure numbers shared by name.
PROC_SET = 1
PROC_UNSET = 2
PROC_GETPORT = 3  # portmap; rpcbind calls it GETADDR
PROC_GETADDR = 3
PROC_DUMP = 4

IPPROTO_TCP = 6
IPPROTO_UDP = 17
PROTOCOL_NAMES = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}

#: Longest list we decode from a DUMP reply (a real rpcbind holds a few dozen entries).
MAX_LIST_ENTRIES = 4096
MAX_STRING = 1024


@dataclass(frozen=True, slots=True)
class PmapMapping:
    """``struct mapping`` (RFC 1833 §3.1)."""

    prog: int
    vers: int
    prot: int
    port: int

    def encode(self) -> bytes:
        return struct.pack(">IIII", self.prog, self.vers, self.prot, self.port)

    @classmethod
    def decode_from(cls, dec: Decoder) -> PmapMapping:
        return cls(dec.uint32(), dec.uint32(), dec.uint32(), dec.uint32())

    @property
    def protocol_name(self) -> str:
        return PROTOCOL_NAMES.get(self.prot, str(self.prot))


@dataclass(frozen=True, slots=True)
class Rpcb:
    """``struct rpcb`` (RFC 1833 §2.1): r_prog, r_vers, r_netid, r_addr (universal), r_owner."""

    prog: int
    vers: int
    netid: str
    addr: str
    owner: str = ""

    def encode(self) -> bytes:
        enc = Encoder()
        enc.uint32(self.prog).uint32(self.vers)
        enc.string(self.netid, MAX_STRING).string(self.addr, MAX_STRING).string(self.owner, MAX_STRING)
        return enc.to_bytes()

    @classmethod
    def decode_from(cls, dec: Decoder) -> Rpcb:
        return cls(
            dec.uint32(), dec.uint32(), dec.string(MAX_STRING), dec.string(MAX_STRING), dec.string(MAX_STRING)
        )


def decode_pmaplist(data: bytes) -> list[PmapMapping]:
    """``pmaplist`` (RFC 1833 §3.1, an XDR optional-linked list). Raises :class:`XdrError`."""
    dec = Decoder(data)
    out: list[PmapMapping] = []
    while dec.boolean():
        if len(out) >= MAX_LIST_ENTRIES:
            raise XdrError(f"pmaplist longer than {MAX_LIST_ENTRIES} entries")
        out.append(PmapMapping.decode_from(dec))
    dec.done()
    return out


def encode_pmaplist(entries: list[PmapMapping]) -> bytes:
    return b"".join(b"\0\0\0\1" + m.encode() for m in entries) + b"\0\0\0\0"


def decode_rpcblist(data: bytes) -> list[Rpcb]:
    """``rpcblist_ptr`` (RFC 1833 §2.1). Raises :class:`XdrError`."""
    dec = Decoder(data)
    out: list[Rpcb] = []
    while dec.boolean():
        if len(out) >= MAX_LIST_ENTRIES:
            raise XdrError(f"rpcblist longer than {MAX_LIST_ENTRIES} entries")
        out.append(Rpcb.decode_from(dec))
    dec.done()
    return out


def encode_rpcblist(entries: list[Rpcb]) -> bytes:
    return b"".join(b"\0\0\0\1" + r.encode() for r in entries) + b"\0\0\0\0"


def _decode_bool(data: bytes) -> bool:
    dec = Decoder(data)
    v = dec.boolean()
    dec.done()
    return v


def _decode_uint(data: bytes) -> int:
    dec = Decoder(data)
    v = dec.uint32()
    dec.done()
    return v


def _decode_string(data: bytes) -> str:
    dec = Decoder(data)
    v = dec.string(MAX_STRING)
    dec.done()
    return v


def make_uaddr(host: str, port: int) -> str:
    """Universal address of ``host:port`` for netids tcp/udp/tcp6/udp6 (RFC 5665 §5.2.3)."""
    return f"{host}.{port >> 8}.{port & 0xFF}"


def uaddr_port(uaddr: str) -> int | None:
    """The port of a universal address, None if it has none (e.g. a unix path)."""
    parts = uaddr.rsplit(".", 2)
    if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
        return None
    hi, lo = int(parts[1]), int(parts[2])
    if hi > 255 or lo > 255:
        return None
    return hi * 256 + lo


def uaddr_host(uaddr: str) -> str | None:
    parts = uaddr.rsplit(".", 2)
    return parts[0] if len(parts) == 3 and uaddr_port(uaddr) is not None else None


class RpcbindClient:
    """Portmap v2 / rpcbind v3-v4 client over one transport.

    ``await RpcbindClient.connect(host, transport=..., port=111, path=RPCBIND_SOCKET,
    timeout=10.0)`` (or ``async with``) then:

    * portmap v2: ``pmap_getport(prog, vers, prot) -> int`` (0: not registered), ``pmap_dump()``,
      ``pmap_set(mapping) -> bool``, ``pmap_unset(mapping) -> bool``;
    * rpcbind v3/v4: ``getaddr(prog, vers, netid, version=4) -> str`` ("": not registered),
      ``dump(version=4) -> list[Rpcb]``, ``set(rpcb, version=4) -> bool``,
      ``unset(rpcb, version=4) -> bool``;
    * ``close()``.
    """

    def __init__(self, client: RpcStreamClient | RpcUdpClient) -> None:
        self._client = client

    @classmethod
    async def connect(
        cls,
        host: str = "127.0.0.1",
        *,
        transport: str = "tcp",
        port: int = PMAP_PORT,
        path: str = RPCBIND_SOCKET,
        timeout: float = 10.0,
    ) -> RpcbindClient:
        """Connect over ``transport`` "tcp", "udp" or "unix" (``path``)."""
        client: RpcStreamClient | RpcUdpClient
        if transport == "tcp":
            client = await RpcStreamClient.connect_tcp(host, port, timeout=timeout, connect_timeout=timeout)
        elif transport == "udp":
            client = await RpcUdpClient.connect(host, port, timeout=timeout)
        elif transport == "unix":
            client = await RpcStreamClient.connect_unix(path, timeout=timeout, connect_timeout=timeout)
        else:
            raise ValueError(f"unknown transport {transport!r}")
        return cls(client)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> RpcbindClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def null(self, version: int = PMAP_VERS) -> None:
        await self._client.call(PMAP_PROG, version, PROC_NULL, b"")

    # portmap v2 (RFC 1833 §3.2)

    async def pmap_getport(self, prog: int, vers: int, prot: int) -> int:
        res = await self._client.call(
            PMAP_PROG, PMAP_VERS, PROC_GETPORT, PmapMapping(prog, vers, prot, 0).encode()
        )
        return _decode_uint(res)

    async def pmap_dump(self) -> list[PmapMapping]:
        return decode_pmaplist(await self._client.call(PMAP_PROG, PMAP_VERS, PROC_DUMP, b""))

    async def pmap_set(self, mapping: PmapMapping) -> bool:
        return _decode_bool(await self._client.call(PMAP_PROG, PMAP_VERS, PROC_SET, mapping.encode()))

    async def pmap_unset(self, mapping: PmapMapping) -> bool:
        return _decode_bool(await self._client.call(PMAP_PROG, PMAP_VERS, PROC_UNSET, mapping.encode()))

    # rpcbind v3/v4 (RFC 1833 §2.2)

    async def getaddr(self, prog: int, vers: int, netid: str, version: int = RPCBVERS_4) -> str:
        res = await self._client.call(PMAP_PROG, version, PROC_GETADDR, Rpcb(prog, vers, netid, "").encode())
        return _decode_string(res)

    async def dump(self, version: int = RPCBVERS_4) -> list[Rpcb]:
        return decode_rpcblist(await self._client.call(PMAP_PROG, version, PROC_DUMP, b""))

    async def set(self, rpcb: Rpcb, version: int = RPCBVERS_4) -> bool:
        return _decode_bool(await self._client.call(PMAP_PROG, version, PROC_SET, rpcb.encode()))

    async def unset(self, rpcb: Rpcb, version: int = RPCBVERS_4) -> bool:
        return _decode_bool(await self._client.call(PMAP_PROG, version, PROC_UNSET, rpcb.encode()))


async def register(
    prog: int,
    vers: int,
    *,
    tcp_port: int | None = None,
    udp_port: int | None = None,
    host: str = "0.0.0.0",
    path: str = RPCBIND_SOCKET,
    owner: str = "rpclatch",
    timeout: float = 5.0,
) -> list[Rpcb]:
    """Register ``prog``/``vers`` at the given ports with the local rpcbind (replacing any earlier
    registration of the same netid). Returns what was registered; raises OSError / RpcError.

    It talks to rpcbind over its unix socket ``path``, where rpcbind trusts the caller's uid, as
    libtirpc's ``rpcb_set`` does; over TCP/UDP rpcbind refuses SET from non-reserved ports."""
    entries = []
    if tcp_port is not None:
        entries.append(Rpcb(prog, vers, "tcp", make_uaddr(host, tcp_port), owner))
    if udp_port is not None:
        entries.append(Rpcb(prog, vers, "udp", make_uaddr(host, udp_port), owner))
    async with await RpcbindClient.connect(transport="unix", path=path, timeout=timeout) as rpcb:
        for entry in entries:
            await rpcb.unset(Rpcb(prog, vers, entry.netid, "", owner))
            if not await rpcb.set(entry):
                raise RuntimeError(f"rpcbind refused to register {prog}/{vers}/{entry.netid}")
    return entries


async def unregister(
    prog: int,
    vers: int,
    *,
    netids: tuple[str, ...] = ("tcp", "udp"),
    path: str = RPCBIND_SOCKET,
    owner: str = "rpclatch",
    timeout: float = 5.0,
) -> None:
    """Remove ``prog``/``vers`` for each of ``netids`` from the local rpcbind."""
    async with await RpcbindClient.connect(transport="unix", path=path, timeout=timeout) as rpcb:
        for netid in netids:
            await rpcb.unset(Rpcb(prog, vers, netid, "", owner))
